//! Concurrent sends share calls: plain messages that callers send at the
//! same time to the same topic go to the broker together, as one
//! SendMessage with one entry (and one receipt) per message.
//!
//! Why: each call costs both sides far more CPU than the message in it
//! (HTTP/2 frames, headers, a stream and a task per call), so a producer
//! with many sends in flight spends most of its time on calls rather than
//! messages. Nothing waits to fill a batch: a send that finds no call in
//! progress goes at once; sends arriving while [`MAX_CALLS`] calls are out
//! queue up and leave together with the next one. A lone caller, or one
//! that awaits each send, sees exactly the old behaviour.
//!
//! A batch is stored all or nothing, so messages that fail together fail
//! through no fault of their neighbours only when the whole call failed
//! (after the usual retries); each is then sent again on its own, and its
//! caller gets its own outcome.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::{ClientError, Result};
use crate::message::{Message, SendReceipt};
use crate::producer::ProducerInner;

/// Calls in progress per topic before further sends wait to share one.
pub const MAX_CALLS: usize = 2;
/// Most messages one shared call carries.
pub const MAX_MESSAGES: usize = 256;
/// Most body bytes one shared call carries (a message larger than this
/// goes alone).
pub const MAX_BYTES: usize = 1 << 20;

type Waiter = (Message, oneshot::Sender<Result<SendReceipt>>);

#[derive(Default)]
struct TopicQueue {
    waiting: VecDeque<Waiter>,
    calls: usize,
}

#[derive(Default)]
pub(crate) struct Coalescer {
    topics: Mutex<HashMap<String, TopicQueue>>,
}

/// Whether `m` may share a call: plain messages only. A message group's
/// messages must keep their one-at-a-time order, and delayed ones carry
/// their own message type.
pub(crate) fn eligible(m: &Message) -> bool {
    m.message_group.is_none() && m.delivery_time.is_none()
}

impl Coalescer {
    /// Sends `m` (which must be [`eligible`] and already checked) in a call
    /// shared with other concurrent sends to its topic.
    pub(crate) async fn send(&self, inner: &Arc<ProducerInner>, m: Message) -> Result<SendReceipt> {
        let (tx, rx) = oneshot::channel();
        let topic = m.topic.clone();
        let start_call = {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            let q = topics.entry(topic.clone()).or_default();
            q.waiting.push_back((m, tx));
            if q.calls < MAX_CALLS {
                q.calls += 1;
                true
            } else {
                false
            }
        };
        if start_call {
            let inner = inner.clone();
            tokio::spawn(async move { calls(inner, topic).await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(ClientError::Protocol(
                "the send was abandoned (the producer is shutting down)".into(),
            ))
        })
    }

    /// The next messages of `topic` for one call, or none (and the call
    /// slot given back) when nothing waits.
    fn take(&self, topic: &str) -> Vec<Waiter> {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let Some(q) = topics.get_mut(topic) else {
            return Vec::new();
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some((m, _)) = q.waiting.front() {
            let size = m.body.len();
            if !batch.is_empty() && (batch.len() == MAX_MESSAGES || bytes + size > MAX_BYTES) {
                break;
            }
            bytes += size;
            batch.push(q.waiting.pop_front().expect("front exists"));
        }
        if batch.is_empty() {
            q.calls -= 1;
            if q.calls == 0 {
                topics.remove(topic);
            }
        }
        batch
    }
}

/// One call slot of a topic: sends what waits, until nothing does.
async fn calls(inner: Arc<ProducerInner>, topic: String) {
    loop {
        let batch = inner.coalescer.take(&topic);
        if batch.is_empty() {
            return;
        }
        let (messages, waiters): (Vec<Message>, Vec<_>) = batch.into_iter().unzip();
        match inner.send(&messages, false, None).await {
            Ok(receipts) => {
                for (tx, r) in waiters.into_iter().zip(receipts) {
                    let _ = tx.send(Ok(r));
                }
            }
            Err(e) if messages.len() == 1 => {
                let tx = waiters.into_iter().next().expect("one waiter");
                let _ = tx.send(Err(e));
            }
            // The whole call failed: each message gets its own attempt and
            // its own outcome (a refusal of one message must not become
            // the refusal of all).
            Err(_) => {
                for (m, tx) in messages.iter().zip(waiters) {
                    let _ = tx.send(inner.send_one(m, false, None).await);
                }
            }
        }
    }
}
