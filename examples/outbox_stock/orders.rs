//! The order service: the order row and its message commit together in one
//! PostgreSQL transaction, through the outbox table.

use std::time::Duration;

use ferry_client::Message;
use ferry_outbox::{Outbox, OutboxMessage};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::random::Random;
use crate::{topic, Res};

/// Items on sale, with the stock each starts with (the stock service's
/// side; the order service only needs the names).
pub const ITEMS: [(&str, i64); 4] = [
    ("bolt", 50_000),
    ("nut", 50_000),
    ("gear", 50_000),
    ("belt", 50_000),
];

/// Share of orders that fail after their rows were written (a declined
/// payment): the transaction rolls back, the message with it.
const FAILURE_RATE: f64 = 0.1;

pub async fn init(url: &str) -> Res<()> {
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    for ddl in [
        "CREATE TABLE orders (order_id TEXT PRIMARY KEY, message_id TEXT NOT NULL UNIQUE, \
         item TEXT NOT NULL, qty BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        // Orders whose transaction was rolled back, with the message id
        // their message had: neither may ever reach the stock.
        "CREATE TABLE failed_orders (order_id TEXT PRIMARY KEY, message_id TEXT NOT NULL)",
    ] {
        sqlx::query(ddl).execute(&pool).await?;
    }
    pool.close().await;
    // The outbox's own tables; every process may do this at start-up.
    ferry_outbox::migrate(url).await?;
    Ok(())
}

/// What order `i` is, and whether it fails: a function of the seed, so a
/// restarted service attempts a killed order the same way again.
fn order(seed: u64, i: u32) -> (String, &'static str, i64, bool) {
    let mut rng = Random::new(seed ^ u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (item, _) = ITEMS[rng.below(ITEMS.len() as u64) as usize];
    let qty = 1 + rng.below(5) as i64;
    (format!("order-{i:05}"), item, qty, rng.chance(FAILURE_RATE))
}

/// Already committed or rolled back (by an earlier run of the service)?
async fn attempted(pool: &PgPool, order_id: &str) -> Res<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM orders WHERE order_id = $1) \
         + (SELECT COUNT(*) FROM failed_orders WHERE order_id = $1)",
    )
    .bind(order_id)
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

/// One order, one transaction: the outbox row and the order row, then
/// commit — or roll back both when the order fails.
async fn place(pool: &PgPool, outbox: &Outbox, run: &str, seed: u64, i: u32) -> Res<()> {
    let (order_id, item, qty, fails) = order(seed, i);
    let message = OutboxMessage::from(
        Message::new(topic(run), format!("{order_id}: {qty} × {item}"))
            .with_key(order_id.clone())
            .with_tag("created")
            .with_property("item", item)
            .with_property("qty", qty.to_string()),
    );
    let mut tx = pool.begin().await?;
    let message_id = outbox.enqueue(&mut tx, &message).await?;
    sqlx::query("INSERT INTO orders (order_id, message_id, item, qty) VALUES ($1, $2, $3, $4)")
        .bind(&order_id)
        .bind(&message_id)
        .bind(item)
        .bind(qty)
        .execute(&mut *tx)
        .await?;
    if !fails {
        tx.commit().await?;
        return Ok(());
    }
    tx.rollback().await?;
    // Remembered outside the failed transaction, for the final check.
    sqlx::query("INSERT INTO failed_orders (order_id, message_id) VALUES ($1, $2)")
        .bind(&order_id)
        .bind(&message_id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn run(url: &str, run: &str, orders: u32, seed: u64, pace: Duration) -> Res<()> {
    let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
    let outbox = Outbox::new();
    for i in 0..orders {
        let (order_id, ..) = order(seed, i);
        if attempted(&pool, &order_id).await? {
            continue;
        }
        place(&pool, &outbox, run, seed, i).await?;
        tokio::time::sleep(pace).await;
    }
    eprintln!("order service: all {orders} orders attempted; idle until stopped");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
