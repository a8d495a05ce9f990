//! The offline checker: reads every worker's history and says what the
//! broker did wrong, if anything, with the figures of the run.
//!
//! Only what the history proves is held against the broker: a send whose
//! outcome is unknown (the call failed without a refusal) may or may not
//! be delivered; a send answered OK must be. Each rule below is one
//! [`Violation`] kind; a run passes when there are none.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::history::{Event, Kind, Line, TxPlan};

/// What one key's history holds.
#[derive(Default)]
struct KeyHistory {
    kind: Option<Kind>,
    group: Option<String>,
    seq: u64,
    plan: Option<TxPlan>,
    deliver_at_ms: Option<i64>,
    sends: usize,
    /// Message ids the broker acknowledged for this key.
    stored: Vec<String>,
    refused: usize,
    unknown: usize,
    locals: Vec<bool>,
    ends_ok: Vec<bool>,
    /// Outcomes sent in an end, acknowledged or not.
    ends_sent: Vec<bool>,
    checks: Vec<String>,
    deliveries: Vec<Delivery>,
}

/// A stored message: its id and where the broker holds it.
type Copy = (String, i32, Option<i64>);

#[derive(Clone)]
struct Delivery {
    group: String,
    copy: Copy,
    attempt: u32,
    at_ms: i64,
    intact: bool,
}

/// One broken promise, with the key it concerns.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub kind: &'static str,
    pub key: String,
    pub detail: String,
}

/// The figures of a run and every violation found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub worker_starts: usize,
    pub torn_history_lines: usize,
    pub sends: u64,
    pub acknowledged: u64,
    pub acknowledged_by_kind: BTreeMap<String, u64>,
    pub refused: u64,
    pub unknown_outcomes: u64,
    pub deliveries: u64,
    pub keys_delivered: u64,
    /// Deliveries of a message id the group had already received
    /// (un-acked, or its ack not yet durable): the redelivery contract.
    pub redeliveries: u64,
    /// Keys stored more than once because the producer sent them again
    /// after an unknown outcome.
    pub stored_twice: u64,
    /// Acknowledged sends never delivered. Must be 0.
    pub acknowledged_lost: u64,
    pub fifo_groups: u64,
    pub delayed_delivered: u64,
    pub delayed_lateness_p99_ms: i64,
    pub delayed_lateness_max_ms: i64,
    pub tx_started: u64,
    pub tx_committed_delivered: u64,
    pub tx_not_delivered: u64,
    pub tx_late_contradicted: u64,
    pub tx_replayed_ends: u64,
    pub tx_silent: u64,
    pub violations_by_kind: BTreeMap<String, u64>,
    pub violations: Vec<Violation>,
}

/// Most violations listed one by one (all are counted).
const LISTED: usize = 200;

impl Report {
    fn violate(&mut self, kind: &'static str, key: &str, detail: String) {
        *self.violations_by_kind.entry(kind.to_string()).or_default() += 1;
        if self.violations.len() < LISTED {
            self.violations.push(Violation {
                kind,
                key: key.to_string(),
                detail,
            });
        }
    }

    pub fn violation_count(&self) -> u64 {
        self.violations_by_kind.values().sum()
    }
}

/// Checks the histories of one run.
pub fn check(files: &[(String, Vec<Line>)], torn: usize) -> Report {
    let mut report = Report {
        torn_history_lines: torn,
        ..Report::default()
    };
    let mut keys: HashMap<String, KeyHistory> = HashMap::new();
    // Per consumer group, in the order its consumer saw them.
    let mut by_group: HashMap<String, Vec<(String, Delivery)>> = HashMap::new();
    let mut acked: HashSet<(String, Copy)> = HashSet::new();
    for (_, lines) in files {
        for line in lines {
            match &line.event {
                Event::Start { .. } => report.worker_starts += 1,
                Event::Send {
                    key,
                    kind,
                    group,
                    seq,
                    deliver_at_ms,
                    plan,
                } => {
                    let k = keys.entry(key.clone()).or_default();
                    k.kind = Some(*kind);
                    k.group.clone_from(group);
                    k.seq = *seq;
                    k.plan = *plan;
                    if k.deliver_at_ms.is_none() {
                        k.deliver_at_ms = *deliver_at_ms;
                    }
                    k.sends += 1;
                    report.sends += 1;
                }
                Event::SendOk {
                    key, message_id, ..
                } => keys
                    .entry(key.clone())
                    .or_default()
                    .stored
                    .push(message_id.clone()),
                Event::SendFailed { key, refused, .. } => {
                    let k = keys.entry(key.clone()).or_default();
                    if *refused {
                        k.refused += 1;
                    } else {
                        k.unknown += 1;
                    }
                }
                Event::Local { key, commit } => {
                    keys.entry(key.clone()).or_default().locals.push(*commit)
                }
                Event::EndOk { key, commit } => {
                    let k = keys.entry(key.clone()).or_default();
                    k.ends_ok.push(*commit);
                    k.ends_sent.push(*commit);
                }
                Event::EndFailed { key, commit, .. } => {
                    keys.entry(key.clone()).or_default().ends_sent.push(*commit)
                }
                Event::Check { key, answer } => keys
                    .entry(key.clone())
                    .or_default()
                    .checks
                    .push(answer.clone()),
                Event::Delivered {
                    group,
                    key,
                    message_id,
                    queue_id,
                    queue_offset,
                    attempt,
                    intact,
                } => {
                    let copy = (message_id.clone(), *queue_id, *queue_offset);
                    let d = Delivery {
                        group: group.clone(),
                        copy: copy.clone(),
                        attempt: *attempt,
                        at_ms: line.at_ms,
                        intact: *intact,
                    };
                    if acked.contains(&(group.clone(), copy)) {
                        report.violate(
                            "delivered_after_ack",
                            key,
                            format!("message {message_id} delivered to {group} (attempt {attempt}) after its ack was answered OK"),
                        );
                    }
                    keys.entry(key.clone())
                        .or_default()
                        .deliveries
                        .push(d.clone());
                    by_group
                        .entry(group.clone())
                        .or_default()
                        .push((key.clone(), d));
                    report.deliveries += 1;
                }
                Event::Acked {
                    group,
                    message_id,
                    queue_id,
                    queue_offset,
                    ok: true,
                    ..
                } => {
                    acked.insert((
                        group.clone(),
                        (message_id.clone(), *queue_id, *queue_offset),
                    ));
                }
                Event::Acked { .. } | Event::Skipped { .. } => {}
            }
        }
    }

    let mut lateness = Vec::new();
    let mut sorted: Vec<(&String, &KeyHistory)> = keys.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (key, k) in sorted {
        report.refused += k.refused as u64;
        report.unknown_outcomes += k.unknown as u64;
        let Some(kind) = k.kind else {
            for d in &k.deliveries {
                report.violate(
                    "unexpected",
                    key,
                    format!("delivered to {} as {} but never sent", d.group, d.copy.0),
                );
            }
            continue;
        };
        if !k.stored.is_empty() {
            report.acknowledged += 1;
            *report
                .acknowledged_by_kind
                .entry(kind.name().to_string())
                .or_default() += 1;
        }
        if !k.deliveries.is_empty() {
            report.keys_delivered += 1;
        }
        for d in k.deliveries.iter().filter(|d| !d.intact) {
            report.violate(
                "corrupt_delivery",
                key,
                format!(
                    "message {} delivered with a body that is not the one sent",
                    d.copy.0
                ),
            );
        }
        // Copies and redeliveries. A copy under the same message id is the
        // client's own resend after a lost answer (RocketMQ clients resend
        // with the same id); a copy under another id needs a second send.
        let mut copies: HashSet<&Copy> = HashSet::new();
        for d in &k.deliveries {
            if !copies.insert(&d.copy) {
                report.redeliveries += 1;
            }
        }
        let ids: HashSet<&str> = copies.iter().map(|c| c.0.as_str()).collect();
        if copies.len() > 1 {
            if kind == Kind::Tx {
                report.violate(
                    "tx_delivered_twice",
                    key,
                    format!(
                        "one transaction delivered as {} stored messages",
                        copies.len()
                    ),
                );
            } else if ids.len() > k.sends {
                report.violate(
                    "unexplained_copy",
                    key,
                    format!(
                        "{} message ids stored for a key sent {} times",
                        ids.len(),
                        k.sends
                    ),
                );
            } else {
                report.stored_twice += (copies.len() - 1) as u64;
            }
        }
        match kind {
            Kind::Plain | Kind::Fifo | Kind::Delayed => {
                if !k.stored.is_empty() && k.deliveries.is_empty() {
                    report.acknowledged_lost += 1;
                    report.violate(
                        "acknowledged_lost",
                        key,
                        format!("stored as {:?}, never delivered", k.stored),
                    );
                }
                if kind == Kind::Delayed {
                    if let (Some(at), Some(first)) = (k.deliver_at_ms, k.deliveries.first()) {
                        report.delayed_delivered += 1;
                        lateness.push(first.at_ms - at);
                        for d in k.deliveries.iter().filter(|d| d.at_ms < at) {
                            report.violate(
                                "delivered_early",
                                key,
                                format!("due at {at} ms, delivered at {} ms", d.at_ms),
                            );
                        }
                    }
                }
            }
            Kind::Tx => check_transaction(&mut report, key, k),
        }
    }
    check_fifo(&mut report, &keys, &by_group);
    lateness.sort_unstable();
    if let Some(&max) = lateness.last() {
        report.delayed_lateness_max_ms = max;
        report.delayed_lateness_p99_ms =
            lateness[(lateness.len() * 99 / 100).min(lateness.len() - 1)];
    }
    report
}

/// The transaction rules: the broker's outcome is one the producer or its
/// checker sent; an end answered OK is the outcome; a committed local
/// transaction nobody contradicted is delivered; a silent one never is.
fn check_transaction(report: &mut Report, key: &str, k: &KeyHistory) {
    report.tx_started += 1;
    let delivered = !k.deliveries.is_empty();
    let commit_sent = k.ends_sent.contains(&true) || k.checks.iter().any(|c| c == "commit");
    let rollback_answered = k.checks.iter().any(|c| c == "rollback");
    if delivered {
        report.tx_committed_delivered += 1;
    } else {
        report.tx_not_delivered += 1;
    }
    if k.plan == Some(TxPlan::Replayed) && k.ends_ok.len() > 1 {
        report.tx_replayed_ends += 1;
    }
    if k.plan == Some(TxPlan::Late) && rollback_answered && k.locals.contains(&true) {
        report.tx_late_contradicted += 1;
    }
    if k.plan == Some(TxPlan::Silent) {
        report.tx_silent += 1;
        if delivered {
            report.violate(
                "tx_silent_delivered",
                key,
                "a transaction nobody ended was delivered".into(),
            );
        }
    }
    if delivered && !commit_sent {
        report.violate(
            "tx_delivered_without_commit",
            key,
            format!(
                "delivered, but only these outcomes were sent: ends {:?}, checks {:?}",
                k.ends_sent, k.checks
            ),
        );
    }
    if k.ends_ok.contains(&true) && k.ends_ok.contains(&false) {
        report.violate(
            "tx_both_acknowledged",
            key,
            "the broker answered OK to both a commit and a rollback".into(),
        );
    }
    if k.ends_ok.contains(&true) && !delivered {
        report.violate(
            "tx_commit_acknowledged_lost",
            key,
            "commit answered OK, never delivered".into(),
        );
    }
    if k.ends_ok.contains(&false) && delivered {
        report.violate(
            "tx_rollback_acknowledged_delivered",
            key,
            "rollback answered OK, yet delivered".into(),
        );
    }
    let committed_locally = !k.stored.is_empty() && k.locals.contains(&true);
    if committed_locally && k.plan != Some(TxPlan::Silent) && !rollback_answered && !delivered {
        report.violate(
            "tx_committed_lost",
            key,
            "committed locally, no rollback was ever answered, never delivered".into(),
        );
    }
}

/// FIFO: per message group, a consumer group never goes back to an
/// earlier message once it saw a later one, and never skips one that was
/// stored.
fn check_fifo(
    report: &mut Report,
    keys: &HashMap<String, KeyHistory>,
    by_group: &HashMap<String, Vec<(String, Delivery)>>,
) {
    let mut groups: HashSet<String> = HashSet::new();
    for (consumer_group, deliveries) in by_group {
        // Highest sequence number delivered so far, per message group.
        let mut highest: HashMap<&str, u64> = HashMap::new();
        for (key, d) in deliveries {
            let Some(k) = keys.get(key) else { continue };
            let (Some(Kind::Fifo), Some(mg)) = (k.kind, k.group.as_deref()) else {
                continue;
            };
            groups.insert(mg.to_string());
            let seq = k.seq;
            match highest.get(mg).copied() {
                Some(h) if seq < h => report.violate(
                    "fifo_order",
                    key,
                    format!(
                        "{consumer_group} got #{seq} of {mg} (message {}, attempt {}) after #{h}",
                        d.copy.0, d.attempt
                    ),
                ),
                Some(h) if seq > h + 1 => report.violate(
                    "fifo_gap",
                    key,
                    format!("{consumer_group} got #{seq} of {mg} right after #{h}"),
                ),
                None if seq > 0 => report.violate(
                    "fifo_gap",
                    key,
                    format!("{consumer_group} got #{seq} of {mg} first"),
                ),
                _ => {}
            }
            let h = highest.entry(mg).or_insert(seq);
            *h = (*h).max(seq);
        }
    }
    report.fifo_groups = groups.len() as u64;
}

/// Silent transactions (never ended, every check answered "unknown")
/// whose half message the broker lists as discarded.
pub fn silent_discarded(files: &[(String, Vec<Line>)], discarded: &HashSet<String>) -> u64 {
    let mut silent: HashSet<&str> = HashSet::new();
    let mut n = 0;
    for (_, lines) in files {
        for line in lines {
            match &line.event {
                Event::Send {
                    key,
                    plan: Some(TxPlan::Silent),
                    ..
                } => {
                    silent.insert(key);
                }
                Event::SendOk {
                    key, message_id, ..
                } if silent.contains(key.as_str()) && discarded.contains(message_id) => n += 1,
                _ => {}
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(event: Event) -> Line {
        Line { at_ms: 1000, event }
    }

    fn send(key: &str, kind: Kind) -> Line {
        line(Event::Send {
            key: key.into(),
            kind,
            group: None,
            seq: 0,
            deliver_at_ms: None,
            plan: None,
        })
    }

    fn ok(key: &str, id: &str) -> Line {
        line(Event::SendOk {
            key: key.into(),
            message_id: id.into(),
            transaction_id: None,
        })
    }

    fn delivered(key: &str, id: &str) -> Line {
        line(Event::Delivered {
            group: "g".into(),
            key: key.into(),
            message_id: id.into(),
            queue_id: 0,
            queue_offset: Some(0),
            attempt: 1,
            intact: true,
        })
    }

    #[test]
    fn an_acknowledged_send_never_delivered_is_lost() {
        let files = vec![("w".to_string(), vec![send("a", Kind::Plain), ok("a", "m1")])];
        let r = check(&files, 0);
        assert_eq!(r.acknowledged_lost, 1);
        assert_eq!(r.violations_by_kind["acknowledged_lost"], 1);
    }

    #[test]
    fn unknown_outcomes_may_be_missing_and_delivered_twice_when_resent() {
        let files = vec![(
            "w".to_string(),
            vec![
                send("a", Kind::Plain),
                line(Event::SendFailed {
                    key: "a".into(),
                    refused: false,
                    error: "timeout".into(),
                }),
                send("a", Kind::Plain),
                ok("a", "m2"),
                delivered("a", "m1"),
                delivered("a", "m2"),
                send("b", Kind::Plain),
                line(Event::SendFailed {
                    key: "b".into(),
                    refused: false,
                    error: "timeout".into(),
                }),
            ],
        )];
        let r = check(&files, 0);
        assert_eq!(r.violation_count(), 0, "{:?}", r.violations);
        assert_eq!(r.stored_twice, 1);
    }

    #[test]
    fn a_delivery_after_an_acknowledged_ack_and_a_foreign_key_are_caught() {
        let files = vec![(
            "w".to_string(),
            vec![
                send("a", Kind::Plain),
                ok("a", "m1"),
                delivered("a", "m1"),
                line(Event::Acked {
                    group: "g".into(),
                    key: "a".into(),
                    message_id: "m1".into(),
                    queue_id: 0,
                    queue_offset: Some(0),
                    ok: true,
                }),
                delivered("a", "m1"),
                delivered("zzz", "m9"),
            ],
        )];
        let r = check(&files, 0);
        assert_eq!(r.violations_by_kind["delivered_after_ack"], 1);
        assert_eq!(r.violations_by_kind["unexpected"], 1);
    }

    #[test]
    fn transaction_rules() {
        let tx = |key: &str, plan| {
            line(Event::Send {
                key: key.into(),
                kind: Kind::Tx,
                group: None,
                seq: 0,
                deliver_at_ms: None,
                plan: Some(plan),
            })
        };
        let end_ok = |key: &str, commit| {
            line(Event::EndOk {
                key: key.into(),
                commit,
            })
        };
        let local = |key: &str, commit| {
            line(Event::Local {
                key: key.into(),
                commit,
            })
        };
        let files = vec![(
            "w".to_string(),
            vec![
                // Rolled back, acknowledged, yet delivered.
                tx("r", TxPlan::Prompt),
                ok("r", "m1"),
                local("r", false),
                end_ok("r", false),
                delivered("r", "m1"),
                // Committed locally and acknowledged, never delivered.
                tx("c", TxPlan::Prompt),
                ok("c", "m2"),
                local("c", true),
                end_ok("c", true),
                // Silent, delivered.
                tx("s", TxPlan::Silent),
                ok("s", "m3"),
                delivered("s", "m3"),
                // Late, contradicted by the check: not delivered is right.
                tx("l", TxPlan::Late),
                ok("l", "m4"),
                line(Event::Check {
                    key: "l".into(),
                    answer: "rollback".into(),
                }),
                local("l", true),
            ],
        )];
        let r = check(&files, 0);
        let v = &r.violations_by_kind;
        assert_eq!(v["tx_rollback_acknowledged_delivered"], 1);
        assert_eq!(v["tx_commit_acknowledged_lost"], 1);
        assert_eq!(v["tx_committed_lost"], 1);
        assert_eq!(v["tx_silent_delivered"], 1);
        assert_eq!(v["tx_delivered_without_commit"], 2);
        assert_eq!(r.tx_late_contradicted, 1);
    }

    #[test]
    fn fifo_going_back_or_skipping_is_caught() {
        let fifo = |key: &str, seq| {
            line(Event::Send {
                key: key.into(),
                kind: Kind::Fifo,
                group: Some("mg".into()),
                seq,
                deliver_at_ms: None,
                plan: None,
            })
        };
        let files = vec![(
            "w".to_string(),
            vec![
                fifo("f0", 0),
                ok("f0", "m0"),
                fifo("f1", 1),
                ok("f1", "m1"),
                fifo("f2", 2),
                ok("f2", "m2"),
                delivered("f0", "m0"),
                delivered("f2", "m2"),
                delivered("f1", "m1"),
            ],
        )];
        let r = check(&files, 0);
        assert_eq!(r.violations_by_kind["fifo_gap"], 1);
        assert_eq!(r.violations_by_kind["fifo_order"], 1);
    }
}
