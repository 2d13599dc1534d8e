//! VoiceXML 2.1, written with quick-xml: what a VoiceXML platform does next in a call.
//!
//! Every document is one `<form>`. An ask is a `<field>` gathering digits (up to `#`, or one
//! key) with its `<prompt>`, a `<filled>` that submits them, and `<noinput>`/`<nomatch>`
//! handlers that submit an empty answer, so that paystep decides what silence means. An end
//! is a `<block>` that speaks and exits.

use std::io;

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

use super::twiml::voice_language;
use crate::CallStep;

const VXML_NAMESPACE: &str = "http://www.w3.org/2001/vxml";

pub fn render(step: &CallStep) -> io::Result<Vec<u8>> {
    let (language, body) = match step {
        CallStep::Ask { language, .. }
        | CallStep::End { language, .. }
        | CallStep::Record { language, .. } => (voice_language(language), step),
    };
    let mut writer = Writer::new(Vec::new());
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    writer
        .create_element("vxml")
        .with_attribute(("version", "2.1"))
        .with_attribute(("xmlns", VXML_NAMESPACE))
        .with_attribute(("xml:lang", language))
        .write_inner_content(|writer| {
            writer
                .create_element("form")
                .with_attribute(("id", "step"))
                .write_inner_content(|writer| form(writer, body))?;
            Ok(())
        })?;
    Ok(writer.into_inner())
}

fn form(writer: &mut Writer<Vec<u8>>, step: &CallStep) -> io::Result<()> {
    match step {
        CallStep::Ask {
            text,
            answer_url,
            one_key,
            ..
        } => {
            let grammar = if *one_key {
                "builtin:dtmf/digits?length=1"
            } else {
                "builtin:dtmf/digits?minlength=1;maxlength=12"
            };
            writer
                .create_element("field")
                .with_attribute(("name", "digits"))
                .write_inner_content(|writer| {
                    writer
                        .create_element("grammar")
                        .with_attribute(("src", grammar))
                        .with_attribute(("mode", "dtmf"))
                        .write_empty()?;
                    writer
                        .create_element("property")
                        .with_attribute(("name", "termchar"))
                        .with_attribute(("value", "#"))
                        .write_empty()?;
                    prompt(writer, text)?;
                    // Silence and a wrong key are answered as nothing keyed: paystep asks
                    // again once, then ends the call.
                    for handler in ["noinput", "nomatch"] {
                        writer
                            .create_element(handler)
                            .write_inner_content(|writer| {
                                writer
                                    .create_element("assign")
                                    .with_attribute(("name", "digits"))
                                    .with_attribute(("expr", "''"))
                                    .write_empty()?;
                                submit(writer, answer_url)
                            })?;
                    }
                    writer
                        .create_element("filled")
                        .write_inner_content(|writer| submit(writer, answer_url))?;
                    Ok(())
                })?;
        }
        CallStep::End { text, .. } | CallStep::Record { text, .. } => {
            writer
                .create_element("block")
                .write_inner_content(|writer| {
                    prompt(writer, text)?;
                    writer.create_element("exit").write_empty()?;
                    Ok(())
                })?;
        }
    }
    Ok(())
}

fn prompt(writer: &mut Writer<Vec<u8>>, text: &str) -> io::Result<()> {
    writer
        .create_element("prompt")
        .write_text_content(BytesText::new(text))?;
    Ok(())
}

fn submit(writer: &mut Writer<Vec<u8>>, url: &str) -> io::Result<()> {
    writer
        .create_element("submit")
        .with_attribute(("next", url))
        .with_attribute(("method", "post"))
        .with_attribute(("namelist", "digits"))
        .write_empty()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ask_is_a_field_that_submits_its_digits() {
        let document = String::from_utf8(
            render(&CallStep::Ask {
                text: "Bitte geben Sie Ihre PIN ein.".into(),
                language: "de".into(),
                answer_url: "https://pay.example/voice/vxml/calls/m1/answer/t?x=1&y=2".into(),
                one_key: false,
                no_input: "Auf Wiederhören.".into(),
            })
            .unwrap(),
        )
        .unwrap();
        assert!(document.starts_with(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><vxml version=\"2.1\" \
             xmlns=\"http://www.w3.org/2001/vxml\" xml:lang=\"de-DE\"><form id=\"step\"><field name=\"digits\">"
        ), "{document}");
        assert!(document.contains(
            "<filled><submit next=\"https://pay.example/voice/vxml/calls/m1/answer/t?x=1&amp;y=2\" \
             method=\"post\" namelist=\"digits\"/></filled>"
        ), "{document}");
        assert!(
            document.contains("<noinput><assign name=\"digits\" expr=\"&apos;&apos;\"/><submit")
        );
    }

    #[test]
    fn an_end_speaks_and_exits() {
        let document = String::from_utf8(
            render(&CallStep::End {
                text: "Goodbye.".into(),
                language: "en".into(),
            })
            .unwrap(),
        )
        .unwrap();
        assert!(document.ends_with(
            "<form id=\"step\"><block><prompt>Goodbye.</prompt><exit/></block></form></vxml>"
        ));
    }
}
