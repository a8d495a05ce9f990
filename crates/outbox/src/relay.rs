//! The relay: claim pending rows, publish them, mark them sent. Run as
//! many relays (and workers per relay) as needed; leases keep them from
//! publishing the same row, and a crashed relay's rows come back when its
//! lease runs out.
//!
//! At-least-once, with bounded duplicates: a row is re-published only if a
//! relay claimed it and then did not mark it sent (a crash between publish
//! and mark, or a lease that ran out mid-publish), so the duplicates after
//! a crash are at most the rows that relay held: `workers × batch`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::cleanup::{Janitor, JanitorConfig};
use crate::error::{OutboxError, Result};
use crate::message::PendingMessage;
use crate::metrics::RelayMetrics;
use crate::plan::{self, AfterFailure, Lane};
use crate::publisher::{PublishError, Publisher};
use crate::store::{Store, MAX_CLAIM};

/// How a relay runs. The defaults suit a relay next to its database.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// This relay's name in `lease_owner`; unique per process.
    pub owner: String,
    /// Claim loops running at once; each holds one claim in flight.
    pub workers: usize,
    /// Rows per claim.
    pub batch: usize,
    /// Publish calls in flight per worker.
    pub publish_concurrency: usize,
    /// How long a claim is exclusive. A relay never starts a publish after
    /// half of it, so a slow relay gives rows up rather than racing the
    /// next owner.
    pub lease: Duration,
    /// Sleep between claims when nothing was pending.
    pub idle_poll: Duration,
    /// First retry delay after a failed publish; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Attempts before a row is parked as failed; 0 = never give up on a
    /// retryable error. Non-retryable errors park at once.
    pub max_attempts: u32,
    /// How often the gauges are refreshed from the database.
    pub stats_interval: Duration,
    /// Sent-row cleanup, run by the relay.
    pub cleanup: JanitorConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            owner: default_owner(),
            workers: 4,
            batch: 1000,
            publish_concurrency: 16,
            lease: Duration::from_secs(30),
            idle_poll: Duration::from_millis(100),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            max_attempts: 0,
            stats_interval: Duration::from_secs(5),
            cleanup: JanitorConfig::outbox(),
        }
    }
}

impl RelayConfig {
    /// Refuses settings that cannot work, before anything starts.
    pub fn check(&self) -> Result<()> {
        let bad = |why: String| Err(OutboxError::invalid("relay config", why));
        // Room for ":worker:claim" in the 128-byte lease token.
        if self.owner.is_empty() || self.owner.len() > 64 {
            return bad(format!("owner {:?}: 1 to 64 bytes", self.owner));
        }
        if !(1..=64).contains(&self.workers) {
            return bad(format!("workers {}: 1 to 64", self.workers));
        }
        if !(1..=MAX_CLAIM).contains(&self.batch) {
            return bad(format!("batch {}: 1 to {MAX_CLAIM}", self.batch));
        }
        if !(1..=256).contains(&self.publish_concurrency) {
            return bad(format!(
                "publish concurrency {}: 1 to 256",
                self.publish_concurrency
            ));
        }
        if self.lease < Duration::from_secs(1) {
            return bad(format!("lease {:?}: at least 1s", self.lease));
        }
        if self.retry_base.is_zero() || self.retry_max < self.retry_base {
            return bad("retry delays: base > 0 and max >= base".into());
        }
        if self.idle_poll.is_zero() || self.stats_interval.is_zero() {
            return bad("idle poll and stats interval must be positive".into());
        }
        self.cleanup.check()
    }
}

fn default_owner() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into());
    let host: String = host.chars().take(32).collect();
    let nonce = std::collections::hash_map::RandomState::new();
    let n = std::hash::BuildHasher::hash_one(&nonce, std::process::id()) & 0xffff_ffff;
    format!("{host}-{}-{n:08x}", std::process::id())
}

/// A running relay.
pub struct Relay {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    metrics: Arc<RelayMetrics>,
    janitor: Janitor,
}

impl Relay {
    /// Starts `config.workers` claim loops, the gauges and the cleanup.
    pub fn start<P: Publisher>(store: Store, publisher: P, config: RelayConfig) -> Result<Relay> {
        config.check()?;
        let metrics = Arc::new(RelayMetrics::default());
        let (stop, stopped) = watch::channel(false);
        let publisher = Arc::new(publisher);
        let config = Arc::new(config);
        let mut tasks = JoinSet::new();
        for n in 0..config.workers {
            let w = Worker {
                store: store.clone(),
                publisher: publisher.clone(),
                config: config.clone(),
                metrics: metrics.clone(),
                stopped: stopped.clone(),
            };
            tasks.spawn(async move { w.run(n).await });
        }
        tasks.spawn(gauges(
            store.clone(),
            metrics.clone(),
            config.stats_interval,
            stopped,
        ));
        let janitor = Janitor::start(store, config.cleanup.clone(), metrics.clone())?;
        info!(owner = %config.owner, workers = config.workers, batch = config.batch, "relay started");
        Ok(Relay {
            stop,
            tasks,
            metrics,
            janitor,
        })
    }

    pub fn metrics(&self) -> &Arc<RelayMetrics> {
        &self.metrics
    }

    /// Stops claiming; the claims in flight are published (within their
    /// deadlines) and settled, what was not tried is handed back.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.janitor.shutdown().await;
    }
}

struct Worker<P> {
    store: Store,
    publisher: Arc<P>,
    config: Arc<RelayConfig>,
    metrics: Arc<RelayMetrics>,
    stopped: watch::Receiver<bool>,
}

impl<P: Publisher> Worker<P> {
    async fn run(mut self, n: usize) {
        let mut db_backoff = Duration::from_millis(100);
        let mut claims: u64 = 0;
        loop {
            if *self.stopped.borrow() {
                break;
            }
            // Every claim leases under its own token, so a claim whose
            // lease ran out can never settle rows a later claim holds.
            claims += 1;
            let token = format!("{}:{n}:{claims}", self.config.owner);
            // The lease runs from before the claim was asked for: the
            // local deadlines below are then never later than the
            // database's.
            let started = Instant::now();
            let claim = self
                .store
                .claim(
                    &token,
                    self.config.batch,
                    self.config.lease,
                    Some((n as u32, self.config.workers as u32)),
                )
                .await;
            let claim = match claim {
                Ok(c) => {
                    db_backoff = Duration::from_millis(100);
                    c
                }
                Err(e) => {
                    warn!(worker = n, error = %e, "claim failed; retrying");
                    self.pause(db_backoff).await;
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if claim.rows.is_empty() {
                self.pause(self.config.idle_poll).await;
                continue;
            }
            let claimed_at = Instant::now();
            let m = &self.metrics;
            m.claimed
                .fetch_add(claim.rows.len() as u64, Ordering::Relaxed);
            m.reclaimed
                .fetch_add(claim.reclaimed as u64, Ordering::Relaxed);
            let rows = claim.rows.len();
            let lanes = plan::lanes(claim.rows, self.publisher.max_batch().max(1));
            let lane_count = lanes.len();
            let outcome = self.publish(lanes, started).await;
            let published_at = Instant::now();
            self.settle(outcome, &token, started).await;
            debug!(
                worker = n,
                rows,
                lanes = lane_count,
                claim_ms = claimed_at.duration_since(started).as_millis() as u64,
                publish_ms = published_at.duration_since(claimed_at).as_millis() as u64,
                settle_ms = published_at.elapsed().as_millis() as u64,
                "claim settled"
            );
        }
    }

    /// Sleeps, or returns at once when the relay is told to stop.
    async fn pause(&mut self, d: Duration) {
        let _ = tokio::time::timeout(d, self.stopped.wait_for(|s| *s)).await;
    }

    async fn publish(&self, lanes: Vec<Lane<PendingMessage>>, started: Instant) -> LaneOutcome {
        let permits = Arc::new(Semaphore::new(self.config.publish_concurrency));
        let lease = self.config.lease;
        // Never start a publish after half the lease, and give up on one
        // still running at three quarters: the rest is the margin for the
        // mark, by this host's clock.
        let deadlines = Deadlines {
            start_by: started + lease / 2,
            finish_by: started + lease * 3 / 4,
        };
        let mut set = JoinSet::new();
        let mut lane_rows: HashMap<tokio::task::Id, Vec<i64>> = HashMap::new();
        for lane in lanes {
            let publisher = self.publisher.clone();
            let permits = permits.clone();
            let ids = lane.batches.iter().flatten().map(|r| r.id).collect();
            let task = set.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("never closed");
                publish_lane(&*publisher, lane, deadlines).await
            });
            lane_rows.insert(task.id(), ids);
        }
        let mut out = LaneOutcome::default();
        while let Some(done) = set.join_next_with_id().await {
            let lane = match done {
                Ok((_, lane)) => lane,
                // A publisher that panics loses its lane, not the worker:
                // the lane's rows go back untried (one may have been
                // published: at least once).
                Err(e) => {
                    warn!(error = %e, "a publish task panicked; its rows are released");
                    LaneOutcome {
                        untried: lane_rows.remove(&e.id()).unwrap_or_default(),
                        ..LaneOutcome::default()
                    }
                }
            };
            out.absorb(lane);
        }
        out
    }

    /// Writes the outcome back. Marking sent is retried while the lease
    /// lasts; after that another relay may publish the rows again, which
    /// is the at-least-once bound, not a loss.
    async fn settle(&self, out: LaneOutcome, token: &str, started: Instant) {
        let m = &self.metrics;
        let c = &self.config;
        if !out.sent.is_empty() {
            let mut wait = Duration::from_millis(50);
            loop {
                match self.store.mark_sent(&out.sent).await {
                    Ok(()) => {
                        m.published
                            .fetch_add(out.sent.len() as u64, Ordering::Relaxed);
                        let since_claim = started.elapsed().as_millis() as i64;
                        m.lag_ms.store(out.lag_ms + since_claim, Ordering::Relaxed);
                        break;
                    }
                    Err(e) if started.elapsed() + wait < c.lease => {
                        warn!(error = %e, rows = out.sent.len(), "marking sent failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => {
                        warn!(error = %e, rows = out.sent.len(),
                            "could not mark published rows sent before the lease ran out; \
                             they will be published again");
                        break;
                    }
                }
            }
        }
        // Rows of one failed batch share their error and usually their
        // attempt count: one statement per (decision, error), not per row.
        let mut retry: BTreeMap<(Duration, String), Vec<i64>> = BTreeMap::new();
        let mut blocked: BTreeMap<Duration, Vec<String>> = BTreeMap::new();
        let mut park: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (row, err) in &out.failed {
            m.publish_failures.fetch_add(1, Ordering::Relaxed);
            match plan::after_failure(
                row.attempts,
                err.retryable,
                c.max_attempts,
                c.retry_base,
                c.retry_max,
            ) {
                AfterFailure::RetryIn(d) => {
                    debug!(id = row.id, attempts = row.attempts, error = %err, delay = ?d, "publish failed");
                    retry
                        .entry((d, err.message.clone()))
                        .or_default()
                        .push(row.id);
                    if let Some(k) = &row.ordering_key {
                        blocked.entry(d).or_default().push(k.clone());
                    }
                }
                AfterFailure::Park => {
                    warn!(id = row.id, message_id = %row.message_id(), attempts = row.attempts,
                        error = %err, "publish failed for good; row parked as failed");
                    m.parked.fetch_add(1, Ordering::Relaxed);
                    park.entry(err.message.clone()).or_default().push(row.id);
                }
            }
        }
        for ((delay, error), ids) in retry {
            if let Err(e) = self.store.retry_later(token, &ids, delay, &error).await {
                warn!(rows = ids.len(), error = %e, "could not record a failed publish; the lease will expire");
            }
        }
        for (delay, mut keys) in blocked {
            keys.sort_unstable();
            keys.dedup();
            if let Err(e) = self.store.block_keys(&keys, delay).await {
                warn!(keys = keys.len(), error = %e, "could not hold back failed keys");
            }
        }
        for (error, ids) in park {
            if let Err(e) = self.store.park(token, &ids, &error).await {
                warn!(rows = ids.len(), error = %e, "could not park rows; the lease will expire");
            }
        }
        if !out.untried.is_empty() {
            m.lease_timeouts
                .fetch_add(out.expired as u64, Ordering::Relaxed);
            if let Err(e) = self.store.release(token, &out.untried).await {
                warn!(error = %e, "could not release unpublished rows; the lease will expire");
            }
        }
    }
}

/// What publishing a lane (or, merged, a whole claim) came to.
#[derive(Default)]
struct LaneOutcome {
    sent: Vec<i64>,
    failed: Vec<(PendingMessage, Arc<PublishError>)>,
    /// Claimed but not tried: the lease was too far gone, or an earlier
    /// row of the same key failed.
    untried: Vec<i64>,
    /// Of `untried`, those left for lack of lease.
    expired: usize,
    lag_ms: i64,
}

/// When a claim's publishes must start, and finish.
#[derive(Clone, Copy)]
struct Deadlines {
    start_by: Instant,
    finish_by: Instant,
}

/// One publish call, bounded by the claim's deadline: a call still running
/// then counts as a retryable failure (its outcome is unknown, so the rows
/// may be published again: at least once).
async fn publish_within<P: Publisher>(
    publisher: &P,
    batch: &[PendingMessage],
    d: Deadlines,
) -> Result<(), PublishError> {
    let finish_by = tokio::time::Instant::from_std(d.finish_by);
    match tokio::time::timeout_at(finish_by, publisher.publish(batch)).await {
        Ok(r) => r,
        Err(_) => Err(PublishError::retryable(
            "publish still running at three quarters of the lease",
        )),
    }
}

/// Publishes a lane's batches in order; stops at the first failure, since
/// the rest of an ordered lane must not overtake it. A batch refused for
/// good is tried again row by row, so one bad message parks itself, not
/// its neighbours.
async fn publish_lane<P: Publisher>(
    publisher: &P,
    lane: Lane<PendingMessage>,
    d: Deadlines,
) -> LaneOutcome {
    let mut out = LaneOutcome::default();
    let mut rows = lane.batches.into_iter();
    'batches: for batch in rows.by_ref() {
        if Instant::now() >= d.start_by {
            out.expired += batch.len();
            out.untried.extend(batch.iter().map(|r| r.id));
            break;
        }
        let err = match publish_within(publisher, &batch, d).await {
            Ok(()) => {
                out.sent_batch(&batch);
                continue;
            }
            Err(e) => e,
        };
        if err.retryable || batch.len() == 1 {
            let e = Arc::new(err);
            out.failed.extend(batch.into_iter().map(|r| (r, e.clone())));
            break;
        }
        let mut singles = batch.into_iter();
        while let Some(row) = singles.next() {
            let one = std::slice::from_ref(&row);
            if Instant::now() >= d.start_by {
                out.expired += 1 + singles.len();
                out.untried.push(row.id);
                out.untried.extend(singles.map(|r| r.id));
                break 'batches;
            }
            match publish_within(publisher, one, d).await {
                Ok(()) => out.sent_batch(one),
                Err(e) if e.retryable => {
                    out.failed.push((row, Arc::new(e)));
                    out.untried.extend(singles.map(|r| r.id));
                    break 'batches;
                }
                // Parked: it no longer holds its key's order.
                Err(e) => out.failed.push((row, Arc::new(e))),
            }
        }
    }
    for rest in rows {
        if Instant::now() >= d.start_by {
            out.expired += rest.len();
        }
        out.untried.extend(rest.iter().map(|r| r.id));
    }
    out
}

impl LaneOutcome {
    fn absorb(&mut self, other: LaneOutcome) {
        self.sent.extend(other.sent);
        self.failed.extend(other.failed);
        self.untried.extend(other.untried);
        self.expired += other.expired;
        self.lag_ms = self.lag_ms.max(other.lag_ms);
    }

    fn sent_batch(&mut self, batch: &[PendingMessage]) {
        let oldest = batch.iter().map(|r| r.age_ms).max().unwrap_or(0);
        self.lag_ms = self.lag_ms.max(oldest);
        self.sent.extend(batch.iter().map(|r| r.id));
    }
}

async fn gauges(
    store: Store,
    metrics: Arc<RelayMetrics>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        match store.stats().await {
            Ok(s) => {
                metrics.pending.store(s.pending, Ordering::Relaxed);
                metrics
                    .oldest_pending_age_ms
                    .store(s.oldest_pending_age_ms, Ordering::Relaxed);
                metrics.failed_rows.store(s.failed, Ordering::Relaxed);
            }
            Err(e) => warn!(error = %e, "outbox stats failed"),
        }
        if tokio::time::timeout(every, stopped.wait_for(|s| *s))
            .await
            .is_ok()
        {
            break;
        }
    }
}
