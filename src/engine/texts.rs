//! The words of every message, in English and German. Each names the retailer, the goods or
//! service, the amount and the code (claims 7 and 11), and stays short enough for one SMS
//! where it can.

use crate::domain::Language;

/// What a message is about, with amounts already formatted.
pub struct TextFacts<'a> {
    pub retailer: &'a str,
    pub context: &'a str,
    pub code: &'a str,
    pub currency: &'a str,
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
    } = facts;
    match (language, text) {
        (Language::En, Text::ConfirmationRequest { amount, url }) => format!(
            "{retailer} asks you to release {amount} {currency} for {context}. Code {code}. Confirm or decline: {url}"
        ),
        (Language::De, Text::ConfirmationRequest { amount, url }) => format!(
            "{retailer} bittet um Freigabe von {amount} {currency} für {context}. Code {code}. Bestätigen oder ablehnen: {url}"
        ),
        (Language::En, Text::TopUpRequest { amount, step, remaining, url }) => format!(
            "{retailer} asks for {amount} {currency} more for {context} (step {step}, {remaining} left). Code {code}. Confirm or decline: {url}"
        ),
        (Language::De, Text::TopUpRequest { amount, step, remaining, url }) => format!(
            "{retailer} bittet um weitere {amount} {currency} für {context} (Schritt {step}, Rest {remaining}). Code {code}. Bestätigen oder ablehnen: {url}"
        ),
        (Language::En, Text::IdentifierNotification { process_id, amount }) => format!(
            "{retailer}: process {code} ({process_id}) for {context} opened, {amount} {currency} requested."
        ),
        (Language::De, Text::IdentifierNotification { process_id, amount }) => format!(
            "{retailer}: Vorgang {code} ({process_id}) für {context} eröffnet, {amount} {currency} angefragt."
        ),
        (Language::En, Text::Released { amount }) => format!(
            "{retailer}: the customer released {amount} {currency} for {context}, process {code}."
        ),
        (Language::De, Text::Released { amount }) => format!(
            "{retailer}: der Kunde hat {amount} {currency} für {context} freigegeben, Vorgang {code}."
        ),
        (Language::En, Text::ReleaseReceipt { amount }) => format!(
            "You released {amount} {currency} to {retailer} for {context}. Code {code}."
        ),
        (Language::De, Text::ReleaseReceipt { amount }) => format!(
            "Sie haben {retailer} {amount} {currency} für {context} freigegeben. Code {code}."
        ),
        (Language::En, Text::Charged { amount, remaining }) => format!(
            "{retailer}: charged {amount} {currency} for {context}, process {code}; {remaining} {currency} remaining."
        ),
        (Language::De, Text::Charged { amount, remaining }) => format!(
            "{retailer}: {amount} {currency} für {context} abgebucht, Vorgang {code}; Rest {remaining} {currency}."
        ),
        (Language::En, Text::StepReceipt { amount, remaining }) => format!(
            "Receipt: {retailer} charged {amount} {currency} for {context}. Code {code}. Left: {remaining} {currency}."
        ),
        (Language::De, Text::StepReceipt { amount, remaining }) => format!(
            "Beleg: {retailer} hat {amount} {currency} für {context} abgebucht. Code {code}. Rest: {remaining} {currency}."
        ),
        (Language::En, Text::Declined { reason }) => format!(
            "{retailer}: the payment for {context} (code {code}) was declined: {}.",
            reason_en(reason)
        ),
        (Language::De, Text::Declined { reason }) => format!(
            "{retailer}: die Zahlung für {context} (Code {code}) wurde abgelehnt: {}.",
            reason_de(reason)
        ),
                (Language::En, Text::ExpiringSoon { remaining, expires_at }) => format!(
            "{retailer}: process {code} for {context} expires at {expires_at} unless a step comes first; {remaining} {currency} would return to the customer."
        ),
        (Language::De, Text::ExpiringSoon { remaining, expires_at }) => format!(
            "{retailer}: Vorgang {code} für {context} läuft um {expires_at} ab, wenn kein Schritt folgt; {remaining} {currency} gingen an den Kunden zurück."
        ),
        (Language::En, Text::Ended { ended, charged, returned }) => format!(
            "{retailer}: process {code} for {context} {}. Charged {charged} {currency}, returned {returned} {currency}.",
            match ended {
                Ended::Closed => "closed",
                Ended::Expired => "expired",
            }
        ),
        (Language::De, Text::Ended { ended, charged, returned }) => format!(
            "{retailer}: Vorgang {code} für {context} {}. Abgebucht {charged} {currency}, zurück {returned} {currency}.",
            match ended {
                Ended::Closed => "beendet",
                Ended::Expired => "abgelaufen",
            }
        ),
    }
}

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
