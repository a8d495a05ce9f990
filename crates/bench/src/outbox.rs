//! Outbox relay throughput: rows from a database table to the broker.
//!
//! Fills the outbox with `--rows` rows (in transactions of 500, several
//! writers), then times a relay draining them into Ferry: claim under a
//! lease, publish in batches, mark sent. Two drains alternate per round —
//! unordered rows, and rows ordered by one of 64 keys — so the cost of
//! per-key ordering shows as a ratio from the same run. The database keeps
//! its own durability settings (PostgreSQL: fsync and synchronous_commit
//! as configured; the figures print them).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use ferry_client::{ClientConfig, Producer};
use ferry_outbox::{
    FerryPublisher, JanitorConfig, Outbox, OutboxMessage, Relay, RelayConfig, Store,
};
use sqlx::{Connection as _, Executor as _};

use crate::net::{self, BoxError};

#[derive(Debug, Args)]
pub struct OutboxArgs {
    /// A PostgreSQL server (any database on it): the bench creates a
    /// database of its own there, and drops it at the end.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database: String,
    /// gRPC address of a running broker; without it, one is started in
    /// this process on a temporary directory.
    #[arg(long)]
    server: Option<String>,
    /// Rows per drain.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Body size, bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Relay claim loops.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Rows per claim.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Publish calls in flight per worker.
    #[arg(long, default_value_t = 16)]
    publish_concurrency: usize,
    /// Unordered/keyed drain pairs.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
}

pub fn run(a: OutboxArgs) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: OutboxArgs) -> Result<(), BoxError> {
    if !a.database.starts_with("postgres") {
        return Err("the outbox bench measures PostgreSQL: pass a postgres:// URL".into());
    }
    // A database of its own: no other outbox rows in the way, and the
    // schema this build writes.
    let name = format!("ferry_bench_outbox_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&a.database).await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
        .await?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let (base, query) = a
        .database
        .split_once('?')
        .map_or((a.database.as_str(), None), |(b, q)| (b, Some(q)));
    let cut = base.rfind('/').ok_or("a server URL names a database")?;
    let mut url = format!("{}/{name}", &base[..cut]);
    if let Some(q) = query {
        url = format!("{url}?{q}");
    }
    let measured = measure(&a, &url).await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    measured
}

async fn measure(a: &OutboxArgs, url: &str) -> Result<(), BoxError> {
    let (addr, _tmp) = net::broker(a.server.clone()).await?;
    let store = Store::connect(url, a.workers as u32 + 2).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await?;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit') ORDER BY name",
    )
    .fetch_all(&pool)
    .await?;
    let settings: Vec<String> = settings.iter().map(|(n, v)| format!("{n}={v}")).collect();
    println!(
        "outbox: {} rows of {} B per drain, relay {} workers × batch {} × {} publishes in flight, PostgreSQL {}",
        a.rows,
        a.size,
        a.workers,
        a.batch,
        a.publish_concurrency,
        settings.join(" ")
    );
    let topic = format!("bench-outbox-{}", std::process::id());
    let producer = Producer::builder(ClientConfig::new(addr.clone()))
        .topics([topic.clone()])
        .start()
        .await?;
    let publisher = FerryPublisher::new(producer);
    let producer = publisher.producer().clone();
    let publisher = std::sync::Arc::new(publisher);
    // A first, uncounted drain: routes, connections, the broker's first
    // segment, PostgreSQL's caches are warm for every counted one.
    let warm = (a.rows / 10).clamp(1, 5_000);
    fill(&pool, a, warm, &topic, false).await?;
    drain(&store, a, warm, publisher.clone()).await?;
    clear_sent(&pool, &topic).await?;
    let mut totals = [(false, 0usize, 0f64), (true, 0, 0.0)];
    for round in 0..a.rounds {
        for t in totals.iter_mut() {
            let fill = fill(&pool, a, a.rows, &topic, t.0).await?;
            // Statistics of the filled table, as autovacuum would gather
            // them; a planner that still believed the table empty would
            // sort every pending row per claim.
            pool.execute("VACUUM ANALYZE ferry_outbox_keys").await?;
            pool.execute("ANALYZE ferry_outbox").await?;
            let (secs, lag) = drain(&store, a, a.rows, publisher.clone()).await?;
            println!(
                "  round {round} {:<9} fill {:>7.0} rows/s   relay {:>7.0} msg/s ({:.2} s), last lag {lag} ms",
                if t.0 { "keyed" } else { "unordered" },
                a.rows as f64 / fill,
                a.rows as f64 / secs,
                secs
            );
            t.1 += a.rows;
            t.2 += secs;
            clear_sent(&pool, &topic).await?;
        }
    }
    let rate = |t: &(bool, usize, f64)| t.1 as f64 / t.2;
    println!(
        "relay throughput: unordered {:.0} msg/s, keyed (64 keys) {:.0} msg/s, keyed/unordered {:.2}",
        rate(&totals[0]),
        rate(&totals[1]),
        rate(&totals[1]) / rate(&totals[0])
    );
    producer.shutdown().await;
    Ok(())
}

/// Writes the rows through `Outbox::enqueue_batch`, 500 per transaction,
/// four writers; returns seconds taken. Keyed rows use one of 64 keys, so
/// keyed writers queue behind each other's key locks (commit order).
async fn fill(
    pool: &sqlx::PgPool,
    a: &OutboxArgs,
    rows: usize,
    topic: &str,
    keyed: bool,
) -> Result<f64, BoxError> {
    let started = Instant::now();
    let outbox = Outbox::new();
    let body = vec![b'x'; a.size];
    let per_tx = 500;
    let txs = rows.div_ceil(per_tx);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let (pool, outbox, body, topic) = (
            pool.clone(),
            outbox.clone(),
            body.clone(),
            topic.to_string(),
        );
        writers.spawn(async move {
            let mut t = w;
            while t < txs {
                let messages: Vec<OutboxMessage> = (t * per_tx..((t + 1) * per_tx).min(rows))
                    .map(|i| {
                        let m = OutboxMessage::new(topic.clone(), body.clone());
                        if keyed {
                            m.ordered_by(format!("key-{}", i % 64))
                        } else {
                            m
                        }
                    })
                    .collect();
                let mut tx = pool.begin().await?;
                outbox.enqueue_batch(&mut tx, &messages).await?;
                tx.commit().await?;
                t += 4;
            }
            Ok::<(), BoxError>(())
        });
    }
    while let Some(r) = writers.join_next().await {
        r??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs a relay until every pending row is sent; returns seconds and the
/// last batch's lag.
async fn drain(
    store: &Store,
    a: &OutboxArgs,
    rows: usize,
    publisher: std::sync::Arc<FerryPublisher>,
) -> Result<(f64, i64), BoxError> {
    let config = RelayConfig {
        workers: a.workers,
        batch: a.batch,
        publish_concurrency: a.publish_concurrency,
        idle_poll: Duration::from_millis(5),
        cleanup: JanitorConfig {
            keep_sent: None,
            key_idle: None,
            ..JanitorConfig::outbox()
        },
        ..RelayConfig::default()
    };
    let started = Instant::now();
    let relay = Relay::start(store.clone(), publisher, config)?;
    let m = relay.metrics().clone();
    let (mut last, mut progress_at) = (0, Instant::now());
    while m.published.load(Ordering::Relaxed) < rows as u64 {
        let now = m.published.load(Ordering::Relaxed);
        if now > last {
            (last, progress_at) = (now, Instant::now());
        } else if progress_at.elapsed() > Duration::from_secs(60) {
            relay.shutdown().await;
            return Err(format!(
                "the relay published nothing for 60 s ({now} of {rows}); see its warnings"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    relay.shutdown().await;
    Ok((secs, m.lag_ms.load(Ordering::Relaxed)))
}

/// Deletes this run's sent rows, then vacuums: every drain starts on a
/// table in the shape autovacuum keeps a live one in (no dead rows from
/// earlier drains, fresh statistics), even on a server with autovacuum
/// off. Not timed.
async fn clear_sent(pool: &sqlx::PgPool, topic: &str) -> Result<(), BoxError> {
    sqlx::query("DELETE FROM ferry_outbox WHERE state = 1 AND topic = $1")
        .bind(topic)
        .execute(pool)
        .await?;
    pool.execute("VACUUM ANALYZE ferry_outbox").await?;
    Ok(())
}
