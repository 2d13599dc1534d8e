//! The reference model: what the design says each operation does, written for this test in
//! plain integer arithmetic on in-memory state. It calls no engine code; it mirrors the
//! product rules of DESIGN.md (and, where the design is silent, the behaviour the engine's
//! own tests fix), in minor units of EUR.

use std::collections::{BTreeSet, HashMap};

/// The settings the simulation runs the app with; the model needs the same numbers.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub confirmation_ttl_ms: i64,
    pub pre_expiry_notice_ms: i64,
    pub pin_tries_per_request: i64,
    pub pin_lockout_after: i64,
    pub pin_lockout_ms: i64,
    pub steps_per_process_max: usize,
    /// `limits.max_amount` in minor units.
    pub max_amount_minor: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessStatus {
    AwaitingConfirmation,
    Active,
    Closed,
    Declined,
    Expired,
}

impl ProcessStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessStatus::AwaitingConfirmation => "awaiting_confirmation",
            ProcessStatus::Active => "active",
            ProcessStatus::Closed => "closed",
            ProcessStatus::Declined => "declined",
            ProcessStatus::Expired => "expired",
        }
    }

    pub fn is_open(self) -> bool {
        matches!(
            self,
            ProcessStatus::AwaitingConfirmation | ProcessStatus::Active
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    Charged,
    AwaitingConfirmation,
    Declined,
    Expired,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Charged => "charged",
            StepStatus::AwaitingConfirmation => "awaiting_confirmation",
            StepStatus::Declined => "declined",
            StepStatus::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    Pending,
    Approved,
    Declined,
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Difference,
    /// The factor in ten-thousandths (the API takes at most 4 decimals).
    Multiple {
        factor_e4: i64,
    },
    Original,
    None,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Difference => "difference",
            Policy::Multiple { .. } => "multiple",
            Policy::Original => "original",
            Policy::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub amount: i64,
    pub status: StepStatus,
    pub reason: Option<&'static str>,
}

/// A confirmation request: the first release, or a top-up for a waiting step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub initial: bool,
    pub amount: i64,
    pub step: Option<usize>,
    pub status: RequestStatus,
    pub pin_failures: i64,
    pub expires_at_ms: i64,
    /// Sent to the customer with a link (a PAY claim's request has none).
    pub linked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub retailer: usize,
    pub customer: Option<usize>,
    pub code: String,
    pub status: ProcessStatus,
    pub release_requested: i64,
    pub released: i64,
    pub charged: i64,
    pub returned: i64,
    pub policy: Policy,
    pub inactivity_ms: i64,
    pub steps: Vec<Step>,
    pub requests: Vec<Request>,
    pub expires_at_ms: i64,
    pub expiry_announced: bool,
    pub decline_reason: Option<&'static str>,
}

impl Process {
    pub fn remaining(&self) -> i64 {
        self.released - self.charged - self.returned
    }

    pub fn pending(&self) -> Option<usize> {
        self.requests
            .iter()
            .position(|request| request.status == RequestStatus::Pending)
    }

    /// The `nth` linked request (in the order they were sent).
    pub fn linked(&self, nth: usize) -> Option<usize> {
        (0..self.requests.len())
            .filter(|&index| self.requests[index].linked)
            .nth(nth)
    }

    pub fn linked_count(&self) -> usize {
        self.requests
            .iter()
            .filter(|request| request.linked)
            .count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub msisdn: String,
    pub has_pin: bool,
    pub credit: i64,
    pub pin_failures: i64,
    pub locked_until_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Retailer {
    pub receivable: i64,
}

/// What a customer keyed or typed as PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    Missing,
    Right,
    Wrong,
}

/// An answer's outcome, as the engine's voice path returns it and the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved,
    Declined,
    InsufficientCredit,
    PinRequired { tries_left: i64 },
    WrongPin { tries_left: i64 },
    PinTriesExceeded,
    LockedOut { until_ms: i64 },
    NotPending { status: &'static str },
    Expired,
}

impl Outcome {
    /// The confirmation page's HTTP status for the outcome.
    pub fn page_status(&self) -> u16 {
        match self {
            Outcome::WrongPin { .. } | Outcome::PinRequired { .. } => 422,
            Outcome::LockedOut { .. } => 429,
            Outcome::NotPending { .. } | Outcome::Expired => 409,
            Outcome::Approved
            | Outcome::Declined
            | Outcome::InsufficientCredit
            | Outcome::PinTriesExceeded => 200,
        }
    }
}

/// What claiming a till code comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Till {
    UnknownSender,
    NoSuchCode,
    BadAmount,
    Answered(Outcome),
}

/// The answer an operation gets, as far as the model predicts it.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// A retailer or operator API answer: status and error code (`None` for successes).
    Api {
        status: u16,
        code: Option<&'static str>,
        /// For a step that was written: its status and the remaining amount after it.
        step: Option<(StepStatus, i64)>,
    },
    /// The saved answer of an idempotency key, byte for byte.
    Replay {
        status: u16,
        body: serde_json::Value,
    },
}

/// A saved idempotency key: the request it was first used with and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedKey {
    pub fingerprint: String,
    pub answer: Option<(u16, serde_json::Value)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Event {
    pub retailer: usize,
    pub process: usize,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub processes: BTreeSet<usize>,
    pub customers: BTreeSet<usize>,
    pub retailers: BTreeSet<usize>,
}

impl Touched {
    pub fn extend(&mut self, other: &Touched) {
        self.processes.extend(&other.processes);
        self.customers.extend(&other.customers);
        self.retailers.extend(&other.retailers);
    }
}

#[derive(Debug, Clone)]
pub struct Model {
    pub rules: Rules,
    pub now_ms: i64,
    pub customers: Vec<Customer>,
    pub retailers: Vec<Retailer>,
    pub processes: Vec<Process>,
    /// The operator's funding account: minus every deposit.
    pub funding: i64,
    /// Idempotency keys by scope and key.
    pub keys: HashMap<(String, String), SavedKey>,
    /// Events the operations since the last check caused.
    pub events: Vec<Event>,
    /// What the operations since the last check should have changed (and what they must
    /// have left alone: a refused operation touches its process without changing it).
    pub touched: Touched,
    /// The processes awaiting confirmation or active: the only ones that can change.
    pub open: BTreeSet<usize>,
    /// Every process ever opened, by code: a superset (a group's rejected order may have
    /// added some), always checked against the process itself.
    by_code: HashMap<String, Vec<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    Declined(&'static str),
    Expired,
}

impl Model {
    pub fn new(rules: Rules, now_ms: i64) -> Model {
        Model {
            rules,
            now_ms,
            customers: Vec::new(),
            retailers: Vec::new(),
            processes: Vec::new(),
            funding: 0,
            keys: HashMap::new(),
            events: Vec::new(),
            touched: Touched::default(),
            open: BTreeSet::new(),
            by_code: HashMap::new(),
        }
    }

    fn set_status(&mut self, process: usize, status: ProcessStatus) {
        self.processes[process].status = status;
        if status.is_open() {
            self.open.insert(process);
        } else {
            self.open.remove(&process);
        }
    }

    /// Forgets the expectations of the last check (a new operation begins).
    pub fn begin(&mut self) {
        self.events.clear();
        self.touched = Touched::default();
    }

    fn event(&mut self, process: usize, kind: &'static str) {
        let retailer = self.processes[process].retailer;
        self.events.push(Event {
            retailer,
            process,
            kind,
        });
    }

    fn touch_process(&mut self, process: usize) {
        self.touched.processes.insert(process);
        let row = &self.processes[process];
        self.touched.retailers.insert(row.retailer);
        if let Some(customer) = row.customer {
            self.touched.customers.insert(customer);
        }
    }

    /// Activity: an open process expires after its inactivity period from now on, and may
    /// be announced again.
    fn mark_activity(&mut self, process: usize) {
        let now_ms = self.now_ms;
        let row = &mut self.processes[process];
        row.expires_at_ms = now_ms + row.inactivity_ms;
        row.expiry_announced = false;
    }

    pub fn add_retailer(&mut self) -> usize {
        self.retailers.push(Retailer::default());
        self.retailers.len() - 1
    }

    pub fn add_customer(&mut self, msisdn: String, has_pin: bool) -> usize {
        self.customers.push(Customer {
            msisdn,
            has_pin,
            credit: 0,
            pin_failures: 0,
            locked_until_ms: None,
        });
        let customer = self.customers.len() - 1;
        self.touched.customers.insert(customer);
        customer
    }

    pub fn deposit(&mut self, customer: usize, amount: i64) -> Expect {
        self.touched.customers.insert(customer);
        self.customers[customer].credit += amount;
        self.funding -= amount;
        Expect::Api {
            status: 201,
            code: None,
            step: None,
        }
    }

    /// `POST /v1/processes`, answered 201 with `code`. `charge` is never more than `release`
    /// here (the simulation sends that refusal as its own operation).
    pub fn open(&mut self, opened: Opened) -> usize {
        let now_ms = self.now_ms;
        let mut process = Process {
            retailer: opened.retailer,
            customer: opened.customer,
            code: opened.code,
            status: ProcessStatus::AwaitingConfirmation,
            release_requested: opened.release,
            released: 0,
            charged: 0,
            returned: 0,
            policy: opened.policy,
            inactivity_ms: opened.inactivity_ms,
            steps: Vec::new(),
            requests: Vec::new(),
            expires_at_ms: now_ms + self.rules.confirmation_ttl_ms,
            expiry_announced: false,
            decline_reason: None,
        };
        if let Some(charge) = opened.charge {
            process.steps.push(Step {
                amount: charge,
                status: StepStatus::AwaitingConfirmation,
                reason: None,
            });
        }
        if opened.customer.is_some() {
            process.requests.push(Request {
                initial: true,
                amount: opened.release,
                step: opened.charge.map(|_| 0),
                status: RequestStatus::Pending,
                pin_failures: 0,
                expires_at_ms: now_ms + self.rules.confirmation_ttl_ms,
                linked: true,
            });
        }
        self.processes.push(process);
        let index = self.processes.len() - 1;
        let code = self.processes[index].code.clone();
        self.by_code.entry(code).or_default().push(index);
        self.open.insert(index);
        self.touch_process(index);
        self.event(index, "process.created");
        if opened.charge.is_some() {
            self.event(index, "step.awaiting_confirmation");
        }
        index
    }

    /// `POST /v1/processes/{id}/steps` with a valid amount.
    pub fn step(&mut self, process: usize, amount: i64) -> Expect {
        self.touch_process(process);
        let refused = |status: u16, code: &'static str| Expect::Api {
            status,
            code: Some(code),
            step: None,
        };
        let row = &self.processes[process];
        if row.status != ProcessStatus::Active {
            return refused(409, "process_not_active");
        }
        if row.steps.len() >= self.rules.steps_per_process_max {
            return refused(422, "step_limit_reached");
        }
        let remaining = row.remaining();
        let fits = amount <= remaining;
        if !fits && row.pending().is_some() {
            return refused(409, "top_up_pending");
        }
        let policy = row.policy;
        let release_requested = row.release_requested;
        if fits {
            let retailer = row.retailer;
            let row = &mut self.processes[process];
            row.steps.push(Step {
                amount,
                status: StepStatus::Charged,
                reason: None,
            });
            row.charged += amount;
            self.retailers[retailer].receivable += amount;
            self.mark_activity(process);
            self.event(process, "step.charged");
            return Expect::Api {
                status: 201,
                code: None,
                step: Some((StepStatus::Charged, remaining - amount)),
            };
        }
        if policy == Policy::None {
            // The answer is an error, so nothing the operation wrote is kept: the declined
            // step the answer shows is not stored, and no event is sent.
            return Expect::Api {
                status: 422,
                code: Some("insufficient_release"),
                step: None,
            };
        }
        let top_up = self.top_up(policy, release_requested, amount, remaining);
        let expires_at_ms = self.now_ms + self.rules.confirmation_ttl_ms;
        let row = &mut self.processes[process];
        row.steps.push(Step {
            amount,
            status: StepStatus::AwaitingConfirmation,
            reason: None,
        });
        let step = row.steps.len() - 1;
        row.requests.push(Request {
            initial: false,
            amount: top_up,
            step: Some(step),
            status: RequestStatus::Pending,
            pin_failures: 0,
            expires_at_ms,
            linked: true,
        });
        self.mark_activity(process);
        self.event(process, "step.awaiting_confirmation");
        Expect::Api {
            status: 202,
            code: None,
            step: Some((StepStatus::AwaitingConfirmation, remaining)),
        }
    }

    /// Claims 5 and 6: at least the difference, more by policy, never more than the largest
    /// amount unless the difference itself is.
    fn top_up(&self, policy: Policy, release_requested: i64, step: i64, remaining: i64) -> i64 {
        let difference = step - remaining;
        let by_policy = match policy {
            Policy::Difference | Policy::None => difference,
            Policy::Original => release_requested,
            Policy::Multiple { factor_e4 } => {
                let product = i128::from(step) * i128::from(factor_e4);
                let rounded_up = (product + 9_999) / 10_000;
                i64::try_from(rounded_up).unwrap_or(i64::MAX)
            }
        };
        by_policy.min(self.rules.max_amount_minor).max(difference)
    }

    /// `POST /v1/processes/{id}/close`.
    pub fn close(&mut self, process: usize) -> Expect {
        self.touch_process(process);
        if !self.processes[process].status.is_open() {
            return Expect::Api {
                status: 409,
                code: Some("process_not_active"),
                step: None,
            };
        }
        if let Some(pending) = self.processes[process].pending() {
            self.settle(
                process,
                pending,
                Resolution::Declined("process_closed"),
                false,
            );
        }
        self.end(process, ProcessStatus::Closed);
        Expect::Api {
            status: 200,
            code: None,
            step: None,
        }
    }

    /// Returns what is held to the customer and ends the process.
    fn end(&mut self, process: usize, status: ProcessStatus) {
        let rest = self.processes[process].remaining();
        if rest > 0 {
            let customer = self.processes[process]
                .customer
                .expect("the model holds money only for processes with a customer");
            self.customers[customer].credit += rest;
        }
        self.processes[process].returned += rest;
        self.set_status(process, status);
        let kind = match status {
            ProcessStatus::Closed => "process.closed",
            _ => "process.expired",
        };
        self.event(process, kind);
    }

    /// A request ends without approval: its waiting step with it, and for the first
    /// request (unless a close ends the process itself) the process.
    fn settle(
        &mut self,
        process: usize,
        request: usize,
        resolution: Resolution,
        ends_process: bool,
    ) {
        let (status, step_status, reason) = match resolution {
            Resolution::Declined(reason) => {
                (RequestStatus::Declined, StepStatus::Declined, Some(reason))
            }
            Resolution::Expired => (RequestStatus::Expired, StepStatus::Expired, None),
        };
        let row = &mut self.processes[process];
        row.requests[request].status = status;
        let initial = row.requests[request].initial;
        if let Some(step) = row.requests[request].step {
            let step = &mut row.steps[step];
            assert_eq!(step.status, StepStatus::AwaitingConfirmation);
            step.status = step_status;
            step.reason = reason;
            let kind = match resolution {
                Resolution::Declined(_) => "step.declined",
                Resolution::Expired => "step.expired",
            };
            self.event(process, kind);
        }
        if initial && ends_process {
            match resolution {
                Resolution::Declined(reason) => {
                    self.set_status(process, ProcessStatus::Declined);
                    self.processes[process].decline_reason = Some(reason);
                    self.event(process, "process.declined");
                }
                Resolution::Expired => {
                    self.set_status(process, ProcessStatus::Expired);
                    self.event(process, "process.expired");
                }
            }
        }
        if !initial && self.processes[process].status == ProcessStatus::Active {
            self.mark_activity(process);
        }
    }

    fn locked_until(&self, customer: usize) -> Option<i64> {
        let row = &self.customers[customer];
        row.locked_until_ms
            .filter(|until_ms| row.has_pin && *until_ms > self.now_ms)
    }

    /// An answer to request `request` of `process`, on any channel.
    pub fn answer(&mut self, process: usize, request: usize, approve: bool, pin: Pin) -> Outcome {
        self.touch_process(process);
        let customer = self.processes[process]
            .customer
            .expect("only processes with a customer have requests");
        // A locked-out customer learns nothing, not even whether the request is open.
        if approve {
            if let Some(until_ms) = self.locked_until(customer) {
                return Outcome::LockedOut { until_ms };
            }
        }
        let row = &self.processes[process];
        let asked = &row.requests[request];
        match asked.status {
            RequestStatus::Pending => {}
            RequestStatus::Approved => return Outcome::NotPending { status: "approved" },
            RequestStatus::Declined => return Outcome::NotPending { status: "declined" },
            RequestStatus::Expired => return Outcome::NotPending { status: "expired" },
        }
        if asked.expires_at_ms <= self.now_ms {
            self.settle(process, request, Resolution::Expired, true);
            return Outcome::Expired;
        }
        if !approve {
            self.settle(
                process,
                request,
                Resolution::Declined("customer_declined"),
                true,
            );
            return Outcome::Declined;
        }
        if self.customers[customer].has_pin {
            let tries_left = self.rules.pin_tries_per_request - asked.pin_failures;
            match pin {
                Pin::Missing => return Outcome::PinRequired { tries_left },
                Pin::Wrong => return self.wrong_pin(process, request, customer, tries_left),
                Pin::Right => {}
            }
        }
        let amount = asked.amount;
        let waiting_step = asked.step.map(|step| row.steps[step].amount);
        // Steps that fitted may have been charged while the top-up was asked: then the
        // release stands and the waiting step is declined.
        let short = waiting_step.is_some_and(|step_amount| row.remaining() + amount < step_amount);
        let covered = self.customers[customer].credit >= amount;
        if self.customers[customer].has_pin {
            // A right PIN ends the series of wrong ones, whatever the answer comes to.
            let row = &mut self.customers[customer];
            row.pin_failures = 0;
            row.locked_until_ms = None;
        }
        if !covered {
            self.settle(
                process,
                request,
                Resolution::Declined("insufficient_credit"),
                true,
            );
            return Outcome::InsufficientCredit;
        }
        self.customers[customer].credit -= amount;
        self.set_status(process, ProcessStatus::Active);
        let row = &mut self.processes[process];
        row.released += amount;
        row.requests[request].status = RequestStatus::Approved;
        let initial = row.requests[request].initial;
        let step = row.requests[request].step;
        if initial {
            self.event(process, "process.confirmed");
        }
        if let Some(step) = step.filter(|_| short) {
            let row = &mut self.processes[process];
            row.steps[step].status = StepStatus::Declined;
            row.steps[step].reason = Some("insufficient_release");
            self.event(process, "step.declined");
        } else if let Some(step) = step {
            let row = &mut self.processes[process];
            let step_amount = row.steps[step].amount;
            row.steps[step].status = StepStatus::Charged;
            row.charged += step_amount;
            let retailer = row.retailer;
            self.retailers[retailer].receivable += step_amount;
            self.event(process, "step.charged");
        }
        self.mark_activity(process);
        Outcome::Approved
    }

    fn wrong_pin(
        &mut self,
        process: usize,
        request: usize,
        customer: usize,
        tries_left: i64,
    ) -> Outcome {
        let now_ms = self.now_ms;
        let rules = self.rules;
        let row = &mut self.customers[customer];
        row.pin_failures += 1;
        // The count is kept until a right PIN: past the threshold every wrong PIN locks.
        row.locked_until_ms =
            (row.pin_failures >= rules.pin_lockout_after).then_some(now_ms + rules.pin_lockout_ms);
        let locked_until_ms = row.locked_until_ms;
        self.processes[process].requests[request].pin_failures += 1;
        if tries_left <= 1 {
            self.settle(
                process,
                request,
                Resolution::Declined("pin_tries_exceeded"),
                true,
            );
            return Outcome::PinTriesExceeded;
        }
        match locked_until_ms {
            Some(until_ms) => Outcome::LockedOut { until_ms },
            None => Outcome::WrongPin {
                tries_left: tries_left - 1,
            },
        }
    }

    /// The customer's pending requests (each of an open process).
    fn open_requests(&self, customer: usize) -> Vec<(usize, usize)> {
        let mut open = Vec::new();
        for &index in &self.open {
            let process = &self.processes[index];
            if process.customer == Some(customer) {
                if let Some(request) = process.pending() {
                    open.push((index, request));
                }
            }
        }
        open
    }

    /// `YES [code] [PIN]` or `NO [code]` by SMS from `customer`.
    pub fn sms_answer(&mut self, customer: usize, approve: bool, code: Option<&str>, pin: Pin) {
        self.touched.customers.insert(customer);
        let open = self.open_requests(customer);
        let chosen = match code {
            Some(code) => match open
                .iter()
                .find(|(process, _)| self.processes[*process].code == code)
            {
                Some(&found) => Some((found, pin)),
                // A lone word matching no open code is the PIN of the one open request, for
                // a customer with a PIN, unless it is the code of one of the customer's own
                // processes.
                None if pin == Pin::Missing
                    && open.len() == 1
                    && approve
                    && self.customers[customer].has_pin
                    && !self.is_own_code(customer, code) =>
                {
                    Some((open[0], Pin::Wrong))
                }
                None => None,
            },
            None => match open.as_slice() {
                [only] => Some((*only, pin)),
                _ => None,
            },
        };
        if let Some(((process, request), pin)) = chosen {
            self.answer(process, request, approve, pin);
        }
    }

    fn is_own_code(&self, customer: usize, code: &str) -> bool {
        self.by_code.get(code).is_some_and(|processes| {
            processes.iter().any(|&process| {
                self.processes
                    .get(process)
                    .is_some_and(|row| row.code == code && row.customer == Some(customer))
            })
        })
    }

    /// `PAY <code> [amount] [PIN]` by SMS, or a till code keyed on a call to the service
    /// number, from `customer`. `amount` is `Some(None)` for an amount that does not parse.
    pub fn pay(
        &mut self,
        customer: usize,
        code: &str,
        amount: Option<Option<i64>>,
        pin: Pin,
    ) -> Till {
        self.touched.customers.insert(customer);
        let found = self.open.iter().copied().find(|&index| {
            let process = &self.processes[index];
            process.code == code
                && process.status == ProcessStatus::AwaitingConfirmation
                && process.customer.is_none_or(|owner| owner == customer)
        });
        let Some(process) = found else {
            return Till::NoSuchCode;
        };
        self.touch_process(process);
        let request = match self.processes[process].customer {
            Some(_) => match self.processes[process].pending() {
                Some(request) => request,
                None => return Till::NoSuchCode,
            },
            None => {
                let release = match amount {
                    None => self.processes[process].release_requested,
                    Some(Some(release)) => release,
                    Some(None) => return Till::BadAmount,
                };
                let expires_at_ms = self.now_ms + self.rules.confirmation_ttl_ms;
                let row = &mut self.processes[process];
                row.customer = Some(customer);
                row.release_requested = release;
                row.requests.push(Request {
                    initial: true,
                    amount: release,
                    step: None,
                    status: RequestStatus::Pending,
                    pin_failures: 0,
                    expires_at_ms,
                    linked: false,
                });
                row.requests.len() - 1
            }
        };
        // The claim and its request stay even when the answer is refused (a PIN to retry).
        // A till answers a first request, which waits for no step: it cannot fall short.
        Till::Answered(self.answer(process, request, true, pin))
    }

    /// The sweeper's round at the current time: requests past their time, then idle
    /// processes without a pending request, then the notices of releases about to expire.
    pub fn sweep(&mut self) {
        let now_ms = self.now_ms;
        let open: Vec<usize> = self.open.iter().copied().collect();
        for &process in &open {
            if let Some(request) = self.processes[process].pending() {
                if self.processes[process].requests[request].expires_at_ms <= now_ms {
                    self.touch_process(process);
                    self.settle(process, request, Resolution::Expired, true);
                }
            }
        }
        let open: Vec<usize> = self.open.iter().copied().collect();
        for &process in &open {
            let row = &self.processes[process];
            if row.status.is_open() && row.expires_at_ms <= now_ms && row.pending().is_none() {
                self.touch_process(process);
                self.end(process, ProcessStatus::Expired);
            }
        }
        let notice_ms = self.rules.pre_expiry_notice_ms;
        if notice_ms == 0 {
            return;
        }
        let open: Vec<usize> = self.open.iter().copied().collect();
        for &process in &open {
            let row = &self.processes[process];
            let due = row.status == ProcessStatus::Active
                && !row.expiry_announced
                && row.expires_at_ms > now_ms
                && row.expires_at_ms <= now_ms + notice_ms
                && row.inactivity_ms > 2 * notice_ms;
            if due {
                self.touch_process(process);
                self.processes[process].expiry_announced = true;
                self.event(process, "process.expiring");
            }
        }
    }

    /// Saves what operations on `processes` (and on any customer, retailer or key) can
    /// change, so that several orders of a group can be tried from the same state without
    /// copying every process.
    pub fn snapshot(&self, processes: &BTreeSet<usize>, keys: &[(String, String)]) -> Snapshot {
        Snapshot {
            processes: processes
                .iter()
                .map(|&process| (process, self.processes[process].clone()))
                .collect(),
            process_count: self.processes.len(),
            customers: self.customers.clone(),
            retailers: self.retailers.clone(),
            funding: self.funding,
            keys: keys
                .iter()
                .map(|key| (key.clone(), self.keys.get(key).cloned()))
                .collect(),
            now_ms: self.now_ms,
            open: processes
                .iter()
                .map(|&process| (process, self.open.contains(&process)))
                .collect(),
        }
    }

    pub fn restore(&mut self, snapshot: &Snapshot) {
        for index in snapshot.process_count..self.processes.len() {
            self.open.remove(&index);
        }
        self.processes.truncate(snapshot.process_count);
        for (process, row) in &snapshot.processes {
            self.processes[*process] = row.clone();
        }
        for (process, open) in &snapshot.open {
            if *open {
                self.open.insert(*process);
            } else {
                self.open.remove(process);
            }
        }
        self.customers = snapshot.customers.clone();
        self.retailers = snapshot.retailers.clone();
        self.funding = snapshot.funding;
        for (key, saved) in &snapshot.keys {
            match saved {
                Some(saved) => self.keys.insert(key.clone(), saved.clone()),
                None => self.keys.remove(key),
            };
        }
        self.now_ms = snapshot.now_ms;
        self.begin();
    }

    /// The open processes of `customer`.
    pub fn open_of(&self, customer: usize) -> impl Iterator<Item = usize> + '_ {
        self.open
            .iter()
            .copied()
            .filter(move |&process| self.processes[process].customer == Some(customer))
    }
}

/// What a group of operations may change, saved before trying one of its orders.
#[derive(Clone)]
pub struct Snapshot {
    processes: Vec<(usize, Process)>,
    process_count: usize,
    customers: Vec<Customer>,
    retailers: Vec<Retailer>,
    funding: i64,
    keys: Vec<((String, String), Option<SavedKey>)>,
    now_ms: i64,
    open: Vec<(usize, bool)>,
}

/// A process the API opened.
pub struct Opened {
    pub retailer: usize,
    pub customer: Option<usize>,
    pub code: String,
    pub release: i64,
    pub charge: Option<i64>,
    pub policy: Policy,
    pub inactivity_ms: i64,
}
