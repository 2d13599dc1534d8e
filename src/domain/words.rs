//! Amounts in words, the way a text-to-speech voice should say them: "twelve euros fifty",
//! "zwölf Euro fünfzig". Digits read aloud are ambiguous ("twelve point five"?), and a
//! decimal point means a comma to a German listener. (No well-kept crate covers German
//! and English cardinals with currency units; the rules fit on one page.)

use super::{Currency, Language, Minor};

/// The amount as a listener expects to hear it: the major units with their name, then the
/// minor units ("twelve euros fifty"); only the minor units when there are no major ones
/// ("five cents"); only the major ones when there are no minor ones ("one euro").
pub fn amount_in_words(language: Language, currency: Currency, minor: Minor) -> String {
    let scale = 10_i64.pow(currency.exponent());
    let minor = minor.max(0);
    let (major_units, minor_units) = (minor / scale, minor % scale);
    let names = unit_names(currency.code());
    match language {
        Language::En => english_amount(major_units, minor_units, &names),
        Language::De => german_amount(major_units, minor_units, &names),
    }
}

/// What the units are called: (major singular, major plural, minor singular, minor plural).
struct UnitNames {
    en: [String; 4],
    de: [String; 4],
}

fn unit_names(code: &str) -> UnitNames {
    let names = |en: [&str; 4], de: [&str; 4]| UnitNames {
        en: en.map(str::to_string),
        de: de.map(str::to_string),
    };
    match code {
        "EUR" => names(
            ["euro", "euros", "cent", "cents"],
            ["Euro", "Euro", "Cent", "Cent"],
        ),
        "USD" => names(
            ["dollar", "dollars", "cent", "cents"],
            ["Dollar", "Dollar", "Cent", "Cent"],
        ),
        "GBP" => names(
            ["pound", "pounds", "penny", "pence"],
            ["Pfund", "Pfund", "Penny", "Pence"],
        ),
        "CHF" => names(
            ["franc", "francs", "centime", "centimes"],
            ["Franken", "Franken", "Rappen", "Rappen"],
        ),
        // Any other currency: its code, letter by letter, and no name for the minor unit.
        other => {
            let spelled = other
                .chars()
                .map(String::from)
                .collect::<Vec<_>>()
                .join(" ");
            let major = [spelled.as_str(), spelled.as_str(), "", ""];
            names(major, major)
        }
    }
}

fn english_amount(major: i64, minor: i64, names: &UnitNames) -> String {
    let [one, many, one_minor, many_minor] = &names.en;
    let major_name = if major == 1 { one } else { many };
    let minor_name = if minor == 1 { one_minor } else { many_minor };
    match (major, minor) {
        (0, 0) => format!("zero {many}"),
        (0, minor) if !minor_name.is_empty() => format!("{} {minor_name}", english(minor)),
        (major, 0) => format!("{} {major_name}", english(major)),
        (major, minor) => format!("{} {major_name} {}", english(major), english(minor)),
    }
}

fn german_amount(major: i64, minor: i64, names: &UnitNames) -> String {
    let [one, many, one_minor, many_minor] = &names.de;
    let major_name = if major == 1 { one } else { many };
    let minor_name = if minor == 1 { one_minor } else { many_minor };
    // "ein Euro", "ein Cent": before a unit, one is "ein"; alone at the end it is "eins".
    match (major, minor) {
        (0, 0) => format!("null {many}"),
        (0, minor) if !minor_name.is_empty() => {
            format!("{} {minor_name}", german_before_noun(minor))
        }
        (major, 0) => format!("{} {major_name}", german_before_noun(major)),
        (major, minor) => format!(
            "{} {major_name} {}",
            german_before_noun(major),
            german(minor)
        ),
    }
}

const EN_ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const EN_TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];
const SCALES: [(i64, &str, &str, &str); 4] = [
    (1_000_000_000_000, "trillion", "Billion", "Billionen"),
    (1_000_000_000, "billion", "Milliarde", "Milliarden"),
    (1_000_000, "million", "Million", "Millionen"),
    (1_000, "thousand", "tausend", "tausend"),
];

/// English cardinal: "one thousand two hundred thirty-four".
pub fn english(number: i64) -> String {
    if number < 0 {
        return format!("minus {}", english(number.saturating_neg()));
    }
    if number < 1000 {
        return english_below_thousand(number);
    }
    let mut words = Vec::new();
    let mut rest = number;
    for (scale, name, _, _) in SCALES {
        if rest >= scale {
            words.push(format!("{} {name}", english(rest / scale)));
            rest %= scale;
        }
    }
    if rest > 0 {
        words.push(english_below_thousand(rest));
    }
    words.join(" ")
}

fn english_below_thousand(number: i64) -> String {
    let (hundreds, rest) = (number / 100, number % 100);
    let tens = match rest {
        0 => None,
        1..=19 => Some(EN_ONES[rest as usize].to_string()),
        _ if rest % 10 == 0 => Some(EN_TENS[(rest / 10) as usize].to_string()),
        _ => Some(format!(
            "{}-{}",
            EN_TENS[(rest / 10) as usize],
            EN_ONES[(rest % 10) as usize]
        )),
    };
    match (hundreds, tens) {
        (0, None) => EN_ONES[0].to_string(),
        (0, Some(tens)) => tens,
        (hundreds, None) => format!("{} hundred", EN_ONES[hundreds as usize]),
        (hundreds, Some(tens)) => format!("{} hundred {tens}", EN_ONES[hundreds as usize]),
    }
}

const DE_ONES: [&str; 20] = [
    "null",
    "eins",
    "zwei",
    "drei",
    "vier",
    "fünf",
    "sechs",
    "sieben",
    "acht",
    "neun",
    "zehn",
    "elf",
    "zwölf",
    "dreizehn",
    "vierzehn",
    "fünfzehn",
    "sechzehn",
    "siebzehn",
    "achtzehn",
    "neunzehn",
];
const DE_TENS: [&str; 10] = [
    "", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig",
];

/// German cardinal, as said alone: "eins", "eintausendzweihundertvierunddreißig".
pub fn german(number: i64) -> String {
    if number < 0 {
        return format!("minus {}", german(number.saturating_neg()));
    }
    if number == 0 {
        return DE_ONES[0].to_string();
    }
    let mut words: Vec<String> = Vec::new();
    let mut compound = String::new();
    let mut rest = number;
    for (scale, _, one_name, many_name) in SCALES {
        if rest < scale {
            continue;
        }
        let count = rest / scale;
        rest %= scale;
        if scale == 1_000 {
            // Thousands join the word: "zweitausenddrei".
            compound.push_str(&german_compound(count, true));
            compound.push_str("tausend");
        } else if count == 1 {
            words.push(format!("eine {one_name}"));
        } else {
            words.push(format!("{} {many_name}", german(count)));
        }
    }
    if rest > 0 {
        compound.push_str(&german_compound(rest, false));
    }
    if !compound.is_empty() {
        words.push(compound);
    }
    words.join(" ")
}

/// German before a noun: "ein Euro", "einundzwanzig Euro".
fn german_before_noun(number: i64) -> String {
    let words = german(number);
    match words.strip_suffix("eins") {
        Some(stem) => format!("{stem}ein"),
        None => words,
    }
}

/// Below a thousand, in one word; `prefix` when another word follows ("ein" in
/// "eintausend", "einhundert").
fn german_compound(number: i64, prefix: bool) -> String {
    let (hundreds, rest) = (number / 100, number % 100);
    let mut word = String::new();
    if hundreds > 0 {
        word.push_str(if hundreds == 1 {
            "ein"
        } else {
            DE_ONES[hundreds as usize]
        });
        word.push_str("hundert");
    }
    match rest {
        0 => {}
        1 if prefix => word.push_str("ein"),
        1..=19 => word.push_str(DE_ONES[rest as usize]),
        _ if rest % 10 == 0 => word.push_str(DE_TENS[(rest / 10) as usize]),
        _ => {
            let ones = if rest % 10 == 1 {
                "ein"
            } else {
                DE_ONES[(rest % 10) as usize]
            };
            word.push_str(&format!("{ones}und{}", DE_TENS[(rest / 10) as usize]));
        }
    }
    word
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(minor: Minor, language: Language) -> String {
        amount_in_words(language, Currency::parse("EUR").unwrap(), minor)
    }

    #[test]
    fn the_issues_amounts_in_english() {
        assert_eq!(eur(5, Language::En), "five cents");
        assert_eq!(eur(100, Language::En), "one euro");
        assert_eq!(eur(1250, Language::En), "twelve euros fifty");
        assert_eq!(
            eur(123_456, Language::En),
            "one thousand two hundred thirty-four euros fifty-six"
        );
        assert_eq!(eur(1, Language::En), "one cent");
        assert_eq!(eur(101, Language::En), "one euro one");
    }

    #[test]
    fn the_issues_amounts_in_german() {
        assert_eq!(eur(5, Language::De), "fünf Cent");
        assert_eq!(eur(100, Language::De), "ein Euro");
        assert_eq!(eur(1250, Language::De), "zwölf Euro fünfzig");
        assert_eq!(
            eur(123_456, Language::De),
            "eintausendzweihundertvierunddreißig Euro sechsundfünfzig"
        );
        assert_eq!(eur(101, Language::De), "ein Euro eins");
        assert_eq!(eur(2101, Language::De), "einundzwanzig Euro eins");
    }

    #[test]
    fn english_cardinals() {
        for (number, words) in [
            (0, "zero"),
            (13, "thirteen"),
            (40, "forty"),
            (99, "ninety-nine"),
            (100, "one hundred"),
            (101, "one hundred one"),
            (1_000, "one thousand"),
            (1_001, "one thousand one"),
            (20_500, "twenty thousand five hundred"),
            (1_000_000, "one million"),
            (2_000_300_000, "two billion three hundred thousand"),
        ] {
            assert_eq!(english(number), words, "{number}");
        }
    }

    #[test]
    fn german_cardinals() {
        for (number, words) in [
            (0, "null"),
            (1, "eins"),
            (16, "sechzehn"),
            (17, "siebzehn"),
            (21, "einundzwanzig"),
            (30, "dreißig"),
            (100, "einhundert"),
            (101, "einhunderteins"),
            (111, "einhundertelf"),
            (1_000, "eintausend"),
            (1_001, "eintausendeins"),
            (2_021, "zweitausendeinundzwanzig"),
            (21_000, "einundzwanzigtausend"),
            (100_000, "einhunderttausend"),
            (1_000_000, "eine Million"),
            (2_500_000, "zwei Millionen fünfhunderttausend"),
        ] {
            assert_eq!(german(number), words, "{number}");
        }
    }

    #[test]
    fn other_currencies_have_their_names_or_their_code() {
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(
            amount_in_words(Language::En, usd, 1250),
            "twelve dollars fifty"
        );
        let gbp = Currency::parse("GBP").unwrap();
        assert_eq!(amount_in_words(Language::En, gbp, 1), "one penny");
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(
            amount_in_words(Language::En, jpy, 500),
            "five hundred J P Y"
        );
        assert_eq!(amount_in_words(Language::De, jpy, 1), "ein J P Y");
    }
}
