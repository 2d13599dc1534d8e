//! TwiML, written with quick-xml: what a Twilio-compatible platform does next in a call.

use std::io;

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

use crate::CallStep;

/// How long the platform waits for the first key, in seconds.
const GATHER_TIMEOUT_S: &str = "8";

/// The voice's language tag for a message language.
pub fn voice_language(language: &str) -> &'static str {
    match language {
        "de" => "de-DE",
        _ => "en-GB",
    }
}

pub fn render(step: &CallStep) -> io::Result<Vec<u8>> {
    let mut writer = Writer::new(Vec::new());
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    writer
        .create_element("Response")
        .write_inner_content(|writer| {
            match step {
                CallStep::Ask {
                    text,
                    language,
                    answer_url,
                    one_key,
                    no_input,
                } => {
                    let language = voice_language(language);
                    let mut gather = writer
                        .create_element("Gather")
                        .with_attribute(("input", "dtmf"))
                        .with_attribute(("finishOnKey", "#"))
                        .with_attribute(("action", answer_url.as_str()))
                        .with_attribute(("method", "POST"))
                        .with_attribute(("timeout", GATHER_TIMEOUT_S))
                        // Silence is posted too, so that paystep decides to ask again.
                        .with_attribute(("actionOnEmptyResult", "true"));
                    if *one_key {
                        gather = gather.with_attribute(("numDigits", "1"));
                    }
                    // Inside the Gather, so that a caller who knows the prompt may key at once.
                    gather.write_inner_content(|writer| say(writer, text, language))?;
                    // Platforms that ignore actionOnEmptyResult go on here.
                    say(writer, no_input, language)?;
                    writer.create_element("Hangup").write_empty()?;
                }
                CallStep::Record {
                    text,
                    language,
                    recording_url,
                    max_length_s,
                } => {
                    let language = voice_language(language);
                    say(writer, text, language)?;
                    writer
                        .create_element("Record")
                        .with_attribute(("action", recording_url.as_str()))
                        .with_attribute(("method", "POST"))
                        .with_attribute(("maxLength", max_length_s.to_string().as_str()))
                        .with_attribute(("playBeep", "true"))
                        .with_attribute(("finishOnKey", "#"))
                        .write_empty()?;
                    writer.create_element("Hangup").write_empty()?;
                }
                CallStep::End { text, language } => {
                    say(writer, text, voice_language(language))?;
                    writer.create_element("Hangup").write_empty()?;
                }
            }
            Ok(())
        })?;
    Ok(writer.into_inner())
}

fn say(writer: &mut Writer<Vec<u8>>, text: &str, language: &str) -> io::Result<()> {
    writer
        .create_element("Say")
        .with_attribute(("language", language))
        .write_text_content(BytesText::new(text))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ask_gathers_keys_up_to_hash_and_posts_them() {
        let twiml = String::from_utf8(
            render(&CallStep::Ask {
                text: "Garage Nord & Co asks you to release twelve euros fifty.".into(),
                language: "en".into(),
                answer_url: "https://pay.example/voice/twiml/calls/m1/answer?a=1&b=2".into(),
                one_key: false,
                no_input: "Goodbye.".into(),
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            twiml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>\
             <Gather input=\"dtmf\" finishOnKey=\"#\" \
             action=\"https://pay.example/voice/twiml/calls/m1/answer?a=1&amp;b=2\" method=\"POST\" \
             timeout=\"8\" actionOnEmptyResult=\"true\">\
             <Say language=\"en-GB\">Garage Nord &amp; Co asks you to release twelve euros fifty.</Say>\
             </Gather><Say language=\"en-GB\">Goodbye.</Say><Hangup/></Response>"
        );
    }

    #[test]
    fn an_end_says_and_hangs_up() {
        let twiml = String::from_utf8(
            render(&CallStep::End {
                text: "Freigegeben.".into(),
                language: "de".into(),
            })
            .unwrap(),
        )
        .unwrap();
        assert!(twiml
            .ends_with("<Response><Say language=\"de-DE\">Freigegeben.</Say><Hangup/></Response>"));
    }
}
