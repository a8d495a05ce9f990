//! The SQL92 filter dialect, as RocketMQ's SQL92 message filter.
//!
//! A condition over the message's user properties (all strings) and its tag:
//!
//! * Identifiers `[A-Za-z_][A-Za-z0-9_.]*` name properties. `TAGS`
//!   (case-sensitive) names the message tag when no user property of that
//!   name exists.
//! * Literals: `'strings'` (`''` is a quote), integers (i64, optional leading
//!   `-`), decimals (`-1.5`, f64, no exponent), `TRUE`/`FALSE`.
//! * `=`, `<>` (or `!=`), `<`, `<=`, `>`, `>=`, `[NOT] IN (...)`,
//!   `[NOT] BETWEEN a AND b`, `IS [NOT] NULL`, `[NOT] LIKE 'p%t_rn'`, `AND`,
//!   `OR`, `NOT`, parentheses, and bare `TRUE`/`FALSE`. Keywords are
//!   case-insensitive. Precedence: comparisons, then `NOT`, `AND`, `OR`.
//!
//! Typing, decided at parse time where possible so mistakes surface when the
//! client subscribes rather than as silently empty deliveries:
//!
//! * A comparison has a property on one side and a literal on the other
//!   (either order). Property against property and literal against literal
//!   are rejected.
//! * Against a number, the property value is read as a number: an i64 if it
//!   is one, otherwise a finite f64 (`[+-]digits[.digits][e[+-]digits]`, no
//!   surrounding whitespace, no `inf`/`nan`). Integers and decimals compare
//!   exactly, without rounding the integer. A value that is not a number
//!   makes the comparison UNKNOWN.
//! * Against a string only `=` and `<>` are allowed (as in RocketMQ, which
//!   orders numbers only); `<`, `<=`, `>`, `>=` and `BETWEEN` need numbers
//!   and a string there is a parse error.
//! * Against a boolean only `=` and `<>`; the value must be `true` or
//!   `false` (any case), otherwise UNKNOWN.
//! * `IN` items may be any literals, each compared as `=` would.
//!
//! Evaluation is three-valued ([`Truth`]): a missing property makes a
//! comparison, `IN`, `BETWEEN` and `LIKE` UNKNOWN, `NOT UNKNOWN` is UNKNOWN,
//! `AND`/`OR` follow SQL, and `IS NULL` is TRUE exactly when the property is
//! missing. A message matches only when the whole condition is TRUE.
//!
//! Private modules: `lexer` (tokens with columns), `parser` (recursive
//! descent into an `ast`), `eval` (three-valued evaluation), `number`
//! (number reading and exact comparison), `like` (pattern matching).

use std::fmt;

pub(crate) mod ast;
pub(crate) mod eval;
pub(crate) mod lexer;
pub(crate) mod like;
pub(crate) mod number;
pub(crate) mod parser;

use crate::FilterError;

/// SQL's three truth values. Kept public so callers (and tests) can tell a
/// condition that is FALSE from one that could not be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    pub(crate) fn from_bool(b: bool) -> Truth {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }
}

/// SQL `NOT`: UNKNOWN stays UNKNOWN.
impl std::ops::Not for Truth {
    type Output = Truth;

    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

/// A parsed SQL92 condition, with the text it came from.
#[derive(Clone)]
pub struct SqlFilter {
    source: String,
    expr: ast::Expr,
}

impl SqlFilter {
    /// Parses an SQL92 condition. The expression must be non-empty, a
    /// boolean condition as a whole, and within the [`crate::limits`].
    pub fn parse(expr: &str) -> Result<SqlFilter, FilterError> {
        let parsed = parser::parse(expr)?;
        Ok(SqlFilter {
            source: expr.to_string(),
            expr: parsed,
        })
    }

    /// The expression as the client sent it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The condition's truth value for a message with this tag and these
    /// user properties (the first property of a name wins).
    pub fn evaluate(&self, tag: Option<&str>, properties: &[(String, String)]) -> Truth {
        eval::evaluate(&self.expr, &eval::Message { tag, properties })
    }

    /// Whether the message passes: the condition is TRUE (not UNKNOWN).
    pub fn matches(&self, tag: Option<&str>, properties: &[(String, String)]) -> bool {
        self.evaluate(tag, properties) == Truth::True
    }
}

/// Two filters are equal when they parse to the same condition, whatever
/// their spacing or keyword case.
impl PartialEq for SqlFilter {
    fn eq(&self, other: &SqlFilter) -> bool {
        self.expr == other.expr
    }
}

impl fmt::Debug for SqlFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SqlFilter").field(&self.source).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_ignores_spacing_and_case() {
        let a = SqlFilter::parse("a = 1 and b is null").unwrap();
        let b = SqlFilter::parse("a=1   AND b IS NULL").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, SqlFilter::parse("a = 2 AND b IS NULL").unwrap());
    }

    #[test]
    fn debug_shows_source() {
        let f = SqlFilter::parse("a = 1").unwrap();
        assert_eq!(format!("{f:?}"), "SqlFilter(\"a = 1\")");
        assert_eq!(f.source(), "a = 1");
    }

    #[test]
    fn truth_not() {
        assert_eq!(!Truth::True, Truth::False);
        assert_eq!(!Truth::False, Truth::True);
        assert_eq!(!Truth::Unknown, Truth::Unknown);
        assert_eq!(Truth::from_bool(true), Truth::True);
    }
}
