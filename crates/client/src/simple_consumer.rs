//! A consumer that asks for messages when it wants them and settles each
//! itself: receive, then ack or change its invisible duration.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::v2 as pb;

use crate::config::ClientConfig;
use crate::consumer::{self, ReceiveCall};
use crate::error::{ClientError, Result};
use crate::message::{FilterExpression, ReceivedMessage};
use crate::route::Routes;
use crate::session::Session;

/// Default long-polling time of a receive.
pub const DEFAULT_AWAIT: Duration = Duration::from_secs(20);

pub struct SimpleConsumer {
    session: Arc<Session>,
    group: String,
    subscriptions: Vec<(String, FilterExpression)>,
    routes: Routes,
    next: AtomicUsize,
    await_duration: Duration,
}

pub struct SimpleConsumerBuilder {
    config: ClientConfig,
    group: String,
    subscriptions: Vec<(String, FilterExpression)>,
    await_duration: Duration,
}

impl SimpleConsumerBuilder {
    pub fn subscribe(mut self, topic: impl Into<String>, filter: FilterExpression) -> Self {
        self.subscriptions.push((topic.into(), filter));
        self
    }

    /// How long one receive waits for messages (long polling).
    pub fn await_duration(mut self, d: Duration) -> Self {
        self.await_duration = d;
        self
    }

    pub async fn start(self) -> Result<SimpleConsumer> {
        let session = consumer::start_session(
            self.config,
            pb::ClientType::SimpleConsumer,
            &self.group,
            &self.subscriptions,
            self.await_duration,
        )
        .await?;
        let c = SimpleConsumer {
            session,
            group: self.group,
            subscriptions: self.subscriptions,
            routes: Routes::default(),
            next: AtomicUsize::new(0),
            await_duration: self.await_duration,
        };
        for (t, _) in &c.subscriptions {
            if let Err(e) = c.routes.get(&c.session, t).await {
                c.session.shutdown().await;
                return Err(e);
            }
        }
        Ok(c)
    }
}

impl SimpleConsumer {
    pub fn builder(config: ClientConfig, group: impl Into<String>) -> SimpleConsumerBuilder {
        SimpleConsumerBuilder {
            config,
            group: group.into(),
            subscriptions: Vec::new(),
            await_duration: DEFAULT_AWAIT,
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Up to `max` messages, each invisible to others for `invisible`
    /// unless acked; waits up to the await duration when there are none.
    /// Subscriptions and queues are taken in turn.
    pub async fn receive(&self, max: usize, invisible: Duration) -> Result<Vec<ReceivedMessage>> {
        if max == 0 || max > consumer::MAX_RECEIVE_BATCH {
            return Err(ClientError::Invalid {
                what: "receive",
                why: format!(
                    "ask for 1 to {} messages, not {max}",
                    consumer::MAX_RECEIVE_BATCH
                ),
            });
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let (topic, filter) = &self.subscriptions[turn % self.subscriptions.len()];
        let route = self.routes.get(&self.session, topic).await?;
        if route.readable.is_empty() {
            return Err(ClientError::Invalid {
                what: "topic",
                why: format!("topic {topic} has no readable queue"),
            });
        }
        let queue = &route.readable[turn / self.subscriptions.len() % route.readable.len()];
        consumer::receive(
            &self.session,
            &self.group,
            ReceiveCall {
                queue,
                filter,
                batch: max,
                invisible,
                long_poll: self.await_duration,
                attempt_id: None,
            },
        )
        .await
    }

    /// Settles a message: it is not delivered to this group again.
    pub async fn ack(&self, message: &ReceivedMessage) -> Result<()> {
        consumer::ack(&self.session, &self.group, message).await
    }

    /// Settles many messages with one AckMessage call per topic instead of
    /// one per message. The first refused entry is the error (see
    /// [`MAX_ACK_BATCH`](crate::MAX_ACK_BATCH) for how large sets are split).
    pub async fn ack_all(&self, messages: &[ReceivedMessage]) -> Result<()> {
        consumer::ack_all(&self.session, &self.group, messages).await
    }

    /// Makes the message visible again after `invisible` (0: now — a
    /// nack), and gives it the new receipt handle this returns.
    pub async fn change_invisible_duration(
        &self,
        message: &mut ReceivedMessage,
        invisible: Duration,
    ) -> Result<()> {
        message.receipt_handle =
            consumer::change_invisible(&self.session, &self.group, message, invisible).await?;
        Ok(())
    }

    pub fn client_id(&self) -> &str {
        &self.session.client_id
    }

    pub async fn shutdown(&self) {
        self.session.shutdown().await;
    }
}

impl Drop for SimpleConsumer {
    fn drop(&mut self) {
        self.session.stop_now();
    }
}
