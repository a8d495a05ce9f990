//! Finding messages: the index by id and key (candidates, pruned with
//! retention, rebuilt by replay) and where a message stands for each group,
//! its transaction and its timer.

mod common;

use common::{incoming, Harness};
use ferry_broker::*;
use ferry_record::{MessageRecord, Payload, TxOutcome, TxSource};

const T0: i64 = 1_000_000;

fn harness(attempts: u32) -> Harness {
    Harness::with_config(CoreConfig {
        default_policy: GroupPolicy {
            max_delivery_attempts: attempts,
            ..Default::default()
        },
        ..Default::default()
    })
}

fn with_keys(id: &str, keys: &[&str]) -> Incoming {
    let mut m = incoming(id, None, 0);
    m.keys = keys.iter().map(|k| k.to_string()).collect();
    m
}

fn receive(h: &mut Harness, now: i64, group: &str) -> Vec<Delivery> {
    h.receive(now, group, &Filter::All, 16, 1_000)
}

/// The status of the message stored at `offset`.
fn status(h: &Harness, offset: u64) -> MessageStatus {
    let (_, _, rec) = h.log.iter().find(|(o, _, _)| *o == offset).unwrap();
    let Payload::Message(m) = &rec.payload else {
        panic!("not a message")
    };
    h.core.message_status(offset, rec.timestamp_ms, m)
}

fn states(st: &MessageStatus) -> Vec<(String, DeliveryState)> {
    st.groups
        .iter()
        .map(|g| (g.group.clone(), g.state))
        .collect()
}

fn record_at(h: &Harness, offset: u64) -> MessageRecord {
    match &h
        .log
        .iter()
        .find(|(o, _, _)| *o == offset)
        .unwrap()
        .2
        .payload
    {
        Payload::Message(m) => m.clone(),
        _ => panic!("not a message"),
    }
}

#[test]
fn the_index_lists_every_record_of_an_id_or_key_and_forgets_pruned_ones() {
    let mut h = harness(17);
    let a1 = h.store(T0, &with_keys("a", &["k1", "k2"]));
    let b = h.store(T0, &with_keys("b", &["k1"]));
    // A producer's retry stores the same id again.
    let a2 = h.store(T0, &with_keys("a", &[]));
    assert_eq!(h.core.messages_by_id("a", 10).offsets, [a1, a2]);
    assert_eq!(h.core.messages_by_id("b", 10).offsets, [b]);
    assert!(h.core.messages_by_id("zz", 10).offsets.is_empty());
    assert_eq!(h.core.messages_by_key("k1", 10).offsets, [a1, b]);
    let one = h.core.messages_by_key("k1", 1);
    assert_eq!((one.offsets, one.more), (vec![a1], true));
    assert_eq!(h.core.message_index_len(), (3, 3));
    // Replay rebuilds the same index.
    assert_eq!(h.replayed().durable_state(), h.core.durable_state());
    // Retention removes what it deletes.
    h.core.prune_below(b);
    assert_eq!(h.core.messages_by_id("a", 10).offsets, [a2]);
    assert_eq!(h.core.messages_by_key("k1", 10).offsets, [b]);
    assert!(h.core.messages_by_key("k2", 10).offsets.is_empty());
}

#[test]
fn status_follows_a_message_through_delivery_ack_dead_letter_and_redrive() {
    let mut h = harness(2);
    h.send(T0, "x", None, 0);
    let x = h.log[0].0;
    let st = status(&h, x);
    assert_eq!(st.position, Some((0, 0)));
    assert!(st.groups.is_empty(), "no group has progress on t yet");
    let g1 = receive(&mut h, T0, "g1");
    receive(&mut h, T0, "g2");
    assert_eq!(
        states(&status(&h, x)),
        [
            (
                "g1".into(),
                DeliveryState::InFlight {
                    attempt: 1,
                    visible_at_ms: T0 + 1_000
                }
            ),
            (
                "g2".into(),
                DeliveryState::InFlight {
                    attempt: 1,
                    visible_at_ms: T0 + 1_000
                }
            ),
        ]
    );
    h.ack(T0, "g1", &g1[0]).unwrap();
    // g2 fails twice: a dead letter after its second attempt.
    receive(&mut h, T0 + 1_000, "g2");
    receive(&mut h, T0 + 2_000, "g2");
    // A third group sees the message as not yet delivered.
    h.send(T0, "y", None, 1);
    let g3 = receive(&mut h, T0 + 2_000, "g3");
    assert_eq!(g3.len(), 2);
    h.ack(T0 + 2_000, "g3", &g3[0]).unwrap();
    let want = |g3_state| {
        vec![
            ("g1".to_string(), DeliveryState::Acked),
            (
                "g2".to_string(),
                DeliveryState::DeadLettered {
                    attempts: 2,
                    dlq_offset: 0,
                },
            ),
            ("g3".to_string(), g3_state),
        ]
    };
    let g3_x = if g3[0].log_offset == x {
        DeliveryState::Acked
    } else {
        DeliveryState::InFlight {
            attempt: 1,
            visible_at_ms: T0 + 3_000,
        }
    };
    assert_eq!(states(&status(&h, x)), want(g3_x));
    // Re-driven: due again for g2, not handed out yet.
    let rec = h.core.plan_redrive(T0 + 3_000, "g2", 0).unwrap();
    h.commit(rec);
    assert_eq!(states(&status(&h, x))[1].1, DeliveryState::Pending);
    // The same after a restart.
    h.crash_and_recover();
    assert_eq!(states(&status(&h, x))[1].1, DeliveryState::Pending);
    assert_eq!(states(&status(&h, x))[0].1, DeliveryState::Acked);
}

#[test]
fn status_of_half_messages_and_timers() {
    let mut h = harness(17);
    // Give a group progress on the topic first.
    h.send(T0, "first", None, 0);
    receive(&mut h, T0, "g");
    let mut tx = incoming("tx", None, 0);
    tx.kind = MessageKind::Transaction;
    let half = h.store(T0, &tx);
    let st = status(&h, half);
    assert_eq!(
        st.transaction,
        Some(TxState::Pending {
            checks: 0,
            next_check_ms: T0 + 6_000
        })
    );
    assert_eq!(st.position, None);
    assert_eq!(states(&st), [("g".into(), DeliveryState::Pending)]);
    let id = transaction::transaction_id(half);
    let d = h
        .core
        .plan_end_transaction(T0, "t", "tx", &id, TxOutcome::Commit, TxSource::Client)
        .unwrap();
    let EndDecision::Record(rec) = d else {
        panic!("a first outcome")
    };
    h.commit(*rec);
    let st = status(&h, half);
    assert!(matches!(&st.transaction, Some(TxState::Ended(r)) if r.outcome == TxOutcome::Commit));
    assert_eq!(st.position, Some((0, 1)));
    assert_eq!(states(&st), [("g".into(), DeliveryState::Pending)]);

    // A rolled-back one goes nowhere, for nobody.
    let mut rb = incoming("rb", None, 0);
    rb.kind = MessageKind::Transaction;
    let rb_at = h.store(T0, &rb);
    let id = transaction::transaction_id(rb_at);
    let d = h
        .core
        .plan_end_transaction(T0, "t", "rb", &id, TxOutcome::Rollback, TxSource::Client)
        .unwrap();
    let EndDecision::Record(rec) = d else {
        panic!("a first outcome")
    };
    h.commit(*rec);
    let st = status(&h, rb_at);
    assert!(st.groups.is_empty() && st.position.is_none());

    // A delayed message waits, then fires into the queue.
    let mut later = incoming("later", None, 0);
    later.kind = MessageKind::Delay;
    later.delivery_timestamp_ms = Some(T0 + 5_000);
    let at = h.store(T0, &later);
    let st = status(&h, at);
    assert_eq!((st.timer_due_ms, st.position), (Some(T0 + 5_000), None));
    assert_eq!(states(&st), [("g".into(), DeliveryState::Pending)]);
    assert_eq!(h.fire(T0 + 5_000), 1);
    let st = status(&h, at);
    assert_eq!((st.timer_due_ms, st.position), (None, Some((0, 2))));
    // Late positions are rebuilt by replay.
    h.crash_and_recover();
    assert_eq!(status(&h, at).position, Some((0, 2)));
    assert_eq!(status(&h, half).position, Some((0, 1)));
    assert_eq!(record_at(&h, at).message_id, "later");
}
