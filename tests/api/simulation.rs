//! A seeded, reproducible simulation of the whole app, in the spirit of TigerBeetle's VOPR:
//! one `u64` seed draws a long sequence of operations on every inbound path, and after each
//! one the database must agree with a reference model written for this test.
//!
//! **Operations** (`simulation/ops.rs`): retailers open processes for customers and for the
//! till (every top-up policy, with and without a first charge, now and then invalid), step
//! them (now and then with an invalid amount) and close them through the HTTP API;
//! customers answer on the confirmation page (HTTP form posts, and GETs that must change
//! nothing), by SMS (the adapter's grammar, then the engine's inbound path, `YES`/`NO` with
//! and without a code, `PAY`, `BAL`, anything else, strangers), and by phone (the engine
//! calls the voice handlers make: `Engine::answer_token` for keys on a call,
//! `Engine::pay_by_phone` for a till code keyed on a call to the service number), with
//! right, wrong and missing PINs (lockouts included); the operator deposits and adds
//! customers. SMS are held back and delivered late (reordered) and delivered twice.
//! Requests carry `Idempotency-Key`s, which are replayed (same body: the same answer, and
//! nothing changes) and reused (another body: 409). Two or three operations on one process
//! are sent at once; an open is sent twice at once under one key. The simulated clock
//! moves (`Op::Advance`) and the sweeper's round runs (`Op::Sweep`), so requests and idle
//! processes expire and expiry notices go out. Now and then the app crashes: it is dropped
//! between two operations and built again on the same database and clock.
//!
//! **Checks** (`simulation/model.rs`, `judge.rs`, `check.rs`): the model is plain integer
//! bookkeeping that calls no engine code. Every answer is compared with the model's
//! (status and error code, the step's status and remaining amount, the page's status, the
//! voice path's outcome, a replay's exact body). After every operation the database is
//! read for what the operation touched: each such process's status, amounts, steps,
//! pending request, expiry, its hold (the ledger invariant: hold = remaining) and its
//! release, step and return transfers (the ledger invariant: the process's totals equal its
//! transfers); each such customer's credit and PIN count; each such retailer's receivable
//! and its new events (gapless seq, and exactly the events the model expects, by process
//! and type). For a group sent at once, the model tries every serial order and accepts one
//! that explains every answer and the state. Every `PAYSTEP_SIM_AUDIT_EVERY` operations
//! (default 2,000), after every crash and at the end, an audit compares everything: every
//! process, account, customer and retailer, every account's balance against its transfers,
//! the balances' sum (zero), the charged steps against the step transfers, each retailer's
//! events. The engine's own `ledger::verify` (what `paystep ledger verify` runs: the
//! ledger's invariants and the audit log's hash chains) runs with every audit.
//!
//! **Running it.** CI runs `simulation::on_sqlite` and `simulation::on_postgres` with
//! 20,000 operations each. Environment:
//! - `PAYSTEP_SIM_SEED`: the seed (default: random, printed at the start and in any
//!   failure);
//! - `PAYSTEP_SIM_OPS`: how many operations (default 20,000);
//! - `PAYSTEP_SIM_AUDIT_EVERY`: operations between audits (default 2,000);
//! - `PAYSTEP_SIM_GROUPS=0`: operations sent at once go one after another instead.
//!
//! Short run, one database:
//! `cargo test --test api simulation::on_sqlite -- --nocapture`.
//! Long run (1,000,000 operations per database, figures printed): `scripts/simulate.sh`.
//! A failure panics naming the seed, the operation number and the command that replays
//! it, e.g. `PAYSTEP_SIM_SEED=42 PAYSTEP_SIM_OPS=1234 cargo test --test api
//! simulation::on_sqlite`: the same seed draws the same operations. Operations sent at once
//! race inside the app, so which of them committed first may differ from run to run (the
//! model accepts any order that explains the answers); everything else is the same in
//! every run, and `PAYSTEP_SIM_GROUPS=0` sends them one after another for a replay with
//! no race at all.
//!
//! With the `fault-injection` feature, `a_broken_invariant_is_caught_with_its_seed` switches
//! on `paystep::faults`, which makes step charges move one minor unit more than the step
//! from the N-th on, and shows the simulation catching it at the same operation twice.

mod check;
mod harness;
mod judge;
mod model;
mod ops;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Instant;

use futures::future::join_all;
use serde_json::json;

use crate::helpers::Db;
use crate::on_both_databases;
use harness::{execute, Action, Answer, Meaning, Preparer, Registry, SimApp, Text};
use model::{Model, Rules};
use ops::{Generator, Op, Sms};

const OPERATIONS_DEFAULT: u64 = 20_000;
const AUDIT_EVERY_DEFAULT: u64 = 2_000;
const LANES_DEFAULT: usize = 4;
const LANES_MAX: usize = 64;
/// Progress lines for long runs: every this many operations, at least.
const PROGRESS_EVERY_MIN: u64 = 50_000;
const PROGRESS_LINES_MAX: u64 = 20;

on_both_databases!(simulation);

async fn simulation(db: Db) {
    let config = Config::from_env();
    eprintln!(
        "simulation {} seed={}: {} operations in {} lanes (replay: PAYSTEP_SIM_SEED={})",
        name(db),
        config.seed,
        config.operations,
        config.lanes,
        config.seed
    );
    match run(db, &config).await {
        Ok(figures) => crate::helpers::report_figures(&figures.to_string()),
        Err(failure) => panic!("{failure}"),
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub operations: u64,
    pub audit_every: u64,
    pub groups: bool,
    pub lanes: usize,
    /// Switch on the fault: step charges move one unit more from the N-th on.
    pub fault_after: Option<u64>,
}

impl Config {
    fn from_env() -> Config {
        let number = |name: &str| -> Option<u64> {
            std::env::var(name).ok().map(|text| {
                text.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name} must be a number, not {text:?}"))
            })
        };
        let lanes = number("PAYSTEP_SIM_LANES").map_or(LANES_DEFAULT, |lanes| lanes as usize);
        assert!(
            (1..=LANES_MAX).contains(&lanes),
            "PAYSTEP_SIM_LANES must be 1 to {LANES_MAX}"
        );
        Config {
            seed: number("PAYSTEP_SIM_SEED").unwrap_or_else(rand::random),
            operations: number("PAYSTEP_SIM_OPS").unwrap_or(OPERATIONS_DEFAULT),
            audit_every: number("PAYSTEP_SIM_AUDIT_EVERY")
                .unwrap_or(AUDIT_EVERY_DEFAULT)
                .max(1),
            groups: number("PAYSTEP_SIM_GROUPS").is_none_or(|groups| groups != 0),
            lanes,
            fault_after: None,
        }
    }
}

fn name(db: Db) -> &'static str {
    match db {
        Db::Sqlite => "sqlite",
        Db::Postgres => "postgres",
    }
}

/// A run that went wrong: where, and how to see it again.
#[derive(Debug, Clone)]
pub struct Failure {
    pub db: Db,
    pub seed: u64,
    /// The number of the operation that failed, from 0; `None` while setting up.
    pub operation: Option<u64>,
    pub op: String,
    pub message: String,
    pub groups: bool,
    pub lanes: usize,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let db = name(self.db);
        let ops = self.operation.map_or(1, |operation| operation + 1);
        let groups = if self.groups {
            ""
        } else {
            "PAYSTEP_SIM_GROUPS=0 "
        };
        let lanes = if self.lanes == LANES_DEFAULT {
            String::new()
        } else {
            format!("PAYSTEP_SIM_LANES={} ", self.lanes)
        };
        write!(
            f,
            "simulation {db} seed={} failed at operation {}: {}\n  {}\nreplay: \
             PAYSTEP_SIM_SEED={} PAYSTEP_SIM_OPS={ops} {lanes}{groups}cargo test --test api \
             simulation::on_{db} -- --nocapture",
            self.seed,
            self.operation
                .map_or("(setup)".to_string(), |operation| format!(
                    "{operation} (lane {})",
                    operation % self.lanes as u64
                )),
            self.op,
            self.message,
            self.seed,
        )
    }
}

/// The run's figures.
#[derive(Debug, Default)]
pub struct Figures {
    db: &'static str,
    seed: u64,
    operations: u64,
    lanes: usize,
    kinds: BTreeMap<&'static str, u64>,
    events: BTreeMap<String, u64>,
    outcomes: BTreeMap<String, u64>,
    nothing: u64,
    audits: u64,
    engine_verifications: u64,
    /// Time spent in audits and in the engine's own verification.
    audit_seconds: f64,
    verify_seconds: f64,
    seconds: f64,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = |name: &str| self.kinds.get(name).copied().unwrap_or(0);
        let event = |name: &str| self.events.get(name).copied().unwrap_or(0);
        let answers = kind("page") + kind("voice") + kind("sms") + kind("call_till");
        write!(
            f,
            "simulation {} seed={}: {} operations in {} lanes ({} steps: {} charged, {} top-ups \
             asked, {} declined; {} answers by page, SMS and phone: {} releases confirmed, {} \
             declined; {} processes opened, {} closed, {} expired; {} steps expired; {} \
             idempotent replays; {} concurrent groups; {} crashes; {} sweeps; {} audits in {:.1} \
             s, {} engine verifications in {:.1} s; {} operations found nothing to do) in {:.1} s, {:.0} ops/s",
            self.db,
            self.seed,
            self.operations,
            self.lanes,
            kind("step") + kind("group_step"),
            event("step.charged"),
            event("step.awaiting_confirmation"),
            event("step.declined"),
            answers,
            event("process.confirmed"),
            event("process.declined"),
            event("process.created"),
            event("process.closed"),
            event("process.expired"),
            event("step.expired"),
            kind("replay") + kind("group_replay"),
            kind("group"),
            kind("crash"),
            kind("sweep"),
            self.audits,
            self.audit_seconds,
            self.engine_verifications,
            self.verify_seconds,
            self.nothing,
            self.seconds,
            self.operations as f64 / self.seconds.max(0.001),
        )?;
        if !self.outcomes.is_empty() {
            write!(f, "\n  outcomes by phone: {:?}", self.outcomes)?;
        }
        Ok(())
    }
}

/// One stream of operations: its own generator, retailers and customers. Lanes share
/// nothing but the app, the clock and the sweeper, so their operations run at the same
/// time and commute; the clock, the sweeper and crashes wait for every lane.
struct Lane {
    generator: Generator,
    /// The model's (global) index of each of the lane's retailers, customers, processes
    /// and keyed requests, by the generator's (lane-local) index.
    retailers: Vec<usize>,
    customers: Vec<usize>,
    processes: Vec<usize>,
    keyed: Vec<usize>,
    /// SMS sent and not delivered yet, and the last ones delivered.
    sms_held: Vec<Text>,
    sms_sent: VecDeque<Text>,
}

/// A lane's single operation of a round, judged, with what the model expects it to have
/// touched and caused.
struct Judged<'a> {
    lane: usize,
    op: &'a Op,
    action: &'a Action,
    answer: Answer,
    touched: model::Touched,
    events: Vec<model::Event>,
}

/// What one lane sends in a round.
enum Unit {
    Single(Action),
    /// Operations on one process sent at once.
    Together(Vec<Action>),
}

impl Unit {
    fn actions(&self) -> &[Action] {
        match self {
            Unit::Single(action) => std::slice::from_ref(action),
            Unit::Together(actions) => actions,
        }
    }
}

struct Sim {
    app: SimApp,
    model: Model,
    registry: Registry,
    /// Each retailer's last event checked.
    last_seq: Vec<i64>,
    figures: Figures,
    groups: bool,
    lanes: Vec<Lane>,
}

fn rules() -> Rules {
    let settings = harness::settings("sqlite://unused", std::path::Path::new("unused"));
    let max_amount: i64 = settings
        .limits
        .max_amount
        .try_into()
        .expect("a whole number of major units");
    Rules {
        confirmation_ttl_ms: settings.engine.confirmation_ttl_s * 1_000,
        pre_expiry_notice_ms: settings.engine.pre_expiry_notice_s * 1_000,
        pin_tries_per_request: settings.security.pin_tries_per_request,
        pin_lockout_after: settings.security.pin_lockout_after,
        pin_lockout_ms: settings.security.pin_lockout_s * 1_000,
        steps_per_process_max: harness::STEPS_PER_PROCESS_MAX,
        max_amount_minor: max_amount * 100,
    }
}

/// Runs the simulation; `Err` names the seed and the operation that failed.
pub async fn run(db: Db, config: &Config) -> Result<Figures, Failure> {
    let started = Instant::now();
    let app = SimApp::start(db).await;
    let lanes = (0..config.lanes)
        .map(|lane| Lane {
            // Each lane's own stream, drawn from the seed and the lane's number.
            generator: Generator::new(
                config.seed ^ (lane as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ),
            retailers: Vec::new(),
            customers: Vec::new(),
            processes: Vec::new(),
            keyed: Vec::new(),
            sms_held: Vec::new(),
            sms_sent: VecDeque::new(),
        })
        .collect();
    let mut sim = Sim {
        model: Model::new(rules(), harness::EPOCH_MS),
        app,
        registry: Registry::default(),
        last_seq: Vec::new(),
        figures: Figures {
            db: name(db),
            seed: config.seed,
            lanes: config.lanes,
            ..Figures::default()
        },
        groups: config.groups,
        lanes,
    };
    let outcome = sim.run(config, started).await;
    #[cfg(feature = "fault-injection")]
    if config.fault_after.is_some() {
        for (id, _) in &sim.registry.retailers {
            paystep::faults::disarm(id);
        }
    }
    // The seed replays a failure: its database need not stay.
    sim.app.finish().await;
    outcome.map_err(|(operation, op, message)| Failure {
        db,
        seed: config.seed,
        operation,
        op,
        message,
        groups: config.groups,
        lanes: config.lanes,
    })?;
    Ok(sim.figures)
}

/// Where a run failed: the operation's number (none while setting up), the operation, and
/// what was wrong.
type Failed = (Option<u64>, String, String);

fn is_barrier(op: &Op, groups: bool) -> bool {
    match op {
        Op::Advance { .. } | Op::Sweep | Op::Crash => true,
        Op::Group(_) => !groups,
        _ => false,
    }
}

impl Sim {
    async fn run(&mut self, config: &Config, started: Instant) -> Result<(), Failed> {
        self.set_up(config)
            .await
            .map_err(|message| (None, "setting up".to_string(), message))?;
        let progress_every = (config.operations / PROGRESS_LINES_MAX).max(PROGRESS_EVERY_MIN);
        let mut number = 0;
        let mut next_audit = config.audit_every;
        let mut last_audit = 0;
        let mut next_progress = progress_every;
        while number < config.operations {
            let count = (config.operations - number).min(self.lanes.len() as u64);
            let crashed = self.round(number, count as usize).await?;
            number += count;
            self.figures.operations = number;
            let last = number == config.operations;
            if crashed {
                // After a crash, an audit soon; but not more often than the periodic ones.
                next_audit = next_audit.min(last_audit + config.audit_every);
            }
            if number >= next_audit || last {
                self.audit()
                    .await
                    .map_err(|message| (Some(number - 1), "the audit".to_string(), message))?;
                last_audit = number;
                // An audit reads everything: as the data grows, they come further apart.
                next_audit = number + config.audit_every.max(number / 8);
            }
            if number >= next_progress && !last {
                next_progress += progress_every;
                eprintln!(
                    "simulation {} seed={}: {}/{} operations, {:.0} ops/s",
                    self.figures.db,
                    config.seed,
                    number,
                    config.operations,
                    number as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        self.figures.seconds = started.elapsed().as_secs_f64();
        Ok(())
    }

    /// One operation from each of the first `count` lanes: all sent at once, then each
    /// judged and checked; the clock, sweeps, crashes (and groups, when they are to go one
    /// by one) after them, in lane order. Returns whether the app crashed.
    async fn round(&mut self, base: u64, count: usize) -> Result<bool, Failed> {
        let mut units: Vec<(usize, Op, Unit)> = Vec::with_capacity(count);
        let mut barriers: Vec<(usize, Op)> = Vec::new();
        for lane in 0..count {
            let op = self.lanes[lane].generator.next_op();
            *self.figures.kinds.entry(op.kind()).or_default() += 1;
            let failed = |message: String| (Some(base + lane as u64), format!("{op:?}"), message);
            if is_barrier(&op, self.groups) {
                barriers.push((lane, op));
                continue;
            }
            let unit = match &op {
                Op::Group(members) => {
                    let mut actions = Vec::with_capacity(members.len());
                    for member in members {
                        *self.figures.kinds.entry(group_kind(member)).or_default() += 1;
                        let member = self.localize(lane, member);
                        actions.push(self.prepare(lane, &member).await.map_err(failed)?);
                    }
                    Unit::Together(actions)
                }
                op => {
                    let op = self.localize(lane, op);
                    Unit::Single(self.prepare(lane, &op).await.map_err(failed)?)
                }
            };
            units.push((lane, op, unit));
        }
        let answers: Vec<Answer> = {
            let (app, registry) = (&self.app, &self.registry);
            let actions = units.iter().flat_map(|(_, _, unit)| unit.actions());
            join_all(actions.map(|action| execute(app, registry, action))).await
        };
        // Judged in lane order, which is the order the model numbered what they create in;
        // the singles' checks are read together at the end.
        let mut answers = answers.into_iter();
        let mut judged = Vec::with_capacity(units.len());
        for (lane, op, unit) in &units {
            let actions = unit.actions();
            let answers: Vec<Answer> = answers.by_ref().take(actions.len()).collect();
            for (action, answer) in actions.iter().zip(&answers) {
                self.register(*lane, action, answer);
            }
            let failed = |message: String| (Some(base + *lane as u64), format!("{op:?}"), message);
            match unit {
                Unit::Together(actions) => {
                    self.settle_group(actions, &answers).await.map_err(failed)?
                }
                Unit::Single(action) => {
                    let answer = answers.into_iter().next().expect("one answer");
                    self.model.begin();
                    judge::apply(&mut self.model, action, &answer)
                        .map_err(|error| failed(format!("{error}\n  action: {action:?}")))?;
                    judged.push(Judged {
                        lane: *lane,
                        op,
                        action,
                        answer,
                        touched: self.model.touched.clone(),
                        events: self.model.events.clone(),
                    });
                }
            }
        }
        self.check_singles(base, judged).await?;
        let mut crashed = false;
        for (lane, op) in barriers {
            let failed = |message: String| (Some(base + lane as u64), format!("{op:?}"), message);
            crashed |= matches!(op, Op::Crash);
            match &op {
                Op::Group(members) => {
                    for member in members {
                        *self.figures.kinds.entry(group_kind(member)).or_default() += 1;
                        let member = self.localize(lane, member);
                        self.single(lane, &member).await.map_err(failed)?;
                    }
                }
                op => {
                    let op = self.localize(lane, op);
                    self.single(lane, &op).await.map_err(failed)?;
                }
            }
        }
        Ok(crashed)
    }

    async fn set_up(&mut self, config: &Config) -> Result<(), String> {
        for lane in 0..self.lanes.len() {
            for _ in 0..ops::RETAILERS {
                let retailer = self.registry.retailers.len();
                let body = json!({"name": format!("Simulated retailer {retailer}")}).to_string();
                let response = self
                    .app
                    .client
                    .post(self.app.url("/admin/v1/retailers"))
                    .bearer_auth(crate::helpers::ADMIN_TOKEN)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|error| format!("cannot create a retailer: {error}"))?;
                let created: serde_json::Value = response
                    .json()
                    .await
                    .map_err(|error| format!("cannot create a retailer: {error}"))?;
                let id = created["id"].as_str().ok_or("a retailer without id")?;
                let key = created["api_key"]
                    .as_str()
                    .ok_or("a retailer without key")?;
                self.registry
                    .retailer_index
                    .insert(id.to_string(), retailer);
                self.registry
                    .retailers
                    .push((id.to_string(), key.to_string()));
                self.model.add_retailer();
                self.last_seq.push(0);
                self.lanes[lane].retailers.push(retailer);
            }
            for customer in 0..ops::FIRST_CUSTOMERS {
                let has_pin = customer < ops::FIRST_CUSTOMERS_WITH_PIN;
                let op = self.localize(
                    lane,
                    &Op::NewCustomer {
                        has_pin,
                        credit: 10_000 + 2_000 * customer as i64,
                    },
                );
                self.single(lane, &op).await?;
            }
        }
        if let Some(after) = config.fault_after {
            arm_fault(&self.registry, after)?;
        }
        Ok(())
    }

    /// The operation with the lane's indices turned into the model's; what it creates gets
    /// the next index of its kind (the preparer hands out the same ones).
    fn localize(&mut self, lane: usize, op: &Op) -> Op {
        let registry = &self.registry;
        let lane = &mut self.lanes[lane];
        let customer = |lane: &Lane, customer: usize| lane.customers[customer];
        let process = |lane: &Lane, process: usize| lane.processes[process];
        let sms = |lane: &Lane, sms: Sms| match sms {
            Sms::Yes {
                customer: c,
                code,
                pin,
            } => Sms::Yes {
                customer: customer(lane, c),
                code: localize_code(lane, code),
                pin,
            },
            Sms::No { customer: c, code } => Sms::No {
                customer: customer(lane, c),
                code: localize_code(lane, code),
            },
            Sms::Pay {
                customer: c,
                process: p,
                amount,
                pin,
            } => Sms::Pay {
                customer: customer(lane, c),
                process: process(lane, p),
                amount,
                pin,
            },
            Sms::Balance { customer: c } => Sms::Balance {
                customer: customer(lane, c),
            },
            Sms::Unrecognized { customer: c } => Sms::Unrecognized {
                customer: customer(lane, c),
            },
            Sms::Stranger => Sms::Stranger,
        };
        match op.clone() {
            Op::NewCustomer { has_pin, credit } => {
                lane.customers.push(registry.customers_planned);
                Op::NewCustomer { has_pin, credit }
            }
            Op::Deposit {
                customer: c,
                amount,
                keyed,
            } => {
                if keyed {
                    lane.keyed.push(registry.keyed.len());
                }
                Op::Deposit {
                    customer: customer(lane, c),
                    amount,
                    keyed,
                }
            }
            Op::Open(mut request) => {
                request.retailer = lane.retailers[request.retailer];
                request.customer = request.customer.map(|c| customer(lane, c));
                lane.processes.push(registry.processes_planned);
                if request.keyed {
                    lane.keyed.push(registry.keyed.len());
                }
                Op::Open(request)
            }
            Op::OpenInvalid {
                retailer,
                customer: c,
                how,
            } => Op::OpenInvalid {
                retailer: lane.retailers[retailer],
                customer: customer(lane, c),
                how,
            },
            Op::Step {
                process: p,
                amount,
                keyed,
            } => {
                if keyed {
                    lane.keyed.push(registry.keyed.len());
                }
                Op::Step {
                    process: process(lane, p),
                    amount,
                    keyed,
                }
            }
            Op::Close { process: p, keyed } => {
                if keyed {
                    lane.keyed.push(registry.keyed.len());
                }
                Op::Close {
                    process: process(lane, p),
                    keyed,
                }
            }
            Op::Replay { request } => Op::Replay {
                request: lane.keyed[request],
            },
            Op::ReuseKey { request } => Op::ReuseKey {
                request: lane.keyed[request],
            },
            Op::Page {
                process: p,
                which,
                approve,
                pin,
            } => Op::Page {
                process: process(lane, p),
                which,
                approve,
                pin,
            },
            Op::ViewPage { process: p, which } => Op::ViewPage {
                process: process(lane, p),
                which,
            },
            Op::Voice {
                process: p,
                which,
                approve,
                pin,
            } => Op::Voice {
                process: process(lane, p),
                which,
                approve,
                pin,
            },
            Op::Sms(message) => Op::Sms(sms(lane, message)),
            Op::HoldSms(message) => Op::HoldSms(sms(lane, message)),
            Op::CallTill {
                process: p,
                customer: c,
                pin,
            } => Op::CallTill {
                process: process(lane, p),
                customer: customer(lane, c),
                pin,
            },
            other @ (Op::DeliverHeld { .. }
            | Op::DuplicateSms { .. }
            | Op::Advance { .. }
            | Op::Sweep
            | Op::Crash
            | Op::Group(_)) => other,
        }
    }

    /// Makes a (localized) operation concrete.
    async fn prepare(&mut self, lane: usize, op: &Op) -> Result<Action, String> {
        let mut preparer = Preparer {
            app: &self.app,
            registry: &mut self.registry,
            model: &self.model,
        };
        Ok(match op {
            Op::NewCustomer { has_pin, credit } => preparer.new_customer(*has_pin, *credit),
            Op::Deposit {
                customer,
                amount,
                keyed,
            } => preparer.deposit(*customer, *amount, *keyed),
            Op::Open(request) => preparer.open(request),
            Op::OpenInvalid {
                retailer,
                customer,
                how,
            } => preparer.open_invalid(*retailer, *customer, *how),
            Op::Step {
                process,
                amount,
                keyed,
            } => preparer.step(*process, *amount, *keyed),
            Op::Close { process, keyed } => preparer.close(*process, *keyed),
            Op::Replay { request } => preparer.replay(*request),
            Op::ReuseKey { request } => preparer.reuse_key(*request),
            Op::Page {
                process,
                which,
                approve,
                pin,
            } => preparer.page(*process, *which, *approve, *pin).await?,
            Op::ViewPage { process, which } => preparer.view_page(*process, *which).await?,
            Op::Voice {
                process,
                which,
                approve,
                pin,
            } => preparer.voice(*process, *which, *approve, *pin).await?,
            Op::Sms(sms) => Action::Sms(preparer.sms(*sms)),
            Op::HoldSms(sms) => {
                let text = preparer.sms(*sms);
                let held = &mut self.lanes[lane].sms_held;
                if held.len() < harness::SMS_HELD_MAX {
                    held.push(text);
                    Action::HoldSms
                } else {
                    // The network holds no more: this one goes through at once.
                    Action::Sms(text)
                }
            }
            Op::DeliverHeld { nth } => {
                let held = &mut self.lanes[lane].sms_held;
                if held.is_empty() {
                    Action::Nothing("no SMS held")
                } else {
                    let index = *nth as usize % held.len();
                    Action::Sms(held.remove(index))
                }
            }
            Op::DuplicateSms { nth } => {
                let sent = &self.lanes[lane].sms_sent;
                if sent.is_empty() {
                    Action::Nothing("no SMS sent yet")
                } else {
                    let back = *nth as usize % sent.len();
                    Action::Sms(sent[sent.len() - 1 - back].clone())
                }
            }
            Op::CallTill {
                process,
                customer,
                pin,
            } => preparer.call_till(*process, *customer, *pin),
            // Every lane moves the one clock: scaled so that each lane's processes see as
            // much time pass per operation of their own whatever the number of lanes.
            Op::Advance { ms } => {
                Action::Advance(ms * LANES_DEFAULT as i64 / self.lanes.len() as i64)
            }
            Op::Sweep => Action::Sweep,
            Op::Crash => Action::Crash,
            Op::Group(_) => return Err("groups are prepared one operation at a time".into()),
        })
    }

    /// What happens outside the app's request paths: time, the sweeper, a crash.
    async fn run_outside(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::Advance(ms) => self.app.clock.advance_ms(*ms),
            Action::Sweep => self.app.sweep().await?,
            Action::Crash => {
                self.app.crash().await;
                // The restarted sweeper's first round runs now; so does ours, so that the
                // next operation sees its work done.
                self.app.sweep().await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Records what the app handed out: process ids, customer ids, SMS sent.
    fn register(&mut self, lane: usize, action: &Action, answer: &Answer) {
        match (action, answer) {
            (Action::Api(call), Answer::Api { status: 201, body }) => {
                if let Meaning::Open { process, .. } = &call.meaning {
                    if let Some(id) = body["id"].as_str() {
                        self.registry.register_process(*process, id);
                    }
                }
            }
            (Action::NewCustomer { customer, .. }, Answer::NewCustomer { body, .. }) => {
                if let Some(id) = body["id"].as_str() {
                    if *customer == self.registry.customers.len() {
                        self.registry.customers.push(id.to_string());
                        self.registry
                            .customer_index
                            .insert(id.to_string(), *customer);
                    }
                }
            }
            (Action::Sms(text), _) => {
                let sent = &mut self.lanes[lane].sms_sent;
                if sent.len() == harness::SMS_REMEMBERED_MAX {
                    sent.pop_front();
                }
                sent.push_back(text.clone());
            }
            _ => {}
        }
        if let Action::Nothing(_) = action {
            self.figures.nothing += 1;
        }
        if let Some(outcome) = judge::outcome_name(answer) {
            *self.figures.outcomes.entry(outcome).or_default() += 1;
        }
    }

    /// One operation on its own: prepared, sent, judged and checked.
    async fn single(&mut self, lane: usize, op: &Op) -> Result<(), String> {
        let action = self.prepare(lane, op).await?;
        self.run_outside(&action).await?;
        let answer = execute(&self.app, &self.registry, &action).await;
        self.register(lane, &action, &answer);
        self.settle(&action, &answer).await
    }

    /// The model judges the answer, and the database must show what the model has.
    async fn settle(&mut self, action: &Action, answer: &Answer) -> Result<(), String> {
        self.model.begin();
        judge::apply(&mut self.model, action, answer)
            .map_err(|error| format!("{error}\n  action: {action:?}"))?;
        let mut seen = check::Seen::default();
        let pool = self.app.engine.store.reader().clone();
        seen.read(&pool, &self.registry, &self.last_seq, &self.model.touched)
            .await?;
        let seqs = seen
            .compare(&self.model, &self.registry, &self.last_seq)
            .map_err(|error| format!("{error}\n  action: {action:?}\n  answer: {answer:?}"))?;
        self.accept(seqs);
        Ok(())
    }

    /// The lanes' single operations of a round, judged: what they touched read at once
    /// and compared, each with its own expectations (the lanes share nothing, so one
    /// lane's operation cannot change what another's should have left).
    async fn check_singles(&mut self, base: u64, judged: Vec<Judged<'_>>) -> Result<(), Failed> {
        let Some(Judged {
            lane: first_lane,
            op: first_op,
            ..
        }) = judged.first()
        else {
            return Ok(());
        };
        let mut touched = model::Touched::default();
        for single in &judged {
            touched.extend(&single.touched);
        }
        let pool = self.app.engine.store.reader().clone();
        let mut seen = check::Seen::default();
        seen.read(&pool, &self.registry, &self.last_seq, &touched)
            .await
            .map_err(|error| {
                (
                    Some(base + *first_lane as u64),
                    format!("{first_op:?}"),
                    error,
                )
            })?;
        for Judged {
            lane,
            op,
            action,
            answer,
            touched,
            events,
        } in judged
        {
            self.model.touched = touched;
            self.model.events = events;
            let seqs = seen
                .compare(&self.model, &self.registry, &self.last_seq)
                .map_err(|error| {
                    (
                        Some(base + lane as u64),
                        format!("{op:?}"),
                        format!("{error}\n  action: {action:?}\n  answer: {answer:?}"),
                    )
                })?;
            self.accept(seqs);
        }
        Ok(())
    }

    /// The checked state is the new base: events counted, seqs moved on.
    fn accept(&mut self, seqs: Vec<(usize, i64)>) {
        for (retailer, seq) in seqs {
            self.last_seq[retailer] = seq;
        }
        for event in &self.model.events {
            *self
                .figures
                .events
                .entry(event.kind.to_string())
                .or_default() += 1;
        }
    }

    /// Operations sent at once: every serial order is tried on the model, and one must
    /// explain every answer and what the database shows.
    async fn settle_group(&mut self, actions: &[Action], answers: &[Answer]) -> Result<(), String> {
        let scope = self.group_scope(actions);
        let keys: Vec<(String, String)> = actions
            .iter()
            .filter_map(|action| match action {
                Action::Api(call) => call.scoped_key(),
                _ => None,
            })
            .collect();
        let snapshot = self.model.snapshot(&scope, &keys);
        let existing = self.model.processes.len();
        let pool = self.app.engine.store.reader().clone();
        let mut seen = check::Seen::default();
        let mut rejected = Vec::new();
        for order in orders(actions.len()) {
            self.model.restore(&snapshot);
            let explained = order.iter().try_for_each(|&index| {
                judge::apply(&mut self.model, &actions[index], &answers[index])
                    .map_err(|error| format!("operation {index}: {error}"))
            });
            if let Err(error) = explained {
                rejected.push(format!("order {order:?}: {error}"));
                continue;
            }
            let outside: Vec<usize> = self
                .model
                .touched
                .processes
                .iter()
                .copied()
                .filter(|process| !scope.contains(process) && *process < existing)
                .collect();
            if !outside.is_empty() {
                return Err(format!(
                    "the group changed processes {outside:?} outside what was saved: the \
                     simulation's scope is too narrow"
                ));
            }
            seen.read(&pool, &self.registry, &self.last_seq, &self.model.touched)
                .await?;
            match seen.compare(&self.model, &self.registry, &self.last_seq) {
                Ok(seqs) => {
                    self.accept(seqs);
                    return Ok(());
                }
                Err(error) => rejected.push(format!("order {order:?}: {error}")),
            }
        }
        Err(format!(
            "no serial order of the operations sent at once explains their answers and the \
             state:\n  {}\n  actions: {actions:?}\n  answers: {answers:?}",
            rejected.join("\n  ")
        ))
    }

    /// The processes a group may change: its own, the open processes of their customers
    /// (an SMS may answer another of the customer's requests), and any it opens.
    fn group_scope(&self, actions: &[Action]) -> BTreeSet<usize> {
        let mut scope = BTreeSet::new();
        let mut customers = BTreeSet::new();
        for action in actions {
            let process = match action {
                Action::Api(call) => match &call.meaning {
                    Meaning::Step { process, .. } | Meaning::Close { process } => Some(*process),
                    Meaning::Refused { process, .. } => *process,
                    _ => None,
                },
                Action::Page { process, .. }
                | Action::ViewPage { process, .. }
                | Action::Voice { process, .. } => Some(*process),
                Action::Sms(text) => {
                    if let harness::SmsMeaning::Answer { customer, .. } = &text.meaning {
                        customers.insert(*customer);
                    }
                    None
                }
                _ => None,
            };
            if let Some(process) = process {
                scope.insert(process);
                if let Some(customer) = self.model.processes[process].customer {
                    customers.insert(customer);
                }
            }
        }
        for customer in customers {
            scope.extend(self.model.open_of(customer));
        }
        scope
    }

    async fn audit(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let pool = self.app.engine.store.reader().clone();
        check::audit(&pool, &self.model, &self.registry, &self.last_seq).await?;
        self.figures.audits += 1;
        self.figures.audit_seconds += started.elapsed().as_secs_f64();
        // What `paystep ledger verify` runs, on a connection of its own: through the admin
        // API it would be bound by the HTTP request timeout, which a million operations'
        // ledger outgrows (seen at operation 976,399 of a long run: 15 s).
        let started = Instant::now();
        let mut conn = pool
            .acquire()
            .await
            .map_err(|error| format!("no connection to verify the ledger on: {error}"))?;
        let report = paystep::ledger::verify(&mut conn)
            .await
            .map_err(|error| format!("the ledger verification failed to run: {error}"))?;
        if !report.ok {
            return Err(format!(
                "the engine's ledger verification failed: {:#}",
                serde_json::to_value(&report).unwrap_or_default()
            ));
        }
        self.figures.engine_verifications += 1;
        self.figures.verify_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }
}

fn localize_code(lane: &Lane, code: ops::CodeOf) -> ops::CodeOf {
    match code {
        ops::CodeOf::Process(process) => ops::CodeOf::Process(lane.processes[process]),
        ops::CodeOf::Omitted => ops::CodeOf::Omitted,
    }
}

fn group_kind(op: &Op) -> &'static str {
    match op {
        Op::Step { .. } => "group_step",
        Op::Close { .. } => "group_close",
        Op::Page { .. } => "group_page",
        Op::Voice { .. } => "group_voice",
        Op::Sms(_) => "group_sms",
        Op::Replay { .. } => "group_replay",
        Op::Open(_) => "group_open",
        _ => "group_other",
    }
}

/// Every order of `n` operations (n is at most 3 here: at most 6 orders).
fn orders(n: usize) -> Vec<Vec<usize>> {
    if n <= 1 {
        return vec![(0..n).collect()];
    }
    let mut all = Vec::new();
    for first in 0..n {
        for rest in orders(n - 1) {
            let mut order = vec![first];
            order.extend(
                rest.into_iter()
                    .map(|index| if index >= first { index + 1 } else { index }),
            );
            all.push(order);
        }
    }
    all
}

#[cfg(feature = "fault-injection")]
fn arm_fault(registry: &Registry, after: u64) -> Result<(), String> {
    for (id, _) in &registry.retailers {
        paystep::faults::overcharge_steps_after(id, after);
    }
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
fn arm_fault(_registry: &Registry, _after: u64) -> Result<(), String> {
    Err("the fault needs the fault-injection feature".into())
}

#[cfg(feature = "fault-injection")]
mod fault {
    use super::{name, run, Config};
    use crate::helpers::Db;
    use crate::on_both_databases;

    /// The seed of the fault test: any seed catches the fault; this one is fixed so that
    /// the test does the same work every time.
    const SEED: u64 = 0x5eed_f417;
    /// The fault's first wrong charge: the 40th step charge of any retailer.
    const FAULT_AFTER: u64 = 40;
    /// Far more operations than it takes to charge 40 steps per retailer.
    const OPERATIONS: u64 = 5_000;

    on_both_databases!(a_broken_invariant_is_caught_with_its_seed_and_replays);

    /// Step charges that move one minor unit more than the step (the test-only fault in
    /// `paystep::faults`) are caught with the seed and the operation, and the same seed
    /// fails at the same operation again.
    async fn a_broken_invariant_is_caught_with_its_seed_and_replays(db: Db) {
        let config = Config {
            seed: SEED,
            operations: OPERATIONS,
            audit_every: 1_000,
            // Operations sent at once may commit in another order in the replay, and with
            // them the count of charges the fault waits for.
            groups: false,
            lanes: super::LANES_DEFAULT,
            fault_after: Some(FAULT_AFTER),
        };
        let first = run(db, &config)
            .await
            .expect_err("the simulation catches charges that break the ledger");
        eprintln!("{first}");
        let operation = first
            .operation
            .expect("caught during the run, not the setup");
        let text = first.to_string();
        assert!(
            text.contains(&format!("seed={SEED}"))
                && text.contains(&format!("failed at operation {operation}"))
                && text.contains(&format!(
                    "PAYSTEP_SIM_SEED={SEED} PAYSTEP_SIM_OPS={}",
                    operation + 1
                ))
                && text.contains(&format!("simulation::on_{}", name(db))),
            "the failure names the seed, the operation and the replay: {text}"
        );
        assert!(
            first.message.contains("the hold")
                || first.message.contains("answered 500")
                || first.message.contains("Err("),
            "the failure is the broken ledger: {first}"
        );
        let replayed = run(db, &config)
            .await
            .expect_err("the same seed fails again");
        assert_eq!(replayed.operation, first.operation, "{replayed}");
        assert_eq!(replayed.op, first.op, "{replayed}");
        crate::helpers::report_figures(&format!(
            "simulation fault test {}: step charges one unit too big from the {FAULT_AFTER}th \
             per retailer, caught at operation {operation} with seed {SEED}, and the replay \
             failed at the same operation",
            name(db)
        ));
    }
}
