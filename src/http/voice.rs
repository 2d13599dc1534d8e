//! The voice platform's requests during a call (`twiml` dialect): the call's script, the
//! keys the caller pressed, and the call's status. Every request must carry a valid
//! `X-Twilio-Signature` over the URL as the platform saw it (`http.public_url` and the path,
//! so it holds behind a reverse proxy) and its form fields; otherwise 403 and nothing
//! changes. A call's URLs serve the first call that fetched its script, and no more answers
//! once the call said its last word.

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use paystep_channel_core::{
    CallRequest, CallStep, Channel, ChannelName, InboundMessage, PeerAnswer, SpeakerSample,
    SpeakerVerdict,
};

use super::AppState;
use crate::domain::{ConfirmationStatus, Language};
use crate::engine::{AnswerOutcome, CallBinding, TillClaim, VoiceCall};

type Fields = Vec<(String, String)>;

/// What calls say besides the request itself.
struct Words {
    silence: &'static str,
    goodbye_silent: &'static str,
    one_or_two: &'static str,
    approved: &'static str,
    declined: &'static str,
    wrong_pin: &'static str,
    pin_tries: &'static str,
    locked: &'static str,
    answered: &'static str,
    expired: &'static str,
    insufficient: &'static str,
    not_registered: &'static str,
    till_code: &'static str,
    enter_pin: &'static str,
    no_such_code: &'static str,
    say_phrase: &'static str,
    voice_rejected: &'static str,
    voice_unavailable: &'static str,
}

fn words(language: Language) -> Words {
    match language {
        Language::En => Words {
            silence: "We did not hear a key.",
            goodbye_silent: "We did not hear a key. Goodbye.",
            one_or_two: "Please press 1 to approve or 2 to decline.",
            approved: "Thank you. The amount is released. Goodbye.",
            declined: "The request is declined. Goodbye.",
            wrong_pin: "That PIN is not right. Please try again.",
            pin_tries: "Too many wrong PINs. The request is declined. Goodbye.",
            locked: "Too many wrong PINs. Please try again later. Goodbye.",
            answered: "This request has already been answered. Goodbye.",
            expired: "This request has expired. Goodbye.",
            insufficient: "There is not enough credit for this amount. Goodbye.",
            not_registered: "This number is not registered for payments. Goodbye.",
            till_code: "Please key the code shown at the till, then press the hash key.",
            enter_pin: "Please enter your PIN, then press the hash key.",
            no_such_code: "No open payment has that code. Goodbye.",
            say_phrase: "After the tone, please say: my voice confirms this payment. Then press the hash key.",
            voice_rejected: "Your voice could not be confirmed. The request is declined. Goodbye.",
            voice_unavailable: "Your voice could not be checked in time. The request is declined. Goodbye.",
        },
        Language::De => Words {
            silence: "Wir haben keine Taste gehört.",
            goodbye_silent: "Wir haben keine Taste gehört. Auf Wiederhören.",
            one_or_two: "Bitte drücken Sie die 1 zum Freigeben oder die 2 zum Ablehnen.",
            approved: "Danke. Der Betrag ist freigegeben. Auf Wiederhören.",
            declined: "Die Anfrage ist abgelehnt. Auf Wiederhören.",
            wrong_pin: "Diese PIN stimmt nicht. Bitte versuchen Sie es noch einmal.",
            pin_tries: "Zu viele falsche PINs. Die Anfrage ist abgelehnt. Auf Wiederhören.",
            locked: "Zu viele falsche PINs. Bitte versuchen Sie es später. Auf Wiederhören.",
            answered: "Diese Anfrage ist bereits beantwortet. Auf Wiederhören.",
            expired: "Diese Anfrage ist abgelaufen. Auf Wiederhören.",
            insufficient: "Das Guthaben reicht für diesen Betrag nicht. Auf Wiederhören.",
            not_registered: "Diese Nummer ist nicht für Zahlungen angemeldet. Auf Wiederhören.",
            till_code:
                "Bitte geben Sie den Code von der Kasse ein und drücken Sie dann die Rautetaste.",
            enter_pin: "Bitte geben Sie Ihre PIN ein und drücken Sie dann die Rautetaste.",
            no_such_code: "Keine offene Zahlung hat diesen Code. Auf Wiederhören.",
            say_phrase: "Bitte sagen Sie nach dem Ton: Meine Stimme bestätigt diese Zahlung. Drücken Sie dann die Rautetaste.",
            voice_rejected: "Ihre Stimme wurde nicht bestätigt. Die Anfrage ist abgelehnt. Auf Wiederhören.",
            voice_unavailable: "Ihre Stimme konnte nicht rechtzeitig geprüft werden. Die Anfrage ist abgelehnt. Auf Wiederhören.",
        },
    }
}

fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// The voice adapter, if this request is genuinely from its platform.
fn authenticated(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    fields: &Fields,
) -> Option<Arc<dyn Channel>> {
    let adapter = state.peer_channels.get(&ChannelName::Voice)?.clone();
    let path = uri
        .path_and_query()
        .map_or(uri.path(), |path| path.as_str());
    let url = format!("{}{path}", state.engine.settings.http.public_url);
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|value| value.to_str().ok());
    let request = CallRequest {
        url: &url,
        fields,
        signature,
    };
    adapter
        .authenticate_call_request(&request)
        .then_some(adapter)
}

/// Why a platform's request gets no call step.
#[derive(Debug)]
enum Refusal {
    /// Not this call's, or not genuine: nothing changes.
    Forbidden,
    NotFound(&'static str),
    /// The database could not be reached; the platform may try again.
    Unavailable,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Forbidden => (StatusCode::FORBIDDEN, "forbidden").into_response(),
            Refusal::NotFound(what) => (StatusCode::NOT_FOUND, what).into_response(),
            Refusal::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response(),
        }
    }
}

fn forbidden() -> Response {
    Refusal::Forbidden.into_response()
}

fn unavailable(error: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %error, "A voice request could not be served");
    Refusal::Unavailable
}

fn render(adapter: &dyn Channel, step: CallStep) -> Response {
    match adapter.render_call_step(&step) {
        Some(PeerAnswer {
            status,
            content_type,
            body,
        }) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            [(CONTENT_TYPE, content_type)],
            body,
        )
            .into_response(),
        None => unavailable("the voice adapter writes no call steps").into_response(),
    }
}

/// The call for this request, bound on first use; `Err` answers the platform at once.
async fn call_of(
    state: &AppState,
    message_id: &str,
    fields: &Fields,
) -> Result<VoiceCall, Refusal> {
    let call_sid = field(fields, "CallSid").unwrap_or_default();
    if call_sid.is_empty() {
        return Err(Refusal::Forbidden);
    }
    match state.engine.bind_call(message_id, call_sid).await {
        Ok(CallBinding::Bound(call)) => Ok(call),
        Ok(CallBinding::Unknown) => Err(Refusal::NotFound("no such call")),
        Ok(CallBinding::OtherCall) => {
            tracing::warn!(
                message_id,
                "A second call tried the URLs of a voice message"
            );
            Err(Refusal::Forbidden)
        }
        Err(error) => Err(unavailable(error)),
    }
}

/// Where a call's next answer and recording go.
struct CallUrls {
    answer: String,
    recording: String,
}

fn twiml_urls(state: &AppState, message_id: &str) -> CallUrls {
    let base = format!(
        "{}/voice/twiml/calls/{message_id}",
        state.engine.settings.http.public_url
    );
    CallUrls {
        answer: format!("{base}/answer"),
        recording: format!("{base}/recording"),
    }
}

/// `POST /voice/twiml/calls/{message_id}`: the call's script.
pub async fn script(
    State(state): State<AppState>,
    Path(message_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    let Some(adapter) = authenticated(&state, &uri, &headers, &fields) else {
        return forbidden();
    };
    let call = match call_of(&state, &message_id, &fields).await {
        Ok(call) => call,
        Err(refusal) => return refusal.into_response(),
    };
    let urls = twiml_urls(&state, &message_id);
    respond(adapter.as_ref(), ask(&state, &call, None, &urls).await)
}

/// Asks for keys, with `before` said first; or ends the call when the request is no longer
/// open.
async fn ask(
    state: &AppState,
    call: &VoiceCall,
    before: Option<&str>,
    urls: &CallUrls,
) -> Result<CallStep, Refusal> {
    let words = words(call.language);
    let page = async {
        let mut conn = state.engine.store.reader().acquire().await?;
        state.engine.confirmation_page(&mut conn, &call.token).await
    }
    .await
    .map_err(unavailable)?;
    let Some(page) = page else {
        return Err(Refusal::NotFound("no such request"));
    };
    let language = call.language;
    Ok(match page.status {
        ConfirmationStatus::Pending if page.expires_at_ms <= state.engine.now_ms() => {
            end(language, words.expired)
        }
        // Claim 13: the voice first, when a speaker-verification service is configured.
        ConfirmationStatus::Pending if needs_voice_id(state) && !call.speaker_verified => {
            CallStep::Record {
                text: words.say_phrase.to_string(),
                language: call.language.as_str().to_string(),
                recording_url: urls.recording.clone(),
                max_length_s: voice_id_max_length_s(state),
            }
        }
        ConfirmationStatus::Pending => CallStep::Ask {
            text: match before {
                Some(before) => format!("{before} {}", call.prompt),
                None => call.prompt.clone(),
            },
            language: call.language.as_str().to_string(),
            answer_url: urls.answer.clone(),
            one_key: !page.pin_required,
            no_input: words.goodbye_silent.to_string(),
        },
        ConfirmationStatus::Expired => end(language, words.expired),
        ConfirmationStatus::Approved | ConfirmationStatus::Declined => {
            end(language, words.answered)
        }
    })
}

/// `POST /voice/twiml/calls/{message_id}/answer`: the keys the caller pressed.
pub async fn answer(
    State(state): State<AppState>,
    Path(message_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    let Some(adapter) = authenticated(&state, &uri, &headers, &fields) else {
        return forbidden();
    };
    let call = match call_of(&state, &message_id, &fields).await {
        Ok(call) => call,
        Err(refusal) => return refusal.into_response(),
    };
    if call.finished || needs_voice_id(&state) && !call.speaker_verified {
        // A replay of an answer to a call that has ended, or keys before the voice was
        // verified: nothing changes.
        return forbidden();
    }
    let urls = twiml_urls(&state, &message_id);
    let step = next_step(&state, &message_id, &call, &fields, &urls).await;
    respond(
        adapter.as_ref(),
        finished_if_ended(&state, &message_id, step).await,
    )
}

/// A call whose next step ends it takes no more answers.
async fn finished_if_ended(
    state: &AppState,
    message_id: &str,
    step: Result<CallStep, Refusal>,
) -> Result<CallStep, Refusal> {
    let step = step?;
    if matches!(step, CallStep::End { .. }) {
        state
            .engine
            .finish_call(message_id)
            .await
            .map_err(unavailable)?;
    }
    Ok(step)
}

/// What the call does after the caller's keys (or silence).
async fn next_step(
    state: &AppState,
    message_id: &str,
    call: &VoiceCall,
    fields: &Fields,
    urls: &CallUrls,
) -> Result<CallStep, Refusal> {
    let words = words(call.language);
    let digits = field(fields, "Digits").unwrap_or_default().trim();
    if digits.is_empty() {
        let silences = state
            .engine
            .note_no_input(message_id)
            .await
            .map_err(unavailable)?;
        // Silence once: ask again. Twice: end politely; the request stays open until it
        // expires, for another channel or a later call.
        return if silences >= 2 {
            Ok(end(call.language, words.goodbye_silent))
        } else {
            ask(state, call, Some(words.silence), urls).await
        };
    }
    let page_pin_required = {
        let mut conn = state
            .engine
            .store
            .reader()
            .acquire()
            .await
            .map_err(unavailable)?;
        state
            .engine
            .confirmation_page(&mut conn, &call.token)
            .await
            .map_err(unavailable)?
            .is_some_and(|page| page.pin_required)
    };
    let (approve, pin) = match (page_pin_required, digits) {
        (true, digits) => (true, Some(digits.to_string())),
        (false, "1") => (true, None),
        (false, "2") => (false, None),
        (false, _) => return ask(state, call, Some(words.one_or_two), urls).await,
    };
    let outcome = state
        .engine
        .answer_token(&call.token, approve, pin, ChannelName::Voice)
        .await
        .map_err(unavailable)?;
    let language = call.language;
    Ok(match outcome {
        None => return Err(Refusal::NotFound("no such request")),
        Some(AnswerOutcome::WrongPin { .. } | AnswerOutcome::PinRequired { .. }) => {
            return ask(state, call, Some(words.wrong_pin), urls).await
        }
        Some(outcome) => end(language, final_words(&words, &outcome)),
    })
}

/// What a call says last about an answer that ends it.
fn final_words(words: &Words, outcome: &AnswerOutcome) -> &'static str {
    match outcome {
        AnswerOutcome::Approved => words.approved,
        AnswerOutcome::Declined => words.declined,
        AnswerOutcome::PinTriesExceeded => words.pin_tries,
        AnswerOutcome::LockedOut { .. } => words.locked,
        AnswerOutcome::NotPending { .. } => words.answered,
        AnswerOutcome::Expired => words.expired,
        AnswerOutcome::InsufficientCredit => words.insufficient,
        // Asked again, never said last; kept here so that every outcome has its words.
        AnswerOutcome::WrongPin { .. } | AnswerOutcome::PinRequired { .. } => words.wrong_pin,
    }
}

/// `POST /voice/twiml/calls/{message_id}/status`: how the call went (`completed`, `busy`,
/// `no-answer`, `failed`, `canceled`), recorded as the message's delivery state.
pub async fn status(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    if authenticated(&state, &uri, &headers, &fields).is_none() {
        return forbidden();
    }
    let (Some(call_sid), Some(call_status)) =
        (field(&fields, "CallSid"), field(&fields, "CallStatus"))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "CallSid and CallStatus are required",
        )
            .into_response();
    };
    record_call_status(&state, call_sid, call_status).await
}

/// A call's outcome as its message's delivery state (and what it sets off: a busy line is
/// called again, a failed call goes by SMS).
async fn record_call_status(state: &AppState, remote_id: &str, status: &str) -> Response {
    let message = InboundMessage::DeliveryReceipt {
        channel: ChannelName::Voice,
        remote_id: remote_id.to_string(),
        state: status.to_ascii_uppercase(),
        error: None,
    };
    match state.engine.receive(message).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => unavailable(error).into_response(),
    }
}

/// Where an incoming call's keys go next, in its platform's dialect.
enum Incoming {
    /// Signed requests; the caller is the request's `From`.
    Twiml,
    /// The URL's secret token; the caller travels in the URL (`from`).
    Vxml { token: String },
}

impl Incoming {
    fn code_url(&self, state: &AppState, from: &str) -> String {
        let base = &state.engine.settings.http.public_url;
        match self {
            Incoming::Twiml => format!("{base}/voice/twiml/incoming/code"),
            Incoming::Vxml { token } => format!(
                "{base}/voice/vxml/incoming/{token}/code?from={}",
                url_encoded(from)
            ),
        }
    }

    fn pin_url(&self, state: &AppState, from: &str, code: &str) -> String {
        let base = &state.engine.settings.http.public_url;
        match self {
            Incoming::Twiml => format!("{base}/voice/twiml/incoming/pin?code={code}"),
            Incoming::Vxml { token } => format!(
                "{base}/voice/vxml/incoming/{token}/pin?from={}&code={code}",
                url_encoded(from)
            ),
        }
    }
}

/// A caller id in a query string, percent-encoded but for the characters URLs leave as
/// they are: `+` would read as a space, and a space, `#`, a control or a non-ASCII character
/// would break or cut the URL the platform fetches next.
fn url_encoded(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The first step of a call to the service number (claim 9 by phone): the caller, known by
/// the calling number, keys a till code; an unknown caller is told so and nothing changes.
async fn incoming_start(
    state: &AppState,
    from: &str,
    incoming: &Incoming,
) -> Result<CallStep, Refusal> {
    Ok(
        match state
            .engine
            .phone_customer(from)
            .await
            .map_err(unavailable)?
        {
            None => end(Language::En, words(Language::En).not_registered),
            Some((language, _)) => CallStep::Ask {
                text: words(language).till_code.to_string(),
                language: language.as_str().to_string(),
                answer_url: incoming.code_url(state, from),
                one_key: false,
                no_input: words(language).goodbye_silent.to_string(),
            },
        },
    )
}

/// The till code keyed: then the PIN, where one is set, or the claim at once.
async fn incoming_code_step(
    state: &AppState,
    from: &str,
    code: &str,
    incoming: &Incoming,
) -> Result<CallStep, Refusal> {
    let code = code.trim();
    Ok(
        match state
            .engine
            .phone_customer(from)
            .await
            .map_err(unavailable)?
        {
            None => end(Language::En, words(Language::En).not_registered),
            Some((language, _)) if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) => {
                end(language, words(language).no_such_code)
            }
            Some((language, true)) => CallStep::Ask {
                text: words(language).enter_pin.to_string(),
                language: language.as_str().to_string(),
                answer_url: incoming.pin_url(state, from, code),
                one_key: false,
                no_input: words(language).goodbye_silent.to_string(),
            },
            Some((_, false)) => till_step(state, from, code, None, incoming).await?,
        },
    )
}

fn respond(adapter: &dyn Channel, step: Result<CallStep, Refusal>) -> Response {
    match step {
        Ok(step) => render(adapter, step),
        Err(refusal) => refusal.into_response(),
    }
}

/// `POST /voice/twiml/incoming`: a call to the service number.
pub async fn incoming(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    let Some(adapter) = authenticated(&state, &uri, &headers, &fields) else {
        return forbidden();
    };
    let from = field(&fields, "From").unwrap_or_default();
    respond(
        adapter.as_ref(),
        incoming_start(&state, from, &Incoming::Twiml).await,
    )
}

fn end(language: Language, text: &str) -> CallStep {
    CallStep::End {
        text: text.to_string(),
        language: language.as_str().to_string(),
    }
}

/// `POST /voice/twiml/incoming/code`: the till code.
pub async fn incoming_code(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    let Some(adapter) = authenticated(&state, &uri, &headers, &fields) else {
        return forbidden();
    };
    let from = field(&fields, "From").unwrap_or_default();
    let code = field(&fields, "Digits").unwrap_or_default();
    respond(
        adapter.as_ref(),
        incoming_code_step(&state, from, code, &Incoming::Twiml).await,
    )
}

#[derive(serde::Deserialize)]
pub struct TillCode {
    code: String,
}

/// `POST /voice/twiml/incoming/pin?code=...`: the PIN for the till code keyed before.
pub async fn incoming_pin(
    State(state): State<AppState>,
    Query(till): Query<TillCode>,
    uri: Uri,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    let Some(adapter) = authenticated(&state, &uri, &headers, &fields) else {
        return forbidden();
    };
    let from = field(&fields, "From").unwrap_or_default();
    let pin = field(&fields, "Digits")
        .unwrap_or_default()
        .trim()
        .to_string();
    respond(
        adapter.as_ref(),
        till_step(&state, from, &till.code, Some(pin), &Incoming::Twiml).await,
    )
}

/// The voice adapter, if `token` is the one the service number's VoiceXML URL carries.
fn vxml_incoming_adapter(state: &AppState, token: &str) -> Option<Arc<dyn Channel>> {
    with_url_token(state, "service", "incoming", token)
}

#[derive(serde::Deserialize)]
pub struct Caller {
    from: String,
    #[serde(default)]
    code: Option<String>,
}

/// `GET|POST /voice/vxml/incoming/{token}?from=...`: a call to the service number on a
/// VoiceXML platform, which puts the caller id in the URL it fetches.
pub async fn vxml_incoming(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(caller): Query<Caller>,
) -> Response {
    let Some(adapter) = vxml_incoming_adapter(&state, &token) else {
        return forbidden();
    };
    let incoming = Incoming::Vxml { token };
    respond(
        adapter.as_ref(),
        incoming_start(&state, &caller.from, &incoming).await,
    )
}

/// `POST /voice/vxml/incoming/{token}/code?from=...`: the till code (`digits`).
pub async fn vxml_incoming_code(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(caller): Query<Caller>,
    Form(fields): Form<Fields>,
) -> Response {
    let Some(adapter) = vxml_incoming_adapter(&state, &token) else {
        return forbidden();
    };
    let code = field(&fields, "digits").unwrap_or_default();
    let incoming = Incoming::Vxml {
        token: token.clone(),
    };
    respond(
        adapter.as_ref(),
        incoming_code_step(&state, &caller.from, code, &incoming).await,
    )
}

/// `POST /voice/vxml/incoming/{token}/pin?from=...&code=...`: the PIN (`digits`).
pub async fn vxml_incoming_pin(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(caller): Query<Caller>,
    Form(fields): Form<Fields>,
) -> Response {
    let Some(adapter) = vxml_incoming_adapter(&state, &token) else {
        return forbidden();
    };
    let pin = field(&fields, "digits")
        .unwrap_or_default()
        .trim()
        .to_string();
    let code = caller.code.clone().unwrap_or_default();
    let incoming = Incoming::Vxml {
        token: token.clone(),
    };
    respond(
        adapter.as_ref(),
        till_step(&state, &caller.from, &code, Some(pin), &incoming).await,
    )
}

/// Claims the till code as `PAY <code> <PIN>` would, and says how it went.
async fn till_step(
    state: &AppState,
    from: &str,
    code: &str,
    pin: Option<String>,
    incoming: &Incoming,
) -> Result<CallStep, Refusal> {
    let (claim, language) = state
        .engine
        .pay_by_phone(from, code, pin)
        .await
        .map_err(unavailable)?;
    let words = words(language);
    let retry_pin = || CallStep::Ask {
        text: format!("{} {}", words.wrong_pin, words.enter_pin),
        language: language.as_str().to_string(),
        answer_url: incoming.pin_url(state, from, code),
        one_key: false,
        no_input: words.goodbye_silent.to_string(),
    };
    Ok(match claim {
        TillClaim::UnknownSender => end(language, words.not_registered),
        TillClaim::NoSuchCode | TillClaim::BadAmount(_) => end(language, words.no_such_code),
        TillClaim::Answered { outcome, .. } => match outcome {
            AnswerOutcome::WrongPin { .. } | AnswerOutcome::PinRequired { .. } => retry_pin(),
            outcome => end(language, final_words(&words, &outcome)),
        },
    })
}

fn needs_voice_id(state: &AppState) -> bool {
    voice_id_max_length_s(state) > 0
}

/// How long a phrase is recorded; 0 without a speaker-verification service.
fn voice_id_max_length_s(state: &AppState) -> u32 {
    state
        .engine
        .settings
        .channels
        .voice
        .as_ref()
        .and_then(|voice| voice.voice_id.as_ref())
        .map_or(0, |voice_id| voice_id.max_length_s)
}

/// `POST /voice/twiml/calls/{message_id}/recording`: the phrase the caller said. The
/// speaker-verification service's positive verdict lets the call go on to the keys; a
/// negative one, or none in time, declines the request and says so.
pub async fn recording(
    State(state): State<AppState>,
    Path(message_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    let Some(adapter) = authenticated(&state, &uri, &headers, &fields) else {
        return forbidden();
    };
    let mut call = match call_of(&state, &message_id, &fields).await {
        Ok(call) => call,
        Err(refusal) => return refusal.into_response(),
    };
    if call.finished || call.speaker_verified || !needs_voice_id(&state) {
        return forbidden();
    }
    let words = words(call.language);
    let sample = SpeakerSample {
        recording_url: field(&fields, "RecordingUrl").unwrap_or_default(),
        customer_id: call.customer_id.as_deref().unwrap_or_default(),
        call_sid: field(&fields, "CallSid").unwrap_or_default(),
    };
    let verdict = match (
        sample.recording_url.is_empty(),
        sample.customer_id.is_empty(),
    ) {
        (false, false) => adapter.verify_speaker(&sample).await,
        _ => Some(SpeakerVerdict::NoMatch),
    };
    let declined = match verdict {
        Some(SpeakerVerdict::Match) => {
            if let Err(error) = state.engine.note_speaker_verified(&message_id).await {
                return unavailable(error).into_response();
            }
            call.speaker_verified = true;
            let urls = twiml_urls(&state, &message_id);
            return respond(adapter.as_ref(), ask(&state, &call, None, &urls).await);
        }
        Some(SpeakerVerdict::NoMatch) => words.voice_rejected,
        Some(SpeakerVerdict::Unavailable(reason)) => {
            tracing::warn!(message_id, reason = %reason, "No speaker verdict; the request is declined");
            words.voice_unavailable
        }
        None => words.voice_unavailable,
    };
    if let Err(error) = state
        .engine
        .answer_token(&call.token, false, None, ChannelName::Voice)
        .await
    {
        return unavailable(error).into_response();
    }
    if let Err(error) = state.engine.finish_call(&message_id).await {
        return unavailable(error).into_response();
    }
    render(adapter.as_ref(), end(call.language, declined))
}

/// The voice adapter, if this request carries the token its URL was given for `purpose`
/// (VoiceXML platforms sign nothing).
fn with_url_token(
    state: &AppState,
    message_id: &str,
    purpose: &str,
    token: &str,
) -> Option<Arc<dyn Channel>> {
    let adapter = state.peer_channels.get(&ChannelName::Voice)?.clone();
    let expected = adapter.call_url_token(message_id, purpose)?;
    paystep_channel_core::constant_time_equal(token.as_bytes(), expected.as_bytes())
        .then_some(adapter)
}

/// A fresh single-use answer URL for a VoiceXML call.
async fn vxml_urls(state: &AppState, message_id: &str) -> Result<CallUrls, Refusal> {
    let token = state
        .engine
        .issue_call_token(message_id)
        .await
        .map_err(unavailable)?;
    let answer = format!(
        "{}/voice/vxml/calls/{message_id}/answer/{token}",
        state.engine.settings.http.public_url
    );
    Ok(CallUrls {
        recording: answer.clone(),
        answer,
    })
}

/// The one call a VoiceXML message has: its platform has no call ids to tell calls apart.
const VXML_CALL: &str = "voicexml";

/// `GET|POST /voice/vxml/calls/{message_id}/{token}`: the call's first document. The URL
/// serves one fetch.
pub async fn vxml_script(
    State(state): State<AppState>,
    Path((message_id, token)): Path<(String, String)>,
) -> Response {
    let Some(adapter) = with_url_token(&state, &message_id, "script", &token) else {
        return forbidden();
    };
    let call = match state
        .engine
        .bind_call_once(&message_id, VXML_CALL, true)
        .await
    {
        Ok(CallBinding::Bound(call)) => call,
        Ok(CallBinding::Unknown) => return Refusal::NotFound("no such call").into_response(),
        Ok(CallBinding::OtherCall) => return forbidden(),
        Err(error) => return unavailable(error).into_response(),
    };
    let step = async {
        let urls = vxml_urls(&state, &message_id).await?;
        ask(&state, &call, None, &urls).await
    }
    .await;
    respond(adapter.as_ref(), step)
}

/// `POST /voice/vxml/calls/{message_id}/answer/{token}`: the digits a `<submit>` posted,
/// with the single-use token of the document that asked.
pub async fn vxml_answer(
    State(state): State<AppState>,
    Path((message_id, token)): Path<(String, String)>,
    Form(fields): Form<Fields>,
) -> Response {
    let Some(adapter) = state.peer_channels.get(&ChannelName::Voice).cloned() else {
        return forbidden();
    };
    match state.engine.take_call_token(&message_id, &token).await {
        Ok(true) => {}
        Ok(false) => return forbidden(),
        Err(error) => return unavailable(error).into_response(),
    }
    let call = match state.engine.bind_call(&message_id, VXML_CALL).await {
        Ok(CallBinding::Bound(call)) if !call.finished => call,
        Ok(_) => return forbidden(),
        Err(error) => return unavailable(error).into_response(),
    };
    let digits = field(&fields, "digits").unwrap_or_default().to_string();
    let answer = vec![("Digits".to_string(), digits)];
    let step = async {
        let urls = vxml_urls(&state, &message_id).await?;
        next_step(&state, &message_id, &call, &answer, &urls).await
    }
    .await;
    respond(
        adapter.as_ref(),
        finished_if_ended(&state, &message_id, step).await,
    )
}

#[derive(serde::Deserialize)]
pub struct VxmlStatus {
    status: String,
}

/// `POST /voice/vxml/calls/{message_id}/status/{token}`: how the call went, as JSON
/// `{"status": "completed"|"busy"|"no-answer"|"failed"|"canceled"}`.
pub async fn vxml_status(
    State(state): State<AppState>,
    Path((message_id, token)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if with_url_token(&state, &message_id, "status", &token).is_none() {
        return forbidden();
    }
    let Ok(VxmlStatus { status }) = serde_json::from_slice::<VxmlStatus>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "a JSON body with status is required",
        )
            .into_response();
    };
    record_call_status(&state, &message_id, &status).await
}

/// Fuzz targets (bolero) for what the voice platform sends: form bodies and query strings,
/// read with the extractors the handlers use. Under `cargo test` each runs a bounded
/// number of random inputs; `scripts/fuzz.sh` runs them coverage-guided.
#[cfg(test)]
mod fuzz_tests {
    use axum::body::Body;
    use axum::extract::FromRequest;
    use axum::http::Request;

    use super::*;

    /// The body's fields as the handlers' `Form<Fields>` reads them.
    fn form_fields(body: Vec<u8>) -> Option<Fields> {
        let request = Request::builder()
            .method("POST")
            .uri("/voice/twiml/calls/m1/answer")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .expect("a valid request");
        futures::executor::block_on(Form::<Fields>::from_request(request, &()))
            .ok()
            .map(|Form(fields)| fields)
    }

    /// The fields as a platform posts them (`application/x-www-form-urlencoded`).
    fn form_body(fields: &Fields) -> Vec<u8> {
        let body = Form(fields.clone()).into_response().into_body();
        futures::executor::block_on(axum::body::to_bytes(body, usize::MAX))
            .expect("an in-memory body")
            .to_vec()
    }

    #[test]
    fn any_form_body_is_read_without_panic_and_posted_fields_arrive_unchanged() {
        bolero::check!()
            .with_type::<(Vec<u8>, Fields)>()
            .with_iterations(2_000)
            .for_each(|(body, posted)| {
                // Any body is read or refused, without panic.
                form_fields(body.clone());
                // The platform signs the fields it posts; the signature holds only if they
                // arrive exactly as posted.
                let read = form_fields(form_body(posted));
                assert_eq!(read.as_ref(), Some(posted));
            });
    }

    /// Found by the target below (a caller id "\0"): ids with characters other than `%`,
    /// `+` and `&` made URLs that do not parse, or that lose the rest of the id.
    #[test]
    fn caller_ids_with_spaces_hashes_controls_or_non_ascii_stay_whole_in_the_next_url() {
        for from in [
            "\0",
            "+49 30 1234567",
            "#31#+4930123456",
            "sip:anna@pbx.example;x=1",
            "Müller",
        ] {
            let url = format!("/voice/vxml/incoming/token/code?from={}", url_encoded(from));
            let uri: Uri = url.parse().expect("a URL");
            let Query(caller) = Query::<Caller>::try_from_uri(&uri).expect("a caller");
            assert_eq!(caller.from, from);
        }
        assert_eq!(url_encoded("+4930123456"), "%2B4930123456");
    }

    #[test]
    fn caller_ids_come_back_unchanged_from_the_urls_they_are_put_in() {
        bolero::check!()
            .with_type::<(String, String)>()
            .with_iterations(2_000)
            .for_each(|(from, query)| {
                // Any query string the platform sends is read or refused, without panic.
                if let Ok(uri) = format!("/voice/vxml/incoming/token/code?{query}").parse::<Uri>() {
                    let _ = Query::<Caller>::try_from_uri(&uri);
                    let _ = Query::<TillCode>::try_from_uri(&uri);
                }
                // `Incoming::code_url` writes the caller id into the next URL of the call.
                let url = format!("/voice/vxml/incoming/token/code?from={}", url_encoded(from));
                let uri: Uri = url
                    .parse()
                    .unwrap_or_else(|error| panic!("{url:?}: {error}"));
                let Query(caller) = Query::<Caller>::try_from_uri(&uri).expect("a caller");
                assert_eq!(&caller.from, from);
            });
    }
}
