//! Transactional messages: a half message is stored but not delivered
//! until the producer commits it; a rolled-back one is never delivered. If
//! the outcome never arrives, the broker asks a producer of the topic —
//! its [`TransactionChecker`] — and the answer goes back as an
//! EndTransaction with source SERVER_CHECK.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::v2 as pb;
use tracing::warn;

use crate::coalesce;
use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::message::{Message, ReceivedMessage, SendReceipt};
use crate::producer::{Producer, ProducerBuilder, ProducerInner};

/// A transaction's outcome as the checker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionResolution {
    Commit,
    Rollback,
    /// Not known yet (the local transaction may still be running): the
    /// broker asks again later.
    Unknown,
}

/// Answers the broker's "what became of this transaction?". Look the
/// outcome up in the same store the local transaction wrote to (the
/// message's keys or properties usually carry the business id).
pub trait TransactionChecker: Send + Sync + 'static {
    fn check(
        &self,
        message: &ReceivedMessage,
    ) -> impl Future<Output = TransactionResolution> + Send;
}

/// A checker from a plain closure, for checks that need no await.
pub struct CheckWith<F>(pub F);

impl<F> TransactionChecker for CheckWith<F>
where
    F: Fn(&ReceivedMessage) -> TransactionResolution + Send + Sync + 'static,
{
    async fn check(&self, message: &ReceivedMessage) -> TransactionResolution {
        (self.0)(message)
    }
}

type CheckFuture<'a> = Pin<Box<dyn Future<Output = TransactionResolution> + Send + 'a>>;

/// Object-safe face of [`TransactionChecker`], so a session can hold any.
pub(crate) trait DynChecker: Send + Sync {
    fn check_dyn<'a>(&'a self, message: &'a ReceivedMessage) -> CheckFuture<'a>;
}

impl<T: TransactionChecker> DynChecker for T {
    fn check_dyn<'a>(&'a self, message: &'a ReceivedMessage) -> CheckFuture<'a> {
        Box::pin(self.check(message))
    }
}

/// Half messages one transaction may hold.
pub const MAX_HALVES_PER_TRANSACTION: usize = 64;
/// Tries of one EndTransaction before leaving the outcome to check-back.
pub const END_ATTEMPTS: u32 = 3;
/// Pause after the n-th failed EndTransaction: n times this.
pub(crate) const END_PAUSE: Duration = Duration::from_millis(50);

/// A producer of transactional (and plain) messages with a checker: a
/// [`Producer`] whose session also answers check-backs.
pub struct TransactionProducer {
    producer: Producer,
}

pub struct TransactionProducerBuilder<C> {
    producer: ProducerBuilder,
    checker: C,
}

impl<C: TransactionChecker> TransactionProducerBuilder<C> {
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.producer = self.producer.topics(topics);
        self
    }

    pub async fn start(self) -> Result<TransactionProducer> {
        Ok(TransactionProducer {
            producer: Producer {
                inner: self
                    .producer
                    .start_with_checker(Arc::new(self.checker))
                    .await?,
            },
        })
    }
}

impl TransactionProducer {
    pub fn builder<C: TransactionChecker>(
        config: ClientConfig,
        checker: C,
    ) -> TransactionProducerBuilder<C> {
        TransactionProducerBuilder {
            producer: Producer::builder(config),
            checker,
        }
    }

    /// Starts a transaction: send half messages with it, then commit or
    /// roll back. Dropped without either, its halves wait for check-back.
    pub fn begin(&self) -> Transaction {
        Transaction {
            producer: self.producer.inner.clone(),
            halves: Vec::new(),
            check_after: None,
        }
    }

    /// A transaction whose halves an earlier [`Transaction`] sent — perhaps
    /// by a process that has since died — so that this producer can commit
    /// or roll it back without waiting for a check-back. Ending it again
    /// with the same outcome is harmless (the broker answers a repeat OK);
    /// a different outcome than the one already recorded is refused.
    pub fn resume(&self, halves: Vec<HalfId>) -> Transaction {
        Transaction {
            producer: self.producer.inner.clone(),
            halves,
            check_after: None,
        }
    }

    /// The plain producer underneath: non-transactional sends, batches,
    /// recall, client id, shutdown.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// A plain (non-transactional) send through the same client.
    pub async fn send(&self, message: Message) -> Result<SendReceipt> {
        self.producer.send(message).await
    }

    pub fn client_id(&self) -> &str {
        self.producer.client_id()
    }

    /// Whether the broker serves Ferry's extension calls (`Some(true)`: it
    /// is Ferry, so concurrent transactions share calls), once the first
    /// ended transaction has told; `None` before that.
    pub fn broker_extensions(&self) -> Option<bool> {
        self.producer.inner.coalescer.broker_extensions()
    }

    pub async fn shutdown(&self) {
        self.producer.shutdown().await;
    }
}

/// What names one half message to the broker: enough to end its
/// transaction later, e.g. from a producer restarted after a crash that
/// kept these next to its local transaction (see
/// [`TransactionProducer::resume`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HalfId {
    pub topic: String,
    pub message_id: String,
    pub transaction_id: String,
}

/// One transaction's half messages.
pub struct Transaction {
    producer: Arc<ProducerInner>,
    halves: Vec<HalfId>,
    check_after: Option<Duration>,
}

impl Transaction {
    /// Asks the broker to wait this long before the first check-back of
    /// the halves sent from now on (the broker clamps it to its bounds).
    pub fn with_check_after(mut self, delay: Duration) -> Self {
        self.check_after = Some(delay);
        self
    }

    /// Sends a half message. A message group (FIFO) or a delivery time
    /// (delay) is kept: it applies once the transaction commits (Ferry
    /// supports both; other brokers may refuse them). Halves sent at the
    /// same time by concurrent transactions share calls (see
    /// [`crate::coalesce`]); each gets its own transaction id.
    pub async fn send(&mut self, message: Message) -> Result<SendReceipt> {
        if self.halves.len() >= MAX_HALVES_PER_TRANSACTION {
            return Err(ClientError::Invalid {
                what: "transaction",
                why: format!("at most {MAX_HALVES_PER_TRANSACTION} messages per transaction"),
            });
        }
        let topic = message.topic.clone();
        let kind = coalesce::Kind::Half {
            check_after: self.check_after,
        };
        let receipt = self
            .producer
            .coalescer
            .send(&self.producer, message, kind)
            .await?;
        if receipt.transaction_id.is_empty() {
            return Err(ClientError::Protocol(
                "a half message was stored without a transaction id".into(),
            ));
        }
        self.halves.push(HalfId {
            topic,
            message_id: receipt.message_id.clone(),
            transaction_id: receipt.transaction_id.clone(),
        });
        Ok(receipt)
    }

    /// The halves sent so far, as [`TransactionProducer::resume`] takes
    /// them back.
    pub fn halves(&self) -> &[HalfId] {
        &self.halves
    }

    /// Transaction ids of the halves sent so far.
    pub fn transaction_ids(&self) -> Vec<String> {
        self.halves
            .iter()
            .map(|h| h.transaction_id.clone())
            .collect()
    }

    /// Makes every half deliverable.
    pub async fn commit(self) -> Result<()> {
        self.end(pb::TransactionResolution::Commit).await
    }

    /// Discards every half: none is ever delivered.
    pub async fn rollback(self) -> Result<()> {
        self.end(pb::TransactionResolution::Rollback).await
    }

    async fn end(self, resolution: pb::TransactionResolution) -> Result<()> {
        let producer = &self.producer;
        let mut first_error = None;
        for h in &self.halves {
            let req = producer.session.end_request(
                &h.topic,
                &h.message_id,
                &h.transaction_id,
                resolution,
                pb::TransactionSource::SourceClient,
            );
            if let Err(e) = producer.coalescer.end(producer, req).await {
                warn!(transaction = %h.transaction_id, error = %e, "end transaction failed; the broker will check back");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl ReceivedMessage {
    /// The transaction a check-back asks about.
    pub fn transaction_id(&self) -> Option<&str> {
        self.transaction_id.as_deref()
    }
}
