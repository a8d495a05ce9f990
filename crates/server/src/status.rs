//! The one place where failures become RocketMQ status codes.

use ferry_broker::BrokerError;
use ferry_proto::v2::{Code, Status};
use ferry_store::StoreError;

use crate::engine::EngineError;

pub fn code_of(e: &EngineError) -> Code {
    match e {
        EngineError::Broker(b) => broker_code(b),
        EngineError::Store(s) => store_code(s),
        EngineError::Task(_) => Code::InternalError,
    }
}

fn broker_code(e: &BrokerError) -> Code {
    use BrokerError as B;
    match e {
        B::IllegalTopic(_) => Code::IllegalTopic,
        B::TopicNotFound(_) => Code::TopicNotFound,
        B::IllegalGroup(_) => Code::IllegalConsumerGroup,
        B::IllegalMessageId(_) => Code::IllegalMessageId,
        B::IllegalTag(_) => Code::IllegalMessageTag,
        B::IllegalKey(_) => Code::IllegalMessageKey,
        B::IllegalMessageGroup(_) => Code::IllegalMessageGroup,
        B::IllegalPropertyKey(_) => Code::IllegalMessagePropertyKey,
        B::PropertiesTooLarge(_) => Code::MessagePropertiesTooLarge,
        B::BodyTooLarge { .. } => Code::MessageBodyTooLarge,
        B::BodyEmpty => Code::MessageBodyEmpty,
        B::TypeConflict(_) => Code::MessagePropertyConflictWithType,
        B::IllegalDeliveryTime(_) => Code::IllegalDeliveryTime,
        B::NotImplemented(_) => Code::NotImplemented,
        B::IllegalFilter(_) => Code::IllegalFilterExpression,
        B::IllegalInvisibleTime(_) => Code::IllegalInvisibleTime,
        B::IllegalPollingTime(_) => Code::IllegalPollingTime,
        B::InvalidReceiptHandle(_) => Code::InvalidReceiptHandle,
        B::BadRequest(_) | B::BatchRejected { .. } => Code::BadRequest,
        B::InvalidTransactionId(_) => Code::InvalidTransactionId,
        B::TransactionConflict(_) => Code::PreconditionFailed,
        B::NotFound(_) => Code::NotFound,
        B::Conflict(_) => Code::PreconditionFailed,
        B::LimitReached(_) => Code::TooManyRequests,
        B::MessageTypeNotAccepted(_) => Code::MessagePropertyConflictWithType,
        B::GroupNotFound(_) => Code::ConsumerGroupNotFound,
        B::MessageNotFound(_) => Code::MessageNotFound,
    }
}

fn store_code(e: &StoreError) -> Code {
    match e {
        StoreError::RecordTooLarge { .. } => Code::PayloadTooLarge,
        StoreError::Corrupt { .. } => Code::MessageCorrupted,
        // `Failed`: the commit log refuses writes after a disk fault until
        // it heals; a server error (clients retry), its message says so.
        StoreError::Io { .. }
        | StoreError::Failed(_)
        | StoreError::Locked(_)
        | StoreError::OutOfRange { .. }
        | StoreError::ShuttingDown
        | StoreError::BadMeta { .. } => Code::InternalError,
    }
}

pub fn ok() -> Status {
    Status {
        code: Code::Ok as i32,
        message: "OK".into(),
    }
}

pub fn of(code: Code, message: impl Into<String>) -> Status {
    Status {
        code: code as i32,
        message: message.into(),
    }
}

pub fn from_error(e: &EngineError) -> Status {
    of(code_of(e), e.to_string())
}

/// The overall status of a batch: the entries' common status, or
/// MULTIPLE_RESULTS when they differ.
pub fn overall(entries: &[Status]) -> Status {
    match entries.first() {
        None => ok(),
        Some(first) if entries.iter().all(|s| s.code == first.code) => first.clone(),
        Some(_) => of(
            Code::MultipleResults,
            "entries have different results; see each entry",
        ),
    }
}
