//! The stock service: an idempotent consumer. The processed-order row and
//! the stock change commit together, so a redelivery changes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ferry_client::{ClientConfig, ConsumeResult, FilterExpression, PushConsumer, ReceivedMessage};
use sqlx::sqlite::SqlitePool;
use sqlx::Row;

use crate::random::{seed_from_clock, Random};
use crate::{db, group, kill_self, stock_db, topic, Res, ITEMS};

/// Chance of dying right after the database commit, before the ack: the
/// message comes again and must be recognised.
const CRASH_BEFORE_ACK: f64 = 0.02;

/// Short, so a message whose ack died with the process comes back within
/// the demo (the client renews it while a handler runs).
pub const INVISIBLE: Duration = Duration::from_secs(2);

pub async fn init(path: &Path) -> Res<()> {
    let pool = db::open(path).await?;
    for ddl in [
        "CREATE TABLE stock (item TEXT PRIMARY KEY, qty INTEGER NOT NULL)",
        "CREATE TABLE processed (order_id TEXT PRIMARY KEY, message_id TEXT NOT NULL, \
         attempt TEXT NOT NULL, item TEXT NOT NULL, qty INTEGER NOT NULL)",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO counters VALUES ('redeliveries', 0), ('anomalies', 0)",
    ] {
        sqlx::query(ddl).execute(&pool).await?;
    }
    for (item, qty) in ITEMS {
        sqlx::query("INSERT INTO stock VALUES (?, ?)")
            .bind(item)
            .bind(qty)
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    Ok(())
}

pub struct Processed {
    pub attempt: String,
    pub item: String,
    pub qty: i64,
}

pub struct State {
    pub processed: BTreeMap<String, Processed>,
    pub stock: BTreeMap<String, i64>,
    pub redeliveries: i64,
    pub anomalies: i64,
}

pub async fn state(path: &Path) -> Res<State> {
    let pool = db::open(path).await?;
    let processed = sqlx::query("SELECT order_id, attempt, item, qty FROM processed")
        .fetch_all(&pool)
        .await?
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                Processed {
                    attempt: r.get(1),
                    item: r.get(2),
                    qty: r.get(3),
                },
            )
        })
        .collect();
    let stock = sqlx::query("SELECT item, qty FROM stock")
        .fetch_all(&pool)
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let counter = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT value FROM counters WHERE name = ?")
                .bind(name)
                .fetch_one(&pool)
                .await
        }
    };
    let redeliveries = counter("redeliveries").await?;
    let anomalies = counter("anomalies").await?;
    pool.close().await;
    Ok(State {
        processed,
        stock,
        redeliveries,
        anomalies,
    })
}

/// Applies one order message exactly once.
async fn apply(pool: &SqlitePool, m: &ReceivedMessage) -> Res<()> {
    let order = m.keys.first().ok_or("order message without a key")?;
    let prop = |k: &str| {
        m.properties
            .get(k)
            .cloned()
            .ok_or(format!("order message without {k}"))
    };
    let (attempt, item) = (prop("attempt")?, prop("item")?);
    let qty: i64 = prop("qty")?.parse()?;
    let mut tx = pool.begin().await?;
    let seen: Option<String> =
        sqlx::query_scalar("SELECT message_id FROM processed WHERE order_id = ?")
            .bind(order)
            .fetch_optional(&mut *tx)
            .await?;
    match seen {
        // The same message again (its ack was lost): nothing to do.
        Some(id) if id == m.message_id => {
            sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'redeliveries'")
                .execute(&mut *tx)
                .await?;
        }
        // A second committed message for one order would be a broker or
        // order-service bug: count it, the final check fails on it.
        Some(_) => {
            sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'anomalies'")
                .execute(&mut *tx)
                .await?;
        }
        None => {
            sqlx::query("INSERT INTO processed VALUES (?, ?, ?, ?, ?)")
                .bind(order)
                .bind(&m.message_id)
                .bind(&attempt)
                .bind(&item)
                .bind(qty)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE stock SET qty = qty - ? WHERE item = ?")
                .bind(qty)
                .bind(&item)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

pub async fn run(server: &str, dir: &Path, run: &str) -> Res<()> {
    let pool = db::open(&stock_db(dir)).await?;
    let rng = std::sync::Arc::new(std::sync::Mutex::new(Random::new(seed_from_clock())));
    let consumer = PushConsumer::builder(ClientConfig::new(server), group(run))
        .subscribe(topic(run), FilterExpression::all())
        .max_concurrency(8)
        .invisible_duration(INVISIBLE)
        .await_duration(Duration::from_secs(2))
        .start(move |m: ReceivedMessage| {
            let pool = pool.clone();
            let rng = rng.clone();
            async move {
                match apply(&pool, &m).await {
                    Ok(()) => {
                        if rng
                            .lock()
                            .map(|mut r| r.chance(CRASH_BEFORE_ACK))
                            .unwrap_or(false)
                        {
                            kill_self(); // committed, not acked: redelivered
                        }
                        ConsumeResult::Success
                    }
                    Err(e) => {
                        eprintln!("stock service: {}: {e}", m.message_id);
                        ConsumeResult::Failure
                    }
                }
            }
        })
        .await?;
    std::future::pending::<()>().await;
    consumer.shutdown().await;
    Ok(())
}
