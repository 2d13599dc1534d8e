//! One operation's place in its write transaction.

use sqlx::AnyConnection;

use super::effects::Effects;

/// What every transition of an operation works with: the transaction's connection, the
/// time the operation runs at (one instant for all it writes), and the events and messages
/// it causes, written at its end by `Effects::flush`. Built where an operation starts and
/// handed down, instead of three parameters on every function.
pub(super) struct Txn<'a> {
    pub conn: &'a mut AnyConnection,
    pub now_ms: i64,
    pub effects: &'a mut Effects,
}
