//! Domain types parsed at the edges: once a value has one of these types, it is valid.

mod identifiers;
mod money;
mod status;
mod text;
mod words;

pub use identifiers::{Email, Language, Msisdn, Pin, ProcessCode};
pub use money::{Currency, Minor, MoneyError};
pub use status::{
    ConfirmationKind, ConfirmationStatus, ProcessStatus, StepStatus, TopUpPolicyKind,
};
pub use text::{free_text, shortened, without_links};
pub use words::amount_in_words;

/// A validation failure of one input value, said so a person can fix it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> FieldError {
        FieldError {
            field,
            message: message.into(),
        }
    }
}
