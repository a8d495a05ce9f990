//! The operator commands — `ferry topic|group|send|consume|message|tx|dlq` —
//! run as an operator would, against a real `ferry serve` child process:
//! the human tables and `--json`, what they show after real traffic, and
//! the refusals (non-zero exit, an error that names what was wrong).
//!
//! Commands are written as shell-like lines: words split on spaces, with
//! '...' or "..." keeping a word with spaces together.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Broker;
use ferry_client::{
    CheckWith, Message, ReceivedMessage, TransactionProducer, TransactionResolution,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------- running

/// Splits a command line into words; quotes group, and are dropped.
fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for ch in cmd.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(ch);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => out.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    assert!(quote.is_none(), "unbalanced quote in {cmd:?}");
    out.extend(word);
    out
}

/// `ferry <cmd>` against `b` with `stdin`: (success, stdout, stderr).
fn run(b: &Broker, cmd: &str, stdin: Option<&str>) -> (bool, String, String) {
    let args = words(cmd);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    b.cli(&args, stdin)
}

/// `ferry <cmd>` with `stdin`; it must succeed. (stdout, stderr).
fn ok_in(b: &Broker, cmd: &str, stdin: Option<&str>) -> (String, String) {
    let (success, out, err) = run(b, cmd, stdin);
    assert!(
        success,
        "ferry {cmd} failed\n--- stdout\n{out}--- stderr\n{err}"
    );
    (out, err)
}

/// `ferry <cmd>`; it must succeed. Its stdout.
fn ok(b: &Broker, cmd: &str) -> String {
    ok_in(b, cmd, None).0
}

/// `ferry <cmd>` must fail (non-zero exit). Its stderr.
fn fails(b: &Broker, cmd: &str) -> String {
    let (success, out, err) = run(b, cmd, None);
    assert!(
        !success,
        "ferry {cmd} should have failed\n--- stdout\n{out}--- stderr\n{err}"
    );
    err
}

/// `ferry <cmd> --json`: the one JSON document it prints.
fn json_of(b: &Broker, cmd: &str) -> Value {
    let out = ok(b, &format!("{cmd} --json"));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("ferry {cmd} --json: not one JSON document ({e}):\n{out}"))
}

/// `ferry consume -t <topic> -g <group> --json <extra>` with a short
/// wait: the messages it printed, one JSON object per line.
fn consume_json(b: &Broker, topic: &str, group: &str, extra: &str) -> Vec<Value> {
    let cmd = format!("consume -t {topic} -g {group} --wait 300ms --json {extra}");
    ok(b, &cmd)
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("ferry {cmd}: line not JSON ({e}): {l}"))
        })
        .collect()
}

/// `ferry consume` printing for people: (stdout, stderr).
fn consume_text(b: &Broker, topic: &str, group: &str, extra: &str) -> (String, String) {
    ok_in(
        b,
        &format!("consume -t {topic} -g {group} --wait 300ms {extra}"),
        None,
    )
}

/// Calls `f` until it returns `Ok` or `within` passes; the `Err` says what
/// was last seen.
fn poll<T>(what: &str, within: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen:\n{last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

// --------------------------------------------------------------- reading

/// The header line of each message in human `consume` output.
fn heads(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.contains("  attempt ")).collect()
}

/// The message ids of human `consume` output.
fn head_ids(out: &str) -> BTreeSet<String> {
    heads(out)
        .iter()
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .unwrap_or_else(|| panic!("no message id in {l:?}"))
                .to_string()
        })
        .collect()
}

fn set<S: AsRef<str>, const N: usize>(items: [S; N]) -> BTreeSet<String> {
    items.iter().map(|s| s.as_ref().to_string()).collect()
}

/// `key` of every object of the JSON array `v`, as a set.
fn strs(v: &Value, key: &str) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| {
            x[key]
                .as_str()
                .unwrap_or_else(|| panic!("no {key} in {x}"))
                .to_string()
        })
        .collect()
}

fn ids_of(msgs: &[Value]) -> BTreeSet<String> {
    strs(&Value::Array(msgs.to_vec()), "message_id")
}

fn bodies_of(msgs: &[Value]) -> BTreeSet<String> {
    strs(&Value::Array(msgs.to_vec()), "body")
}

/// A JSON array of strings, as a set.
fn str_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

/// Table rows (cells split on whitespace) whose first cell is `first`.
fn rows<'a>(out: &'a str, first: &str) -> Vec<Vec<&'a str>> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.first() == Some(&first))
        .collect()
}

/// The one table row whose first cell is `first`.
fn row<'a>(out: &'a str, first: &str) -> Vec<&'a str> {
    let mut found = rows(out, first);
    assert_eq!(found.len(), 1, "one row starting with {first:?} in:\n{out}");
    found.remove(0)
}

fn assert_header(out: &str, header: &str) {
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(header.split_whitespace())),
        "no header {header:?} in:\n{out}"
    );
}

/// The value of a `label   value` line (e.g. `topic:   orders`).
fn field<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| {
            l.strip_prefix(label)
                .filter(|rest| rest.is_empty() || rest.starts_with(' '))
                .map(str::trim)
        })
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{out}"))
}

/// The message id of `sent <id> to <topic> (queue q, offset o)`.
fn sent_id(out: &str, topic: &str) -> String {
    let line = out.lines().next().unwrap_or_default();
    let rest = line
        .strip_prefix("sent ")
        .unwrap_or_else(|| panic!("not a send receipt: {out}"));
    let (id, place) = rest
        .split_once(&format!(" to {topic} (queue "))
        .unwrap_or_else(|| panic!("receipt does not name topic {topic}: {out}"));
    let (queue, offset) = place
        .strip_suffix(')')
        .and_then(|p| p.split_once(", offset "))
        .unwrap_or_else(|| panic!("no queue offset in {out}"));
    queue.parse::<u32>().expect("queue id");
    offset.parse::<u64>().expect("queue offset");
    assert_eq!(id.len(), 34, "a RocketMQ 5 message id: {id}");
    id.to_string()
}

/// Messages stored in a topic's queues (`topic describe --json`).
fn stored(b: &Broker, topic: &str) -> u64 {
    let v = json_of(b, &format!("topic describe {topic}"));
    v["queues"]
        .as_array()
        .unwrap_or_else(|| panic!("no queues: {v}"))
        .iter()
        .map(|q| q["max_offset"].as_u64().unwrap())
        .sum()
}

/// `message get <id> --json`: the one message.
fn get_message(b: &Broker, id: &str) -> Value {
    let v = json_of(b, &format!("message get {id}"));
    let msgs = v["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 1, "one stored record of {id}: {v}");
    msgs[0].clone()
}

/// (event, group, attempt) of each lifecycle event of a message.
fn events(m: &Value) -> Vec<(String, String, Option<u64>)> {
    m["lifecycle"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {m}"))
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_string(),
                e["group"].as_str().unwrap_or_default().to_string(),
                e["attempt"].as_u64(),
            )
        })
        .collect()
}

fn has_event(m: &Value, event: &str, group: &str, attempt: Option<u64>) -> bool {
    events(m)
        .iter()
        .any(|(e, g, a)| e == event && g == group && (attempt.is_none() || *a == attempt))
}

/// Where a message stands for consumer `group`.
fn group_state(m: &Value, group: &str) -> Value {
    m["lifecycle"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["group"] == group)
        .cloned()
        .unwrap_or_else(|| panic!("no state for group {group}: {}", m["lifecycle"]))
}

// ----------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_every_way_to_send() {
    let b = Broker::start(&[]);

    // --- topic create: new, again (unchanged), types, a bad type.
    assert_eq!(
        ok(
            &b,
            "topic create orders --queues 4 --types normal,fifo,delay"
        ),
        "topic orders created\n"
    );
    assert_eq!(
        ok(&b, "topic create orders"),
        "topic orders already exists: 4 queues, accepts NORMAL,FIFO,DELAY\n"
    );
    assert_eq!(
        json_of(&b, "topic create orders"),
        json!({"name": "orders", "created": false, "queues": 4,
               "message_types": ["NORMAL", "FIFO", "DELAY"]})
    );
    assert_eq!(
        json_of(&b, "topic create fifo-only --queues 2 --types FIFO"),
        json!({"name": "fifo-only", "created": true, "queues": 2, "message_types": ["FIFO"]})
    );
    let err = fails(&b, "topic create broken --types normal,lite");
    assert!(
        err.contains("unknown message type \"LITE\""),
        "names the bad type: {err}"
    );

    // --- send: a body with tag, keys and properties.
    let out = ok(
        &b,
        "send -t orders 'order 1' --tag created --key order-1 --key cust-7 \
         --property region=eu --property tier=gold",
    );
    assert_eq!(out.lines().count(), 1, "no recall handle: {out}");
    let plain = sent_id(&out, "orders");
    let m = get_message(&b, &plain);
    assert_eq!(m["type"], "NORMAL");
    assert_eq!(m["topic"], "orders");
    assert_eq!(m["tag"], "created");
    assert_eq!(m["keys"], json!(["order-1", "cust-7"]));
    assert_eq!(m["properties"], json!({"region": "eu", "tier": "gold"}));
    assert_eq!(m["body_preview"], "order 1");
    assert_eq!(m["body_size"], 7);

    // --file, with --json.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body.txt");
    std::fs::write(&path, "from a file\nsecond line\n").unwrap();
    let r = json_of(
        &b,
        &format!("send -t orders --file '{}' --tag file", path.display()),
    );
    let from_file = r["message_id"].as_str().expect("message_id").to_string();
    assert!(
        r["queue_id"].as_i64().is_some_and(|q| (0..4).contains(&q)),
        "{r}"
    );
    assert!(r["offset"].as_i64().is_some(), "{r}");
    assert!(r["recall_handle"].is_null(), "{r}");
    let m = get_message(&b, &from_file);
    assert_eq!(m["body_preview"], "from a file\nsecond line\n");
    assert_eq!(m["body_size"], 24);
    assert_eq!(m["tag"], "file");
    let err = fails(&b, "send -t orders --file /no/such/ferry-body");
    assert!(err.contains("cannot read /no/such/ferry-body"), "{err}");

    // --group: a FIFO message.
    let fifo = sent_id(&ok(&b, "send -t orders 'fifo 1' --group cart-9"), "orders");
    let m = get_message(&b, &fifo);
    assert_eq!(m["type"], "FIFO");
    assert_eq!(m["message_group"], "cart-9");

    // --delay: a delayed message, with its recall handle.
    let out = ok(&b, "send -t orders later --delay 1s");
    let delayed = sent_id(&out, "orders");
    let handle = out
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("recall handle: "))
        .unwrap_or_else(|| panic!("a delayed send prints its recall handle: {out}"));
    assert!(!handle.trim().is_empty(), "{out}");
    let m = get_message(&b, &delayed);
    assert_eq!(m["type"], "DELAY");
    let due = m["delivery_timestamp_ms"].as_i64().expect("delivery time");
    let born = m["born_timestamp_ms"].as_i64().expect("born");
    assert!(
        (500..=1100).contains(&(due - born)),
        "due about 1s after it was sent: {m}"
    );

    // A type the topic does not accept; one it does.
    let err = fails(&b, "send -t fifo-only plain");
    assert!(
        err.contains("fifo-only") && err.contains("NORMAL"),
        "names the topic and the refused type: {err}"
    );
    sent_id(&ok(&b, "send -t fifo-only grouped --group g1"), "fifo-only");
    let err = fails(&b, "send -t orders x --group g --delay 1s");
    assert!(err.contains("--delay") && err.contains("--group"), "{err}");

    // --- stdin: one message per line, in batches.
    let lines: String = (0..100).map(|i| format!("line {i}\n")).collect();
    let (out, _) = ok_in(&b, "send -t bulk --batch 10", Some(&lines));
    assert_eq!(out, "sent 100 messages to bulk\n");
    let (out, _) = ok_in(
        &b,
        "send -t bulk --batch 2 --json",
        Some("x1\n\nx2\nx3\nx4\nx5\n"),
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["sent"], 5, "the empty line is skipped: {v}");
    assert_eq!(strs(&v["messages"], "message_id").len(), 5, "{v}");
    let err = fails(&b, "send -t bulk --batch 0");
    assert!(err.contains("--batch must be 1 to 1024, not 0"), "{err}");
    // Every line arrived, as a message of its own.
    let got = consume_json(&b, "bulk", "bulk-reader", "");
    let mut lines: BTreeSet<String> = (0..100).map(|i| format!("line {i}")).collect();
    lines.extend(set(["x1", "x2", "x3", "x4", "x5"]));
    assert_eq!(bodies_of(&got), lines);

    // --- topic list and describe, once the delayed message is due.
    poll(
        "the delayed message in its queue",
        Duration::from_secs(10),
        || match stored(&b, "orders") {
            4 => Ok(()),
            n => Err(format!("{n} messages in orders")),
        },
    );
    let out = ok(&b, "topic list");
    assert_header(&out, "TOPIC QUEUES TYPES MESSAGES RETAINED");
    assert_eq!(
        row(&out, "orders"),
        ["orders", "4", "NORMAL,FIFO,DELAY", "4", "4"]
    );
    assert_eq!(row(&out, "fifo-only"), ["fifo-only", "2", "FIFO", "1", "1"]);
    assert_eq!(
        row(&out, "bulk"),
        ["bulk", "8", "NORMAL,FIFO,DELAY,TRANSACTION", "105", "105"]
    );
    assert!(
        rows(&out, "broken").is_empty(),
        "a refused create makes nothing: {out}"
    );
    let v = json_of(&b, "topic list");
    assert_eq!(
        strs(&v["topics"], "name"),
        set(["bulk", "fifo-only", "orders"])
    );

    let out = ok(&b, "topic describe orders");
    assert_eq!(field(&out, "topic:"), "orders");
    assert_eq!(field(&out, "types:"), "NORMAL,FIFO,DELAY");
    assert_header(&out, "QUEUE MIN_OFFSET MAX_OFFSET");
    let mut total = 0;
    for q in 0..4 {
        let r = row(&out, &q.to_string());
        assert_eq!(r[1], "0", "{out}");
        total += r[2].parse::<u64>().unwrap();
    }
    assert_eq!(total, 4, "{out}");

    // Consumed by a group: every message came, and the topic names it.
    let (out, err) = consume_text(&b, "orders", "auditors", "");
    assert_eq!(err, "4 message(s) consumed and acknowledged\n");
    assert_eq!(head_ids(&out), set([&plain, &from_file, &fifo, &delayed]));
    let out = ok(&b, "topic describe orders");
    assert_eq!(field(&out, "groups:"), "auditors");
    let v = json_of(&b, "topic describe orders");
    assert_eq!(v["groups"], json!(["auditors"]));
    assert_eq!(v["message_types"], json!(["NORMAL", "FIFO", "DELAY"]));
    assert_eq!(v["queues"].as_array().unwrap().len(), 4);

    // --- topic delete, then it is gone.
    assert_eq!(ok(&b, "topic delete orders"), "topic orders deleted\n");
    assert_eq!(
        json_of(&b, "topic delete bulk"),
        json!({"name": "bulk", "deleted": true})
    );
    let err = fails(&b, "topic describe orders");
    assert!(
        err.contains("\"orders\" does not exist") && err.contains("TOPIC_NOT_FOUND"),
        "{err}"
    );
    let err = fails(&b, "topic delete orders");
    assert!(err.contains("\"orders\""), "{err}");
    let v = json_of(&b, "topic list");
    assert_eq!(strs(&v["topics"], "name"), set(["fifo-only"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_groups_and_message_lookup() {
    let b = Broker::start(&[]);
    ok(&b, "topic create shop --queues 2");
    let send = |args: &str| sent_id(&ok(&b, &format!("send -t shop {args}")), "shop");
    let one = send(
        "'order one' --tag created --key order-1 --key cust-7 \
         --property region=eu --property tier=gold",
    );
    let two = send("'order two' --tag paid --key order-2 --property region=us");
    let three = send("'order three' --tag shipped --key order-1 --property region=eu");
    let four = send("'cart item' --tag created --group cart-9");
    let all = set([&one, &two, &three, &four]);
    assert_eq!(all.len(), 4);

    // --- filters: SQL over properties, and tags.
    let got = consume_json(&b, "shop", "eu-audit", "--sql \"region = 'eu'\"");
    assert_eq!(bodies_of(&got), set(["order one", "order three"]));
    let got = consume_json(&b, "shop", "tagged", "--filter 'paid||shipped'");
    assert_eq!(bodies_of(&got), set(["order two", "order three"]));
    let err = fails(
        &b,
        "consume -t shop -g bad-sql --sql 'a = = 1' --wait 300ms",
    );
    assert!(err.contains("ILLEGAL_FILTER_EXPRESSION"), "{err}");

    // --- --limit: two now, the other two next time, then none.
    let (out, err) = consume_text(&b, "shop", "limited", "--limit 2");
    assert_eq!(err, "2 message(s) consumed and acknowledged\n");
    let first = head_ids(&out);
    assert_eq!(first.len(), 2, "{out}");
    let rest = ids_of(&consume_json(&b, "shop", "limited", ""));
    assert_eq!(rest.len(), 2);
    assert_eq!(first.union(&rest).cloned().collect::<BTreeSet<_>>(), all);
    assert!(consume_json(&b, "shop", "limited", "").is_empty());
    let err = fails(&b, "consume -t shop -g limited --limit 0");
    assert!(err.contains("--limit must be at least 1"), "{err}");

    // --- --peek: not acknowledged, so they come again, as attempt 2.
    let (out, err) = consume_text(&b, "shop", "peeker", "--peek");
    assert_eq!(err, "4 message(s) peeked (not acknowledged)\n");
    assert_eq!(head_ids(&out), all);
    assert!(
        heads(&out).iter().all(|l| l.contains("  attempt 1")),
        "{out}"
    );
    let again = consume_json(&b, "shop", "peeker", "");
    assert_eq!(ids_of(&again), all);
    for m in &again {
        assert_eq!(m["delivery_attempt"], 2, "{m}");
    }
    assert!(
        consume_json(&b, "shop", "peeker", "").is_empty(),
        "acked now"
    );
    // What one JSON line carries.
    let m1 = again.iter().find(|m| m["message_id"] == *one).unwrap();
    assert_eq!(m1["topic"], "shop");
    assert_eq!(m1["tag"], "created");
    assert_eq!(m1["keys"], json!(["order-1", "cust-7"]));
    assert_eq!(m1["properties"], json!({"region": "eu", "tier": "gold"}));
    assert_eq!(m1["body"], "order one");
    assert_eq!(m1["body_size"], 9);
    assert!(m1["message_group"].is_null(), "{m1}");
    assert!(m1["stored_ms"].as_i64().is_some_and(|t| t > 0), "{m1}");
    let m4 = again.iter().find(|m| m["message_id"] == *four).unwrap();
    assert_eq!(m4["message_group"], "cart-9");

    // --- the human form, for a group with a policy of its own.
    b.admin()
        .put(
            "/v1/groups/reader/policy",
            json!({"fifo": true, "max_delivery_attempts": 5, "backoff": "2s 10s"}),
        )
        .await
        .unwrap();
    let (out, err) = consume_text(&b, "shop", "reader", "");
    assert_eq!(err, "4 message(s) consumed and acknowledged\n");
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(one.as_str()))
        .unwrap_or_else(|| panic!("{one} not shown:\n{out}"));
    for part in [
        "  attempt 1",
        "  tag=created",
        "  keys=order-1,cust-7",
        "  region=eu",
        "  tier=gold",
    ] {
        assert!(lines[at].contains(part), "{part:?} in {:?}", lines[at]);
    }
    assert_eq!(lines[at + 1], "  order one");
    let fifo_line = lines.iter().find(|l| l.contains(four.as_str())).unwrap();
    assert!(fifo_line.contains("  group=cart-9"), "{fifo_line}");

    // --- group list.
    let out = ok(&b, "group list");
    assert_header(
        &out,
        "GROUP FIFO MAX_ATTEMPTS QUEUES LAG IN_FLIGHT DEAD_LETTERS",
    );
    let r = row(&out, "reader");
    assert_eq!(
        (r[1], r[2], r[4], r[5], r[6]),
        ("true", "5", "0", "0", "0"),
        "{out}"
    );
    let r = row(&out, "eu-audit");
    assert_eq!((r[1], r[2], r[5], r[6]), ("false", "17", "0", "0"), "{out}");
    let v = json_of(&b, "group list");
    assert_eq!(
        strs(&v["summary"], "group"),
        set(["eu-audit", "limited", "peeker", "reader", "tagged"])
    );
    let s = v["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "reader")
        .unwrap();
    assert_eq!(s["own_policy"], true);
    assert_eq!(s["fifo"], true);
    assert_eq!(s["max_delivery_attempts"], 5);
    assert_eq!(s["lag"], 0);
    assert_eq!(s["inflight"], 0);
    assert_eq!(s["dead_letters"], 0);
    let consumed: u64 = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["group"] == "reader")
        .map(|g| g["consumed_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(consumed, 4);

    // --- group describe.
    let out = ok(&b, "group describe reader");
    assert_eq!(field(&out, "group:"), "reader");
    assert_eq!(field(&out, "fifo:"), "true");
    assert_eq!(
        field(&out, "retry policy:"),
        "5 attempts, backoff 2s 10s (own policy)"
    );
    assert_eq!(field(&out, "dead letters:"), "0");
    assert_header(&out, "TOPIC QUEUE CONSUMED MAX_OFFSET LAG IN_FLIGHT");
    let queues = rows(&out, "shop");
    assert!(!queues.is_empty(), "{out}");
    let mut consumed = 0;
    for q in &queues {
        assert_eq!(q[2], q[3], "consumed to the end: {out}");
        assert_eq!((q[4], q[5]), ("0", "0"), "{out}");
        consumed += q[2].parse::<u64>().unwrap();
    }
    assert_eq!(consumed, 4, "{out}");
    let v = json_of(&b, "group describe reader");
    assert_eq!(v["own_policy"], true);
    assert_eq!(v["fifo"], true);
    assert_eq!(
        v["policy"],
        json!({"max_delivery_attempts": 5, "backoff_ms": [2000, 10000], "fifo": true})
    );
    let qs = v["queues"].as_array().unwrap();
    assert_eq!(qs.len(), queues.len());
    assert!(
        qs.iter().all(|q| q["lag"] == 0 && q["topic"] == "shop"),
        "{v}"
    );
    let out = ok(&b, "group describe eu-audit");
    assert_eq!(field(&out, "fifo:"), "false");
    let policy = field(&out, "retry policy:");
    assert!(
        policy.starts_with("17 attempts, backoff 1s 5s") && policy.ends_with("(broker default)"),
        "{out}"
    );
    let err = fails(&b, "group describe nobody");
    assert!(
        err.contains("\"nobody\" is unknown") && err.contains("CONSUMER_GROUP_NOT_FOUND"),
        "{err}"
    );
    let v = json_of(&b, "topic describe shop");
    assert_eq!(
        str_set(&v["groups"]),
        set(["eu-audit", "limited", "peeker", "reader", "tagged"])
    );

    // --- message get: headers, properties, body, per-group state, history.
    let out = ok(&b, &format!("message get {one}"));
    assert_eq!(field(&out, "message"), one);
    assert_eq!(field(&out, "topic"), "shop (NORMAL)");
    assert_eq!(field(&out, "tag"), "created");
    assert_eq!(field(&out, "keys"), "order-1,cust-7");
    assert_eq!(field(&out, "group"), "-");
    assert_eq!(field(&out, "body"), "9 bytes: order one");
    assert!(out.lines().any(|l| l == "  region = eu"), "{out}");
    assert!(out.lines().any(|l| l == "  tier = gold"), "{out}");
    assert_header(&out, "GROUP STATE DETAIL");
    assert_eq!(row(&out, "reader"), ["reader", "acked"]);
    assert_eq!(row(&out, "peeker"), ["peeker", "acked"]);
    assert_header(&out, "TIME EVENT GROUP DETAIL");
    let history: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| *l != "lifecycle")
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let shown = |event: &str, group: &str, detail: Option<&str>| {
        history.iter().any(|r| {
            r.get(1) == Some(&event)
                && r.get(2) == Some(&group)
                && detail.is_none_or(|d| r.get(3) == Some(&d))
        })
    };
    assert!(shown("stored", "-", None), "{out}");
    assert!(shown("delivered", "reader", Some("attempt=1")), "{out}");
    assert!(shown("acked", "reader", None), "{out}");
    assert!(shown("delivered", "peeker", Some("attempt=2")), "{out}");
    let m = get_message(&b, &one);
    assert_eq!(m["message_id"], *one);
    assert_eq!(m["type"], "NORMAL");
    assert_eq!(m["properties"], json!({"region": "eu", "tier": "gold"}));
    assert_eq!(m["body_preview"], "order one");
    assert_eq!(m["lifecycle"]["complete"], true);
    assert!(has_event(&m, "stored", "", None), "{m}");
    assert!(has_event(&m, "delivered", "peeker", Some(1)), "{m}");
    assert!(has_event(&m, "delivered", "peeker", Some(2)), "{m}");
    assert!(has_event(&m, "acked", "peeker", None), "{m}");
    assert!(has_event(&m, "acked", "reader", None), "{m}");
    assert_eq!(group_state(&m, "reader")["state"], "acked");
    let out = ok(&b, &format!("message get {four}"));
    assert_eq!(field(&out, "topic"), "shop (FIFO)");
    assert_eq!(field(&out, "group"), "cart-9");
    let err = fails(&b, "message get 0000DEADBEEF");
    assert!(
        err.contains("\"0000DEADBEEF\"") && err.contains("MESSAGE_NOT_FOUND"),
        "{err}"
    );

    // --- message find --key.
    let out = ok(&b, "message find --key order-1");
    assert_eq!(out.lines().filter(|l| *l == "---").count(), 1, "{out}");
    let found: BTreeSet<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("message     "))
        .map(String::from)
        .collect();
    assert_eq!(found, set([&one, &three]));
    let v = json_of(&b, "message find --key order-1");
    assert_eq!(strs(&v["messages"], "message_id"), set([&one, &three]));
    assert_eq!(v["truncated"], false);
    let (out, err) = ok_in(&b, "message find --key order-1 --limit 1", None);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("message ")).count(),
        1,
        "{out}"
    );
    assert!(err.contains("more messages match than shown"), "{err}");
    assert_eq!(
        ok(&b, "message find --key order-1 --topic elsewhere"),
        "no message found\n"
    );
    let v = json_of(&b, "message find --key order-2 --topic shop");
    assert_eq!(strs(&v["messages"], "message_id"), set([&two]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_pending_and_discarded() {
    // The first check 200 ms after a half message, then no more than one:
    // an undecided half is discarded at its next check time, 3 s later.
    let b = Broker::start(&[
        "--tx-check-after-ms",
        "200",
        "--tx-check-interval-ms",
        "3000",
        "--tx-max-checks",
        "1",
    ]);
    let checker = CheckWith(|_: &ReceivedMessage| TransactionResolution::Unknown);
    let p = TransactionProducer::builder(b.config(), checker)
        .topics(["payments"])
        .start()
        .await
        .unwrap();
    let mut t = p.begin();
    let doomed = t
        .send(Message::new("payments", "never decided").with_key("pay-1"))
        .await
        .unwrap();
    drop(t);
    let mut t = p.begin().with_check_after(Duration::from_secs(3600));
    let waiting = t
        .send(Message::new("payments", "decided later").with_key("pay-2"))
        .await
        .unwrap();
    drop(t);
    let (doomed_tx, waiting_tx) = (
        doomed.transaction_id.as_str(),
        waiting.transaction_id.as_str(),
    );

    // --- tx list: both pending; one checked once (answered "unknown"),
    // the other not checked yet.
    let v = poll("the first check-back", Duration::from_secs(10), || {
        let v = json_of(&b, "tx list");
        let checked = v["pending"].as_array().is_some_and(|p| {
            p.iter()
                .any(|h| h["transaction_id"] == doomed_tx && h["checks"] == 1)
        });
        if checked {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    });
    assert_eq!(v["pending_count"], 2, "{v}");
    let pending = v["pending"].as_array().unwrap();
    let d = pending
        .iter()
        .find(|h| h["transaction_id"] == doomed_tx)
        .unwrap();
    assert_eq!(d["topic"], "payments");
    assert_eq!(d["message_id"], doomed.message_id.as_str());
    let w = pending
        .iter()
        .find(|h| h["transaction_id"] == waiting_tx)
        .unwrap();
    assert_eq!(w["message_id"], waiting.message_id.as_str());
    assert_eq!(w["checks"], 0);
    assert!(
        w["next_check_ms"].as_i64().unwrap() > w["stored_ms"].as_i64().unwrap() + 3_000_000,
        "checked in an hour, as its producer asked: {w}"
    );

    let out = ok(&b, "tx list");
    assert_header(&out, "TRANSACTION TOPIC MESSAGE_ID AGE CHECKS NEXT_CHECK");
    let r = row(&out, doomed_tx);
    assert_eq!(
        (r[1], r[2], r[4]),
        ("payments", doomed.message_id.as_str(), "1"),
        "{out}"
    );
    let age = r[3]
        .strip_suffix('s')
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("an age in seconds: {out}"));
    assert!(age < 60, "{out}");
    assert!(
        r[5].contains('T') && r[5].ends_with('Z'),
        "next check: {out}"
    );
    let r = row(&out, waiting_tx);
    assert_eq!(
        (r[1], r[2], r[4]),
        ("payments", waiting.message_id.as_str(), "0"),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("2 pending"), "{out}");

    // --- tx discarded: the unanswered one, after its one check.
    let v = poll("the discard", Duration::from_secs(15), || {
        let v = json_of(&b, "tx discarded");
        match v["discarded"].as_array() {
            Some(d) if !d.is_empty() => Ok(v),
            _ => Err(v.to_string()),
        }
    });
    let gone = v["discarded"].as_array().unwrap();
    assert_eq!(gone.len(), 1, "only the unanswered one: {v}");
    let g = &gone[0];
    assert_eq!(g["transaction_id"], doomed_tx);
    assert_eq!(g["message_id"], doomed.message_id.as_str());
    assert_eq!(g["topic"], "payments");
    assert_eq!(g["checks"], 1);
    let reason = "no outcome after 1 check-backs; discarded, never delivered";
    assert_eq!(g["reason"], reason);
    let out = ok(&b, "tx discarded");
    assert_header(&out, "TRANSACTION TOPIC MESSAGE_ID DISCARDED CHECKS REASON");
    let r = row(&out, doomed_tx);
    assert_eq!(
        (r[1], r[2], r[4]),
        ("payments", doomed.message_id.as_str(), "1"),
        "{out}"
    );
    assert!(r[3].contains('T') && r[3].ends_with('Z'), "{out}");
    assert_eq!(r[5..].join(" "), reason);

    // Only the other one is left pending.
    let v = json_of(&b, "tx list");
    assert_eq!(v["pending_count"], 1, "{v}");
    assert_eq!(strs(&v["pending"], "transaction_id"), set([waiting_tx]));
    let out = ok(&b, "tx list");
    assert!(rows(&out, doomed_tx).is_empty(), "{out}");
    assert_eq!(out.lines().last(), Some("1 pending"), "{out}");

    // The message's own history agrees.
    let m = get_message(&b, &doomed.message_id);
    assert_eq!(m["type"], "TRANSACTION");
    let tx = &m["lifecycle"]["transaction"];
    assert_eq!(tx["state"], "discarded", "{tx}");
    assert_eq!(tx["transaction_id"], doomed_tx);
    assert!(has_event(&m, "half_stored", "", None), "{m}");
    assert!(has_event(&m, "checked", "", None), "{m}");
    assert!(has_event(&m, "discarded", "", None), "{m}");
    let m = get_message(&b, &waiting.message_id);
    assert_eq!(m["lifecycle"]["transaction"]["state"], "pending");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_listed_and_redriven() {
    let b = Broker::start(&[]);
    ok(&b, "topic create jobs --queues 1");
    let tags = ["a", "b", "c"];
    let ids: Vec<String> = tags
        .iter()
        .map(|t| {
            let out = ok(
                &b,
                &format!("send -t jobs 'job {t}' --tag {t} --key job-{t}"),
            );
            sent_id(&out, "jobs")
        })
        .collect();
    let all = set([&ids[0], &ids[1], &ids[2]]);
    let (a, bb, c) = (&ids[0], &ids[1], &ids[2]);

    // Two groups of one delivery each: a message received and not acked
    // is dead-lettered by the next receive, never delivered again.
    for g in ["g1", "g2"] {
        b.admin()
            .put(
                &format!("/v1/groups/{g}/policy"),
                json!({"max_delivery_attempts": 1}),
            )
            .await
            .unwrap();
        let first = consume_json(&b, "jobs", g, "--peek");
        assert_eq!(ids_of(&first), all);
        assert!(
            first.iter().all(|m| m["delivery_attempt"] == 1),
            "{first:?}"
        );
        poll("three dead letters", Duration::from_secs(10), || {
            let again = consume_json(&b, "jobs", g, "--peek");
            assert!(
                again.is_empty(),
                "delivered past its last attempt: {again:?}"
            );
            let v = json_of(&b, &format!("dlq list {g}"));
            match v["dead_letters"].as_array() {
                Some(d) if d.len() == 3 => Ok(()),
                _ => Err(v.to_string()),
            }
        });
    }

    // --- dlq list.
    let v = json_of(&b, "dlq list g1");
    assert_eq!(v["group"], "g1");
    assert_eq!(strs(&v["dead_letters"], "message_id"), all);
    let letters = v["dead_letters"].as_array().unwrap();
    let letter = |id: &str| letters.iter().find(|d| d["message_id"] == id).unwrap();
    let dlq_offset = |id: &str| letter(id)["dlq_queue_offset"].as_u64().unwrap();
    let offsets: BTreeSet<u64> = ids.iter().map(|i| dlq_offset(i)).collect();
    assert_eq!(offsets, BTreeSet::from([0, 1, 2]));
    for (i, (id, tag)) in ids.iter().zip(tags).enumerate() {
        let d = letter(id);
        assert_eq!(d["topic"], "jobs");
        assert_eq!(d["queue_id"], 0);
        assert_eq!(d["queue_offset"], i as u64);
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["tag"], tag);
        assert_eq!(d["keys"], json!([format!("job-{tag}")]));
        assert!(d["stored_ms"].as_i64().is_some_and(|t| t > 0), "{d}");
        assert!(d["error"].is_null(), "{d}");
    }
    let out = ok(&b, "dlq list g1");
    assert_header(
        &out,
        "DLQ_OFFSET MESSAGE_ID TOPIC QUEUE/OFFSET ATTEMPTS TAG STORED REDRIVEN",
    );
    for (i, (id, tag)) in ids.iter().zip(tags).enumerate() {
        let r = row(&out, &dlq_offset(id).to_string());
        let place = format!("0/{i}");
        assert_eq!(
            r[1..6],
            [id.as_str(), "jobs", place.as_str(), "1", tag],
            "{out}"
        );
        assert!(r[6].contains('T') && r[6].ends_with('Z'), "{out}");
        assert_eq!(r[7], "-", "not re-driven yet: {out}");
    }
    assert_eq!(out.lines().last(), Some("3 dead letter(s) of group g1"));
    let out = ok(&b, "dlq list g1 --limit 2");
    assert_eq!(out.lines().count(), 4, "header, two rows, total: {out}");
    assert_eq!(out.lines().last(), Some("2 dead letter(s) of group g1"));
    let err = fails(&b, "dlq list g1 --limit 0");
    assert!(err.contains("--limit must be at least 1"), "{err}");

    // The group and the message say so too.
    let out = ok(&b, "group list");
    assert_eq!(row(&out, "g1"), ["g1", "false", "1", "1", "0", "0", "3"]);
    let out = ok(&b, "group describe g1");
    assert_eq!(field(&out, "dead letters:"), "3");
    assert!(
        field(&out, "retry policy:").starts_with("1 attempts,"),
        "{out}"
    );
    let m = get_message(&b, a);
    let s = group_state(&m, "g1");
    assert_eq!(s["state"], "dead_lettered");
    assert_eq!(s["attempts"], 1);
    assert_eq!(s["dlq_offset"], dlq_offset(a));
    assert!(has_event(&m, "dead_lettered", "g1", None), "{m}");
    let out = ok(&b, &format!("message get {a}"));
    assert_eq!(row(&out, "g1")[1], "dead_lettered", "{out}");

    // --- redrive --message-id: that one comes back to g1, as attempt 1.
    assert_eq!(
        ok(&b, &format!("dlq redrive g1 --message-id {bb}")),
        "1 of 1 dead letter(s) of group g1 sent back\n"
    );
    let back = consume_json(&b, "jobs", "g1", "");
    assert_eq!(ids_of(&back), set([bb]));
    assert_eq!(back[0]["delivery_attempt"], 1);
    assert_eq!(back[0]["body"], "job b");
    assert!(consume_json(&b, "jobs", "g1", "").is_empty());
    // Its history: re-driven, delivered again as attempt 1, acked; its
    // state for g1 is acked again.
    let m = get_message(&b, bb);
    assert_eq!(group_state(&m, "g1")["state"], "acked", "{m}");
    let after: Vec<_> = events(&m)
        .into_iter()
        .skip_while(|(e, g, _)| !(e == "redriven" && g == "g1"))
        .collect();
    assert!(
        after
            .iter()
            .any(|(e, g, a)| e == "delivered" && g == "g1" && *a == Some(1)),
        "{m}"
    );
    assert!(
        after.iter().any(|(e, g, _)| e == "acked" && g == "g1"),
        "{m}"
    );

    // --offset.
    let c_offset = dlq_offset(c);
    assert_eq!(
        json_of(&b, &format!("dlq redrive g1 --offset {c_offset}")),
        json!({"group": "g1", "failed": [],
               "redriven": [{"group": "g1", "dlq_offset": c_offset, "topic": "jobs"}]})
    );
    let back = consume_json(&b, "jobs", "g1", "");
    assert_eq!(ids_of(&back), set([c]));
    assert!(consume_json(&b, "jobs", "g1", "").is_empty());

    // --all, for g2: each comes back to g2; g1 is not touched.
    assert_eq!(
        ok(&b, "dlq redrive g2 --all"),
        "3 of 3 dead letter(s) of group g2 sent back\n"
    );
    let back = consume_json(&b, "jobs", "g2", "");
    assert_eq!(ids_of(&back), all);
    assert!(back.iter().all(|m| m["delivery_attempt"] == 1), "{back:?}");
    assert!(
        consume_json(&b, "jobs", "g1", "").is_empty(),
        "a stays dead for g1"
    );

    // --all for g1 skips the letters already re-driven (b and c were
    // handled since): only a comes back; --again includes the others.
    let out = ok(&b, "dlq list g1");
    assert_ne!(row(&out, &dlq_offset(bb).to_string())[7], "-", "{out}");
    assert_eq!(
        ok(&b, "dlq redrive g1 --all"),
        "1 of 1 dead letter(s) of group g1 sent back\n"
    );
    assert_eq!(ids_of(&consume_json(&b, "jobs", "g1", "")), set([a]));
    assert_eq!(
        ok(&b, "dlq redrive g1 --all"),
        "0 of 0 dead letter(s) of group g1 sent back\n"
    );
    let err = fails(&b, &format!("dlq redrive g1 --message-id {bb}"));
    assert!(err.contains("--again"), "{err}");
    assert_eq!(
        ok(&b, &format!("dlq redrive g1 --message-id {bb} --again")),
        "1 of 1 dead letter(s) of group g1 sent back\n"
    );
    assert_eq!(ids_of(&consume_json(&b, "jobs", "g1", "")), set([bb]));

    // --- refusals.
    let err = fails(&b, "dlq redrive g1");
    for flag in ["--message-id", "--offset", "--all"] {
        assert!(err.contains(flag), "names {flag}: {err}");
    }
    let err = fails(&b, "dlq redrive g1 --message-id NOPE");
    assert!(
        err.contains("group g1 has no dead letter with message id NOPE"),
        "{err}"
    );
    let (success, out, err) = run(&b, "dlq redrive g1 --offset 99", None);
    assert!(!success, "{out}{err}");
    assert_eq!(out, "0 of 1 dead letter(s) of group g1 sent back\n");
    assert!(
        err.contains("no dead letter at offset 99 of %DLQ%g1")
            && err.contains("1 re-drive(s) failed"),
        "{err}"
    );
}

#[test]
fn an_unreachable_broker_is_named() {
    // No broker address from the environment: only the flags count.
    let bare = |cmd: &str| {
        let out = Command::new(common::ferry_bin())
            .args(words(cmd))
            .env_remove("FERRY_SERVER")
            .env_remove("FERRY_HTTP")
            .stdin(Stdio::null())
            .output()
            .expect("run ferry");
        assert!(!out.status.success(), "ferry {cmd} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for cmd in [
        "topic list",
        "topic create t",
        "group list",
        "group describe g",
        "message get X",
        "message find --key k",
        "tx list",
        "tx discarded",
        "dlq list g",
        "dlq redrive g --all",
    ] {
        let err = bare(&format!("{cmd} --http 127.0.0.1:1 --timeout 5s"));
        assert!(
            err.contains("cannot reach the admin API at 127.0.0.1:1"),
            "ferry {cmd}: {err}"
        );
    }
    for cmd in ["send -t t body", "consume -t t -g g"] {
        let err = bare(&format!(
            "{cmd} --server 127.0.0.1:1 --http 127.0.0.1:1 --timeout 5s"
        ));
        assert!(
            err.contains("cannot connect to 127.0.0.1:1"),
            "ferry {cmd}: {err}"
        );
    }
}
