//! The idempotent consumer: a consumed message's id is recorded in the
//! consumer's own transaction, next to the writes it causes. A redelivery
//! (the broker's at-least-once, or an outbox relay re-publishing after a
//! crash) finds the id and is skipped: the effect happens exactly once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Database, Encode, Executor, IntoArguments, Transaction, Type};

use crate::cleanup::{Janitor, JanitorConfig};
use crate::dialect::Dialect;
use crate::error::{OutboxError, Result};
use crate::message::limits;
use crate::metrics::InboxMetrics;
use crate::store::Store;

/// What an inbox handler returns.
pub type HandlerFuture<'c, T, E> =
    Pin<Box<dyn Future<Output = std::result::Result<T, E>> + Send + 'c>>;

/// How a message fared in [`Inbox::process_once`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed<T> {
    /// First time seen: the handler ran; its writes and the inbox row
    /// commit together with the transaction.
    Done(T),
    /// Seen before (within the dedup window): the handler did not run.
    Duplicate,
}

impl<T> Processed<T> {
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Processed::Duplicate)
    }
}

/// The consumer's side. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Inbox {
    window: Duration,
    metrics: Arc<InboxMetrics>,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox::new()
    }
}

/// How long a consumed id is remembered by default. A redelivery later
/// than this runs the handler again, so it must exceed the longest time a
/// message can be redelivered (the broker's retries, a relay's outage).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

impl Inbox {
    pub fn new() -> Self {
        Inbox {
            window: DEFAULT_WINDOW,
            metrics: Arc::default(),
        }
    }

    /// Remember consumed ids this long (see [`DEFAULT_WINDOW`]).
    pub fn with_window(mut self, window: Duration) -> Self {
        assert!(!window.is_zero(), "a dedup window must be positive");
        self.window = window;
        self
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Starts the background cleanup that makes the window true: inbox
    /// rows older than it are deleted in bounded batches, counted in this
    /// inbox's metrics. `store` is the consumer's database.
    pub fn start_cleanup(&self, store: Store) -> Result<Janitor> {
        Janitor::start(
            store,
            JanitorConfig::inbox(self.window),
            self.metrics.clone(),
        )
    }

    pub fn metrics(&self) -> &Arc<InboxMetrics> {
        &self.metrics
    }

    /// Runs `handler` in `tx` unless `consumer` has already processed
    /// `message_id`. The caller commits `tx`; until then a concurrent
    /// delivery of the same id waits on the inbox row, and sees a duplicate
    /// once this one commits (or runs, if this one rolls back).
    ///
    /// A handler error is returned as is; roll the transaction back then,
    /// and the message stays unprocessed.
    ///
    /// The handler returns a boxed future (`|tx| Box::pin(async move {
    /// ... })`), the shape sqlx's own `Connection::transaction` takes: it
    /// keeps the whole call `Send`, so it runs inside `tokio::spawn`.
    pub async fn process_once<'t, DB, T, E, F>(
        &self,
        tx: &mut Transaction<'t, DB>,
        consumer: &str,
        message_id: &str,
        handler: F,
    ) -> std::result::Result<Processed<T>, E>
    where
        F: for<'c> FnOnce(&'c mut Transaction<'t, DB>) -> HandlerFuture<'c, T, E>,
        E: From<OutboxError>,
        DB: Database,
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
        for<'q> String: Encode<'q, DB> + Type<DB>,
    {
        if self.record(tx, consumer, message_id).await? {
            let out = handler(tx).await?;
            self.metrics.processed.fetch_add(1, Ordering::Relaxed);
            Ok(Processed::Done(out))
        } else {
            Ok(Processed::Duplicate)
        }
    }

    /// The lower-level step: records `message_id` for `consumer` in `tx`.
    /// `true` when it is new, `false` for a duplicate.
    pub async fn record<DB>(
        &self,
        tx: &mut Transaction<'_, DB>,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool>
    where
        DB: Database,
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
        for<'q> String: Encode<'q, DB> + Type<DB>,
    {
        check("consumer", consumer, limits::MAX_NAME)?;
        check("message id", message_id, ferry_client::MAX_MESSAGE_ID_LEN)?;
        if !message_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(OutboxError::invalid(
                "message id",
                format!("{message_id:?}: printable ASCII without blanks"),
            ));
        }
        let dialect = Dialect::from_driver_name(DB::NAME)?;
        let sql = dialect.inbox_insert();
        let query = sqlx::query(&sql)
            .bind(consumer.to_string())
            .bind(message_id.to_string());
        let fresh = match dialect {
            // ON CONFLICT DO NOTHING RETURNING: a row back means inserted.
            Dialect::Postgres | Dialect::Sqlite => query.fetch_optional(&mut **tx).await?.is_some(),
            // MySQL: the duplicate-key error is the answer, and it aborts
            // only the statement, not the transaction.
            Dialect::MySql => match query.execute(&mut **tx).await {
                Ok(_) => true,
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => false,
                Err(e) => return Err(e.into()),
            },
        };
        if !fresh {
            self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        Ok(fresh)
    }
}

/// Also no blanks at either end: MySQL's `utf8mb4_bin` ignores trailing
/// spaces when comparing, so "x" and "x " would be one consumer there.
fn check(what: &'static str, value: &str, max: usize) -> Result<()> {
    if value.is_empty()
        || value.len() > max
        || value.chars().any(char::is_control)
        || value.trim() != value
    {
        return Err(OutboxError::invalid(
            what,
            format!("{value:?}: 1 to {max} bytes, no control characters, no blanks at the ends"),
        ));
    }
    Ok(())
}
