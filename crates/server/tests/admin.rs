//! The admin HTTP API over real sockets, next to gRPC clients: topic
//! message types (and the send refusal they cause), topic describe and
//! delete (across a restart), group describe and list, message lookup by id
//! and key with each message's lifecycle, and dead-letter listing with the
//! facts of each message.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    ack, code, deliver_at, now_ms, quick_redelivery, receipt, receive_messages, receive_request,
    req, res, start_with, Running,
};
use ferry_proto::v2 as pb;
use ferry_proto::v2::messaging_service_client::MessagingServiceClient;
use pb::Code;
use serde_json::{json, Value};
use tonic::transport::Channel;

impl Running {
    async fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(&self.http, method, path, body).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.http("GET", path, None).await
    }

    async fn redrive(&self, group: &str, dlq_offset: u64) -> (u16, Value) {
        let path = format!("/v1/groups/{group}/dead-letters/{dlq_offset}/redrive");
        self.http("POST", &path, None).await
    }
}

/// One call of the admin API: the answer's status and JSON body.
async fn http(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    ferry_admin::AdminClient::new(addr)
        .request(method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn msg(topic: &str, id: &str, kind: pb::MessageType) -> pb::Message {
    pb::Message {
        topic: res(topic),
        user_properties: [("color".to_string(), "red".to_string())].into(),
        system_properties: Some(pb::SystemProperties {
            message_id: id.into(),
            message_type: kind as i32,
            tag: Some("tagA".into()),
            keys: vec![format!("key-{id}"), "shared".into()],
            born_host: "test-host".into(),
            ..Default::default()
        }),
        body: Bytes::from(format!("body of {id}")),
    }
}

async fn send(
    c: &mut MessagingServiceClient<Channel>,
    messages: Vec<pb::Message>,
) -> pb::SendMessageResponse {
    c.send_message(req(pb::SendMessageRequest { messages }))
        .await
        .unwrap()
        .into_inner()
}

async fn send_ok(c: &mut MessagingServiceClient<Channel>, m: pb::Message) -> pb::SendResultEntry {
    let r = send(c, vec![m]).await;
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    r.entries.into_iter().next().unwrap()
}

/// Received messages of `group` on `topic`, invisible for `invisible_ms`.
async fn receive(
    c: &mut MessagingServiceClient<Channel>,
    group: &str,
    topic: &str,
    invisible_ms: u64,
    poll_ms: u64,
) -> Vec<pb::Message> {
    let invisible = Duration::from_millis(invisible_ms);
    let r = receive_request(group, topic, 16, invisible, Duration::from_millis(poll_ms));
    receive_messages(c, req(r)).await
}

async fn end_tx(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    id: &str,
    tx: &str,
    resolution: pb::TransactionResolution,
) {
    let r = c
        .end_transaction(req(pb::EndTransactionRequest {
            topic: res(topic),
            message_id: id.into(),
            transaction_id: tx.into(),
            resolution: resolution as i32,
            source: pb::TransactionSource::SourceClient as i32,
            trace_context: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
}

/// The event names of a looked-up message's lifecycle.
fn events(m: &Value) -> Vec<String> {
    m["lifecycle"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

/// Looks up the one message with this id.
async fn lookup(b: &Running, id: &str) -> Value {
    let (status, body) = b.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let list = body["messages"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    list[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_accept_their_message_types_and_can_be_described_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_with(dir.path(), quick_redelivery).await;

    // Refusals of the definition itself.
    let (status, body) = b
        .http(
            "POST",
            "/v1/topics/orders",
            Some(json!({"queues": 2, "bogus": 1})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("BAD_REQUEST")));
    assert!(
        body["message"].as_str().unwrap().contains("bogus"),
        "{body}"
    );
    let (status, body) = b
        .http(
            "POST",
            "/v1/topics/orders",
            Some(json!({"message_types": ["NORMAL", "LITE"]})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("\"LITE\""),
        "{body}"
    );
    let (status, _) = b
        .http(
            "POST",
            "/v1/topics/orders",
            Some(json!({"message_types": []})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, body) = b.get("/v1/topics/orders").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("TOPIC_NOT_FOUND"))
    );

    let (status, body) = b
        .http(
            "POST",
            "/v1/topics/orders",
            Some(json!({"queues": 2, "message_types": ["FIFO", "NORMAL"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body,
        json!({"name": "orders", "created": true, "queues": 2, "message_types": ["NORMAL", "FIFO"]})
    );

    // The route lists what the topic accepts.
    let route =
        b.c.query_route(req(pb::QueryRouteRequest {
            topic: res("orders"),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.message_queues.len(), 2);
    for q in &route.message_queues {
        assert_eq!(
            q.accept_message_types,
            [pb::MessageType::Normal as i32, pb::MessageType::Fifo as i32]
        );
    }

    // A message of another type is refused with the precise code, and a
    // batch holding one is refused whole.
    let r = send(
        &mut b.c,
        vec![msg("orders", "tx1", pb::MessageType::Transaction)],
    )
    .await;
    assert_eq!(code(&r.status), Code::MessagePropertyConflictWithType);
    assert_eq!(
        r.status.unwrap().message,
        "topic orders accepts NORMAL, FIFO; this message is TRANSACTION"
    );
    let mut delayed = msg("orders", "d1", pb::MessageType::Delay);
    deliver_at(&mut delayed, (now_ms() / 1000 + 60) * 1000);
    let r = send(
        &mut b.c,
        vec![msg("orders", "n1", pb::MessageType::Normal), delayed],
    )
    .await;
    assert_eq!(code(&r.status), Code::MultipleResults);
    assert_eq!(code(&r.entries[0].status), Code::BadRequest);
    assert_eq!(
        code(&r.entries[1].status),
        Code::MessagePropertyConflictWithType
    );
    let (_, body) = b.get("/v1/topics/orders").await;
    assert_eq!(
        body,
        json!({
            "name": "orders",
            "message_types": ["NORMAL", "FIFO"],
            "queues": [
                {"id": 0, "min_offset": 0, "max_offset": 0},
                {"id": 1, "min_offset": 0, "max_offset": 0},
            ],
            "groups": [],
        }),
        "nothing was stored"
    );
    let (status, body) = b.get("/v1/messages/n1").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("MESSAGE_NOT_FOUND"))
    );

    // Accepted types go through; a group shows up once it consumes.
    send_ok(&mut b.c, msg("orders", "n1", pb::MessageType::Normal)).await;
    let got = receive(&mut b.c, "g", "orders", 30_000, 1_000).await;
    assert_eq!(got.len(), 1);
    let (_, body) = b.get("/v1/topics/orders").await;
    assert_eq!(body["groups"], json!(["g"]));
    let max: u64 = body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["max_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(max, 1);
    let (_, body) = b.get("/v1/topics").await;
    let listed = body["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "orders")
        .unwrap()
        .clone();
    assert_eq!(listed["message_types"], json!(["NORMAL", "FIFO"]));

    // Re-posting changes the accepted types of an existing topic.
    let (status, body) = b
        .http(
            "POST",
            "/v1/topics/orders",
            Some(json!({"message_types": ["TRANSACTION"]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"name": "orders", "created": false, "queues": 2, "message_types": ["TRANSACTION"]})
    );
    let r = send(&mut b.c, vec![msg("orders", "n2", pb::MessageType::Normal)]).await;
    assert_eq!(code(&r.status), Code::MessagePropertyConflictWithType);

    // Delete: gone for good; unknown afterwards; its messages still found.
    let (status, body) = b.http("DELETE", "/v1/topics/orders", None).await;
    assert_eq!(
        (status, body),
        (200, json!({"name": "orders", "deleted": true}))
    );
    let (status, body) = b.http("DELETE", "/v1/topics/orders", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("TOPIC_NOT_FOUND"))
    );
    let (status, _) = b.get("/v1/topics/orders").await;
    assert_eq!(status, 404);
    let (status, body) = b.http("DELETE", "/v1/topics/bad%20name", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("ILLEGAL_TOPIC"))
    );
    let m = lookup(&b, "n1").await;
    assert_eq!(events(&m), ["stored", "delivered", "topic_deleted"]);
    assert_eq!(m["lifecycle"]["groups"], json!([]));
    // The receipt of the deleted topic's delivery settles nothing.
    let r =
        b.c.ack_message(req(pb::AckMessageRequest {
            group: res("g"),
            topic: res("orders"),
            entries: vec![pb::AckMessageEntry {
                message_id: "n1".into(),
                receipt_handle: receipt(&got[0]),
                lite_topic: None,
            }],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::InvalidReceiptHandle);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deletion_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_with(dir.path(), quick_redelivery).await;
    let (status, _) = b
        .http("POST", "/v1/topics/gone", Some(json!({"queues": 1})))
        .await;
    assert_eq!(status, 201);
    send_ok(&mut b.c, msg("gone", "g1", pb::MessageType::Normal)).await;
    send_ok(&mut b.c, msg("again", "a1", pb::MessageType::Normal)).await;
    send_ok(&mut b.c, msg("kept", "k1", pb::MessageType::Normal)).await;
    for t in ["gone", "again"] {
        let (status, _) = b.http("DELETE", &format!("/v1/topics/{t}"), None).await;
        assert_eq!(status, 200);
    }
    // Re-created with another shape after its deletion.
    let (status, _) = b
        .http(
            "POST",
            "/v1/topics/again",
            Some(json!({"queues": 3, "message_types": ["FIFO"]})),
        )
        .await;
    assert_eq!(status, 201);
    b.stop().await;

    let mut b = start_with(dir.path(), quick_redelivery).await;
    let (status, _) = b.get("/v1/topics/gone").await;
    assert_eq!(status, 404);
    let (status, body) = b.get("/v1/topics/again").await;
    assert_eq!(status, 200);
    assert_eq!(body["message_types"], json!(["FIFO"]));
    assert_eq!(body["queues"].as_array().unwrap().len(), 3);
    assert!(body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .all(|q| q["max_offset"] == 0));
    let r = send(&mut b.c, vec![msg("again", "a2", pb::MessageType::Normal)]).await;
    assert_eq!(code(&r.status), Code::MessagePropertyConflictWithType);
    let (status, _) = b.get("/v1/topics/kept").await;
    assert_eq!(status, 200);
    let m = lookup(&b, "g1").await;
    assert_eq!(events(&m), ["stored", "topic_deleted"]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_described_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_with(dir.path(), quick_redelivery).await;
    let (status, body) = b.get("/v1/groups/nobody").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("CONSUMER_GROUP_NOT_FOUND"))
    );
    let (status, body) = b.get("/v1/groups/bad%20name").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("ILLEGAL_CONSUMER_GROUP"))
    );
    // A policy alone makes a group known.
    let (status, _) = b
        .http(
            "PUT",
            "/v1/groups/pg/policy",
            Some(json!({"fifo": true, "max_delivery_attempts": 3})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = b.get("/v1/groups/pg").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &body["own_policy"],
            &body["fifo"],
            &body["queues"],
            &body["dead_letters"]
        ),
        (&json!(true), &json!(true), &json!([]), &json!(0))
    );
    assert_eq!(body["policy"]["max_delivery_attempts"], 3);
    assert!(body["policy"]["backoff_ms"].is_array());

    for i in 0..3 {
        send_ok(
            &mut b.c,
            msg("gt", &format!("m{i}"), pb::MessageType::Normal),
        )
        .await;
    }
    let got = receive(&mut b.c, "g", "gt", 30_000, 1_000).await;
    assert_eq!(got.len(), 3);
    ack(&mut b.c, "g", "gt", &receipt(&got[0])).await;
    let (status, body) = b.get("/v1/groups/g").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["group"], "g");
    assert_eq!(body["own_policy"], false);
    assert_eq!(body["fifo"], false);
    assert_eq!(body["policy"]["max_delivery_attempts"], 17);
    let queues = body["queues"].as_array().unwrap();
    assert!(queues.iter().all(|q| q["topic"] == "gt"));
    let sum = |f: &str| queues.iter().map(|q| q[f].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("inflight"), sum("max_offset"), sum("lag")), (2, 3, 2));
    for q in queues {
        let mut keys: Vec<&str> = q.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "consumed_offset",
                "inflight",
                "lag",
                "max_offset",
                "queue_id",
                "topic"
            ]
        );
    }

    let (_, body) = b.get("/v1/groups").await;
    let rows = body["groups"].as_array().unwrap();
    assert!(rows
        .iter()
        .filter(|r| r["group"] == "g")
        .all(|r| r["fifo"] == false && r["max_delivery_attempts"] == 17 && r["lag"].is_u64()));
    let summary = body["summary"].as_array().unwrap();
    let names: Vec<&str> = summary
        .iter()
        .map(|s| s["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["g", "pg"]);
    assert_eq!(
        summary[0],
        json!({"group": "g", "own_policy": false, "fifo": false, "max_delivery_attempts": 17,
               "queues": queues.len(), "lag": 2, "inflight": 2, "dead_letters": 0})
    );
    assert_eq!(summary[1]["fifo"], true);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_tell_each_message_lifecycle() {
    use pb::TransactionResolution as R;
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_with(dir.path(), quick_redelivery).await;

    // Delivered twice (the first delivery expires), renewed, then acked.
    let sent = send_ok(&mut b.c, msg("lc", "twice", pb::MessageType::Normal)).await;
    let first = receive(&mut b.c, "g", "lc", 200, 1_000).await;
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = receive(&mut b.c, "g", "lc", 200, 1_000).await;
    assert_eq!(
        second[0]
            .system_properties
            .as_ref()
            .unwrap()
            .delivery_attempt,
        Some(2)
    );
    let m = lookup(&b, "twice").await;
    assert_eq!(events(&m), ["stored", "delivered", "delivered"]);
    for e in &m["lifecycle"]["events"].as_array().unwrap()[1..] {
        assert_eq!(
            e["client"],
            json!("test-client"),
            "the consumer client: {e}"
        );
    }
    let g = &m["lifecycle"]["groups"][0];
    assert_eq!(
        (&g["group"], &g["state"], &g["attempt"]),
        (&json!("g"), &json!("in_flight"), &json!(2))
    );
    assert!(g["visible_at_ms"].is_i64());
    let renewed =
        b.c.change_invisible_duration(req(pb::ChangeInvisibleDurationRequest {
            group: res("g"),
            topic: res("lc"),
            receipt_handle: receipt(&second[0]),
            invisible_duration: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            message_id: "twice".into(),
            lite_topic: None,
            suspend: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&renewed.status), Code::Ok);
    ack(&mut b.c, "g", "lc", &renewed.receipt_handle).await;
    let m = lookup(&b, "twice").await;
    assert_eq!(
        events(&m),
        ["stored", "delivered", "delivered", "renewed", "acked"]
    );
    let ev = m["lifecycle"]["events"].as_array().unwrap();
    assert_eq!(
        (&ev[1]["group"], &ev[1]["attempt"]),
        (&json!("g"), &json!(1))
    );
    assert_eq!(ev[2]["attempt"], 2);
    assert_eq!(ev[4]["group"], "g");
    assert!(ev
        .iter()
        .all(|e| e["at_ms"].is_i64() && e["log_offset"].is_u64()));
    assert_eq!(
        m["lifecycle"]["groups"],
        json!([{"group": "g", "state": "acked", "attempt": null, "visible_at_ms": null,
                "attempts": null, "dlq_offset": null}])
    );
    assert_eq!(m["lifecycle"]["complete"], true);
    assert!(m["lifecycle"]["scanned_to"].as_u64().unwrap() > m["log_offset"].as_u64().unwrap());
    assert_eq!(m["lifecycle"]["transaction"], Value::Null);
    assert_eq!(m["lifecycle"]["timer"], Value::Null);
    assert_eq!(m["lifecycle"]["events_omitted"], 0);
    // The message's own facts.
    assert_eq!(m["message_id"], "twice");
    assert_eq!(m["topic"], "lc");
    assert_eq!(m["type"], "NORMAL");
    assert_eq!(m["tag"], "tagA");
    assert_eq!(m["keys"], json!(["key-twice", "shared"]));
    assert_eq!(m["message_group"], Value::Null);
    assert_eq!(m["properties"], json!({"color": "red"}));
    assert_eq!(m["born_host"], "test-host");
    assert!(m["born_timestamp_ms"].is_i64() && m["stored_ms"].is_i64());
    assert_eq!(m["delivery_timestamp_ms"], Value::Null);
    assert_eq!(m["body_size"], 13);
    assert_eq!(m["body_preview"], "body of twice");
    assert_eq!(m["queue_offset"].as_i64(), Some(sent.offset));
    assert!(m["queue_id"].is_u64());

    // Dead-lettered after its one attempt, listed with its facts, re-driven.
    let (status, _) = b
        .http(
            "PUT",
            "/v1/groups/dg/policy",
            Some(json!({"max_delivery_attempts": 1})),
        )
        .await;
    assert_eq!(status, 200);
    let mut binary = msg("dl", "poison", pb::MessageType::Normal);
    binary.body = Bytes::from_static(&[0xff, 0xfe, 0x00, 0x01]);
    send_ok(&mut b.c, binary).await;
    send_ok(&mut b.c, msg("dl", "poison2", pb::MessageType::Normal)).await;
    assert_eq!(receive(&mut b.c, "dg", "dl", 200, 1_000).await.len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receive(&mut b.c, "dg", "dl", 200, 300).await.is_empty());
    let m = lookup(&b, "poison").await;
    assert_eq!(m["body_preview"], "base64://4AAQ==");
    assert_eq!(events(&m), ["stored", "delivered", "dead_lettered"]);
    let ev = &m["lifecycle"]["events"][2];
    assert_eq!((&ev["group"], &ev["attempts"]), (&json!("dg"), &json!(1)));
    let dlq_offset = ev["dlq_offset"].as_u64().unwrap();
    let g = &m["lifecycle"]["groups"][0];
    assert_eq!(
        (&g["state"], &g["attempts"], &g["dlq_offset"]),
        (&json!("dead_lettered"), &json!(1), &json!(dlq_offset))
    );
    let (status, page) = b.get("/v1/groups/dg/dead-letters?limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        (&page["group"], &page["topic"]),
        (&json!("dg"), &json!("%DLQ%dg"))
    );
    let first = &page["dead_letters"][0];
    assert_eq!(first["dlq_queue_offset"], 0);
    assert_eq!(first["topic"], "dl");
    assert_eq!(first["attempts"], 1);
    assert!(first["message_id"].is_string());
    assert_eq!(first["tag"], "tagA");
    assert_eq!(first["keys"].as_array().unwrap().len(), 2);
    assert!(first["stored_ms"].is_i64() && first["log_offset"].is_u64());
    assert_eq!(first["error"], Value::Null);
    assert_eq!(page["next_from"], 1);
    let (_, page) = b.get("/v1/groups/dg/dead-letters?from=1&limit=1").await;
    assert_eq!(page["dead_letters"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_from"], Value::Null);
    let mut ids: Vec<String> = Vec::new();
    for p in [0, 1] {
        let (_, page) = b
            .get(&format!("/v1/groups/dg/dead-letters?from={p}&limit=1"))
            .await;
        ids.push(
            page["dead_letters"][0]["message_id"]
                .as_str()
                .unwrap()
                .into(),
        );
    }
    ids.sort();
    assert_eq!(ids, ["poison", "poison2"]);
    let (_, body) = b.get("/v1/groups/dg").await;
    assert_eq!(body["dead_letters"], 2);
    let (status, _) = b.redrive("dg", dlq_offset).await;
    assert_eq!(status, 200);
    let m = lookup(&b, "poison").await;
    assert_eq!(
        events(&m),
        ["stored", "delivered", "dead_lettered", "redriven"]
    );
    assert_eq!(m["lifecycle"]["groups"][0]["state"], "pending");
    // Dead-lettered again: only its newest letter may be re-driven now.
    assert_eq!(receive(&mut b.c, "dg", "dl", 200, 1_000).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receive(&mut b.c, "dg", "dl", 200, 300).await.is_empty());
    let m = lookup(&b, "poison").await;
    let newest = m["lifecycle"]["groups"][0]["dlq_offset"].as_u64().unwrap();
    assert!(newest > dlq_offset, "a new letter: {m}");
    let (status, body) = b.redrive("dg", dlq_offset).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "PRECONDITION_FAILED");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&newest.to_string()),
        "names the newest letter: {body}"
    );

    // A committed and a rolled-back transactional message.
    let tx_ok = send_ok(
        &mut b.c,
        msg("tx", "committed", pb::MessageType::Transaction),
    )
    .await;
    let tx_no = send_ok(&mut b.c, msg("tx", "rolled", pb::MessageType::Transaction)).await;
    let m = lookup(&b, "committed").await;
    assert_eq!(events(&m), ["half_stored"]);
    assert_eq!(m["queue_id"], Value::Null);
    let t = &m["lifecycle"]["transaction"];
    assert_eq!((&t["state"], &t["checks"]), (&json!("pending"), &json!(0)));
    assert_eq!(t["transaction_id"], tx_ok.transaction_id.as_str());
    assert!(t["next_check_ms"].is_i64());
    end_tx(
        &mut b.c,
        "tx",
        "committed",
        &tx_ok.transaction_id,
        R::Commit,
    )
    .await;
    end_tx(&mut b.c, "tx", "rolled", &tx_no.transaction_id, R::Rollback).await;
    let m = lookup(&b, "committed").await;
    assert_eq!(events(&m), ["half_stored", "committed"]);
    assert_eq!(m["type"], "TRANSACTION");
    let t = &m["lifecycle"]["transaction"];
    assert_eq!(
        (&t["state"], &t["source"]),
        (&json!("committed"), &json!("client"))
    );
    assert!(t["at_ms"].is_i64());
    assert_eq!(m["queue_offset"], 0);
    assert_eq!(m["lifecycle"]["events"][1]["queue_offset"], 0);
    let m = lookup(&b, "rolled").await;
    assert_eq!(events(&m), ["half_stored", "rolled_back"]);
    let t = &m["lifecycle"]["transaction"];
    assert_eq!(t["state"], "rolled_back");
    assert!(t["reason"].as_str().unwrap().contains("rolled back"), "{t}");
    assert_eq!(
        (&m["queue_id"], &m["lifecycle"]["groups"]),
        (&Value::Null, &json!([]))
    );

    // A delayed message: waiting, then fired and delivered.
    let due = now_ms() + 400;
    let mut later = msg("delay", "later", pb::MessageType::Delay);
    deliver_at(&mut later, due);
    send_ok(&mut b.c, later).await;
    let m = lookup(&b, "later").await;
    assert_eq!(events(&m), ["stored", "timer_scheduled"]);
    assert_eq!(
        m["lifecycle"]["timer"],
        json!({"state": "waiting", "due_ms": due})
    );
    assert_eq!(m["queue_offset"], Value::Null);
    assert_eq!(m["delivery_timestamp_ms"], due);
    assert_eq!(
        receive(&mut b.c, "g", "delay", 30_000, 3_000).await.len(),
        1
    );
    let m = lookup(&b, "later").await;
    assert_eq!(
        events(&m),
        ["stored", "timer_scheduled", "fired", "delivered"]
    );
    assert_eq!(m["lifecycle"]["timer"]["state"], "fired");
    assert_eq!(m["queue_offset"], 0);
    assert_eq!(m["lifecycle"]["groups"][0]["state"], "in_flight");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_by_key_and_repeated_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_with(dir.path(), quick_redelivery).await;
    // The same id stored twice (a producer's retry): both listed.
    send_ok(&mut b.c, msg("k1", "dup", pb::MessageType::Normal)).await;
    send_ok(&mut b.c, msg("k1", "dup", pb::MessageType::Normal)).await;
    send_ok(&mut b.c, msg("k2", "other", pb::MessageType::Normal)).await;
    let (status, body) = b.get("/v1/messages/dup").await;
    assert_eq!(status, 200);
    let list = body["messages"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0]["log_offset"].as_u64() < list[1]["log_offset"].as_u64());

    let (status, body) = b.get("/v1/messages?key=shared").await;
    assert_eq!(status, 200);
    assert_eq!(body["messages"].as_array().unwrap().len(), 3);
    assert_eq!(body["truncated"], false);
    let (_, body) = b.get("/v1/messages?key=shared&topic=k2").await;
    let list = body["messages"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["message_id"], "other");
    let (_, body) = b.get("/v1/messages?key=shared&limit=2").await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 2);
    assert_eq!(body["truncated"], true);
    let (_, body) = b.get("/v1/messages?key=key-other").await;
    assert_eq!(body["messages"][0]["message_id"], "other");
    let (status, body) = b.get("/v1/messages?key=nothing-has-this").await;
    assert_eq!(
        (status, body),
        (200, json!({"messages": [], "truncated": false}))
    );
    let (status, body) = b.get("/v1/messages").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("BAD_REQUEST")));
    let (status, _) = b.get("/v1/messages?key=shared&colour=red").await;
    assert_eq!(status, 400);
    let (status, _) = b.get("/v1/messages?key=shared&limit=many").await;
    assert_eq!(status, 400);
    b.stop().await;
}
