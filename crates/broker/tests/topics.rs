//! Topics as an operator shapes them: the message types a topic accepts,
//! and deleting a topic — replayed to the very state the live broker had,
//! with nothing of the old topic left where it could touch the new one.

mod common;

use common::{incoming, Harness};
use ferry_broker::*;
use ferry_record::{Payload, TxOutcome, TxSource};

const T0: i64 = 1_000_000;

/// One delivery attempt per message: expired deliveries become dead letters.
fn harness() -> Harness {
    Harness::with_config(CoreConfig {
        default_policy: GroupPolicy {
            max_delivery_attempts: 1,
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Receives up to `max` from `topic` for `group`, committing the plan.
fn receive(h: &mut Harness, now: i64, group: &str, topic: &str, max: usize) -> Vec<Delivery> {
    let req = ReceiveRequest {
        group,
        topic,
        filter: &Filter::All,
        max_messages: max,
        invisible_ms: 10_000,
        client: "consumer-1",
        properties: None,
    };
    let plan = h.core.plan_receive(now, &req, u64::MAX).unwrap();
    for r in plan.records {
        h.commit(r);
    }
    h.core.apply_scans(group, topic, &plan.scans);
    plan.deliveries
}

fn delete(h: &mut Harness, now: i64, topic: &str) {
    let rec = h.core.plan_topic_delete(now, topic).unwrap();
    h.commit(rec);
}

fn typed(id: &str, kind: MessageKind) -> Incoming {
    let mut m = incoming(id, None, 0);
    m.kind = kind;
    m
}

/// What a restart must rebuild at this point: records so far, the topic
/// file, the core's state.
type Checkpoint = (usize, Vec<(String, TopicConfig, u64)>, String);

fn checkpoint(h: &Harness) -> Checkpoint {
    (h.log.len(), h.topic_file(), h.core.durable_state())
}

#[test]
fn a_topic_refuses_message_types_it_does_not_accept() {
    let mut h = Harness::new();
    let types = MessageTypes::parse(&["NORMAL", "FIFO"]).unwrap();
    let config = TopicConfig {
        queues: 1,
        message_types: types,
    };
    assert!(h.core.create_topic_with("orders", config).unwrap());
    let mut normal = incoming("a", None, 0);
    normal.topic = "orders".into();
    // A transactional message counts as TRANSACTION, whatever else it has.
    let mut tx = normal.clone();
    tx.message_id = "b".into();
    tx.kind = MessageKind::Transaction;
    tx.message_group = Some("grp".into());
    tx.delivery_timestamp_ms = Some(T0 + 1_000);
    let (index, err) = h
        .core
        .admit_batch(T0, &[normal.clone(), tx.clone()])
        .unwrap_err();
    assert_eq!(index, 1);
    assert_eq!(
        err,
        BrokerError::MessageTypeNotAccepted(
            "topic orders accepts NORMAL, FIFO; this message is TRANSACTION".into()
        )
    );
    let mut delay = normal.clone();
    delay.kind = MessageKind::Delay;
    delay.delivery_timestamp_ms = Some(T0 + 1_000);
    assert!(h.core.admit_batch(T0, &[delay]).is_err());
    let mut fifo = normal.clone();
    fifo.kind = MessageKind::Fifo;
    fifo.message_group = Some("grp".into());
    h.core.admit_batch(T0, &[normal, fifo]).unwrap();
    // The set can change; a topic made by a record accepts everything.
    h.core
        .set_message_types("orders", MessageTypes::ALL)
        .unwrap();
    h.core.admit_batch(T0, &[tx]).unwrap();
    assert_eq!(
        h.core.topic("t").unwrap().message_types(),
        MessageTypes::ALL
    );
    assert!(matches!(
        h.core.set_message_types("nope", MessageTypes::ALL),
        Err(BrokerError::TopicNotFound(_))
    ));
}

#[test]
fn a_deleted_topic_replays_to_the_same_state_at_every_point() {
    let mut h = harness();
    for i in 0..6 {
        h.send(T0, &format!("m{i}"), Some("a"), i % 2);
    }
    let got = receive(&mut h, T0, "g1", "t", 3);
    h.ack(T0, "g1", &got[0]).unwrap();
    receive(&mut h, T0, "g2", "t", 10);
    // g2's deliveries expire after its one attempt: dead letters.
    assert!(receive(&mut h, T0 + 20_000, "g2", "t", 10).is_empty());
    assert_eq!(h.core.dead_letters("g2", 0, 10).len(), 6);
    h.store(T0, &{
        let mut m = typed("later", MessageKind::Delay);
        m.delivery_timestamp_ms = Some(T0 + 100_000);
        m
    });
    h.store(T0, &typed("half", MessageKind::Transaction));
    let mut points = vec![checkpoint(&h)];

    delete(&mut h, T0 + 30_000, "t");
    assert!(h.core.topic("t").is_none());
    points.push(checkpoint(&h));

    // A send after the deletion makes a new topic: offsets from 0.
    h.core.create_topic("t", 2).unwrap();
    for i in 0..3 {
        h.send(T0 + 40_000, &format!("n{i}"), None, 0);
    }
    let stats = h.core.topic_stats();
    let t = stats.iter().find(|t| t.name == "t").unwrap();
    assert_eq!(t.queues, vec![(0, 3), (0, 0)]);
    let fresh = receive(&mut h, T0 + 40_000, "g1", "t", 10);
    assert_eq!(fresh.len(), 3);
    assert!(fresh.iter().all(|d| d.attempt == 1));
    h.ack(T0 + 40_000, "g1", &fresh[1]).unwrap();
    points.push(checkpoint(&h));

    for (records, file, state) in &points {
        let restarted = h.restart_from(file, *records);
        assert_eq!(restarted.durable_state(), *state, "after {records} records");
    }
    assert_ne!(points[0].2, points[1].2);
    // Killed after the deletion was logged but before the topic file was
    // rewritten: the file still describes the old topic; the log wins.
    let (before, after) = (&points[0], &points[1]);
    assert_eq!(h.restart_from(&before.1, after.0).durable_state(), after.2);
    // Where the re-created topic began is what lets replay tell the two
    // apart: without it the deletion would remove the re-created topic and
    // the records after it would make one with the default queue count.
    let mut file = h.topic_file();
    file.iter_mut().for_each(|d| d.2 = 0);
    let wrong = h.restart_from(&file, h.log.len());
    assert_ne!(wrong.durable_state(), h.core.durable_state());
}

#[test]
fn a_deleted_topic_leaves_nothing_dangling() {
    let mut h = harness();
    h.send(T0, "m0", None, 0);
    h.send(T0, "poison", None, 0);
    // Group d gives up on "poison": a dead letter whose origin is t.
    let d = receive(&mut h, T0, "d", "t", 10);
    h.ack(T0, "d", &d[0]).unwrap();
    let rec = h
        .core
        .plan_dead_letter(T0, "d", "t", &d[1].receipt_handle)
        .unwrap();
    h.commit(rec);
    // Group g holds both in flight; a timer and a half message wait.
    let held = receive(&mut h, T0, "g", "t", 10);
    assert_eq!(held.len(), 2);
    let mut later = typed("later", MessageKind::Delay);
    later.delivery_timestamp_ms = Some(T0 + 60_000);
    let timer_at = h.store(T0, &later);
    let half_at = h.store(T0, &typed("half", MessageKind::Transaction));
    let tx = transaction::transaction_id(half_at);
    assert!(h.core.pinned_offset().is_some());

    delete(&mut h, T0 + 1_000, "t");

    let now = T0 + 2_000;
    for d in &held {
        assert!(matches!(
            h.ack(now, "g", d),
            Err(BrokerError::InvalidReceiptHandle(_))
        ));
        assert!(h
            .core
            .plan_renew(now, "g", "t", &d.receipt_handle, 5_000)
            .is_err());
        assert!(h
            .core
            .plan_dead_letter(now, "g", "t", &d.receipt_handle)
            .is_err());
    }
    assert_eq!(h.core.timers().len(), 0);
    assert_eq!(h.core.transactions().pending_len(), 0);
    assert_eq!(h.core.pinned_offset(), None);
    assert!(h.core.plan_fire(i64::MAX).is_none());
    assert!(matches!(
        h.core.plan_recall(now, "t", &recall_handle(timer_at)),
        Err(BrokerError::NotFound(_))
    ));
    // The half message was discarded: a late commit hears why.
    let err = h
        .core
        .plan_end_transaction(now, "t", "half", &tx, TxOutcome::Commit, TxSource::Client)
        .unwrap_err();
    assert!(err.to_string().contains("topic t was deleted"), "{err}");
    assert_eq!(
        h.core
            .plan_end_transaction(now, "t", "half", &tx, TxOutcome::Rollback, TxSource::Client)
            .unwrap(),
        EndDecision::AlreadyEnded(TxOutcome::Discard)
    );
    assert!(h.core.topic_groups("t").is_empty());
    assert!(h.core.group_view("g").is_none(), "g had state on t only");
    let dv = h.core.group_view("d").expect("d keeps its dead letter");
    assert_eq!((dv.queues.len(), dv.dead_letters), (0, 1));
    assert!(matches!(
        h.core.plan_redrive(now, "d", 0),
        Err(BrokerError::NotFound(_))
    ));
    let req = ReceiveRequest {
        group: "g",
        topic: "t",
        filter: &Filter::All,
        max_messages: 1,
        invisible_ms: 10_000,
        client: "consumer-1",
        properties: None,
    };
    assert!(matches!(
        h.core.plan_receive(now, &req, u64::MAX),
        Err(BrokerError::TopicNotFound(_))
    ));

    // A new topic of the same name reuses the offsets: old receipts and the
    // old dead letter still name nothing in it.
    h.core.create_topic("t", 2).unwrap();
    h.send(now, "new0", None, 0);
    h.send(now, "new1", None, 0);
    let fresh = receive(&mut h, now, "g", "t", 10);
    assert_eq!(
        fresh.iter().map(|d| d.queue_offset).collect::<Vec<_>>(),
        [0, 1]
    );
    for d in &held {
        assert!(h.ack(now, "g", d).is_err());
    }
    assert!(matches!(
        h.core.plan_redrive(now, "d", 0),
        Err(BrokerError::NotFound(_))
    ));
    h.ack(now, "g", &fresh[0]).unwrap();
    // The old messages' status: nowhere, for no group.
    let (_, _, rec) = h
        .log
        .iter()
        .find(|(o, _, _)| *o == held[0].log_offset)
        .unwrap();
    let Payload::Message(m) = &rec.payload else {
        panic!("a message record")
    };
    let st = h
        .core
        .message_status(held[0].log_offset, rec.timestamp_ms, m);
    assert_eq!((st.position, st.groups.len()), (None, 0));
    let restarted = h.restart_from(&h.topic_file(), h.log.len());
    assert_eq!(restarted.durable_state(), h.core.durable_state());
}

#[test]
fn deleting_a_dead_letter_topic_forgets_its_origins_and_starts_over() {
    let mut h = harness();
    h.send(T0, "m", None, 0);
    receive(&mut h, T0, "g", "t", 10);
    receive(&mut h, T0 + 20_000, "g", "t", 10);
    assert_eq!(h.core.dead_letters("g", 0, 10).len(), 1);
    let before = h.topic_file();
    delete(&mut h, T0 + 30_000, "%DLQ%g");
    assert!(h.core.dead_letters("g", 0, 10).is_empty());
    let v = h.core.group_view("g").expect("g still has progress on t");
    assert_eq!(v.dead_letters, 0);
    assert!(matches!(
        h.core.plan_redrive(T0 + 30_000, "g", 0),
        Err(BrokerError::NotFound(_))
    ));
    h.send(T0 + 30_000, "m2", None, 0);
    receive(&mut h, T0 + 30_000, "g", "t", 10);
    receive(&mut h, T0 + 50_000, "g", "t", 10);
    let letters = h.core.dead_letters("g", 0, 10);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].dlq_queue_offset, 0, "a fresh dead-letter topic");
    // Restarted with the file before or after the deletion: the same.
    for file in [before, h.topic_file()] {
        let restarted = h.restart_from(&file, h.log.len());
        assert_eq!(restarted.durable_state(), h.core.durable_state());
    }
}

#[test]
fn deleting_an_unknown_topic_is_refused() {
    let h = Harness::new();
    assert!(matches!(
        h.core.plan_topic_delete(T0, "nope"),
        Err(BrokerError::TopicNotFound(_))
    ));
    assert!(matches!(
        h.core.plan_topic_delete(T0, "bad name"),
        Err(BrokerError::IllegalTopic(_))
    ));
}
