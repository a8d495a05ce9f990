//! Concurrent sends share calls: messages that callers send at the same
//! time to the same topic go to the broker together, as one SendMessage
//! with one entry (and one receipt) per message. Plain messages share with
//! plain ones; transactional half messages share with halves that asked
//! for the same first check-back, and each still gets its own transaction
//! id (the broker issues one per half, so each is committed or rolled back
//! on its own).
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
//! through no fault of their neighbours only when the whole call failed.
//! Plain messages are then each sent again on their own (after the usual
//! retries), and each caller gets its own outcome. Half messages are sent
//! again alone only when the failure proves nothing was stored (the broker
//! refused the request, or it never left): a half sent twice would be two
//! transactions. Otherwise every caller of the call gets its error, as a
//! lone half's caller would, and any half that was stored after all is
//! settled by check-back.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::{ClientError, Result};
use crate::message::{Message, SendReceipt};
use crate::producer::ProducerInner;

/// Calls in progress per lane before further sends wait to share one.
pub const MAX_CALLS: usize = 2;
/// Most messages one shared call carries.
pub const MAX_MESSAGES: usize = 256;
/// Most body bytes one shared call carries (a message larger than this
/// goes alone).
pub const MAX_BYTES: usize = 1 << 20;

/// What may share a call: one topic, one kind of send.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Lane {
    pub topic: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Plain,
    /// Transactional half messages with this first check-back delay.
    Half {
        check_after: Option<Duration>,
    },
}

impl Kind {
    fn transactional(self) -> bool {
        matches!(self, Kind::Half { .. })
    }

    fn check_after(self) -> Option<Duration> {
        match self {
            Kind::Plain => None,
            Kind::Half { check_after } => check_after,
        }
    }
}

type Waiter = (Message, oneshot::Sender<Result<SendReceipt>>);

#[derive(Default)]
struct LaneQueue {
    waiting: VecDeque<Waiter>,
    calls: usize,
}

#[derive(Default)]
pub(crate) struct Coalescer {
    lanes: Mutex<HashMap<Lane, LaneQueue>>,
}

/// Whether `m` may share a call: no message group (a group's messages
/// must keep their one-at-a-time order) and no delivery time (delayed
/// messages carry their own message type).
pub(crate) fn eligible(m: &Message) -> bool {
    m.message_group.is_none() && m.delivery_time.is_none()
}

/// Whether a failed call certainly stored nothing: the broker refused the
/// request (a 4xxxx status: batches are refused whole, before anything is
/// written), or the request never left the client.
fn stored_nothing(e: &ClientError) -> bool {
    match e {
        ClientError::Status { code, .. } => (40000..50000).contains(code),
        ClientError::Connect { .. } | ClientError::Invalid { .. } | ClientError::Shutdown => true,
        ClientError::Rpc(_) | ClientError::Timeout(_) | ClientError::Protocol(_) => false,
    }
}

impl Coalescer {
    /// Checks `m` (which must be [`eligible`]) and sends it in a call
    /// shared with other concurrent sends of its lane.
    pub(crate) async fn send(
        &self,
        inner: &Arc<ProducerInner>,
        m: Message,
        kind: Kind,
    ) -> Result<SendReceipt> {
        debug_assert!(eligible(&m), "only eligible messages share calls");
        inner.session.ensure_running()?;
        m.message_type(kind.transactional())?;
        m.check(inner.session.server().max_body)?;
        let (tx, rx) = oneshot::channel();
        let lane = Lane {
            topic: m.topic.clone(),
            kind,
        };
        let start_call = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            let q = lanes.entry(lane.clone()).or_default();
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
            tokio::spawn(async move { calls(inner, lane).await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(ClientError::Protocol(
                "the send was abandoned (the producer is shutting down)".into(),
            ))
        })
    }

    /// The next messages of `lane` for one call, or none (and the call
    /// slot given back) when nothing waits.
    fn take(&self, lane: &Lane) -> Vec<Waiter> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(q) = lanes.get_mut(lane) else {
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
                lanes.remove(lane);
            }
        }
        batch
    }
}

/// One call slot of a lane: sends what waits, until nothing does.
async fn calls(inner: Arc<ProducerInner>, lane: Lane) {
    let (transactional, check_after) = (lane.kind.transactional(), lane.kind.check_after());
    loop {
        let batch = inner.coalescer.take(&lane);
        if batch.is_empty() {
            return;
        }
        let (messages, waiters): (Vec<Message>, Vec<_>) = batch.into_iter().unzip();
        match inner.send(&messages, transactional, check_after).await {
            Ok(receipts) => {
                for (tx, r) in waiters.into_iter().zip(receipts) {
                    let _ = tx.send(Ok(r));
                }
            }
            Err(e) if messages.len() == 1 => {
                let tx = waiters.into_iter().next().expect("one waiter");
                let _ = tx.send(Err(e));
            }
            // The outcome is unknown: a half may be stored, so sending it
            // again could make a second transaction. Each caller learns
            // the failure; check-back settles what was stored.
            Err(e) if transactional && !stored_nothing(&e) => {
                for tx in waiters {
                    let _ = tx.send(Err(e.clone()));
                }
            }
            // The whole call failed: each message gets its own attempt and
            // its own outcome (a refusal of one message must not become
            // the refusal of all).
            Err(_) => {
                for (m, tx) in messages.iter().zip(waiters) {
                    let _ = tx.send(inner.send_one(m, transactional, check_after).await);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_and_unsent_requests_prove_nothing_was_stored() {
        let status = |code| ClientError::Status {
            code,
            message: String::new(),
        };
        assert!(stored_nothing(&status(40000)));
        assert!(stored_nothing(&status(42900)));
        assert!(stored_nothing(&ClientError::Shutdown));
        assert!(!stored_nothing(&status(50000)));
        assert!(!stored_nothing(&status(50400)));
        assert!(!stored_nothing(&ClientError::Timeout(Duration::from_secs(
            1
        ))));
        assert!(!stored_nothing(&ClientError::Rpc(
            tonic::Status::unavailable("gone")
        )));
        assert!(!stored_nothing(&ClientError::Protocol("odd".into())));
    }
}
