//! Identifiers that people type: phone numbers, email addresses, process codes, PINs.

use std::fmt;

use super::FieldError;

/// An MSISDN in E.164 form: `+` and 8 to 15 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Msisdn(String);

impl Msisdn {
    /// Accepts `+4917012345678` and tolerates spaces, dashes and a leading `00`.
    pub fn parse(text: &str) -> Result<Msisdn, FieldError> {
        let compact: String = text.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        let digits = compact
            .strip_prefix('+')
            .or_else(|| compact.strip_prefix("00"))
            .ok_or_else(|| {
                FieldError::new(
                    "msisdn",
                    "must be in international form, like +4917012345678",
                )
            })?;
        let valid = (8..=15).contains(&digits.len())
            && digits.chars().all(|c| c.is_ascii_digit())
            && !digits.starts_with('0');
        if !valid {
            return Err(FieldError::new(
                "msisdn",
                "must be + and 8 to 15 digits, like +4917012345678",
            ));
        }
        Ok(Msisdn(format!("+{digits}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Shows the country code and the last three digits only.
    pub fn masked(&self) -> String {
        let digits = &self.0[1..];
        let shown_tail = &digits[digits.len() - 3..];
        let head = &digits[..2.min(digits.len())];
        format!(
            "+{head}{}{shown_tail}",
            "*".repeat(digits.len() - head.len() - 3)
        )
    }
}

impl fmt::Display for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address: one `@`, a dotted domain, no spaces, at most 254 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(text: &str) -> Result<Email, FieldError> {
        let text = text.trim();
        let invalid = || FieldError::new("email", "must be an address like name@example.com");
        if text.len() > 254 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (local, domain) = text.split_once('@').ok_or_else(invalid)?;
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
            && domain.split('.').all(|label| !label.is_empty());
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(invalid());
        }
        // Domains are case-insensitive; local parts, in theory, are not.
        Ok(Email(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn masked(&self) -> String {
        let (local, domain) = self.0.split_once('@').expect("parsed emails have an @");
        let first: String = local.chars().take(1).collect();
        format!("{first}***@{domain}")
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The short numeric code of a process that a person can read out or type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessCode(String);

impl ProcessCode {
    pub const DIGITS: usize = 6;

    pub fn parse(text: &str) -> Result<ProcessCode, FieldError> {
        let text = text.trim();
        if text.len() != Self::DIGITS || !text.chars().all(|c| c.is_ascii_digit()) {
            return Err(FieldError::new("code", "must be 6 digits"));
        }
        Ok(ProcessCode(text.to_string()))
    }

    /// A uniformly random code; uniqueness among open processes is the database's job.
    pub fn random() -> ProcessCode {
        use rand::Rng;
        let number: u32 = rand::thread_rng().gen_range(0..1_000_000);
        ProcessCode(format!("{number:06}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A customer PIN: 4 to 8 digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(String);

impl Pin {
    pub fn parse(text: &str) -> Result<Pin, FieldError> {
        let text = text.trim();
        if !(4..=8).contains(&text.len()) || !text.chars().all(|c| c.is_ascii_digit()) {
            return Err(FieldError::new("pin", "must be 4 to 8 digits"));
        }
        Ok(Pin(text.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

// A PIN is a secret: never print it.
impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

/// The languages customers can be spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Language {
    #[default]
    En,
    De,
}

impl Language {
    pub fn parse(text: &str) -> Result<Language, FieldError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "en" => Ok(Language::En),
            "de" => Ok(Language::De),
            _ => Err(FieldError::new("language", "must be \"en\" or \"de\"")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::De => "de",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msisdns_are_normalised_to_e164() {
        assert_eq!(
            Msisdn::parse("+49 170 1234567").unwrap().as_str(),
            "+491701234567"
        );
        assert_eq!(
            Msisdn::parse("0049-170-1234567").unwrap().as_str(),
            "+491701234567"
        );
        assert!(Msisdn::parse("01701234567").is_err());
        assert!(Msisdn::parse("+12").is_err());
        assert!(Msisdn::parse("+49abc1234567").is_err());
        assert_eq!(
            Msisdn::parse("+491701234567").unwrap().masked(),
            "+49*******567"
        );
    }

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        assert_eq!(
            Email::parse("Anna@Example.COM").unwrap().as_str(),
            "Anna@example.com"
        );
        assert!(Email::parse("anna").is_err());
        assert!(Email::parse("anna@localhost").is_err());
        assert!(Email::parse("an na@example.com").is_err());
        assert_eq!(
            Email::parse("anna@example.com").unwrap().masked(),
            "a***@example.com"
        );
    }

    #[test]
    fn codes_and_pins_are_digits() {
        assert!(ProcessCode::parse("012345").is_ok());
        assert!(ProcessCode::parse("12345").is_err());
        assert_eq!(ProcessCode::random().as_str().len(), 6);
        assert!(Pin::parse("1234").is_ok());
        assert!(Pin::parse("123").is_err());
        assert!(Pin::parse("12a4").is_err());
        assert_eq!(
            format!("{:?}", Pin::parse("1234").unwrap()),
            "Pin(<redacted>)"
        );
    }
}
