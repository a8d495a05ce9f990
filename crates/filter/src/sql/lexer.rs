//! SQL92 lexer: the expression as tokens, each with its 1-based column.
//!
//! Columns count characters, not bytes, so error positions line up with what
//! the user typed even around non-ASCII strings. Errors that are visible at
//! the character level (an unterminated string, `==`, a stray `"`) are
//! reported here, where the exact column is known.

use crate::sql::ast::CmpOp;
use crate::FilterError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    And,
    Or,
    Not,
    In,
    Between,
    Is,
    Null,
    Like,
    True,
    False,
}

impl Keyword {
    const ALL: [Keyword; 10] = [
        Keyword::And,
        Keyword::Or,
        Keyword::Not,
        Keyword::In,
        Keyword::Between,
        Keyword::Is,
        Keyword::Null,
        Keyword::Like,
        Keyword::True,
        Keyword::False,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Keyword::And => "AND",
            Keyword::Or => "OR",
            Keyword::Not => "NOT",
            Keyword::In => "IN",
            Keyword::Between => "BETWEEN",
            Keyword::Is => "IS",
            Keyword::Null => "NULL",
            Keyword::Like => "LIKE",
            Keyword::True => "TRUE",
            Keyword::False => "FALSE",
        }
    }

    /// Keywords are case-insensitive, so `and`, `And` and `AND` are one
    /// keyword; a property can therefore not be named like one.
    fn from_word(word: &str) -> Option<Keyword> {
        Keyword::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(word))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind {
    /// A property name; its text is the token's `text`.
    Ident,
    Keyword(Keyword),
    /// A string literal, quotes removed and `''` unescaped.
    Str(String),
    Int(i64),
    Dec(f64),
    Cmp(CmpOp),
    LParen,
    RParen,
    Comma,
    /// Always the last token; its column is one past the last character.
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token<'a> {
    pub(crate) kind: TokenKind,
    /// 1-based character column of the token's first character.
    pub(crate) pos: usize,
    /// The token as written.
    pub(crate) text: &'a str,
}

impl Token<'_> {
    /// How error messages name this token: "found property 'a'".
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            TokenKind::Ident => format!("property '{}'", shorten(self.text)),
            TokenKind::Keyword(k) => format!("keyword {}", k.name()),
            TokenKind::Str(_) => format!("string {}", shorten(self.text)),
            TokenKind::Int(_) | TokenKind::Dec(_) => format!("number {}", self.text),
            TokenKind::Cmp(_) | TokenKind::LParen | TokenKind::RParen | TokenKind::Comma => {
                format!("'{}'", self.text)
            }
            TokenKind::End => "end of expression".to_string(),
        }
    }
}

/// Keeps error messages short when the offending token is a long string.
fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    if text.chars().count() <= MAX_CHARS {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(MAX_CHARS).collect();
        short.push_str("...");
        short
    }
}

/// Describes a character (or the end) for "found ..." in lexer errors.
fn describe_char(c: Option<char>) -> String {
    match c {
        Some(c) => format!("'{}'", c.escape_debug()),
        None => "end of expression".to_string(),
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

/// Splits the whole expression into tokens, ending with [`TokenKind::End`].
pub(crate) fn lex(src: &str) -> Result<Vec<Token<'_>>, FilterError> {
    let mut lexer = Lexer { src, at: 0, col: 1 };
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next_token()?;
        let done = token.kind == TokenKind::End;
        tokens.push(token);
        if done {
            return Ok(tokens);
        }
    }
}

struct Lexer<'a> {
    src: &'a str,
    /// Byte offset of the next character.
    at: usize,
    /// Column of the next character.
    col: usize,
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<char> {
        self.src[self.at..].chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.src[self.at..].chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        self.col += 1;
        Some(c)
    }

    fn bump_while(&mut self, keep: impl Fn(char) -> bool) {
        while self.peek().is_some_and(&keep) {
            self.bump();
        }
    }

    fn next_token(&mut self) -> Result<Token<'a>, FilterError> {
        self.bump_while(char::is_whitespace);
        let (start, pos) = (self.at, self.col);
        let Some(c) = self.bump() else {
            return Ok(Token {
                kind: TokenKind::End,
                pos,
                text: "",
            });
        };
        let kind = match c {
            '(' => TokenKind::LParen,
            ')' => TokenKind::RParen,
            ',' => TokenKind::Comma,
            '=' if self.peek() == Some('=') => {
                return Err(FilterError::new(
                    pos,
                    "unknown operator '=='; equality is written '='",
                ))
            }
            '=' => TokenKind::Cmp(CmpOp::Eq),
            '<' => match self.peek() {
                Some('=') => self.bump_as(TokenKind::Cmp(CmpOp::Le)),
                Some('>') => self.bump_as(TokenKind::Cmp(CmpOp::Ne)),
                _ => TokenKind::Cmp(CmpOp::Lt),
            },
            '>' => match self.peek() {
                Some('=') => self.bump_as(TokenKind::Cmp(CmpOp::Ge)),
                _ => TokenKind::Cmp(CmpOp::Gt),
            },
            '!' if self.peek() == Some('=') => self.bump_as(TokenKind::Cmp(CmpOp::Ne)),
            '!' => {
                return Err(FilterError::new(
                    pos,
                    "unknown operator '!'; negation is written NOT",
                ))
            }
            '\'' => TokenKind::Str(self.string(pos)?),
            '"' => {
                return Err(FilterError::new(
                    pos,
                    "unexpected character '\"'; strings are quoted with single quotes",
                ))
            }
            '-' | '0'..='9' => self.number(c, start, pos)?,
            'a'..='z' | 'A'..='Z' | '_' => {
                self.bump_while(is_ident_char);
                Keyword::from_word(&self.src[start..self.at])
                    .map_or(TokenKind::Ident, TokenKind::Keyword)
            }
            other => {
                return Err(FilterError::new(
                    pos,
                    format!("unexpected character {}", describe_char(Some(other))),
                ))
            }
        };
        Ok(Token {
            kind,
            pos,
            text: &self.src[start..self.at],
        })
    }

    /// Consumes the second character of a two-character operator.
    fn bump_as(&mut self, kind: TokenKind) -> TokenKind {
        self.bump();
        kind
    }

    /// The rest of a string literal whose opening quote (at column `pos`)
    /// was just read.
    fn string(&mut self, pos: usize) -> Result<String, FilterError> {
        let mut value = String::new();
        loop {
            match self.bump() {
                // The Display impl appends " at position N".
                None => return Err(FilterError::new(pos, "unterminated string starting")),
                Some('\'') if self.peek() == Some('\'') => {
                    self.bump();
                    value.push('\'');
                }
                Some('\'') => return Ok(value),
                Some(c) => value.push(c),
            }
        }
    }

    /// The rest of a number whose first character (`-` or a digit, at byte
    /// `start` and column `pos`) was just read: `-?digits(.digits)?`.
    fn number(&mut self, first: char, start: usize, pos: usize) -> Result<TokenKind, FilterError> {
        if first == '-' && !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return Err(FilterError::new(
                self.col,
                format!(
                    "expected a digit after '-' but found {}",
                    describe_char(self.peek())
                ),
            ));
        }
        self.bump_while(|c| c.is_ascii_digit());
        let mut decimal = false;
        if self.peek() == Some('.') && self.peek_second().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
            self.bump_while(|c| c.is_ascii_digit());
            decimal = true;
        }
        if self.peek().is_some_and(is_ident_char) {
            self.bump_while(is_ident_char);
            return Err(FilterError::new(
                pos,
                format!("malformed number '{}'", &self.src[start..self.at]),
            ));
        }
        let text = &self.src[start..self.at];
        if decimal {
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(TokenKind::Dec(f)),
                _ => Err(FilterError::new(
                    pos,
                    format!("number {text} is out of range"),
                )),
            }
        } else {
            text.parse::<i64>().map(TokenKind::Int).map_err(|_| {
                FilterError::new(pos, format!("integer {text} does not fit in 64 bits"))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<TokenKind> {
        lex(src).unwrap().into_iter().map(|t| t.kind).collect()
    }

    fn err(src: &str) -> FilterError {
        lex(src).expect_err(src)
    }

    #[test]
    fn tokens_and_columns() {
        let tokens = lex("a.b_1 <= 'x''y'").unwrap();
        let summary: Vec<(usize, &str)> = tokens.iter().map(|t| (t.pos, t.text)).collect();
        assert_eq!(
            summary,
            vec![(1, "a.b_1"), (7, "<="), (10, "'x''y'"), (16, "")]
        );
        assert_eq!(tokens[2].kind, TokenKind::Str("x'y".into()));
    }

    #[test]
    fn columns_count_characters() {
        let tokens = lex("'héé' = a").unwrap();
        assert_eq!(tokens[1].pos, 7);
        assert_eq!(tokens[3].pos, 10);
    }

    #[test]
    fn operators() {
        use CmpOp::*;
        let ops: Vec<TokenKind> = [Eq, Ne, Ne, Lt, Le, Gt, Ge]
            .into_iter()
            .map(TokenKind::Cmp)
            .collect();
        let mut expected = ops;
        expected.extend([
            TokenKind::LParen,
            TokenKind::RParen,
            TokenKind::Comma,
            TokenKind::End,
        ]);
        assert_eq!(kinds("= <> != < <= > >= ( ) ,"), expected);
        assert_eq!(kinds("a<>b")[1], TokenKind::Cmp(Ne));
    }

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(
            kinds("and Or nOT")[..3],
            [
                TokenKind::Keyword(Keyword::And),
                TokenKind::Keyword(Keyword::Or),
                TokenKind::Keyword(Keyword::Not)
            ]
        );
        assert_eq!(
            kinds("TAGS tags android")[..3],
            [TokenKind::Ident, TokenKind::Ident, TokenKind::Ident]
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(
            kinds("12 -3 1.25 -0.5")[..4],
            [
                TokenKind::Int(12),
                TokenKind::Int(-3),
                TokenKind::Dec(1.25),
                TokenKind::Dec(-0.5)
            ]
        );
        assert_eq!(kinds("-9223372036854775808")[0], TokenKind::Int(i64::MIN));
        assert_eq!(kinds("a=-1")[2], TokenKind::Int(-1));
    }

    #[test]
    fn number_errors() {
        assert_eq!(err("a = 12abc").message, "malformed number '12abc'");
        assert_eq!(err("a = 12abc").position, 5);
        assert_eq!(err("1.").message, "malformed number '1.'");
        assert_eq!(err("1.2.3").position, 1);
        let e = err("9223372036854775808");
        assert!(e.message.contains("64 bits"), "{e}");
        let e = err("a = - 1");
        assert_eq!(
            (e.position, e.message.as_str()),
            (6, "expected a digit after '-' but found ' '")
        );
        assert_eq!(
            err("a = -").message,
            "expected a digit after '-' but found end of expression"
        );
        let huge = format!("1{}.5", "0".repeat(400));
        assert!(err(&huge).message.contains("out of range"));
    }

    #[test]
    fn string_errors() {
        let e = err("a = 'abc");
        assert_eq!(e.to_string(), "unterminated string starting at position 5");
        assert_eq!(err("a = 'it''s").position, 5);
        assert_eq!(err("a = \"x\"").position, 5);
    }

    #[test]
    fn operator_errors() {
        let e = err("a == 1");
        assert_eq!(e.position, 3);
        assert!(e.message.starts_with("unknown operator '=='"), "{e}");
        assert_eq!(err("!a").position, 1);
        assert_eq!(err("a = 1 # x").position, 7);
        assert_eq!(err("a = $").message, "unexpected character '$'");
        assert_eq!(err("é = 1").position, 1);
    }

    #[test]
    fn describe_tokens() {
        let tokens = lex("a AND 'x' 1.5 <> ( ").unwrap();
        let described: Vec<String> = tokens.iter().map(Token::describe).collect();
        assert_eq!(
            described,
            [
                "property 'a'",
                "keyword AND",
                "string 'x'",
                "number 1.5",
                "'<>'",
                "'('",
                "end of expression"
            ]
        );
        let long = format!("'{}'", "x".repeat(100));
        let tokens = lex(&long).unwrap();
        assert!(tokens[0].describe().ends_with("..."));
    }
}
