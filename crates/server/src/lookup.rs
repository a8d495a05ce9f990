//! Message lookup for operators: which stored records are a message (by id
//! or by key), what they hold, where each stands now and what happened to
//! it — and the facts behind a group's dead letters.
//!
//! Each lookup takes the core lock only for what the core knows (index
//! candidates, current status), never while reading: records are read and
//! the history scanned on a blocking thread, so a lookup never stalls
//! sends or receives. The core's index holds hashes, so every candidate is
//! read and compared before it is shown.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_broker::{
    placement, DeadLetterOrigin, DeliveryState, MessageKind, MessageStatus, Placement, TxState,
};
use ferry_record::{MessageRecord, Payload, Record, TxOutcome};
use ferry_store::StoreError;
use serde::Serialize;
use tracing::warn;

use crate::engine::{Engine, EngineError};
use crate::lifecycle::{self, Event, History, What, LIFECYCLE_SCAN_BUDGET};

/// Messages a key lookup returns unless asked otherwise, and at most.
pub const DEFAULT_KEY_RESULTS: usize = 100;
pub const MAX_KEY_RESULTS: usize = 1_000;
/// Index candidates read per lookup at most: a key on millions of messages
/// (or a topic filter that rejects most of them) costs bounded reads.
pub const MAX_CANDIDATES: usize = 10_000;
/// Body bytes shown in an answer.
pub const BODY_PREVIEW_BYTES: usize = 256;

#[derive(Debug, Clone)]
pub enum Query {
    /// Every stored record of this message id (a producer's retry stores
    /// it again).
    Id(String),
    /// Messages carrying `key`, optionally only of `topic`, at most `limit`.
    Key {
        key: String,
        topic: Option<String>,
        limit: usize,
    },
}

impl Query {
    fn matches(&self, m: &MessageRecord) -> bool {
        match self {
            Query::Id(id) => m.message_id == *id,
            Query::Key { key, topic, .. } => {
                m.keys.iter().any(|k| k == key) && topic.as_ref().is_none_or(|t| m.topic == *t)
            }
        }
    }

    fn limit(&self) -> usize {
        match self {
            Query::Id(_) => MAX_CANDIDATES,
            Query::Key { limit, .. } => *limit,
        }
    }
}

/// A lookup's answer.
#[derive(Debug, Serialize)]
pub struct Found {
    /// Oldest first.
    pub messages: Vec<MessageView>,
    /// More messages may match than are listed (the limit or the candidate
    /// bound was reached).
    pub truncated: bool,
}

/// One stored message as an operator sees it.
#[derive(Debug, Serialize)]
pub struct MessageView {
    pub message_id: String,
    pub topic: String,
    /// `NORMAL`, `FIFO`, `DELAY` or `TRANSACTION`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub message_group: Option<String>,
    pub properties: BTreeMap<String, String>,
    pub born_timestamp_ms: i64,
    pub born_host: String,
    pub stored_ms: i64,
    pub delivery_timestamp_ms: Option<i64>,
    pub log_offset: u64,
    pub body_size: usize,
    /// The first [`BODY_PREVIEW_BYTES`] bytes: text when they are UTF-8,
    /// else `base64:` and their base64.
    pub body_preview: String,
    /// Its place in its topic once indexed there; `null` before (a half
    /// message, a delayed one) and for one never indexed.
    pub queue_id: Option<u32>,
    pub queue_offset: Option<u64>,
    pub lifecycle: LifecycleView,
}

/// What happened to a message (from the log) and where it stands (from
/// the core).
#[derive(Debug, Serialize)]
pub struct LifecycleView {
    /// In log order; at most [`lifecycle::MAX_EVENTS`].
    pub events: Vec<Event>,
    /// Events found past that bound.
    pub events_omitted: usize,
    /// The scan reached the committed end of the log; `false` when its
    /// byte budget ran out first (events after `scanned_to` are missing;
    /// the states below are exact either way).
    pub complete: bool,
    pub scanned_to: u64,
    pub groups: Vec<GroupStateView>,
    /// Half messages only.
    pub transaction: Option<TransactionView>,
    /// Messages with a delivery time only.
    pub timer: Option<TimerView>,
}

/// Where the message stands for one group with progress on its topic.
#[derive(Debug, Serialize)]
pub struct GroupStateView {
    pub group: String,
    /// `pending`, `in_flight`, `acked` or `dead_lettered`.
    pub state: &'static str,
    /// `in_flight`: the delivery attempt and when it is visible again.
    pub attempt: Option<u32>,
    pub visible_at_ms: Option<i64>,
    /// `dead_lettered`: deliveries made, and its offset in `%DLQ%<group>`.
    pub attempts: Option<u32>,
    pub dlq_offset: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct TransactionView {
    pub transaction_id: String,
    /// `pending`, `committed`, `rolled_back`, `discarded`, or `unknown`
    /// (ended longer ago than the outcome memory, and not in the scan).
    pub state: &'static str,
    /// Check-backs sent.
    pub checks: u32,
    /// `pending`: when the next check-back is due.
    pub next_check_ms: Option<i64>,
    /// Ended: when, by whom (`client`, `server_check`, `check_limit`), why.
    pub at_ms: Option<i64>,
    pub source: Option<&'static str>,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TimerView {
    /// `waiting` (for `due_ms`), `fired` (indexed; due), `recalled`,
    /// `awaiting_transaction` (a half message, not committed yet),
    /// `cancelled` (its transaction did not commit, or its topic was
    /// deleted), or `unknown` (not in the scan).
    pub state: &'static str,
    pub due_ms: Option<i64>,
}

/// A message record read back and verified.
struct Stored {
    log_offset: u64,
    store_ms: i64,
    message: MessageRecord,
}

/// Looks messages up; for [`Query::Id`] an empty answer is
/// [`BrokerError::MessageNotFound`](ferry_broker::BrokerError).
pub async fn find(engine: Arc<Engine>, query: Query) -> Result<Found, EngineError> {
    let candidates = engine.with_core(|c| match &query {
        Query::Id(id) => c.messages_by_id(id, MAX_CANDIDATES),
        Query::Key { key, .. } => c.messages_by_key(key, MAX_CANDIDATES),
    });
    let (stored, truncated) = {
        let engine = engine.clone();
        let query = query.clone();
        blocking(move || {
            let mut out = Vec::new();
            let mut truncated = candidates.more;
            for (i, offset) in candidates.offsets.iter().enumerate() {
                if out.len() >= query.limit() {
                    truncated |= i < candidates.offsets.len();
                    break;
                }
                match engine.log().read_at(*offset) {
                    Ok((
                        Record {
                            timestamp_ms,
                            payload: Payload::Message(m),
                            ..
                        },
                        _,
                    )) if query.matches(&m) => out.push(Stored {
                        log_offset: *offset,
                        store_ms: timestamp_ms,
                        message: m,
                    }),
                    Ok(_) => {}
                    Err(e) => warn!(offset, error = %e, "indexed message unreadable; left out of the lookup"),
                }
            }
            Ok((out, truncated))
        })
        .await?
    };
    if stored.is_empty() {
        if let Query::Id(id) = &query {
            return Err(ferry_broker::BrokerError::MessageNotFound(id.clone()).into());
        }
    }
    let (stored, histories, end) = {
        let engine = engine.clone();
        blocking(move || {
            let wanted: Vec<lifecycle::Wanted<'_>> = stored
                .iter()
                .map(|s| lifecycle::Wanted {
                    log_offset: s.log_offset,
                    message: &s.message,
                })
                .collect();
            let (histories, end) = lifecycle::scan(engine.log(), &wanted, LIFECYCLE_SCAN_BUDGET)?;
            drop(wanted);
            Ok((stored, histories, end))
        })
        .await?
    };
    let statuses: Vec<MessageStatus> = engine.with_core(|c| {
        stored
            .iter()
            .map(|s| c.message_status(s.log_offset, s.store_ms, &s.message))
            .collect()
    });
    let messages = stored
        .into_iter()
        .zip(histories)
        .zip(statuses)
        .map(|((s, h), st)| view(s, h, st, end.complete, end.scanned_to))
        .collect();
    Ok(Found {
        messages,
        truncated,
    })
}

/// Runs blocking reads off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Task(format!("lookup task failed: {e}")))?
        .map_err(EngineError::from)
}

fn view(s: Stored, h: History, st: MessageStatus, complete: bool, scanned_to: u64) -> MessageView {
    let m = s.message;
    let placed = placement(m.message_type, m.delivery_timestamp_ms, s.store_ms);
    let own = (placed == Placement::Queue).then_some((m.queue_id, m.queue_offset));
    let position = st.position.or(h.position).or(own);
    let transaction = (placed == Placement::Half).then(|| transaction_view(s.log_offset, &st, &h));
    let timer = m.delivery_timestamp_ms.map(|due| TimerView {
        state: timer_state(&st, &h, position.is_some(), transaction.as_ref()),
        due_ms: Some(st.timer_due_ms.unwrap_or(due)),
    });
    let groups = st
        .groups
        .iter()
        .map(|g| {
            let mut v = GroupStateView {
                group: g.group.clone(),
                state: "pending",
                attempt: None,
                visible_at_ms: None,
                attempts: None,
                dlq_offset: None,
            };
            match g.state {
                DeliveryState::Pending => {}
                DeliveryState::InFlight {
                    attempt,
                    visible_at_ms,
                } => {
                    v.state = "in_flight";
                    v.attempt = Some(attempt);
                    v.visible_at_ms = Some(visible_at_ms);
                }
                DeliveryState::Acked => v.state = "acked",
                DeliveryState::DeadLettered {
                    attempts,
                    dlq_offset,
                } => {
                    v.state = "dead_lettered";
                    v.attempts = Some(attempts);
                    v.dlq_offset = Some(dlq_offset);
                }
            }
            v
        })
        .collect();
    MessageView {
        kind: MessageKind::from_code(m.message_type).map_or("UNKNOWN", MessageKind::name),
        body_size: m.body.len(),
        body_preview: body_preview(&m.body),
        properties: m.properties.into_iter().collect(),
        message_id: m.message_id,
        topic: m.topic,
        tag: m.tag,
        keys: m.keys,
        message_group: m.message_group,
        born_timestamp_ms: m.born_timestamp_ms,
        born_host: m.born_host,
        stored_ms: s.store_ms,
        delivery_timestamp_ms: m.delivery_timestamp_ms,
        log_offset: s.log_offset,
        queue_id: position.map(|p| p.0),
        queue_offset: position.map(|p| p.1),
        lifecycle: LifecycleView {
            events: h.events,
            events_omitted: h.omitted,
            complete,
            scanned_to,
            groups,
            transaction,
            timer,
        },
    }
}

fn transaction_view(half_offset: u64, st: &MessageStatus, h: &History) -> TransactionView {
    let seen_checks = h
        .events
        .iter()
        .filter_map(|e| match e.what {
            What::Checked { check, .. } => Some(check),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let scanned_reason = h.tx_end().and_then(|e| match &e.what {
        What::RolledBack { reason, .. } | What::Discarded { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    let mut v = TransactionView {
        transaction_id: ferry_broker::transaction::transaction_id(half_offset),
        state: "unknown",
        checks: seen_checks,
        next_check_ms: None,
        at_ms: None,
        source: None,
        reason: None,
    };
    match &st.transaction {
        Some(TxState::Pending {
            checks,
            next_check_ms,
        }) => {
            v.state = "pending";
            v.checks = *checks;
            v.next_check_ms = Some(*next_check_ms);
        }
        Some(TxState::Ended(r)) => {
            v.state = match r.outcome {
                TxOutcome::Commit => "committed",
                TxOutcome::Rollback => "rolled_back",
                TxOutcome::Discard => "discarded",
            };
            v.checks = r.checks;
            v.at_ms = Some(r.at_ms);
            v.source = Some(lifecycle::source_name(r.source));
            // Only a discard's reason stays in memory; the log has the rest.
            v.reason = Some(r.reason.clone())
                .filter(|r| !r.is_empty())
                .or(scanned_reason);
        }
        Some(TxState::Forgotten) | None => {
            if let Some(e) = h.tx_end() {
                let (state, source) = match &e.what {
                    What::Committed { source, .. } => ("committed", *source),
                    What::RolledBack { source, .. } => ("rolled_back", *source),
                    What::Discarded { source, .. } => ("discarded", *source),
                    _ => ("unknown", ""),
                };
                v.state = state;
                v.at_ms = Some(e.at_ms);
                v.source = Some(source);
                v.reason = scanned_reason;
            }
        }
    }
    v
}

fn timer_state(
    st: &MessageStatus,
    h: &History,
    placed: bool,
    tx: Option<&TransactionView>,
) -> &'static str {
    if st.timer_due_ms.is_some() {
        "waiting"
    } else if placed {
        "fired"
    } else if h.saw(|w| matches!(w, What::Recalled)) {
        "recalled"
    } else if tx.is_some_and(|t| t.state == "pending") {
        "awaiting_transaction"
    } else if tx.is_some_and(|t| matches!(t.state, "rolled_back" | "discarded"))
        || h.saw(|w| matches!(w, What::TopicDeleted))
    {
        "cancelled"
    } else {
        "unknown"
    }
}

/// The first [`BODY_PREVIEW_BYTES`] of a body: as text when they are UTF-8
/// (a character cut at the end is left out), else `base64:<base64>`.
pub fn body_preview(body: &[u8]) -> String {
    let head = &body[..body.len().min(BODY_PREVIEW_BYTES)];
    match std::str::from_utf8(head) {
        Ok(text) => text.to_string(),
        // Valid up to a character the cut split: still text.
        Err(e) if e.error_len().is_none() && head.len() < body.len() => {
            String::from_utf8_lossy(&head[..e.valid_up_to()]).into_owned()
        }
        Err(_) => format!("base64:{}", base64(head)),
    }
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One dead letter with the facts of its message.
#[derive(Debug, Serialize)]
pub struct DeadLetterView {
    #[serde(flatten)]
    pub origin: DeadLetterOrigin,
    /// Where the message record lies; `null` when it is no longer readable.
    pub log_offset: Option<u64>,
    pub message_id: Option<String>,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub stored_ms: Option<i64>,
    /// Why the facts are missing, when they are.
    pub error: Option<String>,
}

/// A page of a group's dead letters.
#[derive(Debug, Serialize)]
pub struct DeadLetterPage {
    pub group: String,
    pub topic: String,
    pub dead_letters: Vec<DeadLetterView>,
    /// Where the next page starts (`from`); `null` when this was the last.
    pub next_from: Option<u64>,
}

/// Dead letters of `group` from `from` on, at most `limit`, each with its
/// message's id, tag, keys and store time read from the log (outside the
/// core lock). An unreadable record is reported in its entry, never as a
/// failure of the whole page.
pub async fn dead_letters(
    engine: Arc<Engine>,
    group: String,
    from: u64,
    limit: usize,
) -> Result<DeadLetterPage, EngineError> {
    let (mut listed, next_from) = engine.with_core(|c| {
        let mut list = c.dead_letters(&group, from, limit.saturating_add(1));
        let next = (list.len() > limit).then(|| list[limit].dlq_queue_offset);
        list.truncate(limit);
        let listed: Vec<(DeadLetterOrigin, Option<(u64, u32)>)> = list
            .into_iter()
            .map(|o| {
                let at = c.dead_letter_record(&group, o.dlq_queue_offset);
                (o, at)
            })
            .collect();
        (listed, next)
    });
    let views = {
        let engine = engine.clone();
        blocking(move || {
            Ok(listed
                .drain(..)
                .map(|(origin, at)| {
                    let mut v = DeadLetterView {
                        origin,
                        log_offset: at.map(|a| a.0),
                        message_id: None,
                        tag: None,
                        keys: Vec::new(),
                        stored_ms: None,
                        error: None,
                    };
                    let Some((offset, len)) = at else {
                        v.error = Some("the message record is no longer retained".into());
                        return v;
                    };
                    match engine.log().read(offset, len) {
                        Ok(Record {
                            timestamp_ms,
                            payload: Payload::Message(m),
                            ..
                        }) => {
                            v.message_id = Some(m.message_id);
                            v.tag = m.tag;
                            v.keys = m.keys;
                            v.stored_ms = Some(timestamp_ms);
                        }
                        Ok(other) => {
                            v.error = Some(format!(
                                "log offset {offset} holds a {:?} record, not a message",
                                other.payload.kind()
                            ))
                        }
                        Err(e) => v.error = Some(e.to_string()),
                    }
                    v
                })
                .collect::<Vec<_>>())
        })
        .await?
    };
    Ok(DeadLetterPage {
        topic: ferry_broker::dlq_topic(&group),
        group,
        dead_letters: views,
        next_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, coded) in cases {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn previews_are_text_when_they_can_be() {
        assert_eq!(body_preview(b"hello"), "hello");
        assert_eq!(body_preview(&[0xff, 0x00]), "base64:/wA=");
        // 255 ASCII bytes then a two-byte character cut by the limit.
        let mut body = vec![b'a'; 255];
        body.extend_from_slice("é and more".as_bytes());
        assert_eq!(body_preview(&body), "a".repeat(255));
        let long = "x".repeat(1000);
        assert_eq!(body_preview(long.as_bytes()).len(), BODY_PREVIEW_BYTES);
    }
}
