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
