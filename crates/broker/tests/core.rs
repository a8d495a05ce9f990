//! Core rules, driven with an explicit clock and an in-memory stand-in for
//! the log: decide → "append" (assign an offset) → apply, as the shell does.

mod common;

use bytes::Bytes;
use common::{incoming, Harness};
use ferry_broker::*;

#[test]
fn receive_ack_and_redelivery_with_rising_attempts() {
    let mut h = Harness::new();
    for i in 0..4 {
        h.send(0, &format!("m{i}"), None, i % 2);
    }
    let got = h.receive(1_000, "g", &Filter::All, 10, 5_000);
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|d| d.attempt == 1));
    // Nothing more until the invisible duration passes.
    assert!(h.receive(2_000, "g", &Filter::All, 10, 5_000).is_empty());
    h.ack(2_000, "g", &got[0]).unwrap();
    // At 6 s the three un-acked ones come back with attempt 2.
    let again = h.receive(6_000, "g", &Filter::All, 10, 5_000);
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|d| d.attempt == 2));
    // The handle of the first delivery of a redelivered message is dead.
    let stale = got
        .iter()
        .find(|d| d.queue_offset == again[0].queue_offset && d.queue_id == again[0].queue_id)
        .unwrap();
    assert!(matches!(
        h.ack(6_000, "g", stale),
        Err(BrokerError::InvalidReceiptHandle(_))
    ));
    // Acked twice: the second is refused, nothing changes.
    assert!(h.ack(6_000, "g", &got[0]).is_err());
    for d in &again {
        h.ack(6_500, "g", d).unwrap();
    }
    assert!(h.receive(100_000, "g", &Filter::All, 10, 5_000).is_empty());
    // Another group sees everything, independently.
    assert_eq!(
        h.receive(100_000, "other", &Filter::All, 10, 5_000).len(),
        4
    );
}

#[test]
fn replay_rebuilds_the_same_state() {
    let mut h = Harness::new();
    for i in 0..6 {
        h.send(0, &format!("m{i}"), None, i % 2);
    }
    let got = h.receive(1_000, "g", &Filter::All, 4, 10_000);
    h.ack(1_100, "g", &got[0]).unwrap();
    h.ack(1_100, "g", &got[1]).unwrap();
    let mut replayed = h.replayed();
    assert_eq!(
        format!("{:?}", replayed.group_stats()),
        format!("{:?}", h.core.group_stats())
    );
    // After a "restart": acked ones never come back, un-acked ones do after
    // their invisible time, with attempt 2; never-delivered ones are fresh.
    let req = ReceiveRequest {
        group: "g",
        topic: "t",
        filter: &Filter::All,
        max_messages: 10,
        invisible_ms: 10_000,
        client: "consumer-1",
        properties: None,
    };
    let plan = replayed.plan_receive(12_000, &req, h.next).unwrap();
    let mut attempts: Vec<u32> = plan.deliveries.iter().map(|d| d.attempt).collect();
    attempts.sort();
    assert_eq!(attempts, vec![1, 1, 2, 2]);
}

#[test]
fn change_invisible_duration_issues_a_new_handle() {
    let mut h = Harness::new();
    h.send(0, "m", None, 0);
    let d = h.receive(0, "g", &Filter::All, 1, 60_000).remove(0);
    let (rec, new_handle) = h
        .core
        .plan_renew(1_000, "g", "t", &d.receipt_handle, 2_000)
        .unwrap();
    h.commit(rec);
    assert_ne!(new_handle, d.receipt_handle);
    // Old handle dead, for ack and for another change.
    assert!(h.core.plan_ack(1_000, "g", "t", &d.receipt_handle).is_err());
    assert!(h
        .core
        .plan_renew(1_000, "g", "t", &d.receipt_handle, 2_000)
        .is_err());
    // Visible again at 3 s (not 60 s), attempt 2.
    assert!(h.receive(2_999, "g", &Filter::All, 1, 60_000).is_empty());
    let again = h.receive(3_000, "g", &Filter::All, 1, 60_000);
    assert_eq!(again[0].attempt, 2);
    // Illegal durations are refused with the precise error.
    assert!(matches!(
        h.core.plan_renew(0, "g", "t", &again[0].receipt_handle, -1),
        Err(BrokerError::IllegalInvisibleTime(_))
    ));
}

#[test]
fn tag_filter_skips_and_uncommitted_messages_wait() {
    let mut h = Harness::new();
    h.send(0, "a", Some("red"), 0);
    h.send(0, "b", Some("blue"), 0);
    h.send(0, "c", Some("red"), 0);
    let red = Filter::parse_tag("red").unwrap();
    let got = h.receive(0, "g", &red, 10, 10_000);
    assert_eq!(got.len(), 2);
    // Messages above the committed offset are not handed out.
    h.send(0, "d", Some("red"), 0);
    let req = ReceiveRequest {
        group: "g",
        topic: "t",
        filter: &red,
        max_messages: 10,
        invisible_ms: 10_000,
        client: "consumer-1",
        properties: None,
    };
    let committed = h.log.last().unwrap().0; // the last record is not durable
    assert!(h
        .core
        .plan_receive(0, &req, committed)
        .unwrap()
        .deliveries
        .is_empty());
    assert_eq!(h.receive(0, "g", &red, 10, 10_000).len(), 1);
}

#[test]
fn receive_validates_its_arguments() {
    let mut h = Harness::new();
    let mut req = ReceiveRequest {
        group: "g",
        topic: "t",
        filter: &Filter::All,
        max_messages: 1,
        invisible_ms: 10,
        client: "consumer-1",
        properties: None,
    };
    assert!(matches!(
        h.core.plan_receive(0, &req, 0),
        Err(BrokerError::IllegalInvisibleTime(_))
    ));
    req.invisible_ms = 10_000;
    req.max_messages = 0;
    assert!(matches!(
        h.core.plan_receive(0, &req, 0),
        Err(BrokerError::BadRequest(_))
    ));
    req.max_messages = 1;
    let long_client = "c".repeat(ferry_record::MAX_CLIENT_ID_BYTES + 1);
    req.client = &long_client;
    assert!(matches!(
        h.core.plan_receive(0, &req, 0),
        Err(BrokerError::BadRequest(_))
    ));
    req.client = &long_client[..ferry_record::MAX_CLIENT_ID_BYTES];
    assert!(h.core.plan_receive(0, &req, 0).is_ok());
    req.client = "consumer-1";
    req.group = "bad group";
    assert!(matches!(
        h.core.plan_receive(0, &req, 0),
        Err(BrokerError::IllegalGroup(_))
    ));
    req.group = "g";
    req.topic = "missing";
    assert!(matches!(
        h.core.plan_receive(0, &req, 0),
        Err(BrokerError::TopicNotFound(_))
    ));
}

#[test]
fn message_validation_rules() {
    let limits = Limits::default();
    let check = |f: &dyn Fn(&mut Incoming)| {
        let mut m = incoming("id", None, 0);
        f(&mut m);
        ferry_broker::validate::message(&m, &limits)
    };
    assert!(check(&|_| {}).is_ok());
    // The born host is a record string (at most 64 KiB): longer, it would
    // make the encoder panic in `Log::append` (found by fuzzing).
    assert!(check(&|m| m.born_host = "h".repeat(u16::MAX as usize)).is_ok());
    assert!(matches!(
        check(&|m| m.born_host = "h".repeat(u16::MAX as usize + 1)),
        Err(BrokerError::BadRequest(_))
    ));
    assert!(matches!(
        check(&|m| m.message_id.clear()),
        Err(BrokerError::IllegalMessageId(_))
    ));
    assert!(matches!(
        check(&|m| m.tag = Some("a|b".into())),
        Err(BrokerError::IllegalTag(_))
    ));
    assert!(matches!(
        check(&|m| m.tag = Some("a b".into())),
        Err(BrokerError::IllegalTag(_))
    ));
    assert!(matches!(
        check(&|m| m.tag = Some(" ".into())),
        Err(BrokerError::IllegalTag(_))
    ));
    assert!(matches!(
        check(&|m| m.keys = vec!["".into()]),
        Err(BrokerError::IllegalKey(_))
    ));
    assert!(matches!(
        check(&|m| m.body = Bytes::new()),
        Err(BrokerError::BodyEmpty)
    ));
    assert!(matches!(
        check(&|m| m.body = Bytes::from(vec![0u8; (4 << 20) + 1])),
        Err(BrokerError::BodyTooLarge { .. })
    ));
    assert!(matches!(
        check(&|m| m.properties = (0..129).map(|i| (format!("k{i}"), "v".into())).collect()),
        Err(BrokerError::PropertiesTooLarge(_))
    ));
    assert!(matches!(
        check(&|m| m.properties = vec![("k".into(), "v".repeat(17 << 10))]),
        Err(BrokerError::PropertiesTooLarge(_))
    ));
    assert!(matches!(
        check(&|m| m.properties = vec![("".into(), "v".into())]),
        Err(BrokerError::IllegalPropertyKey(_))
    ));
    assert!(matches!(
        check(&|m| m.topic = "bad topic".into()),
        Err(BrokerError::IllegalTopic(_))
    ));
    assert!(matches!(
        check(&|m| m.message_group = Some("g".into())),
        Err(BrokerError::TypeConflict(_))
    ));
    assert!(check(&|m| {
        m.kind = MessageKind::Fifo;
        m.message_group = Some("g".into());
    })
    .is_ok());
    assert!(matches!(
        check(&|m| {
            m.kind = MessageKind::Fifo;
            m.message_group = Some("g".repeat(64));
        }),
        Err(BrokerError::IllegalMessageGroup(_))
    ));
    assert!(check(&|m| m.kind = MessageKind::Transaction).is_ok());
    assert!(check(&|m| {
        m.kind = MessageKind::Transaction;
        m.message_group = Some("g".into());
        m.delivery_timestamp_ms = Some(5);
    })
    .is_ok());
    assert!(check(&|m| {
        m.kind = MessageKind::Delay;
        m.delivery_timestamp_ms = Some(5);
    })
    .is_ok());
    assert!(matches!(
        check(&|m| m.kind = MessageKind::Delay),
        Err(BrokerError::TypeConflict(_))
    ));
    assert!(matches!(
        check(&|m| {
            m.kind = MessageKind::Delay;
            m.delivery_timestamp_ms = Some(5);
            m.message_group = Some("g".into());
        }),
        Err(BrokerError::TypeConflict(_))
    ));
}

#[test]
fn retention_prunes_and_reports_unconsumed() {
    let mut h = Harness::new();
    for i in 0..4 {
        h.send(0, &format!("m{i}"), None, 0);
    }
    let got = h.receive(0, "g", &Filter::All, 1, 10_000);
    h.ack(0, "g", &got[0]).unwrap();
    // Cut below the third message: m1 was never consumed by g.
    let cut = h
        .log
        .iter()
        .filter(|(_, _, r)| matches!(r.payload, ferry_record::Payload::Message(_)))
        .nth(2)
        .unwrap()
        .0;
    let losses = h.core.prune_below(cut);
    assert_eq!(losses.len(), 1);
    assert_eq!(losses[0].messages, 1);
    let stats = h.core.topic_stats();
    assert_eq!(stats[0].queues[0], (2, 4));
    assert_eq!(h.receive(0, "g", &Filter::All, 10, 10_000).len(), 2);
}

#[test]
fn in_flight_limit_per_queue_holds_back_new_deliveries() {
    let mut config = CoreConfig::default();
    config.limits.max_inflight_per_queue = 2;
    let mut h = Harness::with_config(config);
    for i in 0..5 {
        h.send(0, &format!("m{i}"), None, 0);
    }
    let got = h.receive(0, "g", &Filter::All, 10, 10_000);
    assert_eq!(got.len(), 2, "only two may be in flight on the queue");
    assert!(h.receive(0, "g", &Filter::All, 10, 10_000).is_empty());
    h.ack(0, "g", &got[0]).unwrap();
    assert_eq!(h.receive(0, "g", &Filter::All, 10, 10_000).len(), 1);
}

#[test]
fn a_groups_lag_counts_queues_it_has_not_received_from_yet() {
    let mut h = Harness::new();
    let queues = h.core.topic_stats()[0].queues.len();
    assert!(queues >= 2, "the test needs a topic of two queues or more");
    h.send(0, "m0", None, 0);
    let got = h.receive(1_000, "g", &Filter::All, 10, 5_000);
    h.ack(1_100, "g", &got[0]).unwrap();
    // Only queue 0 has delivered to g; three messages wait on queue 1.
    for i in 0..3 {
        h.send(2_000, &format!("n{i}"), None, 1);
    }
    let stats: Vec<_> = h
        .core
        .group_stats()
        .into_iter()
        .map(|s| (s.queue_id, s.consumed_offset, s.max_offset, s.lag))
        .collect();
    assert_eq!(stats.len(), queues, "every queue of the topic: {stats:?}");
    assert_eq!(stats[0], (0, 1, 1, 0));
    assert_eq!(stats[1], (1, 0, 3, 3));
    let view = h.core.group_view("g").unwrap();
    assert_eq!(view.queues.iter().map(|q| q.lag).sum::<u64>(), 3);
    // A group that never received from the topic has no progress on it.
    assert!(h.core.group_view("other").is_none());
}
