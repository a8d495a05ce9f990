//! Numbers in conditions: reading property values and comparing exactly.
//!
//! Property values are strings; a comparison against a numeric literal reads
//! the value as a number first. Integers stay i64 so that large ids compare
//! exactly, and an i64 is compared with an f64 without converting the i64
//! (which would round above 2^53 and make `9007199254740993 > 9007199254740992.0`
//! false).

use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    Int(i64),
    /// Always finite: literals and property values that are not are rejected.
    Dec(f64),
}

impl Number {
    /// Reads a property value as a number: an i64 if it is one, otherwise a
    /// finite f64 written `[+-]digits[.digits][e[+-]digits]` (either digit
    /// run may be empty, not both). No surrounding whitespace, no
    /// `inf`/`nan`, no hex: anything else is "not a number" (None), which
    /// the caller turns into UNKNOWN.
    pub(crate) fn parse(text: &str) -> Option<Number> {
        if !is_decimal_syntax(text) {
            return None;
        }
        if let Ok(i) = text.parse::<i64>() {
            return Some(Number::Int(i));
        }
        let f: f64 = text.parse().ok()?;
        f.is_finite().then_some(Number::Dec(f))
    }

    /// Total order over numbers (there is no NaN to break it).
    pub(crate) fn compare(self, other: Number) -> Ordering {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a.cmp(&b),
            (Number::Dec(a), Number::Dec(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
            (Number::Int(a), Number::Dec(b)) => compare_int_dec(a, b),
            (Number::Dec(a), Number::Int(b)) => compare_int_dec(b, a).reverse(),
        }
    }
}

/// 2^63, exactly representable as an f64: every i64 lies in
/// [-2^63, 2^63).
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

/// How integer `i` compares to finite `f`, exactly.
fn compare_int_dec(i: i64, f: f64) -> Ordering {
    if f >= TWO_POW_63 {
        return Ordering::Less;
    }
    if f < -TWO_POW_63 {
        return Ordering::Greater;
    }
    // Here f's integer part fits an i64 and converts without loss.
    let whole = f.trunc();
    match i.cmp(&(whole as i64)) {
        Ordering::Equal => 0.0f64.partial_cmp(&(f - whole)).unwrap_or(Ordering::Equal),
        other => other,
    }
}

fn is_decimal_syntax(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits_from = |i: usize| {
        bytes[i.min(bytes.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut i = usize::from(matches!(bytes.first(), Some(b'+' | b'-')));
    let whole = digits_from(i);
    i += whole;
    let mut fraction = 0;
    if bytes.get(i) == Some(&b'.') {
        fraction = digits_from(i + 1);
        i += 1 + fraction;
    }
    if whole + fraction == 0 {
        return false;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exponent = digits_from(i);
        if exponent == 0 {
            return false;
        }
        i += exponent;
    }
    i == bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_integers_and_decimals() {
        assert_eq!(Number::parse("42"), Some(Number::Int(42)));
        assert_eq!(Number::parse("-7"), Some(Number::Int(-7)));
        assert_eq!(Number::parse("+7"), Some(Number::Int(7)));
        assert_eq!(Number::parse("1.5"), Some(Number::Dec(1.5)));
        assert_eq!(Number::parse(".5"), Some(Number::Dec(0.5)));
        assert_eq!(Number::parse("5."), Some(Number::Dec(5.0)));
        assert_eq!(Number::parse("1e3"), Some(Number::Dec(1000.0)));
        assert_eq!(Number::parse("-2.5E-1"), Some(Number::Dec(-0.25)));
        assert_eq!(
            Number::parse("9223372036854775808"),
            Some(Number::Dec(9_223_372_036_854_775_808.0))
        );
    }

    #[test]
    fn rejects_non_numbers() {
        for text in [
            "", " 1", "1 ", "abc", "1a", "-", "+", ".", "e5", "1e", "1e+", "inf", "NaN",
            "infinity", "0x10", "1.2.3", "--1", "1e999",
        ] {
            assert_eq!(Number::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn int_and_dec_compare_exactly() {
        let big = Number::Int(9_007_199_254_740_993);
        assert_eq!(
            big.compare(Number::Dec(9_007_199_254_740_992.0)),
            Ordering::Greater
        );
        assert_eq!(Number::Int(1).compare(Number::Dec(1.0)), Ordering::Equal);
        assert_eq!(Number::Int(1).compare(Number::Dec(1.5)), Ordering::Less);
        assert_eq!(
            Number::Int(-1).compare(Number::Dec(-1.5)),
            Ordering::Greater
        );
        assert_eq!(Number::Int(-2).compare(Number::Dec(-1.5)), Ordering::Less);
        assert_eq!(Number::Dec(0.5).compare(Number::Int(0)), Ordering::Greater);
        assert_eq!(
            Number::Int(i64::MAX).compare(Number::Dec(TWO_POW_63)),
            Ordering::Less
        );
        assert_eq!(
            Number::Int(i64::MIN).compare(Number::Dec(-TWO_POW_63)),
            Ordering::Equal
        );
        assert_eq!(
            Number::Int(i64::MIN).compare(Number::Dec(-1e300)),
            Ordering::Greater
        );
        assert_eq!(Number::Dec(-0.0).compare(Number::Dec(0.0)), Ordering::Equal);
    }

    proptest! {
        #[test]
        fn every_i64_round_trips(i in any::<i64>()) {
            prop_assert_eq!(Number::parse(&i.to_string()), Some(Number::Int(i)));
        }

        #[test]
        fn int_dec_order_agrees_with_small_values(i in -1_000_000i64..1_000_000, f in -1e6f64..1e6) {
            prop_assert_eq!(
                Number::Int(i).compare(Number::Dec(f)),
                (i as f64).partial_cmp(&f).unwrap()
            );
        }
    }
}
