//! Caps on what a client may ask the broker to evaluate.
//!
//! A filter is evaluated against every candidate message of a receive call,
//! and it comes from an untrusted client, so its cost must be bounded up
//! front. The caps are generous for real subscriptions and small enough that
//! the worst expression is cheap to parse, to keep in memory per group, and
//! to evaluate per message. Each is checked before the work it bounds.

/// Longest expression, in bytes (TAG and SQL92). Checked before scanning.
pub const MAX_EXPRESSION_LEN: usize = 4096;

/// Deepest nesting of parentheses and `NOT`s in an SQL92 expression. It
/// bounds the parser's and the evaluator's recursion, so no expression can
/// overflow the stack.
pub const MAX_DEPTH: usize = 64;

/// Most values in one `IN (...)` list.
pub const MAX_IN_ITEMS: usize = 1024;

/// Longest `LIKE` pattern, in characters. Matching costs at most
/// (pattern length × value length) steps, so this bounds it per message.
pub const MAX_LIKE_PATTERN_CHARS: usize = 256;
