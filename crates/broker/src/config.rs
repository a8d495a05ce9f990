//! Defaults and limits of the core. Every bound the broker enforces lives
//! here, so the CLI can expose them and the README can list them.

use serde::{Deserialize, Serialize};

use crate::policy::GroupPolicy;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoreConfig {
    /// Create a topic on first use (route query or send).
    pub auto_create_topics: bool,
    /// Queues of an auto-created topic.
    pub default_queues: u32,
    /// The delivery policy of every consumer group that has none of its own
    /// (17 attempts, the RocketMQ backoff schedule, not FIFO).
    pub default_policy: GroupPolicy,
    pub limits: Limits,
    pub transactions: TransactionConfig,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            auto_create_topics: true,
            default_queues: 8,
            default_policy: GroupPolicy::default(),
            limits: Limits::default(),
            transactions: TransactionConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limits {
    /// Largest message body, bytes (RocketMQ default 4 MiB).
    pub max_body_bytes: usize,
    /// Largest user properties + tag + keys, bytes (16 KiB).
    pub max_properties_bytes: usize,
    /// Most user properties on one message (128).
    pub max_properties: usize,
    /// Most messages in one SendMessage batch.
    pub max_batch_messages: usize,
    pub max_message_id_len: usize,
    pub max_topic_name_len: usize,
    pub max_group_name_len: usize,
    /// A message group (FIFO key) must be shorter than this many bytes.
    pub max_message_group_len: usize,
    pub max_topics: usize,
    pub max_queues_per_topic: u32,
    pub max_groups: usize,
    /// Most un-acked messages one group may hold on one queue; beyond it the
    /// queue delivers nothing new to that group until some are settled.
    pub max_inflight_per_queue: usize,
    pub min_invisible_ms: i64,
    pub max_invisible_ms: i64,
    pub max_long_polling_ms: i64,
    pub max_receive_batch: usize,
    /// FIFO groups: most messages one group may hold back on one queue
    /// behind busy message groups (they wait for an earlier message of
    /// their group). Beyond it the queue hands that group nothing new until
    /// some drain, so one stuck message group costs bounded memory.
    pub max_fifo_held_per_queue: usize,
    /// Groups with a policy of their own.
    pub max_group_policies: usize,
    /// Furthest a delivery time may lie ahead of the send, ms (7 days).
    pub max_delay_ms: i64,
    /// Most messages waiting for their delivery time, broker-wide.
    pub max_pending_timers: usize,
    /// Most half messages waiting for their transaction outcome.
    pub max_pending_transactions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 << 20,
            max_properties_bytes: 16 << 10,
            max_properties: 128,
            max_batch_messages: 1024,
            max_message_id_len: 128,
            max_topic_name_len: 127,
            max_group_name_len: 255,
            max_message_group_len: 64,
            max_topics: 10_000,
            max_queues_per_topic: 256,
            max_groups: 10_000,
            max_inflight_per_queue: 65_536,
            min_invisible_ms: 1_000,
            max_invisible_ms: 12 * 3600 * 1000,
            max_long_polling_ms: 30_000,
            max_receive_batch: 1024,
            max_fifo_held_per_queue: 100_000,
            max_group_policies: 10_000,
            max_delay_ms: 7 * 24 * 3600 * 1000,
            max_pending_timers: 10_000_000,
            max_pending_transactions: 1_000_000,
        }
    }
}

/// Check-back of transactions whose producer never said how they ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransactionConfig {
    /// First check this long after the half message was stored (6 s), unless
    /// the producer asked otherwise.
    pub check_after_ms: i64,
    /// Bounds on a producer's own first-check delay
    /// (`orphaned_transaction_recovery_duration`): 1 s to 1 h.
    pub min_check_after_ms: i64,
    pub max_check_after_ms: i64,
    /// Time between checks (30 s).
    pub check_interval_ms: i64,
    /// Checks before the broker gives up and discards the half message (15).
    pub max_checks: u32,
    /// When no producer of the topic is connected, look again this soon
    /// (1 s); such a round does not count as a check.
    pub no_producer_retry_ms: i64,
    /// Check-backs sent per second at most, broker-wide (1000).
    pub max_checks_per_second: u32,
    /// Outcomes remembered to answer repeated or late EndTransaction calls
    /// (500 000); older ones are forgotten oldest-first.
    pub outcome_memory: usize,
}

impl Default for TransactionConfig {
    fn default() -> Self {
        TransactionConfig {
            check_after_ms: 6_000,
            min_check_after_ms: 1_000,
            max_check_after_ms: 3_600_000,
            check_interval_ms: 30_000,
            max_checks: 15,
            no_producer_retry_ms: 1_000,
            max_checks_per_second: 1_000,
            outcome_memory: 500_000,
        }
    }
}
