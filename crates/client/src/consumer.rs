//! The calls both consumer kinds make: receive (long poll), ack, change
//! invisible duration, forward to the dead-letter queue.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::v2 as pb;
use pb::receive_message_response::Content;
use tracing::warn;

use crate::config::ClientConfig;
use crate::error::{check, ClientError, Result};
use crate::message::{duration, resource, FilterExpression, ReceivedMessage};
use crate::retry::RetryPolicy;
use crate::session::{ServerSettings, Session};

/// Most messages one receive may ask for.
pub const MAX_RECEIVE_BATCH: usize = 1024;

pub(crate) struct ReceiveCall<'a> {
    pub queue: &'a pb::MessageQueue,
    pub filter: &'a FilterExpression,
    pub batch: usize,
    pub invisible: Duration,
    pub long_poll: Duration,
    pub attempt_id: Option<String>,
}

/// One long poll. Nothing to deliver is an empty list, not an error.
/// Messages whose body fails its digest are left out (and logged): they
/// become visible again and end in the dead-letter queue, never in
/// application code.
pub(crate) async fn receive(
    session: &Session,
    group: &str,
    call: ReceiveCall<'_>,
) -> Result<Vec<ReceivedMessage>> {
    let ns = &session.config.namespace;
    let req = pb::ReceiveMessageRequest {
        group: Some(resource(ns, group)),
        message_queue: Some(call.queue.clone()),
        filter_expression: Some(call.filter.to_wire()),
        batch_size: call.batch.clamp(1, MAX_RECEIVE_BATCH) as i32,
        invisible_duration: Some(duration(call.invisible)),
        auto_renew: false,
        long_polling_timeout: Some(duration(call.long_poll)),
        attempt_id: call.attempt_id,
    };
    let deadline = call.long_poll + session.config.request_timeout;
    let mut stream = session
        .unary(deadline, |mut rpc| async move {
            rpc.receive_message(session.request(req, deadline)).await
        })
        .await?;
    let mut out = Vec::new();
    let read = async {
        while let Some(frame) = stream.message().await? {
            match frame.content {
                Some(Content::Status(s)) => {
                    if s.code == pb::Code::MessageNotFound as i32 {
                        continue;
                    }
                    check(Some(s))?;
                }
                Some(Content::Message(m)) => match ReceivedMessage::from_wire(m) {
                    Ok(m) => out.push(m),
                    Err(e) => warn!(error = %e, "received message left out"),
                },
                Some(Content::DeliveryTimestamp(_)) | None => {}
            }
        }
        Ok::<(), ClientError>(())
    };
    match tokio::time::timeout(deadline, read).await {
        Err(_) => Err(ClientError::Timeout(deadline)),
        Ok(r) => r.map(|()| out),
    }
}

pub(crate) async fn ack(session: &Session, group: &str, m: &ReceivedMessage) -> Result<()> {
    let ns = &session.config.namespace;
    let req = pb::AckMessageRequest {
        group: Some(resource(ns, group)),
        topic: Some(resource(ns, &m.topic)),
        entries: vec![pb::AckMessageEntry {
            message_id: m.message_id.clone(),
            receipt_handle: m.receipt_handle.clone(),
            lite_topic: None,
        }],
    };
    let deadline = session.config.request_timeout;
    let reply = session
        .unary(deadline, |mut rpc| async move {
            rpc.ack_message(session.request(req, deadline)).await
        })
        .await?;
    match reply.entries.into_iter().next() {
        Some(e) => check(e.status),
        None => {
            check(reply.status)?;
            Err(ClientError::Protocol(
                "ack answered without an entry".into(),
            ))
        }
    }
}

/// Most entries one AckMessage call carries, so a large settle is split
/// rather than sent as one oversized request.
pub const MAX_ACK_BATCH: usize = 1024;

/// Acks `messages` with one AckMessage call per topic (and per
/// [`MAX_ACK_BATCH`] entries): a consumer that settles a received batch
/// pays one round trip, not one per message. The first refused entry is
/// the error; entries before and after it in the same call may have been
/// settled, and acking a settled message again is harmless.
pub(crate) async fn ack_all(
    session: &Session,
    group: &str,
    messages: &[ReceivedMessage],
) -> Result<()> {
    let ns = &session.config.namespace;
    let mut by_topic: std::collections::BTreeMap<&str, Vec<&ReceivedMessage>> = Default::default();
    for m in messages {
        by_topic.entry(m.topic.as_str()).or_default().push(m);
    }
    for (topic, ms) in by_topic {
        for chunk in ms.chunks(MAX_ACK_BATCH) {
            let req = pb::AckMessageRequest {
                group: Some(resource(ns, group)),
                topic: Some(resource(ns, topic)),
                entries: chunk
                    .iter()
                    .map(|m| pb::AckMessageEntry {
                        message_id: m.message_id.clone(),
                        receipt_handle: m.receipt_handle.clone(),
                        lite_topic: None,
                    })
                    .collect(),
            };
            let deadline = session.config.request_timeout;
            let reply = session
                .unary(deadline, |mut rpc| async move {
                    rpc.ack_message(session.request(req, deadline)).await
                })
                .await?;
            if reply.entries.len() != chunk.len() {
                check(reply.status)?;
                return Err(ClientError::Protocol(format!(
                    "ack of {} messages answered with {} entries",
                    chunk.len(),
                    reply.entries.len()
                )));
            }
            for e in reply.entries {
                check(e.status)?;
            }
        }
    }
    Ok(())
}

/// Returns the new receipt handle (the old one is dead).
pub(crate) async fn change_invisible(
    session: &Session,
    group: &str,
    m: &ReceivedMessage,
    invisible: Duration,
) -> Result<String> {
    let ns = &session.config.namespace;
    let req = pb::ChangeInvisibleDurationRequest {
        group: Some(resource(ns, group)),
        topic: Some(resource(ns, &m.topic)),
        receipt_handle: m.receipt_handle.clone(),
        invisible_duration: Some(duration(invisible)),
        message_id: m.message_id.clone(),
        lite_topic: None,
        suspend: None,
    };
    let deadline = session.config.request_timeout;
    let reply = session
        .unary(deadline, |mut rpc| async move {
            rpc.change_invisible_duration(session.request(req, deadline))
                .await
        })
        .await?;
    check(reply.status)?;
    if reply.receipt_handle.is_empty() {
        return Err(ClientError::Protocol(
            "ChangeInvisibleDuration answered without a receipt handle".into(),
        ));
    }
    Ok(reply.receipt_handle)
}

pub(crate) async fn forward_to_dead_letter(
    session: &Session,
    group: &str,
    m: &ReceivedMessage,
    max_attempts: u32,
) -> Result<()> {
    let ns = &session.config.namespace;
    let req = pb::ForwardMessageToDeadLetterQueueRequest {
        group: Some(resource(ns, group)),
        topic: Some(resource(ns, &m.topic)),
        receipt_handle: m.receipt_handle.clone(),
        message_id: m.message_id.clone(),
        delivery_attempt: m.delivery_attempt as i32,
        max_delivery_attempts: max_attempts as i32,
        lite_topic: None,
    };
    let deadline = session.config.request_timeout;
    let reply = session
        .unary(deadline, |mut rpc| async move {
            rpc.forward_message_to_dead_letter_queue(session.request(req, deadline))
                .await
        })
        .await?;
    check(reply.status)
}

/// Starts a consumer's session: checks the group and subscriptions, then
/// announces them in the settings exchange, with RocketMQ's consumer
/// defaults until the broker's reply says otherwise.
pub(crate) async fn start_session(
    config: ClientConfig,
    client_type: pb::ClientType,
    group: &str,
    subs: &[(String, FilterExpression)],
    long_poll: Duration,
) -> Result<Arc<Session>> {
    if group.is_empty() {
        return Err(ClientError::Invalid {
            what: "consumer group",
            why: "empty".into(),
        });
    }
    if subs.is_empty() {
        return Err(ClientError::Invalid {
            what: "subscription",
            why: "subscribe to at least one topic".into(),
        });
    }
    let pub_sub = pb::settings::PubSub::Subscription(pb::Subscription {
        group: Some(resource(&config.namespace, group)),
        subscriptions: subs
            .iter()
            .map(|(t, f)| pb::SubscriptionEntry {
                topic: Some(resource(&config.namespace, t)),
                expression: Some(f.to_wire()),
            })
            .collect(),
        fifo: None,
        receive_batch_size: None,
        long_polling_timeout: Some(duration(long_poll)),
        ..Default::default()
    });
    let defaults = ServerSettings {
        retry: RetryPolicy::consumer_default(),
        max_body: 0,
        validate_message_type: false,
        fifo: false,
        receive_batch: 32,
        long_polling: long_poll,
    };
    Session::start(
        config,
        client_type,
        Some(group.to_string()),
        pub_sub,
        defaults,
        None,
    )
    .await
}
