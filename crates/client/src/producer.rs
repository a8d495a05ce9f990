//! Sending messages: one or a batch, with retries per the broker's policy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::v2 as pb;
use tracing::debug;

use crate::coalesce::{self, Coalescer};
use crate::config::ClientConfig;
use crate::error::{check, ClientError, Result};
use crate::id::new_message_id;
use crate::message::{resource, Message, SendReceipt};
use crate::retry::RetryPolicy;
use crate::route::Routes;
use crate::session::{ServerSettings, Session};
use crate::transaction::DynChecker;

/// Most messages in one batch (one SendMessage call).
pub const MAX_BATCH: usize = 1024;
/// The broker's default body limit, used until it says otherwise.
pub const DEFAULT_MAX_BODY: usize = 4 << 20;

/// Sends messages. Cheap to share behind an `Arc`; dropping it stops its
/// background tasks (call [`Producer::shutdown`] to also tell the broker).
pub struct Producer {
    pub(crate) inner: Arc<ProducerInner>,
}

pub(crate) struct ProducerInner {
    pub session: Arc<Session>,
    routes: Routes,
    next_queue: AtomicUsize,
    pub(crate) coalescer: Coalescer,
}

/// Configures a [`Producer`] (or a transaction producer).
pub struct ProducerBuilder {
    config: ClientConfig,
    topics: Vec<String>,
}

impl ProducerBuilder {
    /// Topics announced to the broker at start (routes are fetched for
    /// them up front, so a missing topic fails the start, not the first
    /// send). Sending to other topics works too.
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    pub async fn start(self) -> Result<Producer> {
        Ok(Producer {
            inner: ProducerInner::start(self.config, self.topics, None).await?,
        })
    }

    pub(crate) async fn start_with_checker(
        self,
        checker: Arc<dyn DynChecker>,
    ) -> Result<Arc<ProducerInner>> {
        ProducerInner::start(self.config, self.topics, Some(checker)).await
    }
}

impl ProducerInner {
    async fn start(
        config: ClientConfig,
        topics: Vec<String>,
        checker: Option<Arc<dyn DynChecker>>,
    ) -> Result<Arc<ProducerInner>> {
        let ns = config.namespace.clone();
        let pub_sub = pb::settings::PubSub::Publishing(pb::Publishing {
            topics: topics.iter().map(|t| resource(&ns, t)).collect(),
            max_body_size: 0,
            validate_message_type: true,
        });
        let defaults = ServerSettings {
            retry: RetryPolicy::producer_default(),
            max_body: DEFAULT_MAX_BODY,
            validate_message_type: true,
            fifo: false,
            receive_batch: 32,
            long_polling: Duration::from_secs(20),
        };
        let session = Session::start(
            config,
            pb::ClientType::Producer,
            None,
            pub_sub,
            defaults,
            checker,
        )
        .await?;
        let inner = Arc::new(ProducerInner {
            session,
            routes: Routes::default(),
            next_queue: AtomicUsize::new(0),
            coalescer: Coalescer::default(),
        });
        for t in &topics {
            if let Err(e) = inner.routes.get(&inner.session, t).await {
                inner.session.shutdown().await;
                return Err(e);
            }
        }
        Ok(inner)
    }

    /// Sends `messages` (one topic) as one batch. Transactional sends are
    /// tried once: a retried half message would be a second transaction.
    pub async fn send(
        &self,
        messages: &[Message],
        transactional: bool,
        check_after: Option<Duration>,
    ) -> Result<Vec<SendReceipt>> {
        let kind = self.check_batch(messages, transactional)?;
        self.send_checked(messages, kind, transactional, check_after)
            .await
    }

    /// Refuses, before anything is sent, a batch the broker would refuse
    /// (or that could not be one call); answers the batch's message type.
    pub(crate) fn check_batch(
        &self,
        messages: &[Message],
        transactional: bool,
    ) -> Result<pb::MessageType> {
        let session = &self.session;
        session.ensure_running()?;
        let invalid = |why: String| ClientError::Invalid { what: "batch", why };
        let first = messages
            .first()
            .ok_or_else(|| invalid("no messages".into()))?;
        if messages.len() > MAX_BATCH {
            return Err(invalid(format!(
                "{} messages; at most {MAX_BATCH} per batch",
                messages.len()
            )));
        }
        let settings = session.server();
        let kind = first.message_type(transactional)?;
        for m in messages {
            m.check(settings.max_body)?;
            if m.topic != first.topic {
                return Err(invalid(format!(
                    "one topic per batch: {} and {}",
                    first.topic, m.topic
                )));
            }
            if m.message_group != first.message_group {
                return Err(invalid("one message group per batch".into()));
            }
            if m.message_type(transactional)? != kind {
                return Err(invalid("one message type per batch".into()));
            }
        }
        Ok(kind)
    }

    /// Sends a batch that passed [`ProducerInner::check_batch`] (whose
    /// answer `kind` is).
    pub(crate) async fn send_checked(
        &self,
        messages: &[Message],
        kind: pb::MessageType,
        transactional: bool,
        check_after: Option<Duration>,
    ) -> Result<Vec<SendReceipt>> {
        let session = &self.session;
        let settings = session.server();
        let first = messages.first().expect("a checked batch is not empty");
        let route = self.routes.get(session, &first.topic).await?;
        if route.writable.is_empty() {
            return Err(ClientError::Invalid {
                what: "topic",
                why: format!("topic {} has no writable queue", first.topic),
            });
        }
        if settings.validate_message_type && !route.accepts(kind) {
            return Err(ClientError::Invalid {
                what: "message",
                why: format!(
                    "topic {} does not accept {} messages",
                    first.topic,
                    kind.as_str_name()
                ),
            });
        }
        let ids: Vec<String> = messages
            .iter()
            .map(|m| m.message_id.clone().unwrap_or_else(new_message_id))
            .collect();
        let attempts = if transactional {
            1
        } else {
            settings.retry.max_attempts.max(1)
        };
        let n = route.writable.len();
        let start = match &first.message_group {
            // One group, one queue: its order is that queue's order.
            Some(g) => crc32fast::hash(g.as_bytes()) as usize,
            None => self.next_queue.fetch_add(1, Ordering::Relaxed),
        };
        let mut attempt = 1;
        loop {
            let queue = &route.writable[if first.message_group.is_some() {
                start % n
            } else {
                (start + attempt as usize - 1) % n
            }];
            let wire = messages
                .iter()
                .zip(&ids)
                .map(|(m, id)| {
                    m.to_wire(&session.config.namespace, id, kind, queue.id, check_after)
                })
                .collect();
            match self.send_once(wire, queue.id).await {
                Ok(r) => return Ok(r),
                Err(e) if e.is_retryable() && attempt < attempts => {
                    let wait = settings.retry.delay_after(attempt);
                    debug!(attempt, error = %e, ?wait, "send failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One message as a batch of one.
    pub async fn send_one(
        &self,
        message: &Message,
        transactional: bool,
        check_after: Option<Duration>,
    ) -> Result<SendReceipt> {
        self.send(std::slice::from_ref(message), transactional, check_after)
            .await?
            .pop()
            .ok_or_else(|| ClientError::Protocol("no result entry".into()))
    }

    async fn send_once(
        &self,
        messages: Vec<pb::Message>,
        queue_id: i32,
    ) -> Result<Vec<SendReceipt>> {
        let n = messages.len();
        let session = &self.session;
        let deadline = session.config.request_timeout;
        let req = pb::SendMessageRequest { messages };
        let reply = session
            .unary(deadline, |mut rpc| async move {
                rpc.send_message(session.request(req, deadline)).await
            })
            .await?;
        if reply.entries.len() != n {
            check(reply.status)?;
            return Err(ClientError::Protocol(format!(
                "{} result entries for {n} messages",
                reply.entries.len()
            )));
        }
        let mut out = Vec::with_capacity(n);
        for e in reply.entries {
            check(e.status)?;
            out.push(SendReceipt {
                message_id: e.message_id,
                transaction_id: e.transaction_id,
                queue_id,
                offset: e.offset,
                recall_handle: e.recall_handle,
            });
        }
        Ok(out)
    }

    pub async fn recall(&self, topic: &str, recall_handle: &str) -> Result<String> {
        let session = &self.session;
        let deadline = session.config.request_timeout;
        let req = pb::RecallMessageRequest {
            topic: Some(resource(&session.config.namespace, topic)),
            recall_handle: recall_handle.to_string(),
        };
        let reply = session
            .unary(deadline, |mut rpc| async move {
                rpc.recall_message(session.request(req, deadline)).await
            })
            .await?;
        check(reply.status)?;
        Ok(reply.message_id)
    }
}

impl Producer {
    pub fn builder(config: ClientConfig) -> ProducerBuilder {
        ProducerBuilder {
            config,
            topics: Vec::new(),
        }
    }

    /// Sends one message; answers once the broker has it durably.
    /// Plain messages sent concurrently to the same topic share calls to
    /// the broker (see [`crate::coalesce`]); each still gets its own
    /// receipt or error.
    pub async fn send(&self, message: Message) -> Result<SendReceipt> {
        self.inner
            .coalescer
            .send(&self.inner, message, coalesce::Kind::Plain)
            .await
    }

    /// Sends messages of one topic (and one message group, if any) in one
    /// call. On Ferry a batch is stored all or nothing.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendReceipt>> {
        self.inner.send(&messages, false, None).await
    }

    /// Cancels a delayed message before its delivery time; returns its id.
    pub async fn recall(&self, topic: &str, recall_handle: &str) -> Result<String> {
        self.inner.recall(topic, recall_handle).await
    }

    /// This client's id, as the broker sees it.
    pub fn client_id(&self) -> &str {
        &self.inner.session.client_id
    }

    /// Tells the broker goodbye and stops background tasks.
    pub async fn shutdown(&self) {
        self.inner.session.shutdown().await;
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.inner.session.stop_now();
    }
}
