//! The transaction state machine and delivery timers, driven by an explicit
//! clock. Crashes are simulated by rebuilding the core from its records.

mod common;

use common::{incoming, Harness};
use ferry_broker::*;
use ferry_record::{Payload, TxOutcome, TxSource};

const T0: i64 = 1_000_000;

fn config() -> CoreConfig {
    let mut c = CoreConfig::default();
    c.transactions.check_after_ms = 1_000;
    c.transactions.check_interval_ms = 1_000;
    c.transactions.max_checks = 2;
    c.transactions.no_producer_retry_ms = 100;
    c
}

/// A transactional message for queue 0.
fn tx_message(id: &str) -> Incoming {
    let mut m = incoming(id, None, 0);
    m.kind = MessageKind::Transaction;
    m
}

/// A delayed message for queue 0, due at `due`.
fn delayed(id: &str, due: i64) -> Incoming {
    let mut m = incoming(id, None, 0);
    m.kind = MessageKind::Delay;
    m.delivery_timestamp_ms = Some(due);
    m
}

/// Stores a half message; returns its transaction id.
fn half(h: &mut Harness, now: i64, id: &str) -> String {
    let mut m = incoming(id, Some("tag"), 1);
    m.kind = MessageKind::Transaction;
    let at = h.store(now, &m);
    transaction::transaction_id(at)
}

fn end(
    h: &mut Harness,
    now: i64,
    id: &str,
    tx: &str,
    outcome: TxOutcome,
    source: TxSource,
) -> Result<EndDecision, BrokerError> {
    let d = h
        .core
        .plan_end_transaction(now, "t", id, tx, outcome, source)?;
    if let EndDecision::Record(rec) = &d {
        h.commit(rec.as_ref().clone());
    }
    Ok(d)
}

fn checks(h: &mut Harness, now: i64, online: bool) -> CheckPlan {
    let mut plan = h.core.plan_checks(now, 100, &mut |_| online);
    for rec in std::mem::take(&mut plan.records) {
        h.commit(rec);
    }
    plan
}

/// Message ids delivered to group `g` at `now` (and acknowledged, so each
/// is seen once).
fn drain(h: &mut Harness, now: i64) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let got = h.receive(now, "g", &Filter::All, 32, 60_000);
        if got.is_empty() {
            return ids;
        }
        for d in got {
            let (_, _, rec) = h
                .log
                .iter()
                .find(|(o, _, _)| *o == d.log_offset)
                .expect("index points at a record");
            let Payload::Message(m) = &rec.payload else {
                panic!("index points at a non-message record")
            };
            ids.push(m.message_id.clone());
            h.ack(now, "g", &d).unwrap();
        }
    }
}

fn message_records(h: &Harness) -> usize {
    h.log
        .iter()
        .filter(|(_, _, r)| matches!(r.payload, Payload::Message(_)))
        .count()
}

#[test]
fn a_half_message_is_invisible_until_committed_and_commit_copies_nothing() {
    let mut h = Harness::with_config(config());
    let tx = half(&mut h, T0, "m1");
    assert!(!tx.is_empty());
    assert!(drain(&mut h, T0 + 10).is_empty());
    assert_eq!(h.core.transactions().pending_len(), 1);
    let d = end(
        &mut h,
        T0 + 20,
        "m1",
        &tx,
        TxOutcome::Commit,
        TxSource::Client,
    )
    .unwrap();
    assert!(matches!(d, EndDecision::Record(_)));
    // The index points at the half record itself: one message record.
    let got = h.receive(T0 + 30, "g", &Filter::All, 32, 60_000);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].log_offset,
        transaction::parse_transaction_id(&tx).unwrap()
    );
    assert_eq!(message_records(&h), 1);
    assert_eq!(h.core.transactions().pending_len(), 0);
}

#[test]
fn a_committed_message_waits_for_its_commit_record_to_be_durable() {
    let mut h = Harness::with_config(config());
    let tx = half(&mut h, T0, "m1");
    let half_end = h.next;
    end(&mut h, T0, "m1", &tx, TxOutcome::Commit, TxSource::Client).unwrap();
    let req = ReceiveRequest {
        group: "g",
        topic: "t",
        filter: &Filter::All,
        max_messages: 8,
        invisible_ms: 60_000,
        client: "consumer-1",
        properties: None,
    };
    // The half record is durable, the commit record not yet: nothing.
    let plan = h.core.plan_receive(T0, &req, half_end).unwrap();
    assert!(plan.deliveries.is_empty());
    let plan = h.core.plan_receive(T0, &req, h.next).unwrap();
    assert_eq!(plan.deliveries.len(), 1);
}

#[test]
fn rollback_is_never_delivered() {
    let mut h = Harness::with_config(config());
    let tx = half(&mut h, T0, "m1");
    end(&mut h, T0, "m1", &tx, TxOutcome::Rollback, TxSource::Client).unwrap();
    assert!(drain(&mut h, T0 + 1).is_empty());
    // Nothing is checked for a resolved transaction, ever.
    let plan = checks(&mut h, T0 + 100_000, true);
    assert!(plan.orders.is_empty() && plan.records.is_empty());
    h.crash_and_recover();
    assert!(drain(&mut h, T0 + 2).is_empty());
    assert_eq!(h.core.transactions().pending_len(), 0);
}

#[test]
fn repeated_conflicting_and_unknown_ends() {
    let mut h = Harness::with_config(config());
    let tx = half(&mut h, T0, "m1");
    end(&mut h, T0, "m1", &tx, TxOutcome::Commit, TxSource::Client).unwrap();
    let records = h.log.len();
    for _ in 0..2 {
        assert_eq!(
            end(
                &mut h,
                T0,
                "m1",
                &tx,
                TxOutcome::Commit,
                TxSource::ServerCheck
            ),
            Ok(EndDecision::AlreadyEnded(TxOutcome::Commit))
        );
        assert!(matches!(
            end(&mut h, T0, "m1", &tx, TxOutcome::Rollback, TxSource::Client),
            Err(BrokerError::TransactionConflict(_))
        ));
        assert_eq!(h.log.len(), records, "a repeat appends nothing");
        h.crash_and_recover();
    }
    assert_eq!(drain(&mut h, T0 + 1), ["m1"]);
    for bad in ["", "xyz", "00000000000000FF"] {
        assert!(matches!(
            end(&mut h, T0, "m1", bad, TxOutcome::Commit, TxSource::Client),
            Err(BrokerError::InvalidTransactionId(_))
        ));
    }
    let tx2 = half(&mut h, T0, "m2");
    for (topic, id) in [("t", "other"), ("u", "m2")] {
        assert!(matches!(
            h.core
                .plan_end_transaction(T0, topic, id, &tx2, TxOutcome::Commit, TxSource::Client),
            Err(BrokerError::InvalidTransactionId(_))
        ));
    }
    // Mismatched ids against an ended transaction are invalid too.
    assert!(matches!(
        end(&mut h, T0, "m2", &tx, TxOutcome::Commit, TxSource::Client),
        Err(BrokerError::InvalidTransactionId(_))
    ));
}

#[test]
fn check_back_schedule_counts_and_discard() {
    let mut h = Harness::with_config(config());
    let tx = half(&mut h, T0, "m1");
    assert!(checks(&mut h, T0 + 999, true).orders.is_empty());
    // No producer online: postponed, no check used.
    let p = checks(&mut h, T0 + 1_000, false);
    assert_eq!((p.orders.len(), p.deferred), (0, 1));
    assert_eq!(h.core.transactions().get(0).unwrap().checks, 0);
    let p = checks(&mut h, T0 + 1_100, true);
    assert_eq!(p.orders.len(), 1);
    assert_eq!(p.orders[0].transaction_id, tx);
    assert_eq!(p.orders[0].check, 1);
    // Not again before the interval, even after a crash.
    h.crash_and_recover();
    assert!(checks(&mut h, T0 + 2_000, true).orders.is_empty());
    assert_eq!(h.core.transactions().get(0).unwrap().checks, 1);
    assert_eq!(checks(&mut h, T0 + 2_100, true).orders[0].check, 2);
    // The last check went unanswered: discarded at the next due time.
    let p = checks(&mut h, T0 + 3_100, true);
    assert_eq!((p.orders.len(), p.discarded), (0, 1));
    assert_eq!(h.core.transactions().pending_len(), 0);
    let d: Vec<_> = h.core.transactions().recent_discards().collect();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].checks, 2);
    assert!(d[0].reason.contains("2 check-backs"), "{}", d[0].reason);
    // A late commit is refused; a rollback agrees with the discard.
    assert!(matches!(
        end(
            &mut h,
            T0 + 4_000,
            "m1",
            &tx,
            TxOutcome::Commit,
            TxSource::ServerCheck
        ),
        Err(BrokerError::TransactionConflict(_))
    ));
    assert_eq!(
        end(
            &mut h,
            T0 + 4_000,
            "m1",
            &tx,
            TxOutcome::Rollback,
            TxSource::ServerCheck
        ),
        Ok(EndDecision::AlreadyEnded(TxOutcome::Discard))
    );
    h.crash_and_recover();
    assert!(drain(&mut h, T0 + 5_000).is_empty());
    assert_eq!(h.core.transactions().recent_discards().count(), 1);
}

#[test]
fn check_rounds_respect_their_budget() {
    let mut h = Harness::with_config(config());
    for i in 0..10 {
        half(&mut h, T0, &format!("m{i}"));
    }
    let mut plan = h.core.plan_checks(T0 + 1_000, 3, &mut |_| true);
    assert_eq!(plan.orders.len(), 3);
    for rec in std::mem::take(&mut plan.records) {
        h.commit(rec);
    }
    assert_eq!(
        h.core
            .plan_checks(T0 + 1_000, 100, &mut |_| true)
            .orders
            .len(),
        7
    );
}

#[test]
fn producer_requested_first_check_is_capped() {
    let mut h = Harness::with_config(config());
    let mut m = tx_message("m1");
    m.check_after_ms = Some(10); // below the 1 s floor
    h.store(T0, &m);
    let mut m = tx_message("m2");
    m.check_after_ms = Some(i64::MAX); // above the 1 h cap
    h.store(T0, &m);
    let next: Vec<i64> = h
        .core
        .transactions()
        .pending()
        .map(|x| x.next_check_ms)
        .collect();
    assert_eq!(next, [T0 + 1_000, T0 + 3_600_000]);
    h.crash_and_recover();
    let again: Vec<i64> = h
        .core
        .transactions()
        .pending()
        .map(|x| x.next_check_ms)
        .collect();
    assert_eq!(again, next);
}

#[test]
fn pending_transactions_are_bounded() {
    let mut c = config();
    c.limits.max_pending_transactions = 2;
    let mut h = Harness::with_config(c);
    half(&mut h, T0, "a");
    half(&mut h, T0, "b");
    assert!(matches!(
        h.core.admit_batch(T0, &[tx_message("c")]),
        Err((0, BrokerError::LimitReached(_)))
    ));
}

#[test]
fn pending_timers_are_bounded_for_the_whole_batch() {
    let mut c = config();
    c.limits.max_pending_timers = 2;
    let mut h = Harness::with_config(c);
    h.store(T0, &delayed("a", T0 + 1_000));
    // Two more in one batch: the second would pass the limit, so the batch
    // is refused at its index; a message due now needs no timer.
    let batch = [delayed("b", T0 + 1_000), delayed("c", T0 + 1_000)];
    assert!(matches!(
        h.core.admit_batch(T0, &batch),
        Err((1, BrokerError::LimitReached(_)))
    ));
    assert!(h.core.admit_batch(T0, &[delayed("now", T0)]).is_ok());
    assert!(h.core.admit_batch(T0, &batch[..1]).is_ok());
}

/// Things that can happen to one transaction.
#[derive(Debug, Clone, Copy)]
enum Event {
    EndCommit,
    EndRollback,
    /// A check round runs (a producer is online).
    CheckSent,
    /// The producer's checker answers commit.
    CheckAnswered,
    /// Time runs out: rounds run until the broker gives up.
    Timeout,
    Crash,
}

fn permutations(items: &[Event]) -> Vec<Vec<Event>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first);
            out.push(p);
        }
    }
    out
}

/// Every ordering of the six events ends the way the first accepted
/// resolution said, is refused or answered idempotently afterwards, and
/// looks the same after a crash.
#[test]
fn every_ordering_keeps_the_first_accepted_outcome() {
    use Event::*;
    let all = [
        EndCommit,
        EndRollback,
        CheckSent,
        CheckAnswered,
        Timeout,
        Crash,
    ];
    let orderings = permutations(&all);
    assert_eq!(orderings.len(), 720);
    for order in orderings {
        let mut h = Harness::with_config(config());
        let mut now = T0;
        let tx = half(&mut h, now, "m");
        let mut first: Option<TxOutcome> = None;
        for ev in &order {
            now += 500;
            let asked = match ev {
                EndCommit => Some((TxOutcome::Commit, TxSource::Client)),
                EndRollback => Some((TxOutcome::Rollback, TxSource::Client)),
                CheckAnswered => Some((TxOutcome::Commit, TxSource::ServerCheck)),
                CheckSent => {
                    now += 1_000;
                    let p = checks(&mut h, now, true);
                    if first.is_some() {
                        assert!(
                            p.orders.is_empty(),
                            "{order:?}: resolved transaction checked"
                        );
                    }
                    if p.discarded > 0 {
                        first = Some(TxOutcome::Discard);
                    }
                    None
                }
                Timeout => {
                    for _ in 0..10 {
                        now += 1_000;
                        let p = checks(&mut h, now, true);
                        if p.discarded > 0 {
                            assert!(first.is_none(), "{order:?}: discarded twice");
                            first = Some(TxOutcome::Discard);
                        }
                    }
                    assert!(first.is_some(), "{order:?}: never gave up");
                    None
                }
                Crash => {
                    h.crash_and_recover();
                    None
                }
            };
            let Some((outcome, source)) = asked else {
                continue;
            };
            let got = end(&mut h, now, "m", &tx, outcome, source);
            match first {
                None => {
                    assert!(
                        matches!(got, Ok(EndDecision::Record(_))),
                        "{order:?}: {got:?}"
                    );
                    first = Some(outcome);
                }
                Some(f)
                    if f == outcome
                        || (f == TxOutcome::Discard && outcome == TxOutcome::Rollback) =>
                {
                    assert_eq!(got, Ok(EndDecision::AlreadyEnded(f)), "{order:?}");
                }
                Some(_) => assert!(
                    matches!(got, Err(BrokerError::TransactionConflict(_))),
                    "{order:?}: {got:?}"
                ),
            }
        }
        let first = first.expect("Timeout is in every ordering");
        let expect: Vec<String> = if first == TxOutcome::Commit {
            vec!["m".into()]
        } else {
            vec![]
        };
        assert_eq!(drain(&mut h, now), expect, "{order:?}");
        h.crash_and_recover();
        assert_eq!(h.core.transactions().pending_len(), 0, "{order:?}");
        assert_eq!(message_records(&h), 1, "{order:?}: the body was copied");
        // Delivered exactly once, even after a restart.
        assert!(drain(&mut h, now + 1).is_empty(), "{order:?}");
    }
}

#[test]
fn delayed_messages_fire_at_their_time_and_survive_a_crash() {
    let mut h = Harness::with_config(config());
    for (id, due) in [("late", T0 + 5_000), ("soon", T0 + 1_000), ("past", T0 - 1)] {
        h.store(T0, &delayed(id, due));
    }
    assert_eq!(drain(&mut h, T0), ["past"]);
    assert_eq!(h.fire(T0 + 999), 0);
    assert_eq!(h.core.timers().next_due(), Some(T0 + 1_000));
    assert_eq!(h.fire(T0 + 1_000), 1);
    assert_eq!(drain(&mut h, T0 + 1_000), ["soon"]);
    h.crash_and_recover();
    assert_eq!(h.core.timers().len(), 1);
    assert_eq!(h.fire(T0 + 6_000), 1);
    assert_eq!(drain(&mut h, T0 + 6_000), ["late"]);
    h.crash_and_recover();
    assert!(drain(&mut h, T0 + 7_000).is_empty());
    assert!(h.core.timers().is_empty());
    assert_eq!(message_records(&h), 3);
}

#[test]
fn delivery_time_too_far_ahead_is_refused() {
    let h = Harness::with_config(config());
    let mut m = delayed("m", T0 + 7 * 24 * 3600 * 1000 + 1);
    assert!(matches!(
        h.core.admit_batch(T0, std::slice::from_ref(&m)),
        Err((0, BrokerError::IllegalDeliveryTime(_)))
    ));
    m.delivery_timestamp_ms = Some(T0 + 7 * 24 * 3600 * 1000);
    assert!(
        h.core.admit_batch(T0, &[m]).is_ok(),
        "7 days exactly is allowed"
    );
}

#[test]
fn a_committed_transaction_with_a_delivery_time_fires_then() {
    let mut h = Harness::with_config(config());
    let mut m = tx_message("m");
    m.delivery_timestamp_ms = Some(T0 + 5_000);
    let at = h.store(T0, &m);
    let tx = transaction::transaction_id(at);
    end(
        &mut h,
        T0 + 100,
        "m",
        &tx,
        TxOutcome::Commit,
        TxSource::Client,
    )
    .unwrap();
    assert!(drain(&mut h, T0 + 200).is_empty());
    assert_eq!(h.core.timers().len(), 1);
    h.crash_and_recover();
    assert_eq!(h.fire(T0 + 4_999), 0);
    assert_eq!(h.fire(T0 + 5_000), 1);
    assert_eq!(drain(&mut h, T0 + 5_000), ["m"]);
    // Committed after its time: deliverable at once.
    let mut m = tx_message("m2");
    m.delivery_timestamp_ms = Some(T0 + 6_000);
    let tx = transaction::transaction_id(h.store(T0 + 5_000, &m));
    end(
        &mut h,
        T0 + 7_000,
        "m2",
        &tx,
        TxOutcome::Commit,
        TxSource::Client,
    )
    .unwrap();
    assert_eq!(drain(&mut h, T0 + 7_000), ["m2"]);
}

#[test]
fn a_committed_transaction_joins_its_message_group_in_commit_order() {
    let mut h = Harness::with_config(config());
    let fifo = |id: &str| {
        let mut m = incoming(id, None, 1);
        m.kind = MessageKind::Fifo;
        m.message_group = Some("order-7".into());
        m
    };
    h.store(T0, &fifo("created"));
    let mut m = fifo("paid");
    m.kind = MessageKind::Transaction;
    let tx = transaction::transaction_id(h.store(T0, &m));
    // Sent after the half message, but committed before it.
    h.store(T0, &fifo("noted"));
    end(&mut h, T0, "paid", &tx, TxOutcome::Commit, TxSource::Client).unwrap();
    h.store(T0, &fifo("shipped"));
    h.crash_and_recover();
    let got = h.receive(T0, "g", &Filter::All, 32, 60_000);
    // One message group, one queue (the broker picks it from the group).
    assert!(got.iter().all(|d| d.queue_id == got[0].queue_id));
    let offsets: Vec<u64> = got.iter().map(|d| d.queue_offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3]);
    let ids: Vec<String> = got
        .iter()
        .map(|d| {
            let (_, _, rec) = h.log.iter().find(|(o, _, _)| *o == d.log_offset).unwrap();
            match &rec.payload {
                Payload::Message(m) => {
                    assert_eq!(m.message_group.as_deref(), Some("order-7"));
                    m.message_id.clone()
                }
                _ => unreachable!(),
            }
        })
        .collect();
    assert_eq!(ids, ["created", "noted", "paid", "shipped"]);
}

#[test]
fn retention_keeps_pending_halves_and_timers_and_drops_late_entries() {
    let mut h = Harness::with_config(config());
    let tx = half(&mut h, T0, "h");
    assert_eq!(h.core.pinned_offset(), Some(0));
    let timer_at = h.store(T0, &delayed("d", T0 + 1_000));
    h.send(T0, "n", None, 1);
    let n_at = h.log.last().unwrap().0;
    end(&mut h, T0, "h", &tx, TxOutcome::Commit, TxSource::Client).unwrap();
    assert_eq!(h.core.pinned_offset(), Some(timer_at));
    h.fire(T0 + 1_000);
    assert_eq!(h.core.pinned_offset(), None);
    // Queue 1 now holds "n", then the committed "h" whose record lies
    // further back in the log. Cutting below "n" must drop "h" (its record
    // is gone) though it is not at the front of the queue.
    let losses = h.core.prune_below(n_at);
    assert!(losses.is_empty(), "no group had started: {losses:?}");
    assert_eq!(drain(&mut h, T0 + 1_000), ["n"]);
}

#[test]
fn a_delayed_message_can_be_recalled_until_it_fires() {
    let mut h = Harness::with_config(config());
    let a = recall_handle(h.store(T0, &delayed("a", T0 + 1_000)));
    let b = recall_handle(h.store(T0, &delayed("b", T0 + 1_000)));
    let (rec, id) = h.core.plan_recall(T0 + 10, "t", &a).unwrap();
    assert_eq!(id, "a");
    h.commit(rec);
    assert!(matches!(
        h.core.plan_recall(T0 + 20, "t", &a),
        Err(BrokerError::NotFound(_))
    ));
    assert!(matches!(
        h.core.plan_recall(T0 + 20, "other", &b),
        Err(BrokerError::NotFound(_))
    ));
    assert!(matches!(
        h.core.plan_recall(T0 + 20, "t", "nonsense"),
        Err(BrokerError::BadRequest(_))
    ));
    h.crash_and_recover();
    assert_eq!(h.fire(T0 + 1_000), 1);
    assert_eq!(drain(&mut h, T0 + 1_000), ["b"]);
    // Fired: too late to recall.
    assert!(matches!(
        h.core.plan_recall(T0 + 1_001, "t", &b),
        Err(BrokerError::NotFound(_))
    ));
}
