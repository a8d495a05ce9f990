//! The stock service: an idempotent consumer on MariaDB. The inbox row,
//! the stock change and the processed-order row commit together, so a
//! message delivered twice changes the stock once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_client::{ClientConfig, ConsumeResult, FilterExpression, PushConsumer, ReceivedMessage};
use ferry_outbox::{Inbox, OutboxError, Processed};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

use crate::orders::ITEMS;
use crate::process::kill_self;
use crate::random::{seed_from_clock, Random};
use crate::{group, topic, Res};

/// The inbox's consumer name: ids are remembered per consumer.
pub const CONSUMER: &str = "stock-service";

/// Short, so a message whose ack died with a killed stock service comes
/// back within the demo (the client renews it while a handler runs).
pub const INVISIBLE: Duration = Duration::from_secs(3);

pub async fn init(url: &str) -> Res<()> {
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    for ddl in [
        "CREATE TABLE stock (item VARCHAR(16) PRIMARY KEY, qty BIGINT NOT NULL)",
        // No unique order id: the inbox alone keeps an order from being
        // applied twice, and the final check would see it if it did not.
        "CREATE TABLE processed (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
         order_id VARCHAR(32) NOT NULL, message_id VARCHAR(128) NOT NULL, \
         item VARCHAR(16) NOT NULL, qty BIGINT NOT NULL, KEY (order_id))",
        // Every delivery whose transaction committed, duplicates included:
        // how often the inbox had to step in, and why.
        "CREATE TABLE deliveries (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
         message_id VARCHAR(128) NOT NULL, attempt INT NOT NULL, duplicate BOOLEAN NOT NULL)",
    ] {
        sqlx::query(ddl).execute(&pool).await?;
    }
    sqlx::QueryBuilder::new("INSERT INTO stock (item, qty) ")
        .push_values(ITEMS, |mut row, (item, qty)| {
            row.push_bind(item).push_bind(qty);
        })
        .build()
        .execute(&pool)
        .await?;
    pool.close().await;
    ferry_outbox::migrate(url).await?;
    Ok(())
}

/// An order message, as the order service wrote it.
struct Order {
    order_id: String,
    item: String,
    qty: i64,
}

fn parse(m: &ReceivedMessage) -> Result<Order, String> {
    let prop = |k: &str| {
        m.properties
            .get(k)
            .cloned()
            .ok_or(format!("no {k} property"))
    };
    Ok(Order {
        order_id: m.keys.first().cloned().ok_or("no key")?,
        item: prop("item")?,
        qty: prop("qty")?.parse().map_err(|e| format!("qty: {e}"))?,
    })
}

/// One delivery, one MariaDB transaction.
async fn apply(
    pool: &MySqlPool,
    inbox: &Inbox,
    m: &ReceivedMessage,
    order: Order,
) -> Result<Processed<()>, OutboxError> {
    let mut tx = pool.begin().await?;
    let outcome = inbox
        .process_once(&mut tx, CONSUMER, &m.message_id, |tx| {
            Box::pin(async move {
                sqlx::query("UPDATE stock SET qty = qty - ? WHERE item = ?")
                    .bind(order.qty)
                    .bind(&order.item)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO processed (order_id, message_id, item, qty) VALUES (?, ?, ?, ?)",
                )
                .bind(&order.order_id)
                .bind(&m.message_id)
                .bind(&order.item)
                .bind(order.qty)
                .execute(&mut **tx)
                .await?;
                Ok::<_, OutboxError>(())
            })
        })
        .await?;
    sqlx::query("INSERT INTO deliveries (message_id, attempt, duplicate) VALUES (?, ?, ?)")
        .bind(&m.message_id)
        .bind(m.delivery_attempt)
        .bind(outcome.is_duplicate())
        .execute(&mut *tx)
        .await?;
    // An error before this drops `tx`: sqlx rolls it back.
    tx.commit().await?;
    Ok(outcome)
}

async fn handle(pool: &MySqlPool, inbox: &Inbox, m: &ReceivedMessage) -> ConsumeResult {
    let order = match parse(m) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("stock service: {} is no order message: {e}", m.message_id);
            return ConsumeResult::Failure;
        }
    };
    match apply(pool, inbox, m, order).await {
        Ok(_) => ConsumeResult::Success,
        Err(e) => {
            // A deadlock or lock wait timeout rolled the transaction back:
            // nothing happened, so leave the message unacked and let the
            // broker deliver it again. Other errors (the database away)
            // take the same path, with more noise.
            let what = if e.is_retryable() {
                "conflict"
            } else {
                "error"
            };
            eprintln!(
                "stock service: {what} on {}: {e}; left for redelivery",
                m.message_id
            );
            ConsumeResult::Failure
        }
    }
}

/// `crash`: the chance of dying after a commit, before its ack — the
/// message comes again and the inbox must recognise it.
pub async fn run(server: &str, url: &str, run: &str, crash: f64) -> Res<()> {
    let pool = MySqlPoolOptions::new()
        .max_connections(6)
        .connect(url)
        .await?;
    let inbox = Inbox::new();
    let rng = Arc::new(Mutex::new(Random::new(
        seed_from_clock() ^ u64::from(std::process::id()),
    )));
    let consumer = PushConsumer::builder(ClientConfig::new(server), group(run))
        .subscribe(topic(run), FilterExpression::all())
        .invisible_duration(INVISIBLE)
        .max_concurrency(6)
        .start(move |m: ReceivedMessage| {
            let (pool, inbox, rng) = (pool.clone(), inbox.clone(), rng.clone());
            async move {
                let result = handle(&pool, &inbox, &m).await;
                if result == ConsumeResult::Success && rng.lock().is_ok_and(|mut r| r.chance(crash))
                {
                    kill_self(); // committed, not acked
                }
                result
            }
        })
        .await?;
    // The demo kills it; run by hand, Ctrl-C stops it cleanly.
    tokio::signal::ctrl_c().await?;
    consumer.shutdown().await;
    Ok(())
}
