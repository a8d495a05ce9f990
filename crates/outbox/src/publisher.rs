//! Where the relay sends rows: Ferry through the Rust client, or anything
//! else behind the [`Publisher`] trait.

use std::future::Future;
use std::sync::Arc;

use ferry_client::{ClientError, Producer};
use thiserror::Error;

use crate::message::PendingMessage;

/// A failed publish, and whether trying again could help.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct PublishError {
    pub retryable: bool,
    pub message: String,
}

impl PublishError {
    pub fn retryable(message: impl Into<String>) -> Self {
        PublishError {
            retryable: true,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        PublishError {
            retryable: false,
            message: message.into(),
        }
    }
}

/// A sink for outbox rows.
///
/// A batch holds rows of one topic, one message group and one kind (plain
/// or delayed), in commit order within their ordering key. `Ok` means
/// every row of the batch is durably accepted; on `Err` the whole batch is
/// tried again later, so a sink that is not all-or-nothing may see some
/// rows twice (the inbox drops them: the message id stays the same).
pub trait Publisher: Send + Sync + 'static {
    /// The most rows one `publish` call takes.
    fn max_batch(&self) -> usize;

    fn publish(
        &self,
        batch: &[PendingMessage],
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// A shared publisher publishes like the one it shares (one producer
/// session for several relays, say).
impl<P: Publisher> Publisher for Arc<P> {
    fn max_batch(&self) -> usize {
        (**self).max_batch()
    }

    fn publish(
        &self,
        batch: &[PendingMessage],
    ) -> impl Future<Output = Result<(), PublishError>> + Send {
        (**self).publish(batch)
    }
}

/// Publishes to Ferry (or any RocketMQ 5 proxy) with a [`Producer`]. A
/// batch goes as one SendMessage call, stored all or nothing on Ferry.
pub struct FerryPublisher {
    producer: Arc<Producer>,
}

impl FerryPublisher {
    pub fn new(producer: Producer) -> Self {
        FerryPublisher {
            producer: Arc::new(producer),
        }
    }

    /// The producer, shared: shut it down once the relay has stopped.
    pub fn producer(&self) -> &Arc<Producer> {
        &self.producer
    }
}

impl Publisher for FerryPublisher {
    fn max_batch(&self) -> usize {
        // Bigger batches save calls but make every failure cost more.
        64.min(ferry_client::MAX_BATCH)
    }

    async fn publish(&self, batch: &[PendingMessage]) -> Result<(), PublishError> {
        // The stored message as it was enqueued, its id the row's.
        let messages: Vec<_> = batch.iter().map(|p| p.message.clone()).collect();
        // One SendMessage call for the batch, stored all or nothing.
        let sent = self.producer.send_batch(messages).await;
        sent.map(|_| ()).map_err(|e| PublishError {
            retryable: worth_retrying(&e),
            message: e.to_string(),
        })
    }
}

/// A relay outlives broker restarts and network trouble, so only a refusal
/// of the message itself is final: the client's check, or a broker status
/// the client would not retry (no such topic, message too large, ...).
fn worth_retrying(e: &ClientError) -> bool {
    match e {
        ClientError::Invalid { .. } => false,
        ClientError::Status { .. } => e.is_retryable(),
        ClientError::Rpc(_)
        | ClientError::Connect { .. }
        | ClientError::Timeout(_)
        | ClientError::Protocol(_)
        | ClientError::Shutdown => true,
    }
}
