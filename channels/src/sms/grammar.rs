//! The grammar of customers' SMS replies, as DESIGN.md has it. Case-insensitive; extra spaces
//! and trailing punctuation are tolerated, because people type on small keyboards.
//!
//! - `YES` | `OK` | `JA` `[code] [PIN]`: approve. The code may be left out when the customer
//!   has one open request. A lone 6-digit number is passed as a code; the core treats it as
//!   a PIN when it matches no open request of the customer's.
//! - `NO` | `NEIN` `[code]`: decline.
//! - `PAY` `<code> [amount] [PIN]`: claim a point-of-sale process. With two trailing words,
//!   the first is the amount and the second the PIN; a lone word is an amount when it has a
//!   decimal separator or at most 3 digits, and a PIN when it has 4 to 8 digits.
//! - `BAL`: the balance.
//! - Anything else is `Unrecognized`: the core answers with a short help text.

use crate::{ChannelName, InboundMessage};

const CODE_DIGITS: usize = 6;
/// Longer texts are not a reply to us; they get the help text without being read further.
const REPLY_LENGTH_MAX: usize = 160;

fn is_digits(word: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
    lengths.contains(&word.len()) && word.chars().all(|c| c.is_ascii_digit())
}

fn is_code(word: &str) -> bool {
    is_digits(word, CODE_DIGITS..=CODE_DIGITS)
}

fn is_pin(word: &str) -> bool {
    is_digits(word, 4..=8)
}

/// An amount as typed: digits with at most one `.` or `,` (German customers write `20,50`).
fn amount(word: &str) -> Option<String> {
    let normalized = word.replace(',', ".");
    let separators = normalized.matches('.').count();
    let valid = !normalized.is_empty()
        && separators <= 1
        && !normalized.starts_with('.')
        && !normalized.ends_with('.')
        && normalized.chars().all(|c| c.is_ascii_digit() || c == '.');
    valid.then_some(normalized)
}

/// Parses one MO text from `from` (an E.164 MSISDN).
pub fn parse(from: &str, text: &str) -> InboundMessage {
    let unrecognized = || InboundMessage::Unrecognized {
        channel: ChannelName::Sms,
        from: from.to_string(),
        text: text.chars().take(REPLY_LENGTH_MAX).collect(),
    };
    if text.chars().count() > REPLY_LENGTH_MAX {
        return unrecognized();
    }
    let words: Vec<String> = text
        .split_whitespace()
        .map(|word| {
            word.trim_matches(|c: char| {
                matches!(c, '.' | '!' | '?' | ';' | ':') || c == ',' && word.len() > 1
            })
            .to_ascii_uppercase()
        })
        .filter(|word| !word.is_empty())
        .collect();
    let Some((keyword, rest)) = words.split_first() else {
        return unrecognized();
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let from = from.to_string();
    match (keyword.as_str(), rest.as_slice()) {
        ("YES" | "OK" | "JA", []) => InboundMessage::Approve {
            channel: ChannelName::Sms,
            from,
            code: None,
            pin: None,
        },
        ("YES" | "OK" | "JA", [only]) if is_code(only) => InboundMessage::Approve {
            channel: ChannelName::Sms,
            from,
            code: Some(only.to_string()),
            pin: None,
        },
        ("YES" | "OK" | "JA", [only]) if is_pin(only) => InboundMessage::Approve {
            channel: ChannelName::Sms,
            from,
            code: None,
            pin: Some(only.to_string()),
        },
        ("YES" | "OK" | "JA", [code, pin]) if is_code(code) && is_pin(pin) => {
            InboundMessage::Approve {
                channel: ChannelName::Sms,
                from,
                code: Some(code.to_string()),
                pin: Some(pin.to_string()),
            }
        }
        ("NO" | "NEIN", []) => InboundMessage::Decline {
            channel: ChannelName::Sms,
            from,
            code: None,
        },
        ("NO" | "NEIN", [code]) if is_code(code) => InboundMessage::Decline {
            channel: ChannelName::Sms,
            from,
            code: Some(code.to_string()),
        },
        ("PAY", [code, rest @ ..]) if is_code(code) => {
            let (amount, pin) = match rest {
                [] => (None, None),
                [word] if is_pin(word) && !word.contains(['.', ',']) => {
                    (None, Some(word.to_string()))
                }
                [word] => match amount(word) {
                    Some(amount) => (Some(amount), None),
                    None => return unrecognized(),
                },
                [first, pin] if is_pin(pin) => match amount(first) {
                    Some(amount) => (Some(amount), Some(pin.to_string())),
                    None => return unrecognized(),
                },
                _ => return unrecognized(),
            };
            InboundMessage::Pay {
                channel: ChannelName::Sms,
                from,
                code: code.to_string(),
                amount,
                pin,
            }
        }
        ("BAL", []) => InboundMessage::Balance {
            channel: ChannelName::Sms,
            from,
        },
        _ => unrecognized(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: &str = "+491701234567";

    fn approve(code: Option<&str>, pin: Option<&str>) -> InboundMessage {
        InboundMessage::Approve {
            channel: ChannelName::Sms,
            from: FROM.into(),
            code: code.map(Into::into),
            pin: pin.map(Into::into),
        }
    }

    fn pay(code: &str, amount: Option<&str>, pin: Option<&str>) -> InboundMessage {
        InboundMessage::Pay {
            channel: ChannelName::Sms,
            from: FROM.into(),
            code: code.into(),
            amount: amount.map(Into::into),
            pin: pin.map(Into::into),
        }
    }

    #[test]
    fn approvals_in_any_case_and_spacing() {
        assert_eq!(
            parse(FROM, "YES 123456 4711"),
            approve(Some("123456"), Some("4711"))
        );
        assert_eq!(
            parse(FROM, "  yes   123456  4711 "),
            approve(Some("123456"), Some("4711"))
        );
        assert_eq!(parse(FROM, "Ok"), approve(None, None));
        assert_eq!(parse(FROM, "ja 4711"), approve(None, Some("4711")));
        assert_eq!(parse(FROM, "Yes!"), approve(None, None));
        assert_eq!(parse(FROM, "JA 123456"), approve(Some("123456"), None));
        assert_eq!(
            parse(FROM, "yes 123456 12345678"),
            approve(Some("123456"), Some("12345678"))
        );
    }

    #[test]
    fn declines() {
        let decline = |code: Option<&str>| InboundMessage::Decline {
            channel: ChannelName::Sms,
            from: FROM.into(),
            code: code.map(Into::into),
        };
        assert_eq!(parse(FROM, "NO"), decline(None));
        assert_eq!(parse(FROM, "nein 123456"), decline(Some("123456")));
        assert_eq!(parse(FROM, "no."), decline(None));
    }

    #[test]
    fn point_of_sale_claims() {
        assert_eq!(parse(FROM, "PAY 123456"), pay("123456", None, None));
        assert_eq!(
            parse(FROM, "pay 123456 20.00 4711"),
            pay("123456", Some("20.00"), Some("4711"))
        );
        assert_eq!(
            parse(FROM, "PAY 123456 20,50 4711"),
            pay("123456", Some("20.50"), Some("4711"))
        );
        assert_eq!(
            parse(FROM, "PAY 123456 20"),
            pay("123456", Some("20"), None)
        );
        assert_eq!(
            parse(FROM, "PAY 123456 4711"),
            pay("123456", None, Some("4711"))
        );
        assert_eq!(
            parse(FROM, "PAY 123456 7.5"),
            pay("123456", Some("7.5"), None)
        );
    }

    #[test]
    fn balance() {
        assert_eq!(
            parse(FROM, "bal"),
            InboundMessage::Balance {
                channel: ChannelName::Sms,
                from: FROM.into()
            }
        );
    }

    #[test]
    fn anything_else_is_unrecognized() {
        for text in [
            "",
            "   ",
            "hello",
            "YES please",
            "YES 12345x",
            "PAY",
            "PAY 12345",
            "PAY 123456 abc 4711",
            "PAY 123456 20.00 47",
            "PAY 123456 1.2.3",
            "NO 123456 4711",
            "BAL 5",
            "YES 123456 4711 extra",
            &"Y".repeat(500),
        ] {
            assert!(
                matches!(parse(FROM, text), InboundMessage::Unrecognized { .. }),
                "{text:?}"
            );
        }
    }
}

/// Fuzz targets (bolero): under `cargo test` each runs a bounded number of random inputs;
/// `scripts/fuzz.sh` runs them coverage-guided for as long as asked.
#[cfg(test)]
mod fuzz_tests {
    use super::*;

    /// What replies are made of, so that random inputs reach every arm of the grammar and
    /// not only `Unrecognized`: keywords in any case, codes, PINs, amounts, punctuation and
    /// characters whose case or width is tricky.
    const WORDS: &[&str] = &[
        "YES",
        "yes",
        "Ok",
        "JA",
        "NO",
        "nein",
        "PAY",
        "pay",
        "BAL",
        "bal",
        "123456",
        "000000",
        "4711",
        "12345678",
        "123456789",
        "20",
        "20,50",
        "7.5",
        "1.2.3",
        ".5",
        "5.",
        ",",
        ".",
        "!",
        "?",
        ";",
        ":",
        "!!",
        "İ",
        "ß",
        "€",
        "\u{0}",
        "\u{85}",
        "\u{200B}",
        "١٢٣٤٥٦",
    ];
    const SEPARATORS: &[&str] = &[" ", "  ", "\t", "\n", "\u{3000}", ""];

    /// A reply from (word, separator) choices.
    pub(crate) fn reply(tokens: &[(u8, u8)]) -> String {
        tokens
            .iter()
            .map(|&(word, separator)| {
                let word = WORDS[usize::from(word) % WORDS.len()];
                let separator = SEPARATORS[usize::from(separator) % SEPARATORS.len()];
                format!("{word}{separator}")
            })
            .collect()
    }

    fn digits(text: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
        lengths.contains(&text.len()) && text.bytes().all(|byte| byte.is_ascii_digit())
    }

    /// The message with an `Unrecognized` text left out: that text is the reply as typed,
    /// so it keeps the case it was typed in.
    fn without_text(message: InboundMessage) -> InboundMessage {
        match message {
            InboundMessage::Unrecognized { channel, from, .. } => InboundMessage::Unrecognized {
                channel,
                from,
                text: String::new(),
            },
            other => other,
        }
    }

    fn check(from: &str, text: &str) {
        let message = parse(from, text);
        let sender = match &message {
            InboundMessage::Approve {
                channel,
                from,
                code,
                pin,
            } => {
                assert_eq!(*channel, ChannelName::Sms);
                assert!(code.as_deref().is_none_or(is_code), "{message:?}");
                assert!(pin.as_deref().is_none_or(is_pin), "{message:?}");
                from
            }
            InboundMessage::Decline {
                channel,
                from,
                code,
            } => {
                assert_eq!(*channel, ChannelName::Sms);
                assert!(code.as_deref().is_none_or(is_code), "{message:?}");
                from
            }
            InboundMessage::Pay {
                channel,
                from,
                code,
                amount,
                pin,
            } => {
                assert_eq!(*channel, ChannelName::Sms);
                assert!(digits(code, CODE_DIGITS..=CODE_DIGITS), "{message:?}");
                if let Some(amount) = amount {
                    // What the core's amount parser takes: digits and at most one point
                    // between them, nothing else.
                    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, "0"));
                    assert!(
                        digits(whole, 1..=REPLY_LENGTH_MAX)
                            && digits(fraction, 1..=REPLY_LENGTH_MAX),
                        "{message:?}"
                    );
                }
                assert!(pin.as_deref().is_none_or(is_pin), "{message:?}");
                from
            }
            InboundMessage::Balance { channel, from } => {
                assert_eq!(*channel, ChannelName::Sms);
                from
            }
            InboundMessage::Unrecognized {
                channel,
                from,
                text: kept,
            } => {
                assert_eq!(*channel, ChannelName::Sms);
                // Bounded: what is kept of an unread reply is its first 160 characters.
                let expected: String = text.chars().take(REPLY_LENGTH_MAX).collect();
                assert_eq!(kept, &expected);
                from
            }
            InboundMessage::DeliveryReceipt { .. } => {
                panic!("a reply text became a delivery receipt: {message:?}")
            }
        };
        assert_eq!(sender, from);
        // Keywords are case-insensitive: the same reply in other case means the same.
        let message = without_text(message);
        assert_eq!(
            without_text(parse(from, &text.to_ascii_lowercase())),
            message
        );
        assert_eq!(
            without_text(parse(from, &text.to_ascii_uppercase())),
            message
        );
    }

    #[test]
    fn any_reply_text_parses_to_a_well_formed_message() {
        bolero::check!()
            .with_type::<(String, String, Vec<(u8, u8)>)>()
            .with_iterations(3_000)
            .for_each(|(from, raw, tokens)| {
                check(from, raw);
                check(from, &reply(tokens));
            });
    }
}
