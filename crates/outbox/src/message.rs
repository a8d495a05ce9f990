//! Messages going into the outbox, and the rows the relay claims back.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::{OutboxError, Result};
use crate::plan::{LaneKey, Row};

/// Limits checked before a row is written, so a message the broker would
/// refuse never sits in the table blocking its key.
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

/// A message to publish once the surrounding transaction commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub topic: String,
    pub body: Bytes,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    /// FIFO message group on the broker. Also the ordering key unless one
    /// is set: FIFO consumers want the commit order.
    pub message_group: Option<String>,
    /// Rows sharing an ordering key are published in commit order.
    pub ordering_key: Option<String>,
    /// Delayed delivery, as Unix milliseconds.
    pub deliver_at_ms: Option<i64>,
    /// Fixed message id; a fresh one is made at enqueue when `None`.
    pub message_id: Option<String>,
}

impl OutboxMessage {
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        OutboxMessage {
            topic: topic.into(),
            body: body.into(),
            tag: None,
            keys: Vec::new(),
            properties: BTreeMap::new(),
            message_group: None,
            ordering_key: None,
            deliver_at_ms: None,
            message_id: None,
        }
    }

    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// A FIFO message: same group, same queue, consumed in order.
    pub fn with_message_group(mut self, group: impl Into<String>) -> Self {
        self.message_group = Some(group.into());
        self
    }

    /// Publish in commit order with the other rows of `key`, without a
    /// FIFO group on the broker.
    pub fn ordered_by(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    pub fn with_delivery_time(mut self, at: SystemTime) -> Self {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64);
        self.deliver_at_ms = Some(ms);
        self
    }

    pub fn with_delay(self, delay: Duration) -> Self {
        self.with_delivery_time(SystemTime::now() + delay)
    }

    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// The key rows are ordered by, if any.
    pub fn effective_ordering_key(&self) -> Option<&str> {
        self.ordering_key
            .as_deref()
            .or(self.message_group.as_deref())
    }

    /// Refuses what could never be published; nothing is written then.
    pub fn check(&self, max_body: usize) -> Result<()> {
        let bad = |why: String| Err(OutboxError::invalid("outbox message", why));
        name("topic", &self.topic)?;
        if self.body.is_empty() {
            return bad("empty body".into());
        }
        if self.body.len() > max_body {
            return bad(format!(
                "body of {} bytes is over the limit of {max_body}",
                self.body.len()
            ));
        }
        if let Some(tag) = &self.tag {
            name("tag", tag)?;
            if tag.contains('|') || tag.chars().any(char::is_whitespace) {
                return bad(format!("tag {tag:?} has '|' or blanks"));
            }
        }
        if let Some(g) = &self.message_group {
            name("message group", g)?;
        }
        if let Some(k) = &self.ordering_key {
            name("ordering key", k)?;
        }
        if self.message_group.is_some() && self.deliver_at_ms.is_some() {
            return bad("a message has a message group (FIFO) or a delivery time, not both".into());
        }
        if self.keys.len() > limits::MAX_KEYS {
            return bad(format!(
                "{} keys; at most {}",
                self.keys.len(),
                limits::MAX_KEYS
            ));
        }
        if let Some(k) = self
            .keys
            .iter()
            .find(|k| k.is_empty() || k.chars().any(char::is_whitespace))
        {
            return bad(format!("key {k:?} is empty or has blanks"));
        }
        if self.properties.len() > limits::MAX_PROPERTIES {
            return bad(format!(
                "{} properties; at most {}",
                self.properties.len(),
                limits::MAX_PROPERTIES
            ));
        }
        if self.properties.keys().any(String::is_empty) {
            return bad("a property with an empty name".into());
        }
        let meta: usize = self.keys.iter().map(String::len).sum::<usize>()
            + self
                .properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if meta > limits::MAX_META_BYTES {
            return bad(format!(
                "keys and properties take {meta} bytes; at most {}",
                limits::MAX_META_BYTES
            ));
        }
        if let Some(id) = &self.message_id {
            if id.is_empty()
                || id.len() > ferry_client::MAX_MESSAGE_ID_LEN
                || !id.bytes().all(|b| b.is_ascii_graphic())
            {
                return bad(format!(
                    "message id {id:?}: 1 to {} printable ASCII characters",
                    ferry_client::MAX_MESSAGE_ID_LEN
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn keys_json(&self) -> Option<String> {
        (!self.keys.is_empty()).then(|| serde_json::to_string(&self.keys).expect("strings"))
    }

    pub(crate) fn properties_json(&self) -> Option<String> {
        (!self.properties.is_empty())
            .then(|| serde_json::to_string(&self.properties).expect("strings"))
    }
}

fn name(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > limits::MAX_NAME || value.chars().any(char::is_control) {
        return Err(OutboxError::invalid(
            what,
            format!(
                "{value:?}: 1 to {} bytes, no control characters",
                limits::MAX_NAME
            ),
        ));
    }
    Ok(())
}

/// A claimed row: what a [`crate::Publisher`] publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMessage {
    /// The row's id: commit order within an ordering key.
    pub id: i64,
    pub message_id: String,
    pub topic: String,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub message_group: Option<String>,
    pub ordering_key: Option<String>,
    pub deliver_at_ms: Option<i64>,
    pub body: Bytes,
    /// When the row was written, by the database's clock.
    pub created_ms: i64,
    /// Tries so far, this one included.
    pub attempts: u32,
    /// How old the row was when claimed, by the database's clock.
    pub age_ms: i64,
}

impl PendingMessage {
    /// The client message for Ferry; the row's message id is kept, so a
    /// re-publish after a crash carries the same id.
    pub fn to_client_message(&self) -> ferry_client::Message {
        let mut m = ferry_client::Message::new(self.topic.clone(), self.body.clone())
            .with_message_id(self.message_id.clone())
            .with_keys(self.keys.iter().cloned());
        if let Some(t) = &self.tag {
            m = m.with_tag(t.clone());
        }
        if let Some(g) = &self.message_group {
            m = m.with_message_group(g.clone());
        }
        if let Some(at) = self.deliver_at_ms {
            let at = UNIX_EPOCH + Duration::from_millis(at.max(0) as u64);
            m = m.with_delivery_time(at);
        }
        m.properties = self.properties.clone();
        m
    }

    pub(crate) fn parse_keys(id: i64, json: Option<String>) -> Result<Vec<String>> {
        json.map_or(Ok(Vec::new()), |j| {
            serde_json::from_str(&j).map_err(|e| OutboxError::CorruptRow {
                id,
                why: format!("keys_json: {e}"),
            })
        })
    }

    pub(crate) fn parse_properties(
        id: i64,
        json: Option<String>,
    ) -> Result<BTreeMap<String, String>> {
        json.map_or(Ok(BTreeMap::new()), |j| {
            serde_json::from_str(&j).map_err(|e| OutboxError::CorruptRow {
                id,
                why: format!("properties_json: {e}"),
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
            topic: &self.topic,
            message_group: self.message_group.as_deref(),
            delayed: self.deliver_at_ms.is_some(),
            ordering_key: self.ordering_key.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_refuse_what_a_broker_would() {
        let ok = OutboxMessage::new("orders", "x");
        ok.check(10).unwrap();
        let cases = [
            (OutboxMessage::new("", "x"), "topic"),
            (OutboxMessage::new("t", ""), "empty body"),
            (OutboxMessage::new("t", "x".repeat(11)), "over the limit"),
            (ok.clone().with_tag("a|b"), "'|'"),
            (ok.clone().with_key("a b"), "blanks"),
            (
                ok.clone()
                    .with_message_group("g")
                    .with_delay(Duration::from_secs(1)),
                "not both",
            ),
            (ok.clone().with_message_id("has space"), "message id"),
            (ok.clone().ordered_by("x".repeat(300)), "ordering key"),
        ];
        for (m, want) in cases {
            let e = m.check(10).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn the_group_orders_unless_a_key_is_given() {
        let m = OutboxMessage::new("t", "x").with_message_group("g");
        assert_eq!(m.effective_ordering_key(), Some("g"));
        assert_eq!(m.ordered_by("k").effective_ordering_key(), Some("k"));
    }
}
