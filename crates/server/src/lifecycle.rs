//! A message's history, read back from the commit log.
//!
//! The core keeps only where a message stands *now*; how it got there —
//! each delivery, renewal, check-back, the dead letter — is spread over the
//! records after it. [`scan`] reads the log forward once from the oldest
//! message asked about and picks out, for every one of them at once, the
//! records that concern it, in log order:
//!
//! * by the message's log offset: its own record, a transaction's checks
//!   and end (`TxCheck`, `TxEnd`), its timer firing or recall (`Fire`,
//!   `Recall`), its dead letters (`DeadLetter`);
//! * by its place in its topic `(topic, queue, queue offset)` once it has
//!   one — from its own record, its commit or its timer: deliveries,
//!   renewals, acknowledgements and re-drives (`Deliver`, `Renew`, `Ack`,
//!   `Redrive`);
//! * its topic's deletion (`TopicDelete`), after which that place belongs to
//!   whatever the re-created topic puts there, so nothing more is matched by
//!   place.
//!
//! The scan reads at most [`LIFECYCLE_SCAN_BUDGET`] bytes: a lookup of an
//! old message in a large log answers with the history it found and says
//! it is incomplete, rather than reading the disk for minutes. Only records
//! that are committed are read, and no core lock is held while reading.

use std::collections::HashMap;

use ferry_broker::{placement, Placement};
use ferry_record::{MessageRecord, Payload, Record, TxOutcome, TxSource};
use ferry_store::{Log, ScanEnd, StoreError};
use serde::Serialize;

/// Most log bytes one lookup reads for histories (512 MiB): about a second
/// of disk and checksum work, enough for hours of history on a busy broker,
/// and a bound on what one admin request can cost.
pub const LIFECYCLE_SCAN_BUDGET: u64 = 512 << 20;

/// Most events kept per message; later ones are counted, not listed (a
/// message in flight for a thousand groups would otherwise make the answer
/// unbounded).
pub const MAX_EVENTS: usize = 1_000;

/// One thing that happened to a message: when (the record's time), which
/// record, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub at_ms: i64,
    pub log_offset: u64,
    #[serde(flatten)]
    pub what: What,
}

/// Serialized as `"event": "<name>"` plus the fields of the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum What {
    /// Stored and indexed in its queue at once.
    Stored,
    /// Stored as a half message, waiting for its transaction's outcome.
    HalfStored,
    /// Waiting for its delivery time (stored delayed, or committed before
    /// its delivery time).
    TimerScheduled {
        due_ms: Option<i64>,
    },
    /// Check-back number `check` was sent; the next is due then.
    Checked {
        check: u32,
        next_check_ms: i64,
    },
    Committed {
        source: &'static str,
        queue_id: u32,
        /// `None`: committed before its delivery time, so it became a timer.
        queue_offset: Option<u64>,
    },
    RolledBack {
        source: &'static str,
        reason: String,
    },
    Discarded {
        source: &'static str,
        reason: String,
    },
    Fired {
        queue_id: u32,
        queue_offset: u64,
    },
    Recalled,
    Delivered {
        group: String,
        attempt: u32,
        visible_at_ms: i64,
        /// The consumer client it went to (`None` in records written before
        /// deliveries named their client).
        #[serde(skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    Renewed {
        group: String,
        visible_at_ms: i64,
    },
    Acked {
        group: String,
    },
    DeadLettered {
        group: String,
        attempts: u32,
        dlq_offset: u64,
    },
    Redriven {
        group: String,
    },
    TopicDeleted,
}

/// The name a transaction source has in answers.
pub fn source_name(s: TxSource) -> &'static str {
    match s {
        TxSource::Client => "client",
        TxSource::ServerCheck => "server_check",
        TxSource::CheckLimit => "check_limit",
    }
}

/// What the scan found for one message.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub events: Vec<Event>,
    /// Events past [`MAX_EVENTS`], counted only.
    pub omitted: usize,
    /// Its place in its topic, as the log tells it (kept after a deletion
    /// of the topic: it is where the message was).
    pub position: Option<(u32, u64)>,
}

impl History {
    fn push(&mut self, rec: &Record, log_offset: u64, what: What) {
        if self.events.len() >= MAX_EVENTS {
            self.omitted += 1;
        } else {
            self.events.push(Event {
                at_ms: rec.timestamp_ms,
                log_offset,
                what,
            });
        }
    }

    /// The transaction's end, if the scan saw it.
    pub fn tx_end(&self) -> Option<&Event> {
        self.events.iter().find(|e| {
            matches!(
                e.what,
                What::Committed { .. } | What::RolledBack { .. } | What::Discarded { .. }
            )
        })
    }

    pub fn saw(&self, f: impl Fn(&What) -> bool) -> bool {
        self.events.iter().any(|e| f(&e.what))
    }
}

/// A message whose history is wanted.
pub struct Wanted<'a> {
    pub log_offset: u64,
    pub message: &'a MessageRecord,
}

/// Matches records to the wanted messages as the scan hands them over.
struct Tracker<'a> {
    wanted: &'a [Wanted<'a>],
    histories: Vec<History>,
    by_offset: HashMap<u64, usize>,
    /// topic → (queue, queue offset) → which wanted message sits there now.
    by_place: HashMap<&'a str, HashMap<(u32, u64), usize>>,
    /// Wanted messages whose topic was deleted: no place is theirs any more.
    gone: Vec<bool>,
}

impl<'a> Tracker<'a> {
    fn new(wanted: &'a [Wanted<'a>]) -> Self {
        Tracker {
            wanted,
            histories: vec![History::default(); wanted.len()],
            by_offset: wanted
                .iter()
                .enumerate()
                .map(|(i, w)| (w.log_offset, i))
                .collect(),
            by_place: HashMap::new(),
            gone: vec![false; wanted.len()],
        }
    }

    fn place(&mut self, i: usize, queue_id: u32, queue_offset: u64) {
        if self.gone[i] {
            return;
        }
        self.histories[i].position = Some((queue_id, queue_offset));
        let topic = self.wanted[i].message.topic.as_str();
        self.by_place
            .entry(topic)
            .or_default()
            .insert((queue_id, queue_offset), i);
    }

    fn at_place(&self, topic: &str, queue_id: u32, queue_offset: u64) -> Option<usize> {
        self.by_place
            .get(topic)?
            .get(&(queue_id, queue_offset))
            .copied()
    }

    fn see(&mut self, offset: u64, rec: &Record) {
        let by_offset = |o: u64| self.by_offset.get(&o).copied();
        match &rec.payload {
            Payload::Message(m) => {
                let Some(i) = by_offset(offset) else { return };
                match placement(m.message_type, m.delivery_timestamp_ms, rec.timestamp_ms) {
                    Placement::Queue => {
                        self.histories[i].push(rec, offset, What::Stored);
                        self.place(i, m.queue_id, m.queue_offset);
                    }
                    Placement::Half => self.histories[i].push(rec, offset, What::HalfStored),
                    Placement::Timer => {
                        self.histories[i].push(rec, offset, What::Stored);
                        let due_ms = m.delivery_timestamp_ms;
                        self.histories[i].push(rec, offset, What::TimerScheduled { due_ms });
                    }
                }
            }
            Payload::TxCheck(c) => {
                if let Some(i) = by_offset(c.half_offset) {
                    let what = What::Checked {
                        check: c.checks,
                        next_check_ms: c.next_check_ms,
                    };
                    self.histories[i].push(rec, offset, what);
                }
            }
            Payload::TxEnd(t) => {
                let Some(i) = by_offset(t.half_offset) else {
                    return;
                };
                let source = source_name(t.source);
                let what = match t.outcome {
                    TxOutcome::Commit => What::Committed {
                        source,
                        queue_id: t.queue_id,
                        queue_offset: t.queue_offset,
                    },
                    TxOutcome::Rollback => What::RolledBack {
                        source,
                        reason: t.reason.clone(),
                    },
                    TxOutcome::Discard => What::Discarded {
                        source,
                        reason: t.reason.clone(),
                    },
                };
                self.histories[i].push(rec, offset, what);
                match (t.outcome, t.queue_offset) {
                    (TxOutcome::Commit, Some(q)) => self.place(i, t.queue_id, q),
                    (TxOutcome::Commit, None) => {
                        let due_ms = self.wanted[i].message.delivery_timestamp_ms;
                        self.histories[i].push(rec, offset, What::TimerScheduled { due_ms });
                    }
                    _ => {}
                }
            }
            Payload::Fire(f) => {
                if let Some(i) = by_offset(f.message_offset) {
                    let what = What::Fired {
                        queue_id: f.queue_id,
                        queue_offset: f.queue_offset,
                    };
                    self.histories[i].push(rec, offset, what);
                    self.place(i, f.queue_id, f.queue_offset);
                }
            }
            Payload::Recall(r) => {
                if let Some(i) = by_offset(r.message_offset) {
                    self.histories[i].push(rec, offset, What::Recalled);
                }
            }
            Payload::DeadLetter(d) => {
                if let Some(i) = by_offset(d.message_offset) {
                    let what = What::DeadLettered {
                        group: d.group.clone(),
                        attempts: d.attempts,
                        dlq_offset: d.dlq_queue_offset,
                    };
                    self.histories[i].push(rec, offset, what);
                }
            }
            Payload::Deliver(d) => {
                if let Some(i) = self.at_place(&d.topic, d.queue_id, d.queue_offset) {
                    let what = What::Delivered {
                        group: d.group.clone(),
                        attempt: d.attempt,
                        visible_at_ms: d.visible_at_ms,
                        client: d.client.clone(),
                    };
                    self.histories[i].push(rec, offset, what);
                }
            }
            Payload::Renew(r) => {
                if let Some(i) = self.at_place(&r.topic, r.queue_id, r.queue_offset) {
                    let what = What::Renewed {
                        group: r.group.clone(),
                        visible_at_ms: r.visible_at_ms,
                    };
                    self.histories[i].push(rec, offset, what);
                }
            }
            Payload::Ack(a) => {
                if let Some(i) = self.at_place(&a.topic, a.queue_id, a.queue_offset) {
                    let what = What::Acked {
                        group: a.group.clone(),
                    };
                    self.histories[i].push(rec, offset, what);
                }
            }
            Payload::Redrive(r) => {
                if let Some(i) = self.at_place(&r.topic, r.queue_id, r.queue_offset) {
                    let what = What::Redriven {
                        group: r.group.clone(),
                    };
                    self.histories[i].push(rec, offset, what);
                }
            }
            Payload::TopicDelete(d) => {
                for i in 0..self.wanted.len() {
                    // Only messages stored before the deletion belonged to
                    // the deleted topic.
                    let w = &self.wanted[i];
                    if w.message.topic == d.topic && w.log_offset < offset && !self.gone[i] {
                        self.gone[i] = true;
                        self.histories[i].push(rec, offset, What::TopicDeleted);
                    }
                }
                self.by_place.remove(d.topic.as_str());
            }
        }
    }
}

/// Reads the log once from the oldest wanted message on, within
/// [`LIFECYCLE_SCAN_BUDGET`] (or `budget`), and returns each message's
/// history (in the order asked) and how far the scan got. Blocking: call it
/// from a blocking thread.
pub fn scan(
    log: &Log,
    wanted: &[Wanted<'_>],
    budget: u64,
) -> Result<(Vec<History>, ScanEnd), StoreError> {
    let Some(from) = wanted.iter().map(|w| w.log_offset).min() else {
        let end = ScanEnd {
            scanned_to: 0,
            complete: true,
            bytes: 0,
            skipped: 0,
        };
        return Ok((Vec::new(), end));
    };
    let mut tracker = Tracker::new(wanted);
    let end = log.scan(from, budget, &mut |offset, _, rec| tracker.see(offset, rec))?;
    Ok((tracker.histories, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferry_record::{AckRecord, DeliverRecord, TopicDeleteRecord};
    use ferry_store::LogConfig;

    fn message(id: &str) -> MessageRecord {
        MessageRecord {
            topic: "t".into(),
            queue_id: 0,
            queue_offset: 0,
            message_id: id.into(),
            message_type: 1,
            body_encoding: 1,
            tag: None,
            keys: vec![],
            message_group: None,
            delivery_timestamp_ms: None,
            check_after_ms: None,
            born_timestamp_ms: 0,
            born_host: "h".into(),
            properties: vec![],
            body: Bytes::from_static(b"x"),
        }
    }

    fn rec(payload: Payload) -> Record {
        Record {
            term: 0,
            timestamp_ms: 7,
            payload,
        }
    }

    fn deliver(group: &str) -> Payload {
        Payload::Deliver(DeliverRecord {
            group: group.into(),
            topic: "t".into(),
            queue_id: 0,
            queue_offset: 0,
            attempt: 1,
            handle: 1,
            visible_at_ms: 9,
            cursor: 1,
            client: Some("consumer-1".into()),
        })
    }

    fn names(h: &History) -> Vec<&'static str> {
        h.events
            .iter()
            .map(|e| match e.what {
                What::Stored => "stored",
                What::Delivered { .. } => "delivered",
                What::Acked { .. } => "acked",
                What::TopicDeleted => "topic_deleted",
                _ => "other",
            })
            .collect()
    }

    /// A place reused by a re-created topic belongs to the new message:
    /// the old one's history ends with the deletion.
    #[tokio::test]
    async fn a_deletion_ends_matching_by_place() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(LogConfig::new(dir.path()), &mut |_, _, _| {}).unwrap();
        let (old, new) = (message("old"), message("new"));
        let records = [
            rec(Payload::Message(old.clone())),
            rec(deliver("g")),
            rec(Payload::TopicDelete(TopicDeleteRecord {
                topic: "t".into(),
            })),
            rec(Payload::Message(new.clone())),
            rec(deliver("g")),
            rec(Payload::Ack(AckRecord {
                group: "g".into(),
                topic: "t".into(),
                queue_id: 0,
                queue_offset: 0,
                handle: 1,
            })),
        ];
        let placed: Vec<(u64, u32)> = records.iter().map(|r| log.append(r).unwrap()).collect();
        let (o, l) = *placed.last().unwrap();
        log.wait_committed(o + l as u64).await.unwrap();
        let wanted = [
            Wanted {
                log_offset: placed[0].0,
                message: &old,
            },
            Wanted {
                log_offset: placed[3].0,
                message: &new,
            },
        ];
        let (histories, end) = scan(&log, &wanted, LIFECYCLE_SCAN_BUDGET).unwrap();
        assert!(end.complete);
        assert_eq!(
            names(&histories[0]),
            ["stored", "delivered", "topic_deleted"]
        );
        assert_eq!(names(&histories[1]), ["stored", "delivered", "acked"]);
        assert_eq!(histories[0].position, Some((0, 0)));
        // A budget smaller than the log stops early and says so.
        let (histories, end) = scan(&log, &wanted, 1).unwrap();
        assert!(!end.complete);
        assert_eq!(end.scanned_to, placed[1].0);
        assert_eq!(names(&histories[0]), ["stored"]);
    }
}
