//! The confirmation page: server-rendered HTML that works without JavaScript on a small
//! phone screen, in the customer's language. A GET only shows; a POST answers.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use paystep_channels::ChannelName;
use serde::Deserialize;

use super::AppState;
use crate::clock::format_ms;
use crate::domain::{ConfirmationKind, ConfirmationStatus, Language};
use crate::engine::{Answer, AnswerOutcome, ConfirmationPage};

/// Tokens are 43 characters of URL-safe base64; anything far off is refused unread.
const TOKEN_LENGTH_MAX: usize = 128;

#[derive(Deserialize)]
pub struct AnswerForm {
    action: String,
    pin: Option<String>,
}

struct Words {
    title: &'static str,
    title_approved: &'static str,
    title_declined: &'static str,
    title_expired: &'static str,
    asks: &'static str,
    top_up: &'static str,
    for_step: &'static str,
    code: &'static str,
    pin: &'static str,
    confirm: &'static str,
    decline: &'static str,
    valid_until: &'static str,
    approved: &'static str,
    declined: &'static str,
    expired: &'static str,
    answered: &'static str,
    insufficient: &'static str,
    pin_required: &'static str,
    wrong_pin: &'static str,
    pin_tries: &'static str,
    locked: &'static str,
    unknown: &'static str,
    bad_action: &'static str,
}

fn words(language: Language) -> &'static Words {
    const EN: Words = Words {
        title: "Confirm payment",
        title_approved: "Payment confirmed",
        title_declined: "Payment declined",
        title_expired: "Request expired",
        asks: "asks you to release",
        top_up: "asks you to release a further",
        for_step: "for a step of",
        code: "Code",
        pin: "PIN",
        confirm: "Confirm",
        decline: "Decline",
        valid_until: "Valid until",
        approved: "Thank you: the payment is confirmed.",
        declined: "You declined the payment. Nothing was charged.",
        expired: "This request has expired. Nothing was charged.",
        answered: "This request has already been answered.",
        insufficient: "Declined: your credit is not enough for this amount.",
        pin_required: "Please enter your PIN.",
        wrong_pin: "Wrong PIN. Tries left:",
        pin_tries: "Too many wrong PINs: the request was declined.",
        locked: "Too many wrong PINs: locked until",
        unknown: "This link is not valid.",
        bad_action: "Please choose Confirm or Decline.",
    };
    const DE: Words = Words {
        title: "Zahlung bestätigen",
        title_approved: "Zahlung bestätigt",
        title_declined: "Zahlung abgelehnt",
        title_expired: "Anfrage abgelaufen",
        asks: "bittet um Freigabe von",
        top_up: "bittet um Freigabe von weiteren",
        for_step: "für einen Schritt von",
        code: "Code",
        pin: "PIN",
        confirm: "Bestätigen",
        decline: "Ablehnen",
        valid_until: "Gültig bis",
        approved: "Danke: die Zahlung ist bestätigt.",
        declined: "Sie haben die Zahlung abgelehnt. Nichts wurde abgebucht.",
        expired: "Diese Anfrage ist abgelaufen. Nichts wurde abgebucht.",
        answered: "Diese Anfrage wurde bereits beantwortet.",
        insufficient: "Abgelehnt: Ihr Guthaben reicht für diesen Betrag nicht.",
        pin_required: "Bitte geben Sie Ihre PIN ein.",
        wrong_pin: "Falsche PIN. Verbleibende Versuche:",
        pin_tries: "Zu viele falsche PINs: die Anfrage wurde abgelehnt.",
        locked: "Zu viele falsche PINs: gesperrt bis",
        unknown: "Dieser Link ist nicht gültig.",
        bad_action: "Bitte wählen Sie Bestätigen oder Ablehnen.",
    };
    match language {
        Language::En => &EN,
        Language::De => &DE,
    }
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
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

// Confirm's green (#07804d) keeps white text above WCAG AA contrast; Decline sits further
// down than Confirm so that a thumb does not hit the wrong one.
const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;padding:16px;max-width:28rem;\
margin-inline:auto;line-height:1.4;color:#111}h1{font-size:1.3rem}.amount{font-size:2rem;font-weight:bold;\
margin:.2rem 0}.code{font-family:monospace;font-size:1.2rem;letter-spacing:.1em}label{display:block;\
margin-top:1rem}button,input{font:inherit}input{font-size:1.2rem;width:100%;box-sizing:border-box;\
padding:.6rem}button{font-size:1.1rem;width:100%;padding:.8rem;margin-top:.8rem;border-radius:6px;\
border:1px solid #333}.confirm{background:#07804d;color:#fff;border-color:#07804d}.decline{background:#fff;\
margin-top:1.6rem}.note{padding:.6rem;border-radius:6px;background:#fff4d6}.note.ok{background:#e3f6ea}\
.muted{color:#555;font-size:.9rem}";

fn layout(language: Language, body: &str) -> String {
    let words = words(language);
    format!(
        "<!DOCTYPE html><html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{title}</title><style>{STYLE}</style></head>\
         <body><main>{body}</main></body></html>",
        lang = language.as_str(),
        title = words.title,
    )
}

/// A time as customers read it: to the minute, in UTC (the page has no JavaScript to learn
/// the phone's time zone).
fn minutes_utc(ms: i64) -> String {
    let text = format_ms(ms).replace('T', " ");
    format!("{} UTC", &text[..text.len().min(16)])
}

fn render_request(page: &ConfirmationPage, token: &str, note: Option<&str>) -> String {
    let words = words(page.language);
    // Once answered, the page says what happened, not what was asked.
    let heading = match page.status {
        ConfirmationStatus::Pending => words.title,
        ConfirmationStatus::Approved => words.title_approved,
        ConfirmationStatus::Declined => words.title_declined,
        ConfirmationStatus::Expired => words.title_expired,
    };
    let mut body = format!("<h1>{heading}</h1>");
    let tone = if page.status == ConfirmationStatus::Approved {
        "note ok"
    } else {
        "note"
    };
    if let Some(note) = note {
        body.push_str(&format!(
            "<p class=\"{tone}\" role=\"alert\">{}</p>",
            escape(note)
        ));
    }
    let asks = match (page.status, page.kind) {
        (ConfirmationStatus::Pending, ConfirmationKind::Initial) => words.asks,
        (ConfirmationStatus::Pending, ConfirmationKind::TopUp) => words.top_up,
        _ => "",
    };
    body.push_str(&format!(
        "<p><strong id=\"retailer\">{retailer}</strong> {asks}</p>\
         <p class=\"amount\" id=\"amount\">{amount} {currency}</p>",
        retailer = escape(&page.retailer_name),
        amount = escape(&page.amount),
        currency = escape(&page.currency),
    ));
    if let Some(step_amount) = &page.step_amount {
        body.push_str(&format!(
            "<p class=\"muted\">{} {} {}</p>",
            words.for_step,
            escape(step_amount),
            escape(&page.currency)
        ));
    }
    body.push_str(&format!(
        "<p id=\"context\">{context}</p><p>{code_word}: <span class=\"code\" id=\"code\">{code}</span></p>",
        context = escape(&page.context),
        code_word = words.code,
        code = escape(&page.code),
    ));
    if page.status != ConfirmationStatus::Pending {
        if note.is_none() {
            body.push_str(&format!(
                "<p class=\"{tone}\">{}</p>",
                status_words(page.status, words)
            ));
        }
        return layout(page.language, &body);
    }
    let pin_field = if page.pin_required {
        format!(
            "<label for=\"pin\">{}</label><input id=\"pin\" name=\"pin\" type=\"password\" \
             inputmode=\"numeric\" pattern=\"[0-9]*\" autocomplete=\"one-time-code\" maxlength=\"8\" autofocus>",
            words.pin
        )
    } else {
        String::new()
    };
    body.push_str(&format!(
        "<form method=\"post\" action=\"/c/{token}\">{pin_field}\
         <button class=\"confirm\" type=\"submit\" name=\"action\" value=\"confirm\">{confirm}</button>\
         <button class=\"decline\" type=\"submit\" name=\"action\" value=\"decline\" formnovalidate>{decline}</button>\
         </form><p class=\"muted\">{valid_until} {expires}</p>",
        token = escape(token),
        confirm = words.confirm,
        decline = words.decline,
        valid_until = words.valid_until,
        expires = minutes_utc(page.expires_at_ms),
    ));
    layout(page.language, &body)
}

fn status_words(status: ConfirmationStatus, words: &Words) -> &'static str {
    match status {
        ConfirmationStatus::Pending => "",
        ConfirmationStatus::Approved => words.approved,
        ConfirmationStatus::Declined => words.declined,
        ConfirmationStatus::Expired => words.expired,
    }
}

fn not_found() -> Response {
    let en = words(Language::En);
    let de = words(Language::De);
    let body = format!(
        "<h1>{}</h1><p>{}</p><p lang=\"de\">{}</p>",
        en.title, en.unknown, de.unknown
    );
    (StatusCode::NOT_FOUND, Html(layout(Language::En, &body))).into_response()
}

fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= TOKEN_LENGTH_MAX
}

pub async fn show(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    if !valid_token(&token) {
        return not_found();
    }
    let page = async {
        let mut conn = state.engine.store.reader().acquire().await?;
        state.engine.confirmation_page(&mut conn, &token).await
    }
    .await;
    match page {
        Ok(Some(page)) => Html(render_request(&page, &token, None)).into_response(),
        Ok(None) => not_found(),
        Err(error) => {
            tracing::error!(error = %error, "Cannot show a confirmation page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html(layout(Language::En, "<p>Internal error.</p>")),
            )
                .into_response()
        }
    }
}

pub async fn answer(
    State(state): State<AppState>,
    Path(token): Path<String>,
    form: Result<Form<AnswerForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.ok();
    if !valid_token(&token) {
        return not_found();
    }
    let approve = match form.as_ref().map(|form| form.action.as_str()) {
        Some("confirm") => Some(true),
        Some("decline") => Some(false),
        _ => None,
    };
    let engine = &state.engine;
    let result = async {
        let Some(approve) = approve else {
            return Ok::<_, crate::engine::EngineError>(None);
        };
        let mut tx = engine.store.begin_write().await?;
        let answer = Answer {
            approve,
            pin: form.and_then(|form| form.0.pin),
            channel: ChannelName::Console,
        };
        let outcome = engine.answer_by_token(&mut tx, &token, answer).await;
        match outcome {
            Ok(outcome) => {
                tx.commit().await?;
                Ok(Some(outcome))
            }
            Err(crate::engine::EngineError::NotFound(_)) => Ok(Some(AnswerOutcome::NotPending {
                status: "unknown".into(),
            })),
            Err(error) => Err(error),
        }
    }
    .await;
    let page = async {
        let mut conn = engine.store.reader().acquire().await?;
        engine.confirmation_page(&mut conn, &token).await
    }
    .await;
    let (outcome, page) = match (result, page) {
        (Ok(outcome), Ok(Some(page))) => (outcome, page),
        (Ok(_), Ok(None)) => return not_found(),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(error = %error, "Cannot answer a confirmation request");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html(layout(Language::En, "<p>Internal error.</p>")),
            )
                .into_response();
        }
    };
    let words = words(page.language);
    let note: Option<String> = match outcome {
        None => Some(words.bad_action.to_string()),
        Some(AnswerOutcome::Approved) => Some(words.approved.to_string()),
        Some(AnswerOutcome::Declined) => Some(words.declined.to_string()),
        Some(AnswerOutcome::Expired) => Some(words.expired.to_string()),
        Some(AnswerOutcome::InsufficientCredit) => Some(words.insufficient.to_string()),
        Some(AnswerOutcome::PinRequired { .. }) => Some(words.pin_required.to_string()),
        Some(AnswerOutcome::WrongPin { tries_left }) => {
            Some(format!("{} {tries_left}", words.wrong_pin))
        }
        Some(AnswerOutcome::PinTriesExceeded) => Some(words.pin_tries.to_string()),
        Some(AnswerOutcome::LockedOut { until_ms }) => {
            Some(format!("{} {}", words.locked, minutes_utc(until_ms)))
        }
        Some(AnswerOutcome::NotPending { .. }) => Some(words.answered.to_string()),
    };
    let status = match outcome {
        None => StatusCode::BAD_REQUEST,
        Some(AnswerOutcome::WrongPin { .. } | AnswerOutcome::PinRequired { .. }) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        Some(AnswerOutcome::LockedOut { .. }) => StatusCode::TOO_MANY_REQUESTS,
        Some(AnswerOutcome::NotPending { .. } | AnswerOutcome::Expired) => StatusCode::CONFLICT,
        Some(_) => StatusCode::OK,
    };
    (status, Html(render_request(&page, &token, note.as_deref()))).into_response()
}
