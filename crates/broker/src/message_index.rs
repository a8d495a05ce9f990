//! Where to find a stored message by its id or by one of its keys.
//!
//! An operator asking "what happened to message X?" must not make the broker
//! read the whole log. The index maps a 64-bit hash of the id (and of each
//! key) to the log offset of the message record — 16 bytes of payload per
//! entry, no strings kept. A hash may collide, so an answer is only a list
//! of *candidates*: the caller reads each record and keeps those whose id or
//! key really matches, so a collision costs one extra read, never a wrong
//! answer.
//!
//! The hash is FNV-1a, fixed: the index is rebuilt by replay, and a hasher
//! seeded per process would still work, but a fixed one makes the core's
//! state the same in every run (replay = live, byte for byte).
//!
//! Entries are kept in generations of [`GENERATION_ENTRIES`] in log order,
//! so retention drops whole generations below its cut and only re-filters
//! the one it cuts through: a bounded pause under the core lock however
//! large the index is.

use std::collections::{BTreeSet, VecDeque};

/// Entries per generation: retention re-filters at most this many at once.
pub const GENERATION_ENTRIES: usize = 1 << 16;

/// 64-bit FNV-1a: deterministic across runs and builds.
pub fn hash64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Debug, Default)]
struct Generation {
    /// Lowest and highest log offset held.
    first: u64,
    last: u64,
    /// (hash, log offset): the offsets of one hash are adjacent and in log
    /// order.
    entries: BTreeSet<(u64, u64)>,
}

/// Log offsets by the hash of a string, in generations (see the module
/// docs). Offsets must be added in ascending order, as `apply` sees them.
#[derive(Debug, Default)]
pub struct HashedOffsets {
    generations: VecDeque<Generation>,
    len: usize,
}

/// Candidates for a lookup, in log order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidates {
    pub offsets: Vec<u64>,
    /// More candidates exist than were asked for.
    pub more: bool,
}

impl HashedOffsets {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, hash: u64, offset: u64) {
        let fresh = self
            .generations
            .back()
            .is_none_or(|g| g.entries.len() >= GENERATION_ENTRIES);
        if fresh {
            self.generations.push_back(Generation {
                first: offset,
                last: offset,
                entries: BTreeSet::new(),
            });
        }
        let g = self.generations.back_mut().expect("pushed above");
        debug_assert!(offset >= g.last, "offsets added out of order");
        g.last = g.last.max(offset);
        if g.entries.insert((hash, offset)) {
            self.len += 1;
        }
    }

    /// Offsets stored under `hash`, oldest first, at most `max`.
    pub fn lookup(&self, hash: u64, max: usize) -> Candidates {
        let mut out = Candidates::default();
        for g in &self.generations {
            for (_, offset) in g.entries.range((hash, 0)..=(hash, u64::MAX)) {
                if out.offsets.len() >= max {
                    out.more = true;
                    return out;
                }
                out.offsets.push(*offset);
            }
        }
        out
    }

    /// Forgets every offset below `cut` (retention deleted those records).
    pub fn prune_below(&mut self, cut: u64) {
        while let Some(g) = self.generations.front() {
            if g.last >= cut {
                break;
            }
            self.len -= g.entries.len();
            self.generations.pop_front();
        }
        if let Some(g) = self.generations.front_mut() {
            if g.first < cut {
                let before = g.entries.len();
                g.entries.retain(|(_, o)| *o >= cut);
                self.len -= before - g.entries.len();
                g.first = cut;
            }
        }
    }
}

/// The message index: by message id and by each message key.
#[derive(Debug, Default)]
pub struct MessageIndex {
    by_id: HashedOffsets,
    by_key: HashedOffsets,
}

impl MessageIndex {
    /// Indexes the message record at `log_offset`.
    pub fn add(&mut self, log_offset: u64, message_id: &str, keys: &[String]) {
        self.by_id.insert(hash64(message_id), log_offset);
        for k in keys {
            self.by_key.insert(hash64(k), log_offset);
        }
    }

    /// Records that may hold message `id`, oldest first.
    pub fn by_id(&self, id: &str, max: usize) -> Candidates {
        self.by_id.lookup(hash64(id), max)
    }

    /// Records that may carry `key`, oldest first.
    pub fn by_key(&self, key: &str, max: usize) -> Candidates {
        self.by_key.lookup(hash64(key), max)
    }

    pub fn prune_below(&mut self, cut: u64) {
        self.by_id.prune_below(cut);
        self.by_key.prune_below(cut);
    }

    /// Entries held: (by id, by key).
    pub fn len(&self) -> (usize, usize) {
        (self.by_id.len(), self.by_key.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_list_every_offset_of_a_hash_in_log_order() {
        let mut ix = MessageIndex::default();
        ix.add(10, "a", &["k".into(), "k".into()]);
        ix.add(20, "b", &["k".into()]);
        ix.add(30, "a", &[]);
        assert_eq!(ix.by_id("a", 10).offsets, [10, 30]);
        assert_eq!(ix.by_id("b", 10).offsets, [20]);
        assert!(ix.by_id("c", 10).offsets.is_empty());
        let k = ix.by_key("k", 1);
        assert_eq!((k.offsets, k.more), (vec![10], true));
        assert_eq!(ix.len(), (3, 2), "a key listed twice is one entry");
        ix.prune_below(15);
        assert_eq!(ix.by_id("a", 10).offsets, [30]);
        assert_eq!(ix.by_key("k", 10).offsets, [20]);
        assert_eq!(ix.len(), (2, 1));
    }

    #[test]
    fn retention_drops_whole_generations_and_cuts_through_one() {
        let mut h = HashedOffsets::default();
        let n = GENERATION_ENTRIES as u64 * 2 + 10;
        for o in 0..n {
            h.insert(o % 7, o);
        }
        assert_eq!(h.generations.len(), 3);
        let cut = GENERATION_ENTRIES as u64 + 5;
        h.prune_below(cut);
        assert_eq!(h.generations.len(), 2);
        assert_eq!(h.len(), (n - cut) as usize);
        let first = h.lookup(cut % 7, 1).offsets;
        assert_eq!(first, [cut]);
        h.prune_below(u64::MAX);
        assert!(h.is_empty());
    }

    #[test]
    fn the_hash_is_fixed() {
        assert_eq!(hash64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash64("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
