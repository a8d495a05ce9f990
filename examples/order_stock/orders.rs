//! The order service: a local SQLite transaction per order, bracketed by a
//! transactional message.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ferry_client::{
    ClientConfig, Message, ReceivedMessage, TransactionChecker, TransactionProducer,
    TransactionResolution,
};
use sqlx::sqlite::SqlitePool;
use sqlx::Row;

use crate::random::Random;
use crate::{db, kill_self, orders_db, topic, Res, ITEMS};

/// A half message whose attempt has no order row after this long belongs
/// to an attempt that died: its local transaction takes milliseconds.
const ABANDONED_AFTER: Duration = Duration::from_secs(5);

pub async fn init(path: &Path) -> Res<()> {
    let pool = db::open(path).await?;
    sqlx::query(
        "CREATE TABLE orders (order_id TEXT PRIMARY KEY, attempt TEXT NOT NULL UNIQUE, \
         item TEXT NOT NULL, qty INTEGER NOT NULL, created_ms INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    // Attempts the checker rolled back: their local transaction must not
    // commit afterwards.
    sqlx::query("CREATE TABLE aborted (attempt TEXT PRIMARY KEY)")
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

/// order id → (attempt, item, qty)
pub async fn all(path: &Path) -> Res<BTreeMap<String, (String, String, i64)>> {
    let pool = db::open(path).await?;
    let rows = sqlx::query("SELECT order_id, attempt, item, qty FROM orders")
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    Ok(rows
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect())
}

/// Answers check-backs from the orders table.
struct OrderChecker {
    pool: SqlitePool,
}

impl OrderChecker {
    async fn decide(&self, m: &ReceivedMessage) -> Res<TransactionResolution> {
        let Some(attempt) = m.properties.get("attempt") else {
            return Ok(TransactionResolution::Rollback);
        };
        let mut tx = self.pool.begin().await?;
        let committed: Option<String> =
            sqlx::query_scalar("SELECT order_id FROM orders WHERE attempt = ?")
                .bind(attempt)
                .fetch_optional(&mut *tx)
                .await?;
        if committed.is_some() {
            return Ok(TransactionResolution::Commit);
        }
        let age = SystemTime::now()
            .duration_since(m.born_time)
            .unwrap_or_default();
        if age < ABANDONED_AFTER {
            return Ok(TransactionResolution::Unknown);
        }
        // Decided here, recorded in the same database the order would be:
        // the attempt can never commit later.
        sqlx::query("INSERT OR IGNORE INTO aborted (attempt) VALUES (?)")
            .bind(attempt)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(TransactionResolution::Rollback)
    }
}

impl TransactionChecker for OrderChecker {
    async fn check(&self, m: &ReceivedMessage) -> TransactionResolution {
        match self.decide(m).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("order service: check of {} failed: {e}", m.message_id);
                TransactionResolution::Unknown
            }
        }
    }
}

/// The order's local transaction: the row, unless the checker already
/// gave this attempt up or the order was placed by an earlier attempt.
async fn write_order(
    pool: &SqlitePool,
    order: &str,
    attempt: &str,
    item: &str,
    qty: i64,
) -> Res<bool> {
    let mut tx = pool.begin().await?;
    let aborted: Option<String> =
        sqlx::query_scalar("SELECT attempt FROM aborted WHERE attempt = ?")
            .bind(attempt)
            .fetch_optional(&mut *tx)
            .await?;
    if aborted.is_some() {
        return Ok(false);
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let inserted = sqlx::query(
        "INSERT OR IGNORE INTO orders (order_id, attempt, item, qty, created_ms) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(order)
    .bind(attempt)
    .bind(item)
    .bind(qty)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(inserted == 1)
}

/// What one run of the order service does.
pub struct Plan {
    pub orders: u32,
    /// Chance of killing itself at each dangerous point.
    pub crash: f64,
    pub seed: u64,
    /// Pause between orders.
    pub pace: Duration,
}

pub async fn run(server: &str, dir: &Path, run: &str, plan: Plan) -> Res<()> {
    let topic = topic(run);
    let Plan {
        orders,
        crash,
        seed,
        pace,
    } = plan;
    let pool = db::open(&orders_db(dir)).await?;
    let checker = OrderChecker { pool: pool.clone() };
    let producer = TransactionProducer::builder(ClientConfig::new(server), checker)
        .topics([topic.clone()])
        .start()
        .await?;
    let mut rng = Random::new(seed);
    let mut i = 0;
    while i < orders {
        let order = format!("order-{i:05}");
        let exists: Option<String> =
            sqlx::query_scalar("SELECT order_id FROM orders WHERE order_id = ?")
                .bind(&order)
                .fetch_optional(&pool)
                .await?;
        if exists.is_some() {
            i += 1;
            continue;
        }
        let (item, _) = ITEMS[i as usize % ITEMS.len()];
        let qty = 1 + i64::from(i % 5);
        let attempt = format!("{order}/{:016x}", rng.next());
        let mut tx = producer.begin().with_check_after(Duration::from_secs(1));
        let half = Message::new(topic.clone(), format!("{order}: {qty} × {item}"))
            .with_key(order.clone())
            .with_property("attempt", attempt.clone())
            .with_property("item", item)
            .with_property("qty", qty.to_string());
        if let Err(e) = tx.send(half).await {
            eprintln!("order service: half message for {order} failed ({e}); trying again");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if rng.chance(crash) {
            kill_self(); // half stored, no local transaction: rolled back on check
        }
        let placed = write_order(&pool, &order, &attempt, item, qty).await?;
        if rng.chance(crash) {
            kill_self(); // local commit done, no EndTransaction: committed on check
        }
        let end = if placed {
            tx.commit().await
        } else {
            tx.rollback().await
        };
        if let Err(e) = end {
            eprintln!("order service: ending the transaction of {order} failed ({e}); the check-back decides");
        }
        i += 1;
        tokio::time::sleep(pace).await;
    }
    eprintln!("order service: all {orders} orders placed; answering check-backs until stopped");
    std::future::pending::<()>().await;
    Ok(())
}
