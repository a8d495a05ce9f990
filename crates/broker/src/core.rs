//! The state machine. See the crate docs for the decide → append → apply
//! discipline every mutation follows.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use ferry_record::{
    AckRecord, DeadLetterRecord, DeliverRecord, FireRecord, MessageRecord, Payload, RecallRecord,
    Record, RedriveRecord, RenewRecord, TopicDeleteRecord, TxCheckRecord, TxEndRecord, TxOutcome,
    TxSource,
};

use crate::group::{Fifo, GroupQueue, Inflight, Scan};
use crate::handle::{self, Receipt};
use crate::message_index::{Candidates, MessageIndex};
use crate::policy::GroupPolicy;
use crate::timer::{Parked, Timer, Timers};
use crate::topic::{Entry, Topic, TopicConfig};
use crate::transaction::{self, HalfMessage, Resolved, Transactions};
use crate::{validate, BrokerError, CoreConfig};
use ferry_filter::Filter;

mod inspect;
mod topic_delete;

pub use inspect::{DeliveryState, GroupDelivery, GroupView, MessageStatus, TxState};

pub use crate::message_type::{MessageKind, MessageTypes};

/// A message as a producer sent it, before it has a place in the log.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub message_id: String,
    pub kind: MessageKind,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub message_group: Option<String>,
    pub delivery_timestamp_ms: Option<i64>,
    /// Transactional messages: the producer's wish for the first check-back
    /// delay (`orphaned_transaction_recovery_duration`).
    pub check_after_ms: Option<i64>,
    pub born_timestamp_ms: i64,
    pub born_host: String,
    /// Queue the producer picked from the route; taken modulo the topic's
    /// queue count.
    pub queue_id: u32,
    pub body_encoding: u8,
    pub properties: Vec<(String, String)>,
    pub body: Bytes,
}

/// Reads the user properties of the message an index entry points at
/// (`None`: unreadable). SQL filters need them; the core never reads the
/// log itself, so the shell passes this in.
pub type PropertyReader<'a> = &'a dyn Fn(&Entry) -> Option<Vec<(String, String)>>;

/// A receive call, already parsed.
#[derive(Clone)]
pub struct ReceiveRequest<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub filter: &'a Filter,
    pub max_messages: usize,
    pub invisible_ms: i64,
    /// The consumer client asking (its `x-mq-client-id`), recorded with each
    /// delivery so a message's history says who had it; at most
    /// [`ferry_record::MAX_CLIENT_ID_BYTES`].
    pub client: &'a str,
    /// Needed only when `filter` looks at properties; without it such a
    /// filter sees none.
    pub properties: Option<PropertyReader<'a>>,
}

/// Where a dead letter came from: its place in the original topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterOrigin {
    pub dlq_queue_offset: u64,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    /// Deliveries made before it was given up.
    pub attempts: u32,
    /// When an operator last sent it back to its topic (`None`: never).
    /// A re-driven letter stays listed; bulk re-drives skip it so a message
    /// handled after its re-drive is not delivered yet again.
    pub redriven_at_ms: Option<i64>,
}

/// One message handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub queue_id: u32,
    pub queue_offset: u64,
    pub log_offset: u64,
    pub len: u32,
    pub attempt: u32,
    pub visible_at_ms: i64,
    pub receipt_handle: String,
}

/// What a receive decided: the records to append (in order), and per queue
/// what moved without a record of its own (filtered messages passed over,
/// FIFO messages held back) — see [`Broker::apply_scans`].
#[derive(Debug, Default)]
pub struct ReceivePlan {
    pub records: Vec<Record>,
    pub deliveries: Vec<Delivery>,
    pub scans: Vec<Scan>,
    /// Messages moved to the group's dead-letter topic instead of being
    /// delivered again (their last attempt had failed).
    pub dead_lettered: usize,
}

/// Where a message goes when it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Indexed at once: deliverable.
    Queue,
    /// A half message: parked until its transaction ends.
    Half,
    /// Parked until its delivery time.
    Timer,
}

/// The queue a message goes to. A message with a message group always goes
/// to the same queue of its topic, whatever queue the producer picked, so
/// its group's order is one queue's order even with several producers.
fn queue_for(m: &Incoming, queues: u32) -> u32 {
    match &m.message_group {
        Some(g) => crc32c::crc32c(g.as_bytes()) % queues,
        None => m.queue_id % queues,
    }
}

/// The record that moves the message at `(queue_id, queue_offset)` of
/// `topic` (index entry `e`) to `%DLQ%<group>` at `dlq_queue_offset`, after
/// `attempts` deliveries. The one shape both ways to a dead letter share.
fn dead_letter_record(
    now_ms: i64,
    group: &str,
    topic: &str,
    (queue_id, queue_offset): (u32, u64),
    e: &Entry,
    attempts: u32,
    dlq_queue_offset: u64,
) -> Record {
    Record {
        term: 0,
        timestamp_ms: now_ms,
        payload: Payload::DeadLetter(DeadLetterRecord {
            group: group.to_string(),
            topic: topic.to_string(),
            queue_id,
            queue_offset,
            message_offset: e.log_offset,
            message_len: e.len,
            attempts,
            dlq_queue_offset,
        }),
    }
}

/// Decides a message's placement from its type, delivery time and store
/// time. `prepare_message` and `apply` both ask this, `apply` with the
/// record's own timestamp, so replay places every message as it was placed
/// live.
pub fn placement(message_type: u8, delivery_ms: Option<i64>, store_ms: i64) -> Placement {
    if message_type == MessageKind::Transaction as u8 {
        Placement::Half
    } else if delivery_ms.is_some_and(|t| t > store_ms) {
        Placement::Timer
    } else {
        Placement::Queue
    }
}

/// The handle that recalls the delayed message stored at `offset`.
pub fn recall_handle(offset: u64) -> String {
    format!("R{offset:016X}")
}

fn recall_offset(handle: &str) -> Option<u64> {
    let hex = handle.strip_prefix('R').filter(|h| h.len() == 16)?;
    u64::from_str_radix(hex, 16).ok()
}

/// The dead-letter topic of a consumer group.
pub fn dlq_topic(group: &str) -> String {
    format!("%DLQ%{group}")
}

/// Un-consumed messages retention removed from under a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionLoss {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub messages: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TopicStats {
    pub name: String,
    /// Per queue: (min offset, max offset) — the retained range.
    pub queues: Vec<(u64, u64)>,
    pub message_types: MessageTypes,
    /// See [`Topic::created_at`]; saved with the topic's definition.
    pub created_at: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupQueueStats {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub consumed_offset: u64,
    pub max_offset: u64,
    pub lag: u64,
    pub inflight: usize,
}

type GroupState = BTreeMap<(String, u32), GroupQueue>;

/// What an EndTransaction call decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndDecision {
    /// A first outcome: append this record, apply it, answer once durable.
    Record(Box<Record>),
    /// The transaction already ended compatibly with what was asked (a
    /// repeat, or a rollback of a discarded one): answer OK, change nothing.
    AlreadyEnded(TxOutcome),
}

/// A check-back to send: ask a producer of `topic` about this transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOrder {
    pub half_offset: u64,
    pub len: u32,
    pub topic: String,
    pub message_id: String,
    pub transaction_id: String,
    /// 1 for the first check.
    pub check: u32,
}

/// What one round of check-backs decided: records to append (check counts,
/// discards) and the checks to send once those are appended.
#[derive(Debug, Default)]
pub struct CheckPlan {
    pub records: Vec<Record>,
    pub orders: Vec<CheckOrder>,
    /// Checks postponed because no producer of the topic was online.
    pub deferred: usize,
    pub discarded: usize,
}

/// The broker core. Single-threaded by design: the shell serialises calls.
#[derive(Debug)]
pub struct Broker {
    config: CoreConfig,
    topics: BTreeMap<String, Topic>,
    groups: BTreeMap<String, GroupState>,
    /// Groups with a delivery policy of their own (the rest use
    /// `config.default_policy`).
    policies: BTreeMap<String, GroupPolicy>,
    /// Per group, by offset in `%DLQ%<group>`: where each dead letter came
    /// from (for re-drive and listing). Pruned with the dead-letter topic.
    dead_letters: BTreeMap<String, BTreeMap<u64, DeadLetterOrigin>>,
    transactions: Transactions,
    timers: Timers,
    /// Every retained message record by id and by key (for lookups).
    messages: MessageIndex,
    /// Where messages indexed after newer records (committed half
    /// messages, fired timers) sit: their record cannot say, it was written
    /// before the place was known. Log offset → (queue, queue offset).
    late_positions: BTreeMap<u64, (u32, u64)>,
    /// End of the last record applied: the log end, live. A topic created
    /// now exists from here on (see [`Topic::created_at`]).
    applied_end: u64,
    next_handle: u64,
    rotation: u64,
}

impl Broker {
    pub fn new(config: CoreConfig) -> Self {
        Broker {
            transactions: Transactions::new(config.transactions.outcome_memory),
            timers: Timers::default(),
            config,
            topics: BTreeMap::new(),
            groups: BTreeMap::new(),
            policies: BTreeMap::new(),
            dead_letters: BTreeMap::new(),
            messages: MessageIndex::default(),
            late_positions: BTreeMap::new(),
            applied_end: 0,
            next_handle: 1,
            rotation: 0,
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The delivery policy `group` runs under.
    pub fn policy(&self, group: &str) -> &GroupPolicy {
        self.policies
            .get(group)
            .unwrap_or(&self.config.default_policy)
    }

    /// Groups with a policy of their own.
    pub fn policies(&self) -> &BTreeMap<String, GroupPolicy> {
        &self.policies
    }

    /// Gives `group` a policy of its own, or (`None`) returns it to the
    /// broker default. A change of FIFO mode drops the group's FIFO
    /// bookkeeping; a FIFO receive rebuilds it.
    pub fn set_policy(
        &mut self,
        group: &str,
        policy: Option<GroupPolicy>,
    ) -> Result<(), BrokerError> {
        validate::group_name(group, &self.config.limits)?;
        let was_fifo = self.policy(group).fifo;
        match policy {
            Some(p) => {
                p.validate()?;
                if !self.policies.contains_key(group)
                    && self.policies.len() >= self.config.limits.max_group_policies
                {
                    return Err(BrokerError::LimitReached(format!(
                        "at most {} groups with a policy of their own",
                        self.config.limits.max_group_policies
                    )));
                }
                self.policies.insert(group.to_string(), p);
            }
            None => {
                self.policies.remove(group);
            }
        }
        if self.policy(group).fifo != was_fifo {
            if let Some(state) = self.groups.get_mut(group) {
                for gq in state.values_mut() {
                    gq.fifo = None;
                }
            }
        }
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    pub fn topic_names(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(String::as_str)
    }

    /// Creates a topic with `queues` queues accepting every message type.
    /// Creating an existing topic is a no-op that returns `false`.
    pub fn create_topic(&mut self, name: &str, queues: u32) -> Result<bool, BrokerError> {
        self.create_topic_with(
            name,
            TopicConfig {
                queues,
                message_types: MessageTypes::ALL,
            },
        )
    }

    /// Creates a topic, existing from the current log end on. Creating an
    /// existing topic is a no-op that returns `false`.
    pub fn create_topic_with(
        &mut self,
        name: &str,
        config: TopicConfig,
    ) -> Result<bool, BrokerError> {
        self.restore_topic(name, config, self.applied_end)
    }

    /// Creates a topic as the topic file describes it, before the log is
    /// replayed: `created_at` is where it began, so replay can tell a
    /// deletion of an earlier topic of that name from one of this topic.
    pub fn restore_topic(
        &mut self,
        name: &str,
        config: TopicConfig,
        created_at: u64,
    ) -> Result<bool, BrokerError> {
        validate::topic_name(name, &self.config.limits)?;
        if self.topics.contains_key(name) {
            return Ok(false);
        }
        let limits = &self.config.limits;
        if config.queues == 0 || config.queues > limits.max_queues_per_topic {
            return Err(BrokerError::BadRequest(format!(
                "a topic needs 1 to {} queues, not {}",
                limits.max_queues_per_topic, config.queues
            )));
        }
        if self.topics.len() >= limits.max_topics {
            return Err(BrokerError::LimitReached(format!(
                "at most {} topics",
                limits.max_topics
            )));
        }
        self.topics
            .insert(name.to_string(), Topic::new(name, config, created_at));
        Ok(true)
    }

    /// Changes the message types an existing topic accepts. Configuration,
    /// not history: what was stored before stays.
    pub fn set_message_types(
        &mut self,
        name: &str,
        types: MessageTypes,
    ) -> Result<(), BrokerError> {
        let t = self
            .topics
            .get_mut(name)
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))?;
        t.config.message_types = types;
        Ok(())
    }

    /// Admits a whole batch before any of it is stored, so a refusal never
    /// leaves part of a batch behind: topics exist, delivery times are in
    /// range, and the pending tables have room for all of it. Returns the
    /// index of the first refused message with the reason.
    pub fn admit_batch(&self, now_ms: i64, batch: &[Incoming]) -> Result<(), (usize, BrokerError)> {
        let limits = &self.config.limits;
        let mut halves = self.transactions.pending_len();
        let mut timers = self.timers.len();
        for (i, m) in batch.iter().enumerate() {
            let Some(topic) = self.topics.get(&m.topic) else {
                return Err((i, BrokerError::TopicNotFound(m.topic.clone())));
            };
            // A transactional message counts as TRANSACTION whatever else
            // it carries (message group, delivery time): its kind says so.
            if !topic.message_types().contains(m.kind) {
                return Err((
                    i,
                    BrokerError::MessageTypeNotAccepted(format!(
                        "topic {} accepts {}; this message is {}",
                        m.topic,
                        topic.message_types(),
                        m.kind
                    )),
                ));
            }
            validate::delivery_time(m, now_ms, limits).map_err(|e| (i, e))?;
            if m.kind == MessageKind::Transaction {
                halves += 1;
                if halves > limits.max_pending_transactions {
                    return Err((
                        i,
                        BrokerError::LimitReached(format!(
                            "{} transactions are pending, the most this broker holds",
                            limits.max_pending_transactions
                        )),
                    ));
                }
            } else if m.delivery_timestamp_ms.is_some_and(|t| t > now_ms) {
                timers += 1;
                if timers > limits.max_pending_timers {
                    return Err((
                        i,
                        BrokerError::LimitReached(format!(
                            "{} messages wait for their delivery time, the most this broker holds",
                            limits.max_pending_timers
                        )),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Turns a validated message into its log record. Does not mutate: the
    /// caller appends the record and then calls [`Broker::apply`].
    pub fn prepare_message(&self, now_ms: i64, m: &Incoming) -> Result<Record, BrokerError> {
        let topic = self
            .topics
            .get(&m.topic)
            .ok_or_else(|| BrokerError::TopicNotFound(m.topic.clone()))?;
        // Limits were checked for the whole batch by `admit_batch`.
        let placement = placement(m.kind as u8, m.delivery_timestamp_ms, now_ms);
        let queue_id = queue_for(m, topic.queues.len() as u32);
        // A parked message's queue offset is fixed when it is committed or
        // its time comes.
        let queue_offset = match placement {
            Placement::Queue => topic.queues[queue_id as usize].next_offset(),
            Placement::Half | Placement::Timer => 0,
        };
        let tx = &self.config.transactions;
        let check_after_ms = if placement == Placement::Half {
            m.check_after_ms
                .map(|v| v.clamp(tx.min_check_after_ms, tx.max_check_after_ms))
        } else {
            None
        };
        Ok(Record {
            term: 0,
            timestamp_ms: now_ms,
            payload: Payload::Message(MessageRecord {
                topic: m.topic.clone(),
                queue_id,
                queue_offset,
                message_id: m.message_id.clone(),
                message_type: m.kind as u8,
                body_encoding: m.body_encoding,
                tag: m.tag.clone(),
                keys: m.keys.clone(),
                message_group: m.message_group.clone(),
                delivery_timestamp_ms: m.delivery_timestamp_ms,
                check_after_ms,
                born_timestamp_ms: m.born_timestamp_ms,
                born_host: m.born_host.clone(),
                properties: m.properties.clone(),
                body: m.body.clone(),
            }),
        })
    }

    /// Applies one record found at `log_offset` (length `len`). The only way
    /// state changes; used identically live and during recovery.
    pub fn apply(&mut self, log_offset: u64, len: u32, rec: &Record) {
        self.applied_end = self.applied_end.max(log_offset + len as u64);
        match &rec.payload {
            Payload::Message(m) => self.apply_message(log_offset, len, rec.timestamp_ms, m),
            Payload::Deliver(d) => {
                self.next_handle = self.next_handle.max(d.handle + 1);
                let Some((gq, mg)) =
                    self.group_queue_mut(&d.group, &d.topic, d.queue_id, d.queue_offset)
                else {
                    return;
                };
                gq.deliver(
                    d.queue_offset,
                    Inflight {
                        handle: d.handle,
                        attempt: d.attempt,
                        visible_at_ms: d.visible_at_ms,
                    },
                    d.cursor,
                    mg.as_ref(),
                );
            }
            Payload::Ack(a) => {
                if let Some((gq, mg)) =
                    self.group_queue_mut(&a.group, &a.topic, a.queue_id, a.queue_offset)
                {
                    if gq
                        .inflight
                        .get(&a.queue_offset)
                        .is_some_and(|f| f.handle == a.handle)
                    {
                        gq.settle(a.queue_offset, mg.as_ref());
                    }
                }
            }
            Payload::Renew(r) => {
                self.next_handle = self.next_handle.max(r.handle + 1);
                if let Some((gq, _)) =
                    self.group_queue_mut(&r.group, &r.topic, r.queue_id, r.queue_offset)
                {
                    gq.renew(r.queue_offset, r.handle, r.visible_at_ms);
                }
            }
            Payload::TxEnd(t) => self.apply_tx_end(log_offset + len as u64, rec.timestamp_ms, t),
            Payload::Recall(r) => {
                self.timers.remove(r.message_offset);
            }
            Payload::DeadLetter(d) => self.apply_dead_letter(log_offset, len, rec.timestamp_ms, d),
            Payload::Redrive(r) => {
                self.next_handle = self.next_handle.max(r.handle + 1);
                if let Some(d) = self
                    .dead_letters
                    .get_mut(&r.group)
                    .and_then(|m| m.get_mut(&r.dlq_queue_offset))
                {
                    d.redriven_at_ms = Some(rec.timestamp_ms);
                }
                if let Some((gq, _)) =
                    self.group_queue_mut(&r.group, &r.topic, r.queue_id, r.queue_offset)
                {
                    gq.redrive(r.queue_offset, r.handle, rec.timestamp_ms);
                }
            }
            Payload::TxCheck(c) => {
                self.transactions
                    .checked(c.half_offset, c.checks, c.next_check_ms);
            }
            Payload::Fire(f) => {
                if let Some(t) = self.timers.remove(f.message_offset) {
                    let ready_at = log_offset + len as u64;
                    self.index_parked(&t.msg, f.queue_id, f.queue_offset, ready_at);
                }
            }
            Payload::TopicDelete(d) => self.apply_topic_delete(log_offset, rec.timestamp_ms, d),
        }
    }

    fn entry(&self, topic: &str, queue_id: u32, queue_offset: u64) -> Option<&Entry> {
        self.topics
            .get(topic)?
            .queues
            .get(queue_id as usize)?
            .get(queue_offset)
    }

    fn apply_dead_letter(&mut self, log_offset: u64, len: u32, now_ms: i64, d: &DeadLetterRecord) {
        let ready_at = log_offset + len as u64;
        let tag = self
            .entry(&d.topic, d.queue_id, d.queue_offset)
            .and_then(|e| e.tag.clone());
        let mut mg = None;
        if let Some((gq, g)) = self.group_queue_mut(&d.group, &d.topic, d.queue_id, d.queue_offset)
        {
            gq.settle(d.queue_offset, g.as_ref());
            mg = g;
        }
        self.dead_letters
            .entry(d.group.clone())
            .or_default()
            .insert(
                d.dlq_queue_offset,
                DeadLetterOrigin {
                    dlq_queue_offset: d.dlq_queue_offset,
                    topic: d.topic.clone(),
                    queue_id: d.queue_id,
                    queue_offset: d.queue_offset,
                    attempts: d.attempts,
                    redriven_at_ms: None,
                },
            );
        let dlq = dlq_topic(&d.group);
        // Internal: made on first use, whatever the topic limits say, so a
        // failing message always has somewhere to go.
        self.topics.entry(dlq.clone()).or_insert_with(|| {
            let config = TopicConfig {
                queues: 1,
                message_types: MessageTypes::ALL,
            };
            Topic::new(&dlq, config, log_offset)
        });
        self.index(
            &dlq,
            0,
            d.dlq_queue_offset,
            Entry {
                log_offset: d.message_offset,
                len: d.message_len,
                tag: None,
                group: None,
                store_ms: now_ms,
                ready_at,
            },
            (tag.as_deref(), mg.as_deref()),
            true,
        );
    }

    /// Queue offset the next dead letter of `group` takes.
    fn dlq_next_offset(&self, group: &str) -> u64 {
        self.topics
            .get(&dlq_topic(group))
            .and_then(|t| t.queues.first())
            .map_or(0, |q| q.next_offset())
    }

    /// Decides a consumer's ForwardMessageToDeadLetterQueue: the in-flight
    /// message named by `receipt` moves to the group's dead-letter topic.
    pub fn plan_dead_letter(
        &self,
        now_ms: i64,
        group: &str,
        topic: &str,
        receipt: &str,
    ) -> Result<Record, BrokerError> {
        let (r, f) = self.inflight_for(group, topic, receipt)?;
        let e = self
            .entry(topic, r.queue_id, r.queue_offset)
            .filter(|e| !e.is_lost())
            .ok_or_else(|| {
                BrokerError::InvalidReceiptHandle("the message it names is no longer stored".into())
            })?;
        Ok(dead_letter_record(
            now_ms,
            group,
            topic,
            (r.queue_id, r.queue_offset),
            e,
            f.attempt,
            self.dlq_next_offset(group),
        ))
    }

    /// Dead letters of `group` from `from` on, at most `limit`.
    pub fn dead_letters(&self, group: &str, from: u64, limit: usize) -> Vec<DeadLetterOrigin> {
        self.dead_letters
            .get(group)
            .map(|m| {
                m.range(from..)
                    .take(limit)
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Decides an operator's re-drive of the dead letter at `dlq_offset` of
    /// `%DLQ%<group>`: the original message becomes due for `group` again.
    pub fn plan_redrive(
        &mut self,
        now_ms: i64,
        group: &str,
        dlq_offset: u64,
    ) -> Result<Record, BrokerError> {
        validate::group_name(group, &self.config.limits)?;
        let o = self
            .dead_letters
            .get(group)
            .and_then(|m| m.get(&dlq_offset))
            .ok_or_else(|| {
                BrokerError::NotFound(format!(
                    "no dead letter at offset {dlq_offset} of {}",
                    dlq_topic(group)
                ))
            })?
            .clone();
        // The original place must still hold the very record the dead
        // letter points at: its topic may have been deleted and re-created
        // since, with another message at that offset now.
        let letter = self.dead_letter_record(group, dlq_offset).map(|(o, _)| o);
        if self
            .entry(&o.topic, o.queue_id, o.queue_offset)
            .is_none_or(|e| e.is_lost() || Some(e.log_offset) != letter)
        {
            return Err(BrokerError::NotFound(format!(
                "the original message ({} queue {} offset {}) is no longer stored",
                o.topic, o.queue_id, o.queue_offset
            )));
        }
        // A message dead-lettered again since has a newer letter; the
        // message's state follows the newest one, so only that one may be
        // re-driven (an older one would leave the newest looking pending).
        let newer = self.dead_letters.get(group).and_then(|m| {
            m.range(dlq_offset + 1..)
                .find(|(_, x)| {
                    x.topic == o.topic
                        && x.queue_id == o.queue_id
                        && x.queue_offset == o.queue_offset
                })
                .map(|(at, _)| *at)
        });
        if let Some(newer) = newer {
            return Err(BrokerError::Conflict(format!(
                "the message was dead-lettered again since, at offset {newer} of {}; re-drive that letter",
                dlq_topic(group)
            )));
        }
        let in_flight = self
            .groups
            .get(group)
            .and_then(|s| s.get(&(o.topic.clone(), o.queue_id)))
            .is_some_and(|gq| gq.inflight.contains_key(&o.queue_offset));
        if in_flight {
            return Err(BrokerError::Conflict(format!(
                "the message is already in flight for {group} again"
            )));
        }
        let handle = self.next_handle;
        self.next_handle += 1;
        Ok(Record {
            term: 0,
            timestamp_ms: now_ms,
            payload: Payload::Redrive(RedriveRecord {
                group: group.to_string(),
                topic: o.topic,
                queue_id: o.queue_id,
                queue_offset: o.queue_offset,
                dlq_queue_offset: dlq_offset,
                handle,
            }),
        })
    }

    fn apply_tx_end(&mut self, ready_at: u64, now_ms: i64, t: &TxEndRecord) {
        let checks = self.transactions.get(t.half_offset).map_or(0, |h| h.checks);
        let half = self.transactions.end(Resolved {
            half_offset: t.half_offset,
            topic: t.topic.clone(),
            message_id: t.message_id.clone(),
            outcome: t.outcome,
            source: t.source,
            at_ms: now_ms,
            checks,
            // Only a discard's reason is kept in memory (operators list
            // discards); the others are implied by outcome and source, and
            // every reason stays in the log record.
            reason: if t.outcome == TxOutcome::Discard {
                t.reason.clone()
            } else {
                String::new()
            },
        });
        let Some(h) = half else { return };
        if t.outcome != TxOutcome::Commit {
            return;
        }
        match t.queue_offset {
            Some(q) => self.index_parked(&h.msg, t.queue_id, q, ready_at),
            None => self.timers.add(Timer {
                due_ms: h.delivery_ms.unwrap_or(now_ms),
                msg: h.msg,
            }),
        }
    }

    fn apply_message(&mut self, log_offset: u64, len: u32, store_ms: i64, m: &MessageRecord) {
        self.messages.add(log_offset, &m.message_id, &m.keys);
        let default_queues = self.config.default_queues;
        let topic = self.topics.entry(m.topic.clone()).or_insert_with(|| {
            // Made by a record (replay without the topic file, or after the
            // topic was deleted): the defaults an auto-created topic gets.
            let config = TopicConfig {
                queues: default_queues.max(m.queue_id + 1),
                message_types: MessageTypes::ALL,
            };
            Topic::new(&m.topic, config, log_offset)
        });
        while topic.queues.len() <= m.queue_id as usize {
            topic.queues.push(Default::default());
        }
        let placement = placement(m.message_type, m.delivery_timestamp_ms, store_ms);
        if placement == Placement::Half {
            let after = m
                .check_after_ms
                .unwrap_or(self.config.transactions.check_after_ms);
            self.transactions.add(HalfMessage {
                msg: Parked::of(m, log_offset, len, store_ms),
                delivery_ms: m.delivery_timestamp_ms,
                checks: 0,
                next_check_ms: store_ms.saturating_add(after),
            });
            return;
        }
        if let (Placement::Timer, Some(due_ms)) = (placement, m.delivery_timestamp_ms) {
            self.timers.add(Timer {
                msg: Parked::of(m, log_offset, len, store_ms),
                due_ms,
            });
            return;
        }
        self.index(
            &m.topic,
            m.queue_id,
            m.queue_offset,
            Entry {
                log_offset,
                len,
                tag: None,
                group: None,
                store_ms,
                ready_at: log_offset + len as u64,
            },
            (m.tag.as_deref(), m.message_group.as_deref()),
            false,
        );
    }

    /// Indexes a parked message (committed, or its time came) after records
    /// newer than its own; the entry points at its original record.
    fn index_parked(&mut self, p: &Parked, queue_id: u32, queue_offset: u64, ready_at: u64) {
        self.late_positions
            .insert(p.log_offset, (queue_id, queue_offset));
        let entry = Entry {
            log_offset: p.log_offset,
            len: p.len,
            tag: None,
            group: None,
            store_ms: p.store_ms,
            ready_at,
        };
        self.index(
            &p.topic,
            queue_id,
            queue_offset,
            entry,
            (p.tag.as_deref(), p.message_group.as_deref()),
            true,
        );
    }

    /// Puts `entry` at `queue_offset` of a queue, with its tag and message
    /// group interned. `late` marks an entry
    /// indexed after records newer than its own (commit, timer).
    fn index(
        &mut self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        mut entry: Entry,
        (tag, message_group): (Option<&str>, Option<&str>),
        late: bool,
    ) {
        let Some(topic) = self.topics.get_mut(topic) else {
            debug_assert!(false, "indexing into unknown topic {topic}");
            return;
        };
        while topic.queues.len() <= queue_id as usize {
            topic.queues.push(Default::default());
        }
        entry.tag = tag.map(|t| topic.intern(t));
        entry.group = message_group.map(|g| topic.intern(g));
        let queue = &mut topic.queues[queue_id as usize];
        if queue.entries.is_empty() && queue_offset > queue.base {
            // Everything before this message was removed by retention.
            queue.base = queue_offset;
        }
        if queue_offset < queue.next_offset() {
            // Already indexed (cannot happen on the live path).
            debug_assert!(false, "queue offset {queue_offset} reused");
            return;
        }
        while queue.next_offset() < queue_offset {
            // A gap: recovery dropped a damaged record here.
            queue.entries.push_back(Entry {
                log_offset: Entry::LOST,
                len: 0,
                tag: None,
                group: None,
                store_ms: entry.store_ms,
                ready_at: 0,
            });
        }
        queue.has_late |= late;
        queue.entries.push_back(entry);
    }

    /// The state of `group` on a queue, created on first use starting at the
    /// queue's oldest retained message, with the message group of the
    /// message at `queue_offset` (one index lookup serves both). `None` when
    /// that message is no longer retained (its records are history).
    fn group_queue_mut(
        &mut self,
        group: &str,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> Option<(&mut GroupQueue, Option<Arc<str>>)> {
        let queue = self.topics.get(topic)?.queues.get(queue_id as usize)?;
        let message_group = queue.get(queue_offset)?.group.clone();
        let base = queue.base;
        let state = self.groups.entry(group.to_string()).or_default();
        let gq = state
            .entry((topic.to_string(), queue_id))
            .or_insert_with(|| GroupQueue::new(base));
        Some((gq, message_group))
    }

    /// Marks a message whose record turned out damaged on read: it can never
    /// be served, so it is settled for every group and skipped from now on.
    pub fn mark_lost(&mut self, topic: &str, queue_id: u32, queue_offset: u64) {
        if let Some(e) = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.queues.get_mut(queue_id as usize))
            .and_then(|q| q.get_mut(queue_offset))
        {
            e.log_offset = Entry::LOST;
            e.len = 0;
        }
        for state in self.groups.values_mut() {
            if let Some(gq) = state.get_mut(&(topic.to_string(), queue_id)) {
                gq.forget(queue_offset);
            }
        }
    }

    /// Decides what a receive hands out: due redeliveries first, then (FIFO
    /// groups) messages that waited for their message group, then new
    /// messages — never anything above `committed` (not yet durable).
    ///
    /// A FIFO group gets at most one message of a message group in flight:
    /// later ones are held back until it is acked or dead-lettered, while
    /// messages of other groups behind them keep flowing.
    pub fn plan_receive(
        &mut self,
        now_ms: i64,
        req: &ReceiveRequest<'_>,
        committed: u64,
    ) -> Result<ReceivePlan, BrokerError> {
        let limits = &self.config.limits;
        validate::group_name(req.group, limits)?;
        if req.invisible_ms < limits.min_invisible_ms || req.invisible_ms > limits.max_invisible_ms
        {
            return Err(BrokerError::IllegalInvisibleTime(format!(
                "{} ms is outside [{}, {}] ms",
                req.invisible_ms, limits.min_invisible_ms, limits.max_invisible_ms
            )));
        }
        if req.max_messages == 0 || req.max_messages > limits.max_receive_batch {
            return Err(BrokerError::BadRequest(format!(
                "batch size {} is outside [1, {}]",
                req.max_messages, limits.max_receive_batch
            )));
        }
        if req.client.len() > ferry_record::MAX_CLIENT_ID_BYTES {
            return Err(BrokerError::BadRequest(format!(
                "client id of {} bytes is longer than {}",
                req.client.len(),
                ferry_record::MAX_CLIENT_ID_BYTES
            )));
        }
        if !self.groups.contains_key(req.group) && self.groups.len() >= limits.max_groups {
            return Err(BrokerError::LimitReached(format!(
                "at most {} consumer groups",
                limits.max_groups
            )));
        }
        let max_inflight = limits.max_inflight_per_queue;
        let max_held = limits.max_fifo_held_per_queue;
        if !self.topics.contains_key(req.topic) {
            return Err(BrokerError::TopicNotFound(req.topic.to_string()));
        }
        let policy = self.policy(req.group);
        let max_attempts = policy.max_delivery_attempts.max(1);
        if policy.fifo {
            self.prepare_fifo(req.group, req.topic);
        }
        let topic = &self.topics[req.topic];
        let empty = BTreeMap::new();
        let state = self.groups.get(req.group).unwrap_or(&empty);
        let n = topic.queues.len();
        let start = (self.rotation % n as u64) as usize;
        self.rotation = self.rotation.wrapping_add(1);
        // Looked up only when a message is dead-lettered: not on every receive.
        let mut dlq_next: Option<u64> = None;
        let mut plan = ReceivePlan::default();
        let mut handle = self.next_handle;
        let visible_at_ms = now_ms + req.invisible_ms;
        let mut push =
            |plan: &mut ReceivePlan, q: u32, off: u64, e: &Entry, attempt: u32, cursor: u64| {
                let receipt = Receipt {
                    queue_id: q,
                    queue_offset: off,
                    handle,
                };
                plan.records.push(Record {
                    term: 0,
                    timestamp_ms: now_ms,
                    payload: Payload::Deliver(DeliverRecord {
                        group: req.group.to_string(),
                        topic: req.topic.to_string(),
                        queue_id: q,
                        queue_offset: off,
                        attempt,
                        handle,
                        visible_at_ms,
                        cursor,
                        client: Some(req.client.to_string()),
                    }),
                });
                plan.deliveries.push(Delivery {
                    queue_id: q,
                    queue_offset: off,
                    log_offset: e.log_offset,
                    len: e.len,
                    attempt,
                    visible_at_ms,
                    receipt_handle: handle::encode(req.group, req.topic, &receipt),
                });
                handle += 1;
            };
        let passes = |e: &Entry| {
            if e.is_lost() {
                return false;
            }
            if !req.filter.needs_properties() {
                return req.filter.matches(e.tag.as_deref(), &[]);
            }
            match req.properties.map_or(Some(Vec::new()), |read| read(e)) {
                Some(props) => req.filter.matches(e.tag.as_deref(), &props),
                None => false,
            }
        };
        // One key for the whole walk: the topic name is copied once per
        // receive, not once per queue.
        let mut key = (req.topic.to_string(), 0u32);
        for i in 0..n {
            if plan.deliveries.len() >= req.max_messages {
                break;
            }
            let q = ((start + i) % n) as u32;
            let queue = &topic.queues[q as usize];
            key.1 = q;
            let fresh_state;
            let gq = match state.get(&key) {
                Some(gq) => gq,
                None => {
                    fresh_state = GroupQueue::new(queue.base);
                    &fresh_state
                }
            };
            // 1. Redeliveries that are due, or dead letters after the last.
            for &(due, off) in &gq.expiry {
                if due > now_ms || plan.deliveries.len() + plan.dead_lettered >= req.max_messages {
                    break;
                }
                let Some(e) = queue.get(off).filter(|e| !e.is_lost()) else {
                    continue;
                };
                let attempt = gq.inflight.get(&off).map_or(1, |f| f.attempt + 1);
                if attempt > max_attempts {
                    let next = dlq_next.unwrap_or_else(|| self.dlq_next_offset(req.group));
                    plan.records.push(dead_letter_record(
                        now_ms,
                        req.group,
                        req.topic,
                        (q, off),
                        e,
                        attempt - 1,
                        next,
                    ));
                    dlq_next = Some(next + 1);
                    plan.dead_lettered += 1;
                    continue;
                }
                push(&mut plan, q, off, e, attempt, gq.cursor);
            }
            let mut low = gq.cursor;
            let mut inflight = gq.inflight.len();
            // Message groups this plan gives out or holds back on this queue.
            let mut taken: HashSet<Arc<str>> = HashSet::new();
            // 2. FIFO: messages whose group is free again, oldest first.
            if let Some(fifo) = &gq.fifo {
                for (off, g) in &fifo.ready {
                    if plan.deliveries.len() >= req.max_messages || inflight >= max_inflight {
                        break;
                    }
                    let Some(e) = queue.get(*off).filter(|e| !e.is_lost()) else {
                        continue;
                    };
                    if *off == low {
                        low += 1;
                    }
                    push(&mut plan, q, *off, e, 1, low);
                    inflight += 1;
                    taken.insert(g.clone());
                }
            }
            // 3. Messages not looked at yet.
            let mut scan = Scan {
                queue_id: q,
                ..Scan::default()
            };
            let mut held = gq.fifo.as_ref().map_or(0, |f| f.held_count) + gq.ahead.len();
            let first = gq.fifo.as_ref().map_or(gq.cursor, |f| f.scan);
            let mut x = first.max(queue.base);
            while plan.deliveries.len() < req.max_messages && inflight < max_inflight {
                let Some(e) = queue.get(x) else { break };
                if !e.is_lost() && e.ready_at > committed {
                    break;
                }
                if gq.inflight.contains_key(&x) || gq.ahead.contains(&x) {
                    if x == low {
                        low += 1;
                    }
                    x += 1;
                    continue;
                }
                if !passes(e) {
                    if x == low {
                        low += 1;
                    } else if held >= max_held {
                        break;
                    } else {
                        scan.skipped.push(x);
                        held += 1;
                    }
                    x += 1;
                    continue;
                }
                if let (Some(fifo), Some(g)) = (&gq.fifo, &e.group) {
                    if fifo.blocks(g) || taken.contains(g) {
                        if held >= max_held {
                            break;
                        }
                        scan.held.push((x, g.clone()));
                        taken.insert(g.clone());
                        held += 1;
                        x += 1;
                        continue;
                    }
                    taken.insert(g.clone());
                }
                if x == low {
                    low += 1;
                }
                push(&mut plan, q, x, e, 1, low);
                inflight += 1;
                x += 1;
            }
            if low > gq.cursor || x > first || !scan.skipped.is_empty() || !scan.held.is_empty() {
                scan.cursor = low;
                scan.scan_to = x;
                plan.scans.push(scan);
            }
        }
        Ok(plan)
    }

    /// Builds the FIFO bookkeeping of `group` on every queue of `topic`
    /// where it is missing: busy message groups from what is in flight; the
    /// next scan starts at the cursor and finds the held-back ones again.
    fn prepare_fifo(&mut self, group: &str, topic: &str) {
        let Some(t) = self.topics.get(topic) else {
            return;
        };
        let state = self.groups.entry(group.to_string()).or_default();
        for (q, queue) in t.queues.iter().enumerate() {
            let gq = state
                .entry((topic.to_string(), q as u32))
                .or_insert_with(|| GroupQueue::new(queue.base));
            if gq.fifo.is_some() {
                continue;
            }
            let mut fifo = Fifo {
                scan: gq.cursor,
                ..Fifo::default()
            };
            for off in gq.inflight.keys() {
                if let Some(g) = queue.get(*off).and_then(|e| e.group.clone()) {
                    fifo.busy.entry(g).or_default().insert(*off);
                }
            }
            gq.fifo = Some(fifo);
        }
    }

    /// Applies what a receive decided without records: cursor moves over
    /// filtered messages and FIFO messages held back. Called after the
    /// plan's records are applied. Not logged: after a restart the group
    /// simply examines those messages again.
    pub fn apply_scans(&mut self, group: &str, topic: &str, scans: &[Scan]) {
        for s in scans {
            let Some(queue) = self
                .topics
                .get(topic)
                .and_then(|t| t.queues.get(s.queue_id as usize))
            else {
                continue;
            };
            let base = queue.base;
            let gq = self
                .groups
                .entry(group.to_string())
                .or_default()
                .entry((topic.to_string(), s.queue_id))
                .or_insert_with(|| GroupQueue::new(base));
            gq.apply_scan(s);
        }
    }

    fn inflight_for(
        &self,
        group: &str,
        topic: &str,
        receipt: &str,
    ) -> Result<(Receipt, Inflight), BrokerError> {
        validate::group_name(group, &self.config.limits)?;
        let r = handle::decode(group, topic, receipt)?;
        let f = self
            .groups
            .get(group)
            .and_then(|s| s.get(&(topic.to_string(), r.queue_id)))
            .and_then(|gq| gq.inflight.get(&r.queue_offset))
            .filter(|f| f.handle == r.handle)
            .ok_or_else(|| {
                BrokerError::InvalidReceiptHandle(
                    "the delivery it names was already acknowledged, or was delivered again (each delivery and each invisibility change issues a new handle)".into(),
                )
            })?;
        Ok((r, *f))
    }

    /// Whether `d` is still in flight under its receipt and invisible at
    /// `now_ms`: a receive retried with the same attempt id may hand it out
    /// again.
    pub fn still_held(&self, group: &str, topic: &str, d: &Delivery, now_ms: i64) -> bool {
        self.inflight_for(group, topic, &d.receipt_handle)
            .is_ok_and(|(_, f)| f.visible_at_ms > now_ms)
    }

    /// Decides an acknowledgement. The record settles the message when applied.
    pub fn plan_ack(
        &self,
        now_ms: i64,
        group: &str,
        topic: &str,
        receipt: &str,
    ) -> Result<Record, BrokerError> {
        let (r, _) = self.inflight_for(group, topic, receipt)?;
        Ok(Record {
            term: 0,
            timestamp_ms: now_ms,
            payload: Payload::Ack(AckRecord {
                group: group.to_string(),
                topic: topic.to_string(),
                queue_id: r.queue_id,
                queue_offset: r.queue_offset,
                handle: r.handle,
            }),
        })
    }

    /// Decides an invisibility change: the message becomes visible again at
    /// `now + invisible_ms` and only the returned new handle can settle it.
    pub fn plan_renew(
        &mut self,
        now_ms: i64,
        group: &str,
        topic: &str,
        receipt: &str,
        invisible_ms: i64,
    ) -> Result<(Record, String), BrokerError> {
        let max = self.config.limits.max_invisible_ms;
        if !(0..=max).contains(&invisible_ms) {
            return Err(BrokerError::IllegalInvisibleTime(format!(
                "{invisible_ms} ms is outside [0, {max}] ms"
            )));
        }
        let (r, _) = self.inflight_for(group, topic, receipt)?;
        let handle = self.next_handle;
        self.next_handle += 1;
        let new = Receipt { handle, ..r };
        Ok((
            Record {
                term: 0,
                timestamp_ms: now_ms,
                payload: Payload::Renew(RenewRecord {
                    group: group.to_string(),
                    topic: topic.to_string(),
                    queue_id: r.queue_id,
                    queue_offset: r.queue_offset,
                    handle,
                    visible_at_ms: now_ms + invisible_ms,
                }),
            },
            handle::encode(group, topic, &new),
        ))
    }

    /// Earliest time an in-flight message of `group` on `topic` becomes
    /// visible again: when a long poll should look again.
    pub fn next_expiry(&self, group: &str, topic: &str) -> Option<i64> {
        let state = self.groups.get(group)?;
        state
            .range((topic.to_string(), 0)..=(topic.to_string(), u32::MAX))
            .filter_map(|(_, gq)| gq.next_expiry())
            .min()
    }

    /// Removes index entries for records below log offset `cut` (their
    /// segments are being deleted) and reports what groups had not consumed.
    pub fn prune_below(&mut self, cut: u64) -> Vec<RetentionLoss> {
        let mut losses = Vec::new();
        let mut late_gone = Vec::new();
        for (name, topic) in &mut self.topics {
            for (q, queue) in topic.queues.iter_mut().enumerate() {
                while queue
                    .entries
                    .front()
                    .is_some_and(|e| e.is_lost() || e.log_offset < cut)
                {
                    queue.entries.pop_front();
                    queue.base += 1;
                }
                if queue.has_late {
                    // Committed or fired entries point back at older records;
                    // they may lie behind newer ones. Rare enough to scan.
                    for (i, e) in queue.entries.iter().enumerate() {
                        if !e.is_lost() && e.log_offset < cut {
                            late_gone.push((name.clone(), q as u32, queue.base + i as u64));
                        }
                    }
                }
                for (group, state) in &mut self.groups {
                    if let Some(gq) = state.get_mut(&(name.clone(), q as u32)) {
                        let lost = gq.drop_below(queue.base);
                        if lost > 0 {
                            losses.push(RetentionLoss {
                                group: group.clone(),
                                topic: name.clone(),
                                queue_id: q as u32,
                                messages: lost,
                            });
                        }
                    }
                }
            }
        }
        self.messages.prune_below(cut);
        self.late_positions = self.late_positions.split_off(&cut);
        for (group, origins) in &mut self.dead_letters {
            let base = self
                .topics
                .get(&dlq_topic(group))
                .and_then(|t| t.queues.first())
                .map_or(0, |q| q.base);
            if origins.first_key_value().is_some_and(|(o, _)| *o < base) {
                *origins = origins.split_off(&base);
            }
        }
        for (topic, q, off) in late_gone {
            for (group, state) in &self.groups {
                if let Some(gq) = state.get(&(topic.clone(), q)) {
                    if (gq.cursor <= off && !gq.ahead.contains(&off))
                        || gq.inflight.contains_key(&off)
                    {
                        losses.push(RetentionLoss {
                            group: group.clone(),
                            topic: topic.clone(),
                            queue_id: q,
                            messages: 1,
                        });
                    }
                }
            }
            self.mark_lost(&topic, q, off);
        }
        losses
    }

    /// Lowest log offset a pending half message or timer still needs:
    /// retention must not delete the segment holding it.
    pub fn pinned_offset(&self) -> Option<u64> {
        match (
            self.transactions.lowest_offset(),
            self.timers.lowest_offset(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn transactions(&self) -> &Transactions {
        &self.transactions
    }

    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    /// Decides an EndTransaction call. The first outcome accepted is final:
    /// a repeat answers [`EndDecision::AlreadyEnded`], a contradiction is
    /// refused, and an id that does not name this topic and message is
    /// invalid.
    pub fn plan_end_transaction(
        &self,
        now_ms: i64,
        topic: &str,
        message_id: &str,
        transaction_id: &str,
        outcome: TxOutcome,
        source: TxSource,
    ) -> Result<EndDecision, BrokerError> {
        let offset = transaction::parse_transaction_id(transaction_id).ok_or_else(|| {
            BrokerError::InvalidTransactionId(format!(
                "{transaction_id:?} is not a transaction id this broker issued"
            ))
        })?;
        let mismatch = |t: &str, m: &str| {
            BrokerError::InvalidTransactionId(format!(
                "transaction {transaction_id} belongs to message {m} on topic {t}, not to message {message_id} on topic {topic}"
            ))
        };
        if let Some(h) = self.transactions.get(offset) {
            if h.msg.topic != topic || h.msg.message_id != message_id {
                return Err(mismatch(&h.msg.topic, &h.msg.message_id));
            }
            let due_later = h.delivery_ms.is_some_and(|d| d > now_ms);
            let queue_offset = if outcome == TxOutcome::Commit && !due_later {
                let q = self
                    .topics
                    .get(&h.msg.topic)
                    .and_then(|t| t.queues.get(h.msg.queue_id as usize))
                    .map_or(0, |q| q.next_offset());
                Some(q)
            } else {
                None
            };
            let who = match source {
                TxSource::Client => "the producer",
                TxSource::ServerCheck => "the producer, answering a check-back",
                TxSource::CheckLimit => "the broker",
            };
            let what = match outcome {
                TxOutcome::Commit => "committed",
                TxOutcome::Rollback => "rolled back",
                TxOutcome::Discard => "discarded",
            };
            return Ok(EndDecision::Record(Box::new(Record {
                term: 0,
                timestamp_ms: now_ms,
                payload: Payload::TxEnd(TxEndRecord {
                    half_offset: offset,
                    topic: h.msg.topic.clone(),
                    message_id: h.msg.message_id.clone(),
                    outcome,
                    source,
                    queue_id: h.msg.queue_id,
                    queue_offset,
                    reason: format!("{what} by {who} after {} check-backs", h.checks),
                }),
            })));
        }
        if let Some(r) = self.transactions.resolved(offset) {
            if r.topic != topic || r.message_id != message_id {
                return Err(mismatch(&r.topic, &r.message_id));
            }
            if r.outcome == outcome
                || (outcome == TxOutcome::Rollback && r.outcome == TxOutcome::Discard)
            {
                return Ok(EndDecision::AlreadyEnded(r.outcome));
            }
            let past = match r.outcome {
                TxOutcome::Commit => "committed",
                TxOutcome::Rollback => "rolled back",
                TxOutcome::Discard => "discarded",
            };
            let asked = if outcome == TxOutcome::Commit {
                "commit"
            } else {
                "rollback"
            };
            let by = match r.source {
                TxSource::Client => "by the producer".to_string(),
                TxSource::ServerCheck => "by the producer, answering a check-back".to_string(),
                TxSource::CheckLimit => r.reason.clone(),
            };
            return Err(BrokerError::TransactionConflict(format!(
                "transaction {transaction_id} was {past} at {} ms ({by}); the {asked} asked now is refused",
                r.at_ms
            )));
        }
        Err(BrokerError::InvalidTransactionId(format!(
            "no transaction {transaction_id} is known: never issued, or ended before the last {} outcomes the broker remembers",
            self.config.transactions.outcome_memory
        )))
    }

    /// Decides one round of check-backs at `now_ms`: at most `budget`
    /// checks and discards. A transaction whose topic has no producer
    /// online (`producer_online`) is postponed without using up a check.
    pub fn plan_checks(
        &mut self,
        now_ms: i64,
        budget: usize,
        producer_online: &mut dyn FnMut(&str) -> bool,
    ) -> CheckPlan {
        let cfg = self.config.transactions.clone();
        let mut plan = CheckPlan::default();
        let due: Vec<HalfMessage> = self
            .transactions
            .due(now_ms)
            .take(budget.saturating_mul(4).max(budget))
            .cloned()
            .collect();
        for h in due {
            if plan.records.len() >= budget {
                break;
            }
            if h.checks >= cfg.max_checks {
                plan.discarded += 1;
                plan.records.push(Record {
                    term: 0,
                    timestamp_ms: now_ms,
                    payload: Payload::TxEnd(TxEndRecord {
                        half_offset: h.msg.log_offset,
                        topic: h.msg.topic.clone(),
                        message_id: h.msg.message_id.clone(),
                        outcome: TxOutcome::Discard,
                        source: TxSource::CheckLimit,
                        queue_id: h.msg.queue_id,
                        queue_offset: None,
                        reason: format!(
                            "no outcome after {} check-backs; discarded, never delivered",
                            h.checks
                        ),
                    }),
                });
                continue;
            }
            if !producer_online(&h.msg.topic) {
                plan.deferred += 1;
                self.transactions.defer(
                    h.msg.log_offset,
                    now_ms.saturating_add(cfg.no_producer_retry_ms),
                );
                continue;
            }
            let check = h.checks + 1;
            plan.records.push(Record {
                term: 0,
                timestamp_ms: now_ms,
                payload: Payload::TxCheck(TxCheckRecord {
                    half_offset: h.msg.log_offset,
                    checks: check,
                    next_check_ms: now_ms.saturating_add(cfg.check_interval_ms),
                }),
            });
            plan.orders.push(CheckOrder {
                half_offset: h.msg.log_offset,
                len: h.msg.len,
                topic: h.msg.topic,
                message_id: h.msg.message_id,
                transaction_id: transaction::transaction_id(h.msg.log_offset),
                check,
            });
        }
        plan
    }

    /// Decides a RecallMessage: the delayed message named by `recall_handle`
    /// (issued at send) is cancelled if its time has not come. Returns the
    /// record and the message id.
    pub fn plan_recall(
        &self,
        now_ms: i64,
        topic: &str,
        recall_handle: &str,
    ) -> Result<(Record, String), BrokerError> {
        let offset = recall_offset(recall_handle).ok_or_else(|| {
            BrokerError::BadRequest(format!(
                "{recall_handle:?} is not a recall handle this broker issued"
            ))
        })?;
        let t = self
            .timers
            .get(offset)
            .filter(|t| t.msg.topic == topic)
            .ok_or_else(|| {
                BrokerError::NotFound(format!(
                    "no delayed message of topic {topic} waits under this handle: it was delivered, recalled, or never sent here"
                ))
            })?;
        Ok((
            Record {
                term: 0,
                timestamp_ms: now_ms,
                payload: Payload::Recall(RecallRecord {
                    message_offset: offset,
                    topic: t.msg.topic.clone(),
                    message_id: t.msg.message_id.clone(),
                }),
            },
            t.msg.message_id.clone(),
        ))
    }

    /// The next timer due at `now_ms`, as the record that indexes it. Call
    /// again after applying it: each fire takes the next queue offset.
    pub fn plan_fire(&mut self, now_ms: i64) -> Option<Record> {
        let t = self.timers.first_due(now_ms)?.clone();
        let Some(queue) = self
            .topics
            .get(&t.msg.topic)
            .and_then(|topic| topic.queues.get(t.msg.queue_id as usize))
        else {
            debug_assert!(false, "timer for a queue that does not exist");
            self.timers.remove(t.msg.log_offset);
            return None;
        };
        Some(Record {
            term: 0,
            timestamp_ms: now_ms,
            payload: Payload::Fire(FireRecord {
                message_offset: t.msg.log_offset,
                topic: t.msg.topic,
                queue_id: t.msg.queue_id,
                queue_offset: queue.next_offset(),
            }),
        })
    }

    pub fn topic_stats(&self) -> Vec<TopicStats> {
        self.topics
            .values()
            .map(|t| TopicStats {
                name: t.name.clone(),
                queues: t.queues.iter().map(|q| (q.base, q.next_offset())).collect(),
                message_types: t.message_types(),
                created_at: t.created_at,
            })
            .collect()
    }

    pub fn group_stats(&self) -> Vec<GroupQueueStats> {
        let mut out = Vec::new();
        for (group, state) in &self.groups {
            out.extend(self.group_progress(group, state));
        }
        out
    }
}
