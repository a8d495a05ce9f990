//! SQL92 parser: recursive descent from tokens to a typed [`Expr`].
//!
//! Grammar, loosest binding first:
//!
//! ```text
//! or        := and ( OR and )*
//! and       := not ( AND not )*
//! not       := NOT not | primary
//! primary   := '(' or ')' | operand [ predicate ]
//! predicate := cmp operand
//!            | [NOT] IN '(' literal ( ',' literal )* ')'
//!            | [NOT] BETWEEN number AND number
//!            | [NOT] LIKE string
//!            | IS [NOT] NULL
//! operand   := property | literal
//! ```
//!
//! An operand without a predicate is only a condition when it is `TRUE` or
//! `FALSE`; anything else is an error, as is anything after the condition.
//! Recursion happens only at `(` and `NOT`, and both count towards
//! [`MAX_DEPTH`], so no input can overflow the stack. Every error names what
//! was expected and what was found, at the found token's column.

use crate::sql::ast::{CmpOp, Expr, Literal};
use crate::sql::lexer::{lex, Keyword, Token, TokenKind};
use crate::sql::like::LikePattern;
use crate::sql::number::Number;
use crate::{FilterError, MAX_DEPTH, MAX_EXPRESSION_LEN, MAX_IN_ITEMS, MAX_LIKE_PATTERN_CHARS};

/// Parses a whole SQL92 condition. The length limit is checked before the
/// expression is even scanned.
pub(crate) fn parse(src: &str) -> Result<Expr, FilterError> {
    if src.len() > MAX_EXPRESSION_LEN {
        return Err(FilterError::too_long(src.len()));
    }
    if src.trim().is_empty() {
        return Err(FilterError::new(1, "empty SQL expression"));
    }
    let mut parser = Parser {
        tokens: lex(src)?,
        next: 0,
        depth: 0,
    };
    let expr = parser.or()?;
    let rest = parser.peek();
    match rest.kind {
        TokenKind::End => Ok(expr),
        TokenKind::RParen => Err(FilterError::new(
            rest.pos,
            "found ')' without a matching '('",
        )),
        _ => Err(expected("AND, OR or end of expression", rest)),
    }
}

/// "expected {what} but found {token}", at the token's column.
fn expected(what: &str, found: &Token<'_>) -> FilterError {
    FilterError::new(
        found.pos,
        format!("expected {what} but found {}", found.describe()),
    )
}

/// The literal a token denotes, if it is one.
fn literal(token: &Token<'_>) -> Option<Literal> {
    Some(match &token.kind {
        TokenKind::Str(s) => Literal::Str(s.clone()),
        TokenKind::Int(i) => Literal::Number(Number::Int(*i)),
        TokenKind::Dec(f) => Literal::Number(Number::Dec(*f)),
        TokenKind::Keyword(Keyword::True) => Literal::Bool(true),
        TokenKind::Keyword(Keyword::False) => Literal::Bool(false),
        _ => return None,
    })
}

fn number(token: &Token<'_>) -> Option<Number> {
    match token.kind {
        TokenKind::Int(i) => Some(Number::Int(i)),
        TokenKind::Dec(f) => Some(Number::Dec(f)),
        _ => None,
    }
}

struct Parser<'a> {
    /// Ends with exactly one `End` token.
    tokens: Vec<Token<'a>>,
    next: usize,
    /// Open parentheses and `NOT`s around the current position.
    depth: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &Token<'a> {
        &self.tokens[self.next]
    }

    fn peek_second(&self) -> &Token<'a> {
        &self.tokens[(self.next + 1).min(self.tokens.len() - 1)]
    }

    fn peek_is(&self, keyword: Keyword) -> bool {
        self.peek().kind == TokenKind::Keyword(keyword)
    }

    /// Takes the next token; at the end, keeps returning `End`.
    fn bump(&mut self) -> Token<'a> {
        let token = self.tokens[self.next].clone();
        if token.kind != TokenKind::End {
            self.next += 1;
        }
        token
    }

    /// Enters one more nesting level (at `at`, a `(` or `NOT`).
    fn enter(&mut self, at: &Token<'_>) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FilterError::new(
                at.pos,
                format!("expression nests deeper than the limit of {MAX_DEPTH} levels of parentheses and NOT"),
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        let mut items = vec![self.and()?];
        while self.peek_is(Keyword::Or) {
            self.bump();
            items.push(self.and()?);
        }
        Ok(flatten(items, Expr::Or))
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut items = vec![self.not()?];
        while self.peek_is(Keyword::And) {
            self.bump();
            items.push(self.not()?);
        }
        Ok(flatten(items, Expr::And))
    }

    fn not(&mut self) -> Result<Expr, FilterError> {
        if !self.peek_is(Keyword::Not) {
            return self.primary();
        }
        let not = self.bump();
        self.enter(&not)?;
        let inner = self.not()?;
        self.depth -= 1;
        Ok(Expr::Not(Box::new(inner)))
    }

    fn primary(&mut self) -> Result<Expr, FilterError> {
        let first = self.bump();
        match first.kind {
            TokenKind::LParen => {
                self.enter(&first)?;
                let inner = self.or()?;
                let close = self.bump();
                if close.kind != TokenKind::RParen {
                    let what = format!("AND, OR or ')' to close the '(' at column {}", first.pos);
                    return Err(expected(&what, &close));
                }
                self.depth -= 1;
                Ok(inner)
            }
            TokenKind::Ident
            | TokenKind::Str(_)
            | TokenKind::Int(_)
            | TokenKind::Dec(_)
            | TokenKind::Keyword(Keyword::True | Keyword::False) => self.predicate(first),
            _ => Err(expected("a condition", &first)),
        }
    }

    /// What follows an operand; `left` is the operand's token.
    fn predicate(&mut self, left: Token<'a>) -> Result<Expr, FilterError> {
        let next = self.peek().clone();
        match next.kind {
            TokenKind::Cmp(op) => {
                self.bump();
                self.comparison(left, &next, op)
            }
            TokenKind::Keyword(Keyword::In | Keyword::Between | Keyword::Like) => {
                self.negatable(&left)
            }
            TokenKind::Keyword(Keyword::Not) => {
                let after = self.peek_second();
                if !matches!(
                    after.kind,
                    TokenKind::Keyword(Keyword::In | Keyword::Between | Keyword::Like)
                ) {
                    return Err(expected("IN, BETWEEN or LIKE after NOT", after));
                }
                self.bump();
                Ok(Expr::Not(Box::new(self.negatable(&left)?)))
            }
            TokenKind::Keyword(Keyword::Is) => {
                let property = property_before(&left, "IS")?;
                self.bump();
                let negated = self.peek_is(Keyword::Not);
                if negated {
                    self.bump();
                }
                let null = self.bump();
                if null.kind != TokenKind::Keyword(Keyword::Null) {
                    let what = if negated {
                        "NULL after IS NOT"
                    } else {
                        "NULL or NOT NULL after IS"
                    };
                    return Err(expected(what, &null));
                }
                let is_null = Expr::IsNull { property };
                Ok(if negated {
                    Expr::Not(Box::new(is_null))
                } else {
                    is_null
                })
            }
            _ => match left.kind {
                TokenKind::Keyword(Keyword::True) => Ok(Expr::Const(true)),
                TokenKind::Keyword(Keyword::False) => Ok(Expr::Const(false)),
                _ => Err(expected(
                    &format!("an operator after {}", left.describe()),
                    &next,
                )),
            },
        }
    }

    /// `left op right`, with `op` (at token `op_token`) just consumed.
    fn comparison(
        &mut self,
        left: Token<'a>,
        op_token: &Token<'a>,
        op: CmpOp,
    ) -> Result<Expr, FilterError> {
        let right = self.bump();
        let after_op = format!("a value after '{}'", op_token.text);
        if right.kind != TokenKind::Ident && literal(&right).is_none() {
            return Err(expected(&after_op, &right));
        }
        let (property, op, value, value_token) = match (literal(&left), literal(&right)) {
            (None, Some(value)) => (left.text, op, value, &right),
            (Some(value), None) => (right.text, op.flip(), value, &left),
            (None, None) => {
                return Err(FilterError::new(
                    right.pos,
                    format!(
                        "expected a literal value after '{}' but found {}; a property can only be compared with a literal",
                        op_token.text,
                        right.describe()
                    ),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(FilterError::new(
                    left.pos,
                    format!(
                        "expected a property on one side of '{}' but found two literals",
                        op_token.text
                    ),
                ))
            }
        };
        if op.is_ordering() && !matches!(value, Literal::Number(_)) {
            return Err(FilterError::new(
                value_token.pos,
                format!(
                    "expected a number to compare with '{}' but found {}; only numbers are ordered",
                    op_token.text,
                    value_token.describe()
                ),
            ));
        }
        Ok(Expr::Compare {
            property: property.to_string(),
            op,
            value,
        })
    }

    /// `IN`, `BETWEEN` or `LIKE` (the next token) after the operand `left`.
    fn negatable(&mut self, left: &Token<'a>) -> Result<Expr, FilterError> {
        let keyword = self.bump();
        let TokenKind::Keyword(kw) = keyword.kind else {
            unreachable!("negatable is called only at IN, BETWEEN or LIKE")
        };
        let property = property_before(left, kw.name())?;
        match kw {
            Keyword::In => self.in_list(property),
            Keyword::Between => {
                let low_token = self.bump();
                let low = number(&low_token)
                    .ok_or_else(|| expected("a number after BETWEEN", &low_token))?;
                let and = self.bump();
                if and.kind != TokenKind::Keyword(Keyword::And) {
                    return Err(expected("AND between the bounds of BETWEEN", &and));
                }
                let high_token = self.bump();
                let high = number(&high_token)
                    .ok_or_else(|| expected("a number after BETWEEN ... AND", &high_token))?;
                Ok(Expr::Between {
                    property,
                    low,
                    high,
                })
            }
            _ => {
                let pattern_token = self.bump();
                let TokenKind::Str(pattern) = &pattern_token.kind else {
                    return Err(expected("a string pattern after LIKE", &pattern_token));
                };
                let chars = pattern.chars().count();
                if chars > MAX_LIKE_PATTERN_CHARS {
                    return Err(FilterError::new(
                        pattern_token.pos,
                        format!("LIKE pattern has {chars} characters, over the limit of {MAX_LIKE_PATTERN_CHARS}"),
                    ));
                }
                Ok(Expr::Like {
                    property,
                    pattern: LikePattern::compile(pattern),
                })
            }
        }
    }

    /// `( literal, ... )` after `IN`.
    fn in_list(&mut self, property: String) -> Result<Expr, FilterError> {
        let open = self.bump();
        if open.kind != TokenKind::LParen {
            return Err(expected("'(' after IN", &open));
        }
        let mut values = Vec::new();
        loop {
            let item = self.bump();
            let value =
                literal(&item).ok_or_else(|| expected("a literal value in the IN list", &item))?;
            if values.len() == MAX_IN_ITEMS {
                return Err(FilterError::new(
                    item.pos,
                    format!("IN list has more than the limit of {MAX_IN_ITEMS} items"),
                ));
            }
            values.push(value);
            let separator = self.bump();
            match separator.kind {
                TokenKind::Comma => continue,
                TokenKind::RParen => break,
                _ => return Err(expected("',' or ')' in the IN list", &separator)),
            }
        }
        Ok(Expr::In { property, values })
    }
}

/// The property named by `left`, which must be one for `IN`, `BETWEEN`,
/// `LIKE` and `IS` (named by `keyword`).
fn property_before(left: &Token<'_>, keyword: &str) -> Result<String, FilterError> {
    if left.kind == TokenKind::Ident {
        Ok(left.text.to_string())
    } else {
        Err(expected(&format!("a property name before {keyword}"), left))
    }
}

/// One item stays itself; two or more become a flat `AND`/`OR`.
fn flatten(mut items: Vec<Expr>, join: fn(Vec<Expr>) -> Expr) -> Expr {
    if items.len() == 1 {
        items.pop().expect("one item")
    } else {
        join(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> Expr {
        parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"))
    }

    fn err(src: &str) -> FilterError {
        parse(src).expect_err(src)
    }

    fn cmp(property: &str, op: CmpOp, value: Literal) -> Expr {
        Expr::Compare {
            property: property.into(),
            op,
            value,
        }
    }

    fn int(i: i64) -> Literal {
        Literal::Number(Number::Int(i))
    }

    #[test]
    fn comparisons_put_the_property_first() {
        assert_eq!(ok("a = 1"), cmp("a", CmpOp::Eq, int(1)));
        assert_eq!(ok("1 < a"), cmp("a", CmpOp::Gt, int(1)));
        assert_eq!(
            ok("'x' <> a"),
            cmp("a", CmpOp::Ne, Literal::Str("x".into()))
        );
        assert_eq!(ok("a != TRUE"), cmp("a", CmpOp::Ne, Literal::Bool(true)));
        assert_eq!(
            ok("a >= -1.5"),
            cmp("a", CmpOp::Ge, Literal::Number(Number::Dec(-1.5)))
        );
    }

    #[test]
    fn precedence_not_and_or() {
        let a = || cmp("a", CmpOp::Eq, int(1));
        let b = || cmp("b", CmpOp::Eq, int(2));
        let c = || cmp("c", CmpOp::Eq, int(3));
        assert_eq!(
            ok("a = 1 OR b = 2 AND c = 3"),
            Expr::Or(vec![a(), Expr::And(vec![b(), c()])])
        );
        assert_eq!(
            ok("NOT a = 1 AND b = 2"),
            Expr::And(vec![Expr::Not(Box::new(a())), b()])
        );
        assert_eq!(
            ok("(a = 1 OR b = 2) AND c = 3"),
            Expr::And(vec![Expr::Or(vec![a(), b()]), c()])
        );
        assert_eq!(ok("a = 1 or b = 2 or c = 3"), Expr::Or(vec![a(), b(), c()]));
    }

    #[test]
    fn negated_forms_wrap_in_not() {
        assert_eq!(
            ok("a NOT IN (1, 'x')"),
            Expr::Not(Box::new(Expr::In {
                property: "a".into(),
                values: vec![int(1), Literal::Str("x".into())]
            }))
        );
        assert_eq!(
            ok("a IS NOT NULL"),
            Expr::Not(Box::new(Expr::IsNull {
                property: "a".into()
            }))
        );
        assert!(matches!(ok("a not between 1 and 2"), Expr::Not(_)));
        assert!(matches!(ok("a NOT LIKE 'x%'"), Expr::Not(_)));
    }

    #[test]
    fn between_consumes_its_and() {
        assert_eq!(
            ok("a BETWEEN 1 AND 5 AND b IS NULL"),
            Expr::And(vec![
                Expr::Between {
                    property: "a".into(),
                    low: Number::Int(1),
                    high: Number::Int(5)
                },
                Expr::IsNull {
                    property: "b".into()
                }
            ])
        );
    }

    #[test]
    fn boolean_constants() {
        assert_eq!(ok("TRUE"), Expr::Const(true));
        assert_eq!(
            ok("false OR a = 1"),
            Expr::Or(vec![Expr::Const(false), cmp("a", CmpOp::Eq, int(1))])
        );
        assert_eq!(ok("TRUE = a"), cmp("a", CmpOp::Eq, Literal::Bool(true)));
    }

    #[test]
    fn error_messages_name_expected_and_found() {
        let e = err("abcd =");
        assert_eq!(
            e.to_string(),
            "expected a value after '=' but found end of expression at position 7"
        );
        let e = err("a = 1 b");
        assert_eq!(
            e.to_string(),
            "expected AND, OR or end of expression but found property 'b' at position 7"
        );
        assert_eq!(
            err("a").message,
            "expected an operator after property 'a' but found end of expression"
        );
        assert_eq!(
            err("1").message,
            "expected an operator after number 1 but found end of expression"
        );
        assert_eq!(err("a = 1)").message, "found ')' without a matching '('");
        let e = err("(a = 1");
        assert_eq!(e.position, 7);
        assert!(e.message.contains("')'"), "{e}");
        assert_eq!(err("a < 'x'").position, 5);
        assert_eq!(err("a = b").position, 5);
        assert_eq!(err("1 = 2").position, 1);
        assert_eq!(err("a NOT = 1").position, 7);
        assert_eq!(
            err("a IS 1").message,
            "expected NULL or NOT NULL after IS but found number 1"
        );
        assert_eq!(
            err("1 IN (1)").message,
            "expected a property name before IN but found number 1"
        );
        assert_eq!(err("a IN ()").position, 7);
        assert_eq!(err("a IN (1 2)").position, 9);
        assert_eq!(err("a IN 1").position, 6);
        assert_eq!(err("a BETWEEN 'x' AND 2").position, 11);
        assert_eq!(err("a BETWEEN 1 OR 2").position, 13);
        assert_eq!(err("a LIKE 1").position, 8);
        assert_eq!(err("   ").message, "empty SQL expression");
        assert_eq!(
            err("AND").message,
            "expected a condition but found keyword AND"
        );
    }

    #[test]
    fn depth_limit_counts_parens_and_nots() {
        let nested = |n: usize| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nested(MAX_DEPTH)).is_ok());
        let e = err(&nested(MAX_DEPTH + 1));
        assert_eq!(e.position, MAX_DEPTH + 1);
        let nots = |n: usize| format!("{}a = 1", "NOT ".repeat(n));
        assert!(parse(&nots(MAX_DEPTH)).is_ok());
        assert_eq!(err(&nots(MAX_DEPTH + 1)).position, 4 * MAX_DEPTH + 1);
        let mixed = format!("{}a = 1{}", "NOT (".repeat(32), ")".repeat(32));
        assert!(parse(&mixed).is_ok());
        let mixed = format!("{}NOT a = 1{}", "NOT (".repeat(32), ")".repeat(32));
        assert!(err(&mixed).message.contains("nests deeper"));
    }

    #[test]
    fn long_flat_chains_are_fine() {
        let chain = vec!["a = 1"; 400].join(" OR ");
        assert!(matches!(ok(&chain), Expr::Or(items) if items.len() == 400));
    }
}
