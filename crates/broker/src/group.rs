//! What one consumer group has done with one queue.
//!
//! Below `cursor`, every offset is settled (acked, dead-lettered, or skipped
//! by the group's filter) or in `inflight`. At and above it an offset is in
//! flight, in `ahead` (settled early), held back by a FIFO group, or not
//! looked at yet. Only FIFO groups leave anything but untouched offsets
//! above the cursor: they deliver past a message group that is still busy.
//! `expiry` indexes `inflight` by the time each message becomes visible
//! again, so redelivery finds due messages without a full scan.
//!
//! [`Fifo`] is derived bookkeeping for FIFO groups (what is held back behind
//! which message group). It is rebuilt from `inflight` and a rescan from the
//! cursor whenever it is missing — after a restart, after retention, after a
//! message turned out unreadable — so nothing in it needs a record.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inflight {
    /// The only receipt that may settle this delivery.
    pub handle: u64,
    /// Deliveries so far (1 after the first).
    pub attempt: u32,
    pub visible_at_ms: i64,
}

/// A FIFO group's view of one queue: which message group has a message in
/// flight, and which messages wait behind one.
#[derive(Debug, Default)]
pub struct Fifo {
    /// Next offset a scan for new messages examines (≥ the cursor).
    pub scan: u64,
    /// Message group → the offsets of its messages in flight: one, unless
    /// an operator re-drove one while another was out. The group is free
    /// only once all of them are settled.
    pub busy: HashMap<Arc<str>, BTreeSet<u64>>,
    /// Message group → its messages waiting, oldest first.
    pub held: HashMap<Arc<str>, VecDeque<u64>>,
    pub held_count: usize,
    /// Message groups with waiting messages and none in flight, by the
    /// offset of the next one: what a receive hands out first.
    pub ready: BTreeSet<(u64, Arc<str>)>,
}

impl Fifo {
    /// Whether a message of `g` must wait.
    pub fn blocks(&self, g: &Arc<str>) -> bool {
        self.busy.contains_key(g) || self.held.contains_key(g)
    }

    fn hold(&mut self, offset: u64, g: &Arc<str>) {
        let q = self.held.entry(g.clone()).or_default();
        debug_assert!(q.back().is_none_or(|b| *b < offset), "held out of order");
        q.push_back(offset);
        self.held_count += 1;
        if q.len() == 1 && !self.busy.contains_key(g) {
            self.ready.insert((offset, g.clone()));
        }
    }

    /// `offset` of `g` went out: `g` is busy, and if it was the head of the
    /// waiting line it leaves the line.
    fn delivered(&mut self, offset: u64, g: &Arc<str>) {
        self.busy.entry(g.clone()).or_default().insert(offset);
        if let Some(q) = self.held.get_mut(g) {
            if q.front() == Some(&offset) {
                q.pop_front();
                self.held_count -= 1;
                self.ready.remove(&(offset, g.clone()));
                if q.is_empty() {
                    self.held.remove(g);
                }
            }
        }
    }

    /// `offset` of `g` is settled: the next waiting message of `g` may go.
    fn settled(&mut self, offset: u64, g: &Arc<str>) {
        let Some(out) = self.busy.get_mut(g) else {
            return;
        };
        if !out.remove(&offset) || !out.is_empty() {
            return;
        }
        self.busy.remove(g);
        if let Some(head) = self.held.get(g).and_then(|q| q.front()) {
            self.ready.insert((*head, g.clone()));
        }
    }
}

#[derive(Debug, Default)]
pub struct GroupQueue {
    pub cursor: u64,
    pub inflight: BTreeMap<u64, Inflight>,
    pub expiry: BTreeSet<(i64, u64)>,
    /// Settled offsets at or above `cursor`.
    pub ahead: BTreeSet<u64>,
    /// FIFO bookkeeping; `None` until a FIFO receive builds it.
    pub fifo: Option<Fifo>,
}

/// What a receive decided for one queue beyond its delivery records: where
/// the cursor and the FIFO scan stand, what it settled by filtering, and
/// what it held back. Applied after the records (nothing here is logged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub queue_id: u32,
    pub cursor: u64,
    pub scan_to: u64,
    /// Filtered out above the cursor (FIFO only).
    pub skipped: Vec<u64>,
    /// Held back behind a busy message group (FIFO only).
    pub held: Vec<(u64, Arc<str>)>,
}

impl GroupQueue {
    pub fn new(cursor: u64) -> Self {
        GroupQueue {
            cursor,
            ..GroupQueue::default()
        }
    }

    fn take(&mut self, offset: u64) -> Option<Inflight> {
        let f = self.inflight.remove(&offset)?;
        self.expiry.remove(&(f.visible_at_ms, offset));
        Some(f)
    }

    fn put(&mut self, offset: u64, f: Inflight) {
        self.inflight.insert(offset, f);
        self.expiry.insert((f.visible_at_ms, offset));
    }

    /// Records a delivery (first or repeated) of `offset`, of message group
    /// `mg`, after which the cursor stands at least at `cursor`.
    pub fn deliver(&mut self, offset: u64, f: Inflight, cursor: u64, mg: Option<&Arc<str>>) {
        self.take(offset);
        self.put(offset, f);
        self.cursor = self.cursor.max(cursor);
        if let (Some(fifo), Some(g)) = (&mut self.fifo, mg) {
            fifo.delivered(offset, g);
        }
        self.normalise();
    }

    /// Gives the in-flight `offset` a new handle and visibility time; the
    /// attempt count stays. Returns false when it is not in flight.
    pub fn renew(&mut self, offset: u64, handle: u64, visible_at_ms: i64) -> bool {
        let Some(old) = self.take(offset) else {
            return false;
        };
        self.put(
            offset,
            Inflight {
                handle,
                visible_at_ms,
                ..old
            },
        );
        true
    }

    /// Settles `offset` (acked or dead-lettered); returns what was in flight.
    pub fn settle(&mut self, offset: u64, mg: Option<&Arc<str>>) -> Option<Inflight> {
        let f = self.take(offset);
        if offset >= self.cursor {
            self.ahead.insert(offset);
        }
        if let (Some(fifo), Some(g)) = (&mut self.fifo, mg) {
            fifo.settled(offset, g);
        }
        self.normalise();
        f
    }

    /// Applies what a receive decided besides its records.
    pub fn apply_scan(&mut self, s: &Scan) {
        self.cursor = self.cursor.max(s.cursor);
        self.ahead.extend(s.skipped.iter().copied());
        if let Some(fifo) = &mut self.fifo {
            for (o, g) in &s.held {
                fifo.hold(*o, g);
            }
            fifo.scan = fifo.scan.max(s.scan_to);
        }
        self.normalise();
    }

    /// Moves the cursor over offsets that are settled or in flight, and
    /// forgets `ahead` entries it passed.
    fn normalise(&mut self) {
        loop {
            if self.ahead.remove(&self.cursor) || self.inflight.contains_key(&self.cursor) {
                self.cursor += 1;
            } else {
                break;
            }
        }
        if self.ahead.first().is_some_and(|a| *a < self.cursor) {
            self.ahead = self.ahead.split_off(&self.cursor);
        }
        if let Some(fifo) = &mut self.fifo {
            fifo.scan = fifo.scan.max(self.cursor);
        }
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

    /// Puts a settled `offset` back in flight, visible at `now_ms` and with
    /// no attempts made: the next receive delivers it as attempt 1.
    pub fn redrive(&mut self, offset: u64, handle: u64, now_ms: i64) {
        self.take(offset);
        self.ahead.remove(&offset);
        self.put(
            offset,
            Inflight {
                handle,
                attempt: 0,
                visible_at_ms: now_ms,
            },
        );
        // Out of order by nature; the FIFO view is rebuilt around it.
        self.fifo = None;
    }

    /// Forgets `offset` for good (its record is unreadable).
    pub fn forget(&mut self, offset: u64) {
        self.take(offset);
        if offset >= self.cursor {
            self.ahead.insert(offset);
        }
        self.fifo = None;
        self.normalise();
    }

    /// Forgets everything below `base` (retention deleted it). Returns how
    /// many messages the group had not settled.
    pub fn drop_below(&mut self, base: u64) -> u64 {
        let mut lost = base.saturating_sub(self.cursor);
        lost = lost.saturating_sub(self.ahead.range(..base).count() as u64);
        let gone: Vec<u64> = self.inflight.range(..base).map(|(o, _)| *o).collect();
        lost += gone.iter().filter(|o| **o < self.cursor).count() as u64;
        for o in gone {
            self.take(o);
        }
        self.fifo = None;
        self.cursor = self.cursor.max(base);
        self.normalise();
        lost
    }
}
