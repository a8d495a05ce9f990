//! Deleting a topic: the decision and what applying it removes.
//!
//! A deletion is a `TopicDelete` record like every other change, so replay
//! removes the topic at the same point in history the live broker did, and
//! records after it with the same name find no topic and make a fresh one
//! (queue offsets from 0). Nothing of the old topic may linger where it
//! could be mistaken for the new one: group progress, timers, half messages
//! and late-indexed positions all go. Message records stay in the log until
//! retention, so lookups by id still find them (and their history).

use super::*;

impl Broker {
    /// Decides an operator's deletion of topic `name`.
    pub fn plan_topic_delete(&self, now_ms: i64, name: &str) -> Result<Record, BrokerError> {
        validate::topic_name(name, &self.config.limits)?;
        if !self.topics.contains_key(name) {
            return Err(BrokerError::TopicNotFound(name.to_string()));
        }
        Ok(Record {
            term: 0,
            timestamp_ms: now_ms,
            payload: Payload::TopicDelete(TopicDeleteRecord {
                topic: name.to_string(),
            }),
        })
    }

    pub(super) fn apply_topic_delete(
        &mut self,
        log_offset: u64,
        now_ms: i64,
        d: &TopicDeleteRecord,
    ) {
        let name = d.topic.as_str();
        let Some(topic) = self.topics.remove(name) else {
            return;
        };
        for (q, queue) in topic.queues.iter().enumerate() {
            if !queue.has_late {
                continue;
            }
            for (i, e) in queue.entries.iter().enumerate() {
                let here = (q as u32, queue.base + i as u64);
                if self.late_positions.get(&e.log_offset) == Some(&here) {
                    self.late_positions.remove(&e.log_offset);
                }
            }
        }
        for state in self.groups.values_mut() {
            state.retain(|(t, _), _| t != name);
        }
        // A group whose only topic this was is unknown again (and no longer
        // counts against the group limit).
        self.groups.retain(|_, state| !state.is_empty());
        self.timers.remove_topic(name);
        let halves: Vec<HalfMessage> = self.transactions.pending_of(name).cloned().collect();
        for h in halves {
            // Remembered as discarded, so a late EndTransaction is told what
            // happened instead of "unknown transaction".
            self.transactions.end(Resolved {
                half_offset: h.msg.log_offset,
                topic: h.msg.topic,
                message_id: h.msg.message_id,
                outcome: TxOutcome::Discard,
                source: TxSource::CheckLimit,
                at_ms: now_ms,
                checks: h.checks,
                reason: format!("topic {name} was deleted; never delivered"),
            });
        }
        if let Some(group) = name.strip_prefix("%DLQ%") {
            self.dead_letters.remove(group);
        }
        if topic.created_at > log_offset {
            // Replay met the deletion of an earlier topic of this name; the
            // topic file describes the one created after it, which starts
            // out empty from here.
            self.topics.insert(
                name.to_string(),
                Topic::new(name, topic.config, topic.created_at),
            );
        }
    }
}
