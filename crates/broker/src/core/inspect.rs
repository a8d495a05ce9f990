//! Read-only views for operators: which groups use a topic, what one group
//! holds, which records may be a message, and where one message stands.
//!
//! Everything here is derived from the core's current state, so it is exact
//! whatever the log holds; the shell adds the history (a scan of the log)
//! and the message contents (reads), neither of which the core can do.

use super::*;
use crate::transaction::Resolved;

/// What one consumer group holds: its policy, its progress per queue, and
/// how many dead letters it has.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub group: String,
    /// Whether the policy is the group's own (else the broker default).
    pub own_policy: bool,
    pub policy: GroupPolicy,
    pub queues: Vec<GroupQueueStats>,
    /// Dead letters still retained in `%DLQ%<group>`.
    pub dead_letters: usize,
}

/// Where one message stands for one consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDelivery {
    pub group: String,
    pub state: DeliveryState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not handed to the group yet (or re-driven and not handed out again).
    Pending,
    /// Handed out, neither acknowledged nor given up.
    InFlight { attempt: u32, visible_at_ms: i64 },
    /// Settled without a dead letter: acknowledged, or never matched the
    /// group's filter.
    Acked,
    /// Moved to `%DLQ%<group>` after `attempts` deliveries.
    DeadLettered { attempts: u32, dlq_offset: u64 },
}

/// A half message's transaction, as the core knows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxState {
    Pending {
        checks: u32,
        next_check_ms: i64,
    },
    Ended(Resolved),
    /// Ended so long ago that the bounded outcome memory let it go.
    Forgotten,
}

/// Where one stored message stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageStatus {
    /// Its place in its topic, when it is indexed there (and that place
    /// still holds this very record: a deleted and re-created topic reuses
    /// offsets).
    pub position: Option<(u32, u64)>,
    /// Every group with progress on the message's topic, by name. Empty
    /// when the message will never be delivered (rolled back, discarded,
    /// recalled, or its topic deleted).
    pub groups: Vec<GroupDelivery>,
    /// Half messages only.
    pub transaction: Option<TxState>,
    /// Set while it waits for its delivery time: when that is.
    pub timer_due_ms: Option<i64>,
}

impl Broker {
    /// Groups with progress on any queue of `topic`, by name.
    pub fn topic_groups(&self, topic: &str) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, state)| Self::has_topic(state, topic))
            .map(|(g, _)| g.clone())
            .collect()
    }

    fn has_topic(state: &GroupState, topic: &str) -> bool {
        state
            .range((topic.to_string(), 0)..=(topic.to_string(), u32::MAX))
            .next()
            .is_some()
    }

    /// Every group the broker knows: with progress, a policy of its own,
    /// or dead letters.
    pub fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .groups
            .keys()
            .chain(self.policies.keys())
            .chain(self.dead_letters.keys())
            .cloned()
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// What `group` holds; `None` when the broker knows nothing of it.
    pub fn group_view(&self, group: &str) -> Option<GroupView> {
        let state = self.groups.get(group);
        let own_policy = self.policies.contains_key(group);
        let dead_letters = self.dead_letter_count(group);
        if state.is_none() && !own_policy && dead_letters == 0 {
            return None;
        }
        let queues = state
            .map(|s| self.group_progress(group, s))
            .unwrap_or_default();
        Some(GroupView {
            group: group.to_string(),
            own_policy,
            policy: self.policy(group).clone(),
            queues,
            dead_letters,
        })
    }

    /// Progress of `group` on every queue of every topic it has consumed
    /// from. A queue the group has not received from yet has no state of
    /// its own; it counts from where a first receive would start (the
    /// queue's first retained offset), so its messages are lag too —
    /// otherwise a topic's backlog on untouched queues would be invisible.
    pub(super) fn group_progress(&self, group: &str, state: &GroupState) -> Vec<GroupQueueStats> {
        let mut out = Vec::with_capacity(state.len());
        let mut topics: Vec<&str> = state.keys().map(|(t, _)| t.as_str()).collect();
        topics.dedup(); // keys are sorted by topic, so equal names are adjacent
        for topic in topics {
            let queues = self.topics.get(topic).map_or(&[][..], |t| &t.queues[..]);
            let mut key = (topic.to_string(), 0u32);
            for (q, queue) in queues.iter().enumerate() {
                key.1 = q as u32;
                let fresh;
                let gq = match state.get(&key) {
                    Some(gq) => gq,
                    None => {
                        fresh = GroupQueue::new(queue.base);
                        &fresh
                    }
                };
                out.push(self.queue_stats(group, topic, key.1, gq));
            }
            // State for a queue the topic no longer has (deleted and made
            // again with fewer queues) is still shown as it is.
            for ((t, q), gq) in state.range((topic.to_string(), queues.len() as u32)..) {
                if t != topic {
                    break;
                }
                out.push(self.queue_stats(group, t, *q, gq));
            }
        }
        out
    }

    pub(super) fn queue_stats(
        &self,
        group: &str,
        topic: &str,
        q: u32,
        gq: &GroupQueue,
    ) -> GroupQueueStats {
        let max_offset = self
            .topics
            .get(topic)
            .and_then(|t| t.queues.get(q as usize))
            .map_or(0, |queue| queue.next_offset());
        let consumed = gq.ack_floor();
        GroupQueueStats {
            group: group.to_string(),
            topic: topic.to_string(),
            queue_id: q,
            consumed_offset: consumed,
            max_offset,
            lag: max_offset.saturating_sub(consumed),
            inflight: gq.inflight.len(),
        }
    }

    /// Dead letters of `group` still retained.
    pub fn dead_letter_count(&self, group: &str) -> usize {
        self.dead_letters.get(group).map_or(0, BTreeMap::len)
    }

    /// Where the record of the dead letter at `dlq_offset` of
    /// `%DLQ%<group>` lies (log offset, length); `None` when it is no
    /// longer retained or was found unreadable.
    pub fn dead_letter_record(&self, group: &str, dlq_offset: u64) -> Option<(u64, u32)> {
        self.entry(&dlq_topic(group), 0, dlq_offset)
            .filter(|e| !e.is_lost())
            .map(|e| (e.log_offset, e.len))
    }

    /// Records that may be message `id` (hash matches: read and compare),
    /// oldest first, at most `max`.
    pub fn messages_by_id(&self, id: &str, max: usize) -> Candidates {
        self.messages.by_id(id, max)
    }

    /// Records that may carry message key `key`, oldest first, at most `max`.
    pub fn messages_by_key(&self, key: &str, max: usize) -> Candidates {
        self.messages.by_key(key, max)
    }

    /// Entries of the message index: (by id, by key).
    pub fn message_index_len(&self) -> (usize, usize) {
        self.messages.len()
    }

    /// Where the message record `m`, stored at `log_offset` at `store_ms`,
    /// stands now: its place, each group's progress on it, its transaction
    /// and its timer.
    pub fn message_status(
        &self,
        log_offset: u64,
        store_ms: i64,
        m: &MessageRecord,
    ) -> MessageStatus {
        let placed = placement(m.message_type, m.delivery_timestamp_ms, store_ms);
        let claimed = match placed {
            Placement::Queue => Some((m.queue_id, m.queue_offset)),
            Placement::Half | Placement::Timer => self.late_positions.get(&log_offset).copied(),
        };
        let position = claimed.filter(|(q, o)| {
            self.entry(&m.topic, *q, *o)
                .is_some_and(|e| e.log_offset == log_offset)
        });
        let transaction = (placed == Placement::Half).then(|| {
            if let Some(h) = self.transactions.get(log_offset) {
                TxState::Pending {
                    checks: h.checks,
                    next_check_ms: h.next_check_ms,
                }
            } else if let Some(r) = self.transactions.resolved(log_offset) {
                TxState::Ended(r.clone())
            } else {
                TxState::Forgotten
            }
        });
        let timer_due_ms = self.timers.get(log_offset).map(|t| t.due_ms);
        let parked = timer_due_ms.is_some() || matches!(transaction, Some(TxState::Pending { .. }));
        let mut groups = Vec::new();
        if position.is_some() || parked {
            for (group, state) in &self.groups {
                if !Self::has_topic(state, &m.topic) {
                    continue;
                }
                let state = match position {
                    Some((q, o)) => self.delivery_state(group, state, &m.topic, q, o),
                    None => DeliveryState::Pending,
                };
                groups.push(GroupDelivery {
                    group: group.clone(),
                    state,
                });
            }
        }
        MessageStatus {
            position,
            groups,
            transaction,
            timer_due_ms,
        }
    }

    fn delivery_state(
        &self,
        group: &str,
        state: &GroupState,
        topic: &str,
        q: u32,
        o: u64,
    ) -> DeliveryState {
        let Some(gq) = state.get(&(topic.to_string(), q)) else {
            return DeliveryState::Pending;
        };
        if let Some(f) = gq.inflight.get(&o) {
            return if f.attempt == 0 {
                // Re-driven: due at once, not handed out yet.
                DeliveryState::Pending
            } else {
                DeliveryState::InFlight {
                    attempt: f.attempt,
                    visible_at_ms: f.visible_at_ms,
                }
            };
        }
        if o >= gq.cursor && !gq.ahead.contains(&o) {
            return DeliveryState::Pending;
        }
        let letter = self.dead_letters.get(group).and_then(|m| {
            m.values()
                .rev()
                .find(|d| d.topic == topic && d.queue_id == q && d.queue_offset == o)
        });
        match letter {
            // Sent back and settled since: acked (a later dead letter of
            // the same message would have a newer entry).
            Some(d) if d.redriven_at_ms.is_some() => DeliveryState::Acked,
            Some(d) => DeliveryState::DeadLettered {
                attempts: d.attempts,
                dlq_offset: d.dlq_queue_offset,
            },
            None => DeliveryState::Acked,
        }
    }
}

impl Broker {
    /// Everything replay must rebuild, rendered deterministically: topics
    /// and their index, group progress, dead-letter origins, transactions,
    /// timers, the message index and the handle counter. Derived state
    /// (FIFO bookkeeping, interned tags) is left out. Tests compare this
    /// between a live core and one replayed from its records.
    pub fn durable_state(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (name, t) in &self.topics {
            let _ = writeln!(
                out,
                "topic {name} {:?} created_at={} queues={:?}",
                t.config, t.created_at, t.queues
            );
        }
        for (group, state) in &self.groups {
            for ((topic, q), gq) in state {
                let _ = writeln!(
                    out,
                    "group {group} {topic}/{q} cursor={} inflight={:?} expiry={:?} ahead={:?}",
                    gq.cursor, gq.inflight, gq.expiry, gq.ahead
                );
            }
        }
        let _ = writeln!(out, "dead_letters {:?}", self.dead_letters);
        let _ = writeln!(out, "transactions {:?}", self.transactions);
        let _ = writeln!(out, "timers {:?}", self.timers);
        let _ = writeln!(out, "messages {:?}", self.messages);
        let _ = writeln!(out, "late_positions {:?}", self.late_positions);
        let _ = writeln!(
            out,
            "applied_end={} next_handle={}",
            self.applied_end, self.next_handle
        );
        out
    }
}
