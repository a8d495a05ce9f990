//! The dashboard over a real socket: its three assets with their content
//! types and security headers, the redirects to it, and the two JSON
//! endpoints it draws from (`/v1/overview`, `/v1/stats/history`) counting
//! real gRPC traffic.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{ack, code, receipt, receive_messages, receive_request, req, res, start, Running};
use ferry_proto::v2 as pb;
use pb::Code;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

impl Running {
    async fn json(&self, path: &str) -> Value {
        let (status, body) = self
            .admin()
            .request("GET", path, None)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

/// A raw HTTP/1.1 answer: status, lower-cased headers, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GET over a fresh connection, read to its end.
async fn get_raw(addr: &str, path: &str) -> Answer {
    raw(addr, "GET", path, "").await
}

/// One request over a fresh connection with extra header lines (each ending
/// in CRLF), read to its end.
async fn raw(addr: &str, method: &str, path: &str, extra: &str) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

#[tokio::test]
async fn the_dashboard_assets_are_served_with_their_content_types() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;

    for path in ["/", "/ui"] {
        let a = get_raw(&b.http, path).await;
        assert_eq!(a.status, 303, "GET {path} redirects");
        assert_eq!(a.header("location"), Some("/ui/"), "GET {path}");
    }
    for (path, content_type, marker) in [
        (
            "/ui/",
            "text/html; charset=utf-8",
            "<script src=\"/ui/app.js\"",
        ),
        (
            "/ui/app.js",
            "text/javascript; charset=utf-8",
            "function esc(",
        ),
        ("/ui/app.css", "text/css; charset=utf-8", ".timeline"),
    ] {
        let a = get_raw(&b.http, path).await;
        assert_eq!(a.status, 200, "GET {path}");
        assert_eq!(a.header("content-type"), Some(content_type), "GET {path}");
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(a.header("cache-control"), Some("no-cache"));
        let csp = a.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "GET {path}: a strict CSP, got {csp:?}"
        );
        assert!(a.body.contains(marker), "GET {path}: {marker} in the body");
    }
    // The page references only the assets served above: no CDN.
    let index = get_raw(&b.http, "/ui/").await.body;
    assert!(!index.contains("http://") && !index.contains("https://"));
    // Unknown assets are 404, not the page.
    assert_eq!(get_raw(&b.http, "/ui/nope.js").await.status, 404);
    b.stop().await;
}

fn message(topic: &str, i: usize) -> pb::Message {
    pb::Message {
        topic: res(topic),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            message_id: format!("ui-test-{i:04}"),
            message_type: pb::MessageType::Normal as i32,
            keys: vec![format!("k{i}")],
            born_host: "test-host".into(),
            ..Default::default()
        }),
        body: Bytes::from(format!("body {i}")),
    }
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} is a number in {v}"))
}

#[tokio::test]
async fn overview_and_history_count_real_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start(dir.path()).await;
    let topic = "ui-orders";
    let group = "ui-billing";

    let before = b.json("/v1/overview").await;
    assert_eq!(u(&before, "/topics"), 0);
    assert_eq!(u(&before, "/totals/messages_stored"), 0);

    let r =
        b.c.send_message(req(pb::SendMessageRequest {
            messages: (0..10).map(|i| message(topic, i)).collect(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);

    // Receive until 4 messages are held: 3 acked, 1 left in flight.
    let mut got = Vec::new();
    for _ in 0..20 {
        if got.len() >= 4 {
            break;
        }
        let r = receive_request(
            group,
            topic,
            4,
            Duration::from_secs(60),
            Duration::from_secs(1),
        );
        got.extend(receive_messages(&mut b.c, req(r)).await);
    }
    assert!(got.len() >= 4, "received {}", got.len());
    for m in &got[..3] {
        ack(&mut b.c, group, topic, &receipt(m)).await;
    }
    let delivered = got.len() as u64;

    let o = b.json("/v1/overview").await;
    assert_eq!(u(&o, "/topics"), 1, "{o}");
    assert_eq!(u(&o, "/groups"), 1, "{o}");
    // Lag counts what is not yet acknowledged (in flight included).
    assert_eq!(u(&o, "/lag"), 10 - 3, "{o}");
    assert_eq!(u(&o, "/inflight"), delivered - 3, "{o}");
    assert_eq!(u(&o, "/totals/messages_stored"), 10, "{o}");
    assert_eq!(u(&o, "/totals/messages_delivered"), delivered, "{o}");
    assert_eq!(u(&o, "/totals/acks"), 3, "{o}");
    assert_eq!(u(&o, "/dead_letters"), 0, "{o}");
    assert_eq!(u(&o, "/transactions_pending"), 0, "{o}");
    assert_eq!(u(&o, "/timers_pending"), 0, "{o}");
    assert!(u(&o, "/log/committed_offset") > 0, "{o}");
    assert!(o["log"]["failed"].is_null(), "{o}");

    // The sampler records the totals once a second: wait for a sample
    // taken after the traffic.
    let mut h = Value::Null;
    for _ in 0..60 {
        h = b.json("/v1/stats/history").await;
        let last = h["samples"].as_array().and_then(|s| s.last()).cloned();
        if last.is_some_and(|s| s["acks"] == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(u(&h, "/interval_ms"), 1000);
    assert_eq!(u(&h, "/capacity"), 600);
    let samples = h["samples"].as_array().expect("samples");
    let last = samples.last().expect("a sample after the traffic");
    assert_eq!(u(last, "/messages_stored"), 10, "{h}");
    assert_eq!(u(last, "/messages_delivered"), delivered, "{h}");
    assert_eq!(u(last, "/acks"), 3, "{h}");
    assert_eq!(u(last, "/lag"), 10 - 3, "{h}");
    assert_eq!(u(last, "/inflight"), delivered - 3, "{h}");
    assert_eq!(u(&h, "/now/messages_stored"), 10, "{h}");
    // Oldest first, one a second or so, totals never falling.
    for w in samples.windows(2) {
        assert!(u(&w[1], "/t_ms") > u(&w[0], "/t_ms"), "{h}");
        assert!(u(&w[1], "/messages_stored") >= u(&w[0], "/messages_stored"));
    }
    b.stop().await;
}

#[tokio::test]
async fn state_changing_calls_from_another_origin_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let foreign = "Origin: http://attacker.example\r\n";
    let a = raw(&b.http, "POST", "/v1/topics/csrf", foreign).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let v: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["code"], "FORBIDDEN");
    assert!(v["message"].as_str().unwrap().contains("attacker.example"));
    // Nothing was created.
    assert_eq!(get_raw(&b.http, "/v1/topics/csrf").await.status, 404);
    // Reads stay open to any origin; the broker's own pages and clients
    // without an Origin header may change state.
    assert_eq!(raw(&b.http, "GET", "/v1/topics", foreign).await.status, 200);
    let own = format!("Origin: http://{}\r\n", b.http);
    assert_eq!(
        raw(&b.http, "POST", "/v1/topics/csrf", &own).await.status,
        201
    );
    assert_eq!(
        raw(&b.http, "DELETE", "/v1/topics/csrf", foreign)
            .await
            .status,
        403
    );
    assert_eq!(
        raw(&b.http, "DELETE", "/v1/topics/csrf", "").await.status,
        200
    );
    b.stop().await;
}
