//! `ferry serve`: flags, `FERRY_*` environment variables and an optional TOML
//! file, merged in that order of precedence (flag > environment > file >
//! built-in default).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ferry_server::ServerConfig;
use ferry_store::FlushMode;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Flush {
    /// Acknowledge only after fdatasync: survives power loss.
    Sync,
    /// Acknowledge once written to the OS; fsync every --flush-interval-ms.
    /// Survives kill -9, but a power loss can lose the last interval.
    Async,
}

/// Every flag is optional here so that a config file can supply it; the
/// defaults shown are applied when neither flag, variable nor file sets it.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flag names with
    /// '_' for '-', e.g. `data_dir = "/var/lib/ferry"`).
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the commit log and metadata [default: ./ferry-data]
    #[arg(long, env = "FERRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address (RocketMQ 5 clients connect here) [default: 127.0.0.1:8081]
    #[arg(long, env = "FERRY_GRPC_LISTEN")]
    grpc_listen: Option<String>,
    /// HTTP listen address for /healthz, /readyz, /metrics and /v1/* [default: 127.0.0.1:8082]
    #[arg(long, env = "FERRY_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// host:port announced to clients in route answers [default: the address the client used]
    #[arg(long, env = "FERRY_ADVERTISE")]
    advertise: Option<String>,
    /// When a write is acknowledged [default: sync]
    #[arg(long, env = "FERRY_FLUSH", value_enum)]
    flush: Option<Flush>,
    /// fsync period in async flush mode, ms [default: 1000]
    #[arg(long, env = "FERRY_FLUSH_INTERVAL_MS")]
    flush_interval_ms: Option<u64>,
    /// Commit-log segment size, MiB [default: 256]
    #[arg(long, env = "FERRY_SEGMENT_MIB")]
    segment_mib: Option<u64>,
    /// Delete closed segments older than this many hours [default: 72]
    #[arg(long, env = "FERRY_RETENTION_HOURS")]
    retention_hours: Option<u64>,
    /// Delete the oldest closed segments while the log exceeds this many GiB; 0 = no size limit [default: 0]
    #[arg(long, env = "FERRY_RETENTION_MAX_GIB")]
    retention_max_gib: Option<u64>,
    /// Create topics on first use [default: true]
    #[arg(long, env = "FERRY_AUTO_CREATE_TOPICS")]
    auto_create_topics: Option<bool>,
    /// Serve Ferry's own calls (ferry.v1.Extensions, e.g. ending many transactions in one call) next to the RocketMQ ones; with false, Ferry's clients fall back to the standard calls [default: true]
    #[arg(long, env = "FERRY_EXTENSIONS")]
    extensions: Option<bool>,
    /// Queues of an automatically created topic [default: 8]
    #[arg(long, env = "FERRY_DEFAULT_QUEUES")]
    default_queues: Option<u32>,
    /// Largest message body, bytes [default: 4194304]
    #[arg(long, env = "FERRY_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Largest properties + tag + keys of one message, bytes [default: 16384]
    #[arg(long, env = "FERRY_MAX_PROPERTIES_BYTES")]
    max_properties_bytes: Option<usize>,
    /// Largest gRPC request frame, bytes; refused before it is buffered [default: 16777216]
    #[arg(long, env = "FERRY_MAX_REQUEST_BYTES")]
    max_request_bytes: Option<usize>,
    /// Most messages in one send batch [default: 1024]
    #[arg(long, env = "FERRY_MAX_BATCH_MESSAGES")]
    max_batch_messages: Option<usize>,
    /// Most un-acked messages per consumer group and queue [default: 65536]
    #[arg(long, env = "FERRY_MAX_INFLIGHT_PER_QUEUE")]
    max_inflight_per_queue: Option<usize>,
    /// Most connected clients [default: 10000]
    #[arg(long, env = "FERRY_MAX_CLIENTS")]
    max_clients: Option<usize>,
    /// Deliveries of a message to one consumer group before it moves to %DLQ%<group> [default: 17]
    #[arg(long, env = "FERRY_MAX_DELIVERY_ATTEMPTS")]
    max_delivery_attempts: Option<u32>,
    /// Default consumer retry backoff steps, published to clients; the last repeats, e.g. "1s 5s 30s 1m" [default: 1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h]
    #[arg(long, env = "FERRY_RETRY_BACKOFF")]
    retry_backoff: Option<String>,
    /// First transaction check-back this long after the half message, ms, unless the producer asks otherwise [default: 6000]
    #[arg(long, env = "FERRY_TX_CHECK_AFTER_MS")]
    tx_check_after_ms: Option<u64>,
    /// Cap on a producer's own first-check delay (orphaned_transaction_recovery_duration), ms [default: 3600000]
    #[arg(long, env = "FERRY_TX_MAX_CHECK_AFTER_MS")]
    tx_max_check_after_ms: Option<u64>,
    /// Time between check-backs of one transaction, ms [default: 30000]
    #[arg(long, env = "FERRY_TX_CHECK_INTERVAL_MS")]
    tx_check_interval_ms: Option<u64>,
    /// Check-backs before an unresolved half message is discarded [default: 15]
    #[arg(long, env = "FERRY_TX_MAX_CHECKS")]
    tx_max_checks: Option<u32>,
    /// Most check-backs sent per second, broker-wide [default: 1000]
    #[arg(long, env = "FERRY_TX_CHECKS_PER_SECOND")]
    tx_checks_per_second: Option<u32>,
    /// Transaction outcomes remembered to answer repeated EndTransaction calls [default: 500000]
    #[arg(long, env = "FERRY_TX_OUTCOME_MEMORY")]
    tx_outcome_memory: Option<usize>,
    /// Most half messages waiting for an outcome [default: 1000000]
    #[arg(long, env = "FERRY_MAX_PENDING_TRANSACTIONS")]
    max_pending_transactions: Option<usize>,
    /// Most messages waiting for their delivery time [default: 10000000]
    #[arg(long, env = "FERRY_MAX_PENDING_TIMERS")]
    max_pending_timers: Option<usize>,
    /// Furthest a delivery time may lie ahead, hours [default: 168]
    #[arg(long, env = "FERRY_MAX_DELAY_HOURS")]
    max_delay_hours: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    grpc_listen: Option<String>,
    http_listen: Option<String>,
    advertise: Option<String>,
    flush: Option<Flush>,
    flush_interval_ms: Option<u64>,
    segment_mib: Option<u64>,
    retention_hours: Option<u64>,
    retention_max_gib: Option<u64>,
    auto_create_topics: Option<bool>,
    extensions: Option<bool>,
    default_queues: Option<u32>,
    max_body_bytes: Option<usize>,
    max_properties_bytes: Option<usize>,
    max_request_bytes: Option<usize>,
    max_batch_messages: Option<usize>,
    max_inflight_per_queue: Option<usize>,
    max_clients: Option<usize>,
    max_delivery_attempts: Option<u32>,
    retry_backoff: Option<String>,
    tx_check_after_ms: Option<u64>,
    tx_max_check_after_ms: Option<u64>,
    tx_check_interval_ms: Option<u64>,
    tx_max_checks: Option<u32>,
    tx_checks_per_second: Option<u32>,
    tx_outcome_memory: Option<usize>,
    max_pending_transactions: Option<usize>,
    max_pending_timers: Option<usize>,
    max_delay_hours: Option<u64>,
}

fn build_config(a: ServeArgs) -> Result<ServerConfig, Box<dyn std::error::Error + Send + Sync>> {
    let f: FileConfig = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let mut c = ServerConfig::default();
    macro_rules! pick {
        ($field:ident) => {
            a.$field.or(f.$field)
        };
    }
    if let Some(v) = pick!(data_dir) {
        c.data_dir = v;
    }
    if let Some(v) = pick!(grpc_listen) {
        c.grpc_listen = v;
    }
    if let Some(v) = pick!(http_listen) {
        c.http_listen = v;
    }
    c.advertise = pick!(advertise);
    if let Some(v) = pick!(flush) {
        c.flush = match v {
            Flush::Sync => FlushMode::Sync,
            Flush::Async => FlushMode::Async,
        };
    }
    if let Some(v) = pick!(flush_interval_ms) {
        c.async_flush_interval = Duration::from_millis(v.max(1));
    }
    if let Some(v) = pick!(segment_mib) {
        if v == 0 || v > 4096 {
            return Err("segment size must be 1 to 4096 MiB".into());
        }
        c.segment_bytes = v << 20;
    }
    if let Some(v) = pick!(retention_hours) {
        c.retention.max_age = Duration::from_secs(v * 3600);
    }
    if let Some(v) = pick!(retention_max_gib) {
        c.retention.max_bytes = if v == 0 { u64::MAX } else { v << 30 };
    }
    if let Some(v) = pick!(auto_create_topics) {
        c.core.auto_create_topics = v;
    }
    if let Some(v) = pick!(extensions) {
        c.extensions = v;
    }
    if let Some(v) = pick!(default_queues) {
        if v == 0 || v > c.core.limits.max_queues_per_topic {
            return Err(format!(
                "default queues must be 1 to {}",
                c.core.limits.max_queues_per_topic
            )
            .into());
        }
        c.core.default_queues = v;
    }
    if let Some(v) = pick!(max_body_bytes) {
        if v == 0 || v > 64 << 20 {
            return Err("max body size must be 1 byte to 64 MiB".into());
        }
        c.core.limits.max_body_bytes = v;
    }
    if let Some(v) = pick!(max_properties_bytes) {
        c.core.limits.max_properties_bytes = v.min(1 << 20);
    }
    if let Some(v) = pick!(max_request_bytes) {
        c.max_request_bytes = v;
    }
    if let Some(v) = pick!(max_batch_messages) {
        c.core.limits.max_batch_messages = v.max(1);
    }
    if let Some(v) = pick!(max_inflight_per_queue) {
        c.core.limits.max_inflight_per_queue = v.max(1);
    }
    if let Some(v) = pick!(max_clients) {
        c.max_clients = v.max(1);
    }
    if let Some(v) = pick!(max_delivery_attempts) {
        c.core.default_policy.max_delivery_attempts = v;
    }
    if let Some(v) = pick!(retry_backoff) {
        c.core.default_policy.backoff_ms =
            ferry_broker::policy::parse_backoff(&v).map_err(|e| format!("--retry-backoff: {e}"))?;
    }
    c.core
        .default_policy
        .validate()
        .map_err(|e| format!("default delivery policy: {e}"))?;
    let tx = &mut c.core.transactions;
    let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if let Some(v) = pick!(tx_check_after_ms) {
        tx.check_after_ms = ms(v.max(100));
    }
    if let Some(v) = pick!(tx_max_check_after_ms) {
        tx.max_check_after_ms = ms(v).max(tx.min_check_after_ms);
    }
    if let Some(v) = pick!(tx_check_interval_ms) {
        tx.check_interval_ms = ms(v.max(100));
    }
    if let Some(v) = pick!(tx_max_checks) {
        tx.max_checks = v;
    }
    if let Some(v) = pick!(tx_checks_per_second) {
        tx.max_checks_per_second = v.max(1);
    }
    if let Some(v) = pick!(tx_outcome_memory) {
        tx.outcome_memory = v.max(1);
    }
    if let Some(v) = pick!(max_pending_transactions) {
        c.core.limits.max_pending_transactions = v.max(1);
    }
    if let Some(v) = pick!(max_pending_timers) {
        c.core.limits.max_pending_timers = v.max(1);
    }
    if let Some(v) = pick!(max_delay_hours) {
        c.core.limits.max_delay_ms = ms(v.saturating_mul(3_600_000)).max(1);
    }
    if c.max_request_bytes < c.core.limits.max_body_bytes + c.core.limits.max_properties_bytes {
        c.max_request_bytes =
            c.core.limits.max_body_bytes + c.core.limits.max_properties_bytes + (64 << 10);
    }
    Ok(c)
}

pub fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let config = build_config(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(ferry_server::run(config, shutdown_signal()))
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested; flushing");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_apply() {
        let dir = std::env::temp_dir().join(format!("ferry-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ferry.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\nflush = \"async\"\ndefault_queues = 4\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            data_dir: Some("/from/flag".into()),
            ..Default::default()
        };
        let c = build_config(args).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.flush, FlushMode::Async);
        assert_eq!(c.core.default_queues, 4);
        assert_eq!(c.grpc_listen, "127.0.0.1:8081");
        std::fs::write(&file, "no_such_key = 1\n").unwrap();
        let bad = ServeArgs {
            config: Some(file),
            ..Default::default()
        };
        assert!(build_config(bad).is_err());
    }
}
