//! The voice channel in the suite every adapter passes, against the stand-in voice platform
//! (`tests/peers/voice_platform.py`): the message id reaches the platform in the call's
//! script URL, the platform's answers are classed, the health check asks the account.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use paystep_channel_core::conformance::{self, AnswerCase, Class, Peer};
use paystep_channels::voice::{Dialect, VoiceChannel, VoiceSettings};
use paystep_channels::{Channel, ChannelName, MessageKind, OutboundMessage};
use serde_json::json;

#[path = "../../tests/peers/voice_platform.rs"]
#[allow(dead_code)]
mod voice_platform;
use voice_platform::{Platform, ACCOUNT_SID, AUTH_TOKEN};

const PUBLIC_URL: &str = "https://pay.example";
const WAIT_MAX: Duration = Duration::from_secs(20);

fn settings_with(api_url: &str, auth_token: &str) -> VoiceSettings {
    VoiceSettings {
        dialect: Dialect::Twiml,
        api_url: Some(api_url.to_string()),
        account_sid: Some(ACCOUNT_SID.to_string()),
        auth_token: Some(auth_token.into()),
        originate_url: None,
        secret: None,
        incoming_token: None,
        from: "+4930123456".to_string(),
        timeout_ms: 2_000,
        connect_timeout_ms: 1_000,
        busy_retries: 2,
        busy_retry_delay_s: 120,
        voice_id: None,
    }
}

struct VoicePeer {
    platform: Platform,
    settings: VoiceSettings,
    channel: Arc<VoiceChannel>,
}

#[async_trait]
impl Peer for VoicePeer {
    fn channel(&self) -> Arc<dyn Channel> {
        self.channel.clone()
    }

    fn message(&self, id: &str) -> OutboundMessage {
        OutboundMessage {
            id: id.to_string(),
            channel: ChannelName::Voice,
            intended_channel: ChannelName::Voice,
            kind: MessageKind::ConfirmationRequest,
            to: "+491701112233".into(),
            retailer_id: Some("r1".into()),
            process_id: Some("p1".into()),
            code: Some("123456".into()),
            description: None,
            reference: None,
            language: "en".into(),
            text: "Garage Nord asks you to release twelve euros fifty.".into(),
            url: Some(format!("{PUBLIC_URL}/c/token")),
            expires_at_ms: None,
            payload: None,
            signing_secrets: Vec::new(),
        }
    }

    /// The platform sees the message id in the call's script URL.
    async fn received_ids(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let calls = self.platform.calls().await;
            if calls.len() >= count {
                return calls
                    .iter()
                    .take(count)
                    .map(|call| {
                        let url = call["url"].as_str().unwrap();
                        url.rsplit('/').next().unwrap().to_string()
                    })
                    .collect();
            }
            assert!(Instant::now() < deadline, "{count} calls did not arrive");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn channel_to_silent_peer(
        &self,
        silent: SocketAddr,
        timeout: Duration,
    ) -> Option<Arc<dyn Channel>> {
        let settings = VoiceSettings {
            timeout_ms: timeout.as_millis() as u64,
            connect_timeout_ms: timeout.as_millis() as u64,
            ..settings_with(&format!("http://{silent}"), AUTH_TOKEN)
        };
        Some(Arc::new(VoiceChannel::new(&settings, PUBLIC_URL).unwrap()))
    }

    fn secrets(&self) -> Vec<String> {
        vec![AUTH_TOKEN.to_string()]
    }

    fn debug_renderings(&self) -> Vec<String> {
        vec![
            format!("{:?}", self.settings),
            format!("{:?}", self.channel),
        ]
    }

    /// The platform made to answer each way.
    async fn answers(&self) -> Vec<AnswerCase> {
        let mut cases = Vec::new();
        for (status, answer, expected) in [
            (400, "400 invalid To number (21211)", Class::Permanent),
            (503, "503 Service Unavailable", Class::Retriable),
            (429, "429 Too Many Requests", Class::Retriable),
        ] {
            self.platform
                .control(
                    "/_control/refuse",
                    json!({"status": status, "body": {"code": 21211}}),
                )
                .await;
            let result = self
                .channel
                .send(&self.message(&format!("answer-{status}")))
                .await;
            cases.push(AnswerCase {
                answer: answer.into(),
                classed: Class::of(&result),
                expected,
            });
        }
        let wrong_login = VoiceChannel::new(
            &settings_with(&self.platform.url(""), "not-the-token"),
            PUBLIC_URL,
        )
        .unwrap();
        cases.push(AnswerCase {
            answer: "401 wrong credentials".into(),
            classed: Class::of(&wrong_login.send(&self.message("answer-401")).await),
            expected: Class::Retriable,
        });
        cases.push(AnswerCase {
            answer: "201 Created".into(),
            classed: Class::of(&self.channel.send(&self.message("answer-201")).await),
            expected: Class::Accepted,
        });
        cases
    }
}

#[tokio::test]
async fn the_voice_channel_passes_the_conformance_suite() {
    let platform = Platform::start().await;
    let settings = settings_with(&platform.url(""), AUTH_TOKEN);
    let channel = Arc::new(VoiceChannel::new(&settings, PUBLIC_URL).unwrap());
    channel
        .health_check()
        .await
        .expect("the platform knows the account");
    let wrong_login = VoiceChannel::new(
        &settings_with(&platform.url(""), "not-the-token"),
        PUBLIC_URL,
    )
    .unwrap();
    assert!(
        wrong_login.health_check().await.is_err(),
        "a wrong token is unhealthy"
    );
    let peer = VoicePeer {
        platform,
        settings,
        channel,
    };
    conformance::run(&peer).await;
}
