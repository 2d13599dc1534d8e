//! The app the simulation drives: built on a database of its own with a clock of its own,
//! dropped and built again for a crash; and every operation turned into a concrete request
//! on one of the app's inbound paths.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use paystep::clock::Clock;
use paystep::config::Settings;
use paystep::engine::{AnswerOutcome, Engine, TillClaim};
use paystep::startup::Application;
use paystep_channels::{ChannelName, InboundMessage};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::model::{Outcome, Pin, Policy, Till};
use super::ops::{Amount, CodeOf, InvalidOpen, OpenRequest, Sms, Which};
use crate::helpers::{
    create_postgres_database, postgres_base_url, Db, ADMIN_TOKEN, PIN, PUBLIC_URL,
};

/// A PIN nobody has.
pub const WRONG_PIN: &str = "9999";
/// Where the simulated time starts: 2030-03-17, the same in every run.
pub const EPOCH_MS: i64 = 1_900_000_000_000;
/// Whatever the app is asked, it answers within this (a hang is a failure, not a wait).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The sweeper's own rounds are a day apart: the simulation runs them as operations.
const SWEEP_INTERVAL_MS: u64 = 86_400_000;
/// A century: nothing is pruned during a run, so an old key still replays.
const RETENTION_S: i64 = 3_153_600_000;
pub const STEPS_PER_PROCESS_MAX: usize = 25;
/// The most rounds of `expire_due` one sweep runs before it calls the sweep stuck.
const SWEEP_ROUNDS_MAX: usize = 10_000;

/// Simulated time: it moves only when the simulation says, so that what expires when is
/// the same in every run. (`ManualClock` follows the wall clock plus an offset, which would
/// make expiry depend on how fast the machine runs.)
pub struct SimClock {
    now_ms: AtomicI64,
}

impl SimClock {
    pub fn advance_ms(&self, delta_ms: i64) {
        assert!(delta_ms >= 0, "a clock never goes back");
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

pub fn settings(database_url: &str, console: &std::path::Path) -> Settings {
    let mut settings = Settings::load(None).expect("the built-in defaults load");
    settings.database.url = database_url.to_string();
    settings.database.max_connections = 8;
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.public_url = PUBLIC_URL.to_string();
    settings.admin.token = ADMIN_TOKEN.to_string();
    settings.channels.console.path = console.display().to_string();
    // Delivery is not what is simulated (the channel suites test it): no dispatcher takes
    // the single SQLite writer or a core from the operations.
    settings.outbox.deliver = false;
    settings.engine.sweep_interval_ms = SWEEP_INTERVAL_MS;
    settings.limits.steps_per_process_max = STEPS_PER_PROCESS_MAX as i64;
    // Wrong PINs are part of the mix; the per-address throttle, which counts in wall-clock
    // time, would make their answers depend on the machine's speed.
    settings.security.failures_per_source_burst = 1_000_000;
    settings.security.failures_per_source_per_minute = 1_000_000;
    settings.security.failures_per_target_burst = 1_000_000;
    settings.security.failures_per_target_per_minute = 1_000_000;
    settings.retention.idempotency_keys_s = RETENTION_S;
    settings.retention.confirmations_s = RETENTION_S;
    settings.retention.pin_attempts_s = RETENTION_S;
    settings.retention.delivered_outbox_s = RETENTION_S;
    settings.retention.interval_ms = SWEEP_INTERVAL_MS;
    settings
}

/// Where the database lives: SQLite in memory-backed storage where there is some (the
/// simulation tests logic, not the disk; `durability.rs` and `crashes.rs` test the disk),
/// PostgreSQL with commits that do not wait for the WAL flush (the server itself never
/// crashes here, so nothing committed is lost). A PostgreSQL database is named
/// `paystep_sim_*`, so that `scripts/test.sh`, which drops the `paystep_test_*` ones left
/// behind, does not drop it under a long run.
async fn database(db: Db) -> (tempfile::TempDir, String, Option<String>) {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("paystep-sim-")
            .tempdir_in(shm)
            .unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    match db {
        Db::Sqlite => {
            let url = format!("sqlite://{}", dir.path().join("paystep.db").display());
            (dir, url, None)
        }
        Db::Postgres => {
            let name = create_postgres_database("paystep_sim").await;
            let url = format!(
                "{}/{name}?options=-c%20synchronous_commit%3Doff",
                postgres_base_url()
            );
            (dir, url, Some(name))
        }
    }
}

/// Drops a PostgreSQL database the simulation made (a failed run keeps its database, for
/// a look at what went wrong).
pub async fn drop_database(name: &str) {
    use sqlx::{Connection, Executor};
    let base = postgres_base_url();
    if let Ok(mut admin) = sqlx::PgConnection::connect(&format!("{base}/postgres")).await {
        let _ = admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
    }
}

pub struct SimApp {
    database_url: String,
    /// The PostgreSQL database to drop after a run that passed.
    pub postgres_database: Option<String>,
    pub clock: Arc<SimClock>,
    pub engine: Arc<Engine>,
    pub address: String,
    pub client: reqwest::Client,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
    dir: tempfile::TempDir,
}

impl SimApp {
    pub async fn start(db: Db) -> SimApp {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        let (dir, database_url, postgres_database) = database(db).await;
        let clock = Arc::new(SimClock {
            now_ms: AtomicI64::new(EPOCH_MS),
        });
        let (engine, address, stop, task) = Self::build(&database_url, &dir, &clock).await;
        SimApp {
            database_url,
            postgres_database,
            clock,
            engine,
            address,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap(),
            stop,
            task,
            dir,
        }
    }

    async fn build(
        database_url: &str,
        dir: &tempfile::TempDir,
        clock: &Arc<SimClock>,
    ) -> (
        Arc<Engine>,
        String,
        watch::Sender<bool>,
        JoinHandle<anyhow::Result<()>>,
    ) {
        let settings = settings(database_url, &dir.path().join("console.jsonl"));
        let application = Application::build(settings, clock.clone())
            .await
            .expect("the app builds");
        let address = format!("http://{}", application.local_addr());
        let engine = application.engine();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(application.run_until_stopped(stopped));
        (engine, address, stop, task)
    }

    /// The app dies between two operations and comes back on the same database and clock:
    /// its server and workers stop, its connections close, and nothing it kept in memory
    /// (cached account ids, the SQLite writer's queue, throttles) survives.
    pub async fn crash(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
        let _ = (&mut self.task).await;
        self.engine.store.close().await;
        let (engine, address, stop, task) =
            Self::build(&self.database_url, &self.dir, &self.clock).await;
        self.engine = engine;
        self.address = address;
        self.stop = stop;
        self.task = task;
    }

    /// Runs the sweeper's round until it finds nothing more to do.
    pub async fn sweep(&self) -> Result<(), String> {
        for _ in 0..SWEEP_ROUNDS_MAX {
            let expired = self
                .engine
                .expire_due()
                .await
                .map_err(|error| format!("the expiry sweep failed: {error}"))?;
            if expired == 0 {
                return Ok(());
            }
        }
        Err(format!(
            "the expiry sweep still found work after {SWEEP_ROUNDS_MAX} rounds"
        ))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Stops the app after a run that passed, and drops its PostgreSQL database.
    pub async fn finish(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
        if let Some(name) = self.postgres_database.take() {
            drop_database(&name).await;
        }
    }
}

impl Drop for SimApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub fn format_minor(minor: i64) -> String {
    assert!(minor >= 0, "amounts are never negative: {minor}");
    format!("{}.{:02}", minor / 100, minor % 100)
}

pub fn msisdn(customer: usize) -> String {
    format!("+49151{:08}", customer + 1)
}

/// How many of the last SMS may be delivered again, and how many may wait to be delivered.
pub const SMS_REMEMBERED_MAX: usize = 20;
pub const SMS_HELD_MAX: usize = 50;

/// A number that is nobody's.
const STRANGER: &str = "+4915199999999";

fn pin_text(pin: Pin) -> Option<&'static str> {
    match pin {
        Pin::Missing => None,
        Pin::Right => Some(PIN),
        Pin::Wrong => Some(WRONG_PIN),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Retailer(usize),
    Admin,
}

/// What a request to the API means to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    Open {
        request: OpenRequest,
        /// The index the model gives the process it opens.
        process: usize,
    },
    /// Refused before anything is written.
    Refused {
        status: u16,
        code: &'static str,
        process: Option<usize>,
        retailer: Option<usize>,
    },
    Step {
        process: usize,
        amount: i64,
    },
    Close {
        process: usize,
    },
    Deposit {
        customer: usize,
        amount: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    pub who: Who,
    pub path: String,
    pub body: String,
    pub key: Option<String>,
    pub meaning: Meaning,
    /// Sent to the engine in-process, as the handler would, instead of over HTTP (see
    /// `Preparer::api`).
    pub direct: bool,
}

impl ApiCall {
    /// The idempotency scope and key, if the request has a key.
    pub fn scoped_key(&self) -> Option<(String, String)> {
        let scope = match self.who {
            Who::Retailer(retailer) => format!("retailer:{retailer}"),
            Who::Admin => "admin".to_string(),
        };
        self.key.clone().map(|key| (scope, key))
    }

    pub fn fingerprint(&self) -> String {
        format!("POST {}\n{}", self.path, self.body)
    }
}

/// What an SMS means to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmsMeaning {
    Answer {
        customer: usize,
        approve: bool,
        code: Option<String>,
        pin: Pin,
    },
    Pay {
        customer: usize,
        code: String,
        /// `Some(None)`: an amount the app must refuse.
        amount: Option<Option<i64>>,
        pin: Pin,
    },
    /// BAL, anything else, or a stranger: a reply, and nothing changes.
    Chatter { customer: Option<usize> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    pub from: String,
    pub text: String,
    pub meaning: SmsMeaning,
}

/// An operation made concrete: the request, and what it means to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Api(ApiCall),
    NewCustomer {
        customer: usize,
        has_pin: bool,
        credit: i64,
    },
    Page {
        token: String,
        process: usize,
        request: usize,
        approve: bool,
        pin: Pin,
    },
    ViewPage {
        token: String,
        process: usize,
    },
    Voice {
        token: String,
        process: usize,
        request: usize,
        approve: bool,
        pin: Pin,
    },
    Sms(Text),
    /// Sent now, delivered later: nothing happens yet.
    HoldSms,
    CallTill {
        customer: usize,
        code: String,
        pin: Pin,
    },
    Advance(i64),
    Sweep,
    Crash,
    /// Nothing to send (an answer to a process that has no link, no SMS held).
    Nothing(&'static str),
}

/// What the app answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Api {
        status: u16,
        body: Value,
    },
    NewCustomer {
        created: u16,
        deposited: u16,
        body: Value,
    },
    Page {
        status: u16,
    },
    Voice(Result<Option<Outcome>, String>),
    Sms(Result<(), String>),
    Till(Result<Till, String>),
    Done,
}

fn outcome(outcome: AnswerOutcome) -> Outcome {
    match outcome {
        AnswerOutcome::Approved => Outcome::Approved,
        AnswerOutcome::Declined => Outcome::Declined,
        AnswerOutcome::InsufficientCredit => Outcome::InsufficientCredit,
        AnswerOutcome::PinRequired { tries_left } => Outcome::PinRequired { tries_left },
        AnswerOutcome::WrongPin { tries_left } => Outcome::WrongPin { tries_left },
        AnswerOutcome::PinTriesExceeded => Outcome::PinTriesExceeded,
        AnswerOutcome::LockedOut { until_ms } => Outcome::LockedOut { until_ms },
        AnswerOutcome::NotPending { status } => Outcome::NotPending {
            status: match status.as_str() {
                "approved" => "approved",
                "declined" => "declined",
                "expired" => "expired",
                _ => "unknown",
            },
        },
        AnswerOutcome::Expired => Outcome::Expired,
    }
}

fn till(claim: TillClaim) -> Till {
    match claim {
        TillClaim::UnknownSender => Till::UnknownSender,
        TillClaim::NoSuchCode => Till::NoSuchCode,
        TillClaim::BadAmount(_) => Till::BadAmount,
        TillClaim::Answered { outcome: o, .. } => Till::Answered(outcome(o)),
    }
}

/// The concrete side of the run: ids, keys, links and messages the app handed out.
#[derive(Default)]
pub struct Registry {
    pub retailers: Vec<(String, String)>,
    pub customers: Vec<String>,
    pub processes: Vec<String>,
    pub process_index: HashMap<String, usize>,
    pub customer_index: HashMap<String, usize>,
    pub retailer_index: HashMap<String, usize>,
    /// Each process's links, in the order they were sent.
    tokens: Vec<Vec<String>>,
    pub keyed: Vec<ApiCall>,
    /// Processes the next opens will get (an open's index is given when it is prepared).
    pub processes_planned: usize,
    pub customers_planned: usize,
    /// API requests prepared so far (which of them go in-process is counted off this).
    pub api_calls: u64,
}

impl Registry {
    pub fn register_process(&mut self, index: usize, id: &str) {
        if index == self.processes.len() {
            self.processes.push(id.to_string());
            self.tokens.push(Vec::new());
            self.process_index.insert(id.to_string(), index);
        }
    }
}

/// Turns operations into actions, reading what the model knows (codes, which request is
/// newest) but drawing nothing: the same operation on the same state is the same action.
pub struct Preparer<'a> {
    pub app: &'a SimApp,
    pub registry: &'a mut Registry,
    pub model: &'a super::model::Model,
}

impl Preparer<'_> {
    fn key(&mut self) -> String {
        format!("sim-{}", self.registry.keyed.len())
    }

    fn api(
        &mut self,
        who: Who,
        path: String,
        body: String,
        keyed: bool,
        meaning: Meaning,
    ) -> Action {
        let key = keyed.then(|| self.key());
        // Two of three unkeyed opens, steps and closes go to the engine in-process (the
        // handler's own call, without HTTP, JSON and the idempotency layer), which keeps a
        // long run affordable; keyed ones, refusals and deposits always take the HTTP path.
        self.registry.api_calls += 1;
        let direct = key.is_none()
            && !self.registry.api_calls.is_multiple_of(3)
            && matches!(
                meaning,
                Meaning::Open { .. } | Meaning::Step { .. } | Meaning::Close { .. }
            );
        let call = ApiCall {
            who,
            path,
            body,
            key,
            meaning,
            direct,
        };
        if call.key.is_some() {
            self.registry.keyed.push(call.clone());
        }
        Action::Api(call)
    }

    pub fn open(&mut self, request: &OpenRequest) -> Action {
        let mut body = json!({
            "currency": "EUR",
            "release": format_minor(request.release),
            "description": "Simulated parking",
            "reference": format!("sim-{}", self.registry.processes_planned),
        });
        if let Some(customer) = request.customer {
            body["customer"] = if request.by_id {
                json!({"id": self.registry.customers[customer]})
            } else {
                json!({"msisdn": msisdn(customer)})
            };
        }
        if let Some(charge) = request.charge {
            body["charge"] = json!(format_minor(charge));
        }
        if let Some(policy) = request.policy {
            body["top_up"] = match policy {
                Policy::Multiple { factor_e4 } => json!({
                    "policy": "multiple",
                    "factor": format!("{}.{:04}", factor_e4 / 10_000, factor_e4 % 10_000),
                }),
                other => json!({"policy": other.as_str()}),
            };
        }
        if let Some(seconds) = request.inactivity_s {
            body["expires_in_s"] = json!(seconds);
        }
        let process = self.registry.processes_planned;
        self.registry.processes_planned += 1;
        self.api(
            Who::Retailer(request.retailer),
            "/v1/processes".to_string(),
            body.to_string(),
            request.keyed,
            Meaning::Open {
                request: request.clone(),
                process,
            },
        )
    }

    pub fn open_invalid(&mut self, retailer: usize, customer: usize, how: InvalidOpen) -> Action {
        let mut body = json!({
            "customer": {"msisdn": msisdn(customer)},
            "currency": "EUR",
            "release": "10.00",
        });
        let code = match how {
            InvalidOpen::ChargeExceedsRelease => {
                body["charge"] = json!("10.01");
                "charge_exceeds_release"
            }
            InvalidOpen::UnknownCustomer => {
                body["customer"] = json!({"msisdn": STRANGER});
                "customer_not_found"
            }
            InvalidOpen::BadRelease => {
                body["release"] = json!("10.005");
                "invalid_amount"
            }
            InvalidOpen::BadFactor => {
                body["top_up"] = json!({"policy": "multiple", "factor": "1"});
                "invalid_field"
            }
        };
        self.api(
            Who::Retailer(retailer),
            "/v1/processes".to_string(),
            body.to_string(),
            false,
            Meaning::Refused {
                status: 422,
                code,
                process: None,
                retailer: Some(retailer),
            },
        )
    }

    pub fn step(&mut self, process: usize, amount: Amount, keyed: bool) -> Action {
        let retailer = self.model.processes[process].retailer;
        let (text, meaning) = match amount {
            Amount::Valid(minor) => (
                format_minor(minor),
                Meaning::Step {
                    process,
                    amount: minor,
                },
            ),
            Amount::Invalid(text) => (
                text.to_string(),
                Meaning::Refused {
                    status: 422,
                    code: "invalid_amount",
                    process: Some(process),
                    retailer: Some(retailer),
                },
            ),
        };
        let path = format!("/v1/processes/{}/steps", self.registry.processes[process]);
        let body = json!({"amount": text}).to_string();
        self.api(Who::Retailer(retailer), path, body, keyed, meaning)
    }

    pub fn close(&mut self, process: usize, keyed: bool) -> Action {
        let retailer = self.model.processes[process].retailer;
        let path = format!("/v1/processes/{}/close", self.registry.processes[process]);
        self.api(
            Who::Retailer(retailer),
            path,
            "{}".to_string(),
            keyed,
            Meaning::Close { process },
        )
    }

    pub fn deposit(&mut self, customer: usize, amount: i64, keyed: bool) -> Action {
        let path = format!(
            "/admin/v1/customers/{}/deposits",
            self.registry.customers[customer]
        );
        let body = json!({"amount": format_minor(amount), "currency": "EUR"}).to_string();
        self.api(
            Who::Admin,
            path,
            body,
            keyed,
            Meaning::Deposit { customer, amount },
        )
    }

    pub fn replay(&mut self, request: usize) -> Action {
        Action::Api(self.registry.keyed[request].clone())
    }

    /// The key of an earlier request with another body: refused, whatever the state.
    pub fn reuse_key(&mut self, request: usize) -> Action {
        let mut call = self.registry.keyed[request].clone();
        call.body = format!(" {}", call.body);
        call.meaning = match call.meaning {
            // Were the key new, the request would be the same one, its body's meaning
            // unchanged by a leading space.
            Meaning::Open { .. } => Meaning::Refused {
                status: 409,
                code: "idempotency_key_reused",
                process: None,
                retailer: None,
            },
            other => other,
        };
        Action::Api(call)
    }

    pub fn new_customer(&mut self, has_pin: bool, credit: i64) -> Action {
        let customer = self.registry.customers_planned;
        self.registry.customers_planned += 1;
        Action::NewCustomer {
            customer,
            has_pin,
            credit,
        }
    }

    /// The link an answer follows, with the request it belongs to.
    async fn link(
        &mut self,
        process: usize,
        which: Which,
    ) -> Result<Option<(String, usize)>, String> {
        let row = &self.model.processes[process];
        let count = row.linked_count();
        if count == 0 {
            return Ok(None);
        }
        let nth = match which {
            Which::Newest => count - 1,
            Which::Any(number) => number as usize % count,
        };
        let request = row.linked(nth).expect("nth < count");
        let token = self.token(process, nth).await?;
        Ok(Some((token, request)))
    }

    /// The `nth` link sent for `process`, read from the outbox the message was queued in.
    async fn token(&mut self, process: usize, nth: usize) -> Result<String, String> {
        if self.registry.tokens[process].len() <= nth {
            let urls: Vec<Option<String>> = sqlx::query_scalar(
                "SELECT url FROM outbox WHERE process_id = $1 AND kind = 'confirmation_request' \
                 ORDER BY position",
            )
            .bind(&self.registry.processes[process])
            .fetch_all(self.app.engine.store.reader())
            .await
            .map_err(|error| format!("cannot read the links of process {process}: {error}"))?;
            self.registry.tokens[process] = urls
                .into_iter()
                .map(|url| {
                    let url = url.unwrap_or_default();
                    url.rsplit('/').next().unwrap_or_default().to_string()
                })
                .collect();
        }
        self.registry.tokens[process]
            .get(nth)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "process {process} should have sent {} links, the outbox has {}",
                    nth + 1,
                    self.registry.tokens[process].len()
                )
            })
    }

    pub async fn page(
        &mut self,
        process: usize,
        which: Which,
        approve: bool,
        pin: Pin,
    ) -> Result<Action, String> {
        Ok(match self.link(process, which).await? {
            Some((token, request)) => Action::Page {
                token,
                process,
                request,
                approve,
                pin,
            },
            None => Action::Nothing("no link to answer"),
        })
    }

    pub async fn view_page(&mut self, process: usize, which: Which) -> Result<Action, String> {
        Ok(match self.link(process, which).await? {
            Some((token, _)) => Action::ViewPage { token, process },
            None => Action::Nothing("no link to show"),
        })
    }

    pub async fn voice(
        &mut self,
        process: usize,
        which: Which,
        approve: bool,
        pin: Pin,
    ) -> Result<Action, String> {
        Ok(match self.link(process, which).await? {
            Some((token, request)) => Action::Voice {
                token,
                process,
                request,
                approve,
                pin,
            },
            None => Action::Nothing("no link to answer by phone"),
        })
    }

    fn code(&self, code: CodeOf) -> Option<String> {
        match code {
            CodeOf::Process(process) => Some(self.model.processes[process].code.clone()),
            CodeOf::Omitted => None,
        }
    }

    /// The text a customer types, as the SMS grammar reads it.
    pub fn sms(&self, sms: Sms) -> Text {
        let words = |parts: Vec<Option<String>>| -> String {
            parts.into_iter().flatten().collect::<Vec<_>>().join(" ")
        };
        match sms {
            Sms::Yes {
                customer,
                code,
                pin,
            } => {
                let code = self.code(code);
                Text {
                    from: msisdn(customer),
                    text: words(vec![
                        Some("YES".into()),
                        code.clone(),
                        pin_text(pin).map(Into::into),
                    ]),
                    meaning: SmsMeaning::Answer {
                        customer,
                        approve: true,
                        code,
                        pin,
                    },
                }
            }
            Sms::No { customer, code } => {
                let code = self.code(code);
                Text {
                    from: msisdn(customer),
                    text: words(vec![Some("no".into()), code.clone()]),
                    meaning: SmsMeaning::Answer {
                        customer,
                        approve: false,
                        code,
                        pin: Pin::Missing,
                    },
                }
            }
            Sms::Pay {
                customer,
                process,
                amount,
                pin,
            } => {
                let code = self.model.processes[process].code.clone();
                let (amount_text, amount_meaning) = match amount {
                    None => (None, None),
                    Some(Amount::Valid(minor)) => (Some(format_minor(minor)), Some(Some(minor))),
                    Some(Amount::Invalid(text)) => (Some(text.to_string()), Some(None)),
                };
                Text {
                    from: msisdn(customer),
                    text: words(vec![
                        Some("PAY".into()),
                        Some(code.clone()),
                        amount_text,
                        pin_text(pin).map(Into::into),
                    ]),
                    meaning: SmsMeaning::Pay {
                        customer,
                        code,
                        amount: amount_meaning,
                        pin,
                    },
                }
            }
            Sms::Balance { customer } => Text {
                from: msisdn(customer),
                text: "BAL".into(),
                meaning: SmsMeaning::Chatter {
                    customer: Some(customer),
                },
            },
            Sms::Unrecognized { customer } => Text {
                from: msisdn(customer),
                text: "where is my car".into(),
                meaning: SmsMeaning::Chatter {
                    customer: Some(customer),
                },
            },
            Sms::Stranger => Text {
                from: STRANGER.into(),
                text: "YES".into(),
                meaning: SmsMeaning::Chatter { customer: None },
            },
        }
    }

    pub fn call_till(&self, process: usize, customer: usize, pin: Pin) -> Action {
        Action::CallTill {
            customer,
            code: self.model.processes[process].code.clone(),
            pin,
        }
    }
}

/// Sends an action to the app and returns its answer.
pub async fn execute(app: &SimApp, registry: &Registry, action: &Action) -> Answer {
    match action {
        Action::Api(call) if call.direct => {
            let (status, body) = direct(app, registry, call).await;
            Answer::Api { status, body }
        }
        Action::Api(call) => {
            let (status, body) = post_json(
                app,
                registry,
                &call.who,
                &call.path,
                &call.body,
                call.key.as_deref(),
            )
            .await;
            Answer::Api { status, body }
        }
        Action::NewCustomer {
            customer,
            has_pin,
            credit,
        } => {
            let mut body =
                json!({"name": format!("Customer {customer}"), "msisdn": msisdn(*customer)});
            if *has_pin {
                body["pin"] = json!(PIN);
            }
            let (created, body) = post_json(
                app,
                registry,
                &Who::Admin,
                "/admin/v1/customers",
                &body.to_string(),
                None,
            )
            .await;
            let Some(id) = body["id"].as_str() else {
                return Answer::NewCustomer {
                    created,
                    deposited: 0,
                    body,
                };
            };
            let deposit = json!({"amount": format_minor(*credit), "currency": "EUR"}).to_string();
            let (deposited, _) = post_json(
                app,
                registry,
                &Who::Admin,
                &format!("/admin/v1/customers/{id}/deposits"),
                &deposit,
                None,
            )
            .await;
            Answer::NewCustomer {
                created,
                deposited,
                body,
            }
        }
        Action::Page {
            token,
            approve,
            pin,
            ..
        } => {
            let mut form = vec![("action", if *approve { "confirm" } else { "decline" })];
            if let Some(pin) = pin_text(*pin) {
                form.push(("pin", pin));
            }
            let sent = app
                .client
                .post(app.url(&format!("/c/{token}")))
                .form(&form)
                .send()
                .await;
            Answer::Page {
                status: sent.map_or(0, |response| response.status().as_u16()),
            }
        }
        Action::ViewPage { token, .. } => {
            let sent = app.client.get(app.url(&format!("/c/{token}"))).send().await;
            Answer::Page {
                status: sent.map_or(0, |response| response.status().as_u16()),
            }
        }
        Action::Voice {
            token,
            approve,
            pin,
            ..
        } => {
            let answered = app
                .engine
                .answer_token(
                    token,
                    *approve,
                    pin_text(*pin).map(Into::into),
                    ChannelName::Voice,
                )
                .await;
            Answer::Voice(
                answered
                    .map(|found| found.map(outcome))
                    .map_err(|error| error.to_string()),
            )
        }
        Action::Sms(text) => {
            let message: InboundMessage =
                paystep_channels::sms::grammar::parse(&text.from, &text.text);
            Answer::Sms(
                app.engine
                    .receive(message)
                    .await
                    .map_err(|error| error.to_string()),
            )
        }
        Action::CallTill {
            customer,
            code,
            pin,
        } => {
            let claimed = app
                .engine
                .pay_by_phone(&msisdn(*customer), code, pin_text(*pin).map(Into::into))
                .await;
            Answer::Till(
                claimed
                    .map(|(claim, _)| till(claim))
                    .map_err(|error| error.to_string()),
            )
        }
        Action::Advance(_)
        | Action::Sweep
        | Action::Crash
        | Action::HoldSms
        | Action::Nothing(_) => Answer::Done,
    }
}

/// The engine call a retailer API handler makes, in one write of the store, answered as
/// the handler answers (an error rolls everything back, a declined step included).
async fn direct(app: &SimApp, registry: &Registry, call: &ApiCall) -> (u16, Value) {
    use paystep::domain::{Currency, Msisdn, TopUpPolicyKind};
    use paystep::engine::{CustomerRef, NewProcess, NewStep, StepOutcome, TopUpPolicy};
    use paystep::http::error::ApiError;

    let Who::Retailer(retailer) = call.who else {
        return (0, Value::String("only retailer calls go in-process".into()));
    };
    let retailer_id = registry.retailers[retailer].0.clone();
    let engine = app.engine.clone();
    let settings = engine.settings.clone();
    let meaning = call.meaning.clone();
    let process_id = |process: usize| registry.processes[process].clone();
    enum Call {
        Open(NewProcess),
        Step(String, NewStep),
        Close(String),
    }
    let request = match &meaning {
        Meaning::Open { request, .. } => {
            let customer = request.customer.map(|customer| {
                if request.by_id {
                    CustomerRef::Id(registry.customers[customer].clone())
                } else {
                    CustomerRef::Msisdn(Msisdn::parse(&msisdn(customer)).expect("a valid MSISDN"))
                }
            });
            let top_up = match request.policy {
                None => TopUpPolicy {
                    kind: settings.engine.top_up_policy,
                    factor: settings.engine.top_up_factor,
                },
                Some(policy) => TopUpPolicy {
                    kind: TopUpPolicyKind::parse(policy.as_str()).expect("a policy"),
                    factor: match policy {
                        Policy::Multiple { factor_e4 } => rust_decimal::Decimal::new(factor_e4, 4),
                        _ => settings.engine.top_up_factor,
                    },
                },
            };
            Call::Open(NewProcess {
                customer,
                currency: Currency::parse("EUR").expect("EUR"),
                release: request.release,
                charge: request.charge,
                description: Some("Simulated parking".into()),
                reference: None,
                channel: None,
                top_up,
                inactivity_s: request
                    .inactivity_s
                    .unwrap_or(settings.engine.process_inactivity_s),
            })
        }
        Meaning::Step { process, amount } => Call::Step(
            process_id(*process),
            NewStep {
                amount: format_minor(*amount),
                description: None,
                reference: None,
            },
        ),
        Meaning::Close { process } => Call::Close(process_id(*process)),
        other => {
            return (
                0,
                Value::String(format!("{other:?} does not go in-process")),
            )
        }
    };
    let written = engine
        .store
        .clone()
        .write(
            move |conn| -> paystep::store::WriteFuture<'_, Result<(u16, Value), ApiError>> {
                Box::pin(async move {
                    let retailer = paystep::engine::rows::load_retailer(conn, &retailer_id)
                        .await
                        .map_err(|error| ApiError::from(paystep::engine::EngineError::from(error)))?
                        .ok_or_else(|| ApiError::not_found("retailer"))?;
                    match request {
                        Call::Open(request) => {
                            let view = engine.create_process(conn, &retailer, request).await?;
                            Ok((201, json!(view)))
                        }
                        Call::Step(process_id, step) => {
                            match engine
                                .charge_step(conn, &retailer, &process_id, step)
                                .await?
                            {
                                StepOutcome::Charged(view) => Ok((201, json!(view))),
                                StepOutcome::AwaitingConfirmation(view) => Ok((202, json!(view))),
                                StepOutcome::Declined(view) => Err(ApiError::new(
                                    reqwest::StatusCode::UNPROCESSABLE_ENTITY,
                                    "insufficient_release",
                                    "declined",
                                )
                                .with_details(json!({"step": view}))),
                            }
                        }
                        Call::Close(process_id) => {
                            let view = engine.close_process(conn, &retailer, &process_id).await?;
                            Ok((200, json!(view)))
                        }
                    }
                })
            },
        )
        .await;
    match written {
        Ok(answer) => answer,
        Err(error) => (error.status.as_u16(), error.body()),
    }
}

async fn post_json(
    app: &SimApp,
    registry: &Registry,
    who: &Who,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> (u16, Value) {
    let bearer = match who {
        Who::Retailer(retailer) => registry.retailers[*retailer].1.as_str(),
        Who::Admin => ADMIN_TOKEN,
    };
    let mut request = app
        .client
        .post(app.url(path))
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, body)
        }
        Err(error) => (0, Value::String(format!("no answer: {error}"))),
    }
}
