//! Money: ISO 4217 currencies with their exponent, and amounts in integer minor units.
//! Decimal strings come in and go out at the edges; nothing here ever rounds.

use std::fmt;

use rust_decimal::Decimal;

/// An amount in minor units (cents for EUR). Storage and arithmetic use this only.
pub type Minor = i64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency {0:?}; expected an ISO 4217 code such as EUR")]
    UnknownCurrency(String),
    #[error("currency {0} has no minor unit and cannot be used")]
    CurrencyWithoutExponent(String),
    #[error("{0:?} is not a decimal amount such as \"12.50\"")]
    NotADecimal(String),
    #[error("{amount} has more decimals than {currency} allows ({exponent})")]
    TooManyDecimals {
        amount: String,
        currency: String,
        exponent: u32,
    },
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount is over the maximum of {0}")]
    OverMaximum(String),
}

/// A supported ISO 4217 currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: iso_currency::Currency,
    exponent: u32,
}

impl Currency {
    pub fn parse(text: &str) -> Result<Currency, MoneyError> {
        let code = iso_currency::Currency::from_code(text)
            .ok_or_else(|| MoneyError::UnknownCurrency(text.to_string()))?;
        // Funds and precious metals (XAU, XDR) have no exponent and no place here.
        let exponent = code
            .exponent()
            .ok_or_else(|| MoneyError::CurrencyWithoutExponent(text.to_string()))?;
        Ok(Currency {
            code,
            exponent: u32::from(exponent),
        })
    }

    pub fn code(self) -> &'static str {
        self.code.code()
    }

    pub fn exponent(self) -> u32 {
        self.exponent
    }

    /// Parses a positive decimal string into minor units of this currency, refusing more
    /// decimals than the currency has and anything over `max_major`.
    pub fn parse_amount(self, text: &str, max_major: Decimal) -> Result<Minor, MoneyError> {
        let trimmed = text.trim();
        let valid_shape = !trimmed.is_empty()
            && trimmed.len() <= 32
            && trimmed
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+');
        if !valid_shape {
            return Err(MoneyError::NotADecimal(text.to_string()));
        }
        let value: Decimal = trimmed
            .parse()
            .map_err(|_| MoneyError::NotADecimal(text.to_string()))?;
        if value <= Decimal::ZERO {
            return Err(MoneyError::NotPositive);
        }
        // The decimals as written count, trailing zeros too: the contract says more decimals
        // than the currency has is an error, and "1.000" EUR is more than EUR has.
        if value.scale() > self.exponent {
            return Err(MoneyError::TooManyDecimals {
                amount: trimmed.to_string(),
                currency: self.code().to_string(),
                exponent: self.exponent,
            });
        }
        if value > max_major {
            return Err(MoneyError::OverMaximum(format!(
                "{} {}",
                max_major.normalize(),
                self.code()
            )));
        }
        // Checked: with a maximum configured near Decimal's own, the product can overflow,
        // and then the amount is past anything minor units hold.
        value
            .checked_mul(Decimal::from(10_i64.pow(self.exponent)))
            .and_then(|minor| minor.trunc().to_string().parse::<i64>().ok())
            .ok_or_else(|| {
                MoneyError::OverMaximum(format!("{} {}", max_major.normalize(), self.code()))
            })
    }

    /// Formats minor units as the decimal string the API shows: always `exponent` decimals.
    pub fn format(self, minor: Minor) -> String {
        Decimal::new(minor, self.exponent).to_string()
    }

    /// Converts minor units to a decimal in major units, for arithmetic at the edges.
    pub fn to_decimal(self, minor: Minor) -> Decimal {
        Decimal::new(minor, self.exponent)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn max() -> Decimal {
        Decimal::from(10_000)
    }

    #[test]
    fn amounts_become_minor_units_without_rounding() {
        assert_eq!(eur().parse_amount("12.50", max()), Ok(1250));
        assert_eq!(eur().parse_amount("12.5", max()), Ok(1250));
        assert_eq!(eur().parse_amount("7", max()), Ok(700));
        assert_eq!(eur().parse_amount("0.01", max()), Ok(1));
    }

    #[test]
    fn trailing_zeros_beyond_the_currency_are_decimals_too() {
        assert!(matches!(
            eur().parse_amount("1.000", max()),
            Err(MoneyError::TooManyDecimals { .. })
        ));
        let yen = Currency::parse("JPY").unwrap();
        assert!(matches!(
            yen.parse_amount("150.0", max()),
            Err(MoneyError::TooManyDecimals { .. })
        ));
    }

    #[test]
    fn more_decimals_than_the_currency_has_is_an_error() {
        assert!(matches!(
            eur().parse_amount("1.005", max()),
            Err(MoneyError::TooManyDecimals { .. })
        ));
        let yen = Currency::parse("JPY").unwrap();
        assert!(matches!(
            yen.parse_amount("1.5", max()),
            Err(MoneyError::TooManyDecimals { .. })
        ));
        assert_eq!(yen.parse_amount("150", max()), Ok(150));
        let dinar = Currency::parse("KWD").unwrap();
        assert_eq!(dinar.parse_amount("1.005", max()), Ok(1005));
    }

    #[test]
    fn zero_negative_huge_and_garbage_are_refused() {
        assert_eq!(eur().parse_amount("0", max()), Err(MoneyError::NotPositive));
        assert_eq!(
            eur().parse_amount("-1.00", max()),
            Err(MoneyError::NotPositive)
        );
        assert!(matches!(
            eur().parse_amount("10000.01", max()),
            Err(MoneyError::OverMaximum(_))
        ));
        assert!(matches!(
            eur().parse_amount("1e3", max()),
            Err(MoneyError::NotADecimal(_))
        ));
        assert!(matches!(
            eur().parse_amount("", max()),
            Err(MoneyError::NotADecimal(_))
        ));
        assert!(matches!(
            eur().parse_amount("NaN", max()),
            Err(MoneyError::NotADecimal(_))
        ));
    }

    #[test]
    fn currencies_are_iso_4217_with_an_exponent() {
        assert!(matches!(
            Currency::parse("EURO"),
            Err(MoneyError::UnknownCurrency(_))
        ));
        assert!(matches!(
            Currency::parse("eur"),
            Err(MoneyError::UnknownCurrency(_))
        ));
        assert!(matches!(
            Currency::parse("XAU"),
            Err(MoneyError::CurrencyWithoutExponent(_))
        ));
        assert_eq!(eur().format(1250), "12.50");
        assert_eq!(eur().format(5), "0.05");
        assert_eq!(Currency::parse("JPY").unwrap().format(150), "150");
    }
}

/// Fuzz targets (bolero): under `cargo test` each runs a bounded number of random inputs;
/// `scripts/fuzz.sh` runs them coverage-guided for as long as asked.
#[cfg(test)]
mod fuzz_tests {
    use super::*;

    /// Currencies with every exponent ISO 4217 has (0, 2, 3, 4), and one without.
    const CODES: &[&str] = &["JPY", "EUR", "KWD", "CLF", "XAU"];
    /// What amounts are typed with, so that random inputs are mostly amount-shaped.
    const AMOUNT_CHARACTERS: &[u8] = b"0123456789012345678901234567890123456789..-+ e";

    /// An amount as a retailer might send it, with a currency and the configured maximum.
    #[derive(Debug, bolero::TypeGenerator)]
    struct AmountInput {
        currency: u8,
        raw_currency: String,
        shaped: Vec<u8>,
        raw: String,
        /// The configured `limits.max_amount`: any positive decimal (the configuration
        /// takes any), from its 96-bit mantissa and its scale, or the default.
        max_mantissa: Option<(u32, u64)>,
        max_scale: u8,
    }

    impl AmountInput {
        fn max_major(&self) -> Decimal {
            self.max_mantissa
                .and_then(|(high, low)| {
                    let mantissa = i128::from(high) << 64 | i128::from(low);
                    Decimal::try_from_i128_with_scale(mantissa, u32::from(self.max_scale % 29)).ok()
                })
                .filter(|max| *max > Decimal::ZERO)
                .unwrap_or(Decimal::from(10_000))
        }

        fn shaped(&self) -> String {
            self.shaped
                .iter()
                .map(|&byte| {
                    char::from(AMOUNT_CHARACTERS[usize::from(byte) % AMOUNT_CHARACTERS.len()])
                })
                .collect()
        }
    }

    fn check_amount(currency: Currency, text: &str, max_major: Decimal) {
        let Ok(minor) = currency.parse_amount(text, max_major) else {
            return;
        };
        assert!(minor > 0);
        // Never rounded: the minor units are exactly the amount as written.
        let written: Decimal = text.trim().parse().expect("it parsed");
        assert_eq!(currency.to_decimal(minor), written);
        assert!(currency.to_decimal(minor) <= max_major);
        // What the API shows parses back to the same amount.
        let shown = currency.format(minor);
        assert_eq!(
            currency.parse_amount(&shown, max_major),
            Ok(minor),
            "{shown}"
        );
    }

    /// Found by `amounts_parse_without_panic_and_never_round`: with `limits.max_amount` near
    /// Decimal's largest value (the configuration takes any positive amount), a 29-digit
    /// amount overflowed the conversion to minor units and panicked.
    #[test]
    fn an_amount_too_large_for_minor_units_is_refused_not_a_panic() {
        let eur = Currency::parse("EUR").expect("EUR");
        let max_major = Decimal::from_i128_with_scale(i128::from(u32::MAX) << 64, 0);
        // The input it found, as its shaped bytes spell it: 29 digits.
        let amount = "22222000000000000000000000099";
        assert!(matches!(
            eur.parse_amount(amount, max_major),
            Err(MoneyError::OverMaximum(_))
        ));
        assert!(matches!(
            eur.parse_amount("79228162514264337593543950335", Decimal::MAX),
            Err(MoneyError::OverMaximum(_))
        ));
    }

    #[test]
    fn amounts_parse_without_panic_and_never_round() {
        bolero::check!()
            .with_type::<AmountInput>()
            .with_iterations(3_000)
            .for_each(|input| {
                assert!(
                    Currency::parse(&input.raw_currency).is_err() || input.raw_currency.len() == 3
                );
                let code = CODES[usize::from(input.currency) % CODES.len()];
                let Ok(currency) = Currency::parse(code) else {
                    return assert_eq!(code, "XAU");
                };
                let max_major = input.max_major();
                check_amount(currency, &input.raw, max_major);
                check_amount(currency, &input.shaped(), max_major);
            });
    }

    #[test]
    fn every_positive_amount_in_minor_units_formats_and_parses_back() {
        bolero::check!()
            .with_type::<(u8, i64)>()
            .with_iterations(3_000)
            .for_each(|(currency, minor)| {
                let code = CODES[usize::from(*currency) % (CODES.len() - 1)];
                let currency = Currency::parse(code).expect("a currency with an exponent");
                let shown = currency.format(*minor);
                let parsed = currency.parse_amount(&shown, Decimal::MAX);
                if *minor > 0 {
                    assert_eq!(parsed, Ok(*minor), "{shown}");
                } else {
                    assert_eq!(parsed, Err(MoneyError::NotPositive), "{shown}");
                }
            });
    }
}
