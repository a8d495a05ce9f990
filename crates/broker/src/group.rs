//! What one consumer group has done with one queue.
//!
//! Below `cursor`, every offset is either settled (acked, or skipped by the
//! group's filter) or in `inflight`. At and above `cursor`, nothing has been
//! looked at yet. `expiry` indexes `inflight` by the time each message becomes
//! visible again, so redelivery finds due messages without a full scan.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inflight {
    /// The only receipt that may settle this delivery.
    pub handle: u64,
    /// Deliveries so far (1 after the first).
    pub attempt: u32,
    pub visible_at_ms: i64,
}

#[derive(Debug, Default)]
pub struct GroupQueue {
    pub cursor: u64,
    pub inflight: BTreeMap<u64, Inflight>,
    pub expiry: BTreeSet<(i64, u64)>,
}

impl GroupQueue {
    pub fn new(cursor: u64) -> Self {
        GroupQueue {
            cursor,
            ..GroupQueue::default()
        }
    }

    /// Records a delivery (first or repeated) of `offset`.
    pub fn deliver(&mut self, offset: u64, f: Inflight) {
        self.settle(offset);
        self.inflight.insert(offset, f);
        self.expiry.insert((f.visible_at_ms, offset));
        self.cursor = self.cursor.max(offset + 1);
    }

    /// Removes `offset` from flight; returns what it was.
    pub fn settle(&mut self, offset: u64) -> Option<Inflight> {
        let f = self.inflight.remove(&offset)?;
        self.expiry.remove(&(f.visible_at_ms, offset));
        Some(f)
    }

    /// Lowest offset not yet settled: the group's consumed offset.
    pub fn ack_floor(&self) -> u64 {
        self.inflight
            .keys()
            .next()
            .copied()
            .unwrap_or(self.cursor)
            .min(self.cursor)
    }

    /// Earliest time an in-flight message becomes visible again.
    pub fn next_expiry(&self) -> Option<i64> {
        self.expiry.iter().next().map(|(t, _)| *t)
    }

    /// Forgets everything below `base` (retention deleted it). Returns how
    /// many messages the group had not settled.
    pub fn drop_below(&mut self, base: u64) -> u64 {
        let mut lost = base.saturating_sub(self.cursor);
        let gone: Vec<u64> = self.inflight.range(..base).map(|(o, _)| *o).collect();
        lost += gone.len() as u64;
        for o in gone {
            self.settle(o);
        }
        self.cursor = self.cursor.max(base);
        lost
    }
}
