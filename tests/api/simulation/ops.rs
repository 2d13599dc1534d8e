//! The operations and their generator. The generator draws from the seed alone: it never
//! looks at what the app answered or at the model, so one seed always makes the same
//! sequence of operations. It keeps its own picture of what it asked for (which processes
//! it opened for whom, which keyed requests it sent) and aims at it: a process it opened is
//! usually answered a few operations later, a large step is often followed by an answer to
//! the top-up it may have asked. Where the app went another way (a release declined for
//! want of credit, a process closed by a racing close), the operations still run and must
//! be refused as the model says.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::{Pin, Policy};

/// An amount as the client writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Valid(i64),
    /// A string the API must refuse as an invalid amount.
    Invalid(&'static str),
}

const INVALID_AMOUNTS: [&str; 4] = ["0.001", "0", "1.2.3", "20000.00"];
/// Amounts a `PAY` reply may carry that the app refuses: the SMS grammar reads them as
/// amounts ("1.2.3" it reads as no reply at all).
const INVALID_PAY_AMOUNTS: [&str; 3] = ["0.001", "0", "20000.00"];

/// Which of a process's links an answer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Newest,
    /// One of the links sent so far, chosen by this number (often an answered one).
    Any(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeOf {
    Process(usize),
    Omitted,
}

/// An SMS a customer sends; the simulation gives it to the engine's inbound path as the
/// SMS adapter would after parsing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sms {
    Yes {
        customer: usize,
        code: CodeOf,
        pin: Pin,
    },
    No {
        customer: usize,
        code: CodeOf,
    },
    Pay {
        customer: usize,
        process: usize,
        amount: Option<Amount>,
        pin: Pin,
    },
    Balance {
        customer: usize,
    },
    Unrecognized {
        customer: usize,
    },
    /// From a number that is nobody's.
    Stranger,
}

/// How an invalid open request is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidOpen {
    ChargeExceedsRelease,
    UnknownCustomer,
    BadRelease,
    BadFactor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    pub retailer: usize,
    pub customer: Option<usize>,
    pub by_id: bool,
    pub release: i64,
    pub charge: Option<i64>,
    /// `None` leaves the policy to the configured default (`original`).
    pub policy: Option<Policy>,
    pub inactivity_s: Option<i64>,
    pub keyed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A customer through the operator API, then a first deposit.
    NewCustomer {
        has_pin: bool,
        credit: i64,
    },
    Deposit {
        customer: usize,
        amount: i64,
        keyed: bool,
    },
    Open(OpenRequest),
    OpenInvalid {
        retailer: usize,
        customer: usize,
        how: InvalidOpen,
    },
    Step {
        process: usize,
        amount: Amount,
        keyed: bool,
    },
    Close {
        process: usize,
        keyed: bool,
    },
    /// The `request`-th keyed request again: same key, same body.
    Replay {
        request: usize,
    },
    /// The `request`-th keyed request's key with another body.
    ReuseKey {
        request: usize,
    },
    /// The confirmation page's form, posted.
    Page {
        process: usize,
        which: Which,
        approve: bool,
        pin: Pin,
    },
    /// The confirmation page shown (a GET, which must change nothing).
    ViewPage {
        process: usize,
        which: Which,
    },
    /// Keys on a call, answered through the engine as the voice handlers do.
    Voice {
        process: usize,
        which: Which,
        approve: bool,
        pin: Pin,
    },
    Sms(Sms),
    /// An SMS sent now and delivered later, after whatever comes in between.
    HoldSms(Sms),
    /// One of the held SMS delivered (none held: nothing happens).
    DeliverHeld {
        nth: u32,
    },
    /// One of the last SMS delivered again, as an SMSC may.
    DuplicateSms {
        nth: u32,
    },
    /// A till code keyed on a call to the service number.
    CallTill {
        process: usize,
        customer: usize,
        pin: Pin,
    },
    Advance {
        ms: i64,
    },
    /// The sweeper's round, run now.
    Sweep,
    /// The app dropped and built again on the same database and clock.
    Crash,
    /// Operations sent at once.
    Group(Vec<Op>),
}

impl Op {
    /// The name the run's figures count it under.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::NewCustomer { .. } => "new_customer",
            Op::Deposit { .. } => "deposit",
            Op::Open(_) => "open",
            Op::OpenInvalid { .. } => "open_invalid",
            Op::Step { .. } => "step",
            Op::Close { .. } => "close",
            Op::Replay { .. } => "replay",
            Op::ReuseKey { .. } => "reuse_key",
            Op::Page { .. } => "page",
            Op::ViewPage { .. } => "view_page",
            Op::Voice { .. } => "voice",
            Op::Sms(_) => "sms",
            Op::HoldSms(_) => "hold_sms",
            Op::DeliverHeld { .. } => "deliver_held_sms",
            Op::DuplicateSms { .. } => "duplicate_sms",
            Op::CallTill { .. } => "call_till",
            Op::Advance { .. } => "advance_clock",
            Op::Sweep => "sweep",
            Op::Crash => "crash",
            Op::Group(_) => "group",
        }
    }

    /// How many keyed requests the operation sends (each gets the next request number).
    fn keyed_requests(&self) -> usize {
        match self {
            Op::Open(open) => usize::from(open.keyed),
            Op::Step { keyed, .. } | Op::Close { keyed, .. } | Op::Deposit { keyed, .. } => {
                usize::from(*keyed)
            }
            Op::Group(ops) => ops.iter().map(Op::keyed_requests).sum(),
            _ => 0,
        }
    }
}

/// The customers each lane starts with, and how many of them have a PIN (each answer with
/// a PIN costs an argon2id hash: tens of milliseconds).
pub const FIRST_CUSTOMERS: usize = 8;
pub const FIRST_CUSTOMERS_WITH_PIN: usize = 1;
/// Each lane's retailers.
pub const RETAILERS: usize = 2;
const CUSTOMERS_MAX: usize = 24;
/// How many recently opened processes the generator aims at.
const RECENT_MAX: usize = 10;
const TILLS_MAX: usize = 4;
const FOLLOW_UPS_MAX: usize = 64;
/// One crash in this many operations, on average.
const CRASH_ONE_IN: u32 = 2_500;

#[derive(Debug, Clone)]
struct Planned {
    customer: Option<usize>,
}

pub struct Generator {
    rng: StdRng,
    customers_with_pin: Vec<bool>,
    processes: Vec<Planned>,
    recent: VecDeque<usize>,
    tills: VecDeque<usize>,
    keyed_requests: usize,
    /// Operations planned for later: (due at operation number, operation).
    follow_ups: Vec<(u64, Op)>,
    number: u64,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        let customers_with_pin = (0..FIRST_CUSTOMERS)
            .map(|index| index < FIRST_CUSTOMERS_WITH_PIN)
            .collect();
        Generator {
            rng: StdRng::seed_from_u64(seed),
            customers_with_pin,
            processes: Vec::new(),
            recent: VecDeque::new(),
            tills: VecDeque::new(),
            keyed_requests: 0,
            follow_ups: Vec::new(),
            number: 0,
        }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let op = self.draw();
        self.keyed_requests += op.keyed_requests();
        self.number += 1;
        op
    }

    fn draw(&mut self) -> Op {
        if let Some(position) = self
            .follow_ups
            .iter()
            .position(|(due, _)| *due <= self.number)
        {
            return self.follow_ups.remove(position).1;
        }
        if self.rng.gen_ratio(1, CRASH_ONE_IN) {
            return Op::Crash;
        }
        // Weights out of 871: steps are the bulk, as in real use; a group is about 7%.
        let roll = self.rng.gen_range(0..871);
        match roll {
            0..70 => self.open(),
            70..82 => self.open_till(),
            82..87 => self.open_invalid(),
            87..400 => self.step_op(),
            400..440 => self.close_op(),
            440..500 => self.page_op(),
            500..535 => self.voice_op(),
            535..590 => self.sms_answer().map_or_else(|| self.step_op(), Op::Sms),
            590..598 => self.view_page(),
            598..613 => self.pay_sms(),
            613..623 => self.call_till(),
            623..631 => Op::Sms(self.chatter()),
            631..643 => {
                let sms = self.sms_answer().unwrap_or_else(|| self.chatter());
                Op::HoldSms(sms)
            }
            643..655 => Op::DeliverHeld {
                nth: self.rng.gen(),
            },
            655..670 => Op::DuplicateSms {
                nth: self.rng.gen(),
            },
            670..715 => self.replay(),
            715..723 => self.reuse_key(),
            723..743 => self.deposit(),
            743..746 => self.new_customer(),
            746..786 => self.advance(),
            786..811 => Op::Sweep,
            _ => self.group(),
        }
    }

    /// A customer; those with a PIN are picked half as often (each of their answers costs
    /// an argon2id hash, and a few of them cover what PINs do).
    fn customer(&mut self) -> usize {
        let customer = self.rng.gen_range(0..self.customers_with_pin.len());
        if self.has_pin(customer) && self.rng.gen_ratio(1, 2) {
            return self.rng.gen_range(0..self.customers_with_pin.len());
        }
        customer
    }

    fn has_pin(&self, customer: usize) -> bool {
        self.customers_with_pin[customer]
    }

    /// The PIN a customer types: mostly right for those who have one.
    fn pin_for(&mut self, customer: usize) -> Pin {
        if !self.has_pin(customer) {
            return if self.rng.gen_ratio(1, 10) {
                Pin::Right
            } else {
                Pin::Missing
            };
        }
        match self.rng.gen_range(0..100) {
            0..82 => Pin::Right,
            82..94 => Pin::Wrong,
            _ => Pin::Missing,
        }
    }

    fn follow_up(&mut self, within: std::ops::RangeInclusive<u64>, op: Op) {
        if self.follow_ups.len() < FOLLOW_UPS_MAX {
            let due = self.number + self.rng.gen_range(within);
            self.follow_ups.push((due, op));
        }
    }

    fn policy(&mut self) -> Option<Policy> {
        Some(match self.rng.gen_range(0..100) {
            0..15 => return None,
            15..38 => Policy::Difference,
            38..60 => Policy::Multiple {
                factor_e4: [15_000, 20_000, 32_500][self.rng.gen_range(0..3)],
            },
            60..80 => Policy::Original,
            _ => Policy::None,
        })
    }

    fn open(&mut self) -> Op {
        let customer = self.customer();
        let release = self.rng.gen_range(500..=4_000);
        let charge = self
            .rng
            .gen_ratio(3, 10)
            .then(|| self.rng.gen_range(1..=release / 2));
        let inactivity_s = match self.rng.gen_range(0..6) {
            0 => None,
            pick => Some([120, 600, 900, 1_800, 3_600][pick - 1]),
        };
        let request = OpenRequest {
            retailer: self.rng.gen_range(0..RETAILERS),
            customer: Some(customer),
            by_id: self.rng.gen_ratio(1, 5),
            release,
            charge,
            policy: self.policy(),
            inactivity_s,
            keyed: self.rng.gen_ratio(1, 4),
        };
        let process = self.processes.len();
        self.processes.push(Planned {
            customer: Some(customer),
        });
        self.recent.push_back(process);
        if self.recent.len() > RECENT_MAX {
            self.recent.pop_front();
        }
        // Most customers answer soon, on the channel they like.
        if self.rng.gen_ratio(85, 100) {
            let answer = self.answer_to(process, customer, Which::Newest);
            self.follow_up(1..=6, answer);
        }
        Op::Open(request)
    }

    fn open_till(&mut self) -> Op {
        let request = OpenRequest {
            retailer: self.rng.gen_range(0..RETAILERS),
            customer: None,
            by_id: false,
            release: self.rng.gen_range(100..=2_500),
            charge: None,
            policy: self.policy(),
            inactivity_s: Some([600, 1_800][self.rng.gen_range(0..2)]),
            keyed: self.rng.gen_ratio(1, 4),
        };
        let process = self.processes.len();
        self.processes.push(Planned { customer: None });
        self.tills.push_back(process);
        if self.tills.len() > TILLS_MAX {
            self.tills.pop_front();
        }
        if self.rng.gen_ratio(8, 10) {
            let customer = self.customer();
            let claim = if self.rng.gen_ratio(6, 10) {
                self.pay_message(process, customer)
            } else {
                let pin = self.pin_for(customer);
                Op::CallTill {
                    process,
                    customer,
                    pin,
                }
            };
            self.follow_up(1..=6, claim);
        }
        Op::Open(request)
    }

    fn open_invalid(&mut self) -> Op {
        let how = match self.rng.gen_range(0..4) {
            0 => InvalidOpen::ChargeExceedsRelease,
            1 => InvalidOpen::UnknownCustomer,
            2 => InvalidOpen::BadRelease,
            _ => InvalidOpen::BadFactor,
        };
        Op::OpenInvalid {
            retailer: self.rng.gen_range(0..RETAILERS),
            customer: self.customer(),
            how,
        }
    }

    /// One of the recent processes, the newest more often.
    fn recent_process(&mut self) -> Option<usize> {
        if self.recent.is_empty() {
            return None;
        }
        let len = self.recent.len();
        let back = self.rng.gen_range(0..len).min(self.rng.gen_range(0..len));
        Some(self.recent[len - 1 - back])
    }

    /// A process to step: a recent one, or now and then any (often ended) one.
    fn any_process(&mut self) -> Option<usize> {
        if !self.processes.is_empty() && self.rng.gen_ratio(1, 30) {
            return Some(self.rng.gen_range(0..self.processes.len()));
        }
        if !self.tills.is_empty() && self.rng.gen_ratio(1, 8) {
            return Some(self.tills[self.rng.gen_range(0..self.tills.len())]);
        }
        self.recent_process()
    }

    fn amount(&mut self) -> Amount {
        match self.rng.gen_range(0..100) {
            0..2 => Amount::Invalid(INVALID_AMOUNTS[self.rng.gen_range(0..INVALID_AMOUNTS.len())]),
            2..77 => Amount::Valid(self.rng.gen_range(1..=300)),
            77..92 => Amount::Valid(self.rng.gen_range(300..=1_500)),
            _ => Amount::Valid(self.rng.gen_range(1_500..=6_000)),
        }
    }

    fn step_op(&mut self) -> Op {
        let Some(process) = self.any_process() else {
            return self.open();
        };
        let amount = self.amount();
        // A large step may wait for a top-up: the customer often answers it.
        if matches!(amount, Amount::Valid(minor) if minor > 1_000) && self.rng.gen_ratio(7, 10) {
            if let Some(customer) = self.processes[process].customer {
                let answer = self.answer_to(process, customer, Which::Newest);
                self.follow_up(1..=4, answer);
            }
        }
        Op::Step {
            process,
            amount,
            keyed: self.rng.gen_ratio(1, 5),
        }
    }

    fn close_op(&mut self) -> Op {
        let Some(process) = self.any_process() else {
            return self.open();
        };
        // A closed process is stepped no more, mostly.
        if self.rng.gen_ratio(3, 4) {
            self.recent.retain(|&recent| recent != process);
        }
        Op::Close {
            process,
            keyed: self.rng.gen_ratio(1, 4),
        }
    }

    /// An answer on the customer's usual channels.
    fn answer_to(&mut self, process: usize, customer: usize, which: Which) -> Op {
        let approve = self.rng.gen_ratio(9, 10);
        let pin = self.pin_for(customer);
        match self.rng.gen_range(0..100) {
            0..45 => Op::Page {
                process,
                which,
                approve,
                pin,
            },
            45..75 => {
                let code = if self.rng.gen_ratio(1, 3) {
                    CodeOf::Omitted
                } else {
                    CodeOf::Process(process)
                };
                if approve {
                    Op::Sms(Sms::Yes {
                        customer,
                        code,
                        pin,
                    })
                } else {
                    Op::Sms(Sms::No { customer, code })
                }
            }
            _ => Op::Voice {
                process,
                which,
                approve,
                pin,
            },
        }
    }

    fn which(&mut self) -> Which {
        if self.rng.gen_ratio(4, 5) {
            Which::Newest
        } else {
            Which::Any(self.rng.gen())
        }
    }

    fn page_op(&mut self) -> Op {
        let Some(process) = self.recent_process() else {
            return self.open();
        };
        let customer = self.processes[process].customer.unwrap_or(0);
        let which = self.which();
        Op::Page {
            process,
            which,
            approve: self.rng.gen_ratio(85, 100),
            pin: self.pin_for(customer),
        }
    }

    fn voice_op(&mut self) -> Op {
        let Some(process) = self.recent_process() else {
            return self.open();
        };
        let customer = self.processes[process].customer.unwrap_or(0);
        let which = self.which();
        Op::Voice {
            process,
            which,
            approve: self.rng.gen_ratio(85, 100),
            pin: self.pin_for(customer),
        }
    }

    fn view_page(&mut self) -> Op {
        let Some(process) = self.recent_process() else {
            return self.open();
        };
        let which = self.which();
        Op::ViewPage { process, which }
    }

    /// A YES or NO by SMS about a recent process; now and then from someone else.
    fn sms_answer(&mut self) -> Option<Sms> {
        let process = self.recent_process()?;
        let mut customer = self.processes[process].customer?;
        if self.rng.gen_ratio(1, 25) {
            customer = self.customer();
        }
        let code = if self.rng.gen_ratio(1, 4) {
            CodeOf::Omitted
        } else {
            CodeOf::Process(process)
        };
        Some(if self.rng.gen_ratio(85, 100) {
            let pin = self.pin_for(customer);
            Sms::Yes {
                customer,
                code,
                pin,
            }
        } else {
            Sms::No { customer, code }
        })
    }

    fn pay_message(&mut self, process: usize, customer: usize) -> Op {
        let amount = match self.rng.gen_range(0..10) {
            0..6 => None,
            6..9 => Some(Amount::Valid(self.rng.gen_range(100..=3_000))),
            _ => Some(Amount::Invalid(
                INVALID_PAY_AMOUNTS[self.rng.gen_range(0..INVALID_PAY_AMOUNTS.len())],
            )),
        };
        let pin = self.pin_for(customer);
        Op::Sms(Sms::Pay {
            customer,
            process,
            amount,
            pin,
        })
    }

    fn till(&mut self) -> Option<usize> {
        if self.tills.is_empty() {
            return None;
        }
        // Mostly a till; now and then a customer's process (its own customer may PAY it).
        if self.rng.gen_ratio(1, 6) {
            return self.recent_process();
        }
        Some(self.tills[self.rng.gen_range(0..self.tills.len())])
    }

    fn pay_sms(&mut self) -> Op {
        let Some(process) = self.till() else {
            return self.open_till();
        };
        let customer = match self.processes[process].customer {
            Some(owner) if self.rng.gen_ratio(4, 5) => owner,
            _ => self.customer(),
        };
        self.pay_message(process, customer)
    }

    fn call_till(&mut self) -> Op {
        let Some(process) = self.till() else {
            return self.open_till();
        };
        let customer = match self.processes[process].customer {
            Some(owner) if self.rng.gen_ratio(4, 5) => owner,
            _ => self.customer(),
        };
        let pin = self.pin_for(customer);
        Op::CallTill {
            process,
            customer,
            pin,
        }
    }

    fn chatter(&mut self) -> Sms {
        match self.rng.gen_range(0..3) {
            0 => Sms::Balance {
                customer: self.customer(),
            },
            1 => Sms::Unrecognized {
                customer: self.customer(),
            },
            _ => Sms::Stranger,
        }
    }

    fn replay(&mut self) -> Op {
        if self.keyed_requests == 0 {
            return self.step_op();
        }
        // Mostly one of the last few, sometimes an old one.
        let back = if self.rng.gen_ratio(4, 5) {
            self.rng.gen_range(0..self.keyed_requests.min(5))
        } else {
            self.rng.gen_range(0..self.keyed_requests)
        };
        Op::Replay {
            request: self.keyed_requests - 1 - back,
        }
    }

    fn reuse_key(&mut self) -> Op {
        if self.keyed_requests == 0 {
            return self.step_op();
        }
        Op::ReuseKey {
            request: self.rng.gen_range(0..self.keyed_requests),
        }
    }

    fn deposit(&mut self) -> Op {
        Op::Deposit {
            customer: self.customer(),
            amount: self.rng.gen_range(1_000..=15_000),
            keyed: self.rng.gen_ratio(1, 3),
        }
    }

    fn new_customer(&mut self) -> Op {
        if self.customers_with_pin.len() >= CUSTOMERS_MAX {
            return self.deposit();
        }
        let has_pin = self.rng.gen_ratio(1, 8);
        self.customers_with_pin.push(has_pin);
        Op::NewCustomer {
            has_pin,
            credit: self.rng.gen_range(2_000..=30_000),
        }
    }

    fn advance(&mut self) -> Op {
        let seconds = match self.rng.gen_range(0..100) {
            0..70 => self.rng.gen_range(1..=20),
            70..90 => self.rng.gen_range(60..=300),
            _ => self.rng.gen_range(500..=1_300),
        };
        Op::Advance {
            ms: seconds * 1_000,
        }
    }

    /// Two or three operations on one process sent at once; or an open sent twice at
    /// once under one key.
    fn group(&mut self) -> Op {
        if self.rng.gen_ratio(1, 10) {
            let mut open = self.open();
            if let Op::Open(request) = &mut open {
                request.keyed = true;
            }
            let request = self.keyed_requests;
            return Op::Group(vec![open, Op::Replay { request }]);
        }
        let Some(process) = self.recent_process() else {
            return self.open();
        };
        let customer = self.processes[process].customer.unwrap_or(0);
        let size = self.rng.gen_range(2..=3);
        let mut ops = Vec::with_capacity(size);
        let mut keyed_in_group = 0;
        while ops.len() < size {
            let op = match self.rng.gen_range(0..100) {
                0..40 => {
                    let keyed = self.rng.gen_ratio(1, 4);
                    let step = Op::Step {
                        process,
                        amount: self.amount(),
                        keyed,
                    };
                    if keyed && ops.len() + 1 < size && self.rng.gen_ratio(1, 2) {
                        // The same keyed request twice at once.
                        let request = self.keyed_requests + keyed_in_group;
                        keyed_in_group += 1;
                        ops.push(step);
                        Op::Replay { request }
                    } else {
                        keyed_in_group += usize::from(keyed);
                        step
                    }
                }
                40..52 => {
                    let keyed = self.rng.gen_ratio(1, 4);
                    keyed_in_group += usize::from(keyed);
                    Op::Close { process, keyed }
                }
                52..67 => Op::Page {
                    process,
                    which: Which::Newest,
                    approve: self.rng.gen_ratio(4, 5),
                    pin: self.pin_for(customer),
                },
                67..80 => Op::Voice {
                    process,
                    which: Which::Newest,
                    approve: self.rng.gen_ratio(4, 5),
                    pin: self.pin_for(customer),
                },
                _ => {
                    let pin = self.pin_for(customer);
                    Op::Sms(Sms::Yes {
                        customer,
                        code: CodeOf::Process(process),
                        pin,
                    })
                }
            };
            ops.push(op);
        }
        Op::Group(ops)
    }
}
