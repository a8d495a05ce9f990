//! Messages waiting for their delivery time.
//!
//! A delayed message (or a committed transactional one with a delivery time
//! ahead) is not indexed when it is stored. It waits here, keyed by the log
//! offset of its record, until a `Fire` record indexes it; the index then
//! points at the original record, so firing never copies the body.
//!
//! Invariant: `schedule` holds exactly one `(due_ms, offset)` per timer.

use std::collections::{BTreeMap, BTreeSet};

use ferry_record::MessageRecord;

/// A stored message that is not in any queue yet (a half message, or one
/// waiting for its delivery time): what indexing it later needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub log_offset: u64,
    pub len: u32,
    pub topic: String,
    pub queue_id: u32,
    pub message_id: String,
    pub tag: Option<String>,
    pub message_group: Option<String>,
    pub store_ms: i64,
}

impl Parked {
    pub fn of(m: &MessageRecord, log_offset: u64, len: u32, store_ms: i64) -> Self {
        Parked {
            log_offset,
            len,
            topic: m.topic.clone(),
            queue_id: m.queue_id,
            message_id: m.message_id.clone(),
            tag: m.tag.clone(),
            message_group: m.message_group.clone(),
            store_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub msg: Parked,
    pub due_ms: i64,
}

#[derive(Debug, Default)]
pub struct Timers {
    timers: BTreeMap<u64, Timer>,
    schedule: BTreeSet<(i64, u64)>,
}

impl Timers {
    pub fn len(&self) -> usize {
        self.timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    pub fn add(&mut self, t: Timer) {
        self.schedule.insert((t.due_ms, t.msg.log_offset));
        if let Some(old) = self.timers.insert(t.msg.log_offset, t) {
            self.schedule.remove(&(old.due_ms, old.msg.log_offset));
        }
    }

    pub fn get(&self, offset: u64) -> Option<&Timer> {
        self.timers.get(&offset)
    }

    pub fn remove(&mut self, offset: u64) -> Option<Timer> {
        let t = self.timers.remove(&offset)?;
        self.schedule.remove(&(t.due_ms, offset));
        Some(t)
    }

    /// Drops every timer of `topic` (the topic was deleted); returns how
    /// many. A full pass: deletion is a rare operator action.
    pub fn remove_topic(&mut self, topic: &str) -> usize {
        let gone: Vec<u64> = self
            .timers
            .values()
            .filter(|t| t.msg.topic == topic)
            .map(|t| t.msg.log_offset)
            .collect();
        for o in &gone {
            self.remove(*o);
        }
        gone.len()
    }

    /// The earliest timer, if it is due at `now_ms`.
    pub fn first_due(&self, now_ms: i64) -> Option<&Timer> {
        let &(due, off) = self.schedule.iter().next()?;
        if due > now_ms {
            return None;
        }
        self.timers.get(&off)
    }

    pub fn next_due(&self) -> Option<i64> {
        self.schedule.iter().next().map(|(t, _)| *t)
    }

    /// Lowest log offset still waiting: retention must keep it.
    pub fn lowest_offset(&self) -> Option<u64> {
        self.timers.keys().next().copied()
    }
}
