//! TAG expressions: `*` (everything) or tags joined by `||`.
//!
//! RocketMQ clients send `*` for "no filter" and `a || b` for "any of these
//! tags"; whitespace around each tag is insignificant. A hand scanner rather
//! than `split("||")` so that each error can name the column where it starts
//! (an empty part, a lone `|`, a `*` among tags).

use crate::{Filter, FilterError, MAX_EXPRESSION_LEN};

/// What follows a tag part: the `||` at a column, or the end of the
/// expression (whose column is one past the last character).
enum After {
    Separator(usize),
    End(usize),
}

/// Parses a TAG expression; see [`Filter::parse_tag`].
pub fn parse(expr: &str) -> Result<Filter, FilterError> {
    if expr.len() > MAX_EXPRESSION_LEN {
        return Err(FilterError::too_long(expr.len()));
    }
    let trimmed = expr.trim();
    if trimmed.is_empty() || trimmed == "*" {
        return Ok(Filter::All);
    }

    let mut tags: Vec<String> = Vec::new();
    let mut part_start = 0; // byte offset of the current part
    let mut part_col = 1; // its column
    let mut col = 0; // column of the character just read
    let mut chars = expr.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        col += 1;
        if c != '|' {
            continue;
        }
        if chars.peek().map(|&(_, next)| next) != Some('|') {
            return Err(FilterError::new(
                col,
                "expected '||' between tags but found a lone '|'",
            ));
        }
        chars.next();
        push_part(
            &mut tags,
            &expr[part_start..at],
            part_col,
            After::Separator(col),
        )?;
        col += 1;
        part_start = at + 2;
        part_col = col + 1;
    }
    push_part(
        &mut tags,
        &expr[part_start..],
        part_col,
        After::End(col + 1),
    )?;
    Ok(Filter::Tags(tags))
}

/// Checks one `||`-separated part (starting at column `col`) and adds its
/// tag unless already present: duplicates change nothing but the cost of
/// matching.
fn push_part(
    tags: &mut Vec<String>,
    raw: &str,
    col: usize,
    after: After,
) -> Result<(), FilterError> {
    let tag = raw.trim();
    if tag.is_empty() {
        return Err(match after {
            After::Separator(at) => FilterError::new(at, "expected a tag but found '||'"),
            After::End(at) => {
                FilterError::new(at, "expected a tag after '||' but found end of expression")
            }
        });
    }
    if tag == "*" {
        let leading = raw.chars().take_while(|c| c.is_whitespace()).count();
        return Err(FilterError::new(
            col + leading,
            "'*' selects every tag and cannot be combined with other tags",
        ));
    }
    if !tags.iter().any(|t| t == tag) {
        tags.push(tag.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tags(list: &[&str]) -> Filter {
        Filter::Tags(list.iter().map(|t| t.to_string()).collect())
    }

    fn err(expr: &str) -> FilterError {
        parse(expr).expect_err(expr)
    }

    #[test]
    fn star_and_empty_select_everything() {
        for expr in ["", "   ", "*", " * "] {
            assert_eq!(parse(expr).unwrap(), Filter::All, "{expr:?}");
        }
    }

    #[test]
    fn tags_are_trimmed_and_deduplicated() {
        assert_eq!(parse("a").unwrap(), tags(&["a"]));
        assert_eq!(parse(" a || b ||c ").unwrap(), tags(&["a", "b", "c"]));
        assert_eq!(parse("a||b||a").unwrap(), tags(&["a", "b"]));
        assert_eq!(parse("tag with space").unwrap(), tags(&["tag with space"]));
        assert_eq!(parse("a*b").unwrap(), tags(&["a*b"]));
        assert_eq!(parse("é||ü").unwrap(), tags(&["é", "ü"]));
    }

    #[test]
    fn empty_parts_point_at_what_follows() {
        let e = err("a||");
        assert_eq!(
            (e.position, e.message.as_str()),
            (4, "expected a tag after '||' but found end of expression")
        );
        let e = err("||a");
        assert_eq!(
            (e.position, e.message.as_str()),
            (1, "expected a tag but found '||'")
        );
        assert_eq!(err("a|| ||b").position, 5);
        assert_eq!(err("a||||b").position, 4);
        assert_eq!(err("||").position, 1);
    }

    #[test]
    fn lone_pipe_is_rejected_at_its_column() {
        assert_eq!(err("a|b").position, 2);
        assert_eq!(err("a|||b").position, 4);
        assert_eq!(err("a|").position, 2);
        assert_eq!(err("éé|b").position, 3);
        assert!(err("a|b").message.contains("lone '|'"));
    }

    #[test]
    fn star_cannot_be_mixed_with_tags() {
        let e = err("a|| *");
        assert_eq!(e.position, 5);
        assert!(e.message.contains("'*'"));
        assert_eq!(err("*||a").position, 1);
        assert_eq!(err("*||*").position, 1);
    }

    proptest! {
        #[test]
        fn joined_tags_parse_back(list in prop::collection::vec("[a-zA-Z0-9_.-]{1,6}", 1..8), glue in "[ ]{0,2}[|][|][ ]{0,2}") {
            let mut unique: Vec<String> = Vec::new();
            for t in &list {
                if !unique.contains(t) {
                    unique.push(t.clone());
                }
            }
            prop_assert_eq!(parse(&list.join(&glue)).unwrap(), Filter::Tags(unique));
        }

        #[test]
        fn errors_point_inside_or_just_past(expr in "[a |*]{0,20}") {
            if let Err(e) = parse(&expr) {
                prop_assert!(e.position >= 1 && e.position <= expr.chars().count() + 1, "{expr:?}: {e}");
            }
        }
    }

    #[test]
    fn length_limit_is_checked_first() {
        let long = "a".repeat(MAX_EXPRESSION_LEN + 1);
        let e = err(&long);
        assert_eq!(e.position, 1);
        assert!(e.message.contains("4096"));
        let ok = "a".repeat(MAX_EXPRESSION_LEN);
        assert!(parse(&ok).is_ok());
    }
}
