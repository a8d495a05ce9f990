//! The Rust client against a real `ferry serve` child process.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{eventually, Broker};
use ferry_client::{
    CheckWith, ClientError, Code, ConsumeResult, FilterExpression, Message, Producer, PushConsumer,
    ReceivedMessage, SimpleConsumer, TransactionProducer, TransactionResolution,
};
use serde_json::json;

async fn simple(b: &Broker, group: &str, topic: &str, filter: FilterExpression) -> SimpleConsumer {
    SimpleConsumer::builder(b.config(), group)
        .subscribe(topic, filter)
        .await_duration(Duration::from_millis(500))
        .start()
        .await
        .expect("simple consumer starts")
}

/// Receives until `n` messages came or `within` passed; acks each.
async fn drain(c: &SimpleConsumer, n: usize, within: Duration) -> Vec<ReceivedMessage> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        for m in c
            .receive(32, Duration::from_secs(30))
            .await
            .expect("receive")
        {
            c.ack(&m).await.expect("ack");
            got.push(m);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_receive_ack_and_invisibility() {
    let b = Broker::start(&[]);
    let p = Producer::builder(b.config())
        .topics(["orders"])
        .start()
        .await
        .unwrap();
    let one = p
        .send(
            Message::new("orders", "order 1")
                .with_tag("created")
                .with_keys(["order-1", "customer-7"])
                .with_property("region", "eu"),
        )
        .await
        .unwrap();
    assert_eq!(one.message_id.len(), 34);
    let batch: Vec<Message> = (2..=11)
        .map(|i| Message::new("orders", format!("order {i}")))
        .collect();
    let receipts = p.send_batch(batch).await.unwrap();
    assert_eq!(receipts.len(), 10);
    let ids: HashSet<String> = receipts.iter().map(|r| r.message_id.clone()).collect();
    assert_eq!(ids.len(), 10, "ids are distinct");

    let c = simple(&b, "stock", "orders", FilterExpression::all()).await;
    let got = drain(&c, 11, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 11);
    let first = got
        .iter()
        .find(|m| m.message_id == one.message_id)
        .expect("first message");
    assert_eq!(&first.body[..], b"order 1");
    assert_eq!(first.tag.as_deref(), Some("created"));
    assert_eq!(first.keys, ["order-1", "customer-7"]);
    assert_eq!(
        first.properties.get("region").map(String::as_str),
        Some("eu")
    );
    assert_eq!(first.delivery_attempt, 1);
    assert!(
        c.receive(32, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "all acked"
    );

    // A nack (invisible 0) makes it come back at once as attempt 2, and
    // the old receipt handle dies.
    p.send(Message::new("orders", "again")).await.unwrap();
    let mut m = drain_unacked(&c).await;
    let old = m.clone();
    c.change_invisible_duration(&mut m, Duration::ZERO)
        .await
        .unwrap();
    assert_ne!(m.receipt_handle(), old.receipt_handle());
    let e = c.ack(&old).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidReceiptHandle), "{e}");
    let again = drain_unacked(&c).await;
    assert_eq!(again.message_id, m.message_id);
    assert_eq!(again.delivery_attempt, 2);
    c.ack(&again).await.unwrap();
    p.shutdown().await;
    c.shutdown().await;
}

async fn drain_unacked(c: &SimpleConsumer) -> ReceivedMessage {
    for _ in 0..20 {
        if let Some(m) = c.receive(1, Duration::from_secs(30)).await.unwrap().pop() {
            return m;
        }
    }
    panic!("no message arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_their_status_code() {
    let b = Broker::start(&["--max-body-bytes", "1024"]);
    let e = Producer::builder(b.config())
        .topics(["bad topic!"])
        .start()
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code(), Some(Code::IllegalTopic), "{e}");
    assert!(e.to_string().contains("ILLEGAL_TOPIC"), "{e}");

    let p = Producer::builder(b.config())
        .topics(["t"])
        .start()
        .await
        .unwrap();
    // The broker's 1 KiB limit reached the client in the settings.
    let e = p
        .send(Message::new("t", vec![b'x'; 2048]))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("1024"), "{e}");
    let e = p
        .send(
            Message::new("t", "x")
                .with_message_group("g")
                .with_delay(Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Invalid { .. }), "{e}");
    let e = p
        .send(
            Message::new("t", "x")
                .with_delivery_time(SystemTime::now() + Duration::from_secs(3600 * 24 * 400)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::IllegalDeliveryTime), "{e}");

    let c = simple(&b, "g", "t", FilterExpression::sql("a = = 1")).await;
    let e = c.receive(1, Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::IllegalFilterExpression), "{e}");

    // Consumer settings refused before any connection is tried.
    let nowhere = || ferry_client::ClientConfig::new("127.0.0.1:1");
    let refused = |r: Result<PushConsumer, ClientError>| match r {
        Err(e @ ClientError::Invalid { .. }) => e.to_string(),
        Err(e) => panic!("expected a refusal before connecting, got {e}"),
        Ok(_) => panic!("expected a refusal"),
    };
    let handler = |_m: ReceivedMessage| async { ConsumeResult::Success };
    let e = refused(
        PushConsumer::builder(nowhere(), "g")
            .subscribe("t", FilterExpression::all())
            .max_concurrency(0)
            .start(handler)
            .await,
    );
    assert!(e.contains("max_concurrency"), "{e}");
    let e = refused(
        PushConsumer::builder(nowhere(), "g")
            .subscribe("t", FilterExpression::all())
            .invisible_duration(Duration::from_millis(500))
            .start(handler)
            .await,
    );
    assert!(e.contains("invisible duration"), "{e}");
    let e = refused(PushConsumer::builder(nowhere(), "g").start(handler).await);
    assert!(e.contains("subscribe to at least one topic"), "{e}");
    let e = SimpleConsumer::builder(nowhere(), "")
        .subscribe("t", FilterExpression::all())
        .start()
        .await
        .err()
        .expect("an empty group is refused");
    assert!(matches!(e, ClientError::Invalid { .. }), "{e}");
    let e = c.receive(0, Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(e, ClientError::Invalid { .. }), "{e}");

    let unreachable = ferry_client::ClientConfig::new("127.0.0.1:1");
    let e = Producer::builder(unreachable)
        .start()
        .await
        .err()
        .expect("no broker there");
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_wait_and_filters_select() {
    let b = Broker::start(&[]);
    let p = Producer::builder(b.config())
        .topics(["d"])
        .start()
        .await
        .unwrap();
    let due = SystemTime::now() + Duration::from_millis(1500);
    let r = p
        .send(Message::new("d", "later").with_delivery_time(due))
        .await
        .unwrap();
    assert!(
        !r.recall_handle.is_empty(),
        "a delayed message can be recalled"
    );
    p.send(
        Message::new("d", "now")
            .with_tag("a")
            .with_property("n", "1"),
    )
    .await
    .unwrap();
    p.send(
        Message::new("d", "other")
            .with_tag("b")
            .with_property("n", "2"),
    )
    .await
    .unwrap();

    let sql = simple(&b, "sql", "d", FilterExpression::sql("n = '2'")).await;
    let got = drain(&sql, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got.iter().map(|m| &m.body[..]).collect::<Vec<_>>(),
        [b"other"]
    );

    let all = simple(&b, "all", "d", FilterExpression::tag("*")).await;
    let got = drain(&all, 3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3);
    let later = got
        .iter()
        .find(|m| &m.body[..] == b"later")
        .expect("delayed one came");
    assert!(SystemTime::now() >= due, "not before its time");
    assert!(later.delivery_time.is_some());
    // Recalling a delayed message cancels it.
    let r = p
        .send(Message::new("d", "never").with_delay(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(p.recall("d", &r.recall_handle).await.unwrap(), r.message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_keeps_fifo_order_per_message_group() {
    let b = Broker::start(&[]);
    b.admin()
        .put("/v1/groups/fifo-app/policy", json!({"fifo": true}))
        .await
        .unwrap();
    let p = Producer::builder(b.config())
        .topics(["f"])
        .start()
        .await
        .unwrap();
    for i in 0..10 {
        for g in ["a", "b", "c", "slow"] {
            p.send(Message::new("f", format!("{g}:{i}")).with_message_group(g))
                .await
                .unwrap();
        }
    }
    let seen: Arc<Mutex<BTreeMap<String, Vec<u32>>>> = Arc::default();
    let s = seen.clone();
    let c = PushConsumer::builder(b.config(), "fifo-app")
        .subscribe("f", FilterExpression::all())
        .max_concurrency(4)
        .await_duration(Duration::from_millis(500))
        .start(move |m: ReceivedMessage| {
            let s = s.clone();
            async move {
                let text = String::from_utf8_lossy(&m.body).to_string();
                let (g, i) = text.split_once(':').expect("group:index");
                if g == "slow" {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                s.lock()
                    .unwrap()
                    .entry(g.to_string())
                    .or_default()
                    .push(i.parse().unwrap());
                ConsumeResult::Success
            }
        })
        .await
        .unwrap();
    let done = eventually(Duration::from_secs(30), || async {
        let s = seen.lock().unwrap();
        (s.values().map(Vec::len).sum::<usize>() >= 40).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "all 40 consumed: {:?}",
        seen.lock().unwrap()
    );
    assert!(c.is_fifo());
    for (g, order) in seen.lock().unwrap().iter() {
        assert_eq!(
            order,
            &(0..10).collect::<Vec<u32>>(),
            "group {g} in order, once each"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_retries_then_dead_letters_with_bounded_concurrency() {
    let b = Broker::start(&[]);
    b.admin()
        .put(
            "/v1/groups/flaky/policy",
            json!({"max_delivery_attempts": 3, "backoff": "1s"}),
        )
        .await
        .unwrap();
    let p = Producer::builder(b.config())
        .topics(["jobs"])
        .start()
        .await
        .unwrap();
    let poison = p.send(Message::new("jobs", "poison")).await.unwrap();
    for i in 0..12 {
        p.send(Message::new("jobs", format!("job {i}")))
            .await
            .unwrap();
    }
    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let ok = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (a, o, r, pk) = (attempts.clone(), ok.clone(), running.clone(), peak.clone());
    let c = PushConsumer::builder(b.config(), "flaky")
        .subscribe("jobs", FilterExpression::all())
        .max_concurrency(3)
        .await_duration(Duration::from_millis(500))
        .start(move |m: ReceivedMessage| {
            let (a, o, r, pk) = (a.clone(), o.clone(), r.clone(), pk.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                pk.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                if &m.body[..] == b"poison" {
                    a.lock().unwrap().push(m.delivery_attempt);
                    ConsumeResult::Failure
                } else {
                    o.fetch_add(1, Ordering::SeqCst);
                    ConsumeResult::Success
                }
            }
        })
        .await
        .unwrap();
    let dlq = simple(&b, "dlq-reader", "%DLQ%flaky", FilterExpression::all()).await;
    let dead = drain(&dlq, 1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1, "the poison message is dead-lettered");
    assert_eq!(dead[0].message_id, poison.message_id);
    assert_eq!(
        dead[0].dead_letter_of.as_ref().map(|d| d.0.as_str()),
        Some("jobs")
    );
    assert_eq!(
        *attempts.lock().unwrap(),
        [1, 2, 3],
        "three attempts, then the DLQ"
    );
    let all_ok = eventually(Duration::from_secs(10), || async {
        (ok.load(Ordering::SeqCst) == 12).then_some(())
    })
    .await;
    assert!(
        all_ok.is_some(),
        "{} of 12 succeeded",
        ok.load(Ordering::SeqCst)
    );
    assert!(
        peak.load(Ordering::SeqCst) <= 3,
        "at most 3 handlers at once, saw {}",
        peak.load(Ordering::SeqCst)
    );
    assert!(
        peak.load(Ordering::SeqCst) >= 2,
        "handlers did run concurrently"
    );
    c.shutdown().await;
}

/// Answers check-backs from the message key: `commit-*` commits,
/// `rollback-*` rolls back, anything else is not known yet.
fn key_checker(
) -> CheckWith<impl Fn(&ReceivedMessage) -> TransactionResolution + Send + Sync + 'static> {
    CheckWith(
        |m: &ReceivedMessage| match m.keys.first().map(String::as_str) {
            Some(k) if k.starts_with("commit") => TransactionResolution::Commit,
            Some(k) if k.starts_with("rollback") => TransactionResolution::Rollback,
            _ => TransactionResolution::Unknown,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_roll_back_and_answer_check_backs() {
    let b = Broker::start(&[
        "--tx-check-after-ms",
        "300",
        "--tx-check-interval-ms",
        "300",
    ]);
    let p = TransactionProducer::builder(b.config(), key_checker())
        .topics(["tx"])
        .start()
        .await
        .unwrap();
    let mut t = p.begin();
    t.send(Message::new("tx", "committed").with_key("x1"))
        .await
        .unwrap();
    t.commit().await.unwrap();
    let mut t = p.begin();
    t.send(Message::new("tx", "rolled back").with_key("x2"))
        .await
        .unwrap();
    t.rollback().await.unwrap();
    // No outcome sent: the broker asks the checker.
    let mut t = p.begin();
    t.send(Message::new("tx", "checked in").with_key("commit-3"))
        .await
        .unwrap();
    drop(t);
    let mut t = p.begin();
    t.send(Message::new("tx", "checked out").with_key("rollback-4"))
        .await
        .unwrap();
    drop(t);
    // Transaction + FIFO and transaction + delay.
    let mut t = p.begin();
    t.send(Message::new("tx", "fifo half").with_message_group("g1"))
        .await
        .unwrap();
    t.send(Message::new("tx", "delayed half").with_delay(Duration::from_millis(700)))
        .await
        .unwrap();
    assert_eq!(t.transaction_ids().len(), 2);
    t.commit().await.unwrap();
    // One transaction holds at most 64 halves; the 65th is refused before
    // it is sent, and rolling back discards the 64.
    let mut big = p.begin();
    for i in 0..ferry_client::MAX_HALVES_PER_TRANSACTION {
        big.send(Message::new("tx", format!("bulk {i}")).with_key("x-bulk"))
            .await
            .unwrap();
    }
    let e = big
        .send(Message::new("tx", "one too many"))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("64"), "{e}");
    big.rollback().await.unwrap();

    let c = simple(&b, "tx-reader", "tx", FilterExpression::all()).await;
    let got = drain(&c, 4, Duration::from_secs(15)).await;
    let mut bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).to_string())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        ["checked in", "committed", "delayed half", "fifo half"]
    );
    let fifo = got.iter().find(|m| &m.body[..] == b"fifo half").unwrap();
    assert_eq!(fifo.message_group.as_deref(), Some("g1"));
    // Nothing else arrives: the rolled-back ones stay out.
    let more = drain(&c, 1, Duration::from_secs(2)).await;
    assert!(more.is_empty(), "unexpected: {more:?}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_survive_a_broker_kill_and_answer_checks_after_it() {
    let mut b = Broker::start(&[
        "--tx-check-after-ms",
        "500",
        "--tx-check-interval-ms",
        "500",
    ]);
    let p = TransactionProducer::builder(b.config(), key_checker())
        .topics(["k"])
        .start()
        .await
        .unwrap();
    let mut t = p.begin();
    t.send(Message::new("k", "half before the kill").with_key("commit-1"))
        .await
        .unwrap();
    drop(t);
    b.kill9();
    b.restart();
    // The producer reconnects on its own: sends work again and the
    // checker is reached over the reopened Telemetry stream.
    let sent = eventually(Duration::from_secs(15), || async {
        p.send(Message::new("k", "plain after the restart"))
            .await
            .ok()
    })
    .await;
    assert!(sent.is_some(), "send after restart");
    let c = simple(&b, "k-reader", "k", FilterExpression::all()).await;
    let got = drain(&c, 2, Duration::from_secs(20)).await;
    let mut bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).to_string())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["half before the kill", "plain after the restart"]);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_keeps_its_message_invisible() {
    let b = Broker::start(&[]);
    let p = Producer::builder(b.config())
        .topics(["slow"])
        .start()
        .await
        .unwrap();
    p.send(Message::new("slow", "takes a while")).await.unwrap();
    let deliveries = Arc::new(AtomicUsize::new(0));
    let d = deliveries.clone();
    let c = PushConsumer::builder(b.config(), "slow-app")
        .subscribe("slow", FilterExpression::all())
        .invisible_duration(Duration::from_secs(3))
        .await_duration(Duration::from_millis(300))
        .start(move |_m: ReceivedMessage| {
            let d = d.clone();
            async move {
                d.fetch_add(1, Ordering::SeqCst);
                // Over twice the invisible duration: only renewal keeps
                // it from being delivered again meanwhile.
                tokio::time::sleep(Duration::from_secs(7)).await;
                ConsumeResult::Success
            }
        })
        .await
        .unwrap();
    // Wait for the ack (handler done after 7 s), then count deliveries.
    let admin = b.admin();
    let settled = eventually(Duration::from_secs(20), || async {
        let v = admin.get("/v1/groups").await.ok()?;
        let rows: Vec<&serde_json::Value> = v["groups"]
            .as_array()?
            .iter()
            .filter(|g| g["group"] == "slow-app")
            .collect();
        let sum = |k: &str| rows.iter().filter_map(|g| g[k].as_u64()).sum::<u64>();
        (sum("consumed_offset") == 1 && sum("inflight") == 0).then_some(())
    })
    .await;
    assert!(settled.is_some(), "acked at the end");
    assert_eq!(
        deliveries.load(Ordering::SeqCst),
        1,
        "delivered once, renewed while handled"
    );
    c.shutdown().await;
}

/// `ack_all` settles a received batch in one call: nothing comes back
/// after the invisibility expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_all_settles_a_batch_in_one_call() {
    let b = Broker::start(&[]);
    let p = Producer::builder(b.config())
        .topics(["bulk"])
        .start()
        .await
        .unwrap();
    let batch: Vec<Message> = (0..40)
        .map(|i| Message::new("bulk", format!("m{i}")))
        .collect();
    p.send_batch(batch).await.unwrap();
    let c = simple(&b, "bulk-g", "bulk", FilterExpression::all()).await;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 40 && Instant::now() < deadline {
        let ms = c.receive(64, Duration::from_secs(1)).await.unwrap();
        c.ack_all(&ms).await.expect("ack_all");
        got.extend(ms);
    }
    assert_eq!(got.len(), 40);
    // Past the invisible duration: acked messages stay settled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = c.receive(64, Duration::from_secs(1)).await.unwrap();
    assert!(
        again.is_empty(),
        "{} redelivered after ack_all",
        again.len()
    );
    c.ack_all(&[]).await.expect("nothing to ack is fine");
}

/// Plain sends made concurrently share calls to the broker; each caller
/// still gets its own receipt, and every message arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_each_get_their_receipt() {
    concurrent_sends(&Broker::start(&[])).await;
}

/// Half messages of concurrent transactions share calls, and so do their
/// ends, yet each half is its own transaction: committing one never
/// commits its call neighbours, and rolled-back ones never arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_stay_separate() {
    let p = concurrent_transactions(&Broker::start(&[])).await;
    assert_eq!(p.broker_extensions(), Some(true));
}

/// Against a broker without Ferry's EndTransactions (as any other RocketMQ
/// broker), the producer falls back to one EndTransaction per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_end_without_the_broker_extensions() {
    let p = concurrent_transactions(&Broker::start(&["--extensions", "false"])).await;
    assert_eq!(p.broker_extensions(), Some(false));
}

/// A broker that refuses every batch of more than one message refuses each
/// shared call whole (nothing stored): every message, plain or half, is
/// then sent again alone, and each caller still succeeds exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_calls_refused_whole_are_sent_again_one_by_one() {
    let b = Broker::start(&["--max-batch-messages", "1"]);
    concurrent_sends(&b).await;
    let p = concurrent_transactions(&b).await;
    assert_eq!(p.broker_extensions(), Some(true));
}

/// Runs `n` tasks at once and checks each succeeded with an answer of its
/// own (receipt or transaction ids must never be shared between callers).
async fn distinct_answers<F, Fut>(n: usize, task: F) -> HashSet<String>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<String, ClientError>> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(task(i))).collect();
    let mut answers = HashSet::new();
    for t in tasks {
        let a = t.await.unwrap().expect("each call succeeds");
        assert!(!a.is_empty());
        assert!(answers.insert(a), "answers are distinct");
    }
    answers
}

/// 300 concurrent plain sends; each arrives exactly once.
async fn concurrent_sends(b: &Broker) {
    let p = Arc::new(
        Producer::builder(b.config())
            .topics(["shared"])
            .start()
            .await
            .unwrap(),
    );
    distinct_answers(300, |i| {
        let p = p.clone();
        async move {
            let r = p.send(Message::new("shared", format!("m{i}"))).await?;
            Ok(r.message_id)
        }
    })
    .await;
    let c = simple(b, "shared-g", "shared", FilterExpression::all()).await;
    let got = drain(&c, 300, Duration::from_secs(15)).await;
    let bodies: HashSet<Vec<u8>> = got.iter().map(|m| m.body.to_vec()).collect();
    assert_eq!(got.len(), 300, "each once");
    assert_eq!(bodies.len(), 300);
}

/// 200 concurrent transactions, even ones committed and odd ones rolled
/// back; exactly the committed ones arrive, each once. One rolled-back
/// transaction goes first, so the producer knows the broker (halves share
/// calls only with Ferry) before the concurrent ones start.
async fn concurrent_transactions(b: &Broker) -> Arc<TransactionProducer> {
    let p = Arc::new(
        TransactionProducer::builder(b.config(), key_checker())
            .topics(["tx-shared"])
            .start()
            .await
            .unwrap(),
    );
    let mut first = p.begin();
    first
        .send(Message::new("tx-shared", "first").with_key("undecided"))
        .await
        .unwrap();
    first.rollback().await.unwrap();
    distinct_answers(200, |i| {
        let p = p.clone();
        async move {
            let mut t = p.begin();
            let r = t
                .send(Message::new("tx-shared", format!("t{i}")).with_key("undecided"))
                .await?;
            if i % 2 == 0 {
                t.commit().await?;
            } else {
                t.rollback().await?;
            }
            Ok(r.transaction_id)
        }
    })
    .await;
    let c = simple(b, "tx-shared-g", "tx-shared", FilterExpression::all()).await;
    let got = drain(&c, 100, Duration::from_secs(15)).await;
    let mut bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).to_string())
        .collect();
    bodies.sort();
    let mut want: Vec<String> = (0..200).step_by(2).map(|i| format!("t{i}")).collect();
    want.sort();
    assert_eq!(bodies, want, "exactly the committed ones, each once");
    let more = drain(&c, 1, Duration::from_secs(1)).await;
    assert!(more.is_empty(), "unexpected: {more:?}");
    p
}
