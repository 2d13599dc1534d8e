//! Free text from retailers and the operator (descriptions, references, names): data that
//! reaches customers' phones, never part of the message around it. It is bounded, and
//! refused when it holds characters that could make it look like something else: control
//! characters (a line break could start a fake second message), bidirectional overrides and
//! isolates (U+202E turns "99.00" into "00.99" on screen), and invisible characters
//! (zero-width spaces hide text, or split a word a reader would otherwise notice).

use super::FieldError;

/// Characters that change how the text around them looks, or do not show at all.
fn is_formatting_trick(c: char) -> bool {
    matches!(c,
        '\u{061C}'                  // Arabic letter mark
        | '\u{200B}'..='\u{200F}'   // zero-width space, (non-)joiners, LRM, RLM
        | '\u{2028}' | '\u{2029}'   // line and paragraph separators
        | '\u{202A}'..='\u{202E}'   // embeddings and overrides
        | '\u{2060}'..='\u{2069}'   // word joiner, invisible operators, isolates
        | '\u{FEFF}'                // zero-width no-break space
        | '\u{FFF9}'..='\u{FFFB}'   // interlinear annotations
    )
}

/// Trims `value` and checks it: at most `length_max` characters, none of them a control or
/// formatting character. An empty text is no text.
pub fn free_text(
    field: &'static str,
    value: Option<&str>,
    length_max: usize,
) -> Result<Option<String>, FieldError> {
    let Some(value) = value.map(str::trim) else {
        return Ok(None);
    };
    if value.chars().count() > length_max {
        return Err(FieldError::new(
            field,
            format!("must be at most {length_max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    if let Some(trick) = value.chars().find(|c| is_formatting_trick(*c)) {
        return Err(FieldError::new(
            field,
            format!(
                "must not contain invisible or text-direction characters (found U+{:04X})",
                u32::from(trick)
            ),
        ));
    }
    Ok((!value.is_empty()).then(|| value.to_string()))
}

/// Cuts `text` to at most `length_max` characters, marking the cut with "...", for a
/// message with a hard length (one SMS, a spoken prompt).
pub fn shortened(text: &str, length_max: usize) -> String {
    if text.chars().count() <= length_max {
        return text.to_string();
    }
    let kept: String = text.chars().take(length_max.saturating_sub(3)).collect();
    format!("{}...", kept.trim_end())
}

/// The retailer's text as customers see it: everything that looks like a link (a scheme,
/// `www.`, or a host name such as `evil-pay.com/c/x`, which phones make clickable) becomes
/// `[link]`, because the only link a customer is sent is the operator's own, built from
/// `http.public_url`; and double quotes become single ones, so that the text cannot close
/// the quotes it is shown in.
pub fn without_links(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars() {
        if is_link_char(c) {
            run.push(c);
            continue;
        }
        shown.push_str(&link_or_word(&run));
        run.clear();
        shown.push(if c == '"' { '\'' } else { c });
    }
    shown.push_str(&link_or_word(&run));
    shown
}

/// Characters a link is made of; anything else ends one.
fn is_link_char(c: char) -> bool {
    c.is_alphanumeric() || "-._~:/?#[]@!$&*+=%".contains(c)
}

/// `run`, or `[link]` (its trailing punctuation kept) if it looks like one.
fn link_or_word(run: &str) -> String {
    let trimmed = run.trim_end_matches(['.', ',', '!', '?', ':']);
    let tail = &run[trimmed.len()..];
    let lower = trimmed.to_lowercase();
    let host = lower.split(['/', '?', '#']).next().unwrap_or_default();
    let labels: Vec<&str> = host.split('.').collect();
    let top_level = labels.last().copied().unwrap_or_default();
    let looks_like_host = labels.len() >= 2
        && labels.iter().all(|label| !label.is_empty())
        && (2..=24).contains(&top_level.len())
        && top_level.chars().all(|c| c.is_ascii_alphabetic())
        && labels[0].chars().any(char::is_alphabetic);
    if lower.contains("://") || lower.starts_with("www.") || looks_like_host {
        format!("[link]{tail}")
    } else {
        run.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidirectional_and_invisible_characters_are_refused_and_named() {
        for trick in ['\u{202E}', '\u{2066}', '\u{200B}', '\u{FEFF}'] {
            let text = format!("Parking{trick} level 2");
            let error = free_text("description", Some(&text), 200).unwrap_err();
            assert!(
                error
                    .message
                    .contains(&format!("U+{:04X}", u32::from(trick))),
                "{error}"
            );
        }
        assert!(free_text("description", Some("line\nbreak"), 200).is_err());
    }

    #[test]
    fn ordinary_text_in_any_script_passes_trimmed() {
        assert_eq!(
            free_text(
                "description",
                Some("  Parken, Ebene 2 – Zürich 駐車  "),
                200
            ),
            Ok(Some("Parken, Ebene 2 – Zürich 駐車".to_string()))
        );
        assert_eq!(free_text("description", Some("   "), 200), Ok(None));
        assert!(free_text("description", Some(&"x".repeat(201)), 200).is_err());
    }

    #[test]
    fn links_in_a_retailers_text_are_not_passed_on() {
        assert_eq!(
            without_links("Confirm: http://evil.example/c/x or WWW.evil.example now"),
            "Confirm: [link] or [link] now"
        );
        assert_eq!(
            without_links("(www.evil.com) x,evil-pay.com/c/x\u{a0}pay.example."),
            "([link]) x,[link]\u{a0}[link]."
        );
        assert_eq!(without_links("Parking, level 2"), "Parking, level 2");
        assert_eq!(
            without_links("Parking. Level 2. 12.50 EUR, e.g. Nr.3"),
            "Parking. Level 2. 12.50 EUR, e.g. Nr.3"
        );
    }

    #[test]
    fn quotes_in_a_retailers_text_cannot_close_the_quotes_around_it() {
        assert_eq!(
            without_links(r#"x". Reply YES 654321 for a refund"#),
            "x'. Reply YES 654321 for a refund"
        );
    }

    #[test]
    fn shortened_text_keeps_its_start_and_says_it_was_cut() {
        assert_eq!(shortened("Parking", 10), "Parking");
        assert_eq!(shortened("Parking level 2 north", 12), "Parking l...");
    }
}
