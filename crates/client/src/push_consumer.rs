//! A consumer that receives on its own and hands each message to a
//! handler. Success acks it; failure retries it per the group's policy and
//! sends it to the dead-letter queue when attempts run out. In a FIFO group
//! the messages of one message group are handled one at a time, in order;
//! different message groups run concurrently.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::v2 as pb;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::config::ClientConfig;
use crate::consumer::{self, ReceiveCall};
use crate::error::{check, ClientError, Result};
use crate::message::{resource, FilterExpression, ReceivedMessage};
use crate::retry;
use crate::session::{until_true, Session};

/// What a handler says of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeResult {
    Success,
    Failure,
}

/// Handlers running at once, by default.
pub const DEFAULT_MAX_CONCURRENCY: usize = 16;
/// Invisible duration asked for each message; renewed while its handler
/// runs, so a slow handler does not cause a redelivery.
pub const DEFAULT_INVISIBLE: Duration = Duration::from_secs(30);
/// Longest a message is kept invisible for one handler run (the broker's
/// own ceiling on invisibility); past it the message may be redelivered.
pub const MAX_HOLD: Duration = Duration::from_secs(12 * 3600);
/// How often the assignment (which queues to poll) is asked again.
pub const ASSIGNMENT_INTERVAL: Duration = Duration::from_secs(5);
/// Wait after a failed receive before the next.
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Tries of an ack, nack or dead-letter forward before leaving the message
/// to its invisibility deadline (it is then delivered again).
const SETTLE_ATTEMPTS: u32 = 3;
/// Pause after the n-th failed try: n times this.
const SETTLE_PAUSE: Duration = Duration::from_millis(100);

/// What a handler's result leaves to do.
enum Next {
    /// Settled (acked or dead-lettered), or left to its deadline.
    Done,
    /// Try again after this backoff.
    RetryAfter(Duration),
}

pub struct PushConsumerBuilder {
    config: ClientConfig,
    group: String,
    subscriptions: Vec<(String, FilterExpression)>,
    max_concurrency: usize,
    invisible: Duration,
    await_duration: Duration,
    shutdown_grace: Duration,
}

impl PushConsumerBuilder {
    pub fn subscribe(mut self, topic: impl Into<String>, filter: FilterExpression) -> Self {
        self.subscriptions.push((topic.into(), filter));
        self
    }

    /// Handlers (or, for FIFO groups, message-group chains) running at once.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// Invisible duration asked per message (renewed at two thirds).
    pub fn invisible_duration(mut self, d: Duration) -> Self {
        self.invisible = d;
        self
    }

    /// Long-polling time of each receive.
    pub fn await_duration(mut self, d: Duration) -> Self {
        self.await_duration = d;
        self
    }

    /// How long [`PushConsumer::shutdown`] waits for running handlers.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }

    /// Starts receiving; `handler` is called for every message.
    pub async fn start<H, F>(self, handler: H) -> Result<PushConsumer>
    where
        H: Fn(ReceivedMessage) -> F + Send + Sync + 'static,
        F: Future<Output = ConsumeResult> + Send + 'static,
    {
        if self.max_concurrency == 0 || self.max_concurrency > consumer::MAX_RECEIVE_BATCH {
            return Err(ClientError::Invalid {
                what: "max_concurrency",
                why: format!(
                    "1 to {}, not {}",
                    consumer::MAX_RECEIVE_BATCH,
                    self.max_concurrency
                ),
            });
        }
        if self.invisible < Duration::from_secs(1) {
            return Err(ClientError::Invalid {
                what: "invisible duration",
                why: "at least 1 s".into(),
            });
        }
        let session = consumer::start_session(
            self.config,
            pb::ClientType::PushConsumer,
            &self.group,
            &self.subscriptions,
            self.await_duration,
        )
        .await?;
        let worker = Arc::new(Worker {
            session: session.clone(),
            group: self.group,
            handler: Box::new(move |m| Box::pin(handler(m))),
            permits: Arc::new(Semaphore::new(self.max_concurrency)),
            invisible: self.invisible,
            await_duration: self.await_duration,
        });
        // The first assignment is asked synchronously: a topic that does
        // not exist fails the start.
        for (topic, _) in &self.subscriptions {
            if let Err(e) = worker.assignment(topic).await {
                session.shutdown().await;
                return Err(e);
            }
        }
        for (topic, filter) in self.subscriptions {
            let task = tokio::spawn(worker.clone().assignment_loop(topic, filter));
            session.track(task);
        }
        info!(group = %worker.group, client = %session.client_id, "push consumer started");
        Ok(PushConsumer {
            worker,
            max_concurrency: self.max_concurrency,
            shutdown_grace: self.shutdown_grace,
        })
    }
}

type Handler = Box<
    dyn Fn(ReceivedMessage) -> std::pin::Pin<Box<dyn Future<Output = ConsumeResult> + Send>>
        + Send
        + Sync,
>;

struct Worker {
    session: Arc<Session>,
    group: String,
    handler: Handler,
    permits: Arc<Semaphore>,
    invisible: Duration,
    await_duration: Duration,
}

pub struct PushConsumer {
    worker: Arc<Worker>,
    max_concurrency: usize,
    shutdown_grace: Duration,
}

impl PushConsumer {
    pub fn builder(config: ClientConfig, group: impl Into<String>) -> PushConsumerBuilder {
        PushConsumerBuilder {
            config,
            group: group.into(),
            subscriptions: Vec::new(),
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            invisible: DEFAULT_INVISIBLE,
            await_duration: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(30),
        }
    }

    pub fn client_id(&self) -> &str {
        &self.worker.session.client_id
    }

    /// Whether the broker runs this group in FIFO mode (known after the
    /// settings exchange).
    pub fn is_fifo(&self) -> bool {
        self.worker.session.server().fifo
    }

    /// Stops receiving, waits up to the grace period for running handlers
    /// to finish and settle, then tells the broker goodbye. Messages
    /// received but not handled become visible again at their deadline.
    pub async fn shutdown(&self) {
        let session = &self.worker.session;
        if session.is_stopped() {
            return;
        }
        // Receive loops stop taking permits once they see the flag; taking
        // every permit waits for the handlers that hold one.
        session.signal_stop();
        let all = u32::try_from(self.max_concurrency).unwrap_or(u32::MAX);
        if tokio::time::timeout(self.shutdown_grace, self.worker.permits.acquire_many(all))
            .await
            .is_err()
        {
            warn!(group = %self.worker.group, "handlers still running at the end of the shutdown grace period");
        }
        session.shutdown().await;
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        self.worker.session.stop_now();
    }
}

impl Worker {
    async fn assignment(&self, topic: &str) -> Result<Vec<pb::MessageQueue>> {
        let s = &self.session;
        let ns = &s.config.namespace;
        let req = pb::QueryAssignmentRequest {
            topic: Some(resource(ns, topic)),
            group: Some(resource(ns, &self.group)),
            endpoints: Some(s.access_point()),
        };
        let deadline = s.config.request_timeout;
        let reply = s
            .unary(deadline, |mut rpc| async move {
                rpc.query_assignment(s.request(req, deadline)).await
            })
            .await?;
        check(reply.status)?;
        Ok(reply
            .assignments
            .into_iter()
            .filter_map(|a| a.message_queue)
            .collect())
    }

    /// Keeps one receive loop per assigned queue of `topic`.
    async fn assignment_loop(self: Arc<Self>, topic: String, filter: FilterExpression) {
        let mut stop = self.session.stopping();
        let mut loops: HashMap<(String, i32), watch::Sender<bool>> = HashMap::new();
        let mut tick = tokio::time::interval(ASSIGNMENT_INTERVAL);
        loop {
            tokio::select! {
                _ = until_true(&mut stop) => break,
                _ = tick.tick() => {}
            }
            let queues = match self.assignment(&topic).await {
                Ok(q) => q,
                Err(e) => {
                    debug!(%topic, error = %e, "assignment query failed; keeping the current one");
                    continue;
                }
            };
            let key = |q: &pb::MessageQueue| {
                let broker = q
                    .broker
                    .as_ref()
                    .map(|b| b.name.clone())
                    .unwrap_or_default();
                (broker, q.id)
            };
            let wanted: HashMap<_, _> = queues.into_iter().map(|q| (key(&q), q)).collect();
            loops.retain(|k, stop| {
                let keep = wanted.contains_key(k);
                if !keep {
                    let _ = stop.send(true);
                }
                keep
            });
            for (k, q) in wanted {
                if loops.contains_key(&k) {
                    continue;
                }
                let (tx, rx) = watch::channel(false);
                let task = tokio::spawn(self.clone().receive_loop(q, filter.clone(), rx));
                self.session.track(task);
                loops.insert(k, tx);
            }
        }
        for (_, s) in loops {
            let _ = s.send(true);
        }
    }

    async fn receive_loop(
        self: Arc<Self>,
        queue: pb::MessageQueue,
        filter: FilterExpression,
        mut unassigned: watch::Receiver<bool>,
    ) {
        let mut stop = self.session.stopping();
        loop {
            if *stop.borrow() || *unassigned.borrow() {
                return;
            }
            let first = tokio::select! {
                _ = until_true(&mut stop) => return,
                _ = until_true(&mut unassigned) => return,
                p = self.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            let settings = self.session.server();
            let mut held = vec![first];
            while held.len() < settings.receive_batch.max(1) {
                match self.permits.clone().try_acquire_owned() {
                    Ok(p) => held.push(p),
                    Err(_) => break,
                }
            }
            let got = tokio::select! {
                _ = until_true(&mut stop) => return,
                r = consumer::receive(&self.session, &self.group, ReceiveCall {
                    queue: &queue,
                    filter: &filter,
                    batch: held.len(),
                    invisible: self.invisible,
                    long_poll: self.await_duration,
                    attempt_id: None,
                }) => r,
            };
            let messages = match got {
                Ok(m) => m,
                Err(ClientError::Shutdown) => return,
                Err(e) => {
                    warn!(group = %self.group, error = %e, "receive failed; retrying shortly");
                    drop(held);
                    tokio::time::sleep(RECEIVE_ERROR_PAUSE).await;
                    continue;
                }
            };
            if settings.fifo {
                // Chains keep each message group's order; one permit each.
                let mut chains: BTreeMap<String, Vec<ReceivedMessage>> = BTreeMap::new();
                let mut order = Vec::new();
                for m in messages {
                    let g = m
                        .message_group
                        .clone()
                        .unwrap_or_else(|| m.message_id.clone());
                    if !chains.contains_key(&g) {
                        order.push(g.clone());
                    }
                    chains.entry(g).or_default().push(m);
                }
                for g in order {
                    let chain = chains.remove(&g).unwrap_or_default();
                    // A broker that sends more than asked gets them run
                    // too, as permits free up.
                    let Some(permit) = self.permit(&mut held).await else {
                        return;
                    };
                    let w = self.clone();
                    let task = tokio::spawn(async move { w.run_chain(chain, permit).await });
                    self.session.track(task);
                }
            } else {
                for m in messages {
                    // A broker that sends more than asked gets them run
                    // too, as permits free up.
                    let Some(permit) = self.permit(&mut held).await else {
                        return;
                    };
                    let w = self.clone();
                    let task = tokio::spawn(async move { w.run_one(m, permit).await });
                    self.session.track(task);
                }
            }
        }
    }

    /// A permit from those taken for this receive, or a fresh one.
    async fn permit(&self, held: &mut Vec<OwnedSemaphorePermit>) -> Option<OwnedSemaphorePermit> {
        match held.pop() {
            Some(p) => Some(p),
            None => self.permits.clone().acquire_owned().await.ok(),
        }
    }

    /// Concurrent mode: one try here; a failure is retried by the broker
    /// after the backoff (a nack), or dead-lettered on the last attempt.
    async fn run_one(&self, mut m: ReceivedMessage, _permit: OwnedSemaphorePermit) {
        let work = (self.handler)(m.clone());
        let result = self.hold(&mut m, work).await;
        if let Next::RetryAfter(wait) = self.settle(&m, result).await {
            let nack = retry::with_retries(SETTLE_ATTEMPTS, SETTLE_PAUSE, || {
                consumer::change_invisible(&self.session, &self.group, &m, wait)
            });
            if let Err(e) = nack.await {
                debug!(message = %m.message_id, error = %e, "nack failed; the message returns at its deadline");
            }
        }
    }

    /// FIFO mode: each message of the chain in order; failures are retried
    /// here (the next message of the group must wait for this one), then
    /// forwarded to the dead-letter queue.
    async fn run_chain(&self, chain: Vec<ReceivedMessage>, _permit: OwnedSemaphorePermit) {
        for mut m in chain {
            loop {
                if self.session.is_stopping() {
                    return;
                }
                let work = (self.handler)(m.clone());
                let result = self.hold(&mut m, work).await;
                match self.settle(&m, result).await {
                    Next::Done => break,
                    Next::RetryAfter(wait) => {
                        self.hold(&mut m, tokio::time::sleep(wait)).await;
                        m.delivery_attempt += 1;
                    }
                }
            }
        }
    }

    /// What follows a handler's result, per the group's policy: success is
    /// acked, the last failed attempt dead-lettered; any other failure is
    /// retried after the backoff step of its attempt (by the caller).
    async fn settle(&self, m: &ReceivedMessage, result: ConsumeResult) -> Next {
        let policy = &self.session.server().retry;
        let (what, outcome) = match result {
            ConsumeResult::Success => (
                "ack",
                retry::with_retries(SETTLE_ATTEMPTS, SETTLE_PAUSE, || {
                    consumer::ack(&self.session, &self.group, m)
                })
                .await,
            ),
            ConsumeResult::Failure if m.delivery_attempt >= policy.max_attempts => (
                "forwarding to the dead-letter queue",
                retry::with_retries(SETTLE_ATTEMPTS, SETTLE_PAUSE, || {
                    consumer::forward_to_dead_letter(
                        &self.session,
                        &self.group,
                        m,
                        policy.max_attempts,
                    )
                })
                .await,
            ),
            ConsumeResult::Failure => {
                return Next::RetryAfter(policy.delay_after(m.delivery_attempt))
            }
        };
        if let Err(e) = outcome {
            warn!(message = %m.message_id, error = %e, "{what} failed; the message will be delivered again");
        }
        Next::Done
    }

    /// Runs `work` while keeping `m` invisible: renews at two thirds of the
    /// invisible duration, for at most [`MAX_HOLD`].
    async fn hold<T>(&self, m: &mut ReceivedMessage, work: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let renew_every = self.invisible * 2 / 3;
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tokio::time::sleep(renew_every) => {
                    if started.elapsed() >= MAX_HOLD {
                        continue;
                    }
                    match consumer::change_invisible(&self.session, &self.group, m, self.invisible).await {
                        Ok(h) => m.receipt_handle = h,
                        Err(e) => debug!(message = %m.message_id, error = %e, "renewing invisibility failed"),
                    }
                }
            }
        }
    }
}
