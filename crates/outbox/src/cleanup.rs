//! Deleting what is no longer needed: sent outbox rows after a grace
//! period, idle per-key lock rows, inbox rows past the dedup window. Each
//! statement deletes a bounded batch, so no lock is held long. On
//! PostgreSQL a cleanup skips rows a writer holds; on MySQL a writer of a
//! key whose idle lock row is being deleted waits for that one statement.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::error::{OutboxError, Result};
use crate::metrics::{InboxMetrics, RelayMetrics};
use crate::store::Store;

/// What to delete, and how often.
#[derive(Debug, Clone)]
pub struct JanitorConfig {
    /// Delete sent outbox rows this long after sending (`None`: keep).
    /// Kept rows answer "was my message sent, and when?".
    pub keep_sent: Option<Duration>,
    /// Delete key lock rows idle this long (`None`: keep).
    pub key_idle: Option<Duration>,
    /// Delete inbox rows older than this (`None`: not this janitor's job).
    pub inbox_window: Option<Duration>,
    /// Pause between passes.
    pub interval: Duration,
    /// Rows per DELETE statement.
    pub batch: usize,
    /// Statements per pass, at most; a backlog is worked off over passes.
    pub max_batches_per_pass: usize,
}

impl JanitorConfig {
    /// The relay's: sent rows after an hour, idle keys after an hour.
    pub fn outbox() -> Self {
        JanitorConfig {
            keep_sent: Some(Duration::from_secs(3600)),
            key_idle: Some(Duration::from_secs(3600)),
            inbox_window: None,
            interval: Duration::from_secs(10),
            batch: 1000,
            max_batches_per_pass: 100,
        }
    }

    /// A consumer's: inbox rows after `window`.
    pub fn inbox(window: Duration) -> Self {
        JanitorConfig {
            keep_sent: None,
            key_idle: None,
            inbox_window: Some(window),
            ..JanitorConfig::outbox()
        }
    }

    pub fn check(&self) -> Result<()> {
        if self.interval.is_zero()
            || !(1..=10_000).contains(&self.batch)
            || self.max_batches_per_pass == 0
        {
            return Err(OutboxError::invalid(
                "cleanup config",
                format!(
                    "interval {:?} must be positive, batch {} within 1..=10000, batches per pass positive",
                    self.interval, self.batch
                ),
            ));
        }
        Ok(())
    }
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub sent: u64,
    pub keys: u64,
    pub inbox: u64,
}

/// One cleanup pass.
pub async fn sweep(store: &Store, c: &JanitorConfig) -> Result<Swept> {
    let mut out = Swept::default();
    if let Some(keep) = c.keep_sent {
        out.sent = drain(c, || store.delete_sent(keep, c.batch)).await?;
    }
    if let Some(idle) = c.key_idle {
        out.keys = drain(c, || store.delete_idle_keys(idle, c.batch)).await?;
    }
    if let Some(window) = c.inbox_window {
        out.inbox = drain(c, || store.delete_inbox(window, c.batch)).await?;
    }
    Ok(out)
}

/// Repeats a bounded delete until it comes back short, or the pass's
/// statement budget is spent.
async fn drain<F, Fut>(c: &JanitorConfig, mut step: F) -> Result<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let mut total = 0;
    for _ in 0..c.max_batches_per_pass {
        let n = step().await?;
        total += n;
        if n < c.batch as u64 {
            break;
        }
        // Let writers in between batches.
        tokio::task::yield_now().await;
    }
    Ok(total)
}

/// Sink for what a janitor deleted.
#[derive(Clone)]
pub enum Counts {
    Relay(Arc<RelayMetrics>),
    Inbox(Arc<InboxMetrics>),
}

/// A background cleanup task.
pub struct Janitor {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Janitor {
    pub fn start(
        store: Store,
        config: JanitorConfig,
        counts: impl Into<Counts>,
    ) -> Result<Janitor> {
        config.check()?;
        let counts = counts.into();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                match sweep(&store, &config).await {
                    Ok(s) => {
                        debug!(?s, "cleanup pass");
                        match &counts {
                            Counts::Relay(m) => {
                                m.cleaned.fetch_add(s.sent + s.keys, Ordering::Relaxed)
                            }
                            Counts::Inbox(m) => m.cleaned.fetch_add(s.inbox, Ordering::Relaxed),
                        };
                    }
                    Err(e) => warn!(error = %e, "cleanup pass failed"),
                }
                if tokio::time::timeout(config.interval, stopped.wait_for(|s| *s))
                    .await
                    .is_ok()
                {
                    break;
                }
            }
        });
        Ok(Janitor {
            stop,
            task: Some(task),
        })
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Janitor {
    /// A janitor dropped without `shutdown` stops too, at its next await.
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl From<Arc<RelayMetrics>> for Counts {
    fn from(m: Arc<RelayMetrics>) -> Self {
        Counts::Relay(m)
    }
}

impl From<Arc<InboxMetrics>> for Counts {
    fn from(m: Arc<InboxMetrics>) -> Self {
        Counts::Inbox(m)
    }
}
