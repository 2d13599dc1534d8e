//! What an email says: its subject, its text part and its HTML part, in English or German.
//!
//! The core has already written the message text in the recipient's language; these templates
//! only frame it. The HTML part is small, inline-styled (mail clients drop `<style>` blocks and
//! never run scripts) and loads nothing remote, so it renders the same offline and tracks no one.

use crate::MessageKind;

/// The recipient's language, as far as the email's own words go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Language {
    English,
    German,
}

impl Language {
    /// `de` is German; everything else is English, the language every recipient can be
    /// addressed in when the core knows no better.
    pub(crate) fn from_code(code: &str) -> Language {
        if code.eq_ignore_ascii_case("de") {
            Language::German
        } else {
            Language::English
        }
    }

    fn html_code(self) -> &'static str {
        match self {
            Language::English => "en",
            Language::German => "de",
        }
    }
}

/// The subject line, or `None` for a kind that never travels by email.
pub(crate) fn subject(kind: MessageKind, language: Language, code: Option<&str>) -> Option<String> {
    let title = match (kind, language) {
        (MessageKind::ConfirmationRequest, Language::English) => "Payment request",
        (MessageKind::ConfirmationRequest, Language::German) => "Zahlungsanfrage",
        (MessageKind::ExecutionMessage, Language::English) => "Payment executed",
        (MessageKind::ExecutionMessage, Language::German) => "Zahlung ausgeführt",
        (MessageKind::Receipt, Language::English) => "Receipt",
        (MessageKind::Receipt, Language::German) => "Beleg",
        (MessageKind::IdentifierNotification, Language::English) => "New payment process",
        (MessageKind::IdentifierNotification, Language::German) => "Neuer Zahlungsvorgang",
        (MessageKind::Notice, Language::English) => "Payment notice",
        (MessageKind::Notice, Language::German) => "Zahlungshinweis",
        // Retailer events are JSON for machines and go to webhooks.
        (MessageKind::Event, _) => return None,
    };
    Some(match code {
        Some(code) if !code.is_empty() => format!("{title} {code}"),
        _ => title.to_string(),
    })
}

/// The text/plain part: the message, then the link on its own line.
pub(crate) fn plain_body(text: &str, url: Option<&str>) -> String {
    let mut body = text.trim_end().to_string();
    body.push('\n');
    if let Some(url) = url {
        body.push('\n');
        body.push_str(url);
        body.push('\n');
    }
    body
}

/// The text/html part.
pub(crate) fn html_body(
    kind: MessageKind,
    language: Language,
    subject: &str,
    text: &str,
    url: Option<&str>,
) -> String {
    let mut html = String::with_capacity(2048 + text.len());
    html.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n</head>\n\
         <body style=\"margin:0;padding:0;background-color:#f3f4f6;\">\n\
         <div style=\"max-width:480px;margin:0 auto;padding:24px 16px;\
         font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;\
         font-size:16px;line-height:1.5;color:#111827;\">\n\
         <div style=\"background-color:#ffffff;border-radius:8px;padding:24px;\">\n\
         <p style=\"margin:0 0 16px 0;\">{text}</p>\n",
        lang = language.html_code(),
        title = escape(subject),
        text = escape(text.trim_end()).replace('\n', "<br>\n"),
    ));
    match url {
        Some(url) if kind == MessageKind::ConfirmationRequest => {
            html.push_str(&confirmation_link(language, url));
        }
        Some(url) => html.push_str(&format!(
            "<p style=\"margin:16px 0 0 0;word-break:break-all;\">{}</p>\n",
            link(url, escape(url), "color:#1d4ed8;")
        )),
        None => {}
    }
    html.push_str("</div>\n</div>\n</body>\n</html>\n");
    html
}

/// The button to the confirmation page, what the page does, and the raw link for clients that
/// show no buttons.
fn confirmation_link(language: Language, url: &str) -> String {
    let (button, promise, fallback) = match language {
        Language::English => (
            "Open the payment page",
            "The page shows the payment and asks you before anything is paid: \
             opening it pays nothing.",
            "If the button does not work, copy this address into your browser:",
        ),
        Language::German => (
            "Zahlungsseite öffnen",
            "Die Seite zeigt die Zahlung und fragt Sie, bevor etwas bezahlt wird: \
             das Öffnen allein bezahlt nichts.",
            "Falls der Knopf nicht funktioniert, kopieren Sie diese Adresse in Ihren Browser:",
        ),
    };
    format!(
        "<p style=\"margin:24px 0;text-align:center;\">{button}</p>\n\
         <p style=\"margin:0 0 12px 0;font-size:14px;color:#374151;\">{promise}</p>\n\
         <p style=\"margin:0;font-size:13px;color:#4b5563;\">{fallback}<br>\n\
         <span style=\"word-break:break-all;\">{raw}</span></p>\n",
        button = link(
            url,
            escape(button),
            "display:inline-block;background-color:#1d4ed8;color:#ffffff;\
             text-decoration:none;font-weight:bold;padding:14px 28px;border-radius:6px;"
        ),
        promise = escape(promise),
        fallback = escape(fallback),
        raw = escape(url),
    )
}

/// A link, if `url` is a web address; otherwise only its label, so that a `javascript:` or
/// `data:` URL can never become something to click.
fn link(url: &str, label: String, style: &str) -> String {
    let lowercase = url.trim_start().to_ascii_lowercase();
    if lowercase.starts_with("https://") || lowercase.starts_with("http://") {
        format!(
            "<a href=\"{href}\" style=\"{style}\">{label}</a>",
            href = escape(url)
        )
    } else {
        label
    }
}

/// Escapes text for HTML element content and quoted attribute values alike.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_the_kind_and_code_in_both_languages() {
        let cases = [
            (
                MessageKind::ConfirmationRequest,
                "Payment request 123456",
                "Zahlungsanfrage 123456",
            ),
            (MessageKind::Receipt, "Receipt 123456", "Beleg 123456"),
            (
                MessageKind::ExecutionMessage,
                "Payment executed 123456",
                "Zahlung ausgeführt 123456",
            ),
            (
                MessageKind::IdentifierNotification,
                "New payment process 123456",
                "Neuer Zahlungsvorgang 123456",
            ),
            (
                MessageKind::Notice,
                "Payment notice 123456",
                "Zahlungshinweis 123456",
            ),
        ];
        for (kind, english, german) in cases {
            assert_eq!(
                subject(kind, Language::English, Some("123456")).unwrap(),
                english
            );
            assert_eq!(
                subject(kind, Language::German, Some("123456")).unwrap(),
                german
            );
        }
    }

    #[test]
    fn a_subject_without_a_code_is_the_title_alone() {
        assert_eq!(
            subject(MessageKind::Receipt, Language::English, None).unwrap(),
            "Receipt"
        );
    }

    #[test]
    fn events_have_no_email_subject() {
        assert_eq!(
            subject(MessageKind::Event, Language::English, Some("1")),
            None
        );
    }

    #[test]
    fn unknown_languages_fall_back_to_english() {
        assert_eq!(Language::from_code("de"), Language::German);
        assert_eq!(Language::from_code("DE"), Language::German);
        assert_eq!(Language::from_code("en"), Language::English);
        assert_eq!(Language::from_code("fr"), Language::English);
    }

    #[test]
    fn the_plain_part_puts_the_link_on_its_own_line() {
        assert_eq!(
            plain_body("Pay 5.00 EUR.\n", Some("https://pay.example/c/1")),
            "Pay 5.00 EUR.\n\nhttps://pay.example/c/1\n"
        );
        assert_eq!(plain_body("Done.", None), "Done.\n");
    }

    #[test]
    fn the_html_part_escapes_the_text_and_the_link() {
        let html = html_body(
            MessageKind::ConfirmationRequest,
            Language::English,
            "Payment request 1",
            "Shop <b>&</b> \"Co\"\nline two",
            Some("https://pay.example/c?a=1&b=\"2\""),
        );
        assert!(html.contains("Shop &lt;b&gt;&amp;&lt;/b&gt; &quot;Co&quot;<br>\nline two"));
        assert!(html.contains("href=\"https://pay.example/c?a=1&amp;b=&quot;2&quot;\""));
        assert!(html.contains("Open the payment page"));
        assert!(html.contains("asks you before anything is paid"));
        assert!(!html.contains("<script"));
        assert!(!html.contains("<img"));
    }

    #[test]
    fn the_confirmation_button_speaks_german_to_german_recipients() {
        let html = html_body(
            MessageKind::ConfirmationRequest,
            Language::German,
            "Zahlungsanfrage 1",
            "Bitte bestätigen.",
            Some("https://pay.example/c/1"),
        );
        assert!(html.contains("lang=\"de\""));
        assert!(html.contains("Zahlungsseite öffnen"));
        assert!(html.contains("bevor etwas bezahlt wird"));
    }

    #[test]
    fn a_url_that_is_not_a_web_address_is_never_a_link() {
        let html = html_body(
            MessageKind::ConfirmationRequest,
            Language::English,
            "Payment request 1",
            "Text",
            Some("javascript:alert(1)"),
        );
        assert!(!html.contains("href="));
        assert!(html.contains("javascript:alert(1)"));
    }

    #[test]
    fn other_kinds_show_their_link_without_a_button() {
        let html = html_body(
            MessageKind::Receipt,
            Language::English,
            "Receipt 1",
            "Paid.",
            Some("https://pay.example/r/1"),
        );
        assert!(html.contains("href=\"https://pay.example/r/1\""));
        assert!(!html.contains("Open the payment page"));
    }
}
