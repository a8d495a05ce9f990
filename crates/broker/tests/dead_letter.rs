//! Dead-lettering: after the last attempt, or when the consumer forwards
//! it, a message leaves its group's queue for `%DLQ%<group>` — no copy, and
//! the same after a crash.

mod common;

use common::Harness;
use ferry_broker::*;

const T0: i64 = 1_000_000;

fn harness(max_attempts: u32) -> Harness {
    Harness::with_config(CoreConfig {
        default_policy: GroupPolicy {
            max_delivery_attempts: max_attempts,
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Receives from any topic for group "g", committing the plan.
fn receive_from(h: &mut Harness, now: i64, topic: &str) -> (Vec<Delivery>, usize) {
    let req = ReceiveRequest {
        group: "g",
        topic,
        filter: &Filter::All,
        max_messages: 16,
        invisible_ms: 1_000,
        client: "consumer-1",
        properties: None,
    };
    let plan = h.core.plan_receive(now, &req, u64::MAX).unwrap();
    for r in plan.records {
        h.commit(r);
    }
    (plan.deliveries, plan.dead_lettered)
}

#[test]
fn the_last_failed_attempt_moves_the_message_to_the_dead_letter_topic() {
    let mut h = harness(3);
    h.send(T0, "m", Some("tag"), 0);
    let original = h.log[0].0;
    for attempt in 1..=3 {
        let (got, dead) = receive_from(&mut h, T0 + 1_000 * (attempt - 1) as i64, "t");
        assert_eq!((got.len(), dead), (1, 0));
        assert_eq!(got[0].attempt, attempt);
    }
    // The third delivery expires: no fourth delivery, a dead letter instead.
    let (got, dead) = receive_from(&mut h, T0 + 3_000, "t");
    assert_eq!((got.len(), dead), (0, 1));
    let dlq = dlq_topic("g");
    assert_eq!(dlq, "%DLQ%g");
    for _ in 0..2 {
        h.crash_and_recover();
        assert!(receive_from(&mut h, T0 + 10_000, "t").0.is_empty());
        let stats = h.core.topic_stats();
        let d = stats
            .iter()
            .find(|t| t.name == dlq)
            .expect("dead-letter topic exists");
        assert_eq!(d.queues, vec![(0, 1)]);
    }
    // Consumable like any topic; the index points at the original record.
    let (got, _) = receive_from(&mut h, T0 + 10_000, &dlq);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].log_offset, original);
    assert_eq!(got[0].attempt, 1);
}

#[test]
fn a_message_that_succeeds_before_the_last_attempt_is_never_dead_lettered() {
    let mut h = harness(3);
    h.send(T0, "m", None, 0);
    receive_from(&mut h, T0, "t");
    receive_from(&mut h, T0 + 1_000, "t");
    let (got, _) = receive_from(&mut h, T0 + 2_000, "t");
    assert_eq!(got[0].attempt, 3);
    h.ack(T0 + 2_100, "g", &got[0]).unwrap();
    let (got, dead) = receive_from(&mut h, T0 + 9_000, "t");
    assert_eq!((got.len(), dead), (0, 0));
    assert!(h
        .core
        .topic_stats()
        .iter()
        .all(|t| t.name != dlq_topic("g")));
}

#[test]
fn a_consumer_can_forward_a_message_to_the_dead_letter_topic() {
    let mut h = harness(17);
    h.send(T0, "m", None, 1);
    let (got, _) = receive_from(&mut h, T0, "t");
    let rec = h
        .core
        .plan_dead_letter(T0, "g", "t", &got[0].receipt_handle)
        .unwrap();
    h.commit(rec);
    // The receipt is dead now, and nothing comes back on the topic.
    assert!(matches!(
        h.core
            .plan_dead_letter(T0, "g", "t", &got[0].receipt_handle),
        Err(BrokerError::InvalidReceiptHandle(_))
    ));
    assert!(receive_from(&mut h, T0 + 5_000, "t").0.is_empty());
    h.crash_and_recover();
    let (got, _) = receive_from(&mut h, T0 + 5_000, &dlq_topic("g"));
    assert_eq!(got.len(), 1);
}

#[test]
fn a_redriven_dead_letter_comes_back_to_its_group_only_and_survives_a_crash() {
    let mut h = harness(1);
    h.send(T0, "m", None, 0);
    receive_from(&mut h, T0, "t");
    let (_, dead) = receive_from(&mut h, T0 + 1_000, "t");
    assert_eq!(dead, 1);
    let letters = h.core.dead_letters("g", 0, 10);
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].topic.as_str(), letters[0].attempts), ("t", 1));
    // Unknown offsets and groups are refused by name.
    assert!(matches!(
        h.core.plan_redrive(T0, "g", 7),
        Err(BrokerError::NotFound(_))
    ));
    assert!(matches!(
        h.core.plan_redrive(T0, "other", 0),
        Err(BrokerError::NotFound(_))
    ));
    let rec = h.core.plan_redrive(T0 + 2_000, "g", 0).unwrap();
    h.commit(rec);
    // In flight again (visible at once): a second re-drive is a conflict.
    assert!(matches!(
        h.core.plan_redrive(T0 + 2_000, "g", 0),
        Err(BrokerError::Conflict(_))
    ));
    h.crash_and_recover();
    let (got, dead) = receive_from(&mut h, T0 + 2_000, "t");
    assert_eq!((got.len(), dead), (1, 0));
    assert_eq!(got[0].attempt, 1, "attempts start over");
    h.ack(T0 + 2_100, "g", &got[0]).unwrap();
    // Another group never saw it fail and is unaffected.
    let other = h.receive(T0 + 2_200, "g2", &Filter::All, 16, 1_000);
    assert_eq!(other.len(), 1);
    h.crash_and_recover();
    assert!(receive_from(&mut h, T0 + 9_000, "t").0.is_empty());
}
