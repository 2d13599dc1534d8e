//! Text encodings of SMPP short messages, and the split of long texts into concatenated parts.
//!
//! Outbound texts go as the GSM 03.38 default alphabet (data_coding 0x00, one septet per octet,
//! "unpacked", the way SMSCs expect it over SMPP) when every character is in it, else as UCS-2
//! (data_coding 0x08, UTF-16BE, so characters outside the BMP travel as surrogate pairs).
//! Long texts are split into parts that each start with a concatenation UDH (IEI 0x00, 8-bit
//! reference); a GSM escape sequence or a surrogate pair is never split across two parts.

/// data_coding of the GSM 03.38 default alphabet ("SMSC default").
pub(crate) const DATA_CODING_GSM: u8 = 0x00;
/// data_coding of IA5 (ASCII).
pub(crate) const DATA_CODING_IA5: u8 = 0x01;
/// data_coding of Latin-1 (ISO-8859-1).
pub(crate) const DATA_CODING_LATIN1: u8 = 0x03;
/// data_coding of UCS-2 (sent as UTF-16BE).
pub(crate) const DATA_CODING_UCS2: u8 = 0x08;

/// esm_class of a plain short message: default mode, default type, no UDH.
pub(crate) const ESM_CLASS_PLAIN: u8 = 0x00;
/// esm_class bit saying that short_message starts with a user data header.
pub(crate) const ESM_CLASS_UDHI: u8 = 0x40;

/// Septets in one unsplit GSM message.
const GSM_SINGLE_SEPTETS_MAX: usize = 160;
/// Septets in one part of a concatenated GSM message: 160 less the 7 septets the 6-octet UDH
/// takes on the air interface.
pub(crate) const GSM_PART_SEPTETS_MAX: usize = 153;
/// UTF-16 code units in one unsplit UCS-2 message (140 octets).
const UCS2_SINGLE_UNITS_MAX: usize = 70;
/// UTF-16 code units in one part of a concatenated UCS-2 message (134 octets after the UDH).
pub(crate) const UCS2_PART_UNITS_MAX: usize = 67;
/// The longest text the channel sends: paystep's messages are short, so more parts than this
/// is a bug upstream, not something to put on a customer's phone.
pub(crate) const PARTS_MAX: usize = 10;

const ESCAPE: u8 = 0x1B;

/// The GSM 03.38 default alphabet, indexed by septet. 0x1B is the escape to the extension
/// table and stands for no character of its own.
const GSM_BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1B}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The GSM 03.38 extension table: (septet after the escape, character).
const GSM_EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'),
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// The septets of one character in the GSM default alphabet: one, or the escape and one.
fn gsm_septets(character: char) -> Option<&'static [u8]> {
    // Static slices of every septet value, so callers get a borrowed slice without allocating.
    static SEPTETS: [u8; 128] = {
        let mut table = [0u8; 128];
        let mut index = 0;
        while index < 128 {
            table[index] = index as u8;
            index += 1;
        }
        table
    };
    static ESCAPED: [[u8; 2]; 10] = {
        let mut table = [[0u8; 2]; 10];
        let mut index = 0;
        while index < 10 {
            table[index] = [ESCAPE, GSM_EXTENSION[index].0];
            index += 1;
        }
        table
    };
    if character != '\u{1B}' {
        if let Some(septet) = GSM_BASIC.iter().position(|&basic| basic == character) {
            return Some(&SEPTETS[septet..septet + 1]);
        }
    }
    GSM_EXTENSION
        .iter()
        .position(|&(_, extended)| extended == character)
        .map(|index| &ESCAPED[index][..])
}

/// The text as unpacked GSM septets, or `None` when a character is not in the alphabet.
pub(crate) fn gsm_encode(text: &str) -> Option<Vec<u8>> {
    let mut septets = Vec::with_capacity(text.len());
    for character in text.chars() {
        septets.extend_from_slice(gsm_septets(character)?);
    }
    Some(septets)
}

/// Unpacked GSM septets as text. An escape before a septet without an extension character
/// stands for that septet's basic character, as GSM 03.38 says a receiver should show it.
pub(crate) fn gsm_decode(septets: &[u8]) -> String {
    let mut text = String::with_capacity(septets.len());
    let mut index = 0;
    while index < septets.len() {
        let septet = septets[index] & 0x7F;
        index += 1;
        if septet == ESCAPE {
            let Some(&next) = septets.get(index) else {
                break;
            };
            index += 1;
            let next = next & 0x7F;
            match GSM_EXTENSION.iter().find(|&&(code, _)| code == next) {
                Some(&(_, extended)) => text.push(extended),
                None if next == ESCAPE => text.push(' '),
                None => text.push(GSM_BASIC[usize::from(next)]),
            }
        } else {
            text.push(GSM_BASIC[usize::from(septet)]);
        }
    }
    text
}

/// UTF-16BE octets as text; an unpaired surrogate becomes U+FFFD.
pub(crate) fn ucs2_decode(octets: &[u8]) -> String {
    let units: Vec<u16> = octets
        .chunks(2)
        .map(|pair| match pair {
            [high, low] => u16::from_be_bytes([*high, *low]),
            // An odd trailing octet is corrupt; show it as the replacement character.
            _ => 0xFFFD,
        })
        .collect();
    String::from_utf16_lossy(&units)
}

/// Latin-1 octets as text (every octet is the code point of the same number).
pub(crate) fn latin1_decode(octets: &[u8]) -> String {
    octets.iter().map(|&octet| char::from(octet)).collect()
}

/// IA5 (ASCII) octets as text; octets above 0x7F are not IA5 and become U+FFFD.
pub(crate) fn ia5_decode(octets: &[u8]) -> String {
    octets
        .iter()
        .map(|&octet| {
            if octet.is_ascii() {
                char::from(octet)
            } else {
                char::REPLACEMENT_CHARACTER
            }
        })
        .collect()
}

/// One submit_sm's worth of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    /// The short_message octets, the UDH first when there is one.
    pub(crate) short_message: Vec<u8>,
    pub(crate) esm_class: u8,
}

/// A text ready for submit_sm: its data_coding and one segment per part, first part first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segmented {
    pub(crate) data_coding: u8,
    pub(crate) segments: Vec<Segment>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SegmentError {
    #[error("the text is empty")]
    Empty,
    #[error("the text needs {parts} parts; at most {PARTS_MAX} are sent")]
    TooLong { parts: usize },
}

/// Encodes `text` and splits it into parts when it does not fit one short message.
/// `reference` is the concatenation reference the parts share; unused for a single part.
pub(crate) fn segment(text: &str, reference: u8) -> Result<Segmented, SegmentError> {
    if text.is_empty() {
        return Err(SegmentError::Empty);
    }
    let (data_coding, parts) = match gsm_encode(text) {
        Some(septets) if septets.len() <= GSM_SINGLE_SEPTETS_MAX => {
            (DATA_CODING_GSM, vec![septets])
        }
        Some(_) => (DATA_CODING_GSM, split_gsm(text)),
        None => {
            let units: Vec<u16> = text.encode_utf16().collect();
            if units.len() <= UCS2_SINGLE_UNITS_MAX {
                (DATA_CODING_UCS2, vec![utf16_octets(&units)])
            } else {
                (DATA_CODING_UCS2, split_ucs2(text))
            }
        }
    };
    if parts.len() == 1 {
        let short_message = parts.into_iter().next().unwrap_or_default();
        return Ok(Segmented {
            data_coding,
            segments: vec![Segment {
                short_message,
                esm_class: ESM_CLASS_PLAIN,
            }],
        });
    }
    if parts.len() > PARTS_MAX {
        return Err(SegmentError::TooLong { parts: parts.len() });
    }
    let total = parts.len() as u8;
    let segments = parts
        .into_iter()
        .enumerate()
        .map(|(index, payload)| {
            let mut short_message = vec![0x05, 0x00, 0x03, reference, total, index as u8 + 1];
            short_message.extend_from_slice(&payload);
            Segment {
                short_message,
                esm_class: ESM_CLASS_UDHI,
            }
        })
        .collect();
    Ok(Segmented {
        data_coding,
        segments,
    })
}

/// GSM parts of at most 153 septets; a character's escape and septet stay together.
fn split_gsm(text: &str) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut part = Vec::with_capacity(GSM_PART_SEPTETS_MAX);
    for character in text.chars() {
        let septets = gsm_septets(character).expect("the caller checked the alphabet");
        if part.len() + septets.len() > GSM_PART_SEPTETS_MAX {
            parts.push(std::mem::take(&mut part));
        }
        part.extend_from_slice(septets);
    }
    if !part.is_empty() {
        parts.push(part);
    }
    parts
}

/// UCS-2 parts of at most 67 UTF-16 units; a surrogate pair stays together.
fn split_ucs2(text: &str) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut part: Vec<u16> = Vec::with_capacity(UCS2_PART_UNITS_MAX);
    let mut buffer = [0u16; 2];
    for character in text.chars() {
        let units = character.encode_utf16(&mut buffer);
        if part.len() + units.len() > UCS2_PART_UNITS_MAX {
            parts.push(utf16_octets(&part));
            part.clear();
        }
        part.extend_from_slice(units);
    }
    if !part.is_empty() {
        parts.push(utf16_octets(&part));
    }
    parts
}

fn utf16_octets(units: &[u16]) -> Vec<u8> {
    units.iter().flat_map(|unit| unit.to_be_bytes()).collect()
}

/// Removes a user data header from `short_message` when `esm_class` says there is one.
/// A header that claims more octets than there are leaves nothing.
pub(crate) fn strip_udh(short_message: &[u8], esm_class: u8) -> &[u8] {
    if esm_class & ESM_CLASS_UDHI == 0 {
        return short_message;
    }
    match short_message.first() {
        Some(&header_length) => short_message
            .get(1 + usize::from(header_length)..)
            .unwrap_or_default(),
        None => short_message,
    }
}

/// The text of a received short message, decoded by its data_coding (SMPP 3.4, 5.2.19, and
/// the GSM 03.38 coding groups for the upper values). Codings paystep cannot show (JIS,
/// Cyrillic, Hebrew, pictograms, compressed texts) are decoded as Latin-1, so the customer
/// gets the help reply instead of silence.
pub(crate) fn decode_text(data_coding: u8, octets: &[u8]) -> String {
    match data_coding {
        DATA_CODING_GSM => gsm_decode(octets),
        DATA_CODING_IA5 => ia5_decode(octets),
        // 0x02 and 0x04 are 8-bit binary; 0x03 is Latin-1.
        0x02 | DATA_CODING_LATIN1 | 0x04 => latin1_decode(octets),
        DATA_CODING_UCS2 => ucs2_decode(octets),
        // GSM 03.38 general data coding (0x00-0x3F without compression): bits 3-2 name the
        // alphabet.
        0x10..=0x1F | 0x30..=0x3F => match (data_coding >> 2) & 0x03 {
            0 => gsm_decode(octets),
            2 => ucs2_decode(octets),
            _ => latin1_decode(octets),
        },
        // Message waiting groups: 0xC0-0xDF GSM, 0xE0-0xEF UCS-2.
        0xC0..=0xDF => gsm_decode(octets),
        0xE0..=0xEF => ucs2_decode(octets),
        // Data coding/message class: bit 2 chooses 8-bit data over the GSM alphabet.
        0xF0..=0xFF if data_coding & 0x04 == 0 => gsm_decode(octets),
        0xF0..=0xFF => latin1_decode(octets),
        _ => latin1_decode(octets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm_text_is_one_septet_per_character_and_extension_characters_take_two() {
        assert_eq!(gsm_encode("A@$_"), Some(vec![0x41, 0x00, 0x02, 0x11]));
        assert_eq!(gsm_encode("€"), Some(vec![0x1B, 0x65]));
        assert_eq!(gsm_encode("[x]").map(|septets| septets.len()), Some(5));
        assert_eq!(gsm_encode("✓"), None);
        assert_eq!(gsm_encode("\u{1B}"), None);
    }

    #[test]
    fn gsm_decoding_reverses_encoding_for_the_whole_alphabet() {
        let alphabet: String = GSM_BASIC
            .iter()
            .filter(|&&character| character != '\u{1B}')
            .chain(GSM_EXTENSION.iter().map(|(_, character)| character))
            .collect();
        let septets = gsm_encode(&alphabet).unwrap();
        assert_eq!(gsm_decode(&septets), alphabet);
    }

    #[test]
    fn a_short_gsm_text_is_one_part_without_udh() {
        let segmented = segment("Zahlung bestätigt: 12,50 €", 7).unwrap();
        assert_eq!(segmented.data_coding, DATA_CODING_GSM);
        assert_eq!(segmented.segments.len(), 1);
        assert_eq!(segmented.segments[0].esm_class, ESM_CLASS_PLAIN);
        assert_eq!(
            gsm_decode(&segmented.segments[0].short_message),
            "Zahlung bestätigt: 12,50 €"
        );
    }

    #[test]
    fn a_text_outside_the_gsm_alphabet_goes_as_ucs2() {
        let segmented = segment("Zahlung bestätigt ✓ 你好", 7).unwrap();
        assert_eq!(segmented.data_coding, DATA_CODING_UCS2);
        assert_eq!(
            ucs2_decode(&segmented.segments[0].short_message),
            "Zahlung bestätigt ✓ 你好"
        );
    }

    #[test]
    fn one_hundred_and_sixty_septets_fit_one_part_and_one_more_needs_two() {
        assert_eq!(segment(&"a".repeat(160), 1).unwrap().segments.len(), 1);
        // The euro sign counts two septets: 159 letters and one euro are 161 septets.
        let text = format!("{}€", "a".repeat(159));
        let segmented = segment(&text, 1).unwrap();
        assert_eq!(segmented.segments.len(), 2);
    }

    #[test]
    fn long_gsm_texts_split_into_parts_of_153_septets_with_a_shared_reference() {
        let text: String = (0..300)
            .map(|index| (b'a' + (index % 26) as u8) as char)
            .collect();
        let segmented = segment(&text, 42).unwrap();
        assert_eq!(segmented.segments.len(), 2);
        let mut joined = Vec::new();
        for (index, part) in segmented.segments.iter().enumerate() {
            assert_eq!(part.esm_class, ESM_CLASS_UDHI);
            assert_eq!(
                &part.short_message[..6],
                &[0x05, 0x00, 0x03, 42, 2, index as u8 + 1]
            );
            joined.extend_from_slice(&part.short_message[6..]);
        }
        assert_eq!(segmented.segments[0].short_message.len(), 6 + 153);
        assert_eq!(gsm_decode(&joined), text);
    }

    #[test]
    fn an_escape_sequence_is_never_split_across_parts() {
        // 152 letters and a euro: the euro's two septets would straddle septets 153 and 154.
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(20));
        let segmented = segment(&text, 1).unwrap();
        let first = &segmented.segments[0].short_message[6..];
        assert_eq!(first.len(), 152);
        assert_ne!(first.last(), Some(&ESCAPE));
        assert_eq!(&segmented.segments[1].short_message[6..8], &[ESCAPE, 0x65]);
    }

    #[test]
    fn long_ucs2_texts_split_into_parts_of_67_units_and_keep_surrogate_pairs_whole() {
        // 66 CJK characters, then an emoji outside the BMP (a surrogate pair), then more.
        let text = format!("{}😀{}", "你".repeat(66), "好".repeat(10));
        let segmented = segment(&text, 9).unwrap();
        assert_eq!(segmented.data_coding, DATA_CODING_UCS2);
        assert_eq!(segmented.segments.len(), 2);
        let first = &segmented.segments[0].short_message[6..];
        assert_eq!(first.len(), 66 * 2);
        let joined: Vec<u8> = segmented
            .segments
            .iter()
            .flat_map(|part| part.short_message[6..].to_vec())
            .collect();
        assert_eq!(ucs2_decode(&joined), text);
    }

    #[test]
    fn texts_longer_than_the_part_limit_are_refused() {
        let text = "a".repeat(153 * PARTS_MAX + 1);
        assert_eq!(
            segment(&text, 1),
            Err(SegmentError::TooLong {
                parts: PARTS_MAX + 1
            })
        );
        assert_eq!(segment("", 1), Err(SegmentError::Empty));
    }

    #[test]
    fn a_udh_is_stripped_only_when_the_esm_class_says_so() {
        let message = [0x05, 0x00, 0x03, 1, 2, 1, b'h', b'i'];
        assert_eq!(strip_udh(&message, 0x40), b"hi");
        assert_eq!(strip_udh(&message, 0x00), &message[..]);
        assert_eq!(strip_udh(&[0x09, 0x00], 0x40), b"");
    }

    #[test]
    fn received_texts_are_decoded_by_their_data_coding() {
        assert_eq!(decode_text(0x00, &[0x00, 0x1B, 0x65]), "@€");
        assert_eq!(decode_text(0x01, b"@home"), "@home");
        assert_eq!(decode_text(0x03, &[0x62, 0xE4]), "bä");
        assert_eq!(decode_text(0x04, &[0xE4]), "ä");
        assert_eq!(decode_text(0x08, &[0x00, 0x61, 0x27, 0x13]), "a✓");
        assert_eq!(decode_text(0xF0, &[0x41]), "A");
    }
}

/// Fuzz targets (bolero): under `cargo test` each runs a bounded number of random inputs;
/// `scripts/fuzz.sh` runs them coverage-guided for as long as asked.
#[cfg(test)]
mod fuzz_tests {
    use super::*;

    /// Every character of the GSM default alphabet and its extension table.
    fn gsm_alphabet() -> Vec<char> {
        GSM_BASIC
            .iter()
            .copied()
            .filter(|&character| character != '\u{1B}')
            .chain(GSM_EXTENSION.iter().map(|&(_, character)| character))
            .collect()
    }

    /// A text of GSM characters chosen by `choices`, or, when `outside` says so, with
    /// characters only UCS-2 carries (one in the BMP, one outside it) mixed in.
    fn text_from(choices: &[u8], outside: bool) -> String {
        let alphabet = gsm_alphabet();
        choices
            .iter()
            .map(|&choice| match choice {
                250 if outside => '✓',
                251 if outside => '😀',
                _ => alphabet[usize::from(choice) % alphabet.len()],
            })
            .collect()
    }

    #[test]
    fn received_octets_decode_in_every_data_coding_without_growing() {
        bolero::check!()
            .with_type::<(u8, u8, Vec<u8>)>()
            .with_iterations(3_000)
            .for_each(|(data_coding, esm_class, octets)| {
                let stripped = strip_udh(octets, *esm_class);
                assert!(octets.ends_with(stripped));
                let text = decode_text(*data_coding, stripped);
                // No decoding makes more characters than there are octets.
                assert!(text.chars().count() <= stripped.len(), "{text:?}");
            });
    }

    #[test]
    fn gsm_texts_round_trip_through_septets() {
        bolero::check!()
            .with_type::<(Vec<u8>, String)>()
            .with_iterations(3_000)
            .for_each(|(choices, raw)| {
                let text = text_from(choices, false);
                let septets = gsm_encode(&text).expect("every character is in the alphabet");
                assert!(septets.iter().all(|&septet| septet < 0x80));
                assert_eq!(gsm_decode(&septets), text);
                // Any text: encodable exactly when every character is in the alphabet, and
                // then it decodes back unchanged.
                let alphabet = gsm_alphabet();
                match gsm_encode(raw) {
                    Some(septets) => assert_eq!(&gsm_decode(&septets), raw),
                    None => assert!(raw.chars().any(|character| !alphabet.contains(&character))),
                }
            });
    }

    /// The text a segment's payload carries on its own.
    fn decode_part(data_coding: u8, payload: &[u8]) -> String {
        match data_coding {
            DATA_CODING_GSM => gsm_decode(payload),
            _ => ucs2_decode(payload),
        }
    }

    fn check_segments(text: &str, reference: u8) {
        let segmented = match segment(text, reference) {
            Ok(segmented) => segmented,
            Err(SegmentError::Empty) => return assert!(text.is_empty()),
            Err(SegmentError::TooLong { parts }) => {
                assert!(parts > PARTS_MAX);
                // A part is short of full only by a character that did not fit whole.
                match gsm_encode(text) {
                    Some(septets) => {
                        assert!(septets.len() > (GSM_PART_SEPTETS_MAX - 1) * PARTS_MAX)
                    }
                    None => {
                        assert!(text.encode_utf16().count() > (UCS2_PART_UNITS_MAX - 1) * PARTS_MAX)
                    }
                }
                return;
            }
        };
        assert!(!text.is_empty());
        let gsm = gsm_encode(text).is_some();
        let expected_coding = if gsm {
            DATA_CODING_GSM
        } else {
            DATA_CODING_UCS2
        };
        assert_eq!(segmented.data_coding, expected_coding);
        let parts = &segmented.segments;
        assert!((1..=PARTS_MAX).contains(&parts.len()));
        if let [single] = parts.as_slice() {
            assert_eq!(single.esm_class, ESM_CLASS_PLAIN);
            let limit = if gsm {
                GSM_SINGLE_SEPTETS_MAX
            } else {
                2 * UCS2_SINGLE_UNITS_MAX
            };
            assert!(single.short_message.len() <= limit);
            assert_eq!(
                decode_part(segmented.data_coding, &single.short_message),
                text
            );
            return;
        }
        let mut joined = String::new();
        for (index, part) in parts.iter().enumerate() {
            assert_eq!(part.esm_class, ESM_CLASS_UDHI);
            let header = [
                0x05,
                0x00,
                0x03,
                reference,
                parts.len() as u8,
                index as u8 + 1,
            ];
            assert_eq!(part.short_message[..6], header);
            let payload = &part.short_message[6..];
            assert!(!payload.is_empty());
            let limit = if gsm {
                GSM_PART_SEPTETS_MAX
            } else {
                2 * UCS2_PART_UNITS_MAX
            };
            assert!(payload.len() <= limit, "{} octets", payload.len());
            // Each part decodes on its own to its share of the text: no escape sequence
            // and no surrogate pair is cut in two.
            joined.push_str(&decode_part(segmented.data_coding, payload));
        }
        assert_eq!(joined, text);
    }

    #[test]
    fn texts_split_into_parts_that_each_decode_to_their_share_of_the_text() {
        bolero::check!()
            .with_type::<(Vec<u8>, bool, String, u8, u8)>()
            .with_iterations(1_000)
            .for_each(|(choices, outside, raw, reference, repeat)| {
                check_segments(raw, *reference);
                // Repeated, so that texts of several parts and too many parts come up.
                let text = text_from(choices, *outside).repeat(usize::from(*repeat % 24) + 1);
                check_segments(&text, *reference);
            });
    }
}
