//! The engine: the broker core and the commit log, joined.
//!
//! Every mutation follows one path: lock the core, let it decide (validate,
//! produce records), append each record to the log and apply it to the core
//! in the same order, unlock, then wait until the log has committed the
//! records before answering. Because appends and applies happen under the
//! same lock, the log order *is* the order the core saw, and replaying the
//! log after a crash rebuilds exactly this state.
//!
//! A disk fault stops the log (every write is refused). The core has then
//! applied records the log will never commit, so [`Engine::heal`] rebuilds
//! it by replaying the healed log, exactly as [`Engine::open`] does. Waits
//! name the log epoch their records were appended in (read under the core
//! lock, which a heal holds throughout), so a record dropped by a heal is
//! never reported durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_broker::{
    placement, Broker, BrokerError, CheckOrder, Delivery, EndDecision, Filter, GroupPolicy,
    Incoming, MessageTypes, Placement, ReceiveRequest, TopicConfig,
};
use ferry_record::{MessageRecord, Payload, Record, TxOutcome, TxSource};
use ferry_store::{meta, Log, LogConfig, RecoveryReport, StoreError};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::ServerConfig;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task (a lookup's log scan) ended without an answer: a
    /// bug or a shutdown, not a disk fault.
    #[error("{0}")]
    Task(String),
}

/// Topic definitions as kept in `meta/topics.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TopicsFile {
    topics: Vec<TopicDef>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicDef {
    name: String,
    queues: u32,
    /// Names, e.g. `["NORMAL", "FIFO"]`. Files written before topics had
    /// types lack the field: those topics accepted everything, and still do.
    #[serde(default = "all_type_names")]
    message_types: Vec<String>,
    /// Log offset from which this topic exists (see
    /// `ferry_broker::topic::Topic::created_at`): tells replay whether a
    /// deletion in the log was of this topic or of an earlier one of the
    /// same name. Older files lack it; they predate deletion, so 0 is right.
    #[serde(default)]
    created_at: u64,
}

fn all_type_names() -> Vec<String> {
    MessageTypes::ALL
        .names()
        .into_iter()
        .map(String::from)
        .collect()
}

/// What creating a topic found or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicCreated {
    /// False when the topic already existed.
    pub created: bool,
    pub queues: u32,
    pub message_types: MessageTypes,
}

/// Consumer groups' own delivery policies, as kept in `meta/groups.json`.
/// Loaded before the log is replayed: a FIFO group's bookkeeping depends on
/// it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct GroupsFile {
    groups: Vec<GroupDef>,
}

#[derive(Debug, Serialize, Deserialize)]
struct GroupDef {
    name: String,
    policy: GroupPolicy,
}

/// Where a stored message landed.
#[derive(Debug, Clone)]
pub struct Stored {
    pub message_id: String,
    pub queue_id: u32,
    /// Queue offset, for messages indexed on arrival; `None` for a half
    /// message or one waiting for its delivery time (placed later).
    pub queue_offset: Option<u64>,
    /// Half messages only: the id EndTransaction must name.
    pub transaction_id: Option<String>,
    /// Messages waiting for their delivery time: the handle that recalls it.
    pub recall_handle: Option<String>,
}

/// A check-back ready to send: the order and the half message itself.
#[derive(Debug, Clone)]
pub struct CheckBack {
    pub order: CheckOrder,
    pub message: MessageRecord,
    pub store_ms: i64,
}

/// A delivery with the message record read back from the log.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub delivery: Delivery,
    pub message: MessageRecord,
    pub store_ms: i64,
}

pub struct ReceiveArgs {
    pub group: String,
    pub topic: String,
    pub filter: Filter,
    pub max_messages: usize,
    pub invisible_ms: i64,
    pub long_poll: Duration,
    /// The client's id for this receive attempt: a retry with the same id
    /// gets the same messages while they are still in flight.
    pub attempt_id: Option<String>,
    /// The consumer client's id, recorded with each delivery.
    pub client: String,
}

/// One transaction's outcome as a producer (or its checker) sends it.
#[derive(Debug, Clone)]
pub struct EndRequest {
    pub topic: String,
    pub message_id: String,
    pub transaction_id: String,
    pub outcome: TxOutcome,
    pub source: TxSource,
}

/// Most transactions one [`Engine::end_transactions`] call ends: one core
/// lock holds them all, so the batch is bounded like a send batch.
pub const MAX_END_BATCH: usize = 1024;

/// Recent receives by (group, topic, attempt id), so a client that lost a
/// receive's answer and retries with the same attempt id gets the same
/// messages rather than having them stuck invisible until they expire.
/// Bounded; oldest entries go first.
#[derive(Default)]
struct Attempts {
    by_key: HashMap<(String, String, String), Vec<Delivery>>,
    order: std::collections::VecDeque<(String, String, String)>,
}

/// Receive attempts remembered for replay.
const MAX_REMEMBERED_ATTEMPTS: usize = 10_000;
/// Longest attempt id accepted.
pub const MAX_ATTEMPT_ID_LEN: usize = 128;

impl Attempts {
    fn clear(&mut self) {
        self.by_key.clear();
        self.order.clear();
    }

    fn remember(&mut self, key: (String, String, String), deliveries: Vec<Delivery>) {
        if self.by_key.insert(key.clone(), deliveries).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > MAX_REMEMBERED_ATTEMPTS {
            if let Some(old) = self.order.pop_front() {
                self.by_key.remove(&old);
            }
        }
    }
}

pub struct Engine {
    core: Mutex<Broker>,
    /// What a fresh core is built from (at open and on heal).
    core_config: ferry_broker::CoreConfig,
    log: Log,
    meta_path: std::path::PathBuf,
    groups_path: std::path::PathBuf,
    /// Serialises writers of the metadata files.
    meta_lock: Mutex<()>,
    attempts: Mutex<Attempts>,
    /// Long-polling receivers wait here per topic.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    pub metrics: Metrics,
    recovery: RecoveryReport,
    retention: ferry_store::retention::RetentionPolicy,
    retention_check: Duration,
    /// The core's limits, fixed at start: read on every request without
    /// taking the core lock.
    limits: ferry_broker::Limits,
    transaction_config: ferry_broker::TransactionConfig,
    /// Wakes the scheduler when a timer or a half message was added.
    schedule_changed: Arc<Notify>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fresh core with what must be known before the log is replayed: the
/// topic definitions (`meta/topics.json`) and the groups' own delivery
/// policies (`meta/groups.json`). [`Engine::open`] and [`Engine::heal`]
/// then apply every record of the log to it.
fn load_core(
    config: &ferry_broker::CoreConfig,
    meta_path: &std::path::Path,
    groups_path: &std::path::Path,
) -> Result<Broker, EngineError> {
    let mut core = Broker::new(config.clone());
    match meta::read::<TopicsFile>(meta_path) {
        Ok(Some(file)) => {
            for t in file.topics {
                let made = MessageTypes::parse(&t.message_types)
                    .map_err(BrokerError::BadRequest)
                    .and_then(|message_types| {
                        let config = TopicConfig {
                            queues: t.queues,
                            message_types,
                        };
                        core.restore_topic(&t.name, config, t.created_at)
                    });
                if let Err(e) = made {
                    warn!(topic = %t.name, error = %e, "skipping unusable topic definition");
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            // Topics are re-derived from the log; only empty topics and
            // queue counts are lost. Say so and carry on.
            error!(error = %e, "topic metadata unreadable; rebuilding topics from the log");
        }
    }
    // Unlike topics, policies cannot be re-derived from the log: an
    // unreadable file stops the broker rather than silently turning FIFO
    // groups into plain ones.
    if let Some(file) = meta::read::<GroupsFile>(groups_path)? {
        for g in file.groups {
            core.set_policy(&g.name, Some(g.policy))?;
        }
    }
    Ok(core)
}

impl Engine {
    /// Opens the data directory: loads topic definitions, recovers the log
    /// and replays every record into a fresh core.
    pub fn open(config: &ServerConfig) -> Result<Engine, EngineError> {
        let meta_dir = config.data_dir.join("meta");
        std::fs::create_dir_all(&meta_dir).map_err(|source| StoreError::Io {
            context: "creating metadata directory",
            path: meta_dir.clone(),
            source,
        })?;
        let meta_path = meta_dir.join("topics.json");
        let groups_path = meta_dir.join("groups.json");
        let mut core = load_core(&config.core, &meta_path, &groups_path)?;
        let mut log_config = LogConfig::new(config.data_dir.join("log"));
        log_config.flush = config.flush;
        log_config.async_flush_interval = config.async_flush_interval;
        log_config.segment_bytes = config.segment_bytes;
        log_config.max_record_bytes = config.core.limits.max_body_bytes
            + config.core.limits.max_properties_bytes
            + (64 << 10);
        log_config.disk_hook = config.disk_hook.clone();
        let (log, recovery) = Log::open(log_config, &mut |offset, len, rec| {
            core.apply(offset, len, &rec)
        })?;
        if !recovery.dropped.is_empty()
            || recovery.truncated_bytes > 0
            || !recovery.damaged_segments.is_empty()
        {
            warn!(
                dropped_ranges = recovery.dropped.len(),
                truncated_bytes = recovery.truncated_bytes,
                damaged_segments = recovery.damaged_segments.len(),
                "recovery removed damaged or torn data (see earlier log lines for each range)"
            );
        }
        info!(
            topics = core.topic_names().count(),
            "broker state rebuilt from the log"
        );
        let engine = Engine {
            core: Mutex::new(core),
            core_config: config.core.clone(),
            log,
            meta_path,
            groups_path,
            meta_lock: Mutex::new(()),
            waiters: Mutex::new(HashMap::new()),
            attempts: Mutex::new(Attempts::default()),
            metrics: Metrics::default(),
            recovery,
            retention: config.retention,
            retention_check: config.retention_check,
            limits: config.core.limits.clone(),
            transaction_config: config.core.transactions.clone(),
            schedule_changed: Arc::new(Notify::new()),
        };
        engine.save_topics()?;
        Ok(engine)
    }

    fn core(&self) -> MutexGuard<'_, Broker> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn limits(&self) -> &ferry_broker::Limits {
        &self.limits
    }

    pub fn transaction_config(&self) -> &ferry_broker::TransactionConfig {
        &self.transaction_config
    }

    pub fn schedule_changed(&self) -> Arc<Notify> {
        self.schedule_changed.clone()
    }

    pub fn retention_interval(&self) -> Duration {
        self.retention_check
    }

    /// Reads a consistent snapshot of the core for reporting.
    pub fn with_core<T>(&self, f: impl FnOnce(&Broker) -> T) -> T {
        f(&self.core())
    }

    fn save_topics(&self) -> Result<(), EngineError> {
        let _guard = self.meta_lock.lock().unwrap_or_else(|p| p.into_inner());
        let file = {
            let core = self.core();
            TopicsFile {
                topics: core
                    .topic_stats()
                    .into_iter()
                    .map(|t| TopicDef {
                        name: t.name,
                        queues: t.queues.len() as u32,
                        message_types: t
                            .message_types
                            .names()
                            .into_iter()
                            .map(String::from)
                            .collect(),
                        created_at: t.created_at,
                    })
                    .collect(),
            }
        };
        meta::write(&self.meta_path, &file)?;
        Ok(())
    }

    /// The delivery policy `group` runs under.
    pub fn group_policy(&self, group: &str) -> GroupPolicy {
        self.core().policy(group).clone()
    }

    /// Groups with a policy of their own.
    pub fn group_policies(&self) -> Vec<(String, GroupPolicy)> {
        self.core()
            .policies()
            .iter()
            .map(|(g, p)| (g.clone(), p.clone()))
            .collect()
    }

    /// Gives `group` a policy of its own (`None`: back to the broker
    /// default) and saves every policy before answering. Clients learn the
    /// new one at their next settings exchange.
    pub fn set_group_policy(
        &self,
        group: &str,
        policy: Option<GroupPolicy>,
    ) -> Result<(), EngineError> {
        let _guard = self.meta_lock.lock().unwrap_or_else(|p| p.into_inner());
        let file = {
            let mut core = self.core();
            let old = core.policies().get(group).cloned();
            core.set_policy(group, policy)?;
            let file = GroupsFile {
                groups: core
                    .policies()
                    .iter()
                    .map(|(g, p)| GroupDef {
                        name: g.clone(),
                        policy: p.clone(),
                    })
                    .collect(),
            };
            if let Err(e) = meta::write(&self.groups_path, &file) {
                // Not saved, not changed: put the old policy back.
                core.set_policy(group, old)?;
                return Err(e.into());
            }
            file
        };
        info!(%group, policies = file.groups.len(), "group policy saved");
        Ok(())
    }

    /// Makes sure `topic` exists, creating it (accepting every message
    /// type) when automatic creation is on. Returns its queue count and the
    /// message types it accepts.
    pub fn ensure_topic(&self, topic: &str) -> Result<(u32, MessageTypes), EngineError> {
        let created = {
            let mut core = self.core();
            if let Some(t) = core.topic(topic) {
                return Ok((t.queues.len() as u32, t.message_types()));
            }
            if !core.config().auto_create_topics {
                return Err(BrokerError::TopicNotFound(topic.to_string()).into());
            }
            let queues = core.config().default_queues;
            core.create_topic(topic, queues)?;
            queues
        };
        info!(%topic, queues = created, "topic created");
        self.save_topics()?;
        Ok((created, MessageTypes::ALL))
    }

    /// Creates a topic (admin API) with `queues` queues (default: the
    /// broker's) accepting `types` (default: all). For an existing topic,
    /// `types` replaces what it accepts; its queue count stays.
    pub fn create_topic(
        &self,
        topic: &str,
        queues: Option<u32>,
        types: Option<MessageTypes>,
    ) -> Result<TopicCreated, EngineError> {
        let (answer, changed) = {
            let mut core = self.core();
            let config = TopicConfig {
                queues: queues.unwrap_or(core.config().default_queues),
                message_types: types.unwrap_or(MessageTypes::ALL),
            };
            let created = core.create_topic_with(topic, config)?;
            let mut changed = created;
            if let (false, Some(types)) = (created, types) {
                changed = core.topic(topic).map(|t| t.message_types()) != Some(types);
                core.set_message_types(topic, types)?;
            }
            let t = core
                .topic(topic)
                .ok_or_else(|| BrokerError::TopicNotFound(topic.to_string()))?;
            let answer = TopicCreated {
                created,
                queues: t.queues.len() as u32,
                message_types: t.message_types(),
            };
            (answer, changed)
        };
        if changed {
            info!(%topic, queues = answer.queues, types = %answer.message_types, created = answer.created, "topic defined");
            self.save_topics()?;
        }
        Ok(answer)
    }

    /// Deletes a topic (admin API): a `TopicDelete` record, durable before
    /// the answer, then the topic file without it. Its messages stay in the
    /// log until retention (lookups still find them) but are never
    /// delivered again; a later send of the same name makes a new topic.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), EngineError> {
        let epoch;
        let end = {
            let mut core = self.core();
            epoch = self.log.epoch();
            let rec = core.plan_topic_delete(now_ms(), topic)?;
            self.commit(&mut core, std::slice::from_ref(&rec))?
        };
        self.log.wait_committed_in(epoch, end).await?;
        info!(%topic, "topic deleted");
        self.metrics.forget_topic(topic);
        self.save_topics()?;
        // Long polls on it look again (and find it gone).
        self.wake(topic);
        Ok(())
    }

    fn waiter(&self, topic: &str) -> Arc<Notify> {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(topic.to_string()).or_default().clone()
    }

    fn wake(&self, topic: &str) {
        let w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = w.get(topic) {
            n.notify_waiters();
        }
    }

    /// Appends and applies `records` under the held core lock; returns the
    /// end offset to wait for.
    fn commit(&self, core: &mut Broker, records: &[Record]) -> Result<u64, EngineError> {
        let mut end = 0;
        for rec in records {
            let (offset, len) = self.log.append(rec)?;
            core.apply(offset, len, rec);
            end = offset + len as u64;
        }
        Ok(end)
    }

    /// Stores a batch atomically: every message is validated first, and if
    /// any is refused none is stored. Answers once all are durable.
    pub async fn send(&self, batch: Vec<Incoming>) -> Result<Vec<Stored>, Vec<EngineError>> {
        let limits = &self.limits;
        if batch.is_empty() || batch.len() > limits.max_batch_messages {
            let e = BrokerError::BadRequest(format!(
                "a batch holds 1 to {} messages, not {}",
                limits.max_batch_messages,
                batch.len()
            ));
            return Err(vec![e.into()]);
        }
        let checks: Vec<Result<(), BrokerError>> = batch
            .iter()
            .map(|m| ferry_broker::validate::message(m, limits))
            .collect();
        if let Some(first_bad) = checks.iter().position(Result::is_err) {
            let reason = checks[first_bad]
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            Metrics::add(&self.metrics.send_rejected, batch.len() as u64);
            return Err(checks
                .into_iter()
                .map(|c| match c {
                    Err(e) => e.into(),
                    Ok(()) => BrokerError::BatchRejected {
                        index: first_bad,
                        reason: reason.clone(),
                    }
                    .into(),
                })
                .collect());
        }
        let mut topics: Vec<&str> = batch.iter().map(|m| m.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        for t in &topics {
            self.ensure_topic(t).map_err(|e| vec![e])?;
        }
        let now = now_ms();
        let epoch;
        let (stored, end) = {
            let mut core = self.core();
            epoch = self.log.epoch();
            if let Err((index, e)) = core.admit_batch(now, &batch) {
                Metrics::add(&self.metrics.send_rejected, batch.len() as u64);
                let reason = e.to_string();
                return Err((0..batch.len())
                    .map(|i| {
                        if i == index {
                            e.clone().into()
                        } else {
                            BrokerError::BatchRejected {
                                index,
                                reason: reason.clone(),
                            }
                            .into()
                        }
                    })
                    .collect());
            }
            let mut stored = Vec::with_capacity(batch.len());
            let mut end = 0;
            for m in &batch {
                let rec = core.prepare_message(now, m).map_err(|e| vec![e.into()])?;
                // Apply each before preparing the next: queue offsets advance.
                let (offset, len) = self.log.append(&rec).map_err(|e| vec![e.into()])?;
                core.apply(offset, len, &rec);
                end = offset + len as u64;
                if let Payload::Message(r) = &rec.payload {
                    let placed =
                        placement(r.message_type, r.delivery_timestamp_ms, rec.timestamp_ms);
                    stored.push(Stored {
                        message_id: r.message_id.clone(),
                        queue_id: r.queue_id,
                        queue_offset: (placed == Placement::Queue).then_some(r.queue_offset),
                        transaction_id: (placed == Placement::Half)
                            .then(|| ferry_broker::transaction::transaction_id(offset)),
                        recall_handle: (placed == Placement::Timer)
                            .then(|| ferry_broker::recall_handle(offset)),
                    });
                }
            }
            (stored, end)
        };
        self.log
            .wait_committed_in(epoch, end)
            .await
            .map_err(|e| vec![e.into()])?;
        Metrics::add(&self.metrics.messages_stored, batch.len() as u64);
        Metrics::add(
            &self.metrics.tx_half_stored,
            stored.iter().filter(|s| s.transaction_id.is_some()).count() as u64,
        );
        Metrics::add(
            &self.metrics.bytes_stored,
            batch.iter().map(|m| m.body.len() as u64).sum(),
        );
        self.metrics.stored(
            batch
                .iter()
                .zip(&stored)
                .map(|(m, s)| (m.topic.as_str(), s.queue_id, m.body.len() as u64)),
        );
        for t in topics {
            self.wake(t);
        }
        // A new timer may be due before the scheduler's next look. (A new
        // half message is not: its first check lies seconds ahead, and the
        // scheduler looks at least once a second.)
        if stored.iter().any(|s| s.recall_handle.is_some()) {
            self.schedule_changed.notify_waiters();
        }
        Ok(stored)
    }

    /// Hands out up to `max_messages`, waiting up to `long_poll` for some to
    /// arrive or become visible again. Deliveries are durable before return.
    pub async fn receive(&self, args: &ReceiveArgs) -> Result<Vec<Delivered>, EngineError> {
        let key = args
            .attempt_id
            .as_ref()
            .map(|a| (args.group.clone(), args.topic.clone(), a.clone()));
        if let Some(key) = &key {
            if let Some(again) = self.replay_attempt(key) {
                return Ok(again);
            }
        }
        let got = self.receive_new(args).await?;
        if let Some(key) = key {
            if !got.is_empty() {
                let deliveries = got.iter().map(|d| d.delivery.clone()).collect();
                self.attempts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remember(key, deliveries);
            }
        }
        Ok(got)
    }

    /// The messages an earlier receive with this attempt id handed out, if
    /// any of them are still in flight under the same receipts.
    fn replay_attempt(&self, key: &(String, String, String)) -> Option<Vec<Delivered>> {
        let earlier = self
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .get(key)?
            .clone();
        let now = now_ms();
        let held: Vec<Delivery> = {
            let core = self.core();
            earlier
                .into_iter()
                .filter(|d| core.still_held(&key.0, &key.1, d, now))
                .collect()
        };
        if held.is_empty() {
            return None;
        }
        Metrics::add(&self.metrics.attempt_replays, 1);
        Some(self.read_deliveries(&key.0, &key.1, held))
    }

    async fn receive_new(&self, args: &ReceiveArgs) -> Result<Vec<Delivered>, EngineError> {
        let deadline = tokio::time::Instant::now() + args.long_poll;
        let notify = self.waiter(&args.topic);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = now_ms();
            let epoch;
            let (plan, end, next_expiry) = {
                let mut core = self.core();
                epoch = self.log.epoch();
                let committed = self.log.progress().committed;
                let read_properties =
                    |e: &ferry_broker::topic::Entry| match self.log.read(e.log_offset, e.len) {
                        Ok(Record {
                            payload: Payload::Message(m),
                            ..
                        }) => Some(m.properties),
                        Ok(_) | Err(_) => {
                            error!(
                                offset = e.log_offset,
                                "message unreadable for filtering; skipped"
                            );
                            None
                        }
                    };
                let req = ReceiveRequest {
                    group: &args.group,
                    topic: &args.topic,
                    filter: &args.filter,
                    max_messages: args.max_messages,
                    invisible_ms: args.invisible_ms,
                    client: &args.client,
                    properties: Some(&read_properties),
                };
                let plan = core.plan_receive(now, &req, committed)?;
                let end = self.commit(&mut core, &plan.records)?;
                core.apply_scans(&args.group, &args.topic, &plan.scans);
                let next = core.next_expiry(&args.group, &args.topic);
                (plan, end, next)
            };
            if !plan.records.is_empty() {
                self.log.wait_committed_in(epoch, end).await?;
            }
            if plan.dead_lettered > 0 {
                Metrics::add(&self.metrics.dead_lettered, plan.dead_lettered as u64);
                self.metrics
                    .group_dead_lettered(&args.group, plan.dead_lettered as u64);
                self.wake(&ferry_broker::dlq_topic(&args.group));
            }
            if !plan.deliveries.is_empty() {
                return Ok(self.read_deliveries(&args.group, &args.topic, plan.deliveries));
            }
            let mut wake_at = deadline;
            if let Some(t) = next_expiry {
                let in_ms = (t - now).max(0) as u64;
                wake_at = wake_at.min(tokio::time::Instant::now() + Duration::from_millis(in_ms));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            // Whatever wakes us, the loop looks once more before giving up,
            // so a message arriving right at the deadline is not missed.
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    fn read_deliveries(
        &self,
        group: &str,
        topic: &str,
        deliveries: Vec<Delivery>,
    ) -> Vec<Delivered> {
        let mut out = Vec::with_capacity(deliveries.len());
        let mut redelivered = 0;
        for d in deliveries {
            match self.log.read(d.log_offset, d.len) {
                Ok(Record {
                    timestamp_ms,
                    payload: Payload::Message(m),
                    ..
                }) => {
                    if d.attempt > 1 {
                        redelivered += 1;
                    }
                    out.push(Delivered {
                        delivery: d,
                        message: m,
                        store_ms: timestamp_ms,
                    })
                }
                Ok(other) => {
                    error!(offset = d.log_offset, kind = ?other.payload.kind(), "index points at a non-message record; skipping");
                    self.core().mark_lost(topic, d.queue_id, d.queue_offset);
                }
                Err(e) => {
                    error!(offset = d.log_offset, queue = d.queue_id, queue_offset = d.queue_offset, error = %e,
                        "message unreadable; it will not be served");
                    Metrics::add(&self.metrics.corrupt_reads, 1);
                    self.core().mark_lost(topic, d.queue_id, d.queue_offset);
                }
            }
        }
        Metrics::add(&self.metrics.messages_delivered, out.len() as u64);
        if redelivered > 0 {
            Metrics::add(&self.metrics.redeliveries, redelivered);
            self.metrics.group_redelivered(group, redelivered);
        }
        out
    }

    /// Acknowledges a batch of receipts with one group commit: each is
    /// decided and appended under one lock, then all wait for one durable
    /// point. Results are per receipt, in order.
    pub async fn ack(
        &self,
        group: &str,
        topic: &str,
        receipts: &[&str],
    ) -> Vec<Result<(), EngineError>> {
        let now = now_ms();
        let mut results: Vec<Result<(), EngineError>> = Vec::with_capacity(receipts.len());
        let mut end = 0;
        let fifo;
        let epoch;
        {
            let mut core = self.core();
            epoch = self.log.epoch();
            fifo = core.policy(group).fifo;
            for receipt in receipts {
                let r = core
                    .plan_ack(now, group, topic, receipt)
                    .map_err(EngineError::from)
                    .and_then(|rec| self.commit(&mut core, std::slice::from_ref(&rec)));
                results.push(r.map(|e| end = end.max(e)));
            }
        }
        if end > 0 {
            if let Err(e) = self.log.wait_committed_in(epoch, end).await {
                let msg = e.to_string();
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(StoreError::Failed(msg.clone()).into());
                }
            }
        }
        Metrics::add(
            &self.metrics.acks,
            results.iter().filter(|r| r.is_ok()).count() as u64,
        );
        if fifo && end > 0 {
            // An ack may free a message group whose next message waits:
            // long-polling receivers look again.
            self.wake(topic);
        }
        results
    }

    /// Cancels a delayed message whose time has not come; returns its id.
    pub async fn recall(&self, topic: &str, recall_handle: &str) -> Result<String, EngineError> {
        let epoch;
        let (end, message_id) = {
            let mut core = self.core();
            epoch = self.log.epoch();
            let (rec, id) = core.plan_recall(now_ms(), topic, recall_handle)?;
            (self.commit(&mut core, std::slice::from_ref(&rec))?, id)
        };
        self.log.wait_committed_in(epoch, end).await?;
        Ok(message_id)
    }

    /// Moves an in-flight message to the group's dead-letter topic at the
    /// consumer's request (ForwardMessageToDeadLetterQueue).
    pub async fn dead_letter(
        &self,
        group: &str,
        topic: &str,
        receipt: &str,
    ) -> Result<(), EngineError> {
        let epoch;
        let end = {
            let mut core = self.core();
            epoch = self.log.epoch();
            let rec = core.plan_dead_letter(now_ms(), group, topic, receipt)?;
            self.commit(&mut core, std::slice::from_ref(&rec))?
        };
        self.log.wait_committed_in(epoch, end).await?;
        Metrics::add(&self.metrics.dead_lettered, 1);
        self.metrics.group_dead_lettered(group, 1);
        self.wake(&ferry_broker::dlq_topic(group));
        // A FIFO group's next message may be free now.
        self.wake(topic);
        Ok(())
    }

    /// Sends the dead letter at `dlq_offset` of `%DLQ%<group>` back to its
    /// topic for `group` (admin API): due at once, attempts counted afresh.
    pub async fn redrive(&self, group: &str, dlq_offset: u64) -> Result<String, EngineError> {
        let epoch;
        let (end, topic) = {
            let mut core = self.core();
            epoch = self.log.epoch();
            let rec = core.plan_redrive(now_ms(), group, dlq_offset)?;
            let Payload::Redrive(r) = &rec.payload else {
                unreachable!("plan_redrive makes Redrive records");
            };
            let topic = r.topic.clone();
            (self.commit(&mut core, std::slice::from_ref(&rec))?, topic)
        };
        self.log.wait_committed_in(epoch, end).await?;
        Metrics::add(&self.metrics.redriven, 1);
        info!(%group, dlq_offset, %topic, "dead letter re-driven");
        self.wake(&topic);
        Ok(topic)
    }

    /// Changes the invisible duration of an in-flight message; returns the
    /// new receipt handle (the old one is dead).
    pub async fn change_invisible(
        &self,
        group: &str,
        topic: &str,
        receipt: &str,
        invisible_ms: i64,
    ) -> Result<String, EngineError> {
        let epoch;
        let (end, handle) = {
            let mut core = self.core();
            epoch = self.log.epoch();
            let (rec, handle) = core.plan_renew(now_ms(), group, topic, receipt, invisible_ms)?;
            (self.commit(&mut core, std::slice::from_ref(&rec))?, handle)
        };
        self.log.wait_committed_in(epoch, end).await?;
        Metrics::add(&self.metrics.invisibility_changes, 1);
        // Pollers may be sleeping past this message's new visibility time.
        self.wake(topic);
        Ok(handle)
    }

    /// Ends one transaction: see [`Engine::end_transactions`].
    pub async fn end_transaction(&self, end: &EndRequest) -> Result<EndDecision, EngineError> {
        let mut decided = self.end_transactions(std::slice::from_ref(end)).await?;
        assert_eq!(decided.len(), 1, "one decision per request");
        decided.pop().expect("one decision")
    }

    /// Ends transactions, each decided on its own in order (a repeat of an
    /// earlier entry sees that entry's outcome), with one wait for the
    /// records of all to be durable. A transaction's first outcome is final
    /// and durable before this returns; a repeat of it is answered
    /// `AlreadyEnded` without a second effect. `Err` only when the wait
    /// failed: then no entry's outcome is known to be durable.
    pub async fn end_transactions(
        &self,
        ends: &[EndRequest],
    ) -> Result<Vec<Result<EndDecision, EngineError>>, EngineError> {
        assert!(ends.len() <= MAX_END_BATCH, "callers bound the batch");
        let mut decided = Vec::with_capacity(ends.len());
        let mut durable_end = 0;
        let epoch;
        {
            let mut core = self.core();
            epoch = self.log.epoch();
            let now = now_ms();
            for e in ends {
                let decision = core.plan_end_transaction(
                    now,
                    &e.topic,
                    &e.message_id,
                    &e.transaction_id,
                    e.outcome,
                    e.source,
                );
                let outcome = match decision {
                    Err(err) => {
                        Metrics::add(&self.metrics.tx_end_refused, 1);
                        Err(err.into())
                    }
                    Ok(EndDecision::Record(rec)) => {
                        // Applied before the next entry is planned, so a
                        // repeat within the batch is seen as one.
                        self.commit(&mut core, std::slice::from_ref(rec.as_ref()))
                            .map(|end| {
                                durable_end = durable_end.max(end);
                                EndDecision::Record(rec)
                            })
                    }
                    Ok(d @ EndDecision::AlreadyEnded(_)) => {
                        // The record that ended it may not be durable yet
                        // (a repeat sent while the first still waits): the
                        // repeat's OK waits for everything appended so far.
                        durable_end = durable_end.max(self.log.next_offset());
                        Metrics::add(&self.metrics.tx_end_repeated, 1);
                        Ok(d)
                    }
                };
                decided.push(outcome);
            }
        }
        if durable_end > 0 {
            self.log.wait_committed_in(epoch, durable_end).await?;
        }
        let mut timers = false;
        for (e, d) in ends.iter().zip(&decided) {
            let Ok(EndDecision::Record(rec)) = d else {
                continue;
            };
            match &rec.payload {
                Payload::TxEnd(t) if t.outcome == TxOutcome::Commit => {
                    Metrics::add(&self.metrics.tx_committed, 1);
                    self.wake(&e.topic);
                    // A delivery time ahead: it became a timer.
                    timers |= t.queue_offset.is_none();
                }
                _ => Metrics::add(&self.metrics.tx_rolled_back, 1),
            }
        }
        if timers {
            self.schedule_changed.notify_waiters();
        }
        Ok(decided)
    }

    /// One round of check-backs: decides (at most `budget`), makes the check
    /// counts and discards durable, then returns the checks to send with
    /// their half messages. `producer_online` says whether a producer of a
    /// topic is connected to ask.
    pub async fn run_checks(
        &self,
        budget: usize,
        producer_online: &mut (dyn FnMut(&str) -> bool + Send),
    ) -> Result<Vec<CheckBack>, EngineError> {
        let epoch;
        let (plan, end) = {
            let mut core = self.core();
            epoch = self.log.epoch();
            let plan = core.plan_checks(now_ms(), budget, producer_online);
            let end = self.commit(&mut core, &plan.records)?;
            (plan, end)
        };
        if end > 0 {
            self.log.wait_committed_in(epoch, end).await?;
        }
        Metrics::add(&self.metrics.tx_discarded, plan.discarded as u64);
        Metrics::add(&self.metrics.tx_checks_deferred, plan.deferred as u64);
        if plan.discarded > 0 {
            warn!(
                discarded = plan.discarded,
                "transactions discarded after their last check-back went unanswered"
            );
        }
        let mut out = Vec::with_capacity(plan.orders.len());
        for order in plan.orders {
            match self.log.read(order.half_offset, order.len) {
                Ok(Record {
                    timestamp_ms,
                    payload: Payload::Message(m),
                    ..
                }) => out.push(CheckBack {
                    order,
                    message: m,
                    store_ms: timestamp_ms,
                }),
                Ok(_) | Err(_) => {
                    error!(offset = order.half_offset, transaction = %order.transaction_id,
                        "half message unreadable; its check-back cannot be sent");
                    Metrics::add(&self.metrics.corrupt_reads, 1);
                }
            }
        }
        Ok(out)
    }

    /// When the next check-back or timer is due, if any.
    pub fn next_due(&self) -> Option<i64> {
        let core = self.core();
        match (core.transactions().next_due(), core.timers().next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Indexes every message whose delivery time has come (at most `max`),
    /// durably, and wakes their consumers. Returns how many fired.
    pub async fn fire_timers(&self, max: usize) -> Result<usize, EngineError> {
        let now = now_ms();
        let mut topics = Vec::new();
        // Each fired message's delivery time (its timer, until applied).
        let mut due = Vec::new();
        let epoch;
        let end = {
            let mut core = self.core();
            epoch = self.log.epoch();
            let mut end = 0;
            while topics.len() < max {
                let Some(rec) = core.plan_fire(now) else {
                    break;
                };
                if let Payload::Fire(f) = &rec.payload {
                    topics.push(f.topic.clone());
                    due.extend(core.timers().get(f.message_offset).map(|t| t.due_ms));
                }
                end = self.commit(&mut core, std::slice::from_ref(&rec))?;
            }
            end
        };
        if end > 0 {
            self.log.wait_committed_in(epoch, end).await?;
        }
        let fired = topics.len();
        Metrics::add(&self.metrics.timers_fired, fired as u64);
        // Late by: deliverable (durably indexed) now, due then.
        let deliverable = now_ms();
        for d in due {
            let late = u64::try_from(deliverable - d).unwrap_or(0);
            self.metrics.timer_lateness_ms.observe(late);
        }
        topics.sort_unstable();
        topics.dedup();
        for t in topics {
            self.wake(&t);
        }
        Ok(fired)
    }

    /// Deletes segments the retention policy allows, after telling the logs
    /// which groups lose messages they had not consumed. A segment holding
    /// a pending half message or a message waiting for its delivery time is
    /// kept, and so is every later one.
    pub fn enforce_retention(&self) {
        if self.log.progress().failed.is_some() {
            // A heal needs every segment it has, and the core is about to
            // be rebuilt anyway.
            return;
        }
        let segments = self.log.segments();
        let stats: Vec<_> = segments
            .iter()
            .map(|s| ferry_store::retention::SegmentStat {
                base: s.base,
                bytes: s.bytes,
                last_write_ms: s.last_write_ms,
            })
            .collect();
        let pinned = self.core().pinned_offset().unwrap_or(u64::MAX);
        for base in ferry_store::retention::expired(&stats, now_ms(), self.retention) {
            let Some(seg) = segments.iter().find(|s| s.base == base) else {
                continue;
            };
            if seg.end > pinned {
                info!(
                    segment = base,
                    pinned, "retention keeps a segment that holds a pending transaction or timer"
                );
                break;
            }
            let losses = self.core().prune_below(seg.end);
            for l in losses {
                warn!(group = %l.group, topic = %l.topic, queue = l.queue_id, messages = l.messages,
                    "retention deletes messages this consumer group has not consumed");
            }
            if let Err(e) = self.log.delete_segment(base) {
                error!(error = %e, "retention could not delete a segment");
            }
        }
    }

    /// Brings the broker back after a disk fault stopped the commit log:
    /// heals the log (see `Log::heal`: files cut back to the committed
    /// offset, pending records dropped) and rebuilds the core by replaying
    /// it exactly as [`Engine::open`] does — the topic file, the group
    /// policies, then every record — because the core had applied records
    /// the log dropped. The metadata lock and then the core lock are held
    /// throughout, so no decision interleaves and nothing is appended until
    /// the new core is in place. Receive attempts remembered for retries
    /// are forgotten (their deliveries may be gone).
    ///
    /// `Ok(false)` when the log had not failed. On an error (the fault
    /// persists) the log stays failed and this can be called again.
    /// Blocking: disk work and a full replay.
    pub fn heal(&self) -> Result<bool, EngineError> {
        if self.log.progress().failed.is_none() {
            return Ok(false);
        }
        let meta_guard = self.meta_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut core = self.core();
        let mut fresh = load_core(&self.core_config, &self.meta_path, &self.groups_path)?;
        let healed = self
            .log
            .heal_and_replay(&mut |offset, len, rec| fresh.apply(offset, len, &rec))?;
        if !healed {
            return Ok(false);
        }
        *core = fresh;
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let topics = core.topic_names().count();
        drop(core);
        drop(meta_guard);
        Metrics::add(&self.metrics.log_heals, 1);
        info!(
            topics,
            committed = self.log.progress().committed,
            "broker state rebuilt from the healed log"
        );
        // Long polls and the scheduler look again at the new state.
        for n in self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            n.notify_waiters();
        }
        self.schedule_changed.notify_waiters();
        Ok(true)
    }

    /// Flushes and closes the log cleanly.
    pub fn shutdown(&self) -> Result<(), EngineError> {
        self.log.shutdown()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> (String, String, String) {
        ("g".into(), "t".into(), format!("attempt-{i}"))
    }

    #[test]
    fn remembered_attempts_are_bounded_oldest_first() {
        let mut a = Attempts::default();
        for i in 0..MAX_REMEMBERED_ATTEMPTS + 10 {
            a.remember(key(i), Vec::new());
        }
        assert_eq!(a.by_key.len(), MAX_REMEMBERED_ATTEMPTS);
        assert_eq!(a.order.len(), MAX_REMEMBERED_ATTEMPTS);
        assert!(!a.by_key.contains_key(&key(9)), "the oldest went first");
        assert!(a.by_key.contains_key(&key(10)));
        assert!(a.by_key.contains_key(&key(MAX_REMEMBERED_ATTEMPTS + 9)));
        // Remembering a key again replaces it without a second slot.
        a.remember(key(10), Vec::new());
        assert_eq!(a.order.len(), MAX_REMEMBERED_ATTEMPTS);
    }
}
