//! Voice calls: which request a call is about, and the call's own state (bound to one
//! CallSid, silences counted, finished). What the call says is decided by the HTTP layer
//! from these facts and the answer's outcome; the answer itself goes through the same path
//! as the page's.

use std::sync::Arc;

use paystep_channel_core::ChannelName;
use sqlx::Row;

use super::{AnswerOutcome, Engine, EngineError};
use crate::domain::Language;

/// The call that delivers one voice message.
#[derive(Debug, Clone)]
pub struct VoiceCall {
    /// The confirmation token of the request the call asks about.
    pub token: String,
    /// What the call says (the message's voice text).
    pub prompt: String,
    pub language: Language,
    pub no_inputs: i64,
    pub finished: bool,
    /// The speaker-verification service said this is the customer's voice.
    pub speaker_verified: bool,
    /// Whose voice it must be.
    pub customer_id: Option<String>,
}

/// What a platform's request about a call turned out to be.
#[derive(Debug, Clone)]
pub enum CallBinding {
    /// No voice message has this id.
    Unknown,
    /// The message's call is another one: its URLs serve one call only.
    OtherCall,
    Bound(VoiceCall),
}

impl Engine {
    /// Binds the voice message `message_id` to the call `call_sid` on first use, and says
    /// whether this request belongs to that call.
    pub async fn bind_call(
        &self,
        message_id: &str,
        call_sid: &str,
    ) -> Result<CallBinding, EngineError> {
        self.bind_call_once(message_id, call_sid, false).await
    }

    /// The same; with `first_only`, a message whose call already started is another call's
    /// (a VoiceXML script URL serves one fetch).
    pub async fn bind_call_once(
        &self,
        message_id: &str,
        call_sid: &str,
        first_only: bool,
    ) -> Result<CallBinding, EngineError> {
        let mut tx = self.store.begin_write().await?;
        let message = sqlx::query(
            "SELECT o.text, o.url, o.language, p.customer_id FROM outbox o \
             LEFT JOIN processes p ON p.id = o.process_id \
             WHERE o.id = $1 AND o.intended_channel = 'voice'",
        )
        .bind(message_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(message) = message else {
            return Ok(CallBinding::Unknown);
        };
        let url: Option<String> = message.try_get("url")?;
        let Some(token) = url.as_deref().and_then(|url| url.rsplit('/').next()) else {
            return Ok(CallBinding::Unknown);
        };
        let started = sqlx::query(
            "INSERT INTO voice_calls (message_id, call_sid, created_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(message_id)
        .bind(call_sid)
        .bind(self.now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if first_only && !started {
            return Ok(CallBinding::OtherCall);
        }
        let call = sqlx::query(
            "SELECT call_sid, no_inputs, finished_at_ms, speaker_verified_at_ms FROM voice_calls \
             WHERE message_id = $1",
        )
        .bind(message_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        if call.try_get::<String, _>("call_sid")? != call_sid {
            return Ok(CallBinding::OtherCall);
        }
        let language: String = message.try_get("language")?;
        Ok(CallBinding::Bound(VoiceCall {
            token: token.to_string(),
            prompt: message.try_get("text")?,
            language: Language::parse(&language).unwrap_or(Language::En),
            no_inputs: call.try_get("no_inputs")?,
            finished: call.try_get::<Option<i64>, _>("finished_at_ms")?.is_some(),
            speaker_verified: call
                .try_get::<Option<i64>, _>("speaker_verified_at_ms")?
                .is_some(),
            customer_id: message.try_get("customer_id")?,
        }))
    }

    /// Counts a gather that ended without a key; returns how many there were.
    pub async fn note_no_input(&self, message_id: &str) -> Result<i64, EngineError> {
        let mut tx = self.store.begin_write().await?;
        let count: i64 = sqlx::query_scalar(
            "UPDATE voice_calls SET no_inputs = no_inputs + 1 WHERE message_id = $1 \
             RETURNING no_inputs",
        )
        .bind(message_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(count)
    }

    /// A fresh single-use token for the next URL a VoiceXML call is given; only its hash is
    /// kept, and it replaces the one before.
    pub async fn issue_call_token(&self, message_id: &str) -> Result<String, EngineError> {
        let token = super::random_secret();
        let mut tx = self.store.begin_write().await?;
        sqlx::query("UPDATE voice_calls SET next_token_hash = $1 WHERE message_id = $2")
            .bind(super::secret_hash(&token))
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Uses up the call's current token: true once, for the right one.
    pub async fn take_call_token(
        &self,
        message_id: &str,
        token: &str,
    ) -> Result<bool, EngineError> {
        let mut tx = self.store.begin_write().await?;
        let taken = sqlx::query(
            "UPDATE voice_calls SET next_token_hash = NULL WHERE message_id = $1 \
             AND next_token_hash = $2",
        )
        .bind(message_id)
        .bind(super::secret_hash(token))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(taken == 1)
    }

    /// The speaker-verification service recognised the customer in this call.
    pub async fn note_speaker_verified(&self, message_id: &str) -> Result<(), EngineError> {
        let mut tx = self.store.begin_write().await?;
        sqlx::query(
            "UPDATE voice_calls SET speaker_verified_at_ms = $1 WHERE message_id = $2 \
             AND speaker_verified_at_ms IS NULL",
        )
        .bind(self.now_ms())
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The call has said its last word: its URLs take nothing more.
    pub async fn finish_call(&self, message_id: &str) -> Result<(), EngineError> {
        let mut tx = self.store.begin_write().await?;
        sqlx::query(
            "UPDATE voice_calls SET finished_at_ms = $1 WHERE message_id = $2 \
             AND finished_at_ms IS NULL",
        )
        .bind(self.now_ms())
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Answers the request behind `token` on `channel`, as the page does: the PIN verified
    /// before the write transaction, the answer in it. `None` for a token nobody issued.
    pub async fn answer_token(
        self: &Arc<Self>,
        token: &str,
        approve: bool,
        pin: Option<String>,
        channel: ChannelName,
    ) -> Result<Option<AnswerOutcome>, EngineError> {
        let verified = match approve {
            true => self.verify_pin_for_token(token, pin.as_deref()).await?,
            false => None,
        };
        let answer = super::Answer {
            approve,
            pin,
            channel,
            verified,
        };
        let (writer, token) = (self.clone(), token.to_string());
        let answered = self
            .store
            .write(
                move |conn| -> crate::store::WriteFuture<'_, Result<AnswerOutcome, EngineError>> {
                    Box::pin(async move { writer.answer_by_token(conn, &token, answer).await })
                },
            )
            .await;
        match answered {
            Ok(outcome) => Ok(Some(outcome)),
            Err(EngineError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }
}
