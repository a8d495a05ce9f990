//! What a client sends before anything is stored: messages and filter
//! expressions. The first byte picks the mode (modulo 3):
//!
//! * 0 — an `Incoming` message built with `arbitrary` from the rest
//!   (`ferry_fuzz::message::FuzzIncoming`), run through
//!   `ferry_broker::validate::message` with default limits and, when valid,
//!   down the rest of the send path (admit, prepare, encode, decode,
//!   apply): whatever the validator accepts must be storable and read back
//!   exactly.
//! * 1 — filter expressions, as text lines: the expression, then the
//!   message's tag (absent when there is no second line), then `key=value`
//!   properties. The expression is parsed as TAG and as SQL92
//!   (`ferry_filter::Filter`) and, when it parses, evaluated. Checked: error
//!   positions lie within the expression (1-based, at most one past the
//!   end); a filter's text form parses back to the same filter; `matches`
//!   agrees with the tag list / with SQL `evaluate` being TRUE; `NOT (e)`
//!   evaluates to SQL NOT of `e`, and `(e)` to `e`.
//! * 2 — the rest as a protobuf `SendMessageRequest` (ferry-proto), each
//!   message converted by the server's `convert::incoming` and checked as
//!   in mode 0.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use ferry_filter::{Filter, Truth};
use ferry_fuzz::message::{check_incoming, FuzzIncoming, NOW_MS};
use ferry_proto::v2 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let mut u = Unstructured::new(rest);
            if let Ok(m) = FuzzIncoming::arbitrary(&mut u) {
                check_incoming(&m.build(), NOW_MS);
            }
        }
        1 => filters(rest),
        _ => {
            if let Ok(req) = pb::SendMessageRequest::decode(rest) {
                for m in req.messages {
                    match ferry_server::convert::incoming(m) {
                        Ok(inc) => {
                            check_incoming(&inc, NOW_MS);
                        }
                        Err(e) => {
                            let _ = e.to_string();
                        }
                    }
                }
            }
        }
    }
});

fn filters(rest: &[u8]) {
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let expr = lines.next().unwrap_or("");
    let tag = lines.next();
    let props: Vec<(String, String)> = lines
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect();

    check_filter(expr, false, tag, &props);
    check_filter(expr, true, tag, &props);
}

fn parse(expr: &str, sql: bool) -> Result<Filter, ferry_filter::FilterError> {
    if sql {
        Filter::parse_sql(expr)
    } else {
        Filter::parse_tag(expr)
    }
}

fn check_filter(expr: &str, sql: bool, tag: Option<&str>, props: &[(String, String)]) {
    let f = match parse(expr, sql) {
        Ok(f) => f,
        Err(e) => {
            let chars = expr.chars().count();
            assert!(
                e.position >= 1 && e.position <= chars + 1,
                "error position {} outside 1..={} for {expr:?}: {e}",
                e.position,
                chars + 1
            );
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(f.needs_properties(), sql, "needs_properties for {expr:?}");
    let shown = f.to_string();
    match parse(&shown, sql) {
        Ok(again) => assert_eq!(again, f, "{expr:?} shown as {shown:?} parses differently"),
        Err(e) => panic!("{expr:?} shown as {shown:?} does not parse: {e}"),
    }
    let matched = f.matches(tag, props);
    match &f {
        Filter::All => assert!(matched),
        Filter::Tags(tags) => {
            assert!(!tags.is_empty(), "empty tag list from {expr:?}");
            let want = tag.is_some_and(|t| tags.iter().any(|x| x == t));
            assert_eq!(matched, want, "tag filter {tags:?} on tag {tag:?}");
        }
        Filter::Sql(s) => {
            let truth = s.evaluate(tag, props);
            assert_eq!(
                matched,
                truth == Truth::True,
                "matches vs evaluate for {expr:?}"
            );
            if let Ok(Filter::Sql(p)) = Filter::parse_sql(&format!("({expr})")) {
                assert_eq!(
                    p.evaluate(tag, props),
                    truth,
                    "({expr}) differs from {expr:?}"
                );
            }
            if let Ok(Filter::Sql(n)) = Filter::parse_sql(&format!("NOT ({expr})")) {
                assert_eq!(
                    n.evaluate(tag, props),
                    !truth,
                    "NOT ({expr}) is not the negation"
                );
            }
        }
    }
}
