//! Writing an outbox row inside the caller's transaction: the business row
//! and the message commit together or not at all.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sqlx::{Database, Encode, Executor, IntoArguments, Transaction, Type};

use crate::dialect::Dialect;
use crate::error::Result;
use crate::message::{limits, OutboxMessage};
use crate::metrics::OutboxMetrics;

/// The writer's side of the outbox. Cheap to clone; holds no connection:
/// every write goes through the caller's transaction.
#[derive(Debug, Clone)]
pub struct Outbox {
    max_body: usize,
    metrics: Arc<OutboxMetrics>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new()
    }
}

impl Outbox {
    pub fn new() -> Self {
        Outbox {
            max_body: limits::MAX_BODY,
            metrics: Arc::default(),
        }
    }

    /// Refuses bodies over `bytes` (default 4 MiB, Ferry's default limit).
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "max body must be positive");
        self.max_body = bytes;
        self
    }

    /// Counters of this writer (messages enqueued).
    pub fn metrics(&self) -> &Arc<OutboxMetrics> {
        &self.metrics
    }

    /// Writes `message` into the outbox inside `tx`; returns its message
    /// id, which consumers will see. Nothing is published until `tx`
    /// commits; a rollback drops the message with the business change.
    ///
    /// With an ordering key (or message group), this takes the key's lock
    /// row until `tx` ends: writers of one key queue behind each other so
    /// that their rows' ids follow commit order. Writers of different keys
    /// do not wait for each other. Enqueue several keys in one transaction
    /// in a fixed order, or two such transactions may deadlock (the
    /// database aborts one).
    pub async fn enqueue<DB>(
        &self,
        tx: &mut Transaction<'_, DB>,
        message: &OutboxMessage,
    ) -> Result<String>
    where
        DB: Database,
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
        for<'q> String: Encode<'q, DB> + Type<DB>,
        for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
        for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
        for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    {
        message.check(self.max_body)?;
        let dialect = Dialect::from_driver_name(DB::NAME);
        if let Some(key) = message.effective_ordering_key() {
            sqlx::query(&dialect.lock_key())
                .bind(key.to_string())
                .execute(&mut **tx)
                .await?;
        }
        let id = message
            .message_id
            .clone()
            .unwrap_or_else(ferry_client::new_message_id);
        sqlx::query(&dialect.insert_row())
            .bind(id.clone())
            .bind(message.topic.clone())
            .bind(message.tag.clone())
            .bind(message.keys_json())
            .bind(message.properties_json())
            .bind(message.message_group.clone())
            .bind(message.effective_ordering_key().map(str::to_string))
            .bind(message.deliver_at_ms)
            .bind(message.body.to_vec())
            .execute(&mut **tx)
            .await?;
        self.metrics.enqueued.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }
}
