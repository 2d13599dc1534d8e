//! The states of processes, steps and confirmation requests, as stored and as shown.

use serde::Deserialize;

macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

text_enum!(ProcessStatus {
    AwaitingConfirmation => "awaiting_confirmation",
    Active => "active",
    Closed => "closed",
    Declined => "declined",
    Expired => "expired",
});

text_enum!(StepStatus {
    Charged => "charged",
    AwaitingConfirmation => "awaiting_confirmation",
    Declined => "declined",
    Expired => "expired",
});

text_enum!(ConfirmationStatus {
    Pending => "pending",
    Approved => "approved",
    Declined => "declined",
    Expired => "expired",
});

text_enum!(ConfirmationKind {
    Initial => "initial",
    TopUp => "top_up",
});

text_enum!(TopUpPolicyKind {
    Difference => "difference",
    Multiple => "multiple",
    Original => "original",
    None => "none",
});
