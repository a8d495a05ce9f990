//! The records themselves, as plain data.

use bytes::Bytes;

/// Discriminant stored in byte 8 of every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Message = 1,
    /// A delivery as written before records named the consumer client:
    /// still read (the client is then unknown), never written.
    Deliver = 2,
    Ack = 3,
    Renew = 4,
    TxEnd = 5,
    TxCheck = 6,
    Fire = 7,
    DeadLetter = 8,
    Recall = 9,
    Redrive = 10,
    TopicDelete = 11,
    /// A delivery naming the consumer client it went to (what `Deliver`
    /// holds, then the client id).
    DeliverTo = 12,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Message),
            2 => Some(Kind::Deliver),
            3 => Some(Kind::Ack),
            4 => Some(Kind::Renew),
            5 => Some(Kind::TxEnd),
            6 => Some(Kind::TxCheck),
            7 => Some(Kind::Fire),
            8 => Some(Kind::DeadLetter),
            9 => Some(Kind::Recall),
            10 => Some(Kind::Redrive),
            11 => Some(Kind::TopicDelete),
            12 => Some(Kind::DeliverTo),
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
    TxEnd(TxEndRecord),
    TxCheck(TxCheckRecord),
    Fire(FireRecord),
    DeadLetter(DeadLetterRecord),
    Recall(RecallRecord),
    Redrive(RedriveRecord),
    TopicDelete(TopicDeleteRecord),
}

impl Payload {
    pub fn kind(&self) -> Kind {
        match self {
            Payload::Message(_) => Kind::Message,
            Payload::Deliver(d) if d.client.is_none() => Kind::Deliver,
            Payload::Deliver(_) => Kind::DeliverTo,
            Payload::Ack(_) => Kind::Ack,
            Payload::Renew(_) => Kind::Renew,
            Payload::TxEnd(_) => Kind::TxEnd,
            Payload::TxCheck(_) => Kind::TxCheck,
            Payload::Fire(_) => Kind::Fire,
            Payload::DeadLetter(_) => Kind::DeadLetter,
            Payload::Recall(_) => Kind::Recall,
            Payload::Redrive(_) => Kind::Redrive,
            Payload::TopicDelete(_) => Kind::TopicDelete,
        }
    }
}

/// A message as stored: everything a consumer is later shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub topic: String,
    pub queue_id: u32,
    /// Position in its queue; recorded so recovery can tell a gap (a record
    /// lost to damage) from the next message. Zero and meaningless for a
    /// message that is not indexed on arrival (a half message, or one whose
    /// delivery time lies ahead): its place is fixed later by the
    /// [`TxEndRecord`] or [`FireRecord`] that indexes it.
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
    /// Half messages only: how long after storing the broker should first
    /// ask a producer about the transaction, as the producer requested
    /// (already capped). `None` means the broker's default.
    pub check_after_ms: Option<i64>,
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
    /// The group's cursor on the queue once this delivery is made: every
    /// lower offset is settled or in flight. Recorded because the receive
    /// that made it may have passed over messages without a record of their
    /// own (filtered out), and must not pass over any a FIFO group still
    /// holds back; replay restores exactly this.
    pub cursor: u64,
    /// The consumer client's id (`x-mq-client-id`, at most
    /// [`MAX_CLIENT_ID_BYTES`]). `None` only in records written before
    /// deliveries named their client ([`Kind::Deliver`]); kept as `None` so
    /// such a record re-encodes to exactly its bytes.
    pub client: Option<String>,
}

/// Longest consumer client id a delivery record holds.
pub const MAX_CLIENT_ID_BYTES: usize = 256;

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

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TxOutcome {
    Commit = 1,
    Rollback = 2,
    /// The broker gave up: no answer after the last check-back, or the half
    /// message's segment was about to be deleted. Never delivered.
    Discard = 3,
}

impl TxOutcome {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Commit),
            2 => Some(Self::Rollback),
            3 => Some(Self::Discard),
            _ => None,
        }
    }
}

/// Who decided a transaction's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TxSource {
    /// The producer, on its own (EndTransaction, source CLIENT).
    Client = 1,
    /// The producer, answering a check-back (source SERVER_CHECK).
    ServerCheck = 2,
    /// The broker, after the last check went unanswered.
    CheckLimit = 3,
}

impl TxSource {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Client),
            2 => Some(Self::ServerCheck),
            3 => Some(Self::CheckLimit),
            _ => None,
        }
    }
}

/// The final outcome of the transaction whose half message lies at
/// `half_offset`. A commit indexes the half record itself (no copy): at
/// `queue_offset` of its queue, or — when `queue_offset` is `None` — later,
/// by a [`FireRecord`], because its delivery time still lay ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxEndRecord {
    pub half_offset: u64,
    pub topic: String,
    pub message_id: String,
    pub outcome: TxOutcome,
    pub source: TxSource,
    pub queue_id: u32,
    pub queue_offset: Option<u64>,
    /// Why, in words, for an operator reading the pending/discarded list.
    pub reason: String,
}

/// The broker asked a producer about the transaction at `half_offset`; this
/// was check number `checks`, and the next one is due at `next_check_ms`.
/// Recorded so check counts survive a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxCheckRecord {
    pub half_offset: u64,
    pub checks: u32,
    pub next_check_ms: i64,
}

/// A message whose delivery time came (a delayed message, or a committed
/// transactional one with a delivery time) is indexed at `queue_offset`;
/// the index points at its original record at `message_offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FireRecord {
    pub message_offset: u64,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
}

/// A consumer group gave up on a message (its last attempt failed, or the
/// client forwarded it): it is settled for the group and indexed at
/// `dlq_queue_offset` of the group's dead-letter topic, pointing at the
/// original record (`message_offset`, `message_len`) — no copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub message_offset: u64,
    pub message_len: u32,
    /// Deliveries the group had made.
    pub attempts: u32,
    pub dlq_queue_offset: u64,
}

/// The producer recalled the delayed message at `message_offset` before its
/// delivery time: its timer is cancelled and it is never delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallRecord {
    pub message_offset: u64,
    pub topic: String,
    pub message_id: String,
}

/// An operator sent the dead letter at `dlq_queue_offset` of `%DLQ%<group>`
/// back: the message at `queue_offset` of its original queue is due for
/// `group` again at once, its attempt count starting over. Only that group
/// sees it again; the dead-letter entry stays as history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveRecord {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub dlq_queue_offset: u64,
    /// The handle number the message is in flight under until the next
    /// receive hands it out (it is visible at once, so no consumer holds it).
    pub handle: u64,
}

/// An operator deleted `topic`: its queues, every group's progress on it,
/// its pending timers and half messages are gone (never delivered), and so
/// are the dead-letter origins when it is a `%DLQ%<group>` topic. A record,
/// not a metadata edit, so replay removes it at the same point in history
/// the live broker did: records after it with the same name re-create the
/// topic fresh, queue offsets starting at 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDeleteRecord {
    pub topic: String,
}
