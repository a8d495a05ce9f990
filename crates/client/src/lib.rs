//! `ferry-client`: an async Rust client for the Apache RocketMQ 5 gRPC
//! protocol (`apache.rocketmq.v2.MessagingService`).
//!
//! It speaks only that protocol — nothing Ferry-specific — so it works
//! against a Ferry broker and against an Apache RocketMQ 5 proxy alike.
//! Every call goes to the configured access point (the proxy deployment
//! model); routes and assignments are read to pick queues.
//!
//! - [`Producer`]: send one message or a batch; FIFO through a message
//!   group, delay through a delivery time; retries per the broker's policy.
//! - [`TransactionProducer`]: half messages with commit/rollback, and a
//!   [`TransactionChecker`] the broker asks when an outcome is missing.
//! - [`SimpleConsumer`]: receive, ack, change invisible duration.
//! - [`PushConsumer`]: a handler per message, bounded concurrency, retries
//!   with the group's backoff, FIFO order per message group, dead-letter
//!   forwarding when attempts run out.
//!
//! ```no_run
//! use std::time::Duration;
//! use ferry_client::{ClientConfig, FilterExpression, Message, Producer, SimpleConsumer};
//!
//! # async fn demo() -> Result<(), ferry_client::ClientError> {
//! let config = ClientConfig::new("127.0.0.1:8081");
//! let producer = Producer::builder(config.clone()).topics(["orders"]).start().await?;
//! let receipt = producer
//!     .send(Message::new("orders", "order 42 created").with_tag("created").with_key("order-42"))
//!     .await?;
//! println!("stored {}", receipt.message_id);
//!
//! let consumer = SimpleConsumer::builder(config, "stock")
//!     .subscribe("orders", FilterExpression::all())
//!     .start()
//!     .await?;
//! for m in consumer.receive(16, Duration::from_secs(30)).await? {
//!     println!("{} {:?}", m.message_id, m.body);
//!     consumer.ack(&m).await?;
//! }
//! producer.shutdown().await;
//! consumer.shutdown().await;
//! # Ok(()) }
//! ```

pub mod coalesce;
mod config;
mod consumer;
mod error;
mod headers;
mod id;
mod message;
mod producer;
mod push_consumer;
mod retry;
mod route;
mod session;
mod simple_consumer;
mod transaction;

pub use config::{ClientConfig, Credentials, DEFAULT_REQUEST_TIMEOUT};
pub use consumer::{MAX_ACK_BATCH, MAX_RECEIVE_BATCH};
pub use error::{ClientError, Result};
pub use ferry_proto::v2::Code;
pub use id::new_message_id;
pub use message::{
    FilterExpression, Message, ReceivedMessage, SendReceipt, MAX_INFLATED_BODY, MAX_MESSAGE_ID_LEN,
};
pub use producer::{Producer, ProducerBuilder, MAX_BATCH};
pub use push_consumer::{ConsumeResult, PushConsumer, PushConsumerBuilder};
pub use retry::{Backoff, RetryPolicy};
pub use simple_consumer::{SimpleConsumer, SimpleConsumerBuilder};
pub use transaction::{
    CheckWith, HalfId, Transaction, TransactionChecker, TransactionProducer,
    TransactionProducerBuilder, TransactionResolution, MAX_HALVES_PER_TRANSACTION,
};
