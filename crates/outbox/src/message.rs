//! Messages going into the outbox, and the rows the relay claims back.
//!
//! Both carry a [`ferry_client::Message`]: what is stored is exactly what
//! a producer would send, with the same checks, and a claimed row turns
//! back into a message without a field-by-field copy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_client::Message;

use crate::error::{OutboxError, Result};
use crate::plan::{LaneKey, Row};

/// Limits checked before a row is written, so a message that could never
/// be published never sits in the table blocking its key.
pub mod limits {
    /// Ferry's default largest body.
    pub const MAX_BODY: usize = 4 * 1024 * 1024;
    /// Topic, tag, message group and ordering key: the column width.
    pub const MAX_NAME: usize = 255;
    pub const MAX_KEYS: usize = 32;
    pub const MAX_PROPERTIES: usize = 64;
    /// Keys and properties together, as stored JSON.
    pub const MAX_META_BYTES: usize = 16 * 1024;
}

/// A message to publish once the surrounding transaction commits: a
/// client [`Message`] (topic, body, tag, keys, properties, FIFO group,
/// delivery time, fixed id) and, optionally, the key whose commit order
/// its publication keeps.
///
/// ```
/// use ferry_client::Message;
/// use ferry_outbox::OutboxMessage;
/// let plain = OutboxMessage::new("orders", "order 42");
/// let rich = OutboxMessage::from(Message::new("orders", "order 42").with_tag("created"))
///     .ordered_by("customer-7");
/// # let _ = (plain, rich);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub message: Message,
    /// Rows sharing an ordering key are published in commit order. A
    /// message group (FIFO) orders too when this is `None`: FIFO consumers
    /// want the commit order.
    pub ordering_key: Option<String>,
}

impl From<Message> for OutboxMessage {
    fn from(message: Message) -> Self {
        OutboxMessage {
            message,
            ordering_key: None,
        }
    }
}

impl OutboxMessage {
    pub fn new(topic: impl Into<String>, body: impl Into<bytes::Bytes>) -> Self {
        Message::new(topic, body).into()
    }

    /// Publish in commit order with the other rows of `key`, without a
    /// FIFO group on the broker. This orders the publishing only: plain
    /// messages spread over a topic's queues, so consumers see the order
    /// only with a message group (FIFO), which orders both.
    pub fn ordered_by(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// The key rows are ordered by, if any.
    pub fn effective_ordering_key(&self) -> Option<&str> {
        self.ordering_key
            .as_deref()
            .or(self.message.message_group.as_deref())
    }

    /// Refuses what could never be published (the client's own checks)
    /// or stored (the columns' widths); nothing is written then.
    pub fn check(&self, max_body: usize) -> Result<()> {
        let m = &self.message;
        m.check(max_body).map_err(|e| match e {
            ferry_client::ClientError::Invalid { why, .. } => {
                OutboxError::invalid("outbox message", why)
            }
            other => OutboxError::invalid("outbox message", other.to_string()),
        })?;
        let bad = |why: String| Err(OutboxError::invalid("outbox message", why));
        let names = [
            ("topic", Some(&m.topic)),
            ("tag", m.tag.as_ref()),
            ("message group", m.message_group.as_ref()),
            ("ordering key", self.ordering_key.as_ref()),
        ];
        for (what, value) in names {
            if let Some(v) = value {
                // No blanks at the ends: MySQL's `utf8mb4_bin` compares
                // "k" and "k " as equal, which would merge two keys.
                if v.is_empty()
                    || v.len() > limits::MAX_NAME
                    || v.chars().any(char::is_control)
                    || v.trim() != v.as_str()
                {
                    return bad(format!(
                        "{what} {v:?}: 1 to {} bytes, no control characters, no blanks at the ends",
                        limits::MAX_NAME
                    ));
                }
            }
        }
        if m.message_group.is_some() && m.delivery_time.is_some() {
            return bad("a message has a message group (FIFO) or a delivery time, not both".into());
        }
        if m.keys.len() > limits::MAX_KEYS {
            return bad(format!(
                "{} keys; at most {}",
                m.keys.len(),
                limits::MAX_KEYS
            ));
        }
        if let Some(k) = m
            .keys
            .iter()
            .find(|k| k.is_empty() || k.chars().any(char::is_whitespace))
        {
            return bad(format!("key {k:?} is empty or has blanks"));
        }
        if m.properties.len() > limits::MAX_PROPERTIES {
            return bad(format!(
                "{} properties; at most {}",
                m.properties.len(),
                limits::MAX_PROPERTIES
            ));
        }
        if m.properties.keys().any(String::is_empty) {
            return bad("a property with an empty name".into());
        }
        let meta: usize = m.keys.iter().map(String::len).sum::<usize>()
            + m.properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if meta > limits::MAX_META_BYTES {
            return bad(format!(
                "keys and properties take {meta} bytes; at most {}",
                limits::MAX_META_BYTES
            ));
        }
        Ok(())
    }

    pub(crate) fn keys_json(&self) -> Option<String> {
        let keys = &self.message.keys;
        (!keys.is_empty()).then(|| serde_json::to_string(keys).expect("strings"))
    }

    pub(crate) fn properties_json(&self) -> Option<String> {
        let p = &self.message.properties;
        (!p.is_empty()).then(|| serde_json::to_string(p).expect("strings"))
    }

    pub(crate) fn deliver_at_ms(&self) -> Option<i64> {
        self.message.delivery_time.map(|at| {
            at.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64)
        })
    }
}

/// A claimed row: what a [`crate::Publisher`] publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMessage {
    /// The row's id: commit order within an ordering key.
    pub id: i64,
    /// The stored message, its `message_id` set to the row's: a
    /// re-publish after a crash carries the same id.
    pub message: Message,
    pub ordering_key: Option<String>,
    /// When the row was written, by the database's clock.
    pub created_ms: i64,
    /// Tries so far, this one included.
    pub attempts: u32,
    /// How old the row was when claimed, by the database's clock.
    pub age_ms: i64,
}

impl PendingMessage {
    /// The message id consumers see.
    pub fn message_id(&self) -> &str {
        self.message.message_id.as_deref().unwrap_or_default()
    }

    pub(crate) fn delivery_time(at_ms: Option<i64>) -> Option<SystemTime> {
        at_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
    }

    pub(crate) fn parse_json<T: serde::de::DeserializeOwned + Default>(
        id: i64,
        column: &str,
        json: Option<String>,
    ) -> Result<T> {
        json.map_or(Ok(T::default()), |j| {
            serde_json::from_str(&j).map_err(|e| OutboxError::CorruptRow {
                id,
                why: format!("{column}: {e}"),
            })
        })
    }
}

impl Row for PendingMessage {
    fn id(&self) -> i64 {
        self.id
    }
    fn ordering_key(&self) -> Option<&str> {
        self.ordering_key.as_deref()
    }
    fn lane_key(&self) -> LaneKey<'_> {
        LaneKey {
            topic: &self.message.topic,
            message_group: self.message.message_group.as_deref(),
            delayed: self.message.delivery_time.is_some(),
            ordering_key: self.ordering_key.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(topic: &str, body: &str) -> Message {
        Message::new(topic, body.to_string())
    }

    #[test]
    fn checks_refuse_what_a_broker_would_or_a_column_cannot_hold() {
        OutboxMessage::new("orders", "x").check(10).unwrap();
        let cases: [(OutboxMessage, &str); 8] = [
            (m("", "x").into(), "topic"),
            (m("t", "").into(), "empty body"),
            (m("t", &"x".repeat(11)).into(), "limit of 10"),
            (m("t", "x").with_tag("a|b").into(), "tag"),
            (m("t", "x").with_key("a b").into(), "blanks"),
            (
                m("t", "x")
                    .with_message_group("g")
                    .with_delay(Duration::from_secs(1))
                    .into(),
                "not both",
            ),
            (
                m("t", "x").with_message_id("has space").into(),
                "message id",
            ),
            (
                OutboxMessage::new("t", "x").ordered_by("x".repeat(300)),
                "ordering key",
            ),
        ];
        for (msg, want) in cases {
            let e = msg.check(10).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn key_property_and_size_limits_are_enforced() {
        let many_keys =
            (0..=limits::MAX_KEYS).fold(m("t", "x"), |m, i| m.with_key(format!("k{i}")));
        let many_props = (0..=limits::MAX_PROPERTIES)
            .fold(m("t", "x"), |m, i| m.with_property(format!("p{i}"), "v"));
        let fat = m("t", "x").with_property("p", "v".repeat(limits::MAX_META_BYTES));
        let cases: [(OutboxMessage, &str); 5] = [
            (many_keys.into(), "keys; at most 32"),
            (many_props.into(), "properties; at most 64"),
            (fat.into(), "at most 16384"),
            (m("t", "x").with_property("", "v").into(), "empty name"),
            (
                OutboxMessage::new("t", "x").ordered_by("k "),
                "blanks at the ends",
            ),
        ];
        for (msg, want) in cases {
            let e = msg.check(100).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn the_group_orders_unless_a_key_is_given() {
        let g = OutboxMessage::from(m("t", "x").with_message_group("g"));
        assert_eq!(g.effective_ordering_key(), Some("g"));
        assert_eq!(g.ordered_by("k").effective_ordering_key(), Some("k"));
    }
}
