//! The HTTP listener: health, readiness, Prometheus metrics and a small JSON
//! admin API (topics — create, describe, delete —, groups and their
//! policies, dead letters and re-drive, message lookup by id or key with
//! its history, clients, transactions, recovery report).
//!
//! Refusals are JSON `{"code": "<RocketMQ code name>", "message": "..."}`
//! with the HTTP status that fits (404 for anything not found).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use ferry_broker::{BrokerError, MessageTypes};
use ferry_proto::v2::Code;
use ferry_store::StoreError;

use crate::clients::Clients;
use crate::engine::{Engine, EngineError};
use crate::lookup;
use crate::prometheus;
use crate::status;

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    clients: Arc<Clients>,
}

pub fn router(engine: Arc<Engine>, clients: Arc<Clients>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/topics", get(topics))
        .route(
            "/v1/topics/{name}",
            post(create_topic).get(describe_topic).delete(delete_topic),
        )
        .route("/v1/groups", get(groups))
        .route("/v1/groups/{group}", get(describe_group))
        .route(
            "/v1/groups/{group}/policy",
            get(get_policy).put(put_policy).delete(delete_policy),
        )
        .route("/v1/groups/{group}/dead-letters", get(dead_letters))
        .route(
            "/v1/groups/{group}/dead-letters/{offset}/redrive",
            post(redrive),
        )
        .route("/v1/messages", get(messages_by_key))
        .route("/v1/messages/{message_id}", get(message_by_id))
        .route("/v1/clients", get(clients_list))
        .route("/v1/recovery", get(recovery))
        .route("/v1/transactions", get(transactions))
        .with_state(AppState { engine, clients })
}

async fn readyz(State(s): State<AppState>) -> Response {
    match s.engine.log().progress().failed {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "commit log refuses writes after a disk fault (healing is retried in the background): {e}\n"
            ),
        )
            .into_response(),
    }
}

fn queues_json(queues: &[(u64, u64)]) -> Vec<serde_json::Value> {
    queues
        .iter()
        .enumerate()
        .map(|(i, (min, max))| json!({"id": i, "min_offset": min, "max_offset": max}))
        .collect()
}

async fn topics(State(s): State<AppState>) -> Json<serde_json::Value> {
    let topics = s.engine.with_core(|c| c.topic_stats());
    Json(json!({
        "topics": topics.iter().map(|t| json!({
            "name": t.name,
            "message_types": t.message_types,
            "queues": queues_json(&t.queues),
        })).collect::<Vec<_>>()
    }))
}

/// A topic definition: both fields optional (the broker's default queue
/// count; every message type).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    queues: Option<u32>,
    message_types: Option<Vec<String>>,
}

async fn create_topic(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let def = if body.iter().all(u8::is_ascii_whitespace) {
        CreateTopic {
            queues: None,
            message_types: None,
        }
    } else {
        match serde_json::from_slice::<CreateTopic>(&body) {
            Ok(d) => d,
            Err(e) => return bad_request(format!("topic body: {e}")),
        }
    };
    let types = match def.message_types.as_deref().map(MessageTypes::parse) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return bad_request(e),
    };
    match s.engine.create_topic(&name, def.queues, types) {
        Ok(t) => (
            if t.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            Json(json!({
                "name": name,
                "created": t.created,
                "queues": t.queues,
                "message_types": t.message_types,
            })),
        )
            .into_response(),
        Err(e) => refused(http_of(&e), &e),
    }
}

async fn describe_topic(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let found = s.engine.with_core(|c| {
        let t = c.topic(&name)?;
        let queues: Vec<(u64, u64)> = t.queues.iter().map(|q| (q.base, q.next_offset())).collect();
        Some((t.message_types(), queues, c.topic_groups(&name)))
    });
    match found {
        Some((types, queues, groups)) => Json(json!({
            "name": name,
            "message_types": types,
            "queues": queues_json(&queues),
            "groups": groups,
        }))
        .into_response(),
        None => not_found(BrokerError::TopicNotFound(name)),
    }
}

async fn delete_topic(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    match s.engine.delete_topic(&name).await {
        Ok(()) => Json(json!({"name": name, "deleted": true})).into_response(),
        Err(e) => refused(http_of(&e), &e),
    }
}

async fn groups(State(s): State<AppState>) -> Json<serde_json::Value> {
    s.engine.with_core(|c| {
        let rows: Vec<serde_json::Value> = c
            .group_stats()
            .into_iter()
            .map(|g| {
                let p = c.policy(&g.group);
                let mut row = serde_json::to_value(&g).unwrap_or_default();
                row["fifo"] = p.fifo.into();
                row["max_delivery_attempts"] = p.max_delivery_attempts.into();
                row
            })
            .collect();
        let summary: Vec<serde_json::Value> = c
            .group_names()
            .into_iter()
            .filter_map(|g| c.group_view(&g))
            .map(|v| {
                json!({
                    "group": v.group,
                    "own_policy": v.own_policy,
                    "fifo": v.policy.fifo,
                    "max_delivery_attempts": v.policy.max_delivery_attempts,
                    "queues": v.queues.len(),
                    "lag": v.queues.iter().map(|q| q.lag).sum::<u64>(),
                    "inflight": v.queues.iter().map(|q| q.inflight).sum::<usize>(),
                    "dead_letters": v.dead_letters,
                })
            })
            .collect();
        Json(json!({ "groups": rows, "summary": summary }))
    })
}

async fn describe_group(State(s): State<AppState>, Path(group): Path<String>) -> Response {
    if let Err(e) = ferry_broker::validate::group_name(&group, s.engine.limits()) {
        let e = EngineError::from(e);
        return refused(http_of(&e), &e);
    }
    let Some(v) = s.engine.with_core(|c| c.group_view(&group)) else {
        return not_found(BrokerError::GroupNotFound(group));
    };
    Json(json!({
        "group": v.group,
        "policy": v.policy,
        "own_policy": v.own_policy,
        "fifo": v.policy.fifo,
        "queues": v.queues.iter().map(|q| json!({
            "topic": q.topic,
            "queue_id": q.queue_id,
            "consumed_offset": q.consumed_offset,
            "max_offset": q.max_offset,
            "lag": q.lag,
            "inflight": q.inflight,
        })).collect::<Vec<_>>(),
        "dead_letters": v.dead_letters,
    }))
    .into_response()
}

async fn message_by_id(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match lookup::find(s.engine.clone(), lookup::Query::Id(id)).await {
        Ok(found) => Json(found).into_response(),
        Err(e) => refused(http_of(&e), &e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyLookup {
    key: Option<String>,
    topic: Option<String>,
    limit: Option<usize>,
}

async fn messages_by_key(
    State(s): State<AppState>,
    query: Result<Query<KeyLookup>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return bad_request(format!("query: {}", e.body_text())),
    };
    let Some(key) = q.key.filter(|k| !k.is_empty()) else {
        return bad_request("give the message key to look for: ?key=...".into());
    };
    let limit = q
        .limit
        .unwrap_or(lookup::DEFAULT_KEY_RESULTS)
        .clamp(1, lookup::MAX_KEY_RESULTS);
    let query = lookup::Query::Key {
        key,
        topic: q.topic,
        limit,
    };
    match lookup::find(s.engine.clone(), query).await {
        Ok(found) => Json(found).into_response(),
        Err(e) => refused(http_of(&e), &e),
    }
}

async fn clients_list(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "clients": s.clients.list() }))
}

/// Most pending transactions listed in one answer (oldest first).
const PENDING_LIST_MAX: usize = 1000;

async fn transactions(State(s): State<AppState>) -> Json<serde_json::Value> {
    s.engine.with_core(|c| {
        let t = c.transactions();
        Json(json!({
            "pending_count": t.pending_len(),
            "pending": t.pending().take(PENDING_LIST_MAX).map(|h| json!({
                "transaction_id": ferry_broker::transaction::transaction_id(h.msg.log_offset),
                "topic": h.msg.topic,
                "message_id": h.msg.message_id,
                "queue_id": h.msg.queue_id,
                "message_group": h.msg.message_group,
                "delivery_timestamp_ms": h.delivery_ms,
                "stored_ms": h.msg.store_ms,
                "checks": h.checks,
                "next_check_ms": h.next_check_ms,
            })).collect::<Vec<_>>(),
            "recently_discarded": t.recent_discards().map(|r| json!({
                "transaction_id": ferry_broker::transaction::transaction_id(r.half_offset),
                "topic": r.topic,
                "message_id": r.message_id,
                "discarded_ms": r.at_ms,
                "checks": r.checks,
                "reason": r.reason,
            })).collect::<Vec<_>>(),
            "timers_pending": c.timers().len(),
        }))
    })
}

async fn recovery(State(s): State<AppState>) -> Json<serde_json::Value> {
    let r = s.engine.recovery_report();
    Json(json!({
        "segments": r.segments,
        "records": r.records,
        "clean_shutdown": r.clean_shutdown,
        "truncated_bytes": r.truncated_bytes,
        "damaged_segments": r.damaged_segments,
        "dropped": r.dropped.iter().map(|d| json!({"segment": d.segment, "from": d.from, "to": d.to, "reason": d.reason})).collect::<Vec<_>>(),
        "end_offset": r.end_offset,
    }))
}

/// Prometheus text; see [`crate::prometheus`].
async fn metrics(State(s): State<AppState>) -> Response {
    let body = prometheus::render(&s.engine, &s.clients);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The HTTP status of a refusal: 404 for anything not found, 409 for a
/// conflict, 429 for a limit, 503 while the commit log refuses writes after
/// a disk fault, 500 for the broker's other failures, else 400.
fn http_of(e: &EngineError) -> StatusCode {
    if let EngineError::Store(StoreError::Failed(_)) = e {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match status::code_of(e) {
        Code::NotFound
        | Code::TopicNotFound
        | Code::ConsumerGroupNotFound
        | Code::MessageNotFound => StatusCode::NOT_FOUND,
        Code::PreconditionFailed => StatusCode::CONFLICT,
        Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        Code::InternalError | Code::MessageCorrupted | Code::PayloadTooLarge => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

fn not_found(e: BrokerError) -> Response {
    let e = EngineError::from(e);
    refused(http_of(&e), &e)
}

/// An admin API refusal: the RocketMQ code name and the reason.
fn refused(http: StatusCode, e: &EngineError) -> Response {
    (
        http,
        Json(json!({"code": status::code_of(e).as_str_name(), "message": e.to_string()})),
    )
        .into_response()
}

/// Refuses a state-changing request (anything but GET, HEAD, OPTIONS) that
/// a browser sent from a page of another origin: the `Origin` header, when
/// present, must name the host the request was sent to. The admin API has
/// no login, so without this any web page an operator has open could POST a
/// re-drive or DELETE a topic through the operator's browser. Requests with
/// no `Origin` (curl, the CLI, scripts) are not browsers' and pass.
pub async fn same_origin(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::Method;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let headers = req.headers();
    let Some(origin) = headers.get(header::ORIGIN) else {
        return next.run(req).await;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    if host.is_some() && origin_host == host {
        return next.run(req).await;
    }
    (
        StatusCode::FORBIDDEN,
        Json(json!({
            "code": "FORBIDDEN",
            "message": format!(
                "{} {} from origin {:?} refused: state-changing admin calls are accepted only from the broker's own pages (or without an Origin header)",
                req.method(),
                req.uri().path(),
                origin.to_str().unwrap_or("?"),
            ),
        })),
    )
        .into_response()
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"code": "BAD_REQUEST", "message": message})),
    )
        .into_response()
}

fn policy_json(s: &AppState, group: &str) -> serde_json::Value {
    let (own, policy) = s
        .engine
        .with_core(|c| (c.policies().contains_key(group), c.policy(group).clone()));
    json!({"group": group, "own": own, "policy": policy})
}

async fn get_policy(State(s): State<AppState>, Path(group): Path<String>) -> Response {
    Json(policy_json(&s, &group)).into_response()
}

/// A policy change: every field optional, the rest kept as they are.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyChange {
    max_delivery_attempts: Option<u32>,
    /// Steps as text, e.g. `"1s 5s 1m"`.
    backoff: Option<String>,
    backoff_ms: Option<Vec<u64>>,
    fifo: Option<bool>,
}

async fn put_policy(
    State(s): State<AppState>,
    Path(group): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let change: PolicyChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return bad_request(format!("policy body: {e}")),
    };
    let mut p = s.engine.group_policy(&group);
    if let Some(v) = change.max_delivery_attempts {
        p.max_delivery_attempts = v;
    }
    match (change.backoff, change.backoff_ms) {
        (Some(_), Some(_)) => return bad_request("give backoff or backoff_ms, not both".into()),
        (Some(text), None) => match ferry_broker::policy::parse_backoff(&text) {
            Ok(steps) => p.backoff_ms = steps,
            Err(e) => return bad_request(format!("backoff: {e}")),
        },
        (None, Some(steps)) => p.backoff_ms = steps,
        (None, None) => {}
    }
    if let Some(v) = change.fifo {
        p.fifo = v;
    }
    match s.engine.set_group_policy(&group, Some(p)) {
        Ok(()) => Json(policy_json(&s, &group)).into_response(),
        Err(e) => refused(StatusCode::BAD_REQUEST, &e),
    }
}

async fn delete_policy(State(s): State<AppState>, Path(group): Path<String>) -> Response {
    match s.engine.set_group_policy(&group, None) {
        Ok(()) => Json(policy_json(&s, &group)).into_response(),
        Err(e) => refused(StatusCode::BAD_REQUEST, &e),
    }
}

#[derive(serde::Deserialize)]
struct Page {
    from: Option<u64>,
    limit: Option<usize>,
}

/// Most dead letters one listing returns.
const MAX_PAGE: usize = 1000;

async fn dead_letters(
    State(s): State<AppState>,
    Path(group): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let from = page.from.unwrap_or(0);
    match lookup::dead_letters(s.engine.clone(), group, from, limit).await {
        Ok(p) => Json(p).into_response(),
        Err(e) => refused(http_of(&e), &e),
    }
}

async fn redrive(
    State(s): State<AppState>,
    Path((group, offset)): Path<(String, u64)>,
) -> Response {
    match s.engine.redrive(&group, offset).await {
        Ok(topic) => {
            Json(json!({"group": group, "dlq_offset": offset, "topic": topic})).into_response()
        }
        Err(e) => refused(http_of(&e), &e),
    }
}
