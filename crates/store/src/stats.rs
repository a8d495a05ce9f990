//! Lock-free statistics of the commit log, for whoever exports metrics.
//!
//! The store depends on no metrics crate: the flusher updates these with a
//! few relaxed atomic adds per group commit, and the server reads them
//! ([`Log::stats`](crate::Log::stats)) and renders them in its own format.
//! [`Histogram`] is generic (fixed bucket bounds, atomics) so the server
//! keeps its own histograms with it too.

use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed upper bounds (inclusive, ascending) and one
/// overflow bucket. Values are integers in the caller's unit (nanoseconds,
/// records, bytes...). Observing is two relaxed atomic adds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// `bounds.len() + 1` counters; the last counts values above every bound.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A histogram read at one moment: cumulative counts per bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations <= bound)`, ascending.
    pub buckets: Vec<(u64, u64)>,
    /// Every observation (the `+Inf` bucket).
    pub count: u64,
    pub sum: u64,
}

impl Histogram {
    /// `bounds` must be strictly ascending.
    pub fn new(bounds: &'static [u64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }

    /// Cumulative counts. The count is the sum of the buckets read, so the
    /// snapshot is consistent in itself even while others observe (the sum
    /// may be a few observations ahead or behind).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (i, &b) in self.bounds.iter().enumerate() {
            acc += self.buckets[i].load(Ordering::Relaxed);
            buckets.push((b, acc));
        }
        acc += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count: acc,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// Latency bounds, nanoseconds: 50 µs … 60 s, in 1-2.5-5 steps. One set
/// for every latency the broker exports (fsync here, request handling in
/// the server, where a long poll can last a minute), so dashboards can put
/// them side by side.
pub const LATENCY_NS_BOUNDS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// Records per group commit: 1 … 4096, powers of two.
pub const BATCH_RECORDS_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Bytes per group commit: 256 B … 64 MiB, powers of four.
pub const BATCH_BYTES_BOUNDS: &[u64] = &[
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];

/// What the flusher thread measures.
#[derive(Debug)]
pub struct LogStats {
    /// Duration of every `fdatasync` of a segment (the group commit's, and
    /// the one closing a segment when the log rolls), failed ones included.
    pub fsync_ns: Histogram,
    /// Records per group commit: what one flusher round wrote (and, in
    /// `sync` mode, made durable with one `fdatasync`). Only rounds that
    /// succeeded count, so the sum is the number of records committed.
    pub batch_records: Histogram,
    /// Encoded bytes per group commit; the sum is the committed offset's
    /// advance since the log opened.
    pub batch_bytes: Histogram,
}

impl Default for LogStats {
    fn default() -> Self {
        LogStats {
            fsync_ns: Histogram::new(LATENCY_NS_BOUNDS),
            batch_records: Histogram::new(BATCH_RECORDS_BOUNDS),
            batch_bytes: Histogram::new(BATCH_BYTES_BOUNDS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_and_cumulative() {
        let h = Histogram::new(&[1, 10, 100]);
        for v in [0, 1, 2, 10, 11, 100, 1000, 5000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1, 2), (10, 4), (100, 6)]);
        assert_eq!(s.count, 8);
        assert_eq!(s.sum, 6124);
    }
}
