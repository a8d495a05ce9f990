//! `GET /metrics` over real sockets: scraped before and after gRPC traffic
//! (sends, a refused send, an unimplemented call, receives, acks, a
//! consumer that fails and forwards to its dead-letter queue, a delayed
//! message, a topic deletion), asserting each family moved by the right
//! amount; every scrape is also checked against the text format (HELP and
//! TYPE for each sample's family, cumulative histogram buckets ending in
//! `+Inf` equal to `_count`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{
    ack, code, deliver_at, now_ms, quick_redelivery, receipt, receive_messages, receive_request,
    req, res, start_with, Running,
};
use ferry_proto::v2 as pb;
use pb::Code;

/// One scrape, parsed and checked against the format.
#[derive(Debug)]
struct Scrape {
    /// `name{k="v",...}` (labels sorted) → value.
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// The value of `name` with exactly `labels`, 0 when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples.get(&key(name, labels)).copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.contains_key(&key(name, labels))
    }

    /// Sum of every series of `name` whose labels include `labels`.
    fn sum_where(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| {
                let (n, ls) = split_key(k);
                n == name
                    && labels
                        .iter()
                        .all(|(lk, lv)| ls.get(*lk).map(String::as_str) == Some(*lv))
            })
            .map(|(_, v)| *v)
            .sum()
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let sorted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let inner: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn split_key(k: &str) -> (&str, BTreeMap<String, String>) {
    let (name, rest) = k.split_once('{').unwrap();
    let (labels, _) = parse_labels(rest.trim_end_matches('}'));
    (name, labels)
}

/// Parses `k="v",k2="v2"` (escapes undone); returns the labels and what
/// follows a closing `}` if the text has one.
fn parse_labels(s: &str) -> (BTreeMap<String, String>, &str) {
    let mut out = BTreeMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && b[i] != b'}' {
        let eq = s[i..].find('=').expect("label without =") + i;
        let k = s[i..eq].to_string();
        assert!(
            k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label name {k:?}"
        );
        assert_eq!(b[eq + 1], b'"', "label value must be quoted in {s:?}");
        let mut j = eq + 2;
        let mut v = String::new();
        loop {
            match b[j] {
                b'\\' => {
                    v.push(match b[j + 1] {
                        b'n' => '\n',
                        b'\\' => '\\',
                        b'"' => '"',
                        other => panic!("bad escape \\{} in {s:?}", other as char),
                    });
                    j += 2;
                }
                b'"' => break,
                _ => {
                    let ch = s[j..].chars().next().unwrap();
                    v.push(ch);
                    j += ch.len_utf8();
                }
            }
        }
        out.insert(k, v);
        i = j + 1;
        if i < b.len() && b[i] == b',' {
            i += 1;
        }
    }
    let rest = if i < b.len() { &s[i + 1..] } else { "" };
    (out, rest)
}

fn parse(text: &str) -> Scrape {
    let mut help: HashMap<String, ()> = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    // Histogram series: (family, labels without le) → buckets in order.
    let mut buckets: BTreeMap<(String, String), Vec<(String, f64)>> = BTreeMap::new();
    let mut counts: HashMap<(String, String), f64> = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("HELP text");
            assert!(help.insert(name.into(), ()).is_none(), "HELP twice: {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(help.contains_key(name), "TYPE before HELP: {line}");
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "TYPE twice: {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let (name, labels, value) = match line.find('{') {
            Some(open) => {
                let (labels, rest) = parse_labels(&line[open + 1..]);
                (&line[..open], labels, rest.trim())
            }
            None => {
                let (n, v) = line.split_once(' ').expect("sample value");
                (n, BTreeMap::new(), v)
            }
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
        };
        // The family a sample belongs to, and its TYPE.
        let family = if types.contains_key(name) {
            name.to_string()
        } else {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or_else(|| panic!("sample {name} has no TYPE line before it"));
            assert_eq!(
                types.get(base).map(String::as_str),
                Some("histogram"),
                "sample {name}: {base} is not a histogram with a TYPE line"
            );
            base.to_string()
        };
        assert!(help.contains_key(&family), "no HELP for {family}");
        if types[&family] == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            );
        }
        let mut rest_labels = labels.clone();
        let le = rest_labels.remove("le");
        let series = format!("{rest_labels:?}");
        if name.ends_with("_bucket") && types[&family] == "histogram" {
            buckets
                .entry((family.clone(), series))
                .or_default()
                .push((le.expect("bucket without le"), value));
        } else if name.ends_with("_count") && types[&family] == "histogram" {
            counts.insert((family.clone(), series), value);
        }
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let k = key(name, &pairs);
        assert!(
            samples.insert(k.clone(), value).is_none(),
            "sample twice: {k}"
        );
    }
    for ((family, series), bs) in &buckets {
        let mut prev_le = f64::NEG_INFINITY;
        let mut prev_n = 0.0;
        for (le, n) in bs {
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            assert!(le > prev_le, "{family}{series}: le not ascending");
            assert!(*n >= prev_n, "{family}{series}: buckets not cumulative");
            prev_le = le;
            prev_n = *n;
        }
        assert_eq!(
            bs.last().unwrap().0,
            "+Inf",
            "{family}{series}: last bucket is not +Inf"
        );
        assert_eq!(
            Some(&prev_n),
            counts.get(&(family.clone(), series.clone())),
            "{family}{series}: +Inf bucket differs from _count"
        );
    }
    Scrape { samples }
}

impl Running {
    async fn scrape(&self) -> Scrape {
        parse(&self.admin().get_text("/metrics").await.unwrap())
    }

    async fn send(&mut self, messages: Vec<pb::Message>) -> pb::SendMessageResponse {
        self.c
            .send_message(req(pb::SendMessageRequest { messages }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn receive(&mut self, group: &str, topic: &str, batch: i32) -> Vec<pb::Message> {
        let invisible = Duration::from_millis(100);
        let r = receive_request(group, topic, batch, invisible, Duration::from_secs(1));
        receive_messages(&mut self.c, req(r)).await
    }
}

fn msg(topic: &str, id: &str, body: &[u8]) -> pb::Message {
    let mut m = common::msg(topic, id, body);
    m.system_properties.as_mut().unwrap().born_host = "test-host".into();
    m
}

fn attempt(m: &pb::Message) -> i32 {
    m.system_properties
        .as_ref()
        .unwrap()
        .delivery_attempt
        .unwrap_or(0)
}

/// `after - before` of one series.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = start_with(dir.path(), quick_redelivery).await;
    let topic = "metrics-topic";
    // Defines the topic (no log record) so the sends below are the only
    // records appended between the first two scrapes.
    let route =
        r.c.query_route(req(pb::QueryRouteRequest {
            topic: res(topic),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&route.status), Code::Ok);

    let m0 = r.scrape().await;
    assert!(m0.has("ferry_tx_pending", &[]));
    assert!(m0.has("ferry_tx_committed_total", &[]));
    assert!(m0.has("ferry_tx_rolled_back_total", &[]));
    assert!(m0.has("ferry_tx_checks_sent_total", &[]));
    assert!(m0.has("ferry_tx_discarded_total", &[]));
    assert!(m0.has("ferry_log_fsync_seconds_count", &[]));
    assert_eq!(
        m0.get(
            "ferry_grpc_requests_total",
            &[("rpc", "QueryRoute"), ("code", "OK")]
        ),
        1.0
    );

    // Three sends, one message each, 10 + 20 + 30 body bytes.
    for (i, len) in [10usize, 20, 30].into_iter().enumerate() {
        let resp = r
            .send(vec![msg(topic, &format!("m{i}"), &vec![b'x'; len])])
            .await;
        assert_eq!(code(&resp.status), Code::Ok, "{:?}", resp.status);
    }
    let m1 = r.scrape().await;
    let t = [("topic", topic)];
    assert_eq!(
        delta(&m0, &m1, "ferry_topic_messages_stored_total", &t),
        3.0
    );
    assert_eq!(delta(&m0, &m1, "ferry_topic_bytes_stored_total", &t), 60.0);
    assert_eq!(
        m1.sum_where("ferry_queue_messages_stored_total", &t),
        3.0,
        "per-queue counts add up to the topic's"
    );
    assert_eq!(m1.sum_where("ferry_queue_bytes_stored_total", &t), 60.0);
    assert_eq!(delta(&m0, &m1, "ferry_messages_stored_total", &[]), 3.0);
    assert_eq!(
        delta(
            &m0,
            &m1,
            "ferry_grpc_requests_total",
            &[("rpc", "SendMessage"), ("code", "OK")]
        ),
        3.0
    );
    // Each send waited for its own group commit (sync mode): three records
    // in the batches, every committed byte in them, an fsync each.
    assert_eq!(
        delta(&m0, &m1, "ferry_log_commit_batch_records_sum", &[]),
        3.0
    );
    assert_eq!(
        delta(&m0, &m1, "ferry_log_commit_batch_bytes_sum", &[]),
        delta(&m0, &m1, "ferry_log_committed_offset_bytes", &[])
    );
    assert!(delta(&m0, &m1, "ferry_log_commit_batch_bytes_sum", &[]) > 60.0);
    assert!(delta(&m0, &m1, "ferry_log_commit_batch_records_count", &[]) >= 1.0);
    assert!(delta(&m0, &m1, "ferry_log_fsync_seconds_count", &[]) >= 1.0);
    assert!(m1.get("ferry_log_fsync_seconds_sum", &[]) > 0.0);

    // Refusals: an empty batch (BAD_REQUEST in the body, gRPC OK), a call
    // without the client id, an RPC Ferry does not serve (a gRPC error).
    let resp = r.send(vec![]).await;
    assert_eq!(code(&resp.status), Code::BadRequest);
    let resp =
        r.c.send_message(tonic::Request::new(pb::SendMessageRequest {
            messages: vec![msg(topic, "no-id", b"x")],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp.status), Code::ClientIdRequired);
    let err =
        r.c.query_offset(req(pb::QueryOffsetRequest::default()))
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    let bad_receive = r.receive("metrics-g1", topic, 0).await;
    assert!(bad_receive.is_empty());
    let m2 = r.scrape().await;
    let calls = |rpc: &str, code: &str| {
        delta(
            &m1,
            &m2,
            "ferry_grpc_requests_total",
            &[("rpc", rpc), ("code", code)],
        )
    };
    assert_eq!(calls("SendMessage", "BAD_REQUEST"), 1.0);
    assert_eq!(calls("SendMessage", "CLIENT_ID_REQUIRED"), 1.0);
    assert_eq!(calls("SendMessage", "OK"), 0.0);
    assert_eq!(calls("QueryOffset", "GRPC_UNIMPLEMENTED"), 1.0);
    assert_eq!(calls("ReceiveMessage", "BAD_REQUEST"), 1.0);
    // Nothing stored by the refused sends.
    assert_eq!(
        delta(&m1, &m2, "ferry_topic_messages_stored_total", &t),
        0.0
    );
    // Every call is timed, whatever its outcome.
    let send_calls = m2.sum_where("ferry_grpc_requests_total", &[("rpc", "SendMessage")]);
    assert_eq!(send_calls, 5.0);
    assert_eq!(
        m2.get(
            "ferry_grpc_request_duration_seconds_count",
            &[("rpc", "SendMessage")]
        ),
        send_calls
    );

    // A consumer that acknowledges everything.
    let mut got = Vec::new();
    let mut receives = 0.0;
    while got.len() < 3 {
        got.extend(r.receive("metrics-g1", topic, 16).await);
        receives += 1.0;
        assert!(receives < 20.0, "messages not delivered");
    }
    for m in &got {
        ack(&mut r.c, "metrics-g1", topic, &receipt(m)).await;
    }

    // A consumer that fails: never acknowledges, receives each message a
    // second time, then forwards one to its dead-letter queue.
    let mut first = Vec::new();
    while first.len() < 3 {
        first.extend(r.receive("metrics-g2", topic, 16).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = Vec::new();
    while again.len() < 3 {
        again.extend(r.receive("metrics-g2", topic, 16).await);
    }
    assert!(again.iter().all(|m| attempt(m) == 2), "{again:?}");
    let fwd =
        r.c.forward_message_to_dead_letter_queue(req(pb::ForwardMessageToDeadLetterQueueRequest {
            group: res("metrics-g2"),
            topic: res(topic),
            receipt_handle: receipt(&again[0]),
            message_id: String::new(),
            delivery_attempt: 2,
            max_delivery_attempts: 16,
            lite_topic: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&fwd.status), Code::Ok, "{:?}", fwd.status);
    let m3 = r.scrape().await;
    let calls = |rpc: &str, code: &str| {
        delta(
            &m2,
            &m3,
            "ferry_grpc_requests_total",
            &[("rpc", rpc), ("code", code)],
        )
    };
    assert_eq!(calls("AckMessage", "OK"), 3.0);
    assert_eq!(calls("ForwardMessageToDeadLetterQueue", "OK"), 1.0);
    assert!(calls("ReceiveMessage", "OK") >= 3.0);
    let g1 = [("group", "metrics-g1")];
    let g2 = [("group", "metrics-g2")];
    assert_eq!(m3.get("ferry_group_redeliveries_total", &g1), 0.0);
    assert_eq!(m3.get("ferry_group_redeliveries_total", &g2), 3.0);
    assert_eq!(m3.get("ferry_group_dead_lettered_total", &g2), 1.0);
    assert_eq!(m3.get("ferry_group_dead_letters", &g2), 1.0);
    assert_eq!(m3.get("ferry_group_dead_letters", &g1), 0.0);
    assert_eq!(delta(&m2, &m3, "ferry_redeliveries_total", &[]), 3.0);
    assert_eq!(delta(&m2, &m3, "ferry_acks_total", &[]), 3.0);
    assert_eq!(m3.sum_where("ferry_group_lag", &g1), 0.0);
    assert_eq!(m3.sum_where("ferry_group_inflight", &g2), 2.0);

    // A delayed message fires about half a second after it is sent.
    let due = now_ms() + 500;
    let mut delayed = msg("metrics-delay", "d1", b"later");
    deliver_at(&mut delayed, due);
    let resp = r.send(vec![delayed]).await;
    assert_eq!(code(&resp.status), Code::Ok, "{:?}", resp.status);
    let mut m4 = r.scrape().await;
    for _ in 0..100 {
        if delta(&m3, &m4, "ferry_timers_fired_total", &[]) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m4 = r.scrape().await;
    }
    assert_eq!(delta(&m3, &m4, "ferry_timers_fired_total", &[]), 1.0);
    assert_eq!(
        delta(&m3, &m4, "ferry_timer_lateness_seconds_count", &[]),
        1.0
    );
    let late = delta(&m3, &m4, "ferry_timer_lateness_seconds_sum", &[]);
    assert!((0.0..5.0).contains(&late), "lateness {late}");
    assert_eq!(
        m4.get(
            "ferry_topic_messages_stored_total",
            &[("topic", "metrics-delay")]
        ),
        1.0
    );

    // Deleting a topic drops its series.
    let (status, body) = r
        .admin()
        .request("DELETE", &format!("/v1/topics/{topic}"), None)
        .await
        .unwrap();
    assert!((200..300).contains(&status), "{status} {body}");
    let m5 = r.scrape().await;
    assert!(!m5.has("ferry_topic_messages_stored_total", &t));
    assert_eq!(m5.sum_where("ferry_queue_messages_stored_total", &t), 0.0);
    assert!(m5.has(
        "ferry_topic_messages_stored_total",
        &[("topic", "metrics-delay")]
    ));

    r.stop().await;
}

#[test]
fn parser_rejects_broken_text() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\"} 1\n\
              # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    let s = parse(ok);
    assert_eq!(s.get("a_total", &[("x", "q\"")]), 1.0);
    let cases = [
        // No TYPE line.
        "# HELP b B.\nb 1\n",
        // Not cumulative.
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 3\nh_count 1\n",
        // +Inf differs from _count.
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 3\n",
        // No +Inf bucket.
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 3\nh_count 1\n",
        // A counter without _total.
        "# HELP c C.\n# TYPE c counter\nc 1\n",
    ];
    for text in cases {
        let text = text.to_string();
        assert!(
            std::panic::catch_unwind(move || parse(&text)).is_err(),
            "accepted broken text"
        );
    }
}
