//! The records themselves, as plain data.

use bytes::Bytes;

/// Discriminant stored in byte 8 of every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Message = 1,
    Deliver = 2,
    Ack = 3,
    Renew = 4,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Message),
            2 => Some(Kind::Deliver),
            3 => Some(Kind::Ack),
            4 => Some(Kind::Renew),
            _ => None,
        }
    }
}

/// One record: header fields plus its payload. The log offset is not part of
/// the value; it is assigned by the log at append time and checked on decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Replication epoch. Always 0 until replication exists; reserved now so
    /// the format never has to change for it.
    pub term: u64,
    /// Broker time when the record was made, ms since the Unix epoch.
    pub timestamp_ms: i64,
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Message(MessageRecord),
    Deliver(DeliverRecord),
    Ack(AckRecord),
    Renew(RenewRecord),
}

impl Payload {
    pub fn kind(&self) -> Kind {
        match self {
            Payload::Message(_) => Kind::Message,
            Payload::Deliver(_) => Kind::Deliver,
            Payload::Ack(_) => Kind::Ack,
            Payload::Renew(_) => Kind::Renew,
        }
    }
}

/// A message as stored: everything a consumer is later shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub topic: String,
    pub queue_id: u32,
    /// Position in its queue; recorded so recovery can tell a gap (a record
    /// lost to damage) from the next message.
    pub queue_offset: u64,
    pub message_id: String,
    /// RocketMQ `MessageType` number (NORMAL 1, FIFO 2, DELAY 3, TRANSACTION 4).
    pub message_type: u8,
    /// RocketMQ `Encoding` number of the body as the producer sent it.
    pub body_encoding: u8,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub message_group: Option<String>,
    pub delivery_timestamp_ms: Option<i64>,
    pub born_timestamp_ms: i64,
    pub born_host: String,
    pub properties: Vec<(String, String)>,
    pub body: Bytes,
}

/// A consumer group was handed a message: it is invisible to the group until
/// `visible_at_ms`, and `handle` is the only receipt that may settle it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverRecord {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    /// 1 on the first delivery.
    pub attempt: u32,
    pub handle: u64,
    pub visible_at_ms: i64,
}

/// A consumer group acknowledged a message with the receipt `handle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub handle: u64,
}

/// The invisibility of an in-flight message changed (nack, extension): a new
/// receipt `handle` replaces the old one, the attempt count is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewRecord {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub handle: u64,
    pub visible_at_ms: i64,
}
