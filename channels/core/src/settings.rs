//! Helpers for the adapters' own settings: a secret that never prints, and a collector of
//! every validation problem at once.

use std::fmt;

use serde::Deserialize;

/// A password, token or key from the configuration. `Debug` and `Display` print
/// `<redacted>`; only [`Secret::expose`] gives the value, where it goes on the wire.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_string())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Every problem a configuration has, each with its full key, so that an operator fixes them
/// all in one go.
#[derive(Debug, Default)]
pub struct Problems {
    prefix: String,
    found: Vec<String>,
}

impl Problems {
    pub fn new() -> Problems {
        Problems::default()
    }

    /// Records `message` against `key` (under the current prefix) unless `ok`.
    pub fn require(&mut self, ok: bool, key: &str, message: &str) {
        if !ok {
            let key = if self.prefix.is_empty() {
                key.to_string()
            } else {
                format!("{}.{key}", self.prefix)
            };
            self.found.push(format!("`{key}`: {message}"));
        }
    }

    /// Runs `check` with every key under `prefix` (such as `channels.sms`).
    pub fn under(&mut self, prefix: &str, check: impl FnOnce(&mut Problems)) {
        let outer = std::mem::take(&mut self.prefix);
        self.prefix = if outer.is_empty() {
            prefix.to_string()
        } else {
            format!("{outer}.{prefix}")
        };
        check(self);
        self.prefix = outer;
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    pub fn into_vec(self) -> Vec<String> {
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn problems_carry_their_full_key() {
        let mut problems = Problems::new();
        problems.require(false, "top", "bad");
        problems.under("channels", |problems| {
            problems.under("sms.smsc[0]", |problems| {
                problems.require(false, "port", "must not be 0");
                problems.require(true, "host", "never shown");
            });
        });
        assert_eq!(
            problems.into_vec(),
            ["`top`: bad", "`channels.sms.smsc[0].port`: must not be 0"]
        );
    }
}
