//! A short history of the broker's totals for the dashboard's charts.
//!
//! A task started by [`crate::run`] reads the counters in
//! [`crate::metrics::Metrics`] and the total lag of every consumer group
//! once a second and keeps the last [`CAPACITY`] samples in a ring, so a
//! freshly opened dashboard already draws the last ten minutes. Rates are
//! the differences between consecutive samples; the browser computes them.
//! Nothing here is persisted: a restart starts an empty history.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{self, Engine};
use crate::metrics::Metrics;

/// Samples kept: ten minutes at one a second.
pub const CAPACITY: usize = 600;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The totals at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    /// Wall-clock time of the sample, ms since the Unix epoch.
    pub t_ms: u64,
    pub messages_stored: u64,
    pub messages_delivered: u64,
    pub acks: u64,
    pub dead_lettered: u64,
    /// Messages not yet consumed, summed over every group and queue.
    pub lag: u64,
    /// Messages delivered and not yet settled, summed likewise.
    pub inflight: u64,
}

impl Sample {
    /// The broker's totals now.
    pub fn take(engine: &Engine) -> Sample {
        let m = &engine.metrics;
        let (lag, inflight) = engine.with_core(|c| {
            c.group_stats()
                .iter()
                .fold((0u64, 0u64), |(l, i), g| (l + g.lag, i + g.inflight as u64))
        });
        Sample {
            t_ms: u64::try_from(engine::now_ms()).unwrap_or(0),
            messages_stored: Metrics::get(&m.messages_stored),
            messages_delivered: Metrics::get(&m.messages_delivered),
            acks: Metrics::get(&m.acks),
            dead_lettered: Metrics::get(&m.dead_lettered),
            lag,
            inflight,
        }
    }
}

/// A bounded ring of samples, oldest first.
#[derive(Debug)]
pub struct StatsHistory {
    capacity: usize,
    ring: Mutex<VecDeque<Sample>>,
}

impl Default for StatsHistory {
    fn default() -> Self {
        StatsHistory::new(CAPACITY)
    }
}

impl StatsHistory {
    pub fn new(capacity: usize) -> StatsHistory {
        let capacity = capacity.max(1);
        StatsHistory {
            capacity,
            ring: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&self, s: Sample) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    /// Every sample kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().copied().collect()
    }
}

/// Samples `engine` every [`INTERVAL`] into `history` until `stop` turns true.
pub async fn run(
    engine: Arc<Engine>,
    history: Arc<StatsHistory>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        history.push(Sample::take(&engine));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: u64) -> Sample {
        Sample {
            t_ms: t,
            messages_stored: t,
            messages_delivered: 0,
            acks: 0,
            dead_lettered: 0,
            lag: 0,
            inflight: 0,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_samples_in_order() {
        let h = StatsHistory::new(3);
        for t in 1..=5 {
            h.push(sample(t));
        }
        let kept: Vec<u64> = h.samples().iter().map(|s| s.t_ms).collect();
        assert_eq!(kept, vec![3, 4, 5]);
    }
}
