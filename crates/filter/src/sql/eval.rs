//! Three-valued evaluation of a parsed condition against one message.
//!
//! SQL's UNKNOWN is what keeps a filter honest about missing data: a message
//! without `price` is neither cheap nor expensive, so both `price < 10` and
//! `NOT price < 10` reject it. Only a condition that is TRUE as a whole lets
//! a message through.

use crate::sql::ast::{Expr, Literal};
use crate::sql::number::Number;
use crate::sql::Truth;

/// The parts of a message a condition can look at.
pub(crate) struct Message<'a> {
    pub(crate) tag: Option<&'a str>,
    pub(crate) properties: &'a [(String, String)],
}

/// The pseudo-property naming the message tag.
const TAGS: &str = "TAGS";

impl Message<'_> {
    /// A property's value: the first user property of that name, else the
    /// tag for `TAGS`, else missing.
    fn get(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .or_else(|| if name == TAGS { self.tag } else { None })
    }
}

pub(crate) fn evaluate(expr: &Expr, message: &Message<'_>) -> Truth {
    match expr {
        Expr::Const(b) => Truth::from_bool(*b),
        Expr::Not(inner) => !evaluate(inner, message),
        Expr::And(items) => {
            let mut result = Truth::True;
            for item in items {
                match evaluate(item, message) {
                    Truth::False => return Truth::False,
                    Truth::Unknown => result = Truth::Unknown,
                    Truth::True => {}
                }
            }
            result
        }
        Expr::Or(items) => {
            let mut result = Truth::False;
            for item in items {
                match evaluate(item, message) {
                    Truth::True => return Truth::True,
                    Truth::Unknown => result = Truth::Unknown,
                    Truth::False => {}
                }
            }
            result
        }
        Expr::Compare {
            property,
            op,
            value,
        } => match message.get(property) {
            None => Truth::Unknown,
            Some(actual) => match compare(actual, value) {
                Some(ordering) => Truth::from_bool(op.holds(ordering)),
                None => Truth::Unknown,
            },
        },
        Expr::In { property, values } => {
            let Some(actual) = message.get(property) else {
                return Truth::Unknown;
            };
            // `x IN (a, b)` is `x = a OR x = b`.
            let mut result = Truth::False;
            for value in values {
                match compare(actual, value) {
                    Some(ordering) if ordering.is_eq() => return Truth::True,
                    Some(_) => {}
                    None => result = Truth::Unknown,
                }
            }
            result
        }
        Expr::Between {
            property,
            low,
            high,
        } => match message.get(property).and_then(Number::parse) {
            None => Truth::Unknown,
            Some(n) => Truth::from_bool(n.compare(*low).is_ge() && n.compare(*high).is_le()),
        },
        Expr::IsNull { property } => Truth::from_bool(message.get(property).is_none()),
        Expr::Like { property, pattern } => match message.get(property) {
            None => Truth::Unknown,
            Some(actual) => Truth::from_bool(pattern.matches(actual)),
        },
    }
}

/// How a property value compares to a literal, or None when the value is
/// not of the literal's type (not a number, not a boolean).
fn compare(actual: &str, literal: &Literal) -> Option<std::cmp::Ordering> {
    match literal {
        Literal::Str(s) => Some(actual.cmp(s.as_str())),
        Literal::Number(n) => Number::parse(actual).map(|a| a.compare(*n)),
        Literal::Bool(b) => parse_bool(actual).map(|a| a.cmp(b)),
    }
}

/// `true` / `false` in any case; anything else is not a boolean.
fn parse_bool(text: &str) -> Option<bool> {
    if text.eq_ignore_ascii_case("true") {
        Some(true)
    } else if text.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parser::parse;

    fn eval(src: &str, tag: Option<&str>, pairs: &[(&str, &str)]) -> Truth {
        let properties: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let expr = parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"));
        evaluate(
            &expr,
            &Message {
                tag,
                properties: &properties,
            },
        )
    }

    use Truth::{False as F, True as T, Unknown as U};

    #[test]
    fn missing_property_is_unknown() {
        for src in [
            "a = 1",
            "a <> 'x'",
            "a IN (1)",
            "a BETWEEN 1 AND 2",
            "a LIKE '%'",
        ] {
            assert_eq!(eval(src, None, &[]), U, "{src}");
            assert_eq!(eval(&format!("NOT {src}"), None, &[]), U, "{src}");
        }
        assert_eq!(eval("a IS NULL", None, &[]), T);
        assert_eq!(eval("a IS NOT NULL", None, &[]), F);
    }

    #[test]
    fn and_or_truth_tables() {
        // TRUE/FALSE constants and a missing property give the three values.
        let values = [("TRUE", T), ("FALSE", F), ("x = 1", U)];
        for (l, lv) in values {
            for (r, rv) in values {
                let and = match (lv, rv) {
                    (F, _) | (_, F) => F,
                    (T, T) => T,
                    _ => U,
                };
                let or = match (lv, rv) {
                    (T, _) | (_, T) => T,
                    (F, F) => F,
                    _ => U,
                };
                assert_eq!(eval(&format!("{l} AND {r}"), None, &[]), and, "{l} AND {r}");
                assert_eq!(eval(&format!("{l} OR {r}"), None, &[]), or, "{l} OR {r}");
            }
        }
    }

    #[test]
    fn numbers_strings_booleans() {
        assert_eq!(eval("a = 1", None, &[("a", "1.0")]), T);
        assert_eq!(eval("a > 1", None, &[("a", "x")]), U);
        assert_eq!(eval("a = '1.0'", None, &[("a", "1")]), F);
        assert_eq!(eval("a = TRUE", None, &[("a", "True")]), T);
        assert_eq!(eval("a = FALSE", None, &[("a", "yes")]), U);
        assert_eq!(eval("a <> FALSE", None, &[("a", "true")]), T);
    }

    #[test]
    fn in_with_unknown_items() {
        assert_eq!(eval("a IN (1, 'x')", None, &[("a", "x")]), T);
        assert_eq!(eval("a IN (1, 'y')", None, &[("a", "x")]), U);
        assert_eq!(eval("a IN ('y', 'z')", None, &[("a", "x")]), F);
        assert_eq!(eval("a IN (1, 2)", None, &[("a", "2")]), T);
    }

    #[test]
    fn tags_and_first_property_wins() {
        assert_eq!(eval("TAGS = 'x'", Some("x"), &[]), T);
        assert_eq!(eval("TAGS = 'x'", Some("x"), &[("TAGS", "y")]), F);
        assert_eq!(eval("TAGS IS NULL", None, &[]), T);
        assert_eq!(eval("tags = 'x'", Some("x"), &[]), U);
        assert_eq!(eval("a = 1", None, &[("a", "1"), ("a", "2")]), T);
    }
}
