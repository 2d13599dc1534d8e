//! PAP result notifications: a PPG that was asked (`ppg-notify-requested-to`) tells the push
//! initiator what became of a push, and expects a `resultnotification-response`.

use std::io;

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::{Reader, Writer};

use crate::{ChannelName, InboundMessage};

const PAP_DOCTYPE: &str =
    r#"pap PUBLIC "-//WAPFORUM//DTD PAP 2.0//EN" "http://www.wapforum.org/DTD/pap_2.0.dtd""#;
/// The longest field kept from a notification.
const FIELD_LENGTH_MAX: usize = 256;

/// What a PPG reported of one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultNotification {
    pub push_id: String,
    /// PAP's `message-state`: delivered, undeliverable, expired, rejected, aborted, timeout,
    /// cancelled, pending or unknown.
    pub message_state: String,
    pub code: Option<u16>,
    pub description: Option<String>,
    pub address: Option<String>,
}

impl ResultNotification {
    /// Whether the push will never reach the handset, so that its SMS should go instead.
    pub fn failed(&self) -> bool {
        matches!(
            self.message_state.as_str(),
            "undeliverable" | "expired" | "rejected" | "aborted" | "timeout" | "cancelled"
        )
    }

    /// The notification as the core records delivery reports.
    pub fn into_inbound(self) -> InboundMessage {
        let error = match (self.failed(), self.code, &self.description) {
            (false, _, _) => None,
            (true, Some(code), Some(description)) => Some(format!("PAP {code} {description}")),
            (true, Some(code), None) => Some(format!("PAP {code}")),
            (true, None, description) => description.clone(),
        };
        InboundMessage::DeliveryReceipt {
            channel: ChannelName::WapPush,
            remote_id: self.push_id,
            state: self.message_state.to_ascii_uppercase(),
            error,
        }
    }
}

/// Reads a `resultnotification-message`; says what is wrong otherwise.
pub fn parse_result_notification(body: &str) -> Result<ResultNotification, String> {
    let mut reader = Reader::from_str(body);
    let mut found: Option<ResultNotification> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|error| format!("not XML: {error}"))?;
        match event {
            Event::Start(element) | Event::Empty(element) => {
                let attribute = |key: &str| {
                    element
                        .try_get_attribute(key)
                        .ok()
                        .flatten()
                        .and_then(|value| value.unescape_value().ok())
                        .map(|value| {
                            value
                                .trim()
                                .chars()
                                .take(FIELD_LENGTH_MAX)
                                .collect::<String>()
                        })
                };
                match element.name().as_ref() {
                    b"resultnotification-message" => {
                        found = Some(ResultNotification {
                            push_id: attribute("push-id").ok_or("no push-id")?,
                            message_state: attribute("message-state")
                                .ok_or("no message-state")?
                                .to_ascii_lowercase(),
                            code: attribute("code").and_then(|code| code.parse().ok()),
                            description: attribute("desc"),
                            address: None,
                        });
                    }
                    b"address" => {
                        if let Some(notification) = found.as_mut() {
                            notification.address = attribute("address-value");
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let notification = found.ok_or("not a PAP resultnotification-message")?;
    if notification.push_id.is_empty() {
        return Err("an empty push-id".into());
    }
    Ok(notification)
}

/// The answer a PPG expects: the push-id, the address, and whether we took it.
pub fn notification_response(
    notification: &ResultNotification,
    code: u16,
    description: &str,
) -> io::Result<Vec<u8>> {
    let mut writer = Writer::new(Vec::new());
    writer.write_event(Event::Decl(BytesDecl::new("1.0", None, None)))?;
    writer.write_event(Event::DocType(BytesText::from_escaped(PAP_DOCTYPE)))?;
    writer.create_element("pap").write_inner_content(|writer| {
        writer
            .create_element("resultnotification-response")
            .with_attribute(("push-id", notification.push_id.as_str()))
            .with_attribute(("code", code.to_string().as_str()))
            .with_attribute(("desc", description))
            .write_inner_content(|writer| {
                if let Some(address) = &notification.address {
                    writer
                        .create_element("address")
                        .with_attribute(("address-value", address.as_str()))
                        .write_empty()?;
                }
                Ok(())
            })?;
        Ok(())
    })?;
    Ok(writer.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNDELIVERABLE: &str = r#"<?xml version="1.0"?>
<!DOCTYPE pap PUBLIC "-//WAPFORUM//DTD PAP 2.0//EN" "http://www.wapforum.org/DTD/pap_2.0.dtd">
<pap><resultnotification-message push-id="abc@paystep" message-state="undeliverable" code="4000" desc="Service failure">
<address address-value="WAPPUSH=+491701234567/TYPE=PLMN@ppg.example"/>
</resultnotification-message></pap>"#;

    #[test]
    fn a_notification_is_read_and_answered() {
        let notification = parse_result_notification(UNDELIVERABLE).unwrap();
        assert_eq!(notification.push_id, "abc@paystep");
        assert!(notification.failed());
        assert_eq!(
            notification.clone().into_inbound(),
            InboundMessage::DeliveryReceipt {
                channel: ChannelName::WapPush,
                remote_id: "abc@paystep".into(),
                state: "UNDELIVERABLE".into(),
                error: Some("PAP 4000 Service failure".into()),
            }
        );
        let answer =
            String::from_utf8(notification_response(&notification, 1000, "OK").unwrap()).unwrap();
        assert!(answer.contains(r#"<resultnotification-response push-id="abc@paystep" code="1000" desc="OK"><address address-value="WAPPUSH=+491701234567/TYPE=PLMN@ppg.example"/>"#), "{answer}");
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        assert!(parse_result_notification("<pap><push-message/></pap>").is_err());
        assert!(parse_result_notification("<<<").is_err());
        assert!(parse_result_notification(
            r#"<pap><resultnotification-message message-state="delivered"/></pap>"#
        )
        .unwrap_err()
        .contains("push-id"));
    }

    #[test]
    fn delivered_is_not_a_failure() {
        let delivered = UNDELIVERABLE.replace("undeliverable", "delivered");
        let notification = parse_result_notification(&delivered).unwrap();
        assert!(!notification.failed());
        assert!(matches!(
            notification.into_inbound(),
            InboundMessage::DeliveryReceipt { error: None, .. }
        ));
    }
}

/// Fuzz targets (bolero): under `cargo test` each runs a bounded number of random inputs;
/// `scripts/fuzz.sh` runs them coverage-guided for as long as asked.
#[cfg(test)]
mod fuzz_tests {
    use super::*;

    const STATES: &[&str] = &[
        "delivered",
        "Undeliverable",
        "expired",
        "rejected",
        "aborted",
        "timeout",
        "cancelled",
        "pending",
        "unknown",
    ];

    /// A result notification written with a real XML writer.
    #[derive(Debug, bolero::TypeGenerator)]
    struct Notification {
        push_id: Option<String>,
        state: u8,
        code: Option<u16>,
        desc: Option<String>,
        address: Option<String>,
    }

    impl Notification {
        fn document(&self) -> Vec<u8> {
            let mut writer = Writer::new(Vec::new());
            let state = STATES[usize::from(self.state) % STATES.len()];
            let code = self.code.map(|code| code.to_string());
            let result = writer.create_element("pap").write_inner_content(|writer| {
                let mut element = writer
                    .create_element("resultnotification-message")
                    .with_attribute(("message-state", state));
                if let Some(push_id) = &self.push_id {
                    element = element.with_attribute(("push-id", push_id.as_str()));
                }
                if let Some(code) = &code {
                    element = element.with_attribute(("code", code.as_str()));
                }
                if let Some(desc) = &self.desc {
                    element = element.with_attribute(("desc", desc.as_str()));
                }
                element.write_inner_content(|writer| {
                    if let Some(address) = &self.address {
                        writer
                            .create_element("address")
                            .with_attribute(("address-value", address.as_str()))
                            .write_empty()?;
                    }
                    Ok(())
                })?;
                Ok(())
            });
            result.expect("writing to memory cannot fail");
            writer.into_inner()
        }
    }

    fn kept(value: &str) -> String {
        value.trim().chars().take(FIELD_LENGTH_MAX).collect()
    }

    /// The push-id of the `resultnotification-response` in `answer`.
    fn answered_push_id(answer: &[u8]) -> Option<String> {
        let mut reader = Reader::from_reader(answer);
        let mut buffer = Vec::new();
        loop {
            match reader.read_event_into(&mut buffer).ok()? {
                Event::Start(element) | Event::Empty(element)
                    if element.name().as_ref() == b"resultnotification-response" =>
                {
                    let value = element.try_get_attribute("push-id").ok()??;
                    return Some(value.unescape_value().ok()?.into_owned());
                }
                Event::Eof => return None,
                _ => buffer.clear(),
            }
        }
    }

    fn check(body: &str) -> Option<ResultNotification> {
        let notification = parse_result_notification(body).ok()?;
        assert!(!notification.push_id.is_empty());
        for field in [
            Some(&notification.push_id),
            Some(&notification.message_state),
            notification.description.as_ref(),
            notification.address.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            assert!(field.chars().count() <= FIELD_LENGTH_MAX, "{field:?}");
        }
        assert!(!notification
            .message_state
            .bytes()
            .any(|byte| byte.is_ascii_uppercase()));
        // The PPG gets its push-id back, whatever it holds.
        let answer = notification_response(&notification, 1000, "OK").expect("in memory");
        assert_eq!(
            answered_push_id(&answer).as_ref(),
            Some(&notification.push_id)
        );
        match notification.clone().into_inbound() {
            InboundMessage::DeliveryReceipt {
                channel,
                remote_id,
                state,
                error,
            } => {
                assert_eq!(channel, ChannelName::WapPush);
                assert_eq!(remote_id, notification.push_id);
                assert_eq!(state, notification.message_state.to_ascii_uppercase());
                assert!(error.is_none() || notification.failed());
            }
            other => panic!("a notification became {other:?}"),
        }
        Some(notification)
    }

    #[test]
    fn any_result_notification_is_read_without_panic_and_answered_with_its_push_id() {
        bolero::check!()
            .with_type::<(Vec<u8>, Notification)>()
            .with_iterations(3_000)
            .for_each(|(octets, written)| {
                // The channel reads the request body as lossy UTF-8 (`receive_from_peer`).
                check(&String::from_utf8_lossy(octets));
                let document = String::from_utf8(written.document()).expect("written as UTF-8");
                let read = check(&document);
                let push_id = written.push_id.as_deref().map(kept).unwrap_or_default();
                if push_id.is_empty() {
                    assert_eq!(read, None, "{document}");
                    return;
                }
                let read = read.unwrap_or_else(|| panic!("not read: {document}"));
                let state = STATES[usize::from(written.state) % STATES.len()];
                assert_eq!(read.push_id, push_id);
                assert_eq!(read.message_state, state.to_ascii_lowercase());
                assert_eq!(read.code, written.code);
                assert_eq!(read.description, written.desc.as_deref().map(kept));
                assert_eq!(read.address, written.address.as_deref().map(kept));
            });
    }
}
