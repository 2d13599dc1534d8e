//! `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, the full URL followed by every POST
//! field's name and value, sorted by name)).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

pub fn twilio_signature(auth_token: &str, url: &str, fields: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = fields.iter().collect();
    sorted.sort();
    let mut mac =
        Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_value_from_the_twilio_package() {
        let fields: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "4321"),
            ("From", "+447700900123"),
            ("To", "+441234567890"),
            ("AccountSid", "ACxxxx"),
        ]
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
        assert_eq!(
            twilio_signature(
                "12345",
                "https://gw.example.com/voice/gather?req=8842",
                &fields
            ),
            "SQWIrzEdd0jqFr8oX3PwSZbK/zk="
        );
    }
}
