//! The test harness: the real application on port 0, a fresh database per test, a manual
//! clock, and the console channel written to a file that tests read links from.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use paystep::clock::ManualClock;
use paystep::config::Settings;
use paystep::engine::Engine;
use paystep::startup::Application;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const PIN: &str = "4711";
/// The public URL the test app puts in links; tests swap it for the app's real address.
pub const PUBLIC_URL: &str = "https://pay.test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server the test script says is there; tests fail when it is not.
/// Prints a reliability test's figures and appends them to `test-artifacts/figures.txt`,
/// which `scripts/test.sh` empties before the run and prints after it: cargo test keeps a
/// passing test's output to itself, and RELIABILITY.md quotes these lines.
pub fn report_figures(line: &str) {
    use std::io::Write;
    eprintln!("{line}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("test-artifacts can be made");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("figures.txt"))
        .expect("test-artifacts/figures.txt opens for appending");
    // One write per line: appends from tests running at once do not interleave.
    file.write_all(format!("{line}\n").as_bytes())
        .expect("the figures are written");
}

pub fn postgres_base_url() -> String {
    std::env::var("PAYSTEP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A database of its own for one test: a file in `dir`, or a new PostgreSQL database.
pub async fn fresh_database_url(db: Db, dir: &std::path::Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}", dir.join("paystep.db").display()),
        Db::Postgres => {
            let name = create_postgres_database("paystep_test").await;
            format!("{}/{name}", postgres_base_url())
        }
    }
}

/// Creates a new PostgreSQL database named `{prefix}_{random}` and returns its name.
/// `scripts/test.sh` drops the `paystep_test_*` ones earlier runs left behind.
pub async fn create_postgres_database(prefix: &str) -> String {
    use sqlx::{Connection, Executor};
    let base = postgres_base_url();
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("PostgreSQL must be running for the tests (see scripts/test.sh)");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("the test database can be created");
    name
}

pub fn test_settings(database_url: &str, console_path: &std::path::Path) -> Settings {
    let mut settings = Settings::load(None).expect("the built-in defaults load");
    settings.database.url = database_url.to_string();
    settings.database.max_connections = 20;
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.public_url = PUBLIC_URL.to_string();
    settings.admin.token = ADMIN_TOKEN.to_string();
    settings.channels.console.path = console_path.display().to_string();
    settings.outbox.poll_interval_ms = 20;
    settings.engine.sweep_interval_ms = 50;
    settings
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub engine: Arc<Engine>,
    pub clock: Arc<ManualClock>,
    pub console_path: PathBuf,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

pub async fn spawn_app_with(db: Db, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    // Warnings and errors show in a failing test's output (RUST_LOG for more).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let console_path = dir.path().join("console.jsonl");
    let database_url = fresh_database_url(db, dir.path()).await;
    let mut settings = test_settings(&database_url, &console_path);
    adjust(&mut settings);
    let clock = Arc::new(ManualClock::new());
    let application = Application::build(settings, clock.clone())
        .await
        .expect("the app builds");
    let address = format!("http://{}", application.local_addr());
    let engine = application.engine();
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(application.run_until_stopped(stopped));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        engine,
        clock,
        console_path,
        stop,
        _dir: dir,
    }
}

pub struct Retailer {
    pub id: String,
    pub api_key: String,
}

pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> Answer {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    pub async fn admin_get(&self, path: &str) -> Answer {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    pub async fn create_retailer(&self) -> Retailer {
        let created = self
            .admin_post("/admin/v1/retailers", json!({"name": "Garage Nord"}))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        Retailer {
            id: created.body["id"].as_str().unwrap().to_string(),
            api_key: created.body["api_key"].as_str().unwrap().to_string(),
        }
    }

    /// A customer with a PIN and the given credit in EUR.
    pub async fn create_customer(&self, msisdn: &str, credit: &str) -> String {
        self.create_customer_with(
            json!({"name": "Anna", "msisdn": msisdn, "pin": PIN}),
            credit,
        )
        .await
    }

    pub async fn create_customer_with(&self, body: Value, credit: &str) -> String {
        let created = self.admin_post("/admin/v1/customers", body).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        let id = created.body["id"].as_str().unwrap().to_string();
        let deposit = self
            .admin_post(
                &format!("/admin/v1/customers/{id}/deposits"),
                json!({"amount": credit, "currency": "EUR"}),
            )
            .await;
        assert_eq!(deposit.status, StatusCode::CREATED, "{}", deposit.body);
        id
    }

    pub async fn post(&self, retailer: &Retailer, path: &str, body: Value) -> Answer {
        self.post_raw(retailer, path, body.to_string(), None).await
    }

    pub async fn post_raw(
        &self,
        retailer: &Retailer,
        path: &str,
        body: String,
        key: Option<&str>,
    ) -> Answer {
        let mut request = self
            .client
            .post(self.url(path))
            .bearer_auth(&retailer.api_key)
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        answer(request.send().await.unwrap()).await
    }

    pub async fn get(&self, retailer: &Retailer, path: &str) -> Answer {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(&retailer.api_key)
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    pub async fn open_process(&self, retailer: &Retailer, body: Value) -> Value {
        let created = self.post(retailer, "/v1/processes", body).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        created.body
    }

    pub async fn step(&self, retailer: &Retailer, process_id: &str, amount: &str) -> Answer {
        self.post(
            retailer,
            &format!("/v1/processes/{process_id}/steps"),
            json!({"amount": amount}),
        )
        .await
    }

    pub async fn process(&self, retailer: &Retailer, process_id: &str) -> Value {
        let got = self
            .get(retailer, &format!("/v1/processes/{process_id}"))
            .await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        got.body
    }

    pub async fn customer(&self, customer_id: &str) -> Value {
        let got = self
            .admin_get(&format!("/admin/v1/customers/{customer_id}"))
            .await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        got.body
    }

    /// The customer's available EUR credit, as the operator API shows it.
    pub async fn credit(&self, customer_id: &str) -> String {
        let customer = self.customer(customer_id).await;
        customer["balances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|balance| balance["currency"] == "EUR")
            .map(|balance| balance["credit"].as_str().unwrap().to_string())
            .unwrap_or_else(|| "0.00".to_string())
    }

    pub fn console_messages(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.console_path).unwrap_or_default();
        // A line the channel is still writing has no newline yet: it is read next time.
        text.split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .map(|line| serde_json::from_str(line).expect("console lines are JSON"))
            .collect()
    }

    /// A link as sent to customers, pointed at this test app.
    pub fn local(&self, link: &str) -> String {
        assert!(
            link.starts_with(PUBLIC_URL),
            "links start with http.public_url: {link}"
        );
        link.replacen(PUBLIC_URL, &self.address, 1)
    }

    /// Shows a page as a browser would.
    pub async fn get_page(&self, link: &str) -> (StatusCode, String) {
        let response = self.client.get(self.local(link)).send().await.unwrap();
        let status = response.status();
        (status, response.text().await.unwrap())
    }

    /// Waits until `count` console messages match, and returns them.
    pub async fn wait_for_messages(
        &self,
        count: usize,
        matches: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        for _ in 0..500 {
            let found: Vec<Value> = self
                .console_messages()
                .into_iter()
                .filter(|message| matches(message))
                .collect();
            if found.len() >= count {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "expected {count} matching console messages; have:\n{:#?}",
            self.console_messages()
        );
    }

    /// The link of the newest confirmation request for a process.
    pub async fn confirmation_link(&self, process_id: &str, nth: usize) -> String {
        let requests = self
            .wait_for_messages(nth, |message| {
                message["kind"] == "confirmation_request" && message["process_id"] == process_id
            })
            .await;
        requests[nth - 1]["url"].as_str().unwrap().to_string()
    }

    /// Answers a confirmation page as a browser would, by posting its form.
    pub async fn answer_page(
        &self,
        link: &str,
        action: &str,
        pin: Option<&str>,
    ) -> (StatusCode, String) {
        let link = self.local(link);
        let mut form = vec![("action", action)];
        if let Some(pin) = pin {
            form.push(("pin", pin));
        }
        let response = self.client.post(&link).form(&form).send().await.unwrap();
        let status = response.status();
        (status, response.text().await.unwrap())
    }

    /// Opens a process for `customer_msisdn` and confirms it with the right PIN.
    pub async fn open_active_process(&self, retailer: &Retailer, body: Value) -> String {
        let process = self.open_process(retailer, body).await;
        let process_id = process["id"].as_str().unwrap().to_string();
        let link = self.confirmation_link(&process_id, 1).await;
        let (status, page) = self.answer_page(&link, "confirm", Some(PIN)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(
            self.process(retailer, &process_id).await["status"],
            "active"
        );
        process_id
    }

    pub async fn events(&self, retailer: &Retailer) -> Vec<Value> {
        let got = self.get(retailer, "/v1/events?limit=100").await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        got.body["events"].as_array().unwrap().clone()
    }

    pub fn advance_s(&self, seconds: i64) {
        self.clock.advance_ms(seconds * 1000);
    }

    /// Asserts the ledger invariants through the operator API: every test ends with this.
    pub async fn assert_ledger_holds(&self) {
        let report = self.admin_get("/admin/v1/ledger/verify").await;
        assert_eq!(
            report.status,
            StatusCode::OK,
            "ledger invariants broken: {:#}",
            report.body
        );
        assert_eq!(report.body["ok"], true);
    }

    /// Counts rows of a table, straight from the database.
    pub async fn count(&self, table: &str) -> i64 {
        self.number(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await
    }

    /// The one number `sql` selects, with `binds` for `$1`, `$2`, ..., straight from the
    /// database.
    pub async fn number(&self, sql: &str, binds: &[&str]) -> i64 {
        let mut conn = self.engine.store.reader().acquire().await.unwrap();
        let mut query = sqlx::query_scalar(sql);
        for bind in binds {
            query = query.bind(*bind);
        }
        query.fetch_one(&mut *conn).await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Waits until `condition` holds, for at most `seconds`.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    seconds: u64,
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// GETs `url` and parses its JSON body: peers' control APIs, the OpenAPI document.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: {error}"));
    response
        .json()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: not JSON: {error}"))
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, body }
}

pub fn eur_process(msisdn: &str, release: &str) -> Value {
    json!({
        "customer": {"msisdn": msisdn},
        "currency": "EUR",
        "release": release,
        "description": "Parking, level 2",
        "reference": "ticket-77",
    })
}

/// Runs one test body on SQLite and on PostgreSQL: `on_both_databases!(name);` next to an
/// `async fn name(db: Db)`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    super::$name($crate::helpers::Db::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    super::$name($crate::helpers::Db::Postgres).await
                }
            }
        )+
    };
}
