//! Database faults (issue 12), against the real binary under load: PostgreSQL stopped in
//! immediate mode and started again, and the SQLite file's disk full. Requests during the
//! fault get a clear 503 with nothing done, the daemon recovers by itself, and afterwards
//! every acknowledged operation is there exactly once and the ledger holds.
//!
//! Both tests need root (a private PostgreSQL run as `postgres`, a tmpfs mount); they fail,
//! not skip, where that is missing. Their figures go to stderr (`--nocapture`).

#[path = "../peers/postgres_cluster.rs"]
mod postgres_cluster;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{AnyConnection, Connection, Row};

use crate::daemon::{console_lines, start_daemon_logging, Daemon};
use postgres_cluster::PostgresCluster;

/// Concurrent clients, each with a process of its own that it charges steps to.
const CLIENTS: usize = 4;
/// Every this many steps a client also opens a process and closes it again.
const OPEN_EVERY_STEPS: u64 = 5;
/// Each step is this much; the processes release enough for every step a client may send.
const STEP_AMOUNT: &str = "0.01";
const STEP_AMOUNT_MINOR: i64 = 1;
const RELEASE: &str = "500.00";
/// A client stops charging here, below `limits.steps_per_process_max` (10,000), so that a
/// slow run fails at a deadline, saying so, instead of at the step limit.
const STEPS_PER_CLIENT_MAX: u64 = 9000;
/// The pause between a client's requests: load, not a flood that starves the daemon of
/// the two cores it shares with the test.
const CLIENT_PAUSE_MS: u64 = 2;
/// The daemon's `http.request_timeout_ms` here; a client waits this plus a margin, and an
/// answer that never comes is a failure of the test.
const REQUEST_TIMEOUT_MS: u64 = 5000;
const CLIENT_TIMEOUT_MS: u64 = REQUEST_TIMEOUT_MS + 3000;
/// How long a pool waits for a connection: a request during an outage is refused after it.
const ACQUIRE_TIMEOUT_MS: &str = "1000";
/// Acknowledged steps each client must have before the fault and after recovery.
const ACKNOWLEDGED_PER_CLIENT_MIN: usize = 10;
/// Refusals each client must see while the fault lasts before it is undone.
const REFUSALS_PER_CLIENT_MIN: usize = 5;
/// The bound on every wait for a condition in these tests.
const DEADLINE_S: u64 = 90;

/// Where the test is, as the clients see it when they send and when they are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Before = 0,
    /// The fault is in place: the server stopped, or the disk full.
    Fault = 1,
    /// The fault is being undone: the server starting (crash recovery), the space freed.
    Repairing = 2,
    After = 3,
}

#[derive(Default)]
struct Phases(AtomicU8);

impl Phases {
    fn now(&self) -> Phase {
        match self.0.load(Ordering::SeqCst) {
            0 => Phase::Before,
            1 => Phase::Fault,
            2 => Phase::Repairing,
            _ => Phase::After,
        }
    }

    fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Step,
    Open,
    Close,
}

/// One request and what became of it.
#[derive(Debug, Clone)]
struct Outcome {
    kind: Kind,
    client: usize,
    /// The step's or opened process's reference; for a close, the process id.
    key: String,
    /// None: no answer within the client's timeout, or the connection failed.
    status: Option<StatusCode>,
    body: Value,
    retry_after: bool,
    sent: Phase,
    answered: Phase,
}

impl Outcome {
    fn acknowledged(&self) -> bool {
        self.status.is_some_and(|status| status.is_success())
    }

    fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    /// The id the daemon gave the step or process.
    fn id(&self) -> Option<&str> {
        self.body["id"].as_str()
    }

    fn during_the_fault(&self) -> bool {
        self.sent == Phase::Fault && self.answered == Phase::Fault
    }
}

/// Refusals that promise nothing was changed: the database away, its disk full.
const DATABASE_UNAVAILABLE: &str = "database_unavailable";
const STORAGE_UNAVAILABLE: &str = "storage_unavailable";
/// The one refusal that may have changed something (a commit whose connection broke).
const OUTCOME_UNKNOWN_CODE: &str = "commit_outcome_unknown";

struct Client {
    index: usize,
    base: String,
    http: reqwest::Client,
    api_key: String,
    msisdn: String,
    process_id: String,
}

impl Client {
    async fn send(
        &self,
        kind: Kind,
        key: String,
        path: &str,
        body: Value,
        phases: &Phases,
    ) -> Outcome {
        let sent = phases.now();
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.api_key)
            .json(&body)
            .send()
            .await;
        let (status, retry_after, body) = match response {
            Ok(response) => {
                let status = response.status();
                let retry_after = response.headers().contains_key("retry-after");
                let text = response.text().await.unwrap_or_default();
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                (Some(status), retry_after, body)
            }
            Err(error) => (None, false, Value::String(error.to_string())),
        };
        Outcome {
            kind,
            client: self.index,
            key,
            status,
            body,
            retry_after,
            sent,
            answered: phases.now(),
        }
    }

    /// Charges steps (and every few steps opens a process and closes it) until told to stop.
    async fn run(
        self,
        phases: Arc<Phases>,
        stop: Arc<AtomicBool>,
        outcomes: Arc<Mutex<Vec<Outcome>>>,
    ) {
        let steps_path = format!("/v1/processes/{}/steps", self.process_id);
        for number in 1..=STEPS_PER_CLIENT_MAX {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let reference = format!("c{}-s{number}", self.index);
            let body = json!({"amount": STEP_AMOUNT, "reference": reference});
            let step = self
                .send(Kind::Step, reference, &steps_path, body, &phases)
                .await;
            outcomes.lock().unwrap().push(step);
            if number % OPEN_EVERY_STEPS == 0 {
                self.open_and_close(number, &phases, &outcomes).await;
            }
            tokio::time::sleep(Duration::from_millis(CLIENT_PAUSE_MS)).await;
        }
    }

    async fn open_and_close(&self, number: u64, phases: &Phases, outcomes: &Mutex<Vec<Outcome>>) {
        let reference = format!("c{}-o{number}", self.index);
        let body = json!({
            "customer": {"msisdn": self.msisdn},
            "currency": "EUR",
            "release": "1.00",
            "description": "Fault test",
            "reference": reference,
        });
        let opened = self
            .send(Kind::Open, reference, "/v1/processes", body, phases)
            .await;
        let process_id = opened
            .id()
            .map(str::to_owned)
            .filter(|_| opened.acknowledged());
        outcomes.lock().unwrap().push(opened);
        if let Some(process_id) = process_id {
            let path = format!("/v1/processes/{process_id}/close");
            let closed = self
                .send(Kind::Close, process_id, &path, json!({}), phases)
                .await;
            outcomes.lock().unwrap().push(closed);
        }
    }
}

/// The clients and what they recorded.
struct Load {
    api_key: String,
    process_ids: Vec<String>,
    phases: Arc<Phases>,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Gives each client a customer and a confirmed process, then starts them all.
    async fn start(daemon: &Daemon, console_path: &Path) -> Load {
        let api_key = daemon.create_retailer(None).await.api_key;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(CLIENT_TIMEOUT_MS))
            .build()
            .unwrap();
        let (phases, stop) = (
            Arc::new(Phases::default()),
            Arc::new(AtomicBool::new(false)),
        );
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let (mut tasks, mut process_ids) = (Vec::new(), Vec::new());
        for index in 0..CLIENTS {
            let msisdn = format!("+4917612000{index:02}");
            let process_id = daemon
                .open_confirmed_process(console_path, &api_key, &msisdn, ("1000.00", RELEASE))
                .await;
            process_ids.push(process_id.clone());
            let client = Client {
                index,
                base: daemon.base.clone(),
                http: http.clone(),
                api_key: api_key.clone(),
                msisdn,
                process_id,
            };
            tasks.push(tokio::spawn(client.run(
                phases.clone(),
                stop.clone(),
                outcomes.clone(),
            )));
        }
        Load {
            api_key,
            process_ids,
            phases,
            stop,
            outcomes,
            tasks,
        }
    }

    fn snapshot(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Waits until every client has `count` acknowledged steps sent in `phase`.
    async fn wait_for_acknowledged_steps(&self, phase: Phase, count: usize) {
        let condition = || {
            let outcomes = self.snapshot();
            (0..CLIENTS).all(|client| {
                outcomes
                    .iter()
                    .filter(|o| o.client == client && o.kind == Kind::Step && o.sent == phase)
                    .filter(|o| o.acknowledged())
                    .count()
                    >= count
            })
        };
        wait_for(
            &format!("every client has {count} steps acknowledged in {phase:?}"),
            condition,
        )
        .await;
    }

    /// Waits until every client had `count` requests refused that it sent and got answered
    /// during the fault.
    async fn wait_for_refusals_during_the_fault(&self, count: usize) {
        let condition = || {
            let outcomes = self.snapshot();
            (0..CLIENTS).all(|client| {
                outcomes
                    .iter()
                    .filter(|o| o.client == client && o.during_the_fault() && !o.acknowledged())
                    .count()
                    >= count
            })
        };
        let what = format!("every client had {count} requests refused during the fault");
        wait_for(&what, condition).await;
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("a client panicked");
        }
        Arc::try_unwrap(self.outcomes)
            .map(|outcomes| outcomes.into_inner().unwrap())
            .unwrap_or_else(|shared| shared.lock().unwrap().clone())
    }
}

/// Polls `condition` every 20 ms for at most `DEADLINE_S`.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(DEADLINE_S);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every request got an answer; every answer is a success or a 503 in the API's error
/// shape with `Retry-After`, whose code is one of `codes`. Nothing else: no 500, no hang.
fn assert_answered_or_refused_cleanly(outcomes: &[Outcome], codes: &[&str]) {
    for outcome in outcomes {
        let Some(status) = outcome.status else {
            panic!("a request got no answer within {CLIENT_TIMEOUT_MS} ms: {outcome:?}");
        };
        if status.is_success() {
            continue;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{outcome:?}");
        assert!(
            outcome.retry_after,
            "a 503 without Retry-After: {outcome:?}"
        );
        let code = outcome
            .code()
            .unwrap_or_else(|| panic!("no error code: {outcome:?}"));
        assert!(codes.contains(&code), "unexpected code {code}: {outcome:?}");
        assert!(
            outcome.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "a refusal without a message: {outcome:?}"
        );
    }
}

/// The figures of one run, for stderr.
#[derive(Debug, Default)]
struct Figures {
    acknowledged: HashMap<&'static str, usize>,
    refused: HashMap<String, usize>,
    refused_during_fault: usize,
    acknowledged_during_fault: usize,
    outcome_unknown_done: usize,
    outcome_unknown_not_done: usize,
}

impl Figures {
    fn of(outcomes: &[Outcome]) -> Figures {
        let mut figures = Figures::default();
        for outcome in outcomes {
            if outcome.acknowledged() {
                let kind = match outcome.kind {
                    Kind::Step => "steps",
                    Kind::Open => "opens",
                    Kind::Close => "closes",
                };
                *figures.acknowledged.entry(kind).or_default() += 1;
                if outcome.during_the_fault() {
                    figures.acknowledged_during_fault += 1;
                }
            } else {
                let code = outcome.code().unwrap_or("none").to_string();
                *figures.refused.entry(code).or_default() += 1;
                if outcome.during_the_fault() {
                    figures.refused_during_fault += 1;
                }
            }
        }
        figures
    }
}

/// Checks the database against what the clients were told: every acknowledged step and
/// opened process is there once with the id it was answered with, every refusal that said
/// nothing changed left nothing, the processes' numbers agree with their steps, every
/// charged step has its one `step.charged` event, and the ledger's invariants hold.
async fn assert_nothing_acknowledged_lost(
    conn: &mut AnyConnection,
    outcomes: &[Outcome],
    figures: &mut Figures,
) {
    let steps = rows_by(
        conn,
        "SELECT reference, id FROM steps WHERE reference IS NOT NULL",
    )
    .await;
    let processes = rows_by(
        conn,
        "SELECT reference, id FROM processes WHERE reference LIKE 'c%-o%'",
    )
    .await;
    let events = step_charged_events(conn).await;
    for outcome in outcomes.iter().filter(|o| o.kind != Kind::Close) {
        let stored = match outcome.kind {
            Kind::Step => steps.get(&outcome.key),
            _ => processes.get(&outcome.key),
        };
        let stored: &[String] = stored.map_or(&[], Vec::as_slice);
        if outcome.acknowledged() {
            let id = outcome.id().expect("an acknowledged operation has an id");
            assert_eq!(stored, [id.to_string()], "acknowledged once: {outcome:?}");
            if outcome.kind == Kind::Step {
                assert_eq!(outcome.body["status"], "charged", "{outcome:?}");
                assert_eq!(
                    events.get(id),
                    Some(&1),
                    "one step.charged event: {outcome:?}"
                );
            }
        } else if outcome.code() == Some(OUTCOME_UNKNOWN_CODE) {
            assert!(stored.len() <= 1, "at most once: {outcome:?}");
            if stored.is_empty() {
                figures.outcome_unknown_not_done += 1;
            } else {
                figures.outcome_unknown_done += 1;
            }
        } else {
            assert!(
                stored.is_empty(),
                "refused, yet stored {stored:?}: {outcome:?}"
            );
        }
    }
    assert_closes_match(conn, outcomes).await;
    assert_numbers_agree(conn).await;
    let report = paystep::ledger::verify(conn).await.unwrap();
    assert!(report.ok, "ledger invariants broken: {report:#?}");
}

/// A closed process is closed; one whose close was refused with nothing changed is still
/// waiting for its confirmation.
async fn assert_closes_match(conn: &mut AnyConnection, outcomes: &[Outcome]) {
    for outcome in outcomes.iter().filter(|o| o.kind == Kind::Close) {
        let status: String = sqlx::query_scalar("SELECT status FROM processes WHERE id = $1")
            .bind(&outcome.key)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        if outcome.acknowledged() {
            assert_eq!(status, "closed", "{outcome:?}");
        } else if outcome.code() != Some(OUTCOME_UNKNOWN_CODE) {
            assert_eq!(status, "awaiting_confirmation", "{outcome:?}");
        }
    }
}

/// Each process's charged amount and step count are those of its charged steps.
async fn assert_numbers_agree(conn: &mut AnyConnection) {
    let disagreeing: Vec<(String, i64, i64)> = sqlx::query(
        "SELECT p.id, p.charged, COALESCE(SUM(s.amount), 0) AS steps_charged \
         FROM processes p LEFT JOIN steps s ON s.process_id = p.id AND s.status = 'charged' \
         GROUP BY p.id, p.charged \
         HAVING p.charged <> COALESCE(SUM(s.amount), 0)",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect();
    assert!(
        disagreeing.is_empty(),
        "charged differs from the steps: {disagreeing:?}"
    );
    let miscounted: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM processes p \
         WHERE p.step_count <> (SELECT COUNT(*) FROM steps s WHERE s.process_id = p.id)",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        miscounted, 0,
        "processes whose step_count differs from their steps"
    );
    let charged_steps: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM steps WHERE status = 'charged' AND amount <> $1")
            .bind(STEP_AMOUNT_MINOR)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(charged_steps, 0, "a step of another amount than was sent");
}

/// `reference -> ids` from a query of two text columns.
async fn rows_by(conn: &mut AnyConnection, sql: &str) -> HashMap<String, Vec<String>> {
    let mut by_reference: HashMap<String, Vec<String>> = HashMap::new();
    for row in sqlx::query(sql).fetch_all(&mut *conn).await.unwrap() {
        by_reference.entry(row.get(0)).or_default().push(row.get(1));
    }
    by_reference
}

/// How many `step.charged` events each step id has.
async fn step_charged_events(conn: &mut AnyConnection) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let rows = sqlx::query("SELECT data FROM events WHERE type = 'step.charged'")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    for row in rows {
        let data: Value = serde_json::from_str(&row.get::<String, _>(0)).unwrap();
        let id = data["id"]
            .as_str()
            .expect("a step.charged event names its step")
            .to_string();
        *counts.entry(id).or_default() += 1;
    }
    counts
}

/// Waits until the outbox has nothing left to send: the dispatcher came back by itself.
async fn wait_until_outbox_drained(database_url: &str) {
    let deadline = Instant::now() + Duration::from_secs(DEADLINE_S);
    loop {
        let mut conn = AnyConnection::connect(database_url).await.unwrap();
        let waiting: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE status <> 'delivered'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        conn.close().await.unwrap();
        if waiting == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} outbox messages were never delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_status(daemon: &Daemon, path: &str) -> StatusCode {
    daemon
        .client
        .get(format!("{}{path}", daemon.base))
        .timeout(Duration::from_millis(CLIENT_TIMEOUT_MS))
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {path} got no answer: {error}"))
        .status()
}

/// Prints the end of the daemon's log when the test fails: the temporary directory that
/// holds it is gone afterwards.
struct LogOnFailure(PathBuf);

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let log = std::fs::read_to_string(&self.0).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(60);
        eprintln!("The daemon's log (end):\n{}", lines[start..].join("\n"));
    }
}

/// The daemon with its log in `dir` (a fault makes it log a line per refusal).
async fn start_daemon_in(dir: &Path, database_url: &str) -> (Daemon, PathBuf, LogOnFailure) {
    let console_path = dir.join("console.jsonl");
    let config_path = dir.join("faults.toml");
    std::fs::write(
        &config_path,
        "# The defaults, with the environment's settings.\n",
    )
    .unwrap();
    let log_path = dir.join("paystep.log");
    let request_timeout_ms = REQUEST_TIMEOUT_MS.to_string();
    let settings = [
        ("PAYSTEP__DATABASE__ACQUIRE_TIMEOUT_MS", ACQUIRE_TIMEOUT_MS),
        (
            "PAYSTEP__HTTP__REQUEST_TIMEOUT_MS",
            request_timeout_ms.as_str(),
        ),
    ];
    let daemon = start_daemon_logging(
        database_url,
        &console_path,
        (&config_path, &log_path),
        &settings,
    )
    .await;
    (daemon, console_path, LogOnFailure(log_path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_is_a_clean_503_then_recovers_by_itself_losing_nothing() {
    sqlx::any::install_default_drivers();
    let cluster = PostgresCluster::start().await;
    let mut admin = AnyConnection::connect(&cluster.url("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE paystep")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let database_url = cluster.url("paystep");
    let dir = tempfile::tempdir().unwrap();
    let (daemon, console_path, _log) = start_daemon_in(dir.path(), &database_url).await;
    let load = Load::start(&daemon, &console_path).await;
    load.wait_for_acknowledged_steps(Phase::Before, ACKNOWLEDGED_PER_CLIENT_MIN)
        .await;

    cluster.stop_immediately().await;
    load.phases.set(Phase::Fault);
    let stopped_at = Instant::now();
    assert_eq!(
        get_status(&daemon, "/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get_status(&daemon, "/healthz").await, StatusCode::OK);
    load.wait_for_refusals_during_the_fault(REFUSALS_PER_CLIENT_MIN)
        .await;
    assert_eq!(
        get_status(&daemon, "/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get_status(&daemon, "/healthz").await, StatusCode::OK);
    assert_confirmation_page_unavailable(&daemon, &console_path).await;
    let outage = stopped_at.elapsed();

    load.phases.set(Phase::Repairing);
    let restarting_at = Instant::now();
    cluster.start_again().await;
    let server_up = restarting_at.elapsed();
    wait_until_ready(&daemon).await;
    let ready = restarting_at.elapsed();
    load.phases.set(Phase::After);
    load.wait_for_acknowledged_steps(Phase::After, ACKNOWLEDGED_PER_CLIENT_MIN)
        .await;
    let outcomes = load.finish().await;

    let codes = [DATABASE_UNAVAILABLE, OUTCOME_UNKNOWN_CODE];
    assert_answered_or_refused_cleanly(&outcomes, &codes);
    for outcome in outcomes.iter().filter(|o| o.during_the_fault()) {
        assert_eq!(
            outcome.status,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "{outcome:?}"
        );
        assert_eq!(outcome.code(), Some(DATABASE_UNAVAILABLE), "{outcome:?}");
    }
    let refused_after = outcomes
        .iter()
        .filter(|o| o.sent == Phase::After && !o.acknowledged());
    assert_eq!(
        refused_after.count(),
        0,
        "refusals after the daemon said it was ready"
    );
    wait_until_outbox_drained(&database_url).await;
    let mut figures = Figures::of(&outcomes);
    let mut conn = AnyConnection::connect(&database_url).await.unwrap();
    assert_nothing_acknowledged_lost(&mut conn, &outcomes, &mut figures).await;
    crate::helpers::report_figures(&format!(
        "PostgreSQL restart under load ({CLIENTS} clients): {figures:?}; outage {} ms; \
         server accepting connections {} ms and daemon ready {} ms after the start began",
        outage.as_millis(),
        server_up.as_millis(),
        ready.as_millis()
    ));
}

/// A customer opening a confirmation link while the database is away gets a page that says
/// to try again (503 with `Retry-After`), not an internal error.
async fn assert_confirmation_page_unavailable(daemon: &Daemon, console_path: &Path) {
    let link = console_lines(console_path)
        .into_iter()
        .find(|message| message["kind"] == "confirmation_request")
        .and_then(|message| message["url"].as_str().map(str::to_owned))
        .expect("the console has a confirmation request");
    assert!(link.starts_with(&daemon.base), "{link}");
    let response = daemon
        .client
        .get(&link)
        .timeout(Duration::from_millis(CLIENT_TIMEOUT_MS))
        .send()
        .await
        .expect("the page answers");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let page = response.text().await.unwrap();
    assert!(page.contains("try again in a moment"), "{page}");
}

/// Polls `/readyz` until it answers 200, for at most `DEADLINE_S`.
async fn wait_until_ready(daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(DEADLINE_S);
    while get_status(daemon, "/readyz").await != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "the daemon never became ready again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small tmpfs on a directory of its own, unmounted when dropped: a disk that fills.
struct SmallFileSystem {
    mount_point: PathBuf,
}

/// ENOSPC.
const NO_SPACE_LEFT_ON_DEVICE: i32 = 28;

impl SmallFileSystem {
    fn mount(mount_point: PathBuf, size: &str) -> SmallFileSystem {
        std::fs::create_dir_all(&mount_point).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount_point)
            .output()
            .expect("mount runs");
        assert!(
            mounted.status.success(),
            "cannot mount a tmpfs (the test needs root): {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        SmallFileSystem { mount_point }
    }

    fn filler(&self) -> PathBuf {
        self.mount_point.join("filler")
    }

    /// Writes the filler file until the file system has no byte left; returns its size.
    fn fill(&self) -> u64 {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0xA5u8; 1 << 16];
        let mut written = 0u64;
        // Smaller and smaller writes take the last partial pages too. The file system is
        // finite, so each size ends at ENOSPC.
        for size in [1 << 16, 4096, 512, 1] {
            loop {
                match filler.write(&chunk[..size]) {
                    Ok(0) => break,
                    Ok(count) => written += count as u64,
                    Err(error) if error.raw_os_error() == Some(NO_SPACE_LEFT_ON_DEVICE) => break,
                    Err(error) => panic!("filling the file system: {error}"),
                }
            }
        }
        written
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.mount_point)
            .stderr(std::process::Stdio::null())
            .status();
        if !unmounted.is_ok_and(|status| status.success()) {
            // Still busy (a daemon not reaped yet): detach it now, the kernel frees it later.
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(&self.mount_point)
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_cleanly_keeps_reads_and_data_and_recovers_when_freed() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallFileSystem::mount(dir.path().join("disk"), "16m");
    let database_path = disk.mount_point.join("paystep.db");
    let database_url = format!("sqlite://{}", database_path.display());
    let (daemon, console_path, _log) = start_daemon_in(dir.path(), &database_url).await;
    let load = Load::start(&daemon, &console_path).await;
    load.wait_for_acknowledged_steps(Phase::Before, ACKNOWLEDGED_PER_CLIENT_MIN)
        .await;

    let filled = disk.fill();
    load.phases.set(Phase::Fault);
    let filled_at = Instant::now();
    // SQLite goes on writing into room its files already have (the part of the WAL a
    // checkpoint let it reuse) until it needs a new page; from then on writes are refused.
    load.wait_for_refusals_during_the_fault(REFUSALS_PER_CLIENT_MIN)
        .await;
    let until_refusals = filled_at.elapsed();
    assert_reads_work_while_full(&daemon, &load).await;
    let full_for = filled_at.elapsed();

    load.phases.set(Phase::Repairing);
    disk.free();
    load.phases.set(Phase::After);
    let freed_at = Instant::now();
    load.wait_for_acknowledged_steps(Phase::After, ACKNOWLEDGED_PER_CLIENT_MIN)
        .await;
    let writing_again = freed_at.elapsed();
    let outcomes = load.finish().await;
    wait_until_outbox_drained(&database_url).await;
    daemon.sigkill().await;

    assert_answered_or_refused_cleanly(&outcomes, &[STORAGE_UNAVAILABLE]);
    let refused_after = outcomes
        .iter()
        .filter(|o| o.sent == Phase::After && !o.acknowledged());
    assert_eq!(
        refused_after.count(),
        0,
        "writes refused after the space was freed"
    );
    let mut figures = Figures::of(&outcomes);
    let mut conn = AnyConnection::connect(&database_url).await.unwrap();
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(integrity, "ok");
    assert_nothing_acknowledged_lost(&mut conn, &outcomes, &mut figures).await;
    conn.close().await.unwrap();
    crate::helpers::report_figures(&format!(
        "SQLite disk full under load ({CLIENTS} clients): {figures:?}; filler {filled} bytes; \
         {REFUSALS_PER_CLIENT_MIN} refusals per client {} ms after the disk filled; full for {} ms; \
         every client writing again {} ms after the space was freed",
        until_refusals.as_millis(),
        full_for.as_millis(),
        writing_again.as_millis()
    ));
}

/// While the disk is full, the daemon is alive and ready and answers reads: a process as
/// its last acknowledged step left it.
async fn assert_reads_work_while_full(daemon: &Daemon, load: &Load) {
    assert_eq!(get_status(daemon, "/healthz").await, StatusCode::OK);
    assert_eq!(get_status(daemon, "/readyz").await, StatusCode::OK);
    for process_id in &load.process_ids {
        let path = format!("/v1/processes/{process_id}");
        let (status, process) = daemon
            .call(reqwest::Method::GET, &path, &load.api_key, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{process}");
        assert_eq!(process["status"], "active", "{process}");
    }
}
