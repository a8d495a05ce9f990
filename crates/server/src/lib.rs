//! The I/O shell around the broker core.
//!
//! * [`engine`] joins the pure core (`ferry-broker`) to the commit log
//!   (`ferry-store`): it serialises decisions, appends their records, applies
//!   them, and waits for durability before anything is acknowledged.
//! * [`service`] is the `apache.rocketmq.v2.MessagingService` gRPC service.
//! * [`checkback`] fires due timers and sends transaction check-backs.
//! * [`clients`] keeps the settings each client announced over Telemetry.
//! * [`convert`] translates between wire messages and core/log types.
//! * [`status`] is the one place where errors become RocketMQ status codes.
//! * [`http`] serves health, readiness, Prometheus metrics and a small JSON
//!   admin API.
//! * [`lookup`] finds messages by id or key for that API, and [`lifecycle`]
//!   reads their history back from the log.
//! * [`config`] holds every setting `ferry serve` accepts.
//! * [`ui`] serves the dashboard (embedded HTML, JS, CSS) and its JSON
//!   endpoints; [`stats_history`] samples the totals its charts draw.

pub mod checkback;
pub mod clients;
pub mod config;
pub mod convert;
pub mod engine;
pub mod extensions;
pub mod http;
pub mod lifecycle;
pub mod lookup;
pub mod metrics;
pub mod prometheus;
pub mod service;
pub mod stats_history;
pub mod status;
pub mod ui;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

pub use config::ServerConfig;
pub use engine::Engine;

/// Accepted gRPC connections with Nagle's algorithm off: small replies
/// (acks, receive frames) must not wait for the peer's delayed ACK, which
/// otherwise adds ~40 ms to every request/response cycle.
fn incoming_nodelay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    })
}

/// Watches the commit log; while a disk fault keeps it failed (every write
/// refused, `/readyz` 503), tries [`Engine::heal`] every `every` until it
/// succeeds, then watches again.
async fn heal_log(
    engine: Arc<Engine>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut progress = engine.log().subscribe();
    loop {
        tokio::select! {
            r = progress.wait_for(|p| p.failed.is_some()) => {
                if r.is_err() {
                    return;
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let reason = engine
            .log()
            .progress()
            .failed
            .map(|f| f.to_string())
            .unwrap_or_default();
        error!(failure = %reason, retry = ?every,
            "commit log refuses writes after a disk fault: sends, acks, receives and \
             transactions are answered with an error and /readyz is 503 until a heal succeeds");
        let since = std::time::Instant::now();
        let mut attempts: u64 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            attempts += 1;
            let e = engine.clone();
            match tokio::task::spawn_blocking(move || e.heal()).await {
                Ok(Ok(true)) => {
                    info!(attempts, failed_for = ?since.elapsed(),
                        "commit log healed: accepting writes again");
                    break;
                }
                Ok(Ok(false)) => break,
                // The first 60 failed attempts are logged, then every 60th.
                Ok(Err(e)) if attempts <= 60 || attempts.is_multiple_of(60) => {
                    error!(attempts, failing_for = ?since.elapsed(), error = %e,
                        "commit log still failing; writes stay refused");
                }
                Ok(Err(_)) => {}
                Err(e) => error!(error = %e, "heal task failed"),
            }
        }
    }
}

/// How long a shutdown waits for open requests before closing the log.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the broker until `shutdown` resolves, then stops accepting requests,
/// flushes and closes the log cleanly.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let engine = Arc::new(Engine::open(&config)?);
    let clients = Arc::new(clients::Clients::new(config.max_clients));
    let grpc_listener = tokio::net::TcpListener::bind(&config.grpc_listen).await?;
    let http_listener = tokio::net::TcpListener::bind(&config.http_listen).await?;
    info!(grpc = %grpc_listener.local_addr()?, http = %http_listener.local_addr()?, "ferry is serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let svc = service::Service::new(engine.clone(), clients.clone(), &config, stop_rx.clone());
    let extensions = config
        .extensions
        .then(|| extensions::ExtensionsService::server(engine.clone(), &config));
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(svc.into_server(&config))
        .add_optional_service(extensions)
        .serve_with_incoming_shutdown(incoming_nodelay(grpc_listener), wait_stop(stop_rx.clone()));
    let history = Arc::new(stats_history::StatsHistory::default());
    let app = http::router(engine.clone(), clients.clone())
        .merge(ui::router(engine.clone(), clients.clone(), history.clone()))
        .layer(axum::middleware::from_fn(http::same_origin));
    let http = axum::serve(http_listener, app).with_graceful_shutdown(wait_stop(stop_rx.clone()));

    let maintenance = {
        let engine = engine.clone();
        let clients = clients.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            let mut last_retention = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                clients.expire_idle(Duration::from_secs(120));
                if last_retention.elapsed() >= engine.retention_interval() {
                    last_retention = std::time::Instant::now();
                    let engine = engine.clone();
                    if let Err(e) =
                        tokio::task::spawn_blocking(move || engine.enforce_retention()).await
                    {
                        warn!(error = %e, "retention task failed");
                    }
                }
            }
        })
    };

    let healer = tokio::spawn(heal_log(
        engine.clone(),
        config.heal_interval,
        stop_rx.clone(),
    ));

    let sampler = tokio::spawn(stats_history::run(engine.clone(), history, stop_rx.clone()));

    let scheduler = tokio::spawn(checkback::run(
        engine.clone(),
        clients.clone(),
        config
            .advertise
            .clone()
            .unwrap_or_else(|| config.grpc_listen.clone()),
        stop_rx.clone(),
    ));

    // Once stop is asked, in-flight requests (a long poll, at most the
    // long-polling limit) get a bounded grace period, then the log closes.
    let servers = async { tokio::join!(grpc, http) };
    let mut stopping = stop_rx.clone();
    let grace = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        (g, h) = servers => {
            if let Err(e) = g {
                error!(error = %e, "gRPC server stopped with an error");
            }
            if let Err(e) = h {
                error!(error = %e, "HTTP server stopped with an error");
            }
        }
        _ = grace => warn!(grace = ?SHUTDOWN_GRACE, "requests still open after the grace period; closing anyway"),
    }
    maintenance.abort();
    healer.abort();
    scheduler.abort();
    sampler.abort();
    engine.shutdown()?;
    info!("ferry stopped cleanly");
    Ok(())
}
