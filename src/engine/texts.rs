//! The words of every message, in English and German. Each names the retailer, the goods or
//! service, the amount and the code (claims 7 and 11), and stays short enough for one SMS
//! where it can.

use crate::domain::{amount_in_words, shortened, Currency, Language};

/// What a message is about, with amounts already formatted.
pub struct TextFacts<'a> {
    pub retailer: &'a str,
    /// The retailer's description as customers may see it (`ProcessRow::context`).
    pub context: String,
    pub code: &'a str,
    pub currency: &'a str,
    /// The process's description and reference as the retailer gave them, which every
    /// message carries beside its text (claim 7).
    pub description: Option<&'a str>,
    pub reference: Option<&'a str>,
}

pub enum Text<'a> {
    ConfirmationRequest {
        amount: &'a str,
        url: &'a str,
    },
    TopUpRequest {
        amount: &'a str,
        step: &'a str,
        remaining: &'a str,
        url: &'a str,
    },
    IdentifierNotification {
        process_id: &'a str,
        amount: &'a str,
    },
    Released {
        amount: &'a str,
    },
    ReleaseReceipt {
        amount: &'a str,
    },
    Charged {
        amount: &'a str,
        remaining: &'a str,
    },
    StepReceipt {
        amount: &'a str,
        remaining: &'a str,
    },
    Declined {
        reason: &'a str,
    },
    Ended {
        ended: Ended,
        charged: &'a str,
        returned: &'a str,
    },
    ExpiringSoon {
        remaining: &'a str,
        expires_at: &'a str,
    },
}

#[derive(Clone, Copy)]
pub enum Ended {
    Closed,
    Expired,
}

pub fn render(language: Language, facts: &TextFacts<'_>, text: &Text<'_>) -> String {
    let TextFacts {
        retailer,
        context,
        code,
        currency,
        ..
    } = facts;
    // The operator's words come first: who asks, the amount, the code and the link. The
    // retailer's description comes last, quoted, so that it cannot pass for any of them.
    let body = match (language, text) {
        (Language::En, Text::ConfirmationRequest { amount, url }) => format!(
            "{retailer} asks you to release {amount} {currency}. Code {code}. Confirm or decline: {url}"
        ),
        (Language::De, Text::ConfirmationRequest { amount, url }) => format!(
            "{retailer} bittet um Freigabe von {amount} {currency}. Code {code}. Bestätigen oder ablehnen: {url}"
        ),
        (Language::En, Text::TopUpRequest { amount, step, remaining, url }) => format!(
            "{retailer} asks for {amount} {currency} more (step {step}, {remaining} left). Code {code}. Confirm or decline: {url}"
        ),
        (Language::De, Text::TopUpRequest { amount, step, remaining, url }) => format!(
            "{retailer} bittet um weitere {amount} {currency} (Schritt {step}, Rest {remaining}). Code {code}. Bestätigen oder ablehnen: {url}"
        ),
        (Language::En, Text::IdentifierNotification { process_id, amount }) => format!(
            "{retailer}: process {code} ({process_id}) opened, {amount} {currency} requested."
        ),
        (Language::De, Text::IdentifierNotification { process_id, amount }) => format!(
            "{retailer}: Vorgang {code} ({process_id}) eröffnet, {amount} {currency} angefragt."
        ),
        (Language::En, Text::Released { amount }) => format!(
            "{retailer}: the customer released {amount} {currency}, process {code}."
        ),
        (Language::De, Text::Released { amount }) => format!(
            "{retailer}: der Kunde hat {amount} {currency} freigegeben, Vorgang {code}."
        ),
        (Language::En, Text::ReleaseReceipt { amount }) => format!(
            "You released {amount} {currency} to {retailer}. Code {code}."
        ),
        (Language::De, Text::ReleaseReceipt { amount }) => format!(
            "Sie haben {retailer} {amount} {currency} freigegeben. Code {code}."
        ),
        (Language::En, Text::Charged { amount, remaining }) => format!(
            "{retailer}: charged {amount} {currency}, process {code}; {remaining} {currency} remaining."
        ),
        (Language::De, Text::Charged { amount, remaining }) => format!(
            "{retailer}: {amount} {currency} abgebucht, Vorgang {code}; Rest {remaining} {currency}."
        ),
        (Language::En, Text::StepReceipt { amount, remaining }) => format!(
            "Receipt: {retailer} charged {amount} {currency}. Code {code}. Left: {remaining} {currency}."
        ),
        (Language::De, Text::StepReceipt { amount, remaining }) => format!(
            "Beleg: {retailer} hat {amount} {currency} abgebucht. Code {code}. Rest: {remaining} {currency}."
        ),
        (Language::En, Text::Declined { reason }) => format!(
            "{retailer}: the payment with code {code} was declined: {}.",
            reason_en(reason)
        ),
        (Language::De, Text::Declined { reason }) => format!(
            "{retailer}: die Zahlung mit Code {code} wurde abgelehnt: {}.",
            reason_de(reason)
        ),
        (Language::En, Text::ExpiringSoon { remaining, expires_at }) => format!(
            "{retailer}: process {code} expires at {expires_at} unless a step comes first; {remaining} {currency} would return to the customer."
        ),
        (Language::De, Text::ExpiringSoon { remaining, expires_at }) => format!(
            "{retailer}: Vorgang {code} läuft um {expires_at} ab, wenn kein Schritt folgt; {remaining} {currency} gingen an den Kunden zurück."
        ),
        (Language::En, Text::Ended { ended, charged, returned }) => format!(
            "{retailer}: process {code} {}. Charged {charged} {currency}, returned {returned} {currency}.",
            match ended {
                Ended::Closed => "closed",
                Ended::Expired => "expired",
            }
        ),
        (Language::De, Text::Ended { ended, charged, returned }) => format!(
            "{retailer}: Vorgang {code} {}. Abgebucht {charged} {currency}, zurück {returned} {currency}.",
            match ended {
                Ended::Closed => "beendet",
                Ended::Expired => "abgelaufen",
            }
        ),
    };
    format!("{body} {}", quoted_context(language, context))
}

/// The retailer's description of the goods or service, quoted and labelled as what it is.
fn quoted_context(language: Language, context: &str) -> String {
    match language {
        Language::En => format!("For: \"{context}\""),
        Language::De => format!("Für: \"{context}\""),
    }
}

/// The text of a Service Indication for a confirmation request: who asks, how much, and the
/// code. The SI's link says the rest, and both together should fit one SMS where they can
/// (the push SMS also carries its UDH, the WSP header and the link), so the retailer's
/// description follows only as far as `PUSH_TEXT_CHARS_MAX` allows.
pub fn render_push(language: Language, facts: &TextFacts<'_>, text: &Text<'_>) -> Option<String> {
    let TextFacts {
        retailer,
        context,
        code,
        currency,
        ..
    } = facts;
    let body = match (language, text) {
        (Language::En, Text::ConfirmationRequest { amount, .. }) => {
            format!("{retailer}: release {amount} {currency}? Code {code}")
        }
        (Language::De, Text::ConfirmationRequest { amount, .. }) => {
            format!("{retailer}: {amount} {currency} freigeben? Code {code}")
        }
        (Language::En, Text::TopUpRequest { amount, .. }) => {
            format!("{retailer}: {amount} {currency} more? Code {code}")
        }
        (Language::De, Text::TopUpRequest { amount, .. }) => {
            format!("{retailer}: weitere {amount} {currency}? Code {code}")
        }
        _ => return None,
    };
    // Room for ` "..."` around a useful piece of the description, or none at all.
    let room = PUSH_TEXT_CHARS_MAX.saturating_sub(body.chars().count() + 3);
    if context.is_empty() || room < 8 {
        return Some(body);
    }
    Some(format!("{body} \"{}\"", shortened(context, room)))
}

/// The prompt a voice call speaks for a confirmation request: who asks, for what, and the
/// amount in words (text-to-speech reads "twelve euros fifty" well and "12.50" badly), then
/// what to key. Never a digit of the PIN. `None` for messages that are no request.
pub fn render_voice(
    language: Language,
    facts: &TextFacts<'_>,
    text: &Text<'_>,
    pin_required: bool,
) -> Option<String> {
    let (amount, top_up) = match text {
        Text::ConfirmationRequest { amount, .. } => (*amount, false),
        Text::TopUpRequest { amount, .. } => (*amount, true),
        _ => return None,
    };
    let spoken = spoken_amount(language, facts.currency, amount)?;
    let retailer = facts.retailer;
    let goods = shortened(&facts.context, VOICE_CONTEXT_CHARS_MAX);
    let ask = match (language, top_up) {
        (Language::En, false) => format!("{retailer} asks you to release {spoken} for {goods}."),
        (Language::En, true) => format!("{retailer} asks for {spoken} more for {goods}."),
        (Language::De, false) => {
            format!("{retailer} bittet um Freigabe von {spoken} für {goods}.")
        }
        (Language::De, true) => format!("{retailer} bittet um weitere {spoken} für {goods}."),
    };
    let keys = match (language, pin_required) {
        (Language::En, true) => "Please enter your PIN, then press the hash key.",
        (Language::En, false) => "To approve, press 1. To decline, press 2.",
        (Language::De, true) => "Bitte geben Sie Ihre PIN ein und drücken Sie dann die Rautetaste.",
        (Language::De, false) => "Zum Freigeben drücken Sie die 1, zum Ablehnen die 2.",
    };
    Some(format!("{ask} {keys}"))
}

/// An amount as the API formats it ("12.50"), in words; exact, since the text has exactly
/// the currency's decimals.
fn spoken_amount(language: Language, currency: &str, amount: &str) -> Option<String> {
    let currency = Currency::parse(currency).ok()?;
    let minor = currency
        .parse_amount(amount, rust_decimal::Decimal::MAX)
        .ok()?;
    Some(amount_in_words(language, currency, minor))
}

/// How much of the retailer's description a call reads out.
pub const VOICE_CONTEXT_CHARS_MAX: usize = 60;

/// The longest Service Indication text.
pub const PUSH_TEXT_CHARS_MAX: usize = 60;

/// How much of the retailer's description an SMS carries, so that the operator's words
/// and the answer always fit.
pub const SMS_CONTEXT_CHARS_MAX: usize = 40;

fn reason_en(reason: &str) -> &str {
    match reason {
        "insufficient_credit" => "not enough credit",
        "customer_declined" => "declined by the customer",
        "pin_tries_exceeded" => "too many wrong PINs",
        "process_closed" => "the process was closed",
        "insufficient_release" => "the step exceeds the release",
        other => other,
    }
}

fn reason_de(reason: &str) -> &str {
    match reason {
        "insufficient_credit" => "nicht genug Guthaben",
        "customer_declined" => "vom Kunden abgelehnt",
        "pin_tries_exceeded" => "zu viele falsche PINs",
        "process_closed" => "der Vorgang wurde beendet",
        "insufficient_release" => "der Schritt übersteigt die Freigabe",
        other => other,
    }
}

/// Replies to a customer's SMS (or other channel) message.
pub enum Reply<'a> {
    Help,
    NothingOpen,
    SeveralOpen,
    NoSuchCode { code: &'a str },
    Declined { code: &'a str },
    PinRequired { code: &'a str },
    WrongPin { code: &'a str, tries_left: i64 },
    LockedOut { until: String },
    AlreadyAnswered { code: &'a str },
    Expired { code: &'a str },
    BadAmount { reason: &'a str },
    Balance { balances: &'a str },
}

pub fn render_reply(language: Language, reply: &Reply<'_>) -> String {
    match (language, reply) {
        (Language::En, Reply::Help) => "paystep: reply YES <code> <PIN> to pay, NO <code> to decline, \
             PAY <code> <amount> <PIN> at a till, BAL for your balance."
            .to_string(),
        (Language::De, Reply::Help) => "paystep: Antworten Sie JA <Code> <PIN> zum Zahlen, NEIN <Code> zum \
             Ablehnen, PAY <Code> <Betrag> <PIN> an der Kasse, BAL für Ihr Guthaben."
            .to_string(),
        (Language::En, Reply::NothingOpen) => "You have no open payment request.".to_string(),
        (Language::De, Reply::NothingOpen) => "Sie haben keine offene Zahlungsanfrage.".to_string(),
        (Language::En, Reply::SeveralOpen) => {
            "You have several open requests: reply YES <code> <PIN> with the code of one.".to_string()
        }
        (Language::De, Reply::SeveralOpen) => {
            "Sie haben mehrere offene Anfragen: antworten Sie JA <Code> <PIN> mit dem Code einer davon."
                .to_string()
        }
        (Language::En, Reply::NoSuchCode { code }) => format!("No open payment has the code {code}."),
        (Language::De, Reply::NoSuchCode { code }) => format!("Keine offene Zahlung hat den Code {code}."),
        (Language::En, Reply::Declined { code }) => format!("Code {code} declined. Nothing was charged."),
        (Language::De, Reply::Declined { code }) => {
            format!("Code {code} abgelehnt. Nichts wurde abgebucht.")
        }
        (Language::En, Reply::PinRequired { code }) => format!("Please reply YES {code} <PIN>."),
        (Language::De, Reply::PinRequired { code }) => format!("Bitte antworten Sie JA {code} <PIN>."),
        (Language::En, Reply::WrongPin { code, tries_left }) => {
            format!("Wrong PIN for code {code}. Tries left: {tries_left}.")
        }
        (Language::De, Reply::WrongPin { code, tries_left }) => {
            format!("Falsche PIN für Code {code}. Verbleibende Versuche: {tries_left}.")
        }
        (Language::En, Reply::LockedOut { until }) => format!("Too many wrong PINs: locked until {until}."),
        (Language::De, Reply::LockedOut { until }) => format!("Zu viele falsche PINs: gesperrt bis {until}."),
        (Language::En, Reply::AlreadyAnswered { code }) => format!("Code {code} is already answered."),
        (Language::De, Reply::AlreadyAnswered { code }) => format!("Code {code} ist bereits beantwortet."),
        (Language::En, Reply::Expired { code }) => format!("The request with code {code} has expired."),
        (Language::De, Reply::Expired { code }) => format!("Die Anfrage mit Code {code} ist abgelaufen."),
        (Language::En, Reply::BadAmount { reason }) => format!("Amount not accepted: {reason}."),
        (Language::De, Reply::BadAmount { reason }) => format!("Betrag nicht angenommen: {reason}."),
        (Language::En, Reply::Balance { balances }) => format!("Your credit (held for open payments): {balances}."),
        (Language::De, Reply::Balance { balances }) => {
            format!("Ihr Guthaben (für offene Zahlungen reserviert): {balances}.")
        }
    }
}

/// The SMS form of a confirmation request: no link (it would not fit one SMS), but how to
/// answer by reply. `None` for texts that are the same on every channel.
pub fn render_sms(
    language: Language,
    facts: &TextFacts<'_>,
    text: &Text<'_>,
    pin_required: bool,
) -> Option<String> {
    let TextFacts {
        retailer,
        context,
        code,
        currency,
        ..
    } = facts;
    let answer = match (language, pin_required) {
        (Language::En, true) => format!("Reply YES {code} <PIN> or NO {code}."),
        (Language::En, false) => format!("Reply YES {code} or NO {code}."),
        (Language::De, true) => format!("Antworten Sie JA {code} <PIN> oder NEIN {code}."),
        (Language::De, false) => format!("Antworten Sie JA {code} oder NEIN {code}."),
    };
    let body = match (language, text) {
        (Language::En, Text::ConfirmationRequest { amount, .. }) => {
            format!("{retailer} asks you to release {amount} {currency}. Code {code}. {answer}")
        }
        (Language::De, Text::ConfirmationRequest { amount, .. }) => {
            format!("{retailer} bittet um Freigabe von {amount} {currency}. Code {code}. {answer}")
        }
        (Language::En, Text::TopUpRequest { amount, .. }) => {
            format!("{retailer} asks for {amount} {currency} more. Code {code}. {answer}")
        }
        (Language::De, Text::TopUpRequest { amount, .. }) => {
            format!("{retailer} bittet um weitere {amount} {currency}. Code {code}. {answer}")
        }
        _ => return None,
    };
    let context = shortened(context, SMS_CONTEXT_CHARS_MAX);
    Some(format!("{body} {}", quoted_context(language, &context)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>() -> TextFacts<'a> {
        TextFacts {
            retailer: "Garage Nord",
            context: "Parking, level 2".into(),
            code: "123456",
            currency: "EUR",
            description: None,
            reference: None,
        }
    }

    fn prompt(language: Language, amount: &str, pin_required: bool) -> String {
        let text = Text::ConfirmationRequest {
            amount,
            url: "https://pay.test/c/x",
        };
        render_voice(language, &facts(), &text, pin_required).unwrap()
    }

    #[test]
    fn the_voice_prompt_says_amounts_in_words_in_english() {
        for (amount, words) in [
            ("0.05", "five cents"),
            ("1.00", "one euro"),
            ("12.50", "twelve euros fifty"),
            (
                "1234.56",
                "one thousand two hundred thirty-four euros fifty-six",
            ),
        ] {
            assert_eq!(
                prompt(Language::En, amount, true),
                format!(
                    "Garage Nord asks you to release {words} for Parking, level 2. \
                     Please enter your PIN, then press the hash key."
                )
            );
        }
        assert!(prompt(Language::En, "12.50", false)
            .ends_with("To approve, press 1. To decline, press 2."));
    }

    #[test]
    fn the_voice_prompt_says_amounts_in_words_in_german() {
        for (amount, words) in [
            ("0.05", "fünf Cent"),
            ("1.00", "ein Euro"),
            ("12.50", "zwölf Euro fünfzig"),
            (
                "1234.56",
                "eintausendzweihundertvierunddreißig Euro sechsundfünfzig",
            ),
        ] {
            assert_eq!(
                prompt(Language::De, amount, true),
                format!(
                    "Garage Nord bittet um Freigabe von {words} für Parking, level 2. \
                     Bitte geben Sie Ihre PIN ein und drücken Sie dann die Rautetaste."
                )
            );
        }
        assert!(prompt(Language::De, "12.50", false).ends_with("zum Ablehnen die 2."));
    }

    #[test]
    fn a_prompt_shows_no_digits_of_the_amount() {
        let spoken = prompt(Language::En, "1234.56", true);
        assert!(
            !spoken.contains("1234") && !spoken.contains("56"),
            "{spoken}"
        );
    }
}
