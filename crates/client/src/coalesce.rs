//! Concurrent calls share: messages that callers send at the same time to
//! the same topic go to the broker together, as one SendMessage with one
//! entry (and one receipt) per message; transactions that callers end at
//! the same time are ended together, with Ferry's EndTransactions. Plain
//! messages share with plain ones; transactional half messages share with
//! halves that asked for the same first check-back, and each still gets its
//! own transaction id (the broker issues one per half, so each is committed
//! or rolled back on its own).
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
//!
//! Ending a transaction twice is harmless (the broker answers a repeat OK
//! and changes nothing), so an end whose shared call failed is simply sent
//! again alone, with the usual retries. A broker without EndTransactions
//! (any broker but Ferry) answers UNIMPLEMENTED once; from then on this
//! producer ends each transaction with the standard EndTransaction.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::v2 as pb;
use tokio::sync::oneshot;
use tracing::debug;

use crate::error::{check, ClientError, Result};
use crate::message::{Message, SendReceipt};
use crate::producer::ProducerInner;
use crate::retry;
use crate::session::Session;
use crate::transaction::{END_ATTEMPTS, END_PAUSE};

/// Calls in progress per lane before further callers wait to share one.
pub const MAX_CALLS: usize = 2;
/// Most messages one shared send carries.
pub const MAX_MESSAGES: usize = 256;
/// Most body bytes one shared send carries (a message larger than this
/// goes alone).
pub const MAX_BYTES: usize = 1 << 20;
/// Most transactions one shared end carries (the broker's bound).
pub const MAX_ENDS: usize = 1024;

/// Callers waiting to share calls, per lane `K`: each gives an item `T`
/// and gets its own answer `R`.
struct Queues<K, T, R> {
    lanes: Mutex<HashMap<K, Waiting<T, R>>>,
}

struct Waiting<T, R> {
    callers: VecDeque<(T, oneshot::Sender<R>)>,
    /// Call slots of the lane now running (at most [`MAX_CALLS`]).
    calls: usize,
}

impl<K, T, R> Default for Queues<K, T, R> {
    fn default() -> Self {
        Queues {
            lanes: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, T, R> Queues<K, T, R> {
    /// Queues `item`; also says whether the caller must start a call slot
    /// for the lane (fewer than [`MAX_CALLS`] were running).
    fn join(&self, lane: &K, item: T) -> (oneshot::Receiver<R>, bool) {
        let (tx, rx) = oneshot::channel();
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let q = lanes.entry(lane.clone()).or_insert_with(|| Waiting {
            callers: VecDeque::new(),
            calls: 0,
        });
        q.callers.push_back((item, tx));
        let start = q.calls < MAX_CALLS;
        if start {
            q.calls += 1;
        }
        (rx, start)
    }

    /// The next callers of `lane` for one call: at most `max_items`, and
    /// at most `max_weight` in total unless a single item weighs more.
    /// None (and the call slot given back) when nobody waits.
    fn take(
        &self,
        lane: &K,
        max_items: usize,
        max_weight: usize,
        weight: impl Fn(&T) -> usize,
    ) -> Vec<(T, oneshot::Sender<R>)> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(q) = lanes.get_mut(lane) else {
            return Vec::new();
        };
        let mut batch = Vec::new();
        let mut total = 0;
        while let Some((item, _)) = q.callers.front() {
            let w = weight(item);
            if !batch.is_empty() && (batch.len() == max_items || total + w > max_weight) {
                break;
            }
            total += w;
            batch.push(q.callers.pop_front().expect("front exists"));
        }
        if batch.is_empty() {
            assert!(q.calls > 0, "a call slot takes only while it runs");
            q.calls -= 1;
            if q.calls == 0 {
                lanes.remove(lane);
            }
        }
        batch
    }
}

/// A caller's answer when its call slot is gone before answering.
fn abandoned<T>() -> Result<T> {
    Err(ClientError::Protocol(
        "the call was abandoned (the producer is shutting down)".into(),
    ))
}

/// What may share a send: one topic, one kind of message.
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

    /// The type of every message of the lane (all [`eligible`]: no group,
    /// no delivery time), as `Message::message_type` answers it.
    fn message_type(self) -> pb::MessageType {
        match self {
            Kind::Plain => pb::MessageType::Normal,
            Kind::Half { .. } => pb::MessageType::Transaction,
        }
    }

    fn check_after(self) -> Option<Duration> {
        match self {
            Kind::Plain => None,
            Kind::Half { check_after } => check_after,
        }
    }
}

/// What this producer knows of the broker's `ferry.v1.Extensions`.
const EXTENSIONS_UNKNOWN: u8 = 0;
/// EndTransactions answered: the broker is Ferry.
const EXTENSIONS_PRESENT: u8 = 1;
/// EndTransactions answered UNIMPLEMENTED: another broker (or Ferry with
/// `--extensions false`).
const EXTENSIONS_ABSENT: u8 = 2;

/// A producer's shared calls.
pub(crate) struct Coalescer {
    sends: Queues<Lane, Message, Result<SendReceipt>>,
    ends: Queues<(), pb::EndTransactionRequest, Result<()>>,
    extensions: AtomicU8,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            sends: Queues::default(),
            ends: Queues::default(),
            extensions: AtomicU8::new(EXTENSIONS_UNKNOWN),
        }
    }
}

/// Whether `m` may share a call: no message group (a group's messages
/// must keep their one-at-a-time order) and no delivery time (delayed
/// messages carry their own message type).
fn eligible(m: &Message) -> bool {
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
    /// Whether half messages may share calls: only once the broker is
    /// known to be Ferry. Apache RocketMQ refuses batches of half messages,
    /// with a status that does not prove nothing was stored, so there a
    /// shared half call would fail for all its callers.
    fn shares_halves(&self) -> bool {
        self.extensions.load(Ordering::Relaxed) == EXTENSIONS_PRESENT
    }

    /// Whether the broker serves `ferry.v1.Extensions`, once a shared
    /// EndTransactions call has told.
    pub(crate) fn broker_extensions(&self) -> Option<bool> {
        match self.extensions.load(Ordering::Relaxed) {
            EXTENSIONS_PRESENT => Some(true),
            EXTENSIONS_ABSENT => Some(false),
            _ => None,
        }
    }

    /// Sends `m`: in a call shared with other concurrent sends of its lane
    /// when it may share ([`eligible`], and for a half message a broker
    /// known to be Ferry), in a call of its own otherwise.
    pub(crate) async fn send(
        &self,
        inner: &Arc<ProducerInner>,
        m: Message,
        kind: Kind,
    ) -> Result<SendReceipt> {
        let (transactional, check_after) = (kind.transactional(), kind.check_after());
        if !eligible(&m) || (transactional && !self.shares_halves()) {
            return inner.send_one(&m, transactional, check_after).await;
        }
        // Checked alone now, so one bad message never fails a shared call.
        inner.check_batch(std::slice::from_ref(&m), transactional)?;
        let lane = Lane {
            topic: m.topic.clone(),
            kind,
        };
        let (rx, start) = self.sends.join(&lane, m);
        if start {
            let inner = inner.clone();
            tokio::spawn(async move { send_calls(inner, lane).await });
        }
        rx.await.unwrap_or_else(|_| abandoned())
    }

    /// Ends one transaction, in a call shared with other concurrent ends
    /// when the broker allows it.
    pub(crate) async fn end(
        &self,
        inner: &Arc<ProducerInner>,
        req: pb::EndTransactionRequest,
    ) -> Result<()> {
        inner.session.ensure_running()?;
        if self.extensions.load(Ordering::Relaxed) == EXTENSIONS_ABSENT {
            return end_alone(&inner.session, req).await;
        }
        let (rx, start) = self.ends.join(&(), req);
        if start {
            let inner = inner.clone();
            tokio::spawn(async move { end_calls(inner).await });
        }
        rx.await.unwrap_or_else(|_| abandoned())
    }
}

/// One send slot of a lane: sends what waits, until nothing does. Every
/// message was checked when it joined, and a lane holds one topic and one
/// kind of eligible message, so a batch of them needs no second check.
async fn send_calls(inner: Arc<ProducerInner>, lane: Lane) {
    let (transactional, check_after) = (lane.kind.transactional(), lane.kind.check_after());
    let message_type = lane.kind.message_type();
    loop {
        let batch = inner
            .coalescer
            .sends
            .take(&lane, MAX_MESSAGES, MAX_BYTES, |m| m.body.len());
        if batch.is_empty() {
            return;
        }
        let (messages, waiters): (Vec<Message>, Vec<_>) = batch.into_iter().unzip();
        let sent = inner
            .send_checked(&messages, message_type, transactional, check_after)
            .await;
        match sent {
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

/// One EndTransaction with the usual retries.
async fn end_alone(session: &Session, req: pb::EndTransactionRequest) -> Result<()> {
    retry::with_retries(END_ATTEMPTS, END_PAUSE, || {
        session.end_transaction(req.clone())
    })
    .await
}

type EndWaiter = (pb::EndTransactionRequest, oneshot::Sender<Result<()>>);

/// Ends each alone, all at once: one slow or unreachable end must not hold
/// up the others' retries.
fn end_each_alone(inner: &Arc<ProducerInner>, ends: impl IntoIterator<Item = EndWaiter>) {
    for (req, tx) in ends {
        let inner = inner.clone();
        tokio::spawn(async move {
            let _ = tx.send(end_alone(&inner.session, req).await);
        });
    }
}

/// One end slot: ends what waits, until nothing does.
async fn end_calls(inner: Arc<ProducerInner>) {
    let session = &inner.session;
    let extensions = &inner.coalescer.extensions;
    loop {
        let batch = inner.coalescer.ends.take(&(), MAX_ENDS, usize::MAX, |_| 0);
        if batch.is_empty() {
            return;
        }
        if extensions.load(Ordering::Relaxed) == EXTENSIONS_ABSENT {
            end_each_alone(&inner, batch);
            continue;
        }
        let reqs: Vec<_> = batch.iter().map(|(r, _)| r.clone()).collect();
        match session.end_transactions(reqs).await {
            Ok(reply) if reply.entries.len() == batch.len() => {
                extensions.store(EXTENSIONS_PRESENT, Ordering::Relaxed);
                let mut again = Vec::new();
                for ((req, tx), entry) in batch.into_iter().zip(reply.entries) {
                    match check(entry.status) {
                        Err(e) if e.is_retryable() => again.push((req, tx)),
                        done => {
                            let _ = tx.send(done);
                        }
                    }
                }
                end_each_alone(&inner, again);
            }
            failed => {
                if let Err(ClientError::Rpc(s)) = &failed {
                    if s.code() == tonic::Code::Unimplemented {
                        debug!(
                            "the broker has no EndTransactions; ending transactions one call each"
                        );
                        extensions.store(EXTENSIONS_ABSENT, Ordering::Relaxed);
                    }
                }
                end_each_alone(&inner, batch);
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
