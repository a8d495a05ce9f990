//! What the shell counts, rendered in Prometheus text format by
//! [`crate::prometheus`].
//!
//! The plain counters are relaxed `AtomicU64`s. Histograms are
//! [`ferry_store::Histogram`] (fixed buckets, atomics). Counters labelled by
//! topic or group live in maps, and stay bounded: topics and groups are
//! capped by the broker's limits (`max_topics`, `max_groups`), a deleted
//! topic's series are dropped ([`Metrics::forget_topic`]), and a group's
//! series only exist once it redelivered or dead-lettered something. The
//! per-RPC series are bounded by the fixed set of RPCs times the status
//! codes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_store::Histogram;

#[derive(Debug)]
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
    /// Fire time (once durable) minus delivery time of each fired delayed
    /// message, milliseconds.
    pub timer_lateness_ms: Histogram,
    /// Messages and body bytes stored per topic and queue.
    topics: Mutex<HashMap<String, Vec<QueueCounts>>>,
    /// Redeliveries and dead letters per consumer group.
    groups: Mutex<HashMap<String, GroupCounts>>,
    pub grpc: GrpcMetrics,
}

/// Stored messages and body bytes of one queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupCounts {
    pub redeliveries: u64,
    pub dead_lettered: u64,
}

/// Timer lateness bounds, milliseconds: 5 ms … 5 min.
pub const LATENESS_MS_BOUNDS: &[u64] = &[
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            messages_stored: AtomicU64::new(0),
            bytes_stored: AtomicU64::new(0),
            send_rejected: AtomicU64::new(0),
            messages_delivered: AtomicU64::new(0),
            redeliveries: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            invisibility_changes: AtomicU64::new(0),
            corrupt_reads: AtomicU64::new(0),
            tx_half_stored: AtomicU64::new(0),
            tx_committed: AtomicU64::new(0),
            tx_rolled_back: AtomicU64::new(0),
            tx_checks_sent: AtomicU64::new(0),
            tx_checks_deferred: AtomicU64::new(0),
            tx_checks_failed: AtomicU64::new(0),
            tx_discarded: AtomicU64::new(0),
            tx_end_repeated: AtomicU64::new(0),
            tx_end_refused: AtomicU64::new(0),
            timers_fired: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            redriven: AtomicU64::new(0),
            attempt_replays: AtomicU64::new(0),
            log_heals: AtomicU64::new(0),
            timer_lateness_ms: Histogram::new(LATENESS_MS_BOUNDS),
            topics: Mutex::default(),
            groups: Mutex::default(),
            grpc: GrpcMetrics::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Counts stored messages: `(topic, queue, body bytes)` each. One lock
    /// per batch, and one map lookup per run of messages to the same topic
    /// (a batch is usually all one topic).
    pub fn stored<'a>(&self, messages: impl IntoIterator<Item = (&'a str, u32, u64)>) {
        let mut topics = lock(&self.topics);
        let mut current: Option<(&str, &mut Vec<QueueCounts>)> = None;
        for (topic, queue, bytes) in messages {
            let queues = match current.take() {
                Some((t, q)) if t == topic => q,
                _ => match topics.get_mut(topic) {
                    Some(q) => q,
                    None => topics.entry(topic.to_string()).or_default(),
                },
            };
            let q = queue as usize;
            if queues.len() <= q {
                queues.resize(q + 1, QueueCounts::default());
            }
            queues[q].messages += 1;
            queues[q].bytes += bytes;
            current = Some((topic, queues));
        }
    }

    /// Drops a deleted topic's series (a topic made later under the same
    /// name starts again from zero).
    pub fn forget_topic(&self, topic: &str) {
        lock(&self.topics).remove(topic);
    }

    /// Per topic, its queues' counts (index = queue id), sorted by topic.
    pub fn topic_counts(&self) -> BTreeMap<String, Vec<QueueCounts>> {
        lock(&self.topics)
            .iter()
            .map(|(t, q)| (t.clone(), q.clone()))
            .collect()
    }

    pub fn group_redelivered(&self, group: &str, n: u64) {
        self.group(group, |g| g.redeliveries += n);
    }

    pub fn group_dead_lettered(&self, group: &str, n: u64) {
        self.group(group, |g| g.dead_lettered += n);
    }

    fn group(&self, group: &str, f: impl FnOnce(&mut GroupCounts)) {
        let mut groups = lock(&self.groups);
        match groups.get_mut(group) {
            Some(g) => f(g),
            None => f(groups.entry(group.to_string()).or_default()),
        }
    }

    pub fn group_counts(&self) -> BTreeMap<String, GroupCounts> {
        lock(&self.groups)
            .iter()
            .map(|(g, c)| (g.clone(), *c))
            .collect()
    }
}

/// The gRPC calls the broker serves (`apache.rocketmq.v2.MessagingService`
/// and `ferry.v1.Extensions`), as the `rpc` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rpc {
    QueryRoute,
    Heartbeat,
    SendMessage,
    QueryAssignment,
    ReceiveMessage,
    AckMessage,
    ForwardMessageToDeadLetterQueue,
    PullMessage,
    UpdateOffset,
    GetOffset,
    QueryOffset,
    EndTransaction,
    Telemetry,
    NotifyClientTermination,
    ChangeInvisibleDuration,
    RecallMessage,
    SyncLiteSubscription,
    EndTransactions,
}

impl Rpc {
    pub const ALL: [Rpc; 18] = [
        Rpc::QueryRoute,
        Rpc::Heartbeat,
        Rpc::SendMessage,
        Rpc::QueryAssignment,
        Rpc::ReceiveMessage,
        Rpc::AckMessage,
        Rpc::ForwardMessageToDeadLetterQueue,
        Rpc::PullMessage,
        Rpc::UpdateOffset,
        Rpc::GetOffset,
        Rpc::QueryOffset,
        Rpc::EndTransaction,
        Rpc::Telemetry,
        Rpc::NotifyClientTermination,
        Rpc::ChangeInvisibleDuration,
        Rpc::RecallMessage,
        Rpc::SyncLiteSubscription,
        Rpc::EndTransactions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rpc::QueryRoute => "QueryRoute",
            Rpc::Heartbeat => "Heartbeat",
            Rpc::SendMessage => "SendMessage",
            Rpc::QueryAssignment => "QueryAssignment",
            Rpc::ReceiveMessage => "ReceiveMessage",
            Rpc::AckMessage => "AckMessage",
            Rpc::ForwardMessageToDeadLetterQueue => "ForwardMessageToDeadLetterQueue",
            Rpc::PullMessage => "PullMessage",
            Rpc::UpdateOffset => "UpdateOffset",
            Rpc::GetOffset => "GetOffset",
            Rpc::QueryOffset => "QueryOffset",
            Rpc::EndTransaction => "EndTransaction",
            Rpc::Telemetry => "Telemetry",
            Rpc::NotifyClientTermination => "NotifyClientTermination",
            Rpc::ChangeInvisibleDuration => "ChangeInvisibleDuration",
            Rpc::RecallMessage => "RecallMessage",
            Rpc::SyncLiteSubscription => "SyncLiteSubscription",
            Rpc::EndTransactions => "EndTransactions",
        }
    }

    /// Whether calls are timed: not Telemetry, whose stream lives as long
    /// as the client's session and would only measure that.
    pub fn timed(self) -> bool {
        self != Rpc::Telemetry
    }
}

/// The outcome of a call answered `OK`.
const OK: Outcome = Outcome::Rocket(ferry_proto::v2::Code::Ok as i32);

/// How a call ended, as the `code` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The RocketMQ `Status` code in the response body.
    Rocket(i32),
    /// A gRPC error status instead of a response (tonic code number).
    Grpc(i32),
    /// The client went away before the answer (e.g. during a long poll).
    Cancelled,
}

impl Outcome {
    /// `OK`, `BAD_REQUEST`, … for RocketMQ codes; `GRPC_UNIMPLEMENTED`, …
    /// for gRPC errors; `CANCELLED` for calls the client dropped.
    pub fn label(self) -> String {
        match self {
            Outcome::Rocket(c) => ferry_proto::v2::Code::try_from(c)
                .map(|c| c.as_str_name().to_string())
                .unwrap_or_else(|_| format!("CODE_{c}")),
            Outcome::Grpc(c) => {
                let name = format!("{:?}", tonic::Code::from_i32(c));
                let mut out = String::from("GRPC_");
                for (i, ch) in name.chars().enumerate() {
                    if ch.is_ascii_uppercase() && i > 0 {
                        out.push('_');
                    }
                    out.push(ch.to_ascii_uppercase());
                }
                out
            }
            Outcome::Cancelled => "CANCELLED".into(),
        }
    }
}

/// Calls by RPC and outcome, and handling time per RPC.
#[derive(Debug)]
pub struct GrpcMetrics {
    /// One per [`Rpc::ALL`], in that order.
    durations: Vec<Histogram>,
    /// Calls answered OK, one per [`Rpc::ALL`]: the common outcome is
    /// counted without a lock.
    ok: Vec<AtomicU64>,
    /// Every other outcome.
    other: Mutex<BTreeMap<(Rpc, Outcome), u64>>,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        GrpcMetrics {
            durations: Rpc::ALL
                .iter()
                .map(|_| Histogram::new(ferry_store::stats::LATENCY_NS_BOUNDS))
                .collect(),
            ok: Rpc::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            other: Mutex::default(),
        }
    }
}

impl GrpcMetrics {
    pub fn record(&self, rpc: Rpc, outcome: Outcome, elapsed: Duration) {
        if rpc.timed() {
            let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
            self.durations[rpc as usize].observe(ns);
        }
        if outcome == OK {
            Metrics::add(&self.ok[rpc as usize], 1);
        } else {
            *lock(&self.other).entry((rpc, outcome)).or_default() += 1;
        }
    }

    pub fn duration(&self, rpc: Rpc) -> &Histogram {
        &self.durations[rpc as usize]
    }

    /// Every (RPC, outcome) counted so far (none with a zero count).
    pub fn calls(&self) -> BTreeMap<(Rpc, Outcome), u64> {
        let mut calls = lock(&self.other).clone();
        for rpc in Rpc::ALL {
            let n = Metrics::get(&self.ok[rpc as usize]);
            if n > 0 {
                calls.insert((rpc, OK), n);
            }
        }
        calls
    }

    /// Starts timing a call; see [`RpcTimer`].
    pub fn start(&self, rpc: Rpc) -> RpcTimer<'_> {
        RpcTimer {
            grpc: self,
            rpc,
            started: Instant::now(),
            done: false,
        }
    }
}

/// A call being timed. [`RpcTimer::finish`] records its outcome; dropped
/// unfinished (the client cancelled and tonic dropped the handler), it
/// records [`Outcome::Cancelled`].
pub struct RpcTimer<'a> {
    grpc: &'a GrpcMetrics,
    rpc: Rpc,
    started: Instant,
    done: bool,
}

impl RpcTimer<'_> {
    pub fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.grpc.record(self.rpc, outcome, self.started.elapsed());
    }
}

impl Drop for RpcTimer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.grpc
                .record(self.rpc, Outcome::Cancelled, self.started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_labels() {
        assert_eq!(Outcome::Rocket(20000).label(), "OK");
        assert_eq!(
            Outcome::Grpc(tonic::Code::Unimplemented as i32).label(),
            "GRPC_UNIMPLEMENTED"
        );
        assert_eq!(
            Outcome::Grpc(tonic::Code::InvalidArgument as i32).label(),
            "GRPC_INVALID_ARGUMENT"
        );
    }

    #[test]
    fn stored_counts_per_topic_and_queue() {
        let m = Metrics::default();
        m.stored([("a", 0, 10), ("a", 1, 5), ("b", 0, 1), ("a", 0, 2)]);
        let q = |messages, bytes| QueueCounts { messages, bytes };
        let counts = m.topic_counts();
        assert_eq!(counts["a"], vec![q(2, 12), q(1, 5)]);
        assert_eq!(counts["b"], vec![q(1, 1)]);
        m.forget_topic("a");
        assert!(!m.topic_counts().contains_key("a"));
    }

    #[test]
    fn calls_merge_ok_and_other_outcomes() {
        let g = GrpcMetrics::default();
        let d = Duration::from_millis(1);
        g.record(Rpc::SendMessage, OK, d);
        g.record(Rpc::SendMessage, OK, d);
        g.record(Rpc::SendMessage, Outcome::Cancelled, d);
        g.record(Rpc::Telemetry, OK, d);
        let calls: Vec<_> = g.calls().into_iter().collect();
        assert_eq!(
            calls,
            vec![
                ((Rpc::SendMessage, OK), 2),
                ((Rpc::SendMessage, Outcome::Cancelled), 1),
                ((Rpc::Telemetry, OK), 1),
            ]
        );
        assert_eq!(g.duration(Rpc::SendMessage).snapshot().count, 3);
        assert_eq!(g.duration(Rpc::Telemetry).snapshot().count, 0);
    }

    #[test]
    fn rpc_order_matches_all() {
        for (i, r) in Rpc::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
