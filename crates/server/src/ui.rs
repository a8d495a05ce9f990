//! The dashboard: a small single-page app served by the broker itself, and
//! the two JSON endpoints only it needs.
//!
//! * `GET /` and `GET /ui` redirect to `/ui/`, which serves `index.html`;
//!   `/ui/app.js` and `/ui/app.css` are the rest. The three files live in
//!   `crates/server/ui/` and are compiled into the binary with
//!   `include_str!`: no files to install next to the broker, no build
//!   tooling, and the page always matches the API of the binary serving it.
//! * `GET /v1/overview`: headline numbers (topics, groups, total lag,
//!   pending transactions and timers, dead letters, connected clients, the
//!   counters).
//! * `GET /v1/stats/history`: the last ten minutes of totals, one sample a
//!   second, from [`crate::stats_history`], for the charts.
//!
//! Everything else the page shows comes from the admin API in
//! [`crate::http`]. The page escapes all broker data before it reaches the
//! DOM, and the answers carry a Content-Security-Policy that allows only
//! the broker's own scripts and styles.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::clients::Clients;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::stats_history::{self, StatsHistory};

pub const INDEX_HTML: &str = include_str!("../ui/index.html");
pub const APP_JS: &str = include_str!("../ui/app.js");
pub const APP_CSS: &str = include_str!("../ui/app.css");

/// Only the broker's own script, styles and API; data: for the favicon.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct UiState {
    engine: Arc<Engine>,
    clients: Arc<Clients>,
    history: Arc<StatsHistory>,
}

/// The dashboard's routes, ready to be merged into the HTTP router.
pub fn router<S>(
    engine: Arc<Engine>,
    clients: Arc<Clients>,
    history: Arc<StatsHistory>,
) -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/v1/overview", get(overview))
        .route("/v1/stats/history", get(history_json))
        .with_state(UiState {
            engine,
            clients,
            history,
        })
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small files compiled into the binary: revalidate, never go stale
    // across an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn overview(State(s): State<UiState>) -> Json<serde_json::Value> {
    let m = &s.engine.metrics;
    let (topics, dlq_topics, groups, lag, inflight, dead_letters, tx_pending, timers) =
        s.engine.with_core(|c| {
            let topics = c.topic_stats();
            let dlq = topics
                .iter()
                .filter(|t| t.name.starts_with("%DLQ%"))
                .count();
            let names = c.group_names();
            let mut lag = 0u64;
            let mut inflight = 0u64;
            let mut dead = 0u64;
            for v in names.iter().filter_map(|g| c.group_view(g)) {
                lag += v.queues.iter().map(|q| q.lag).sum::<u64>();
                inflight += v.queues.iter().map(|q| q.inflight as u64).sum::<u64>();
                dead += v.dead_letters as u64;
            }
            (
                topics.len() - dlq,
                dlq,
                names.len(),
                lag,
                inflight,
                dead,
                c.transactions().pending_len(),
                c.timers().len(),
            )
        });
    let progress = s.engine.log().progress();
    Json(json!({
        "topics": topics,
        "dead_letter_topics": dlq_topics,
        "groups": groups,
        "lag": lag,
        "inflight": inflight,
        "dead_letters": dead_letters,
        "transactions_pending": tx_pending,
        "timers_pending": timers,
        "clients": s.clients.list().len(),
        "totals": {
            "messages_stored": Metrics::get(&m.messages_stored),
            "messages_delivered": Metrics::get(&m.messages_delivered),
            "acks": Metrics::get(&m.acks),
            "redeliveries": Metrics::get(&m.redeliveries),
            "dead_lettered": Metrics::get(&m.dead_lettered),
            "redriven": Metrics::get(&m.redriven),
            "tx_committed": Metrics::get(&m.tx_committed),
            "tx_rolled_back": Metrics::get(&m.tx_rolled_back),
            "tx_discarded": Metrics::get(&m.tx_discarded),
        },
        "log": {
            "committed_offset": progress.committed,
            "failed": progress.failed.map(|f| f.to_string()),
        },
    }))
}

async fn history_json(State(s): State<UiState>) -> Json<serde_json::Value> {
    Json(json!({
        "interval_ms": stats_history::INTERVAL.as_millis() as u64,
        "capacity": s.history.capacity(),
        "samples": s.history.samples(),
        "now": stats_history::Sample::take(&s.engine),
    }))
}
