//! What a received `deliver_sm` means: a delivery receipt for a message paystep sent, or a
//! text from a customer (MO) for the grammar.

use rusmpp::pdus::DeliverSm;
use rusmpp::tlvs::TlvValue;

use super::encoding::{decode_text, strip_udh};
use super::grammar;
use crate::{ChannelName, InboundMessage};

/// esm_class bits 2-5 hold the message type of a received short message.
const ESM_CLASS_MESSAGE_TYPE_MASK: u8 = 0x3C;
/// Message type "MC delivery receipt".
const ESM_CLASS_DELIVERY_RECEIPT: u8 = 0x04;
/// TON "international": the address is a full international number without its prefix.
const TON_INTERNATIONAL: u8 = 0x01;
/// The shortest digit string taken for an international number when the SMSC leaves the
/// TON unknown: shorter ones are short codes or national numbers.
const INTERNATIONAL_DIGITS_MIN: usize = 10;

/// The outcome of reading a `deliver_sm`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// Hand it to the core, and acknowledge only after the core took it.
    Message(InboundMessage),
    /// It can never be used (a receipt without an id); refuse it permanently.
    Unusable(String),
}

/// Reads a `deliver_sm`: a delivery receipt when its message type says so, else an MO text.
pub(crate) fn read_deliver_sm(deliver: &DeliverSm) -> Received {
    let esm_class = u8::from(deliver.esm_class);
    let data_coding = u8::from(deliver.data_coding);
    let mut octets: &[u8] = deliver.short_message().as_ref();
    // A message_payload TLV carries the text instead of short_message when it is long.
    let payload = deliver.tlvs().iter().find_map(|tlv| match tlv.value() {
        Some(TlvValue::MessagePayload(payload)) => Some(payload.value.as_ref().to_vec()),
        _ => None,
    });
    if octets.is_empty() {
        if let Some(payload) = payload.as_deref() {
            octets = payload;
        }
    }
    let text = decode_text(data_coding, strip_udh(octets, esm_class));
    if esm_class & ESM_CLASS_MESSAGE_TYPE_MASK == ESM_CLASS_DELIVERY_RECEIPT {
        return read_receipt(deliver, &text);
    }
    let from = normalise_sender(
        deliver.source_addr.as_str(),
        u8::from(deliver.source_addr_ton),
    );
    Received::Message(grammar::parse(&from, &text))
}

fn read_receipt(deliver: &DeliverSm, text: &str) -> Received {
    let mut remote_id = None;
    let mut state = None;
    for tlv in deliver.tlvs() {
        match tlv.value() {
            Some(TlvValue::ReceiptedMessageId(id)) if !id.as_str().is_empty() => {
                remote_id = Some(id.as_str().to_string());
            }
            Some(TlvValue::MessageState(message_state)) => {
                state = Some(state_name(u8::from(*message_state)).to_string());
            }
            _ => {}
        }
    }
    let fields = ReceiptText::parse(text);
    let Some(remote_id) = remote_id.or(fields.id) else {
        // The receipt's text quotes the message, which may carry a code: never log it.
        return Received::Unusable("a delivery receipt names no message id".into());
    };
    let state = state
        .or_else(|| {
            fields
                .stat
                .as_deref()
                .map(|stat| stat_name(stat).to_string())
        })
        .unwrap_or_else(|| "UNKNOWN".to_string());
    Received::Message(InboundMessage::DeliveryReceipt {
        channel: ChannelName::Sms,
        remote_id,
        state,
        error: fields.err,
    })
}

/// The fields of a receipt text in the de-facto format of SMPP 3.4 Appendix B:
/// `id:IIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD
/// err:E text:...`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReceiptText {
    pub(crate) id: Option<String>,
    pub(crate) stat: Option<String>,
    /// The error code, when there is one other than zero.
    pub(crate) err: Option<String>,
}

impl ReceiptText {
    pub(crate) fn parse(text: &str) -> ReceiptText {
        let mut fields = ReceiptText::default();
        for token in text.split_whitespace() {
            let Some((key, value)) = token.split_once(':') else {
                continue;
            };
            match key.to_ascii_lowercase().as_str() {
                "id" if !value.is_empty() => fields.id = Some(value.to_string()),
                "stat" if !value.is_empty() => fields.stat = Some(value.to_ascii_uppercase()),
                "err" if !value.is_empty() && value.bytes().any(|digit| digit != b'0') => {
                    fields.err = Some(value.to_string())
                }
                // The rest is the start of the message's own text, which may contain anything.
                "text" => break,
                _ => {}
            }
        }
        fields
    }
}

/// The receipt state for a `message_state` TLV value (SMPP 3.4, 5.2.28).
pub(crate) fn state_name(message_state: u8) -> &'static str {
    match message_state {
        // SMPP 5.0 values an SMSC may send anyway.
        0 => "SCHEDULED",
        1 => "ENROUTE",
        2 => "DELIVERED",
        3 => "EXPIRED",
        4 => "DELETED",
        5 => "UNDELIVERABLE",
        6 => "ACCEPTED",
        7 => "UNKNOWN",
        8 => "REJECTED",
        9 => "SKIPPED",
        _ => "UNKNOWN",
    }
}

/// The receipt state for the `stat:` field of a receipt text.
pub(crate) fn stat_name(stat: &str) -> &'static str {
    match stat {
        "DELIVRD" => "DELIVERED",
        "UNDELIV" => "UNDELIVERABLE",
        "EXPIRED" => "EXPIRED",
        "DELETED" => "DELETED",
        "ACCEPTD" => "ACCEPTED",
        "REJECTD" => "REJECTED",
        "ENROUTE" => "ENROUTE",
        "UNKNOWN" => "UNKNOWN",
        _ => "UNKNOWN",
    }
}

/// The sender as E.164 (`+` and digits) when it is an international number: the SMSC says
/// so with TON 1, or the address already carries `+` or `00`, or it is a long digit string
/// without a national trunk prefix. Anything else (short codes, national numbers,
/// alphanumeric senders) stays as the SMSC gave it.
pub(crate) fn normalise_sender(address: &str, ton: u8) -> String {
    let address = address.trim();
    let digits = address
        .strip_prefix('+')
        .or_else(|| address.strip_prefix("00"))
        .unwrap_or(address);
    let all_digits = !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit());
    if !all_digits {
        return address.to_string();
    }
    let explicitly_international = ton == TON_INTERNATIONAL || digits.len() != address.len();
    let looks_international =
        ton == 0 && digits.len() >= INTERNATIONAL_DIGITS_MIN && !digits.starts_with('0');
    if explicitly_international || looks_international {
        format!("+{digits}")
    } else {
        address.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_texts_yield_id_state_and_error() {
        let fields = ReceiptText::parse(
            "id:0A1B2C3D sub:001 dlvrd:001 submit date:2405011200 done date:2405011201 \
             stat:UNDELIV err:034 text:stat:DELIVRD id:nonsense",
        );
        assert_eq!(fields.id.as_deref(), Some("0A1B2C3D"));
        assert_eq!(fields.stat.as_deref(), Some("UNDELIV"));
        assert_eq!(fields.err.as_deref(), Some("034"));
        assert_eq!(stat_name("UNDELIV"), "UNDELIVERABLE");
    }

    #[test]
    fn a_zero_error_code_is_no_error() {
        let fields = ReceiptText::parse("id:12345 stat:DELIVRD err:000");
        assert_eq!(fields.err, None);
        assert_eq!(stat_name(fields.stat.as_deref().unwrap()), "DELIVERED");
    }

    #[test]
    fn message_states_have_their_smpp_names() {
        let names: Vec<&str> = (1..=8).map(state_name).collect();
        assert_eq!(
            names,
            [
                "ENROUTE",
                "DELIVERED",
                "EXPIRED",
                "DELETED",
                "UNDELIVERABLE",
                "ACCEPTED",
                "UNKNOWN",
                "REJECTED"
            ]
        );
    }

    #[test]
    fn international_senders_become_e164_and_others_stay_as_they_are() {
        assert_eq!(normalise_sender("491701234567", 1), "+491701234567");
        assert_eq!(normalise_sender("+491701234567", 0), "+491701234567");
        assert_eq!(normalise_sender("00491701234567", 2), "+491701234567");
        assert_eq!(normalise_sender("491701234567", 0), "+491701234567");
        assert_eq!(normalise_sender("01701234567", 0), "01701234567");
        assert_eq!(normalise_sender("01701234567", 2), "01701234567");
        assert_eq!(normalise_sender("12345", 0), "12345");
        assert_eq!(normalise_sender("PayStep", 5), "PayStep");
    }
}
