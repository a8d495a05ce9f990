//! Tag filter expressions: `*` (everything) or `a||b||c`.

use crate::BrokerError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All,
    Tags(Vec<String>),
}

impl Filter {
    /// Parses a TAG expression. Empty and `*` select everything.
    pub fn parse_tag(expr: &str) -> Result<Filter, BrokerError> {
        let expr = expr.trim();
        if expr.is_empty() || expr == "*" {
            return Ok(Filter::All);
        }
        let mut tags = Vec::new();
        for part in expr.split("||") {
            let t = part.trim();
            if t.is_empty() || t == "*" || t.contains('|') {
                return Err(BrokerError::IllegalFilter(format!(
                    "{expr:?}: expected `*` or tags joined by `||`"
                )));
            }
            tags.push(t.to_string());
        }
        Ok(Filter::Tags(tags))
    }

    pub fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            Filter::All => true,
            Filter::Tags(tags) => tag.is_some_and(|t| tags.iter().any(|x| x == t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        assert_eq!(Filter::parse_tag("*").unwrap(), Filter::All);
        assert_eq!(Filter::parse_tag("").unwrap(), Filter::All);
        let f = Filter::parse_tag("a || b").unwrap();
        assert!(f.matches(Some("a")) && f.matches(Some("b")));
        assert!(!f.matches(Some("c")) && !f.matches(None));
        assert!(Filter::parse_tag("a|||b").is_err());
        assert!(Filter::parse_tag("a||").is_err());
        assert!(Filter::parse_tag("a|b").is_err());
    }
}
