//! The relay's and the janitors' statements, over the library's own pool.
//!
//! The pool is sqlx's `Any` driver: one code path for three databases,
//! with the SQL differences kept in [`crate::dialect`]. (The writer's and
//! consumer's functions use the caller's native transaction instead.)

use std::collections::HashMap;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Executor as _, Row as _};

use crate::dialect::Dialect;
use crate::error::{OutboxError, Result};
use crate::message::PendingMessage;
use crate::plan;
use crate::schema;

/// Rows one claim may take; bounds the `IN` lists. The memory a claim
/// holds is this many rows times their bodies: lower the batch for large
/// bodies (1000 rows of 4 MiB is 4 GiB).
pub const MAX_CLAIM: usize = 2_000;

/// Longest lease token (`lease_owner`).
pub const MAX_OWNER: usize = 128;

/// A connection pool to the outbox's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

/// What a claim returned.
#[derive(Debug)]
pub struct Claim {
    pub rows: Vec<PendingMessage>,
    /// Rows that had been tried before (a crash, or a failed publish).
    pub reclaimed: usize,
}

/// The pending-side gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub pending: i64,
    pub oldest_pending_age_ms: i64,
    pub failed: i64,
}

/// A parked row, for operators.
#[derive(Debug, Clone)]
pub struct FailedRow {
    pub id: i64,
    pub message_id: String,
    pub topic: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

const CLAIM_COLUMNS: &str = "id, message_id, topic, tag, keys_json, properties_json, \
    message_group, ordering_key, deliver_at_ms, body, created_ms, attempts";

impl Store {
    /// Connects (`postgres://`, `mysql://`, `mariadb://` or `sqlite://`)
    /// and brings the schema up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        let store = Store::open(url, max_connections).await?;
        schema::apply(&store.pool, store.dialect).await?;
        Ok(store)
    }

    /// Connects without touching the schema: for a monitoring account
    /// that may read but not create tables.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store> {
        let dialect = Dialect::from_url(url)?;
        sqlx::any::install_default_drivers();
        let url = match dialect {
            // sqlx's MySQL driver only knows the mysql:// scheme.
            Dialect::MySql if url.starts_with("mariadb:") => {
                format!("mysql:{}", &url["mariadb:".len()..])
            }
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::MySql {
                        // No gap locks: a claim scanning the end of the
                        // index must not block writers inserting there.
                        conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(Store { pool, dialect })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Leases up to `max` publishable rows to `owner` for `lease`, by the
    /// database's clock. Rows under another live lease, rows locked by a
    /// concurrent claim, and rows of a key whose earlier row is held
    /// elsewhere are left alone. Never a cursor: a row that commits late
    /// is pending like any other and is found by the next claim.
    ///
    /// `share` = `(n, of)`: take only keyed rows whose key slot is `n`
    /// modulo `of` (unkeyed rows are anyone's). A relay's workers pass
    /// their index and count, so they hold disjoint keys and do not block
    /// each other's keys; without it, one claim spanning every key would
    /// leave the other workers nothing they may publish.
    pub async fn claim(
        &self,
        owner: &str,
        max: usize,
        lease: Duration,
        share: Option<(u32, u32)>,
    ) -> Result<Claim> {
        if !(1..=MAX_CLAIM).contains(&max) {
            return Err(OutboxError::invalid(
                "claim",
                format!("{max} rows; 1 to {MAX_CLAIM}"),
            ));
        }
        if owner.is_empty() || owner.len() > MAX_OWNER {
            return Err(OutboxError::invalid(
                "lease owner",
                format!("{owner:?}: 1 to {MAX_OWNER} bytes"),
            ));
        }
        let d = self.dialect;
        let slots = match share {
            Some((n, of)) if of > 1 && n < of => {
                format!(" AND (o.ordering_key IS NULL OR o.key_slot % {of} = {n})")
            }
            Some((n, of)) if n >= of => {
                return Err(OutboxError::invalid("claim share", format!("{n} of {of}")));
            }
            _ => String::new(),
        };
        let mut tx = ManualTx::begin(&self.pool, d).await?;
        let now = d.now_ms();
        // A keyed row whose key waits out a retry delay cannot go now:
        // leave it out of the scan (one primary-key probe of the key's lock
        // row), so such rows never fill the LIMIT and starve the rows that
        // could go. Keys held by a claim in flight are caught by the
        // blockers pass below; those holds are short.
        let select = format!(
            "SELECT {CLAIM_COLUMNS}, {now} - created_ms AS age_ms FROM ferry_outbox o \
             WHERE o.state = {pending} \
             AND (o.lease_until_ms IS NULL OR o.lease_until_ms <= {now}){slots} \
             AND (o.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM ferry_outbox_keys k \
                  WHERE k.ordering_key = o.ordering_key AND k.blocked_until_ms > {now})) \
             ORDER BY o.id LIMIT {}{}",
            d.ph(1),
            d.skip_locked(),
            pending = schema::PENDING,
        );
        let rows = sqlx::query(&select)
            .bind(max as i64)
            .fetch_all(tx.conn())
            .await?;
        // A row that cannot be read back is parked with the reason, so one
        // damaged row never stops every claim that meets it.
        let mut candidates = Vec::with_capacity(rows.len());
        for row in &rows {
            match decode(row) {
                Ok(m) => candidates.push(m),
                Err(e) => {
                    let id: i64 = row.try_get("id")?;
                    tracing::error!(id, error = %e, "unreadable outbox row parked as failed");
                    let sql = format!(
                        "UPDATE ferry_outbox SET state = {}, last_error = {} WHERE id = {}",
                        schema::FAILED,
                        d.ph(1),
                        d.ph(2)
                    );
                    sqlx::query(&sql)
                        .bind(clip(&e.to_string()))
                        .bind(id)
                        .execute(tx.conn())
                        .await?;
                }
            }
        }
        let blockers = self.blockers(&mut tx, &candidates).await?;
        let mut kept = plan::publishable(candidates, &blockers);
        if kept.is_empty() {
            tx.commit().await?;
            return Ok(Claim {
                rows: kept,
                reclaimed: 0,
            });
        }
        let update = format!(
            "UPDATE ferry_outbox SET lease_owner = {}, lease_until_ms = {now} + {}, \
             attempts = attempts + 1 WHERE id IN {}",
            d.ph(1),
            d.ph(2),
            d.in_list(3, kept.len())
        );
        let mut q = sqlx::query(&update)
            .bind(owner.to_string())
            .bind(lease.as_millis() as i64);
        for r in &kept {
            q = q.bind(r.id);
        }
        q.execute(tx.conn()).await?;
        tx.commit().await?;
        let mut reclaimed = 0;
        for r in &mut kept {
            if r.attempts > 0 {
                reclaimed += 1;
            }
            r.attempts = r.attempts.saturating_add(1);
        }
        Ok(Claim {
            rows: kept,
            reclaimed,
        })
    }

    /// For each ordering key among the candidates: the smallest id of a
    /// pending row of that key that is not a candidate and lies below the
    /// last candidate.
    async fn blockers(
        &self,
        tx: &mut ManualTx,
        candidates: &[PendingMessage],
    ) -> Result<HashMap<String, i64>> {
        let d = self.dialect;
        let mut keys: Vec<&str> = candidates
            .iter()
            .filter_map(|r| r.ordering_key.as_deref())
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        keys.sort_unstable();
        keys.dedup();
        let keyed: Vec<i64> = candidates
            .iter()
            .filter(|r| r.ordering_key.is_some())
            .map(|r| r.id)
            .collect();
        let last = candidates.last().map_or(0, |r| r.id);
        let sql = format!(
            "SELECT ordering_key, MIN(id) AS blocker FROM ferry_outbox \
             WHERE state = {} AND id < {} AND ordering_key IN {} AND id NOT IN {} \
             GROUP BY ordering_key",
            schema::PENDING,
            d.ph(1),
            d.in_list(2, keys.len()),
            d.in_list(2 + keys.len(), keyed.len())
        );
        let mut q = sqlx::query(&sql).bind(last);
        for k in &keys {
            q = q.bind(k.to_string());
        }
        for id in &keyed {
            q = q.bind(*id);
        }
        let mut out = HashMap::new();
        for row in q.fetch_all(tx.conn()).await? {
            out.insert(row.try_get("ordering_key")?, row.try_get("blocker")?);
        }
        Ok(out)
    }

    /// Marks published rows sent. Unconditional on the lease: a row that
    /// was published is sent, whoever holds it now.
    pub async fn mark_sent(&self, ids: &[i64]) -> Result<()> {
        let d = self.dialect;
        self.update_ids(
            &format!(
                "UPDATE ferry_outbox SET state = {}, sent_ms = {}, lease_owner = NULL, \
                 lease_until_ms = NULL, last_error = NULL WHERE state = {} AND id IN",
                schema::SENT,
                d.now_ms(),
                schema::PENDING
            ),
            &[],
            ids,
        )
        .await
    }

    /// Lets rows go again after `delay`, noting why they failed — if they
    /// are still held under `owner` (the claim's lease token): a claim
    /// whose lease ran out must not touch rows another relay now holds.
    pub async fn retry_later(
        &self,
        owner: &str,
        ids: &[i64],
        delay: Duration,
        error: &str,
    ) -> Result<()> {
        let d = self.dialect;
        self.update_ids(
            &format!(
                "UPDATE ferry_outbox SET lease_owner = NULL, lease_until_ms = {} + {}, \
                 last_error = {} WHERE lease_owner = {} AND state = {} AND id IN",
                d.now_ms(),
                d.ph(1),
                d.ph(2),
                d.ph(3),
                schema::PENDING
            ),
            &[
                Bind::I64(delay.as_millis() as i64),
                Bind::Text(clip(error)),
                Bind::Text(owner.to_string()),
            ],
            ids,
        )
        .await
    }

    /// Holds `keys` back for `delay`: their first row failed and waits,
    /// so no claim should take (and then drop) the rows behind it.
    pub async fn block_keys(&self, keys: &[String], delay: Duration) -> Result<()> {
        let d = self.dialect;
        for chunk in keys.chunks(MAX_CLAIM) {
            let sql = format!(
                "UPDATE ferry_outbox_keys SET blocked_until_ms = {} + {} WHERE ordering_key IN {}",
                d.now_ms(),
                d.ph(1),
                d.in_list(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(delay.as_millis() as i64);
            for k in chunk {
                q = q.bind(k.clone());
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Gives up on rows still held under `owner`: they stay as `failed`
    /// until requeued.
    pub async fn park(&self, owner: &str, ids: &[i64], error: &str) -> Result<()> {
        let d = self.dialect;
        self.update_ids(
            &format!(
                "UPDATE ferry_outbox SET state = {}, lease_owner = NULL, lease_until_ms = NULL, \
                 last_error = {} WHERE lease_owner = {} AND state = {} AND id IN",
                schema::FAILED,
                d.ph(1),
                d.ph(2),
                schema::PENDING
            ),
            &[Bind::Text(clip(error)), Bind::Text(owner.to_string())],
            ids,
        )
        .await
    }

    /// Hands back rows claimed under `owner` but never tried (shutdown,
    /// lease nearly over, an earlier row of the key failed); the claim's
    /// attempt is taken back, since none was made.
    pub async fn release(&self, owner: &str, ids: &[i64]) -> Result<()> {
        self.update_ids(
            &format!(
                "UPDATE ferry_outbox SET lease_owner = NULL, lease_until_ms = NULL, \
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
                 WHERE lease_owner = {} AND state = {} AND id IN",
                self.dialect.ph(1),
                schema::PENDING
            ),
            &[Bind::Text(owner.to_string())],
            ids,
        )
        .await
    }

    /// `prefix` ends in `id IN`; `binds` fill its placeholders 1..; ids
    /// follow, in chunks that keep statements short.
    async fn update_ids(&self, prefix: &str, binds: &[Bind], ids: &[i64]) -> Result<()> {
        for chunk in ids.chunks(MAX_CLAIM) {
            let sql = format!(
                "{prefix} {}",
                self.dialect.in_list(binds.len() + 1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for b in binds {
                q = match b {
                    Bind::I64(v) => q.bind(*v),
                    Bind::Text(v) => q.bind(v.clone()),
                };
            }
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// The gauges: pending rows, the oldest one's age, parked rows. Two
    /// counts over partial indexes; sent rows are not counted here (a
    /// relay refreshes these every few seconds): see [`Store::sent_kept`].
    pub async fn stats(&self) -> Result<Stats> {
        let d = self.dialect;
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS n, MIN(created_ms) AS oldest, {} AS now_ms \
             FROM ferry_outbox WHERE state = {}",
            d.now_ms(),
            schema::PENDING
        ))
        .fetch_one(&self.pool)
        .await?;
        let pending: i64 = row.try_get("n")?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        let now: i64 = row.try_get("now_ms")?;
        Ok(Stats {
            pending,
            oldest_pending_age_ms: oldest.map_or(0, |o| (now - o).max(0)),
            failed: self.count(schema::FAILED).await?,
        })
    }

    /// Sent rows waiting for cleanup (for operators; can be many).
    pub async fn sent_kept(&self) -> Result<i64> {
        self.count(schema::SENT).await
    }

    async fn count(&self, state: i64) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) AS n FROM ferry_outbox WHERE state = {state}");
        Ok(sqlx::query(&sql)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    /// Deletes up to `batch` sent rows older than `keep`; returns how many.
    pub async fn delete_sent(&self, keep: Duration, batch: usize) -> Result<u64> {
        let d = self.dialect;
        let cond = format!(
            "state = {} AND sent_ms < {} - {}",
            schema::SENT,
            d.now_ms(),
            d.ph(1)
        );
        self.delete(
            &d.delete_batch("ferry_outbox", &["id"], "id", &cond),
            keep,
            batch,
        )
        .await
    }

    /// Deletes up to `batch` key lock rows untouched for `idle`. Safe while
    /// writers run: a writer holding a key's lock keeps `locked_ms` fresh,
    /// and a deleted key row is simply inserted again by the next writer.
    pub async fn delete_idle_keys(&self, idle: Duration, batch: usize) -> Result<u64> {
        let d = self.dialect;
        let cond = format!("locked_ms < {} - {}", d.now_ms(), d.ph(1));
        let sql = d.delete_batch(
            "ferry_outbox_keys",
            &["ordering_key"],
            "ordering_key",
            &cond,
        );
        self.delete(&sql, idle, batch).await
    }

    /// Deletes up to `batch` inbox rows older than `window`.
    pub async fn delete_inbox(&self, window: Duration, batch: usize) -> Result<u64> {
        let d = self.dialect;
        let cond = format!("received_ms < {} - {}", d.now_ms(), d.ph(1));
        let sql = d.delete_batch(
            "ferry_inbox",
            &["consumer", "message_id"],
            "received_ms",
            &cond,
        );
        self.delete(&sql, window, batch).await
    }

    async fn delete(&self, sql: &str, age: Duration, batch: usize) -> Result<u64> {
        if batch == 0 {
            return Err(OutboxError::invalid("cleanup batch", "must be positive"));
        }
        let done = sqlx::query(sql)
            .bind(age.as_millis() as i64)
            .bind(batch as i64)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Parked rows, oldest first.
    pub async fn failed(&self, limit: usize) -> Result<Vec<FailedRow>> {
        let sql = format!(
            "SELECT id, message_id, topic, attempts, last_error FROM ferry_outbox \
             WHERE state = {} ORDER BY id LIMIT {}",
            schema::FAILED,
            self.dialect.ph(1)
        );
        let rows = sqlx::query(&sql)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(FailedRow {
                    id: r.try_get("id")?,
                    message_id: r.try_get("message_id")?,
                    topic: r.try_get("topic")?,
                    attempts: r.try_get("attempts")?,
                    last_error: text(r, "last_error")?,
                })
            })
            .collect()
    }

    /// Puts parked rows back to pending with a fresh attempt count. They
    /// are published in id order with everything else pending; a parked
    /// row of an ordering key lands after rows of its key published since.
    pub async fn requeue_failed(&self) -> Result<u64> {
        let sql = format!(
            "UPDATE ferry_outbox SET state = {}, attempts = 0, lease_owner = NULL, \
             lease_until_ms = NULL WHERE state = {}",
            schema::PENDING,
            schema::FAILED
        );
        Ok(sqlx::query(&sql).execute(&self.pool).await?.rows_affected())
    }
}

enum Bind {
    I64(i64),
    Text(String),
}

/// Error texts are kept short; the log has the rest.
fn clip(s: &str) -> String {
    const MAX: usize = 1000;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A TEXT column. MySQL reports TEXT as a BLOB type with a character set,
/// and sqlx's `Any` driver then hands over bytes, not a string.
fn text(row: &AnyRow, column: &str) -> Result<Option<String>> {
    match row.try_get::<Option<String>, _>(column) {
        Ok(v) => Ok(v),
        Err(_) => {
            let bytes: Option<Vec<u8>> = row.try_get(column)?;
            bytes
                .map(|b| {
                    String::from_utf8(b).map_err(|e| OutboxError::CorruptRow {
                        id: row.try_get("id").unwrap_or(-1),
                        why: format!("{column} is not UTF-8: {e}"),
                    })
                })
                .transpose()
        }
    }
}

fn decode(row: &AnyRow) -> Result<PendingMessage> {
    let id: i64 = row.try_get("id")?;
    let attempts: i64 = row.try_get("attempts")?;
    let body: Vec<u8> = row.try_get("body")?;
    let mut message = ferry_client::Message::new(row.try_get::<String, _>("topic")?, body)
        .with_message_id(row.try_get::<String, _>("message_id")?)
        .with_keys(PendingMessage::parse_json::<Vec<String>>(
            id,
            "keys_json",
            text(row, "keys_json")?,
        )?);
    message.tag = row.try_get("tag")?;
    message.properties =
        PendingMessage::parse_json(id, "properties_json", text(row, "properties_json")?)?;
    message.message_group = row.try_get("message_group")?;
    message.delivery_time = PendingMessage::delivery_time(row.try_get("deliver_at_ms")?);
    Ok(PendingMessage {
        id,
        message,
        ordering_key: row.try_get("ordering_key")?,
        created_ms: row.try_get("created_ms")?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        // MySQL fixes "now" at the statement's start, yet a locking read
        // sees rows committed after it: a just-written row may look
        // younger than zero.
        age_ms: row.try_get::<i64, _>("age_ms")?.max(0),
    })
}

/// A transaction opened with the dialect's own `BEGIN` (SQLite needs
/// `BEGIN IMMEDIATE`, which sqlx's `begin()` cannot say). A connection
/// dropped mid-transaction is closed, never returned to the pool with a
/// transaction open.
struct ManualTx {
    conn: Option<PoolConnection<Any>>,
}

impl ManualTx {
    async fn begin(pool: &AnyPool, d: Dialect) -> Result<ManualTx> {
        // Guarded before BEGIN is sent: a future cancelled mid-BEGIN still
        // closes the connection instead of pooling an open transaction.
        let mut tx = ManualTx {
            conn: Some(pool.acquire().await?),
        };
        tx.conn().execute(d.begin()).await?;
        Ok(tx)
    }

    fn conn(&mut self) -> &mut sqlx::AnyConnection {
        self.conn.as_mut().expect("transaction still open")
    }

    async fn commit(mut self) -> Result<()> {
        // Still guarded while COMMIT runs; released to the pool only after.
        self.conn().execute("COMMIT").await?;
        self.conn.take();
        Ok(())
    }
}

impl Drop for ManualTx {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // Closing ends the transaction on the server (a rollback).
            conn.close_on_drop();
        }
    }
}
