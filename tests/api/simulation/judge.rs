//! The model's verdict on one answer: what the operation should have answered, and the
//! change it should have made to the model's state.

use serde_json::Value;

use super::harness::{format_minor, Action, Answer, ApiCall, Meaning, SmsMeaning};
use super::model::{Expect, Model, Opened, Outcome, Policy, SavedKey, Till};

/// Applies `action` to the model, given the app's `answer`; an error says how the answer
/// differs from the model's.
pub fn apply(model: &mut Model, action: &Action, answer: &Answer) -> Result<(), String> {
    match action {
        Action::Api(call) => api(model, call, answer),
        Action::NewCustomer {
            customer,
            has_pin,
            credit,
        } => {
            let Answer::NewCustomer {
                created, deposited, ..
            } = answer
            else {
                return Err(format!("a new customer answered {answer:?}"));
            };
            if (*created, *deposited) != (201, 201) {
                return Err(format!("a new customer answered {answer:?}"));
            }
            let index = model.add_customer(super::harness::msisdn(*customer), *has_pin);
            if index != *customer {
                return Err(format!("customer {customer} became the model's {index}"));
            }
            model.deposit(index, *credit);
            Ok(())
        }
        Action::Page {
            process,
            request,
            approve,
            pin,
            ..
        } => {
            let expect = model.answer(*process, *request, *approve, *pin);
            let Answer::Page { status } = answer else {
                return Err(format!("the page answered {answer:?}"));
            };
            let expected_status = expect.page_status();
            if *status != expected_status {
                return Err(format!(
                    "the page answered {status}, the model expects {expected_status} ({expect:?})"
                ));
            }
            Ok(())
        }
        Action::ViewPage { process, .. } => {
            model.touched.processes.insert(*process);
            match answer {
                Answer::Page { status: 200 } => Ok(()),
                other => Err(format!("showing the page answered {other:?}, not 200")),
            }
        }
        Action::Voice {
            process,
            request,
            approve,
            pin,
            ..
        } => {
            let expect = model.answer(*process, *request, *approve, *pin);
            let Answer::Voice(got) = answer else {
                return Err(format!("the voice path answered {answer:?}"));
            };
            match (&expect, got) {
                (outcome, Ok(Some(got))) if outcome == got => Ok(()),
                _ => Err(format!(
                    "the voice path answered {got:?}, the model expects {expect:?}"
                )),
            }
        }
        Action::Sms(text) => {
            match &text.meaning {
                SmsMeaning::Answer {
                    customer,
                    approve,
                    code,
                    pin,
                } => model.sms_answer(*customer, *approve, code.as_deref(), *pin),
                SmsMeaning::Pay {
                    customer,
                    code,
                    amount,
                    pin,
                } => {
                    model.pay(*customer, code, *amount, *pin);
                }
                SmsMeaning::Chatter { customer } => {
                    if let Some(customer) = customer {
                        model.touched.customers.insert(*customer);
                    }
                }
            }
            let Answer::Sms(got) = answer else {
                return Err(format!("the SMS path answered {answer:?}"));
            };
            match got {
                Ok(()) => Ok(()),
                Err(_) => Err(format!(
                    "the SMS {:?} was taken as {got:?}, the model expects it taken",
                    text.text
                )),
            }
        }
        Action::CallTill {
            customer,
            code,
            pin,
        } => {
            let expect = model.pay(*customer, code, None, *pin);
            let Answer::Till(got) = answer else {
                return Err(format!("the call answered {answer:?}"));
            };
            match (&expect, got) {
                (till, Ok(got)) if till == got => Ok(()),
                _ => Err(format!(
                    "keying till code {code} answered {got:?}, the model expects {expect:?}"
                )),
            }
        }
        Action::Advance(ms) => {
            model.now_ms += ms;
            Ok(())
        }
        Action::Sweep | Action::Crash => {
            // A crash restarts the sweeper, whose first round runs at once.
            model.sweep();
            Ok(())
        }
        Action::HoldSms | Action::Nothing(_) => Ok(()),
    }
}

fn api(model: &mut Model, call: &ApiCall, answer: &Answer) -> Result<(), String> {
    let Answer::Api { status, body } = answer else {
        return Err(format!("the API answered {answer:?}"));
    };
    let scoped = call.scoped_key();
    if let Some(scoped) = &scoped {
        if let Some(saved) = model.keys.get(scoped).cloned() {
            touch(model, &call.meaning);
            let expect = if saved.fingerprint == call.fingerprint() {
                match saved.answer {
                    Some((status, body)) => Expect::Replay { status, body },
                    None => return Err("a key was saved without an answer".into()),
                }
            } else {
                Expect::Api {
                    status: 409,
                    code: Some("idempotency_key_reused"),
                    step: None,
                }
            };
            return compare(&expect, *status, body);
        }
    }
    let expect = match &call.meaning {
        Meaning::Open { request, process } => {
            if *status != 201 {
                return Err(format!("opening a process answered {status}: {body}"));
            }
            let code = body["code"].as_str().unwrap_or_default().to_string();
            let policy = request.policy.unwrap_or(Policy::Original);
            let index = model.open(Opened {
                retailer: request.retailer,
                customer: request.customer,
                code,
                release: request.release,
                charge: request.charge,
                policy,
                inactivity_ms: request.inactivity_s.unwrap_or(3_600) * 1_000,
            });
            if index != *process {
                return Err(format!("process {process} became the model's {index}"));
            }
            let expect = Expect::Api {
                status: 201,
                code: None,
                step: None,
            };
            check_process_body(model, index, body)?;
            expect
        }
        Meaning::Refused {
            status,
            code,
            process,
            retailer,
        } => {
            if let Some(process) = process {
                model.touched.processes.insert(*process);
            }
            if let Some(retailer) = retailer {
                model.touched.retailers.insert(*retailer);
            }
            Expect::Api {
                status: *status,
                code: Some(code),
                step: None,
            }
        }
        Meaning::Step { process, amount } => model.step(*process, *amount),
        Meaning::Close { process } => {
            let expect = model.close(*process);
            if *status == 200 {
                check_process_body(model, *process, body)?;
            }
            expect
        }
        Meaning::Deposit { customer, amount } => model.deposit(*customer, *amount),
    };
    compare(&expect, *status, body)?;
    if let Some(scoped) = scoped {
        model.keys.insert(
            scoped,
            SavedKey {
                fingerprint: call.fingerprint(),
                answer: Some((*status, body.clone())),
            },
        );
    }
    Ok(())
}

/// A replayed or reused key changes nothing: what the request names is checked unchanged.
fn touch(model: &mut Model, meaning: &Meaning) {
    match meaning {
        Meaning::Open { request, .. } => {
            model.touched.retailers.insert(request.retailer);
        }
        Meaning::Refused {
            process, retailer, ..
        } => {
            if let Some(process) = process {
                model.touched.processes.insert(*process);
            }
            if let Some(retailer) = retailer {
                model.touched.retailers.insert(*retailer);
            }
        }
        Meaning::Step { process, .. } | Meaning::Close { process } => {
            model.touched.processes.insert(*process);
            model
                .touched
                .retailers
                .insert(model.processes[*process].retailer);
        }
        Meaning::Deposit { customer, .. } => {
            model.touched.customers.insert(*customer);
        }
    }
}

fn compare(expect: &Expect, status: u16, body: &Value) -> Result<(), String> {
    match expect {
        Expect::Api {
            status: expected,
            code,
            step,
        } => {
            if status != *expected {
                return Err(format!(
                    "answered {status}, the model expects {expected} {code:?}: {body}"
                ));
            }
            if let Some(code) = code {
                if body["error"]["code"] != *code {
                    return Err(format!(
                        "answered {status} {body}, the model expects {code}"
                    ));
                }
            }
            if let Some((step_status, remaining)) = step {
                if body["status"] != step_status.as_str()
                    || body["remaining"] != format_minor(*remaining)
                {
                    return Err(format!(
                        "the step answered {body}, the model expects it {} with {} remaining",
                        step_status.as_str(),
                        format_minor(*remaining)
                    ));
                }
            }
            Ok(())
        }
        Expect::Replay {
            status: expected,
            body: saved,
        } => {
            if status != *expected || body != saved {
                return Err(format!(
                    "a replayed key answered {status} {body}, not its saved {expected} {saved}"
                ));
            }
            Ok(())
        }
    }
}

/// The process object the API answered, against the model.
fn check_process_body(model: &Model, process: usize, body: &Value) -> Result<(), String> {
    let row = &model.processes[process];
    let fields = [
        ("status", row.status.as_str().to_string()),
        ("released", format_minor(row.released)),
        ("charged", format_minor(row.charged)),
        ("returned", format_minor(row.returned)),
        ("remaining", format_minor(row.remaining())),
        ("release_requested", format_minor(row.release_requested)),
    ];
    for (field, expected) in fields {
        if body[field] != expected.as_str() {
            return Err(format!(
                "the process answered {field} {}, the model has {expected}: {body}",
                body[field]
            ));
        }
    }
    Ok(())
}

/// Answers of an outcome-bearing kind, for the run's figures.
pub fn outcome_name(answer: &Answer) -> Option<String> {
    match answer {
        Answer::Voice(Ok(Some(outcome))) => Some(short(outcome)),
        Answer::Till(Ok(Till::Answered(outcome))) => Some(short(outcome)),
        _ => None,
    }
}

fn short(outcome: &Outcome) -> String {
    let text = format!("{outcome:?}");
    text.split([' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}
