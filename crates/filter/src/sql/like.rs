//! `LIKE` patterns: `%` matches any run of characters, `_` exactly one.
//!
//! The naive recursive matcher backtracks exponentially on patterns such as
//! `%a%a%a%a%b` against `aaaa…`, which a client could use to stall the
//! broker. This one is iterative: on a mismatch it only returns to the most
//! recent `%` and lets it absorb one more character. That is enough because
//! a later `%` can absorb whatever an earlier one could, so the work is at
//! most (pattern length × value length) steps, with no allocation per match.
//! Characters are Unicode scalar values, so `_` matches `é` whole.

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Char(char),
    /// `_`
    AnyOne,
    /// `%`
    AnyRun,
}

impl LikePattern {
    /// Compiles a pattern. Consecutive `%` collapse into one (same meaning,
    /// less work).
    pub(crate) fn compile(pattern: &str) -> LikePattern {
        let mut pieces: Vec<Piece> = Vec::with_capacity(pattern.len());
        for c in pattern.chars() {
            let piece = match c {
                '%' => Piece::AnyRun,
                '_' => Piece::AnyOne,
                other => Piece::Char(other),
            };
            if !(piece == Piece::AnyRun && pieces.last() == Some(&Piece::AnyRun)) {
                pieces.push(piece);
            }
        }
        LikePattern { pieces }
    }

    /// Whether the whole of `text` matches the pattern.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let pieces = &self.pieces;
        let mut p = 0; // next piece
        let mut t = 0; // byte offset of the next character of text
                       // After the last `%` seen: the piece following it and the text
                       // offset where that `%` currently stops absorbing.
        let mut resume: Option<(usize, usize)> = None;
        while let Some(c) = text[t..].chars().next() {
            match pieces.get(p) {
                Some(Piece::AnyRun) => {
                    p += 1;
                    resume = Some((p, t));
                    continue;
                }
                Some(Piece::AnyOne) => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                Some(Piece::Char(want)) if *want == c => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                _ => {}
            }
            // Mismatch: let the last `%` absorb one more character and retry.
            let Some((after_run, absorbed_to)) = resume else {
                return false;
            };
            let skipped = text[absorbed_to..].chars().next().map_or(0, char::len_utf8);
            let next = absorbed_to + skipped;
            resume = Some((after_run, next));
            p = after_run;
            t = next;
        }
        pieces[p..].iter().all(|piece| *piece == Piece::AnyRun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn like(text: &str, pattern: &str) -> bool {
        LikePattern::compile(pattern).matches(text)
    }

    /// Obviously correct, exponential reference matcher for small inputs.
    fn reference(text: &[char], pattern: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('%', rest)) => (0..=text.len()).any(|k| reference(&text[k..], rest)),
            Some(('_', rest)) => !text.is_empty() && reference(&text[1..], rest),
            Some((c, rest)) => text.first() == Some(c) && reference(&text[1..], rest),
        }
    }

    #[test]
    fn examples() {
        assert!(like("abc", "abc"));
        assert!(!like("abc", "ab"));
        assert!(!like("ab", "abc"));
        assert!(like("", ""));
        assert!(like("", "%"));
        assert!(!like("", "_"));
        assert!(like("abc", "a%"));
        assert!(like("abc", "%c"));
        assert!(like("abc", "%b%"));
        assert!(like("abc", "a_c"));
        assert!(!like("abbc", "a_c"));
        assert!(like("a%b", "a%b"));
        assert!(like("aXbYb", "a%b"));
        assert!(like("mississippi", "m%iss%ppi"));
        assert!(!like("mississippi", "m%iss%ppx"));
        assert!(like("héllo", "h_llo"));
        assert!(like("日本語", "_本_"));
        assert!(like("abc", "%%%"));
        assert!(!like("abd", "%c"));
    }

    #[test]
    fn adversarial_pattern_is_fast() {
        let text = "a".repeat(10_000);
        let pattern = format!("{}b", "%a".repeat(100));
        let start = std::time::Instant::now();
        assert!(!like(&text, &pattern));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    proptest! {
        #[test]
        fn agrees_with_reference(text in "[ab%_é]{0,10}", pattern in "[ab%_é]{0,8}") {
            let t: Vec<char> = text.chars().collect();
            let p: Vec<char> = pattern.chars().collect();
            prop_assert_eq!(like(&text, &pattern), reference(&t, &p));
        }

        #[test]
        fn no_wildcards_means_equality(text in "[abc]{0,6}", pattern in "[abc]{0,6}") {
            prop_assert_eq!(like(&text, &pattern), text == pattern);
        }
    }
}
