//! The SQL92 dialect through the public API: a table of conditions and
//! messages with their expected truth value, a table of bad expressions with
//! the column each error must point at, the limits, and property tests.

use ferry_filter::{
    Filter, FilterError, SqlFilter, Truth, MAX_DEPTH, MAX_EXPRESSION_LEN, MAX_IN_ITEMS,
    MAX_LIKE_PATTERN_CHARS,
};
use proptest::prelude::*;

use Truth::{False as F, True as T, Unknown as U};

fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sql(expr: &str) -> SqlFilter {
    SqlFilter::parse(expr).unwrap_or_else(|e| panic!("{expr:?}: {e}"))
}

/// (expression, tag, properties, expected truth value)
type Case = (
    &'static str,
    Option<&'static str>,
    &'static [(&'static str, &'static str)],
    Truth,
);

const CASES: &[Case] = &[
    // = and <> against numbers: the value is read as a number.
    ("a = 1", None, &[("a", "1")], T),
    ("a = 1", None, &[("a", "2")], F),
    ("a = 1", None, &[("a", "1.0")], T),
    ("a = 1", None, &[("a", "+1")], T),
    ("a = 1", None, &[("a", " 1")], U),
    ("a = 1", None, &[("a", "one")], U),
    ("a = 1", None, &[], U),
    ("a = 1.5", None, &[("a", "1.50")], T),
    ("a = 100", None, &[("a", "1e2")], T),
    ("a = -3", None, &[("a", "-3")], T),
    ("a <> 1", None, &[("a", "2")], T),
    ("a <> 1", None, &[("a", "1")], F),
    ("a != 1", None, &[("a", "2")], T),
    ("a <> 1", None, &[("a", "x")], U),
    (
        "a = 9223372036854775807",
        None,
        &[("a", "9223372036854775807")],
        T,
    ),
    (
        "a > 9007199254740992",
        None,
        &[("a", "9007199254740993")],
        T,
    ),
    // Ordering.
    ("a < 10", None, &[("a", "9")], T),
    ("a < 10", None, &[("a", "10")], F),
    ("a <= 10", None, &[("a", "10")], T),
    ("a > 10", None, &[("a", "10.5")], T),
    ("a > 10", None, &[("a", "9.99")], F),
    ("a >= -1.5", None, &[("a", "-1.5")], T),
    ("a >= -1.5", None, &[("a", "-2")], F),
    ("a < 10", None, &[("a", "abc")], U),
    ("a < 10", None, &[], U),
    ("10 > a", None, &[("a", "9")], T),
    ("10 <= a", None, &[("a", "9")], F),
    ("a < 2", None, &[("a", "10")], F), // numeric, not lexicographic
    // Strings: exact, case-sensitive, never numeric.
    ("a = 'x'", None, &[("a", "x")], T),
    ("a = 'x'", None, &[("a", "X")], F),
    ("a = '1'", None, &[("a", "1.0")], F),
    ("a = ''", None, &[("a", "")], T),
    ("a = 'it''s'", None, &[("a", "it's")], T),
    ("a <> 'x'", None, &[("a", "y")], T),
    ("a <> 'x'", None, &[], U),
    ("'x' = a", None, &[("a", "x")], T),
    ("a = 'héllo wörld'", None, &[("a", "héllo wörld")], T),
    // Booleans.
    ("a = TRUE", None, &[("a", "true")], T),
    ("a = TRUE", None, &[("a", "TRUE")], T),
    ("a = TRUE", None, &[("a", "false")], F),
    ("a = true", None, &[("a", "1")], U),
    ("a <> FALSE", None, &[("a", "true")], T),
    // IN / NOT IN.
    ("a IN ('x', 'y')", None, &[("a", "y")], T),
    ("a IN ('x', 'y')", None, &[("a", "z")], F),
    ("a IN ('x')", None, &[], U),
    ("a NOT IN ('x', 'y')", None, &[("a", "z")], T),
    ("a NOT IN ('x', 'y')", None, &[("a", "x")], F),
    ("a NOT IN ('x', 'y')", None, &[], U),
    ("a IN (1, 2, 3)", None, &[("a", "2.0")], T),
    ("a IN (1, 2)", None, &[("a", "z")], U),
    ("a IN (1, 'z')", None, &[("a", "z")], T),
    ("a IN (TRUE)", None, &[("a", "True")], T),
    // BETWEEN / NOT BETWEEN: inclusive.
    ("a BETWEEN 1 AND 5", None, &[("a", "1")], T),
    ("a BETWEEN 1 AND 5", None, &[("a", "5")], T),
    ("a BETWEEN 1 AND 5", None, &[("a", "3.5")], T),
    ("a BETWEEN 1 AND 5", None, &[("a", "5.01")], F),
    ("a BETWEEN 1 AND 5", None, &[("a", "0")], F),
    ("a BETWEEN 5 AND 1", None, &[("a", "3")], F),
    ("a BETWEEN 1 AND 5", None, &[("a", "x")], U),
    ("a BETWEEN 1 AND 5", None, &[], U),
    ("a NOT BETWEEN 1 AND 5", None, &[("a", "6")], T),
    ("a NOT BETWEEN 1 AND 5", None, &[("a", "3")], F),
    ("a NOT BETWEEN 1 AND 5", None, &[], U),
    ("a BETWEEN -1.5 AND 1.5", None, &[("a", "-1")], T),
    // IS [NOT] NULL: never UNKNOWN.
    ("a IS NULL", None, &[], T),
    ("a IS NULL", None, &[("a", "")], F),
    ("a IS NOT NULL", None, &[("a", "")], T),
    ("a IS NOT NULL", None, &[("b", "1")], F),
    // LIKE / NOT LIKE.
    ("a LIKE 'ab%'", None, &[("a", "abc")], T),
    ("a LIKE 'ab%'", None, &[("a", "ab")], T),
    ("a LIKE 'ab%'", None, &[("a", "xab")], F),
    ("a LIKE '%b%'", None, &[("a", "abc")], T),
    ("a LIKE 'a_c'", None, &[("a", "abc")], T),
    ("a LIKE 'a_c'", None, &[("a", "ac")], F),
    ("a LIKE 'a_c'", None, &[("a", "aéc")], T),
    ("a LIKE 'abc'", None, &[("a", "ABC")], F),
    ("a LIKE '%'", None, &[("a", "")], T),
    ("a LIKE '1%'", None, &[("a", "10")], T),
    ("a LIKE 'x'", None, &[], U),
    ("a NOT LIKE 'ab%'", None, &[("a", "xyz")], T),
    ("a NOT LIKE 'ab%'", None, &[("a", "abc")], F),
    ("a NOT LIKE 'ab%'", None, &[], U),
    // NOT and three-valued logic.
    ("NOT a = 1", None, &[("a", "2")], T),
    ("NOT a = 1", None, &[("a", "1")], F),
    ("NOT a = 1", None, &[], U),
    ("NOT NOT a = 1", None, &[("a", "1")], T),
    ("NOT (a = 1)", None, &[], U),
    ("a = 1 AND b = 2", None, &[("a", "1"), ("b", "2")], T),
    ("a = 1 AND b = 2", None, &[("a", "1"), ("b", "3")], F),
    ("a = 1 AND b = 2", None, &[("a", "1")], U),
    ("a = 1 AND b = 2", None, &[("a", "0")], F),
    ("a = 1 OR b = 2", None, &[("a", "0"), ("b", "2")], T),
    ("a = 1 OR b = 2", None, &[("a", "0")], U),
    ("a = 1 OR b = 2", None, &[("a", "1")], T),
    ("a = 1 OR b = 2", None, &[("a", "0"), ("b", "0")], F),
    ("TRUE", None, &[], T),
    ("FALSE", None, &[], F),
    ("NOT FALSE", None, &[], T),
    ("TRUE AND a = 1", None, &[], U),
    ("FALSE AND a = 1", None, &[], F),
    ("TRUE OR a = 1", None, &[], T),
    ("FALSE OR a = 1", None, &[], U),
    // Precedence: comparisons > NOT > AND > OR.
    (
        "a = 1 OR b = 1 AND c = 1",
        None,
        &[("a", "1"), ("b", "0"), ("c", "0")],
        T,
    ),
    (
        "(a = 1 OR b = 1) AND c = 1",
        None,
        &[("a", "1"), ("b", "0"), ("c", "0")],
        F,
    ),
    ("NOT a = 1 AND b = 1", None, &[("a", "0"), ("b", "1")], T),
    ("NOT (a = 1 AND b = 1)", None, &[("a", "1"), ("b", "0")], T),
    ("NOT a = 1 OR a = 1", None, &[("a", "1")], T),
    ("((a = 1))", None, &[("a", "1")], T),
    // TAGS: the tag unless a user property of that name exists.
    ("TAGS = 'red'", Some("red"), &[], T),
    ("TAGS = 'red'", Some("blue"), &[], F),
    ("TAGS = 'red'", None, &[], U),
    ("TAGS IS NULL", None, &[], T),
    ("TAGS IS NOT NULL", Some("red"), &[], T),
    ("TAGS IN ('red', 'blue')", Some("blue"), &[], T),
    ("TAGS LIKE 'r%'", Some("red"), &[], T),
    ("TAGS = 'red'", Some("blue"), &[("TAGS", "red")], T),
    ("tags = 'red'", Some("red"), &[], U),
    ("Tags IS NULL", Some("red"), &[], T),
    // Keywords are case-insensitive; properties are not.
    ("a = 1 and b = 2", None, &[("a", "1"), ("b", "2")], T),
    ("a = 1 Or b = 2", None, &[("a", "1")], T),
    ("not a = 1", None, &[("a", "2")], T),
    ("a in ('x') AND a Not In ('y')", None, &[("a", "x")], T),
    ("a between 1 and 5", None, &[("a", "2")], T),
    ("a is null", None, &[], T),
    ("a Is Not Null", None, &[("a", "1")], T),
    ("a like 'x%' aNd a not like 'xy%'", None, &[("a", "xz")], T),
    ("a = True", None, &[("a", "true")], T),
    ("A = 1", None, &[("a", "1")], U),
    // Property names: letters, digits, '_' and '.'.
    ("order.id = 7", None, &[("order.id", "7")], T),
    ("_x1 = 'y'", None, &[("_x1", "y")], T),
    // The first property of a name wins.
    ("a = 1", None, &[("a", "1"), ("a", "2")], T),
    // Whitespace is free.
    (
        "a=1 AND(b<>'x')OR(b='z')",
        None,
        &[("a", "1"), ("b", "y")],
        T,
    ),
    ("  a\t=\n1  ", None, &[("a", "1")], T),
];

#[test]
fn table_of_conditions() {
    for (expr, tag, pairs, expected) in CASES {
        let properties = props(pairs);
        let filter = sql(expr);
        assert_eq!(
            filter.evaluate(*tag, &properties),
            *expected,
            "{expr:?} with tag {tag:?} and {pairs:?}"
        );
        let via_filter = Filter::parse_sql(expr).unwrap();
        assert_eq!(
            via_filter.matches(*tag, &properties),
            *expected == T,
            "{expr:?}"
        );
    }
}

/// (expression, expected column, a fragment the message must contain)
const BAD: &[(&str, usize, &str)] = &[
    ("", 1, "empty SQL expression"),
    ("   ", 1, "empty SQL expression"),
    (
        "abcd =",
        7,
        "expected a value after '=' but found end of expression",
    ),
    (
        "a = ",
        5,
        "expected a value after '=' but found end of expression",
    ),
    ("a = 'abc", 5, "unterminated string starting"),
    ("a == 1", 3, "unknown operator '=='"),
    ("a ! 1", 3, "unknown operator '!'"),
    ("a = \"x\"", 5, "single quotes"),
    ("a = 1 #", 7, "unexpected character '#'"),
    (
        "a = 1 b = 2",
        7,
        "expected AND, OR or end of expression but found property 'b'",
    ),
    ("a = 1 )", 7, "without a matching '('"),
    (
        "(a = 1",
        7,
        "expected AND, OR or ')' to close the '(' at column 1 but found end of expression",
    ),
    ("((a = 1)", 9, "to close the '(' at column 1"),
    (
        "a",
        2,
        "expected an operator after property 'a' but found end of expression",
    ),
    ("'x'", 4, "expected an operator after string 'x'"),
    ("42", 3, "expected an operator after number 42"),
    (
        "(a)",
        3,
        "expected an operator after property 'a' but found ')'",
    ),
    ("a = b", 5, "a property can only be compared with a literal"),
    ("1 = 2", 1, "found two literals"),
    (
        "a < 'x'",
        5,
        "expected a number to compare with '<' but found string 'x'",
    ),
    ("'x' >= a", 1, "expected a number to compare with '>='"),
    ("a > TRUE", 5, "only numbers are ordered"),
    (
        "a = NULL",
        5,
        "expected a value after '=' but found keyword NULL",
    ),
    ("a = (1)", 5, "expected a value after '='"),
    ("AND a = 1", 1, "expected a condition but found keyword AND"),
    (
        "a = 1 AND",
        10,
        "expected a condition but found end of expression",
    ),
    (
        "a = 1 OR OR b = 1",
        10,
        "expected a condition but found keyword OR",
    ),
    ("NOT", 4, "expected a condition but found end of expression"),
    ("()", 2, "expected a condition but found ')'"),
    (
        "a NOT = 1",
        7,
        "expected IN, BETWEEN or LIKE after NOT but found '='",
    ),
    (
        "a IS 1",
        6,
        "expected NULL or NOT NULL after IS but found number 1",
    ),
    ("a IS NOT 1", 10, "expected NULL after IS NOT"),
    ("a IN 'x'", 6, "expected '(' after IN but found string 'x'"),
    (
        "a IN ()",
        7,
        "expected a literal value in the IN list but found ')'",
    ),
    ("a IN ('x',)", 11, "expected a literal value in the IN list"),
    (
        "a IN ('x' 'y')",
        11,
        "expected ',' or ')' in the IN list but found string 'y'",
    ),
    (
        "a IN ('x', b)",
        12,
        "expected a literal value in the IN list but found property 'b'",
    ),
    (
        "a IN ('x'",
        10,
        "expected ',' or ')' in the IN list but found end of expression",
    ),
    (
        "1 IN (1)",
        1,
        "expected a property name before IN but found number 1",
    ),
    (
        "a BETWEEN 'x' AND 'y'",
        11,
        "expected a number after BETWEEN but found string 'x'",
    ),
    (
        "a BETWEEN 1 OR 2",
        13,
        "expected AND between the bounds of BETWEEN but found keyword OR",
    ),
    (
        "a BETWEEN 1 AND",
        16,
        "expected a number after BETWEEN ... AND",
    ),
    (
        "a LIKE 5",
        8,
        "expected a string pattern after LIKE but found number 5",
    ),
    ("a LIKE b", 8, "expected a string pattern after LIKE"),
    ("'x' LIKE 'x'", 1, "expected a property name before LIKE"),
    (
        "TRUE IS NULL",
        1,
        "expected a property name before IS but found keyword TRUE",
    ),
    ("a = 12abc", 5, "malformed number '12abc'"),
    ("a=1AND b = 2", 3, "malformed number '1AND'"),
    ("a = 1.", 5, "malformed number '1.'"),
    ("a = 99999999999999999999", 5, "does not fit in 64 bits"),
    ("a = -x", 6, "expected a digit after '-' but found 'x'"),
    ("a$b = 1", 2, "unexpected character '$'"),
    ("a-b = 1", 3, "expected a digit after '-' but found 'b'"),
    ("é = 1", 1, "unexpected character 'é'"),
    ("a = 'é' b", 9, "expected AND, OR or end of expression"),
    (
        "a = 1 AND (b = 2 OR c = 3",
        26,
        "to close the '(' at column 11",
    ),
    (
        "a LIKE 'x' ESCAPE '\\'",
        12,
        "expected AND, OR or end of expression but found property 'ESCAPE'",
    ),
];

#[test]
fn table_of_bad_expressions() {
    for (expr, position, fragment) in BAD {
        let err: FilterError = SqlFilter::parse(expr).expect_err(expr);
        assert_eq!(err.position, *position, "{expr:?}: {err}");
        assert!(
            err.message.contains(fragment),
            "{expr:?}: {err:?} should contain {fragment:?}"
        );
        assert!(
            err.to_string()
                .ends_with(&format!(" at position {position}")),
            "{err}"
        );
        assert_eq!(Filter::parse_sql(expr).unwrap_err(), err);
    }
}

#[test]
fn error_display_matches_the_documented_wording() {
    let err = SqlFilter::parse("abcd =").unwrap_err();
    assert_eq!(
        err.to_string(),
        "expected a value after '=' but found end of expression at position 7"
    );
    let err = SqlFilter::parse("a = 'abc").unwrap_err();
    assert_eq!(
        err.to_string(),
        "unterminated string starting at position 5"
    );
}

#[test]
fn limits_have_the_documented_values() {
    assert_eq!(MAX_EXPRESSION_LEN, 4096);
    assert_eq!(MAX_DEPTH, 64);
    assert_eq!(MAX_IN_ITEMS, 1024);
    assert_eq!(MAX_LIKE_PATTERN_CHARS, 256);
}

#[test]
fn length_limit() {
    let pad = |len: usize| format!("a = '{}'", "x".repeat(len - 6));
    assert_eq!(pad(MAX_EXPRESSION_LEN).len(), MAX_EXPRESSION_LEN);
    assert!(SqlFilter::parse(&pad(MAX_EXPRESSION_LEN)).is_ok());
    let err = SqlFilter::parse(&pad(MAX_EXPRESSION_LEN + 1)).unwrap_err();
    assert_eq!(err.position, 1);
    assert!(err.message.contains("4096"), "{err}");
    // Checked before scanning: even garbage reports the length.
    let garbage = "'".repeat(MAX_EXPRESSION_LEN + 1);
    assert_eq!(SqlFilter::parse(&garbage).unwrap_err().position, 1);
    // Bytes, not characters.
    let wide = format!("a = '{}'", "é".repeat(2100));
    assert!(SqlFilter::parse(&wide)
        .unwrap_err()
        .message
        .contains("4096"));
    // Tag expressions share the limit.
    let tags = "t".repeat(MAX_EXPRESSION_LEN + 1);
    assert_eq!(Filter::parse_tag(&tags).unwrap_err().position, 1);
}

#[test]
fn depth_limit() {
    let parens = |n: usize| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
    assert!(sql(&parens(MAX_DEPTH)).matches(None, &props(&[("a", "1")])));
    let err = SqlFilter::parse(&parens(MAX_DEPTH + 1)).unwrap_err();
    assert_eq!(err.position, MAX_DEPTH + 1);
    assert!(err.message.contains("64"), "{err}");

    let nots = |n: usize| format!("{}a = 1", "NOT ".repeat(n));
    assert_eq!(
        sql(&nots(MAX_DEPTH)).evaluate(None, &props(&[("a", "1")])),
        T
    );
    assert_eq!(
        SqlFilter::parse(&nots(MAX_DEPTH + 1)).unwrap_err().position,
        4 * MAX_DEPTH + 1
    );

    // Parentheses and NOT count together.
    let mixed = |n: usize| format!("{}a = 1{}", "NOT (".repeat(n), ")".repeat(n));
    assert!(SqlFilter::parse(&mixed(MAX_DEPTH / 2)).is_ok());
    assert!(SqlFilter::parse(&mixed(MAX_DEPTH / 2 + 1)).is_err());

    // Unclosed parentheses far beyond the limit fail on depth, not the stack.
    let deep = "(".repeat(MAX_EXPRESSION_LEN);
    assert_eq!(SqlFilter::parse(&deep).unwrap_err().position, MAX_DEPTH + 1);
    let deep = "NOT ".repeat(MAX_EXPRESSION_LEN / 4);
    assert!(SqlFilter::parse(&deep)
        .unwrap_err()
        .message
        .contains("nests deeper"));
}

#[test]
fn long_chains_are_not_nesting() {
    let chain = vec!["a = 1"; 400].join(" AND ");
    assert!(chain.len() <= MAX_EXPRESSION_LEN);
    assert_eq!(sql(&chain).evaluate(None, &props(&[("a", "1")])), T);
    assert_eq!(sql(&chain).evaluate(None, &[]), U);
}

#[test]
fn in_list_limit() {
    let list = |n: usize| format!("a IN ({})", vec!["1"; n].join(","));
    assert!(sql(&list(MAX_IN_ITEMS)).matches(None, &props(&[("a", "1")])));
    let over = list(MAX_IN_ITEMS + 1);
    let err = SqlFilter::parse(&over).unwrap_err();
    // "a IN (" is 6 columns; item k (1-based) starts at 7 + 2 * (k - 1).
    assert_eq!(err.position, 7 + 2 * MAX_IN_ITEMS);
    assert!(err.message.contains("1024"), "{err}");
}

#[test]
fn like_pattern_limit() {
    let like = |pattern: String| format!("a LIKE '{pattern}'");
    assert!(SqlFilter::parse(&like("x".repeat(MAX_LIKE_PATTERN_CHARS))).is_ok());
    let err = SqlFilter::parse(&like("x".repeat(MAX_LIKE_PATTERN_CHARS + 1))).unwrap_err();
    assert_eq!(err.position, 8);
    assert!(err.message.contains("256"), "{err}");
    // Characters, not bytes.
    assert!(SqlFilter::parse(&like("é".repeat(MAX_LIKE_PATTERN_CHARS))).is_ok());
    // An escaped quote is one character.
    assert!(SqlFilter::parse(&like("''".repeat(MAX_LIKE_PATTERN_CHARS))).is_ok());
}

#[test]
fn adversarial_like_is_fast() {
    let pattern = format!("{}b", "%a".repeat(100));
    let filter = sql(&format!("a LIKE '{pattern}'"));
    let value = "a".repeat(3000);
    let start = std::time::Instant::now();
    assert_eq!(filter.evaluate(None, &props(&[("a", &value)])), F);
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn needs_properties_only_for_sql() {
    assert!(Filter::parse_sql("TAGS = 'x'").unwrap().needs_properties());
    assert!(!Filter::parse_tag("x").unwrap().needs_properties());
    assert!(!Filter::parse_tag("*").unwrap().needs_properties());
}

// ---------------------------------------------------------------- proptests

/// Words from which token soups are made: every token kind, plus the
/// fragments that trip lexers (lone quotes, `==`, `!`, `-`).
const SOUP: &[&str] = &[
    "a", "b", "TAGS", "x.y", "=", "<>", "!=", "<", "<=", ">", ">=", "(", ")", ",", "AND", "or",
    "NOT", "IN", "BETWEEN", "IS", "NULL", "LIKE", "TRUE", "false", "'x'", "'%a_'", "''", "1", "-2",
    "3.5", "'", "==", "!", "-", "é", "\"", "1.", "%",
];

fn message() -> impl Strategy<Value = (Option<String>, Vec<(String, String)>)> {
    let value = prop::sample::select(vec![
        "1", "2", "-1.5", "x", "ab", "true", "FALSE", "", "1e2",
    ]);
    (
        prop::option::of(prop::sample::select(vec!["x", "red", "1"])),
        prop::option::of(value.clone()),
        prop::option::of(value),
    )
        .prop_map(|(tag, a, b)| {
            let mut properties = Vec::new();
            if let Some(a) = a {
                properties.push(("a".to_string(), a.to_string()));
            }
            if let Some(b) = b {
                properties.push(("b".to_string(), b.to_string()));
            }
            (tag.map(str::to_string), properties)
        })
}

/// Random well-formed conditions over `a`, `b` and `TAGS`.
fn condition() -> impl Strategy<Value = String> {
    let property = prop::sample::select(vec!["a", "b", "TAGS"]);
    let op = prop::sample::select(vec!["=", "<>", "!=", "<", "<=", ">", ">="]);
    let number = prop::sample::select(vec!["1", "2", "-1.5", "100", "0"]);
    let string = prop::sample::select(vec!["'x'", "'ab'", "''", "'red'", "'1'"]);
    let boolean = prop::sample::select(vec!["TRUE", "false"]);
    let pattern = prop::sample::select(vec!["'%'", "'a%'", "'_'", "'%b'", "'r_d'", "'x'"]);
    let not = prop::sample::select(vec!["", "NOT "]);
    let leaf = prop_oneof![
        (property.clone(), op, number.clone()).prop_map(|(p, o, n)| format!("{p} {o} {n}")),
        (
            property.clone(),
            prop::sample::select(vec!["=", "<>"]),
            string.clone()
        )
            .prop_map(|(p, o, s)| format!("{p} {o} {s}")),
        (
            property.clone(),
            prop::sample::select(vec!["=", "<>"]),
            boolean.clone()
        )
            .prop_map(|(p, o, b)| format!("{b} {o} {p}")),
        (property.clone(), not.clone()).prop_map(|(p, n)| format!("{p} IS {n}NULL")),
        (property.clone(), not.clone(), string, number.clone())
            .prop_map(|(p, n, s, x)| format!("{p} {n}IN ({s}, {x})")),
        (property.clone(), not.clone(), number.clone(), number)
            .prop_map(|(p, n, lo, hi)| format!("{p} {n}BETWEEN {lo} AND {hi}")),
        (property, not, pattern).prop_map(|(p, n, s)| format!("{p} {n}LIKE {s}")),
        boolean.prop_map(str::to_string),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(l, r)| format!("{l} AND {r}")),
            (inner.clone(), inner.clone()).prop_map(|(l, r)| format!("{l} OR {r}")),
            inner.clone().prop_map(|e| format!("NOT {e}")),
            inner.prop_map(|e| format!("({e})")),
        ]
    })
}

/// Parses without panicking; an error points inside the expression or just
/// past its end, and a parsed filter evaluates without panicking.
fn check_total(expr: &str) -> Result<(), TestCaseError> {
    match SqlFilter::parse(expr) {
        Ok(filter) => {
            let properties = props(&[("a", "1"), ("b", "x")]);
            filter.evaluate(Some("x"), &properties);
            filter.evaluate(None, &[]);
        }
        Err(err) => {
            prop_assert!(err.position >= 1, "{err}");
            prop_assert!(err.position <= expr.chars().count() + 1, "{expr:?}: {err}");
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_strings(expr in ".{0,300}") {
        check_total(&expr)?;
        if let Err(err) = Filter::parse_tag(&expr) {
            prop_assert!(err.position >= 1 && err.position <= expr.chars().count() + 1, "{expr:?}: {err}");
        }
    }

    #[test]
    fn never_panics_on_sql_looking_strings(expr in "[a-zA-Z0-9_ =<>!(),'%.-]{0,300}") {
        check_total(&expr)?;
    }

    #[test]
    fn never_panics_on_token_soups(
        words in prop::collection::vec(prop::sample::select(SOUP), 0..40),
        glue in prop::sample::select(vec![" ", "", "  "]),
    ) {
        check_total(&words.join(glue))?;
    }

    #[test]
    fn generated_conditions_parse(expr in condition(), (tag, properties) in message()) {
        let filter = SqlFilter::parse(&expr).map_err(|e| TestCaseError::fail(format!("{expr:?}: {e}")))?;
        filter.evaluate(tag.as_deref(), &properties);
    }

    #[test]
    fn not_matches_exactly_when_false(expr in condition(), (tag, properties) in message()) {
        let inner = sql(&expr).evaluate(tag.as_deref(), &properties);
        let negated = sql(&format!("NOT ({expr})"));
        prop_assert_eq!(negated.matches(tag.as_deref(), &properties), inner == F, "{}", expr);
        prop_assert_eq!(negated.evaluate(tag.as_deref(), &properties), !inner);
    }

    #[test]
    fn parenthesising_changes_nothing(expr in condition(), (tag, properties) in message()) {
        let plain = sql(&expr).evaluate(tag.as_deref(), &properties);
        let wrapped = sql(&format!("({expr})")).evaluate(tag.as_deref(), &properties);
        prop_assert_eq!(plain, wrapped);
    }

    #[test]
    fn like_without_wildcards_is_equality(pattern in "[a-zA-Z0-9 .éü']{0,12}", value in "[a-zA-Z0-9 .éü']{0,12}") {
        let quoted = pattern.replace('\'', "''");
        let like = sql(&format!("p LIKE '{quoted}'"));
        let eq = sql(&format!("p = '{quoted}'"));
        let properties = props(&[("p", &value)]);
        prop_assert_eq!(like.matches(None, &properties), value == pattern);
        prop_assert_eq!(like.evaluate(None, &properties), eq.evaluate(None, &properties));
        let same = props(&[("p", &pattern)]);
        prop_assert!(like.matches(None, &same));
    }

    #[test]
    fn keyword_case_does_not_matter(expr in condition(), (tag, properties) in message()) {
        // Only keywords change case: literals and property names here are
        // already case-stable or quoted lower-case words we leave alone.
        let lower = expr
            .split(' ')
            .map(|w| match w {
                "AND" | "OR" | "NOT" | "IN" | "BETWEEN" | "IS" | "NULL" | "LIKE" | "TRUE" => w.to_lowercase(),
                "false" => "FALSE".to_string(),
                _ => w.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
        prop_assert_eq!(
            sql(&expr).evaluate(tag.as_deref(), &properties),
            sql(&lower).evaluate(tag.as_deref(), &properties)
        );
    }
}
