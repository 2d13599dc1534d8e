//! Test-only faults, compiled with the `fault-injection` feature and never in a production
//! build: switches that make the engine break a money invariant on purpose, so that a test
//! can show the simulation (`tests/api/simulation.rs`) catches it.
//!
//! A fault is armed for one retailer at a time, so that tests running beside the one that
//! arms it in the same test binary are not touched by it.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::Minor;
use crate::ledger::{AccountKind, Transfer, TransferKind};

/// Armed retailers: how many of their step charges to let through before the fault, and
/// how many went through so far.
static STEP_OVERCHARGE: Mutex<Option<HashMap<String, Armed>>> = Mutex::new(None);

struct Armed {
    after: u64,
    seen: u64,
}

/// From the `after`-th step charge credited to `retailer_id` on (counting from 1), every
/// step transfer moves one minor unit more than the step: the hold loses more than the
/// process's remaining amount does, and the step's transfer no longer matches the step.
pub fn overcharge_steps_after(retailer_id: &str, after: u64) {
    let mut armed = lock();
    armed
        .get_or_insert_with(HashMap::new)
        .insert(retailer_id.to_string(), Armed { after, seen: 0 });
}

/// Switches the fault off for `retailer_id`.
pub fn disarm(retailer_id: &str) {
    if let Some(armed) = lock().as_mut() {
        armed.remove(retailer_id);
    }
}

/// The ledger's hook: the transfer as the armed fault has it.
pub(crate) fn tamper(transfer: Transfer<'_>) -> Transfer<'_> {
    let (kind, owner) = transfer.credit;
    if transfer.kind != TransferKind::Step || kind != AccountKind::RetailerReceivable {
        return transfer;
    }
    let mut armed = lock();
    let Some(fault) = armed.as_mut().and_then(|armed| armed.get_mut(owner)) else {
        return transfer;
    };
    fault.seen += 1;
    if fault.seen < fault.after {
        return transfer;
    }
    let amount: Minor = transfer.amount + 1;
    Transfer { amount, ..transfer }
}

fn lock() -> std::sync::MutexGuard<'static, Option<HashMap<String, Armed>>> {
    STEP_OVERCHARGE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
