//! The confirmation page: server-rendered HTML that works without JavaScript on a small
//! phone screen, in the customer's language. A GET only shows; a POST answers.

use std::net::IpAddr;
use std::sync::OnceLock;

use axum::extract::{Path, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, HOST, ORIGIN, REFERRER_POLICY, RETRY_AFTER,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use paystep_channel_core::ChannelName;
use serde::Deserialize;

use super::error::ApiError;
use super::throttle::{ClientAddress, Guess, RetryAfter};
use super::AppState;
use crate::clock::format_ms;
use crate::domain::{ConfirmationKind, ConfirmationStatus, Language};
use crate::engine::{AnswerOutcome, ConfirmationPage, EngineError};

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
    details: &'static str,
    throttled: &'static str,
    cross_site: &'static str,
    unavailable: &'static str,
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
        details: "Details from the retailer",
        throttled: "Too many attempts. Please wait this many seconds:",
        cross_site: "This answer did not come from the payment page. Nothing was changed.",
        unavailable:
            "The service is briefly unavailable. Nothing was changed; please try again in a moment.",
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
        details: "Angaben des Händlers",
        throttled: "Zu viele Versuche. Bitte warten Sie so viele Sekunden:",
        cross_site: "Diese Antwort kam nicht von der Zahlungsseite. Nichts wurde geändert.",
        unavailable: "Der Dienst ist kurz nicht erreichbar. Nichts wurde geändert; bitte versuchen Sie es gleich noch einmal.",
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
.muted{color:#555;font-size:.9rem}blockquote{margin:.2rem 0 0;padding:.4rem .6rem;border-left:3px solid #999;\
background:#f4f4f4;overflow-wrap:anywhere;unicode-bidi:isolate}";

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
    // The retailer's own words come after the amount and the code, quoted and labelled, so
    // that they cannot pass for either.
    body.push_str(&format!(
        "<p>{code_word}: <span class=\"code\" id=\"code\">{code}</span></p>\
         <p class=\"muted\">{details}:</p><blockquote>\u{201c}<span id=\"context\">{context}</span>\u{201d}</blockquote>",
        code_word = words.code,
        code = escape(&page.code),
        details = words.details,
        context = escape(&page.context),
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
    bilingual(StatusCode::NOT_FOUND, |words| words.unknown.to_string())
}

/// A page in both languages, for answers that know no customer.
fn bilingual(status: StatusCode, say: impl Fn(&Words) -> String) -> Response {
    let (en, de) = (words(Language::En), words(Language::De));
    let body = format!(
        "<h1>{}</h1><p class=\"note\">{}</p><p class=\"note\" lang=\"de\">{}</p>",
        en.title,
        say(en),
        say(de)
    );
    (status, Html(layout(Language::En, &body))).into_response()
}

fn too_many_requests(retry_after: RetryAfter) -> Response {
    let mut response = bilingual(StatusCode::TOO_MANY_REQUESTS, |words| {
        format!("{} {}", words.throttled, retry_after.seconds)
    });
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after.seconds));
    response
}

/// The page for an engine's failure: while the database is unavailable, a 503 with
/// `Retry-After` that tells the customer to answer again; otherwise the internal error.
fn engine_failure(error: &EngineError) -> Response {
    use crate::store::StoreError;
    let refused = match error {
        EngineError::Database(cause) => {
            crate::store::unavailable(cause).map(ApiError::database_unavailable)
        }
        EngineError::Store(StoreError::CommitFailed {
            unavailable: Some(unavailable),
            ..
        }) => Some(ApiError::database_unavailable(*unavailable)),
        // Refused before anything was written: the customer may answer again.
        EngineError::Store(
            StoreError::Busy | StoreError::WriterStopped | StoreError::CommitFailed { .. },
        ) => Some(ApiError::retriable(
            "unavailable",
            error.to_string(),
            super::error::UNREACHABLE_RETRY_AFTER_S,
        )),
        _ => None,
    };
    let Some(refused) = refused else {
        return internal_error();
    };
    let mut response = bilingual(StatusCode::SERVICE_UNAVAILABLE, |words| {
        words.unavailable.to_string()
    });
    if let Some(retry_after) = refused.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after.seconds));
    }
    response
}

fn internal_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Html(layout(Language::En, "<p>Internal error.</p>")),
    )
        .into_response()
}

fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= TOKEN_LENGTH_MAX
}

/// The headers of every page under `/c/`: the token is in the URL, so no referrer and no
/// cache; no framing (a page that takes a click must not be overlaid); the inline style is
/// the only thing the page may load.
pub async fn protective_headers(mut response: Response) -> Response {
    static POLICY: OnceLock<HeaderValue> = OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        use base64::Engine as _;
        let style_hash = base64::engine::general_purpose::STANDARD
            .encode(<sha2::Sha256 as sha2::Digest>::digest(STYLE.as_bytes()));
        let policy = format!(
            "default-src 'none'; style-src 'sha256-{style_hash}'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'"
        );
        HeaderValue::from_str(&policy).expect("the policy is ASCII")
    });
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, policy.clone());
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// A POST that a browser made from another site: a page elsewhere must not be able to
/// submit a customer's answer. Browsers say where a form came from in `Sec-Fetch-Site`,
/// which decides where it is sent. Older browsers send only `Origin`, which must then be
/// ours; it is `null` for our own form, because the page's `Referrer-Policy: no-referrer`
/// hides it. Clients that send neither (curl, an old phone) are not browsers tricked into it.
fn cross_site(headers: &HeaderMap, public_url: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return false;
    };
    let origin = origin.to_str().unwrap_or_default();
    if origin == "null" {
        return false;
    }
    let host = headers.get(HOST).and_then(|host| host.to_str().ok());
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let ours = origin == origin_of(public_url);
    let same_host = origin_host.is_some() && origin_host == host;
    !(ours || same_host)
}

/// `https://pay.example.com` of `https://pay.example.com/some/base`.
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => &url[..after_scheme + slash],
        None => url,
    }
}

pub async fn show(
    State(state): State<AppState>,
    ClientAddress(source): ClientAddress,
    Path(token): Path<String>,
) -> Response {
    if !valid_token(&token) {
        return unknown_token(&state, source, &token);
    }
    let page = async {
        let mut conn = state.engine.store.reader().acquire().await?;
        state.engine.confirmation_page(&mut conn, &token).await
    }
    .await;
    match page {
        Ok(Some(page)) => Html(render_request(&page, &token, None)).into_response(),
        Ok(None) => unknown_token(&state, source, &token),
        Err(error) => {
            tracing::error!(error = %error, "Cannot show a confirmation page");
            engine_failure(&error)
        }
    }
}

/// 404 for a token nobody issued, or 429 once the source guessed too often.
fn unknown_token(state: &AppState, source: IpAddr, token: &str) -> Response {
    let guess = Guess::ConfirmationToken;
    match state.throttle.failure(guess, source, token) {
        Ok(()) => not_found(),
        Err(retry_after) => {
            tracing::warn!(source = %source, guess = guess.as_str(), "Unknown confirmation tokens throttled");
            too_many_requests(retry_after)
        }
    }
}

pub async fn answer(
    State(state): State<AppState>,
    ClientAddress(source): ClientAddress,
    Path(token): Path<String>,
    headers: HeaderMap,
    form: Result<Form<AnswerForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if cross_site(&headers, &state.engine.settings.http.public_url) {
        tracing::warn!(source = %source, "Cross-site answer to a confirmation request refused");
        return bilingual(StatusCode::FORBIDDEN, |words| words.cross_site.to_string());
    }
    if !valid_token(&token) {
        return unknown_token(&state, source, &token);
    }
    let form = form.ok().map(|Form(form)| form);
    let approve = match form.as_ref().map(|form| form.action.as_str()) {
        Some("confirm") => Some(true),
        Some("decline") => Some(false),
        _ => None,
    };
    let outcome = match approve {
        Some(approve) => {
            let pin = form.and_then(|form| form.pin);
            // A source that guessed too many PINs is refused before any PIN is checked.
            if let (true, Some(retry_after)) = (approve, state.throttle.blocked(Guess::Pin, source))
            {
                return too_many_requests(retry_after);
            }
            match submit(&state, &token, approve, pin).await {
                Ok(Some(outcome)) => Some(outcome),
                Ok(None) => return unknown_token(&state, source, &token),
                Err(error) => {
                    tracing::error!(error = %error, "Cannot answer a confirmation request");
                    return engine_failure(&error);
                }
            }
        }
        None => None,
    };
    if let Some(
        AnswerOutcome::WrongPin { .. }
        | AnswerOutcome::PinTriesExceeded
        | AnswerOutcome::LockedOut { .. },
    ) = outcome
    {
        if let Err(retry_after) = state.throttle.failure(Guess::Pin, source, &token) {
            tracing::warn!(source = %source, guess = Guess::Pin.as_str(), "Wrong PINs throttled");
            return too_many_requests(retry_after);
        }
    }
    let page = async {
        let mut conn = state.engine.store.reader().acquire().await?;
        state.engine.confirmation_page(&mut conn, &token).await
    }
    .await;
    match page {
        Ok(Some(page)) => answered(&state, &page, &token, outcome),
        Ok(None) => unknown_token(&state, source, &token),
        Err(error) => {
            tracing::error!(error = %error, "Cannot show an answered confirmation page");
            engine_failure(&error)
        }
    }
}

/// Answers the request in one write transaction, its PIN verified before the transaction
/// began. `None` for a token nobody issued.
async fn submit(
    state: &AppState,
    token: &str,
    approve: bool,
    pin: Option<String>,
) -> Result<Option<AnswerOutcome>, EngineError> {
    state
        .engine
        .answer_token(token, approve, pin, ChannelName::Console)
        .await
}

/// The page after an answer: what happened, with the status that says it.
fn answered(
    state: &AppState,
    page: &ConfirmationPage,
    token: &str,
    outcome: Option<AnswerOutcome>,
) -> Response {
    let words = words(page.language);
    let note: String = match &outcome {
        None => words.bad_action.to_string(),
        Some(AnswerOutcome::Approved) => words.approved.to_string(),
        Some(AnswerOutcome::Declined) => words.declined.to_string(),
        Some(AnswerOutcome::Expired) => words.expired.to_string(),
        Some(AnswerOutcome::InsufficientCredit) => words.insufficient.to_string(),
        Some(AnswerOutcome::PinRequired { .. }) => words.pin_required.to_string(),
        Some(AnswerOutcome::WrongPin { tries_left }) => format!("{} {tries_left}", words.wrong_pin),
        Some(AnswerOutcome::PinTriesExceeded) => words.pin_tries.to_string(),
        Some(AnswerOutcome::LockedOut { until_ms }) => {
            format!("{} {}", words.locked, minutes_utc(*until_ms))
        }
        Some(AnswerOutcome::NotPending { .. }) => words.answered.to_string(),
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
    let mut response = (status, Html(render_request(page, token, Some(&note)))).into_response();
    if let Some(AnswerOutcome::LockedOut { until_ms }) = outcome {
        let wait_ms = (until_ms - state.engine.now_ms()).max(1000);
        let seconds = u64::try_from(wait_ms).map_or(1, |ms| ms.div_ceil(1000));
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
