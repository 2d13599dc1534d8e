//! PAP 2.0 (WAP-247-PAP): the push-message control document, the Service Indication
//! (WAP-167-ServiceInd) it carries, the `multipart/related` body around both, and the PPG's
//! answer. Documents are written and read with quick-xml, never pasted together.

use std::io;

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::{Reader, Writer};

const PAP_DOCTYPE: &str =
    r#"pap PUBLIC "-//WAPFORUM//DTD PAP 2.0//EN" "http://www.wapforum.org/DTD/pap_2.0.dtd""#;
const SI_DOCTYPE: &str =
    r#"si PUBLIC "-//WAPFORUM//DTD SI 1.0//EN" "http://www.wapforum.org/DTD/si.dtd""#;

/// One push: where it goes and what the Service Indication says.
#[derive(Debug, Clone)]
pub struct Push<'a> {
    pub push_id: &'a str,
    /// `WAPPUSH=+4917.../TYPE=PLMN@ppg.example`.
    pub address: &'a str,
    pub si_id: &'a str,
    pub href: &'a str,
    pub text: &'a str,
    /// `YYYY-MM-DDThh:mm:ssZ`, as SI and PAP want their dates.
    pub created: &'a str,
    pub expires: Option<&'a str>,
    pub application_id: &'a str,
    /// Where the PPG posts its result notification, if we ask for one.
    pub notify_url: Option<&'a str>,
}

/// The PAP control document.
pub fn control_document(push: &Push<'_>) -> io::Result<Vec<u8>> {
    let mut writer = Writer::new(Vec::new());
    writer.write_event(Event::Decl(BytesDecl::new("1.0", None, None)))?;
    writer.write_event(Event::DocType(BytesText::from_escaped(PAP_DOCTYPE)))?;
    writer.create_element("pap").write_inner_content(|writer| {
        let mut message = writer
            .create_element("push-message")
            .with_attribute(("push-id", push.push_id));
        // The PPG drops the push once the request it carries has expired.
        if let Some(expires) = push.expires {
            message = message.with_attribute(("deliver-before-timestamp", expires));
        }
        if let Some(notify_url) = push.notify_url {
            message = message.with_attribute(("ppg-notify-requested-to", notify_url));
        }
        message.write_inner_content(|writer| {
            writer
                .create_element("address")
                .with_attribute(("address-value", push.address))
                .write_empty()?;
            writer
                .create_element("quality-of-service")
                .with_attribute(("delivery-method", "unconfirmed"))
                .write_empty()?;
            Ok(())
        })?;
        Ok(())
    })?;
    Ok(writer.into_inner())
}

/// The Service Indication (`text/vnd.wap.si`), which the PPG tokenises to WBXML. UTF-8 is
/// declared twice (here and in the part's `charset`): without it Kannel encodes non-ASCII
/// text a second time.
pub fn service_indication(push: &Push<'_>) -> io::Result<Vec<u8>> {
    let mut writer = Writer::new(Vec::new());
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    writer.write_event(Event::DocType(BytesText::from_escaped(SI_DOCTYPE)))?;
    writer.create_element("si").write_inner_content(|writer| {
        let mut indication = writer
            .create_element("indication")
            .with_attribute(("href", push.href))
            .with_attribute(("si-id", push.si_id))
            // A confirmation request waits for the customer: the handset should say so.
            .with_attribute(("action", "signal-high"))
            .with_attribute(("created", push.created));
        if let Some(expires) = push.expires {
            indication = indication.with_attribute(("si-expires", expires));
        }
        indication.write_text_content(BytesText::new(push.text))?;
        Ok(())
    })?;
    Ok(writer.into_inner())
}

/// A `multipart/related` body: the control document, then the content. Returns the body and
/// its `Content-Type`.
pub fn push_body(push: &Push<'_>) -> io::Result<(Vec<u8>, String)> {
    let control = control_document(push)?;
    let content = service_indication(push)?;
    // The boundary must occur in neither part; the message's id makes it unique, and the
    // check below makes sure.
    let boundary = format!("paystep-push-{}", push.push_id.replace(['@', '"'], "-"));
    let marker = format!("--{boundary}");
    let contains = |part: &[u8]| {
        part.windows(marker.len())
            .any(|window| window == marker.as_bytes())
    };
    if contains(&control) || contains(&content) {
        return Err(io::Error::other(
            "the push's boundary occurs in its content",
        ));
    }
    let mut body = Vec::with_capacity(control.len() + content.len() + 256);
    body.extend_from_slice(format!("{marker}\r\nContent-Type: application/xml\r\n\r\n").as_bytes());
    body.extend_from_slice(&control);
    body.extend_from_slice(
        format!(
            "\r\n{marker}\r\nContent-Type: text/vnd.wap.si; charset=utf-8\r\n\
             X-Wap-Application-Id: {}\r\n\r\n",
            push.application_id
        )
        .as_bytes(),
    );
    body.extend_from_slice(&content);
    body.extend_from_slice(format!("\r\n{marker}--\r\n").as_bytes());
    let content_type = format!("multipart/related; boundary={boundary}; type=\"application/xml\"");
    Ok((body, content_type))
}

/// The PPG's verdict on a push: the PAP code and its description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PapResult {
    pub code: u16,
    pub description: Option<String>,
}

/// Reads the code of a `push-response` (`<response-result code=... desc=...>`) or a
/// `badmessage-response` (`code=... desc=...`); `None` if the answer carries neither.
pub fn parse_response(body: &str) -> Option<PapResult> {
    let mut reader = Reader::from_str(body);
    loop {
        match reader.read_event().ok()? {
            Event::Start(element) | Event::Empty(element) => {
                let name = element.name();
                if name.as_ref() != b"response-result" && name.as_ref() != b"badmessage-response" {
                    continue;
                }
                let attribute = |key: &str| {
                    element
                        .try_get_attribute(key)
                        .ok()
                        .flatten()
                        .and_then(|value| value.unescape_value().ok())
                        .map(|value| value.trim().to_string())
                };
                let code = attribute("code")?.parse().ok()?;
                return Some(PapResult {
                    code,
                    description: attribute("desc"),
                });
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// What a PAP code means for the push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Retriable,
    Permanent,
}

/// Every code is named, so that a new one is classed on purpose (PAP 2.0, section 9.13).
pub fn classify(code: u16) -> Verdict {
    match code {
        // 1000 OK, 1001 accepted for processing.
        1000 | 1001 => Verdict::Accepted,
        // 2007 duplicate push id: the PPG already holds this push, from an attempt whose
        // answer we lost. Sending it again would be the duplicate.
        2007 => Verdict::Accepted,
        // 2000 bad request, 2001 forbidden, 2002 address error, 2003 address not found,
        // 2004 push id not found, 2005/2006 capabilities, 2008 cancellation not possible:
        // the push as written will never pass.
        2000..=2006 | 2008..=2999 => Verdict::Permanent,
        // 3xxx server failures (3000 internal error, 3009 network not available, ...) and
        // 4xxx service failures (4000 service failure, 4001 service unavailable): later.
        3000..=4999 => Verdict::Retriable,
        // Not a PAP result code: keep the message and try again rather than lose it.
        0..=999 | 1002..=1999 | 5000..=u16::MAX => Verdict::Retriable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push() -> Push<'static> {
        Push {
            push_id: "7d1c2a52@paystep",
            address: "WAPPUSH=+491701234567/TYPE=PLMN@ppg.example",
            si_id: "7d1c2a52",
            href: "https://pay.example.com/c/abc?t=x&y=<z>",
            text: "Café & Co: EUR 12.50 <ABC123>",
            created: "2026-12-02T10:00:00Z",
            expires: Some("2026-12-02T10:15:00Z"),
            application_id: "x-wap-application:wml.ua",
            notify_url: None,
        }
    }

    #[test]
    fn the_si_escapes_what_it_carries() {
        let si = String::from_utf8(service_indication(&push()).unwrap()).unwrap();
        assert!(
            si.contains(r#"href="https://pay.example.com/c/abc?t=x&amp;y=&lt;z&gt;""#),
            "{si}"
        );
        assert!(
            si.contains("Café &amp; Co: EUR 12.50 &lt;ABC123&gt;</indication>"),
            "{si}"
        );
        assert!(si.contains(r#"si-expires="2026-12-02T10:15:00Z""#));
        assert!(si.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><!DOCTYPE si PUBLIC"));
    }

    #[test]
    fn the_body_has_both_parts_and_the_application_id_inside_the_content_part() {
        let (body, content_type) = push_body(&push()).unwrap();
        let body = String::from_utf8(body).unwrap();
        let boundary = content_type
            .split("boundary=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        let parts: Vec<&str> = body.split(&format!("--{boundary}")).collect();
        assert_eq!(parts.len(), 4, "{body}");
        assert!(parts[1].contains("<push-message push-id=\"7d1c2a52@paystep\""));
        assert!(parts[1].contains("address-value=\"WAPPUSH=+491701234567/TYPE=PLMN@ppg.example\""));
        assert!(parts[2].contains(
            "Content-Type: text/vnd.wap.si; charset=utf-8\r\nX-Wap-Application-Id: x-wap-application:wml.ua"
        ));
        assert_eq!(parts[3], "--\r\n");
    }

    #[test]
    fn responses_are_read() {
        let accepted = r#"<?xml version="1.0"?>
<!DOCTYPE pap PUBLIC "-//WAPFORUM//DTD PAP 1.0//EN" "http://www.wapforum.org/DTD/pap_1.0.dtd">
<pap><push-response push-id="x@paystep"><response-result code="1001" desc="The request has been accepted for processing"></response-result></push-response></pap>"#;
        assert_eq!(
            parse_response(accepted),
            Some(PapResult {
                code: 1001,
                description: Some("The request has been accepted for processing".into())
            })
        );
        // Kannel 1.4.5's answer verbatim: a PAP 1.0 DOCTYPE, and a space before `=`.
        let kannel = r#"<?xml version="1.0"?><!DOCTYPE pap PUBLIC "-//WAPFORUM//DTD PAP 1.0//EN" "http://www.wapforum.org/DTD/pap_1.0.dtd"><pap><push-response push-id="paystep-0001" sender-name="vm; WAP/1.3 (Kannel/1.4.5)" reply-time="2026-12-02T14:01:52Z" sender-address="/wappush"><response-result code ="1001" desc="The request has been accepted for processing"></response-result></push-response></pap>"#;
        assert_eq!(parse_response(kannel).map(|result| result.code), Some(1001));
        let bad = r#"<pap><badmessage-response code="2000" desc="Bad request"/></pap>"#;
        assert_eq!(parse_response(bad).map(|result| result.code), Some(2000));
        assert_eq!(parse_response("not xml <<<"), None);
        assert_eq!(parse_response(""), None);
    }

    #[test]
    fn codes_are_classed() {
        for (code, verdict) in [
            (1000, Verdict::Accepted),
            (1001, Verdict::Accepted),
            (2007, Verdict::Accepted),
            (2000, Verdict::Permanent),
            (2002, Verdict::Permanent),
            (2999, Verdict::Permanent),
            (3000, Verdict::Retriable),
            (3009, Verdict::Retriable),
            (4001, Verdict::Retriable),
            (200, Verdict::Retriable),
            (1500, Verdict::Retriable),
            (9999, Verdict::Retriable),
        ] {
            assert_eq!(classify(code), verdict, "{code}");
        }
    }
}

/// Fuzz targets (bolero): under `cargo test` each runs a bounded number of random inputs;
/// `scripts/fuzz.sh` runs them coverage-guided for as long as asked.
#[cfg(test)]
mod fuzz_tests {
    use super::*;

    /// A PPG's answer written with a real XML writer, so that its attributes arrive escaped
    /// as a PPG would send them.
    #[derive(Debug, bolero::TypeGenerator)]
    struct Answer {
        /// 0: push-response, 1: badmessage-response, else some other element.
        kind: u8,
        code: Option<u16>,
        code_text: String,
        desc: Option<String>,
    }

    impl Answer {
        fn code(&self) -> String {
            match self.code {
                Some(code) => format!(" {code} "),
                None => self.code_text.clone(),
            }
        }

        fn document(&self) -> Vec<u8> {
            let code = self.code();
            let mut writer = Writer::new(Vec::new());
            let result = writer.create_element("pap").write_inner_content(|writer| {
                let name = match self.kind % 3 {
                    0 => "response-result",
                    1 => "badmessage-response",
                    _ => "push-message",
                };
                let mut element = writer
                    .create_element(name)
                    .with_attribute(("code", code.as_str()));
                if let Some(desc) = &self.desc {
                    element = element.with_attribute(("desc", desc.as_str()));
                }
                element.write_empty()?;
                Ok(())
            });
            result.expect("writing to memory cannot fail");
            writer.into_inner()
        }
    }

    #[test]
    fn any_ppg_answer_is_read_without_panic_and_codes_are_what_it_says() {
        bolero::check!()
            .with_type::<(Vec<u8>, Answer)>()
            .with_iterations(3_000)
            .for_each(|(octets, answer)| {
                // The channel reads the answer as lossy UTF-8 (`http_body::read_bounded`).
                if let Some(result) = parse_response(&String::from_utf8_lossy(octets)) {
                    classify(result.code);
                }
                let document = String::from_utf8(answer.document()).expect("written as UTF-8");
                let result = parse_response(&document);
                let code = answer.code().trim().parse::<u16>().ok();
                if answer.kind % 3 == 2 || code.is_none() {
                    assert_eq!(result, None, "{document}");
                } else {
                    let desc = answer.desc.as_deref().map(str::trim).map(str::to_string);
                    assert_eq!(
                        result,
                        code.map(|code| PapResult {
                            code,
                            description: desc
                        }),
                        "{document}"
                    );
                }
            });
    }
}
