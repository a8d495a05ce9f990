//! Counters the shell keeps, rendered in Prometheus text format by `http`.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub messages_stored: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub send_rejected: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub redeliveries: AtomicU64,
    pub acks: AtomicU64,
    pub invisibility_changes: AtomicU64,
    pub corrupt_reads: AtomicU64,
    pub tx_half_stored: AtomicU64,
    pub tx_committed: AtomicU64,
    pub tx_rolled_back: AtomicU64,
    pub tx_checks_sent: AtomicU64,
    pub tx_checks_deferred: AtomicU64,
    pub tx_checks_failed: AtomicU64,
    pub tx_discarded: AtomicU64,
    pub tx_end_repeated: AtomicU64,
    pub tx_end_refused: AtomicU64,
    pub timers_fired: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub redriven: AtomicU64,
    pub attempt_replays: AtomicU64,
    /// Times the commit log was healed after a disk fault.
    pub log_heals: AtomicU64,
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
