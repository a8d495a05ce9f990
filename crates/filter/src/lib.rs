//! Consumer filter expressions: which messages a consumer group wants.
//!
//! RocketMQ clients subscribe with one of two expression types, and Ferry
//! must accept exactly what they send:
//!
//! * **TAG** — `*` (everything) or tags joined by `||`. Matching looks only at
//!   the message tag, which the broker keeps in its index, so it costs no read
//!   of the message itself.
//! * **SQL92** — a boolean condition over the message's user properties, e.g.
//!   `region = 'eu' AND (price > 100 OR TAGS IN ('vip'))`. Matching needs the
//!   properties, so the caller must read the message first;
//!   [`Filter::needs_properties`] tells it when that is necessary.
//!
//! Expressions come from untrusted clients and are evaluated once per
//! candidate message on the receive path, so everything here is bounded:
//! expression length, nesting depth, `IN` list size and `LIKE` pattern size
//! are capped (see [`limits`]), parsing and evaluation never recurse deeper
//! than the nesting cap, and `LIKE` matching is polynomial, never exponential.
//!
//! Errors carry the 1-based character column where the problem starts, so a
//! client sees `expected a value after '=' but found end of expression at
//! position 7` rather than a bare "invalid expression".
//!
//! Modules: [`tag`] (TAG expressions), [`sql`] (the SQL92 dialect: lexer,
//! parser, evaluation), [`error`] ([`FilterError`]), [`limits`].

use std::fmt;

pub mod error;
pub mod limits;
pub mod sql;
pub mod tag;

pub use crate::error::FilterError;
pub use crate::limits::{MAX_DEPTH, MAX_EXPRESSION_LEN, MAX_IN_ITEMS, MAX_LIKE_PATTERN_CHARS};
pub use crate::sql::{SqlFilter, Truth};

/// A parsed subscription filter, ready to test messages against.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every message passes (`*` or an empty TAG expression).
    All,
    /// Messages whose tag is one of these (deduplicated, in first-seen order).
    Tags(Vec<String>),
    /// Messages whose properties satisfy an SQL92 condition.
    Sql(SqlFilter),
}

impl Filter {
    /// Parses a TAG expression.
    ///
    /// `*` or empty → [`Filter::All`]; `a || b || c` → [`Filter::Tags`].
    /// Errors: an empty part, `*` mixed with tags, a lone `|`, or an
    /// expression longer than [`MAX_EXPRESSION_LEN`] bytes.
    pub fn parse_tag(expr: &str) -> Result<Filter, FilterError> {
        tag::parse(expr)
    }

    /// Parses an SQL92 expression into [`Filter::Sql`].
    pub fn parse_sql(expr: &str) -> Result<Filter, FilterError> {
        SqlFilter::parse(expr).map(Filter::Sql)
    }

    /// True for [`Filter::Sql`]: matching needs the message's user
    /// properties, so the caller must read the message. TAG filters only need
    /// the tag, which the broker's index already holds.
    pub fn needs_properties(&self) -> bool {
        matches!(self, Filter::Sql(_))
    }

    /// Whether a message with this tag and these user properties passes.
    /// For [`Filter::All`] and [`Filter::Tags`] the properties are ignored; a
    /// message without a tag never passes a [`Filter::Tags`] filter.
    pub fn matches(&self, tag: Option<&str>, properties: &[(String, String)]) -> bool {
        match self {
            Filter::All => true,
            Filter::Tags(tags) => tag.is_some_and(|t| tags.iter().any(|x| x == t)),
            Filter::Sql(sql) => sql.matches(tag, properties),
        }
    }
}

/// Renders the filter back as an expression of its own type (`*`,
/// `a||b`, or the SQL text as the client sent it), for logs and admin views.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::All => f.write_str("*"),
            Filter::Tags(tags) => f.write_str(&tags.join("||")),
            Filter::Sql(sql) => f.write_str(sql.source()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn all_matches_everything() {
        let f = Filter::parse_tag("*").unwrap();
        assert_eq!(f, Filter::All);
        assert!(f.matches(None, &[]));
        assert!(f.matches(Some("x"), &[]));
        assert!(!f.needs_properties());
    }

    #[test]
    fn tags_ignore_properties() {
        let f = Filter::parse_tag("a || b").unwrap();
        assert!(!f.needs_properties());
        assert!(f.matches(Some("a"), &props(&[("TAGS", "zzz")])));
        assert!(!f.matches(Some("c"), &props(&[("TAGS", "a")])));
        assert!(!f.matches(None, &[]));
    }

    #[test]
    fn sql_needs_properties_and_matches() {
        let f = Filter::parse_sql("a = 1").unwrap();
        assert!(f.needs_properties());
        assert!(f.matches(None, &props(&[("a", "1")])));
        assert!(!f.matches(None, &props(&[("a", "2")])));
        assert!(!f.matches(None, &[]));
    }

    #[test]
    fn display_round_trips() {
        assert_eq!(Filter::All.to_string(), "*");
        assert_eq!(Filter::parse_tag("a || b").unwrap().to_string(), "a||b");
        assert_eq!(Filter::parse_sql("a = 1").unwrap().to_string(), "a = 1");
    }
}
