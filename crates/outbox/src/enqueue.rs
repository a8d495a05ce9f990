//! Writing an outbox row inside the caller's transaction: the business row
//! and the message commit together or not at all.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::collections::BTreeSet;

use sqlx::{Database, Encode, Executor, IntoArguments, Transaction, Type};

use crate::dialect::Dialect;
use crate::error::Result;
use crate::message::{limits, OutboxMessage};
use crate::metrics::OutboxMetrics;

/// Bodies per multi-row insert, at most (a single larger body goes
/// alone): under MariaDB's default 16 MiB `max_allowed_packet`.
pub const MAX_INSERT_BYTES: usize = 8 * 1024 * 1024;

/// Where the insert starting at `start` ends: at most
/// [`MAX_ROWS_PER_INSERT`] rows and [`MAX_INSERT_BYTES`] of bodies, and
/// always at least one row.
fn insert_end(messages: &[OutboxMessage], start: usize) -> usize {
    let mut bytes = 0;
    let mut end = start;
    while end < messages.len() && end - start < MAX_ROWS_PER_INSERT {
        let len = messages[end].message.body.len();
        if end > start && bytes + len > MAX_INSERT_BYTES {
            break;
        }
        bytes += len;
        end += 1;
    }
    end
}

/// Slots ordering keys hash into. A relay's workers split the slots
/// between them, so each works on keys no other worker of it touches.
pub const KEY_SLOTS: u32 = 1024;

/// The slot of an ordering key: stable across processes and releases
/// (CRC-32 of the key's bytes).
pub fn key_slot(key: &str) -> i64 {
    i64::from(crc32fast::hash(key.as_bytes()) % KEY_SLOTS)
}

/// Rows per multi-row insert: 10 binds each keeps a statement well under
/// every database's bind limit (SQLite's is the lowest, 32 766).
pub const MAX_ROWS_PER_INSERT: usize = 500;

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
        let mut ids = self
            .enqueue_batch(tx, std::slice::from_ref(message))
            .await?;
        Ok(ids.pop().expect("one id per message"))
    }

    /// Writes several messages in `tx`, in slice order (which is their
    /// order within an ordering key), with one multi-row insert per
    /// [`MAX_ROWS_PER_INSERT`] rows. All are checked before anything is
    /// written. The ordering keys among them are locked once each, in
    /// sorted order, so two batches sharing keys never deadlock on them.
    pub async fn enqueue_batch<DB>(
        &self,
        tx: &mut Transaction<'_, DB>,
        messages: &[OutboxMessage],
    ) -> Result<Vec<String>>
    where
        DB: Database,
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
        for<'q> String: Encode<'q, DB> + Type<DB>,
        for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
        for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
        for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    {
        for m in messages {
            m.check(self.max_body)?;
        }
        let dialect = Dialect::from_driver_name(DB::NAME)?;
        let keys: BTreeSet<&str> = messages
            .iter()
            .filter_map(OutboxMessage::effective_ordering_key)
            .collect();
        let lock = dialect.lock_key();
        for key in keys {
            sqlx::query(&lock)
                .bind(key.to_string())
                .execute(&mut **tx)
                .await?;
        }
        let ids: Vec<String> = messages
            .iter()
            .map(|m| {
                m.message
                    .message_id
                    .clone()
                    .unwrap_or_else(ferry_client::new_message_id)
            })
            .collect();
        let mut start = 0;
        while start < messages.len() {
            let end = insert_end(messages, start);
            let (chunk, chunk_ids) = (&messages[start..end], &ids[start..end]);
            let sql = dialect.insert_rows(chunk.len());
            let mut q = sqlx::query(&sql);
            for (m, id) in chunk.iter().zip(chunk_ids) {
                q = q
                    .bind(id.clone())
                    .bind(m.message.topic.clone())
                    .bind(m.message.tag.clone())
                    .bind(m.keys_json())
                    .bind(m.properties_json())
                    .bind(m.message.message_group.clone())
                    .bind(m.effective_ordering_key().map(str::to_string))
                    .bind(m.effective_ordering_key().map(key_slot))
                    .bind(m.deliver_at_ms())
                    .bind(m.message.body.to_vec());
            }
            q.execute(&mut **tx).await?;
            start = end;
        }
        self.metrics
            .enqueued
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_split_by_rows_and_by_bytes() {
        let small: Vec<OutboxMessage> = (0..1200).map(|_| OutboxMessage::new("t", "x")).collect();
        assert_eq!(insert_end(&small, 0), 500);
        assert_eq!(insert_end(&small, 1000), 1200);
        let big = vec![OutboxMessage::new("t", vec![0u8; 3 * 1024 * 1024]); 5];
        assert_eq!(insert_end(&big, 0), 2);
        assert_eq!(insert_end(&big, 4), 5);
        let huge = vec![OutboxMessage::new("t", vec![0u8; MAX_INSERT_BYTES + 1]); 2];
        assert_eq!(insert_end(&huge, 0), 1, "one oversized body still goes");
    }
}
