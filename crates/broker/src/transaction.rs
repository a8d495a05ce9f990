//! Transactions: half messages waiting for their outcome, the check-back
//! schedule, and the outcomes already decided.
//!
//! A half message is stored like any message but not indexed: it sits here,
//! keyed by its log offset (which is also what its transaction id encodes),
//! until a `TxEnd` record decides it. The first decision is final; the
//! outcome is remembered (bounded) so a repeated EndTransaction is answered
//! without a second effect and a conflicting one is refused.
//!
//! Invariants:
//! - an offset is in `pending` or in `resolved`, never both;
//! - `schedule` holds exactly one `(next_check_ms, offset)` per pending entry;
//! - `resolved` holds at most `memory` entries (the oldest are forgotten).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ferry_record::{TxOutcome, TxSource};

use crate::timer::Parked;
use serde::Serialize;

/// A half message waiting for its transaction's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HalfMessage {
    pub msg: Parked,
    pub delivery_ms: Option<i64>,
    /// Check-backs sent so far.
    pub checks: u32,
    pub next_check_ms: i64,
}

/// How a transaction ended, kept to answer repeated or late EndTransaction
/// calls and to show operators what was discarded and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub half_offset: u64,
    pub topic: String,
    pub message_id: String,
    #[serde(serialize_with = "outcome_name")]
    pub outcome: TxOutcome,
    #[serde(serialize_with = "source_name")]
    pub source: TxSource,
    pub at_ms: i64,
    pub checks: u32,
    pub reason: String,
}

fn outcome_name<S: serde::Serializer>(o: &TxOutcome, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match o {
        TxOutcome::Commit => "commit",
        TxOutcome::Rollback => "rollback",
        TxOutcome::Discard => "discard",
    })
}

fn source_name<S: serde::Serializer>(o: &TxSource, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match o {
        TxSource::Client => "client",
        TxSource::ServerCheck => "server_check",
        TxSource::CheckLimit => "check_limit",
    })
}

/// Most recent discards kept for the operator's list (all are counted).
const RECENT_DISCARDS: usize = 1000;

#[derive(Debug, Default)]
pub struct Transactions {
    pending: BTreeMap<u64, HalfMessage>,
    schedule: BTreeSet<(i64, u64)>,
    resolved: BTreeMap<u64, Resolved>,
    recent_discards: VecDeque<Resolved>,
    /// How many outcomes to remember.
    memory: usize,
}

impl Transactions {
    pub fn new(memory: usize) -> Self {
        Transactions {
            memory: memory.max(1),
            ..Default::default()
        }
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn pending(&self) -> impl Iterator<Item = &HalfMessage> {
        self.pending.values()
    }

    /// Pending half messages of `topic`. A full pass: only a topic's
    /// deletion asks.
    pub fn pending_of<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a HalfMessage> {
        self.pending.values().filter(move |h| h.msg.topic == topic)
    }

    pub fn get(&self, offset: u64) -> Option<&HalfMessage> {
        self.pending.get(&offset)
    }

    pub fn resolved(&self, offset: u64) -> Option<&Resolved> {
        self.resolved.get(&offset)
    }

    pub fn recent_discards(&self) -> impl Iterator<Item = &Resolved> {
        self.recent_discards.iter()
    }

    /// Lowest log offset of a pending half message: retention must keep it.
    pub fn lowest_offset(&self) -> Option<u64> {
        self.pending.keys().next().copied()
    }

    pub fn add(&mut self, half: HalfMessage) {
        let offset = half.msg.log_offset;
        if self.resolved.contains_key(&offset) {
            debug_assert!(false, "half message at {offset} already resolved");
            return;
        }
        self.schedule.insert((half.next_check_ms, offset));
        if let Some(old) = self.pending.insert(offset, half) {
            self.schedule.remove(&(old.next_check_ms, offset));
        }
    }

    /// Records check number `checks`; the next is due at `next_ms`.
    pub fn checked(&mut self, offset: u64, checks: u32, next_ms: i64) {
        if let Some(h) = self.pending.get_mut(&offset) {
            self.schedule.remove(&(h.next_check_ms, offset));
            h.checks = checks;
            h.next_check_ms = next_ms;
            self.schedule.insert((next_ms, offset));
        }
    }

    /// Moves a check later without counting one (no producer to ask). Not
    /// a logged change: after a restart the check is simply due again.
    pub fn defer(&mut self, offset: u64, until_ms: i64) {
        self.checked(
            offset,
            self.pending.get(&offset).map_or(0, |h| h.checks),
            until_ms,
        );
    }

    /// Ends the transaction at `offset`: returns its half message if it was
    /// pending. The outcome is remembered either way (a replayed log whose
    /// half message was already deleted still knows how it ended).
    pub fn end(&mut self, resolved: Resolved) -> Option<HalfMessage> {
        let offset = resolved.half_offset;
        let half = self.pending.remove(&offset);
        if let Some(h) = &half {
            self.schedule.remove(&(h.next_check_ms, offset));
        }
        if resolved.outcome == TxOutcome::Discard {
            if self.recent_discards.len() >= RECENT_DISCARDS {
                self.recent_discards.pop_front();
            }
            self.recent_discards.push_back(resolved.clone());
        }
        self.resolved.insert(offset, resolved);
        while self.resolved.len() > self.memory {
            self.resolved.pop_first();
        }
        half
    }

    /// Pending transactions whose next check is due at `now_ms`, oldest
    /// deadline first.
    pub fn due(&self, now_ms: i64) -> impl Iterator<Item = &HalfMessage> {
        self.schedule
            .iter()
            .take_while(move |(t, _)| *t <= now_ms)
            .filter_map(|(_, o)| self.pending.get(o))
    }

    pub fn next_due(&self) -> Option<i64> {
        self.schedule.iter().next().map(|(t, _)| *t)
    }
}

/// Transaction ids are the half message's log offset in hex: unique for
/// the life of the log, and enough to find the transaction in O(log n).
pub fn transaction_id(half_offset: u64) -> String {
    format!("{half_offset:016X}")
}

pub fn parse_transaction_id(id: &str) -> Option<u64> {
    if id.len() != 16 {
        return None;
    }
    u64::from_str_radix(id, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(off: u64, next: i64) -> HalfMessage {
        HalfMessage {
            msg: Parked {
                log_offset: off,
                len: 10,
                topic: "t".into(),
                queue_id: 0,
                message_id: format!("m{off}"),
                tag: None,
                message_group: None,
                store_ms: 0,
            },
            delivery_ms: None,
            checks: 0,
            next_check_ms: next,
        }
    }

    fn ended(off: u64, outcome: TxOutcome) -> Resolved {
        Resolved {
            half_offset: off,
            topic: "t".into(),
            message_id: format!("m{off}"),
            outcome,
            source: TxSource::Client,
            at_ms: 0,
            checks: 0,
            reason: String::new(),
        }
    }

    #[test]
    fn ids_round_trip() {
        for o in [0, 1, 0xABCDEF, u64::MAX] {
            assert_eq!(parse_transaction_id(&transaction_id(o)), Some(o));
        }
        assert_eq!(parse_transaction_id("xyz"), None);
        assert_eq!(parse_transaction_id(""), None);
    }

    #[test]
    fn schedule_follows_checks_and_ends() {
        let mut t = Transactions::new(2);
        t.add(half(10, 100));
        t.add(half(20, 50));
        assert_eq!(t.next_due(), Some(50));
        assert_eq!(
            t.due(60).map(|h| h.msg.log_offset).collect::<Vec<_>>(),
            [20]
        );
        t.checked(20, 1, 200);
        assert_eq!(t.next_due(), Some(100));
        t.defer(10, 300);
        assert_eq!(t.get(10).unwrap().checks, 0);
        assert_eq!(t.next_due(), Some(200));
        assert!(t.end(ended(20, TxOutcome::Commit)).is_some());
        assert!(t.end(ended(20, TxOutcome::Commit)).is_none());
        assert_eq!(t.next_due(), Some(300));
        t.end(ended(10, TxOutcome::Discard));
        t.end(ended(30, TxOutcome::Rollback));
        // Memory of two: the oldest outcome is forgotten.
        assert!(t.resolved(10).is_none() || t.resolved(20).is_none());
        assert_eq!(t.recent_discards().count(), 1);
        assert_eq!(t.pending_len(), 0);
        assert_eq!(t.next_due(), None);
    }
}
