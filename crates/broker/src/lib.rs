//! The broker core: what Ferry decides, with no I/O.
//!
//! The core holds topics with their queues (the consume-queue index: for each
//! queue offset, where the message lies in the commit log) and, per consumer
//! group and queue, what is in flight and what is done. It never reads a file,
//! a socket or the system clock: callers pass the time in, and every state
//! change goes through [`Broker::apply`] with a commit-log record. The live
//! path (decide → append record → apply) and crash recovery (replay records →
//! apply) therefore build the very same state.
//!
//! Modules: [`config`] (limits and defaults), [`error`] (typed failures),
//! [`validate`] (message and name rules),
//! [`handle`] (receipt handles), [`topic`] (queues and their index),
//! [`message_type`] (the message types a topic accepts),
//! [`message_index`] (messages by id and key, for lookups),
//! [`group`] (consumer-group progress), [`policy`] (per-group attempts,
//! backoff and FIFO), [`transaction`] (half messages,
//! check-back schedule, outcomes), [`timer`] (messages waiting for their
//! delivery time), [`core`] (the state machine).

pub mod config;
pub mod core;
pub mod error;
pub mod group;
pub mod handle;
pub mod message_index;
pub mod message_type;
pub mod policy;
pub mod timer;
pub mod topic;
pub mod transaction;
pub mod validate;

pub use crate::config::{CoreConfig, Limits, TransactionConfig};
pub use crate::core::{
    dlq_topic, placement, recall_handle, Broker, CheckOrder, CheckPlan, DeadLetterOrigin, Delivery,
    DeliveryState, EndDecision, GroupDelivery, GroupQueueStats, GroupView, Incoming, MessageKind,
    MessageStatus, MessageTypes, Placement, PropertyReader, ReceivePlan, ReceiveRequest,
    RetentionLoss, TopicStats, TxState,
};
pub use crate::error::BrokerError;
pub use crate::group::Scan;
pub use crate::message_index::Candidates;
pub use crate::policy::GroupPolicy;
pub use crate::topic::TopicConfig;
pub use ferry_filter::Filter;
