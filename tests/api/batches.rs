//! Group commit: many concurrent operations of every kind share write batches, and each still
//! gets the answer it would have got alone; and two daemons writing for one retailer keep
//! its events feed numbered without gaps.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::daemon::{free_port, start_daemon_on, Daemon};
use crate::helpers::{eur_process, fresh_database_url, spawn_app, Db, Retailer, TestApp, PIN};
use crate::on_both_databases;

on_both_databases!(
    three_hundred_mixed_operations_land_in_shared_batches_and_each_gets_its_own_answer
);

// ---------------------------------------------------------------------------------------
// A sequential model of the operations the burst mixes, in minor units (cents) of EUR.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    AwaitingConfirmation,
    Active,
    Closed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::AwaitingConfirmation => "awaiting_confirmation",
            Status::Active => "active",
            Status::Closed => "closed",
        }
    }
}

/// A process as the model sees it. Every process has the top-up policy `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelProcess {
    customer: usize,
    status: Status,
    release: i64,
    released: i64,
    charged: i64,
    returned: i64,
}

impl ModelProcess {
    fn remaining(&self) -> i64 {
        self.released - self.charged - self.returned
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    processes: Vec<ModelProcess>,
    /// Each customer's available credit.
    credits: Vec<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    /// `POST /v1/processes/{id}/steps`
    Step { process: usize, amount: i64 },
    /// The customer confirms on the page, with the right PIN.
    Confirm { process: usize },
    /// `POST /v1/processes/{id}/close`
    Close { process: usize },
}

/// An answer as far as the model predicts it: the status and the API's error code (empty
/// for successes and for the confirmation page, which answers HTML).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    status: StatusCode,
    code: String,
}

impl Outcome {
    fn done(status: StatusCode) -> Outcome {
        Outcome {
            status,
            code: String::new(),
        }
    }

    fn refused(status: StatusCode, code: &str) -> Outcome {
        Outcome {
            status,
            code: code.to_string(),
        }
    }
}

impl Model {
    fn new(customers: usize, credit: i64) -> Model {
        Model {
            processes: Vec::new(),
            credits: vec![credit; customers],
        }
    }

    fn open(&mut self, customer: usize, release: i64) -> usize {
        self.processes.push(ModelProcess {
            customer,
            status: Status::AwaitingConfirmation,
            release,
            released: 0,
            charged: 0,
            returned: 0,
        });
        self.processes.len() - 1
    }

    /// What `operation` answers when it runs alone on the model's state, and its effect.
    fn apply(&mut self, operation: Operation) -> Outcome {
        match operation {
            Operation::Step { process, amount } => {
                let process = &mut self.processes[process];
                if process.status != Status::Active {
                    return Outcome::refused(StatusCode::CONFLICT, "process_not_active");
                }
                if amount > process.remaining() {
                    // Top-up policy none: the step is declined, and nothing moves.
                    return Outcome::refused(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "insufficient_release",
                    );
                }
                process.charged += amount;
                Outcome::done(StatusCode::CREATED)
            }
            Operation::Confirm { process } => {
                let process = &mut self.processes[process];
                if process.status != Status::AwaitingConfirmation {
                    return Outcome::done(StatusCode::CONFLICT);
                }
                let credit = &mut self.credits[process.customer];
                assert!(
                    *credit >= process.release,
                    "the model only knows confirmations that the customer's credit covers"
                );
                *credit -= process.release;
                process.released = process.release;
                process.status = Status::Active;
                Outcome::done(StatusCode::OK)
            }
            Operation::Close { process } => {
                let process = &mut self.processes[process];
                if process.status == Status::Closed {
                    return Outcome::refused(StatusCode::CONFLICT, "process_not_active");
                }
                let rest = process.remaining();
                process.returned += rest;
                self.credits[process.customer] += rest;
                process.status = Status::Closed;
                Outcome::done(StatusCode::OK)
            }
        }
    }
}

fn format_minor(minor: i64) -> String {
    assert!(minor >= 0, "the model never goes negative: {minor}");
    format!("{}.{:02}", minor / 100, minor % 100)
}

// ---------------------------------------------------------------------------------------
// The same operations against the app.

struct RealProcess {
    id: String,
    /// The link of its first confirmation request.
    link: String,
}

/// Runs one operation against the app; returns what the model predicts, and the body for
/// the failure message.
async fn perform(
    app: &TestApp,
    retailer: &Retailer,
    processes: &[RealProcess],
    operation: Operation,
) -> (Outcome, Value) {
    let api = |status: StatusCode, body: Value| {
        let code = body["error"]["code"].as_str().unwrap_or("").to_string();
        (Outcome { status, code }, body)
    };
    match operation {
        Operation::Step { process, amount } => {
            let answer = app
                .step(retailer, &processes[process].id, &format_minor(amount))
                .await;
            api(answer.status, answer.body)
        }
        Operation::Confirm { process } => {
            let (status, page) = app
                .answer_page(&processes[process].link, "confirm", Some(PIN))
                .await;
            (Outcome::done(status), Value::String(page))
        }
        Operation::Close { process } => {
            let path = format!("/v1/processes/{}/close", processes[process].id);
            let answer = app.post(retailer, &path, json!({})).await;
            api(answer.status, answer.body)
        }
    }
}

const CUSTOMERS: usize = 4;
const CREDIT: i64 = 100_000;

fn msisdn(customer: usize) -> String {
    format!("+4917520000{:02}", customer + 1)
}

/// The app and the model side by side while the scene is set up one operation at a time.
struct Bench<'a> {
    app: &'a TestApp,
    retailer: &'a Retailer,
    model: Model,
    real: Vec<RealProcess>,
}

impl Bench<'_> {
    async fn open(&mut self, customer: usize, release: i64) -> usize {
        let mut body = eur_process(&msisdn(customer), &format_minor(release));
        body["top_up"] = json!({"policy": "none"});
        let process = self.app.open_process(self.retailer, body).await;
        let id = process["id"].as_str().unwrap().to_string();
        let link = self.app.confirmation_link(&id, 1).await;
        self.real.push(RealProcess { id, link });
        let index = self.model.open(customer, release);
        assert_eq!(index + 1, self.real.len());
        index
    }

    /// Runs `operation` alone: the app must answer as the model does.
    async fn alone(&mut self, operation: Operation) {
        let expected = self.model.apply(operation);
        let (got, body) = perform(self.app, self.retailer, &self.real, operation).await;
        assert_eq!(got, expected, "{operation:?} while setting up: {body}");
    }
}

/// The operations in a fixed order that mixes the kinds all through the burst: index `i`
/// takes operation `i * 7919 mod n` (7919 is a prime that divides no n used here, so every
/// operation is taken once).
fn mixed(operations: &[Operation]) -> Vec<Operation> {
    let n = operations.len();
    let order: Vec<usize> = (0..n).map(|index| index * 7919 % n).collect();
    assert_eq!(order.iter().collect::<HashSet<_>>().len(), n);
    order.into_iter().map(|index| operations[index]).collect()
}

async fn three_hundred_mixed_operations_land_in_shared_batches_and_each_gets_its_own_answer(
    db: Db,
) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    let mut customer_ids = Vec::new();
    for customer in 0..CUSTOMERS {
        customer_ids.push(
            app.create_customer(&msisdn(customer), &format_minor(CREDIT))
                .await,
        );
    }
    let mut bench = Bench {
        app: &app,
        retailer: &retailer,
        model: Model::new(CUSTOMERS, CREDIT),
        real: Vec::new(),
    };
    let mut next_customer = 0..;
    let mut customer = move || next_customer.next().unwrap() % CUSTOMERS;

    // Active with ample release: every step of the burst fits whatever the order.
    let mut active = Vec::new();
    for _ in 0..8 {
        let process = bench.open(customer(), 10_000).await;
        bench.alone(Operation::Confirm { process }).await;
        active.push(process);
    }
    // Closed before the burst.
    let mut closed = Vec::new();
    for _ in 0..4 {
        let process = bench.open(customer(), 500).await;
        bench.alone(Operation::Confirm { process }).await;
        bench.alone(Operation::Close { process }).await;
        closed.push(process);
    }
    // Exhausted, with no top-up: nothing left, or less than a step.
    let mut exhausted = Vec::new();
    for (release, charged) in [(200, 200), (200, 200), (150, 100), (150, 100)] {
        let process = bench.open(customer(), release).await;
        bench.alone(Operation::Confirm { process }).await;
        bench
            .alone(Operation::Step {
                process,
                amount: charged,
            })
            .await;
        exhausted.push(process);
    }
    // Waiting for the customer, who confirms during the burst.
    let mut awaiting = Vec::new();
    for _ in 0..20 {
        awaiting.push(bench.open(customer(), 300).await);
    }
    // Active, closed during the burst (and nothing else touches them); half have been
    // charged before.
    let mut to_close = Vec::new();
    for index in 0..20 {
        let process = bench.open(customer(), 400).await;
        bench.alone(Operation::Confirm { process }).await;
        if index % 2 == 0 {
            bench
                .alone(Operation::Step {
                    process,
                    amount: 100,
                })
                .await;
        }
        to_close.push(process);
    }

    let mut burst = Vec::new();
    for &process in &active {
        burst.extend((0..25).map(|_| Operation::Step {
            process,
            amount: 100,
        }));
    }
    for &process in &closed {
        burst.extend((0..5).map(|_| Operation::Step {
            process,
            amount: 100,
        }));
    }
    for &process in &exhausted {
        burst.extend((0..10).map(|_| Operation::Step {
            process,
            amount: 100,
        }));
    }
    burst.extend(
        awaiting
            .iter()
            .map(|&process| Operation::Confirm { process }),
    );
    burst.extend(to_close.iter().map(|&process| Operation::Close { process }));
    assert_eq!(burst.len(), 300);
    let burst = mixed(&burst);

    // The answers each operation would get alone, in the burst's order...
    let mut model = bench.model.clone();
    let expected: Vec<Outcome> = burst
        .iter()
        .map(|operation| model.apply(*operation))
        .collect();
    // ...and in the opposite order the same: the mix is built so that no answer depends on
    // which concurrent operation commits first.
    let mut backwards = bench.model.clone();
    let mut expected_backwards: Vec<Outcome> = burst
        .iter()
        .rev()
        .map(|operation| backwards.apply(*operation))
        .collect();
    expected_backwards.reverse();
    assert_eq!(
        expected_backwards, expected,
        "the model depends on the order"
    );
    assert_eq!(backwards, model, "the model depends on the order");
    let expect = |status: StatusCode, code: &str| {
        expected
            .iter()
            .filter(|outcome| outcome.status == status && outcome.code == code)
            .count()
    };
    assert_eq!(expect(StatusCode::CREATED, ""), 200);
    assert_eq!(expect(StatusCode::CONFLICT, "process_not_active"), 20);
    assert_eq!(
        expect(StatusCode::UNPROCESSABLE_ENTITY, "insufficient_release"),
        40
    );
    assert_eq!(
        expect(StatusCode::OK, ""),
        40,
        "20 confirmations, 20 closes"
    );

    let before = app.engine.store.write_stats();
    let answers = join_all(
        burst
            .iter()
            .map(|operation| perform(&app, &retailer, &bench.real, *operation)),
    )
    .await;
    let after = app.engine.store.write_stats();

    let wrong: Vec<String> = burst
        .iter()
        .zip(&expected)
        .zip(&answers)
        .filter(|((_, expected), (got, _))| got != *expected)
        .map(|((operation, expected), (got, body))| {
            format!("{operation:?}: expected {expected:?}, got {got:?}: {body}")
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} answers differ from what each would get alone:\n{}",
        wrong.len(),
        burst.len(),
        wrong.join("\n")
    );

    for (index, expected) in model.processes.iter().enumerate() {
        let got = app.process(&retailer, &bench.real[index].id).await;
        assert_eq!(
            got["status"],
            expected.status.as_str(),
            "process {index}: {got:#}"
        );
        for (field, minor) in [
            ("released", expected.released),
            ("charged", expected.charged),
            ("remaining", expected.remaining()),
            ("returned", expected.returned),
        ] {
            assert_eq!(
                got[field],
                format_minor(minor),
                "process {index}, {field}: {got:#}"
            );
        }
    }
    for (customer, id) in customer_ids.iter().enumerate() {
        assert_eq!(
            app.credit(id).await,
            format_minor(model.credits[customer]),
            "customer {customer}'s credit"
        );
    }
    app.assert_ledger_holds().await;

    // Every operation that writes went through the store's write path; on SQLite they
    // shared batches (PostgreSQL commits each on its own, and shares WAL flushes instead).
    let operations = after.operations - before.operations;
    let batches = after.batches - before.batches;
    let writes = expected
        .iter()
        .filter(|outcome| outcome.status != StatusCode::CONFLICT)
        .count() as u64;
    eprintln!("{db:?}: {operations} write operations in {batches} batches");
    assert!(
        operations >= writes,
        "{operations} write operations counted for {writes} writes sent"
    );
    if db == Db::Sqlite {
        assert!(
            batches < operations,
            "{operations} write operations in {batches} batches: none shared a batch"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Two daemons, one PostgreSQL database, one retailer: the events feed read during the run.

const PROCESSES: usize = 16;
const CLIENTS: usize = 8;
const STEPS_PER_CLIENT: usize = 40;

/// Follows the retailer's feed on `daemon` until `done` is set and a read after it finds
/// nothing new. Every page must continue exactly where the last one ended.
async fn follow_feed(daemon: &Daemon, api_key: &str, done: &AtomicBool) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut after = 0_i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Read before the page: once every step was answered, a page after it that is
        // empty means the feed is complete.
        let finished = done.load(Ordering::SeqCst);
        let (status, page) = daemon
            .call(
                Method::GET,
                &format!("/v1/events?after={after}&limit=100"),
                api_key,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let events = page["events"].as_array().unwrap();
        for event in events {
            let seq = event["seq"].as_i64().unwrap();
            assert_eq!(
                seq,
                after + 1,
                "after seq {after} the feed showed {seq}: {event}"
            );
            after = seq;
            seen.push(event.clone());
        }
        assert_eq!(page["next_after"], after, "{page}");
        if events.is_empty() {
            if finished {
                return seen;
            }
            assert!(Instant::now() < deadline, "the load did not finish");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Two daemons share one PostgreSQL database and both charge steps of the same retailer's
/// processes at once, while a reader follows that retailer's feed on one of them: the feed
/// never skips a number nor goes back, and ends with every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_postgres_number_a_retailers_events_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(Db::Postgres, dir.path()).await;
    // Each daemon delivers to its own console: the links of the setup are all in the first's.
    let first_console = dir.path().join("first.jsonl");
    let second_console = dir.path().join("second.jsonl");
    let first = start_daemon_on(&database_url, &first_console, free_port(), &[]).await;
    let api_key = first.create_retailer(None).await.api_key;
    let mut processes = Vec::new();
    for index in 0..PROCESSES {
        let msisdn = format!("+4917530000{index:02}");
        processes.push(
            first
                .open_confirmed_process(&first_console, &api_key, &msisdn, ("100.00", "50.00"))
                .await,
        );
    }
    let second = start_daemon_on(&database_url, &second_console, free_port(), &[]).await;
    let daemons = [&first, &second];

    let done = AtomicBool::new(false);
    let load = async {
        let clients = (0..CLIENTS).map(|client| {
            let (api_key, processes) = (&api_key, &processes);
            async move {
                let mut statuses = Vec::new();
                for step in 0..STEPS_PER_CLIENT {
                    // Alternate daemons and spread over the processes, so that both daemons
                    // charge the same processes at the same time.
                    let daemon = daemons[(client + step) % 2];
                    let process_id = &processes[(client * 3 + step) % PROCESSES];
                    let (status, body) = daemon
                        .call(
                            Method::POST,
                            &format!("/v1/processes/{process_id}/steps"),
                            api_key,
                            Some(json!({"amount": "0.01"})),
                        )
                        .await;
                    statuses.push((status, body));
                }
                statuses
            }
        });
        let answers: Vec<(StatusCode, Value)> =
            join_all(clients).await.into_iter().flatten().collect();
        done.store(true, Ordering::SeqCst);
        answers
    };
    let (answers, seen) = tokio::join!(load, follow_feed(&first, &api_key, &done));

    assert_eq!(answers.len(), CLIENTS * STEPS_PER_CLIENT);
    let refused: Vec<&(StatusCode, Value)> = answers
        .iter()
        .filter(|(status, _)| *status != StatusCode::CREATED)
        .collect();
    assert!(
        refused.is_empty(),
        "every step fits its release, yet {} were not charged: {refused:?}",
        refused.len()
    );
    let charged = seen
        .iter()
        .filter(|event| event["type"] == "step.charged")
        .count();
    assert_eq!(
        charged,
        answers.len(),
        "one step.charged event per charged step"
    );
    let ids: HashSet<&str> = seen
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), seen.len(), "every event once");

    // The feed the reader followed is the whole feed, as either daemon shows it now.
    let total: i64 = {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&database_url).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    let last = seen.last().unwrap()["seq"].as_i64().unwrap();
    assert_eq!(last, total, "the last seq is the number of events");
    assert_eq!(seen.len() as i64, total);
    let again = follow_feed(&second, &api_key, &AtomicBool::new(true)).await;
    let ids_again: Vec<&Value> = again.iter().map(|event| &event["id"]).collect();
    let ids_seen: Vec<&Value> = seen.iter().map(|event| &event["id"]).collect();
    assert_eq!(ids_again, ids_seen, "the second daemon shows the same feed");

    let (status, report) = first
        .call(
            Method::GET,
            "/admin/v1/ledger/verify",
            crate::helpers::ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report:#}");
    first.sigkill().await;
    second.sigkill().await;
}
