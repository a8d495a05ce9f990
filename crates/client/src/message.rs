//! Messages going out, messages coming in, and consumer filters.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_proto::v2 as pb;
use md5::{Digest as _, Md5};

use crate::error::ClientError;

/// The longest message id a broker takes (Ferry's limit).
pub const MAX_MESSAGE_ID_LEN: usize = 128;

/// What a producer sends. Build it with the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub body: Bytes,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    /// FIFO: messages of one group are consumed in send order.
    pub message_group: Option<String>,
    /// Delayed: not delivered before this time.
    pub delivery_time: Option<SystemTime>,
    /// The id to send under. `None`: a fresh id per send. Set it when the
    /// same logical message may be sent again (an outbox relay after a
    /// crash) so consumers can recognise the repeat.
    pub message_id: Option<String>,
}

impl Message {
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            body: body.into(),
            tag: None,
            keys: Vec::new(),
            properties: BTreeMap::new(),
            message_group: None,
            delivery_time: None,
            message_id: None,
        }
    }

    /// Sends under this id instead of a fresh one; see [`Message::message_id`].
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    pub fn with_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.keys.extend(keys.into_iter().map(Into::into));
        self
    }

    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    pub fn with_message_group(mut self, group: impl Into<String>) -> Self {
        self.message_group = Some(group.into());
        self
    }

    pub fn with_delivery_time(mut self, at: SystemTime) -> Self {
        self.delivery_time = Some(at);
        self
    }

    /// Delivery no sooner than `delay` from now.
    pub fn with_delay(self, delay: Duration) -> Self {
        self.with_delivery_time(SystemTime::now() + delay)
    }

    /// Its RocketMQ type. `transactional` overrides: a half message is a
    /// TRANSACTION message whatever else it carries.
    pub(crate) fn message_type(&self, transactional: bool) -> Result<pb::MessageType, ClientError> {
        if transactional {
            return Ok(pb::MessageType::Transaction);
        }
        match (&self.message_group, &self.delivery_time) {
            (Some(_), Some(_)) => Err(ClientError::Invalid {
                what: "message",
                why: "a message has a message group (FIFO) or a delivery time (delay), not both"
                    .into(),
            }),
            (Some(_), None) => Ok(pb::MessageType::Fifo),
            (None, Some(_)) => Ok(pb::MessageType::Delay),
            (None, None) => Ok(pb::MessageType::Normal),
        }
    }

    /// Checks what can be checked before a broker sees it (`max_body` 0:
    /// no size limit). A producer runs it on every send; an outbox runs it
    /// before storing a message for later.
    pub fn check(&self, max_body: usize) -> Result<(), ClientError> {
        let bad = |why: String| {
            Err(ClientError::Invalid {
                what: "message",
                why,
            })
        };
        if self.topic.is_empty() {
            return bad("no topic".into());
        }
        if self.body.is_empty() {
            return bad("empty body".into());
        }
        if max_body > 0 && self.body.len() > max_body {
            return bad(format!(
                "body of {} bytes is over the broker's limit of {max_body}",
                self.body.len()
            ));
        }
        if let Some(tag) = &self.tag {
            if tag.is_empty()
                || tag.contains('|')
                || tag.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return bad(format!(
                    "tag {tag:?}: must be non-empty, without '|', blanks or control characters"
                ));
            }
        }
        if self.message_group.as_ref().is_some_and(String::is_empty) {
            return bad("empty message group".into());
        }
        if let Some(id) = &self.message_id {
            if id.is_empty()
                || id.len() > MAX_MESSAGE_ID_LEN
                || !id.bytes().all(|b| b.is_ascii_graphic())
            {
                return bad(format!(
                    "message id {id:?}: 1 to {MAX_MESSAGE_ID_LEN} printable ASCII characters without blanks"
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn to_wire(
        &self,
        namespace: &str,
        message_id: &str,
        kind: pb::MessageType,
        queue_id: i32,
        check_after: Option<Duration>,
    ) -> pb::Message {
        pb::Message {
            topic: Some(resource(namespace, &self.topic)),
            user_properties: self.properties.clone().into_iter().collect(),
            system_properties: Some(pb::SystemProperties {
                tag: self.tag.clone(),
                keys: self.keys.clone(),
                message_id: message_id.to_string(),
                // CRC32, as the official Java client sends: it guards the
                // body as well as MD5 does against accidents, at a fraction
                // of the cost (MD5 was a tenth of a producer's CPU).
                body_digest: Some(pb::Digest {
                    r#type: pb::DigestType::Crc32 as i32,
                    checksum: format!("{:08X}", crc32fast::hash(&self.body)),
                }),
                body_encoding: pb::Encoding::Identity as i32,
                message_type: kind as i32,
                born_timestamp: Some(timestamp(SystemTime::now())),
                born_host: crate::headers::hostname().to_string(),
                delivery_timestamp: self.delivery_time.map(timestamp),
                queue_id,
                message_group: self.message_group.clone(),
                orphaned_transaction_recovery_duration: check_after.map(duration),
                ..Default::default()
            }),
            body: self.body.clone(),
        }
    }
}

pub(crate) fn resource(namespace: &str, name: &str) -> pb::Resource {
    pb::Resource {
        resource_namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

pub(crate) fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub(crate) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub(crate) fn from_duration(d: &prost_types::Duration) -> Duration {
    if d.seconds < 0 || d.nanos < 0 {
        return Duration::ZERO;
    }
    Duration::new(d.seconds as u64, d.nanos as u32)
}

fn from_timestamp(t: &prost_types::Timestamp) -> SystemTime {
    if t.seconds < 0 {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.clamp(0, 999_999_999) as u32)
}

fn md5_upper(body: &[u8]) -> String {
    hex::encode_upper(Md5::digest(body))
}

/// What a successful send returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    pub message_id: String,
    /// Set for half messages: what commit, rollback and checks refer to.
    pub transaction_id: String,
    pub queue_id: i32,
    /// Queue offset; 0 for messages not yet placed in a queue (half or
    /// delayed messages).
    pub offset: i64,
    /// Cancels a delayed message before it is due (empty for others).
    pub recall_handle: String,
}

/// A message handed to a consumer (or to a transaction checker).
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub topic: String,
    pub message_id: String,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub message_group: Option<String>,
    pub delivery_time: Option<SystemTime>,
    pub born_time: SystemTime,
    pub born_host: String,
    pub store_time: Option<SystemTime>,
    /// 1 on the first delivery.
    pub delivery_attempt: u32,
    pub queue_id: i32,
    pub queue_offset: Option<i64>,
    /// For a message served from a dead-letter topic: where it came from
    /// (original topic and message id).
    pub dead_letter_of: Option<(String, String)>,
    /// Decoded (decompressed) body.
    pub body: Bytes,
    pub(crate) receipt_handle: String,
    pub(crate) transaction_id: Option<String>,
}

impl ReceivedMessage {
    /// The opaque handle acks and invisibility changes name (it changes
    /// with every ChangeInvisibleDuration).
    pub fn receipt_handle(&self) -> &str {
        &self.receipt_handle
    }

    /// Reads a wire message: decompresses the body and checks its digest.
    /// A message whose body does not match its digest is an error: it must
    /// not reach application code.
    pub(crate) fn from_wire(m: pb::Message) -> Result<ReceivedMessage, ClientError> {
        let sp = m.system_properties.unwrap_or_default();
        let corrupt =
            |why: String| ClientError::Protocol(format!("message {}: {why}", sp.message_id));
        if let Some(d) = &sp.body_digest {
            let ok = match pb::DigestType::try_from(d.r#type) {
                Ok(pb::DigestType::Md5) => md5_upper(&m.body).eq_ignore_ascii_case(&d.checksum),
                Ok(pb::DigestType::Crc32) => {
                    format!("{:08X}", crc32fast::hash(&m.body)).eq_ignore_ascii_case(&d.checksum)
                        || crc32fast::hash(&m.body).to_string() == d.checksum
                }
                Ok(pb::DigestType::Sha1) => {
                    hex::encode(<sha1::Sha1 as sha1::Digest>::digest(&m.body))
                        .eq_ignore_ascii_case(&d.checksum)
                }
                _ => true,
            };
            if !ok {
                return Err(corrupt("body does not match its digest".into()));
            }
        }
        let body = if sp.body_encoding == pb::Encoding::Gzip as i32 {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&m.body[..])
                .take(MAX_INFLATED_BODY as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| corrupt(format!("gzip body: {e}")))?;
            if out.len() > MAX_INFLATED_BODY {
                return Err(corrupt(format!(
                    "gzip body inflates past {MAX_INFLATED_BODY} bytes"
                )));
            }
            Bytes::from(out)
        } else {
            m.body
        };
        Ok(ReceivedMessage {
            topic: m.topic.map(|t| t.name).unwrap_or_default(),
            message_id: sp.message_id,
            tag: sp.tag,
            keys: sp.keys,
            properties: m.user_properties.into_iter().collect(),
            message_group: sp.message_group,
            delivery_time: sp.delivery_timestamp.as_ref().map(from_timestamp),
            born_time: sp
                .born_timestamp
                .as_ref()
                .map_or(UNIX_EPOCH, from_timestamp),
            born_host: sp.born_host,
            store_time: sp.store_timestamp.as_ref().map(from_timestamp),
            delivery_attempt: sp.delivery_attempt.map_or(1, |a| a.max(1) as u32),
            queue_id: sp.queue_id,
            queue_offset: sp.queue_offset,
            dead_letter_of: sp.dead_letter_queue.map(|d| (d.topic, d.message_id)),
            body,
            receipt_handle: sp.receipt_handle.unwrap_or_default(),
            transaction_id: None,
        })
    }
}

/// A compressed body is not inflated past this: a decompression bomb gets
/// an error, not the process's memory.
pub const MAX_INFLATED_BODY: usize = 64 << 20;

/// Which messages of a topic a consumer wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterExpression {
    /// `*` for all, or tags joined by `||`.
    Tag(String),
    /// SQL92 over user properties (and `TAGS`).
    Sql(String),
}

impl FilterExpression {
    pub fn all() -> Self {
        FilterExpression::Tag("*".into())
    }

    pub fn tag(expression: impl Into<String>) -> Self {
        FilterExpression::Tag(expression.into())
    }

    pub fn sql(expression: impl Into<String>) -> Self {
        FilterExpression::Sql(expression.into())
    }

    pub(crate) fn to_wire(&self) -> pb::FilterExpression {
        let (t, e) = match self {
            FilterExpression::Tag(e) => (pb::FilterType::Tag, e),
            FilterExpression::Sql(e) => (pb::FilterType::Sql, e),
        };
        pb::FilterExpression {
            r#type: t as i32,
            expression: e.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn types_follow_group_and_delay() {
        let m = Message::new("t", "b");
        assert_eq!(m.message_type(false).unwrap(), pb::MessageType::Normal);
        let fifo = m.clone().with_message_group("g");
        assert_eq!(fifo.message_type(false).unwrap(), pb::MessageType::Fifo);
        let both = fifo.clone().with_delay(Duration::from_secs(1));
        assert!(both.message_type(false).is_err());
        assert_eq!(
            both.message_type(true).unwrap(),
            pb::MessageType::Transaction
        );
    }

    #[test]
    fn bad_messages_are_refused_before_sending() {
        assert!(Message::new("", "b").check(10).is_err());
        assert!(Message::new("t", "").check(10).is_err());
        assert!(Message::new("t", "0123456789x").check(10).is_err());
        assert!(Message::new("t", "b").with_tag("a|b").check(10).is_err());
        assert!(Message::new("t", "b").with_tag("a b").check(10).is_err());
        assert!(Message::new("t", "b").with_tag("ok").check(10).is_ok());
    }

    #[test]
    fn received_bodies_are_checked_and_inflated() {
        let body = b"hello".to_vec();
        let wire =
            Message::new("t", body.clone()).to_wire("", "01AB", pb::MessageType::Normal, 0, None);
        let got = ReceivedMessage::from_wire(wire.clone()).unwrap();
        assert_eq!(&got.body[..], b"hello");
        let mut bad = wire.clone();
        bad.body = Bytes::from_static(b"hellO");
        assert!(ReceivedMessage::from_wire(bad).is_err());

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&body).unwrap();
        let mut zipped = wire;
        zipped.body = Bytes::from(gz.finish().unwrap());
        let sp = zipped.system_properties.as_mut().unwrap();
        sp.body_encoding = pb::Encoding::Gzip as i32;
        sp.body_digest = Some(pb::Digest {
            r#type: pb::DigestType::Crc32 as i32,
            checksum: format!("{:08X}", crc32fast::hash(&zipped.body)),
        });
        assert_eq!(
            &ReceivedMessage::from_wire(zipped).unwrap().body[..],
            b"hello"
        );
    }
}
