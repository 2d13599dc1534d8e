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

/// Fuzz targets (bolero) for the path a received PDU takes: the bytes framed and decoded
/// with the codec rusmppc reads SMSCs with, then `read_deliver_sm`. Under `cargo test` each
/// runs a bounded number of random inputs; `scripts/fuzz.sh` runs them coverage-guided.
#[cfg(test)]
mod fuzz_tests {
    use rusmpp::tokio_codec::CommandCodec;
    use rusmpp::Pdu;
    use tokio_util::bytes::BytesMut;
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::sms::encoding::{decode_text, strip_udh};
    use crate::sms::link::COMMAND_LENGTH_MAX;

    const DELIVER_SM: u32 = 0x0000_0005;
    const HEADER_OCTETS: usize = 16;
    const TAG_RECEIPTED_MESSAGE_ID: u16 = 0x001E;
    const TAG_MESSAGE_PAYLOAD: u16 = 0x0424;
    const TAG_MESSAGE_STATE: u16 = 0x0427;
    const STATES: &[&str] = &[
        "SCHEDULED",
        "ENROUTE",
        "DELIVERED",
        "EXPIRED",
        "DELETED",
        "UNDELIVERABLE",
        "ACCEPTED",
        "UNKNOWN",
        "REJECTED",
        "SKIPPED",
    ];
    const STATS: &[&str] = &[
        "DELIVRD", "UNDELIV", "EXPIRED", "DELETED", "ACCEPTD", "REJECTD", "ENROUTE", "UNKNOWN",
        "delivrd", "BOGUS",
    ];

    /// Reads `bytes` as a link does: rusmppc frames them with rusmpp's codec, at most
    /// `COMMAND_LENGTH_MAX` octets a PDU, and hands each deliver_sm to `read_deliver_sm`.
    /// The first error ends the session, as it does in rusmppc.
    fn receive(bytes: &[u8]) -> Vec<(DeliverSm, Received)> {
        let mut codec = CommandCodec::new().with_max_length(COMMAND_LENGTH_MAX);
        let mut buffer = BytesMut::from(bytes);
        let mut read = Vec::new();
        // Every PDU takes at least its header; the bound only makes that visible.
        for _ in 0..=bytes.len() / HEADER_OCTETS {
            let Ok(Some(command)) = codec.decode(&mut buffer) else {
                break;
            };
            if let Some(Pdu::DeliverSm(deliver_sm)) = command.pdu() {
                let received = read_deliver_sm(deliver_sm);
                check(deliver_sm, &received);
                read.push((deliver_sm.clone(), received));
            }
        }
        read
    }

    fn sender(message: &InboundMessage) -> Option<&str> {
        match message {
            InboundMessage::Approve { from, .. }
            | InboundMessage::Decline { from, .. }
            | InboundMessage::Pay { from, .. }
            | InboundMessage::Balance { from, .. }
            | InboundMessage::Unrecognized { from, .. } => Some(from),
            InboundMessage::DeliveryReceipt { .. } => None,
        }
    }

    /// What holds for every deliver_sm, whatever it carries.
    fn check(deliver: &DeliverSm, received: &Received) {
        let esm_class = u8::from(deliver.esm_class);
        let is_receipt = esm_class & ESM_CLASS_MESSAGE_TYPE_MASK == ESM_CLASS_DELIVERY_RECEIPT;
        match received {
            Received::Unusable(_) => assert!(is_receipt, "only a receipt can be unusable"),
            Received::Message(InboundMessage::DeliveryReceipt {
                channel,
                remote_id,
                state,
                error,
            }) => {
                assert!(is_receipt);
                assert_eq!(*channel, ChannelName::Sms);
                assert!(!remote_id.is_empty());
                assert!(STATES.contains(&state.as_str()), "{state}");
                if let Some(error) = error {
                    assert!(error.bytes().any(|digit| digit != b'0'), "{error:?}");
                }
            }
            Received::Message(message) => {
                assert!(!is_receipt);
                let from = normalise_sender(
                    deliver.source_addr.as_str(),
                    u8::from(deliver.source_addr_ton),
                );
                assert_eq!(sender(message), Some(from.as_str()));
            }
        }
    }

    /// A C-Octet String of at most `max_octets` with its NUL: printable ASCII, as SMPP
    /// says addresses and ids are.
    fn c_octet_string(bytes: &[u8], max_octets: usize) -> Vec<u8> {
        let mut octets: Vec<u8> = bytes
            .iter()
            .map(|&byte| b' ' + byte % 95)
            .take(max_octets - 1)
            .collect();
        octets.push(0);
        octets
    }

    fn tlv(tag: u16, value: &[u8]) -> Vec<u8> {
        let mut octets = tag.to_be_bytes().to_vec();
        octets.extend_from_slice(&(value.len() as u16).to_be_bytes());
        octets.extend_from_slice(value);
        octets
    }

    fn pdu(body: &[u8]) -> Vec<u8> {
        let mut octets = ((HEADER_OCTETS + body.len()) as u32).to_be_bytes().to_vec();
        octets.extend_from_slice(&DELIVER_SM.to_be_bytes());
        octets.extend_from_slice(&0u32.to_be_bytes());
        octets.extend_from_slice(&1u32.to_be_bytes());
        octets.extend_from_slice(body);
        octets
    }

    /// A delivery receipt's text in the format of SMPP 3.4 Appendix B.
    #[derive(Debug, bolero::TypeGenerator)]
    struct ReceiptFields {
        id: Vec<u8>,
        stat: u8,
        err: u16,
        text: Vec<u8>,
    }

    /// The fields of a deliver_sm that the channel reads; the rest are fixed.
    #[derive(Debug, bolero::TypeGenerator)]
    struct DeliverFields {
        source_addr_ton: u8,
        source_addr: Vec<u8>,
        esm_class: u8,
        data_coding: u8,
        short_message: Vec<u8>,
        receipt_text: Option<ReceiptFields>,
        message_payload: Option<Vec<u8>>,
        receipted_message_id: Option<Vec<u8>>,
        message_state: Option<u8>,
    }

    impl DeliverFields {
        fn short_message(&self) -> Vec<u8> {
            let mut octets = match &self.receipt_text {
                Some(receipt) => {
                    let id: String = receipt
                        .id
                        .iter()
                        .map(|&byte| char::from(b'!' + byte % 94))
                        .collect();
                    let text: String = receipt
                        .text
                        .iter()
                        .map(|&byte| char::from(b' ' + byte % 95))
                        .collect();
                    format!(
                        "id:{id} sub:001 dlvrd:001 submit date:2405011200 done date:2405011201 \
                         stat:{} err:{:03} text:{text}",
                        STATS[usize::from(receipt.stat) % STATS.len()],
                        receipt.err % 1000
                    )
                    .into_bytes()
                }
                None => self.short_message.clone(),
            };
            octets.truncate(usize::from(u8::MAX));
            octets
        }

        /// The PDU as an SMSC sends it (SMPP 3.4, 4.6.1).
        fn encode(&self) -> Vec<u8> {
            let short_message = self.short_message();
            let mut body = vec![0, self.source_addr_ton, 1];
            body.extend(c_octet_string(&self.source_addr, 21));
            body.extend([1, 1]);
            body.extend(c_octet_string(b"491700000000", 21));
            // esm_class, protocol_id, priority_flag, no schedule, no validity,
            // registered_delivery, replace_if_present_flag, data_coding, sm_default_msg_id.
            body.extend([self.esm_class, 0, 0, 0, 0, 0, 0, self.data_coding, 0]);
            body.push(short_message.len() as u8);
            body.extend(&short_message);
            if let Some(payload) = &self.message_payload {
                body.extend(tlv(
                    TAG_MESSAGE_PAYLOAD,
                    &payload[..payload.len().min(1024)],
                ));
            }
            if let Some(id) = &self.receipted_message_id {
                body.extend(tlv(TAG_RECEIPTED_MESSAGE_ID, &c_octet_string(id, 65)));
            }
            if let Some(state) = self.message_state {
                body.extend(tlv(TAG_MESSAGE_STATE, &[state]));
            }
            pdu(&body)
        }
    }

    #[test]
    fn any_octets_from_an_smsc_are_read_without_panic() {
        bolero::check!()
            .with_type::<Vec<u8>>()
            .with_iterations(3_000)
            .for_each(|octets| {
                receive(octets);
                // The same octets as the body of a deliver_sm, so that random inputs get
                // past the header.
                receive(&pdu(octets));
            });
    }

    #[test]
    fn every_well_formed_deliver_sm_reaches_the_grammar_or_the_receipts() {
        bolero::check!()
            .with_type::<DeliverFields>()
            .with_iterations(2_000)
            .for_each(|fields| {
                let octets = fields.encode();
                let read = receive(&octets);
                // A PDU the codec refuses ends the session, and the SMSC sends it again
                // after the reconnect: every well-formed one must be read.
                let [(deliver, received)] = read.as_slice() else {
                    panic!("the deliver_sm was not read: {} octets", octets.len());
                };
                let short_message = fields.short_message();
                let esm_class = u8::from(deliver.esm_class);
                let octets = match (&fields.message_payload, short_message.is_empty()) {
                    (Some(payload), true) => &payload[..payload.len().min(1024)],
                    _ => &short_message[..],
                };
                let text = decode_text(fields.data_coding, strip_udh(octets, esm_class));
                match received {
                    Received::Message(InboundMessage::DeliveryReceipt { remote_id, .. }) => {
                        let tlv_id = fields
                            .receipted_message_id
                            .as_deref()
                            .map(|id| c_octet_string(id, 65))
                            .filter(|id| id.len() > 1);
                        if let Some(id) = tlv_id {
                            assert_eq!(remote_id.as_bytes(), &id[..id.len() - 1]);
                        } else {
                            assert_eq!(Some(remote_id), ReceiptText::parse(&text).id.as_ref());
                        }
                    }
                    Received::Message(message) => {
                        let from = sender(message).unwrap_or_default();
                        assert_eq!(message, &grammar::parse(from, &text));
                    }
                    Received::Unusable(_) => {
                        assert_eq!(ReceiptText::parse(&text).id, None);
                    }
                }
            });
    }

    #[test]
    fn receipt_texts_and_sender_addresses_are_read_without_panic() {
        bolero::check!()
            .with_type::<(String, String, u8)>()
            .with_iterations(3_000)
            .for_each(|(text, address, ton)| {
                let fields = ReceiptText::parse(text);
                for value in [&fields.id, &fields.stat, &fields.err]
                    .into_iter()
                    .flatten()
                {
                    assert!(!value.is_empty() && !value.contains(char::is_whitespace));
                }
                if let Some(stat) = &fields.stat {
                    assert!(!stat.bytes().any(|byte| byte.is_ascii_lowercase()));
                    assert!(STATES.contains(&stat_name(stat)));
                }
                if let Some(err) = &fields.err {
                    assert!(err.bytes().any(|digit| digit != b'0'));
                }
                let sender = normalise_sender(address, *ton);
                // Either as the SMSC gave it, or E.164: `+` and the number's digits.
                if sender != address.trim() {
                    let digits = sender.strip_prefix('+').expect("E.164 starts with +");
                    assert!(!digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()));
                    assert!(address.trim().ends_with(digits));
                }
            });
    }
}
