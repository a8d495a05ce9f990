//! The gRPC service over a real socket: every refusal carries its RocketMQ
//! status code and a message, and nothing refused is stored.

mod common;

use std::time::Duration;

use common::{code, deliver_at, free_port, msg, now_ms, receive_frames, receive_request, req, res};
use ferry_proto::v2 as pb;
use ferry_proto::v2::messaging_service_client::MessagingServiceClient;
use pb::Code;
use tonic::transport::Channel;
use tonic::Request;

async fn start(dir: &std::path::Path) -> MessagingServiceClient<Channel> {
    start_with(dir, |_| {}).await
}

async fn start_with(
    dir: &std::path::Path,
    tune: impl FnOnce(&mut ferry_server::ServerConfig),
) -> MessagingServiceClient<Channel> {
    MessagingServiceClient::new(start_channel(dir, tune).await)
}

/// Starts a broker in this process and connects to its gRPC port.
async fn start_channel(
    dir: &std::path::Path,
    tune: impl FnOnce(&mut ferry_server::ServerConfig),
) -> Channel {
    let port = free_port();
    let mut config = ferry_server::ServerConfig {
        data_dir: dir.to_path_buf(),
        grpc_listen: format!("127.0.0.1:{port}"),
        http_listen: format!("127.0.0.1:{}", free_port()),
        max_request_bytes: 64 << 10,
        ..Default::default()
    };
    config.core.limits.max_body_bytes = 4096;
    config.core.limits.max_batch_messages = 3;
    tune(&mut config);
    tokio::spawn(ferry_server::run(config, std::future::pending()));
    let endpoint = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    for _ in 0..200 {
        if let Ok(c) = endpoint.connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server did not start");
}

/// Opens a Telemetry stream that sends `settings` and then stays open.
async fn telemetry(
    c: &mut MessagingServiceClient<Channel>,
    settings: pb::Settings,
) -> tonic::Streaming<pb::TelemetryCommand> {
    use tokio_stream::StreamExt;
    let outbound = tokio_stream::iter(vec![pb::TelemetryCommand {
        status: None,
        command: Some(pb::telemetry_command::Command::Settings(settings)),
    }])
    .chain(tokio_stream::pending());
    c.telemetry(req(outbound)).await.unwrap().into_inner()
}

async fn receive_with(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    filter: Option<pb::FilterExpression>,
    attempt_id: Option<&str>,
    poll_ms: u64,
) -> Vec<pb::receive_message_response::Content> {
    let r = receive_request_g(topic, filter, attempt_id, poll_ms);
    receive_frames(c, req(r)).await
}

/// A receive of up to 16 messages of `topic` for group `g`, invisible 30 s.
fn receive_request_g(
    topic: &str,
    filter: Option<pb::FilterExpression>,
    attempt_id: Option<&str>,
    poll_ms: u64,
) -> pb::ReceiveMessageRequest {
    let long_poll = Duration::from_millis(poll_ms);
    pb::ReceiveMessageRequest {
        filter_expression: filter,
        attempt_id: attempt_id.map(String::from),
        ..receive_request("g", topic, 16, Duration::from_secs(30), long_poll)
    }
}

async fn receive_all(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    poll_ms: u64,
) -> Vec<pb::receive_message_response::Content> {
    receive_with(c, topic, None, None, poll_ms).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_precise_codes_and_store_nothing() {
    use pb::receive_message_response::Content;
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path()).await;

    // Metadata: the client id is required.
    let r = c
        .send_message(Request::new(pb::SendMessageRequest {
            messages: vec![msg("t", "m0", b"x")],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::ClientIdRequired);
    // ... and bounded, since each delivery records it.
    let mut long = Request::new(pb::SendMessageRequest {
        messages: vec![msg("t", "m0", b"x")],
    });
    long.metadata_mut()
        .insert("x-mq-client-id", "c".repeat(257).parse().unwrap());
    let r = c.send_message(long).await.unwrap().into_inner();
    assert_eq!(code(&r.status), Code::BadRequest);
    assert!(r.status.unwrap().message.contains("257 bytes"));

    // A batch with one bad entry is refused whole, each entry saying why.
    let r = c
        .send_message(req(pb::SendMessageRequest {
            messages: vec![msg("t", "m1", b"fine"), msg("t", "m2", b"")],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::MultipleResults);
    assert_eq!(code(&r.entries[0].status), Code::BadRequest);
    assert!(r.entries[0]
        .status
        .as_ref()
        .unwrap()
        .message
        .contains("entry 1"));
    assert_eq!(code(&r.entries[1].status), Code::MessageBodyEmpty);

    let cases: Vec<(pb::Message, Code)> = vec![
        (msg("t", "m3", &[0u8; 5000]), Code::MessageBodyTooLarge),
        (msg("bad topic", "m4", b"x"), Code::IllegalTopic),
        (msg("t", "", b"x"), Code::IllegalMessageId),
        (
            {
                let mut m = msg("t", "m5", b"x");
                m.system_properties.as_mut().unwrap().tag = Some("a|b".into());
                m
            },
            Code::IllegalMessageTag,
        ),
        (
            {
                let mut m = msg("t", "m6", b"x");
                m.system_properties.as_mut().unwrap().message_group = Some("g".into());
                m
            },
            Code::MessagePropertyConflictWithType,
        ),
        (
            {
                let mut m = msg("t", "m7", b"x");
                deliver_at(&mut m, 4_000_000_000_000);
                m
            },
            Code::IllegalDeliveryTime,
        ),
    ];
    for (m, want) in cases {
        let r = c
            .send_message(req(pb::SendMessageRequest { messages: vec![m] }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&r.status), want);
        assert!(!r.status.unwrap().message.is_empty());
    }

    // More messages in one batch than allowed, and an empty batch.
    let four = (0..4).map(|i| msg("t", &format!("b{i}"), b"x")).collect();
    let r = c
        .send_message(req(pb::SendMessageRequest { messages: four }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::BadRequest);
    assert!(r.status.unwrap().message.contains("1 to 3 messages"));
    let r = c
        .send_message(req(pb::SendMessageRequest { messages: vec![] }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::BadRequest);

    // A frame over the request limit is refused by the transport.
    let err = c
        .send_message(req(pb::SendMessageRequest {
            messages: vec![msg("t", "big", &vec![0u8; 100 << 10])],
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );

    // Nothing of the above was stored: an empty receive, in the documented shape.
    let frames = receive_all(&mut c, "t", 200).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(matches!(&frames[0], Content::Status(s) if s.code == Code::MessageNotFound as i32));
    assert!(matches!(&frames[1], Content::DeliveryTimestamp(_)));

    // A good send, then receive: status, message, trailing timestamp.
    let r = c
        .send_message(req(pb::SendMessageRequest {
            messages: vec![msg("t", "ok1", b"hello"), msg("t", "ok2", b"world")],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok);
    let frames = receive_all(&mut c, "t", 1000).await;
    assert!(matches!(&frames[0], Content::Status(s) if s.code == Code::Ok as i32));
    assert!(matches!(
        frames.last().unwrap(),
        Content::DeliveryTimestamp(_)
    ));
    let messages: Vec<&pb::Message> = frames
        .iter()
        .filter_map(|f| match f {
            Content::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(messages.len(), 2);
    let sp = messages[0].system_properties.as_ref().unwrap();
    // A client that does not ask for CRC32 gets MD5, as every official
    // client checks it.
    let digest = sp.body_digest.as_ref().unwrap();
    assert_eq!(digest.r#type, pb::DigestType::Md5 as i32);
    assert_eq!(digest.checksum, "5D41402ABC4B2A76B9719D911017C592");
    assert_eq!(sp.delivery_attempt, Some(1));

    // Ack with a forged handle.
    let r = c
        .ack_message(req(pb::AckMessageRequest {
            group: res("g"),
            topic: res("t"),
            entries: vec![pb::AckMessageEntry {
                message_id: "ok1".into(),
                receipt_handle: "F1.0.0.1.deadbeef".into(),
                lite_topic: None,
            }],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::InvalidReceiptHandle);

    // Long polling beyond the maximum.
    // No invisible duration: the polling time alone is refused.
    let r = pb::ReceiveMessageRequest {
        invisible_duration: None,
        ..receive_request("g", "t", 1, Duration::ZERO, Duration::from_secs(3600))
    };
    let mut s = c.receive_message(req(r)).await.unwrap().into_inner();
    let first = s.message().await.unwrap().unwrap().content.unwrap();
    assert!(matches!(first, Content::Status(s) if s.code == Code::IllegalPollingTime as i32));

    // Heartbeat before settings; unimplemented RPCs answer at once.
    let r = c
        .heartbeat(req(pb::HeartbeatRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::UnrecognizedClientType);
    let err = c
        .get_offset(req(pb::GetOffsetRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    let r = c
        .end_transaction(req(pb::EndTransactionRequest {
            resolution: pb::TransactionResolution::Commit as i32,
            transaction_id: "nope".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::InvalidTransactionId);
    let r = c
        .end_transaction(req(pb::EndTransactionRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::BadRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_settings_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path()).await;
    let settings = pb::Settings {
        client_type: Some(pb::ClientType::SimpleConsumer as i32),
        pub_sub: Some(pb::settings::PubSub::Subscription(pb::Subscription {
            group: res("g"),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut inbound = telemetry(&mut c, settings).await;
    let reply = inbound.message().await.unwrap().unwrap();
    assert_eq!(code(&reply.status), Code::Ok);
    let Some(pb::telemetry_command::Command::Settings(s)) = reply.command else {
        panic!("expected settings")
    };
    let backoff = s.backoff_policy.unwrap();
    assert_eq!(backoff.max_attempts, 17);
    assert!(
        matches!(backoff.strategy, Some(pb::retry_policy::Strategy::CustomizedBackoff(ref b)) if b.next.len() == 18)
    );
    let Some(pb::settings::PubSub::Subscription(sub)) = s.pub_sub else {
        panic!("expected subscription")
    };
    assert_eq!(sub.receive_batch_size, Some(32));
    assert_eq!(sub.fifo, Some(false));
    // Now the heartbeat is recognised.
    let r = c
        .heartbeat(req(pb::HeartbeatRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok);

    // Settings without publishing or subscription fail the stream.
    let mut inbound = telemetry(&mut c, pb::Settings::default()).await;
    let err = inbound.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

async fn end(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    id: &str,
    tx: &str,
    resolution: pb::TransactionResolution,
    source: pb::TransactionSource,
) -> pb::EndTransactionResponse {
    c.end_transaction(req(pb::EndTransactionRequest {
        topic: res(topic),
        message_id: id.into(),
        transaction_id: tx.into(),
        resolution: resolution as i32,
        source: source as i32,
        trace_context: String::new(),
    }))
    .await
    .unwrap()
    .into_inner()
}

async fn send_tx(c: &mut MessagingServiceClient<Channel>, topic: &str, id: &str) -> String {
    let mut m = msg(topic, id, b"order paid");
    m.system_properties.as_mut().unwrap().message_type = pb::MessageType::Transaction as i32;
    let r = c
        .send_message(req(pb::SendMessageRequest { messages: vec![m] }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    let tx = r.entries[0].transaction_id.clone();
    assert!(!tx.is_empty(), "a half message gets a transaction id");
    tx
}

fn ids(items: &[pb::receive_message_response::Content]) -> Vec<String> {
    items
        .iter()
        .filter_map(|c| match c {
            pb::receive_message_response::Content::Message(m) => {
                Some(m.system_properties.as_ref().unwrap().message_id.clone())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_end_and_check_back_over_grpc() {
    use pb::{TransactionResolution as R, TransactionSource as S};
    let dir = tempfile::tempdir().unwrap();
    let mut c = start_with(dir.path(), |cfg| {
        cfg.core.transactions.check_after_ms = 300;
        cfg.core.transactions.check_interval_ms = 400;
        cfg.core.transactions.max_checks = 1;
    })
    .await;

    // Commit: invisible before, delivered once after; repeats are harmless.
    let tx = send_tx(&mut c, "tt", "a").await;
    assert!(ids(&receive_all(&mut c, "tt", 100).await).is_empty());
    let r = end(&mut c, "tt", "a", &tx, R::Commit, S::SourceClient).await;
    assert_eq!(code(&r.status), Code::Ok);
    let r = end(&mut c, "tt", "a", &tx, R::Commit, S::SourceClient).await;
    assert_eq!(code(&r.status), Code::Ok);
    let r = end(&mut c, "tt", "a", &tx, R::Rollback, S::SourceClient).await;
    assert_eq!(code(&r.status), Code::PreconditionFailed);
    assert!(r.status.unwrap().message.contains("committed"));
    let r = end(&mut c, "tt", "zzz", &tx, R::Commit, S::SourceClient).await;
    assert_eq!(code(&r.status), Code::InvalidTransactionId);
    assert_eq!(ids(&receive_all(&mut c, "tt", 500).await), ["a"]);

    // Rollback: never delivered.
    let tx = send_tx(&mut c, "tt", "b").await;
    let r = end(&mut c, "tt", "b", &tx, R::Rollback, S::SourceClient).await;
    assert_eq!(code(&r.status), Code::Ok);

    // Check-back: a producer of the topic is asked over its Telemetry
    // stream, and its answer decides.
    let settings = pb::Settings {
        client_type: Some(pb::ClientType::Producer as i32),
        pub_sub: Some(pb::settings::PubSub::Publishing(pb::Publishing {
            topics: vec![res("tt").unwrap()],
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut inbound = telemetry(&mut c, settings).await;
    inbound.message().await.unwrap().unwrap(); // the settings reply
    let tx = send_tx(&mut c, "tt", "c").await;
    let cmd = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("a check-back arrives")
        .unwrap()
        .unwrap();
    let Some(pb::telemetry_command::Command::RecoverOrphanedTransactionCommand(rec)) = cmd.command
    else {
        panic!("expected a check-back, got {cmd:?}")
    };
    assert_eq!(rec.transaction_id, tx);
    let m = rec.message.unwrap();
    assert_eq!(m.system_properties.as_ref().unwrap().message_id, "c");
    assert_eq!(&m.body[..], b"order paid");
    let r = end(&mut c, "tt", "c", &tx, R::Commit, S::SourceServerCheck).await;
    assert_eq!(code(&r.status), Code::Ok);
    assert_eq!(ids(&receive_all(&mut c, "tt", 500).await), ["c"]);

    // Unanswered: after its one check the half message is discarded, and a
    // late commit is refused.
    let tx = send_tx(&mut c, "tt", "d").await;
    let cmd = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        cmd.command,
        Some(pb::telemetry_command::Command::RecoverOrphanedTransactionCommand(_))
    ));
    tokio::time::sleep(Duration::from_millis(900)).await;
    let r = end(&mut c, "tt", "d", &tx, R::Commit, S::SourceServerCheck).await;
    assert_eq!(code(&r.status), Code::PreconditionFailed);
    assert!(r.status.unwrap().message.contains("discarded"));
    assert!(ids(&receive_all(&mut c, "tt", 200).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_are_never_early() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path()).await;
    let due = now_ms() + 800;
    let mut m = msg("dt", "later", b"x");
    deliver_at(&mut m, due);
    let mut recalled = m.clone();
    recalled.system_properties.as_mut().unwrap().message_id = "recalled".into();
    let r = c
        .send_message(req(pb::SendMessageRequest {
            messages: vec![m, recalled],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok);
    let handle = r.entries[1].recall_handle.clone();
    assert!(!handle.is_empty(), "a delayed message gets a recall handle");
    let r = c
        .recall_message(req(pb::RecallMessageRequest {
            topic: res("dt"),
            recall_handle: handle.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (code(&r.status), r.message_id.as_str()),
        (Code::Ok, "recalled")
    );
    let r = c
        .recall_message(req(pb::RecallMessageRequest {
            topic: res("dt"),
            recall_handle: handle,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::NotFound);
    assert!(ids(&receive_all(&mut c, "dt", 300).await).is_empty());
    // A long poll started before the time is woken when it comes.
    assert_eq!(ids(&receive_all(&mut c, "dt", 3000).await), ["later"]);
    let now = now_ms();
    assert!(now >= due, "delivered {} ms early", due - now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_messages_land_in_the_dead_letter_topic_with_their_identity() {
    use pb::receive_message_response::Content;
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path()).await;
    let r = c
        .send_message(req(pb::SendMessageRequest {
            messages: vec![msg("dl", "poison", b"bad input")],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok);
    let got = receive_all(&mut c, "dl", 500).await;
    let Some(Content::Message(m)) = got.iter().find(|c| matches!(c, Content::Message(_))) else {
        panic!("expected the message, got {got:?}")
    };
    let sp = m.system_properties.as_ref().unwrap();
    let r = c
        .forward_message_to_dead_letter_queue(req(pb::ForwardMessageToDeadLetterQueueRequest {
            group: res("g"),
            topic: res("dl"),
            receipt_handle: sp.receipt_handle.clone().unwrap(),
            message_id: sp.message_id.clone(),
            delivery_attempt: 1,
            max_delivery_attempts: 17,
            lite_topic: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok);
    let got = receive_all(&mut c, "%DLQ%g", 500).await;
    let Some(Content::Message(m)) = got.iter().find(|c| matches!(c, Content::Message(_))) else {
        panic!("expected the dead letter, got {got:?}")
    };
    let sp = m.system_properties.as_ref().unwrap();
    assert_eq!(&m.body[..], b"bad input");
    assert_eq!(sp.message_id, "poison");
    let dlq = sp
        .dead_letter_queue
        .as_ref()
        .expect("dead_letter_queue property");
    assert_eq!(
        (dlq.topic.as_str(), dlq.message_id.as_str()),
        ("dl", "poison")
    );
    assert!(ids(&receive_all(&mut c, "dl", 200).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_on_open_telemetry_streams() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = ferry_server::ServerConfig {
        data_dir: dir.path().to_path_buf(),
        grpc_listen: format!("127.0.0.1:{port}"),
        http_listen: format!("127.0.0.1:{}", free_port()),
        ..Default::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ferry_server::run(config, async {
        let _ = stop_rx.await;
    }));
    let endpoint = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let mut c = loop {
        if let Ok(ch) = endpoint.connect().await {
            break MessagingServiceClient::new(ch);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let settings = pb::Settings {
        client_type: Some(pb::ClientType::Producer as i32),
        pub_sub: Some(pb::settings::PubSub::Publishing(pb::Publishing::default())),
        ..Default::default()
    };
    let mut inbound = telemetry(&mut c, settings).await;
    inbound.message().await.unwrap().unwrap();
    stop_tx.send(()).unwrap();
    // Well inside the 5 s grace for open requests: the stream is ended,
    // not waited out.
    let stopped = tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("the broker stops although a Telemetry stream is open");
    assert!(stopped.unwrap().is_ok(), "clean stop");
    // The stream was ended by the broker, not left hanging.
    assert!(matches!(inbound.message().await, Ok(None) | Err(_)));
}

fn receipts(items: &[pb::receive_message_response::Content]) -> Vec<String> {
    items
        .iter()
        .filter_map(|c| match c {
            pb::receive_message_response::Content::Message(m) => {
                m.system_properties.as_ref().unwrap().receipt_handle.clone()
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_filters_and_receive_attempt_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path()).await;
    for i in 1..=3 {
        let mut m = msg("f", &format!("m{i}"), b"x");
        m.user_properties.insert("n".into(), i.to_string());
        let r = c
            .send_message(req(pb::SendMessageRequest { messages: vec![m] }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&r.status), Code::Ok);
    }
    let sql = |e: &str| {
        Some(pb::FilterExpression {
            r#type: pb::FilterType::Sql as i32,
            expression: e.into(),
        })
    };
    let got = receive_with(&mut c, "f", sql("n > 1 AND n IS NOT NULL"), None, 300).await;
    let mut got = ids(&got);
    got.sort();
    assert_eq!(got, ["m2", "m3"]);
    let bad = receive_with(&mut c, "f", sql("n > 'x"), None, 300).await;
    let Some(pb::receive_message_response::Content::Status(s)) = bad.first() else {
        panic!("expected a status")
    };
    assert_eq!(s.code, Code::IllegalFilterExpression as i32);
    assert!(s.message.contains("position 5"), "{}", s.message);

    // A receive retried with the same attempt id gets the same messages
    // under the same receipts; a new attempt id gets nothing more.
    let first = receive_with(&mut c, "f2", None, Some("attempt-1"), 300).await;
    assert!(ids(&first).is_empty());
    for i in 1..=2 {
        let m = msg("f2", &format!("r{i}"), b"x");
        c.send_message(req(pb::SendMessageRequest { messages: vec![m] }))
            .await
            .unwrap();
    }
    let first = receive_with(&mut c, "f2", None, Some("attempt-2"), 300).await;
    assert_eq!(ids(&first).len(), 2);
    let again = receive_with(&mut c, "f2", None, Some("attempt-2"), 300).await;
    assert_eq!(ids(&again), ids(&first));
    assert_eq!(receipts(&again), receipts(&first));
    let other = receive_with(&mut c, "f2", None, Some("attempt-3"), 300).await;
    assert!(ids(&other).is_empty());
    let long = "x".repeat(129);
    let refused = receive_with(&mut c, "f2", None, Some(&long), 300).await;
    assert!(matches!(refused.first(),
        Some(pb::receive_message_response::Content::Status(s)) if s.code == Code::BadRequest as i32));
}

/// Ferry's EndTransactions: each entry decided on its own and in order, one
/// status per entry, the same outcomes as one EndTransaction each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_transactions_decides_each_entry_in_order() {
    use ferry_proto::ext;
    use ferry_proto::ext::extensions_client::ExtensionsClient;
    use pb::{TransactionResolution as R, TransactionSource as S};
    let dir = tempfile::tempdir().unwrap();
    let channel = start_channel(dir.path(), |_| {}).await;
    let mut c = MessagingServiceClient::new(channel.clone());
    let mut x = ExtensionsClient::new(channel);
    let entry = |id: &str, tx: &str, r: R, s: S| pb::EndTransactionRequest {
        topic: res("et"),
        message_id: id.into(),
        transaction_id: tx.into(),
        resolution: r as i32,
        source: s as i32,
        trace_context: String::new(),
    };
    let a = send_tx(&mut c, "et", "a").await;
    let b = send_tx(&mut c, "et", "b").await;
    let later = send_tx(&mut c, "et", "later").await;
    let r = x
        .end_transactions(req(ext::EndTransactionsRequest {
            entries: vec![
                entry("a", &a, R::Commit, S::SourceClient),
                entry("b", &b, R::Rollback, S::SourceClient),
                // A repeat within the call sees the first entry's outcome.
                entry("a", &a, R::Commit, S::SourceClient),
                entry("a", &a, R::Rollback, S::SourceClient),
                entry("a", "not-a-transaction", R::Commit, S::SourceClient),
                // A checker that does not know yet: nothing changes.
                entry("later", &later, R::Unspecified, S::SourceServerCheck),
                entry("a", &a, R::Unspecified, S::SourceClient),
            ],
        }))
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<Code> = r.entries.iter().map(|e| code(&e.status)).collect();
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::PreconditionFailed,
            Code::InvalidTransactionId,
            Code::Ok,
            Code::BadRequest,
        ]
    );
    assert_eq!(code(&r.status), Code::MultipleResults);
    assert!(r.entries[2]
        .status
        .as_ref()
        .unwrap()
        .message
        .contains("already ended"));
    assert_eq!(ids(&receive_all(&mut c, "et", 500).await), ["a"]);

    // The one left open ends later, alone.
    let r = x
        .end_transactions(req(ext::EndTransactionsRequest {
            entries: vec![entry("later", &later, R::Commit, S::SourceClient)],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok);
    assert_eq!(ids(&receive_all(&mut c, "et", 500).await), ["later"]);

    // Bounds and identity are checked before anything is decided.
    let r = x
        .end_transactions(req(ext::EndTransactionsRequest { entries: vec![] }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::BadRequest);
    let too_many = vec![entry("a", &a, R::Commit, S::SourceClient); 1025];
    let r = x
        .end_transactions(req(ext::EndTransactionsRequest { entries: too_many }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::BadRequest);
    assert!(r.status.unwrap().message.contains("1024"));
    let r = x
        .end_transactions(Request::new(ext::EndTransactionsRequest {
            entries: vec![entry("a", &a, R::Commit, S::SourceClient)],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::ClientIdRequired);

    // A consumer that accepts CRC32 body digests (Ferry's client does) gets
    // them instead of MD5.
    c.send_message(req(pb::SendMessageRequest {
        messages: vec![msg("digest", "d1", b"hello")],
    }))
    .await
    .unwrap();
    let mut r = req(receive_request_g("digest", None, None, 1000));
    r.metadata_mut().insert(
        ferry_proto::ext::ACCEPT_DIGEST_HEADER,
        "CRC32".parse().unwrap(),
    );
    let digests: Vec<pb::Digest> = receive_frames(&mut c, r)
        .await
        .into_iter()
        .filter_map(|f| match f {
            pb::receive_message_response::Content::Message(m) => {
                m.system_properties.unwrap().body_digest
            }
            _ => None,
        })
        .collect();
    assert_eq!(digests.len(), 1);
    assert_eq!(digests[0].r#type, pb::DigestType::Crc32 as i32);
    assert_eq!(digests[0].checksum, "3610A686");

    // Turned off, the broker answers as one without the extension would.
    let dir = tempfile::tempdir().unwrap();
    let channel = start_channel(dir.path(), |cfg| cfg.extensions = false).await;
    let err = ExtensionsClient::new(channel)
        .end_transactions(req(ext::EndTransactionsRequest {
            entries: vec![entry("a", &a, R::Commit, S::SourceClient)],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}
