//! Everything the core can refuse, as one enum. The server maps each variant
//! to a RocketMQ status code in exactly one place.

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BrokerError {
    #[error("illegal topic name {0:?}: use 1-127 characters of [a-zA-Z0-9_%|-]")]
    IllegalTopic(String),
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    #[error("illegal consumer group {0:?}: use 1-255 characters of [a-zA-Z0-9_%|-]")]
    IllegalGroup(String),
    #[error("illegal message id: {0}")]
    IllegalMessageId(String),
    #[error("illegal tag: {0}")]
    IllegalTag(String),
    #[error("illegal message key: {0}")]
    IllegalKey(String),
    #[error("illegal message group: {0}")]
    IllegalMessageGroup(String),
    #[error("illegal property key: {0}")]
    IllegalPropertyKey(String),
    #[error("message properties too large: {0}")]
    PropertiesTooLarge(String),
    #[error("message body of {size} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge { size: usize, max: usize },
    #[error("message body is empty")]
    BodyEmpty,
    #[error("message type conflicts with its properties: {0}")]
    TypeConflict(String),
    #[error("illegal delivery time: {0}")]
    IllegalDeliveryTime(String),
    #[error("{0} is not supported by this broker yet")]
    NotImplemented(&'static str),
    #[error("illegal filter expression: {0}")]
    IllegalFilter(String),
    #[error("illegal invisible duration: {0}")]
    IllegalInvisibleTime(String),
    #[error("illegal long-polling timeout: {0}")]
    IllegalPollingTime(String),
    #[error("invalid receipt handle: {0}")]
    InvalidReceiptHandle(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not stored: entry {index} of the batch was rejected ({reason}); a batch is stored whole or not at all")]
    BatchRejected { index: usize, reason: String },
    #[error("invalid transaction id: {0}")]
    InvalidTransactionId(String),
    #[error("transaction already ended: {0}")]
    TransactionConflict(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The topic does not accept this message's type; says which it does.
    #[error("{0}")]
    MessageTypeNotAccepted(String),
    #[error("consumer group {0:?} is unknown: it has no policy, no progress and no dead letters")]
    GroupNotFound(String),
    #[error("no message with id {0:?} is stored (never sent here, or removed by retention)")]
    MessageNotFound(String),
}
