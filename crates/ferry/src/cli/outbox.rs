//! `ferry outbox relay|migrate|status|requeue|cleanup`: run a relay that
//! publishes a service's outbox table to the broker, and look after that
//! table. The database is named by `--database` (postgres://, mysql://,
//! mariadb://, sqlite://).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use ferry_client::Producer;
use ferry_outbox::{FerryPublisher, JanitorConfig, Relay, RelayConfig, RelayMetrics, Store};
use serde_json::json;
use tracing::info;

use super::output::{json, table};
use super::{fail, CliResult, Target};

#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(flatten)]
    target: Target,
    /// The outbox's database URL
    #[arg(long, env = "FERRY_OUTBOX_DATABASE", global = true)]
    database: Option<String>,
    #[command(subcommand)]
    command: OutboxCommand,
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Publish pending outbox rows to the broker until stopped (SIGINT/SIGTERM)
    Relay(RelayArgs),
    /// Create or upgrade the outbox and inbox tables
    Migrate,
    /// Pending, parked and kept rows, the oldest pending row's age, parked rows
    Status {
        /// Parked rows to list
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Put rows parked as failed back to pending
    Requeue,
    /// Delete sent rows and old inbox rows once, in bounded batches
    Cleanup {
        /// Keep sent rows this long
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        keep_sent: Duration,
        /// Also delete inbox rows older than this
        #[arg(long, value_parser = humantime::parse_duration)]
        inbox_window: Option<Duration>,
    },
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// Claim loops (each holds one claim of --batch rows in flight)
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Rows per claim
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Publish calls in flight per worker
    #[arg(long, default_value_t = 16)]
    publish_concurrency: usize,
    /// How long a claim is exclusive; a crashed relay's rows return after it
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Pause between claims while nothing is pending
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    idle_poll: Duration,
    /// Attempts before a row is parked as failed (0: retry transient errors forever)
    #[arg(long, default_value_t = 0)]
    max_attempts: u32,
    /// Delete sent rows this long after sending
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    keep_sent: Duration,
    /// Also delete inbox rows older than this (a service whose inbox shares the database)
    #[arg(long, value_parser = humantime::parse_duration)]
    inbox_window: Option<Duration>,
    /// This relay's lease owner name [default: host-pid-random]
    #[arg(long)]
    owner: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Log a progress line this often
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    report_every: Duration,
}

impl OutboxArgs {
    /// A relay is a service: it logs its progress.
    pub fn is_relay(&self) -> bool {
        matches!(self.command, OutboxCommand::Relay(_))
    }
}

pub fn run(args: OutboxArgs) -> CliResult {
    let Some(url) = args.database.clone() else {
        return Err(fail(
            "no database: pass --database URL or set FERRY_OUTBOX_DATABASE",
        ));
    };
    match args.command {
        // The relay publishes in parallel; give it every core.
        OutboxCommand::Relay(r) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(relay(&args.target, &url, r)),
        command => super::block_on(admin(&args.target, &url, command)),
    }
}

/// Connects; `migrate` also brings the schema up to date (the relay and
/// `migrate` do, the read-and-tidy commands need no DDL rights).
async fn connect(
    url: &str,
    connections: u32,
    migrate: bool,
) -> Result<Store, Box<dyn std::error::Error + Send + Sync>> {
    let store = if migrate {
        Store::connect(url, connections).await
    } else {
        Store::open(url, connections).await
    };
    store.map_err(|e| fail(format!("outbox database {}: {e}", redact(url))))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = &url[s + 3..at];
            let user = user.split(':').next().unwrap_or_default();
            format!("{}://{user}@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

async fn admin(t: &Target, url: &str, command: OutboxCommand) -> CliResult {
    let store = connect(url, 2, matches!(command, OutboxCommand::Migrate)).await?;
    match command {
        OutboxCommand::Relay(_) => unreachable!("handled by run"),
        OutboxCommand::Migrate => {
            if t.json {
                return json(&json!({ "schema_version": ferry_outbox::SCHEMA_VERSION }));
            }
            println!(
                "outbox schema at version {} in {}",
                ferry_outbox::SCHEMA_VERSION,
                redact(url)
            );
        }
        OutboxCommand::Status { limit } => {
            let s = store.stats().await?;
            let sent_kept = store.sent_kept().await?;
            let failed = store.failed(limit.min(1000)).await?;
            if t.json {
                let rows: Vec<_> = failed
                    .iter()
                    .map(|f| {
                        json!({"id": f.id, "message_id": f.message_id, "topic": f.topic,
                               "attempts": f.attempts, "last_error": f.last_error})
                    })
                    .collect();
                return json(&json!({
                    "pending": s.pending,
                    "oldest_pending_age_ms": s.oldest_pending_age_ms,
                    "failed": s.failed,
                    "sent_kept": sent_kept,
                    "failed_rows": rows,
                }));
            }
            let oldest = if s.pending == 0 {
                "-".to_string()
            } else {
                format!("{:.1}s", s.oldest_pending_age_ms as f64 / 1000.0)
            };
            table(
                &["PENDING", "OLDEST_PENDING", "FAILED", "SENT_KEPT"],
                &[vec![
                    s.pending.to_string(),
                    oldest,
                    s.failed.to_string(),
                    sent_kept.to_string(),
                ]],
            );
            if !failed.is_empty() {
                println!();
                let rows: Vec<Vec<String>> = failed
                    .iter()
                    .map(|f| {
                        vec![
                            f.id.to_string(),
                            f.message_id.clone(),
                            f.topic.clone(),
                            f.attempts.to_string(),
                            f.last_error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(
                    &["ROW", "MESSAGE_ID", "TOPIC", "ATTEMPTS", "LAST_ERROR"],
                    &rows,
                );
            }
        }
        OutboxCommand::Requeue => {
            let n = store.requeue_failed().await?;
            if t.json {
                return json(&json!({ "requeued": n }));
            }
            println!("{n} parked rows back to pending");
        }
        OutboxCommand::Cleanup {
            keep_sent,
            inbox_window,
        } => {
            let config = JanitorConfig {
                keep_sent: Some(keep_sent),
                inbox_window,
                max_batches_per_pass: usize::MAX,
                ..JanitorConfig::outbox()
            };
            let s = ferry_outbox::sweep(&store, &config).await?;
            if t.json {
                return json(&json!({ "sent": s.sent, "keys": s.keys, "inbox": s.inbox }));
            }
            println!(
                "deleted {} sent rows, {} idle key rows, {} inbox rows",
                s.sent, s.keys, s.inbox
            );
        }
    }
    store.pool().close().await;
    Ok(())
}

async fn relay(t: &Target, url: &str, a: RelayArgs) -> CliResult {
    let mut config = RelayConfig {
        workers: a.workers,
        batch: a.batch,
        publish_concurrency: a.publish_concurrency,
        lease: a.lease,
        idle_poll: a.idle_poll,
        max_attempts: a.max_attempts,
        cleanup: JanitorConfig {
            keep_sent: Some(a.keep_sent),
            inbox_window: a.inbox_window,
            ..JanitorConfig::outbox()
        },
        ..RelayConfig::default()
    };
    if let Some(o) = a.owner {
        config.owner = o;
    }
    config.check()?;
    // One connection per worker, plus the gauges and the cleanup.
    let store = connect(url, a.workers as u32 + 2, true).await?;
    let producer = Producer::builder(t.client())
        .start()
        .await
        .map_err(|e| fail(format!("broker {}: {e}", t.server)))?;
    let publisher = FerryPublisher::new(producer);
    let producer = publisher.producer().clone();
    let relay = Relay::start(store, publisher, config)?;
    let metrics = relay.metrics().clone();
    if let Some(addr) = a.metrics_listen {
        serve_metrics(addr, metrics.clone()).await?;
    }
    info!(database = %redact(url), broker = %t.server, "relay running");
    let report = tokio::spawn(report(metrics, a.report_every));
    crate::serve::shutdown_signal().await;
    report.abort();
    relay.shutdown().await;
    producer.shutdown().await;
    Ok(())
}

async fn report(m: Arc<RelayMetrics>, every: Duration) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut last = 0;
    loop {
        tokio::time::sleep(every).await;
        let published = m.published.load(Relaxed);
        info!(
            published,
            rate = format!("{:.0}/s", (published - last) as f64 / every.as_secs_f64()),
            pending = m.pending.load(Relaxed),
            oldest_pending_ms = m.oldest_pending_age_ms.load(Relaxed),
            failed = m.failed_rows.load(Relaxed),
            lag_ms = m.lag_ms.load(Relaxed),
            "relay progress"
        );
        last = published;
    }
}

async fn serve_metrics(addr: SocketAddr, m: Arc<RelayMetrics>) -> CliResult {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| fail(format!("metrics listen {addr}: {e}")))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = m.clone();
            async move {
                let mut s = String::new();
                m.render(&mut s);
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    s,
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    info!(%addr, "metrics at /metrics");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/orders"),
            "postgres://app@db:5432/orders"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
