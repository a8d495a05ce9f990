//! `apache.rocketmq.v2.MessagingService`: the wire face of the broker.
//!
//! Handlers are thin: check metadata, translate the request, call the
//! engine, translate the answer. Business failures travel as RocketMQ
//! `Status` codes inside a successful gRPC response, as the official clients
//! expect; gRPC errors are kept for broken transport-level input.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_broker::{BrokerError, Filter, GroupPolicy};
use ferry_proto::v2 as pb;
use ferry_proto::v2::messaging_service_server::{MessagingService, MessagingServiceServer};
use pb::Code;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::clients::{Client, Clients};
use crate::convert;
use crate::engine::{now_ms, Engine, EngineError, ReceiveArgs};
use crate::extensions;
use crate::metrics::{Metrics, Outcome, Rpc};
use crate::status;
use crate::ServerConfig;

type RpcResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

const RECEIVE_BATCH_SIZE: i32 = 32;
const BROKER_NAME: &str = "ferry";
/// Commands (check-backs) queued per Telemetry stream before the broker
/// stops handing that client more in a round.
pub const TELEMETRY_QUEUE: usize = 256;

pub struct Service {
    engine: Arc<Engine>,
    clients: Arc<Clients>,
    advertise: Option<(String, i32)>,
    listen: String,
    default_invisible_ms: i64,
    default_long_poll: Duration,
    stream_ids: AtomicU64,
    policy: SettingsPolicy,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Service {
    /// `stop` turning true ends every Telemetry stream, so a graceful
    /// shutdown does not wait on streams that never end by themselves.
    pub fn new(
        engine: Arc<Engine>,
        clients: Arc<Clients>,
        config: &ServerConfig,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let advertise = config.advertise.as_deref().and_then(split_host_port);
        Service {
            stop,
            engine,
            clients,
            advertise,
            listen: config.grpc_listen.clone(),
            default_invisible_ms: config.default_invisible.as_millis() as i64,
            default_long_poll: config.default_long_polling,
            stream_ids: AtomicU64::new(1),
            policy: SettingsPolicy {
                max_body_bytes: config.core.limits.max_body_bytes,
                long_polling: config.default_long_polling,
            },
        }
    }

    pub fn into_server(self, config: &ServerConfig) -> MessagingServiceServer<Service> {
        MessagingServiceServer::new(self)
            .max_decoding_message_size(config.max_request_bytes)
            .max_encoding_message_size(config.core.limits.max_body_bytes + (1 << 20))
    }

    fn metrics(&self) -> &Metrics {
        &self.engine.metrics
    }

    /// The endpoints to put in route answers.
    fn endpoints(&self, asked: Option<&pb::Endpoints>) -> pb::Endpoints {
        if let Some((host, port)) = &self.advertise {
            return endpoints_of(host, *port);
        }
        if let Some(e) = asked.filter(|e| !e.addresses.is_empty()) {
            return e.clone();
        }
        let (host, port) = split_host_port(&self.listen).unwrap_or(("127.0.0.1".into(), 8081));
        endpoints_of(&host, port)
    }
}

/// What the broker tells clients in the Telemetry settings reply.
#[derive(Debug, Clone)]
pub struct SettingsPolicy {
    pub max_body_bytes: usize,
    pub long_polling: Duration,
}

impl SettingsPolicy {
    /// The server's half of the settings exchange: the client's settings
    /// with the broker's policies filled in. A consumer learns its group's
    /// delivery policy (`group`): attempts, backoff steps and FIFO mode.
    pub fn reply(&self, s: &pb::Settings, group: &GroupPolicy) -> Result<pb::Settings, String> {
        let mut reply = s.clone();
        reply.metric = Some(pb::Metric {
            on: false,
            endpoints: None,
        });
        match &s.pub_sub {
            Some(pb::settings::PubSub::Publishing(p)) => {
                let attempts = s.backoff_policy.as_ref().map_or(0, |b| b.max_attempts);
                reply.backoff_policy = Some(pb::RetryPolicy {
                    max_attempts: if attempts > 0 { attempts } else { 3 },
                    strategy: Some(pb::retry_policy::Strategy::ExponentialBackoff(
                        pb::ExponentialBackoff {
                            initial: Some(convert::to_duration(Duration::from_millis(10))),
                            max: Some(convert::to_duration(Duration::from_secs(1))),
                            multiplier: 2.0,
                        },
                    )),
                });
                reply.pub_sub = Some(pb::settings::PubSub::Publishing(pb::Publishing {
                    topics: p.topics.clone(),
                    max_body_size: i32::try_from(self.max_body_bytes).unwrap_or(i32::MAX),
                    validate_message_type: true,
                }));
            }
            Some(pb::settings::PubSub::Subscription(sub)) => {
                reply.backoff_policy = Some(pb::RetryPolicy {
                    max_attempts: i32::try_from(group.max_delivery_attempts).unwrap_or(i32::MAX),
                    strategy: Some(pb::retry_policy::Strategy::CustomizedBackoff(
                        pb::CustomizedBackoff {
                            next: group
                                .backoff_ms
                                .iter()
                                .map(|ms| convert::to_duration(Duration::from_millis(*ms)))
                                .collect(),
                        },
                    )),
                });
                reply.pub_sub = Some(pb::settings::PubSub::Subscription(pb::Subscription {
                    group: sub.group.clone(),
                    subscriptions: sub.subscriptions.clone(),
                    fifo: Some(group.fifo),
                    receive_batch_size: Some(RECEIVE_BATCH_SIZE),
                    long_polling_timeout: Some(convert::to_duration(self.long_polling)),
                    ..Default::default()
                }));
            }
            None => return Err("settings carry neither publishing nor subscription".into()),
        }
        Ok(reply)
    }
}

fn endpoints_of(host: &str, port: i32) -> pb::Endpoints {
    let scheme = if host.parse::<std::net::Ipv4Addr>().is_ok() {
        pb::AddressScheme::IPv4
    } else if host.parse::<std::net::Ipv6Addr>().is_ok() {
        pb::AddressScheme::IPv6
    } else {
        pb::AddressScheme::DomainName
    };
    pb::Endpoints {
        scheme: scheme as i32,
        addresses: vec![pb::Address {
            host: host.to_string(),
            port,
        }],
    }
}

fn split_host_port(s: &str) -> Option<(String, i32)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// The caller's `x-mq-client-id`: required on every call, and at most
/// [`ferry_record::MAX_CLIENT_ID_BYTES`] because deliveries record it.
pub(crate) fn client_id<T>(req: &Request<T>) -> Result<String, pb::Status> {
    let id = req
        .metadata()
        .get("x-mq-client-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            status::of(
                Code::ClientIdRequired,
                "the x-mq-client-id header is required",
            )
        })?;
    if id.len() > ferry_record::MAX_CLIENT_ID_BYTES {
        return Err(status::of(
            Code::BadRequest,
            format!(
                "the x-mq-client-id header is {} bytes; at most {}",
                id.len(),
                ferry_record::MAX_CLIENT_ID_BYTES
            ),
        ));
    }
    Ok(id.to_string())
}

/// The time the client is willing to wait, from the `grpc-timeout` header.
fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub(crate) fn name(r: &Option<pb::Resource>) -> String {
    r.as_ref().map(|r| r.name.clone()).unwrap_or_default()
}

pub(crate) fn broker_status(e: BrokerError) -> pb::Status {
    status::from_error(&EngineError::Broker(e))
}

/// A ReceiveMessage answer before it becomes the stream of frames: its
/// status (the first frame) and the messages.
pub(crate) struct ReceiveAnswer {
    head: pb::Status,
    messages: Vec<pb::Message>,
}

fn receive_frames(head: pb::Status, messages: Vec<pb::Message>) -> ReceiveAnswer {
    ReceiveAnswer { head, messages }
}

impl ReceiveAnswer {
    fn into_stream(self) -> BoxStream<pb::ReceiveMessageResponse> {
        use pb::receive_message_response::Content;
        let mut frames = Vec::with_capacity(self.messages.len() + 2);
        frames.push(Ok(pb::ReceiveMessageResponse {
            content: Some(Content::Status(self.head)),
        }));
        for m in self.messages {
            frames.push(Ok(pb::ReceiveMessageResponse {
                content: Some(Content::Message(m)),
            }));
        }
        frames.push(Ok(pb::ReceiveMessageResponse {
            content: Some(Content::DeliveryTimestamp(convert::ms_to_ts(now_ms()))),
        }));
        Box::pin(tokio_stream::iter(frames))
    }
}

/// The RocketMQ status a handler's answer carries in its body (the gRPC
/// status is OK for it), as the `code` label of the request metrics.
pub(crate) trait Answer {
    fn outcome(&self) -> Outcome;
}

fn outcome_of(status: Option<&pb::Status>) -> Outcome {
    Outcome::Rocket(status.map_or(Code::Unspecified as i32, |s| s.code))
}

macro_rules! answers {
    ($($t:ty),* $(,)?) => {
        $(impl Answer for $t {
            fn outcome(&self) -> Outcome {
                outcome_of(self.status.as_ref())
            }
        })*
    };
}

answers!(
    pb::QueryRouteResponse,
    pb::HeartbeatResponse,
    pb::SendMessageResponse,
    pb::QueryAssignmentResponse,
    pb::AckMessageResponse,
    pb::ForwardMessageToDeadLetterQueueResponse,
    pb::UpdateOffsetResponse,
    pb::GetOffsetResponse,
    pb::QueryOffsetResponse,
    pb::EndTransactionResponse,
    pb::NotifyClientTerminationResponse,
    pb::ChangeInvisibleDurationResponse,
    pb::RecallMessageResponse,
    pb::SyncLiteSubscriptionResponse,
    ferry_proto::ext::EndTransactionsResponse,
);

impl Answer for ReceiveAnswer {
    fn outcome(&self) -> Outcome {
        outcome_of(Some(&self.head))
    }
}

/// A stream opened (Telemetry, PullMessage): OK; what flows on it later is
/// not a call of its own.
impl<T> Answer for BoxStream<T> {
    fn outcome(&self) -> Outcome {
        Outcome::Rocket(Code::Ok as i32)
    }
}

/// Runs one call's handler, timing it and counting its outcome: the
/// RocketMQ code of the answer, the gRPC code of an error, or `CANCELLED`
/// when the client goes away first. The one place request metrics are
/// recorded, for both gRPC services.
pub(crate) async fn timed<T: Answer>(
    metrics: &Metrics,
    rpc: Rpc,
    call: impl Future<Output = RpcResult<T>>,
) -> RpcResult<T> {
    let timer = metrics.grpc.start(rpc);
    let result = call.await;
    timer.finish(match &result {
        Ok(r) => r.get_ref().outcome(),
        Err(s) => Outcome::Grpc(s.code() as i32),
    });
    result
}

/// The handlers; [`MessagingService`] below times each and records its
/// outcome.
impl Service {
    async fn serve_query_route(
        &self,
        request: Request<pb::QueryRouteRequest>,
    ) -> RpcResult<pb::QueryRouteResponse> {
        let reply = |status, message_queues| {
            Ok(Response::new(pb::QueryRouteResponse {
                status: Some(status),
                message_queues,
            }))
        };
        if let Err(s) = client_id(&request) {
            return reply(s, vec![]);
        }
        let req = request.into_inner();
        let topic = name(&req.topic);
        let (queues, types) = match self.engine.ensure_topic(&topic) {
            Ok(t) => t,
            Err(e) => return reply(status::from_error(&e), vec![]),
        };
        let broker = pb::Broker {
            name: BROKER_NAME.into(),
            id: 0,
            endpoints: Some(self.endpoints(req.endpoints.as_ref())),
        };
        // The wire numbers are the core's: NORMAL 1 … TRANSACTION 4.
        let accepted: Vec<i32> = types.kinds().map(|k| k as i32).collect();
        let message_queues = (0..queues)
            .map(|id| pb::MessageQueue {
                topic: req.topic.clone(),
                id: id as i32,
                permission: pb::Permission::ReadWrite as i32,
                broker: Some(broker.clone()),
                accept_message_types: accepted.clone(),
            })
            .collect();
        reply(status::ok(), message_queues)
    }

    async fn serve_heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> RpcResult<pb::HeartbeatResponse> {
        let status = match client_id(&request) {
            Err(s) => s,
            Ok(id) if self.clients.touch(&id) => status::ok(),
            Ok(_) => status::of(
                Code::UnrecognizedClientType,
                "unknown client: open the Telemetry stream and send your settings first",
            ),
        };
        Ok(Response::new(pb::HeartbeatResponse {
            status: Some(status),
        }))
    }

    async fn serve_send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> RpcResult<pb::SendMessageResponse> {
        if let Err(s) = client_id(&request) {
            return Ok(Response::new(pb::SendMessageResponse {
                status: Some(s),
                entries: vec![],
            }));
        }
        let messages = request.into_inner().messages;
        let ids: Vec<String> = messages
            .iter()
            .map(|m| {
                m.system_properties
                    .as_ref()
                    .map(|s| s.message_id.clone())
                    .unwrap_or_default()
            })
            .collect();
        let converted: Vec<Result<_, BrokerError>> =
            messages.into_iter().map(convert::incoming).collect();
        let outcome = match converted.iter().position(Result::is_err) {
            Some(bad) => {
                let reason = converted[bad]
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                Err(converted
                    .into_iter()
                    .map(|c| match c {
                        Err(e) => EngineError::Broker(e),
                        Ok(_) => EngineError::Broker(BrokerError::BatchRejected {
                            index: bad,
                            reason: reason.clone(),
                        }),
                    })
                    .collect::<Vec<_>>())
            }
            None => {
                self.engine
                    .send(
                        converted
                            .into_iter()
                            .map(|c| c.expect("checked above"))
                            .collect(),
                    )
                    .await
            }
        };
        let entries: Vec<pb::SendResultEntry> = match outcome {
            Ok(stored) => stored
                .into_iter()
                .map(|s| pb::SendResultEntry {
                    status: Some(status::ok()),
                    message_id: s.message_id,
                    transaction_id: s.transaction_id.unwrap_or_default(),
                    // Not yet placed in a queue (half or delayed message).
                    offset: s.queue_offset.map_or(0, |o| o as i64),
                    recall_handle: s.recall_handle.unwrap_or_default(),
                })
                .collect(),
            Err(errors) => {
                // One error for the whole batch applies to every entry.
                let per_entry: Vec<pb::Status> = if errors.len() == ids.len() {
                    errors.iter().map(status::from_error).collect()
                } else {
                    let s = errors
                        .first()
                        .map(status::from_error)
                        .unwrap_or_else(status::ok);
                    vec![s; ids.len().max(1)]
                };
                for s in &per_entry {
                    debug!(code = s.code, message = %s.message, "send refused");
                }
                per_entry
                    .into_iter()
                    .zip(ids.iter().cloned().chain(std::iter::repeat(String::new())))
                    .map(|(s, id)| pb::SendResultEntry {
                        status: Some(s),
                        message_id: id,
                        ..Default::default()
                    })
                    .collect()
            }
        };
        let statuses: Vec<pb::Status> = entries.iter().filter_map(|e| e.status.clone()).collect();
        Ok(Response::new(pb::SendMessageResponse {
            status: Some(status::overall(&statuses)),
            entries,
        }))
    }

    async fn serve_query_assignment(
        &self,
        request: Request<pb::QueryAssignmentRequest>,
    ) -> RpcResult<pb::QueryAssignmentResponse> {
        let reply = |status, assignments| {
            Ok(Response::new(pb::QueryAssignmentResponse {
                status: Some(status),
                assignments,
            }))
        };
        if let Err(s) = client_id(&request) {
            return reply(s, vec![]);
        }
        let req = request.into_inner();
        let topic = name(&req.topic);
        if let Err(e) = ferry_broker::validate::group_name(&name(&req.group), self.engine.limits())
        {
            return reply(broker_status(e), vec![]);
        }
        if let Err(e) = self.engine.ensure_topic(&topic) {
            return reply(status::from_error(&e), vec![]);
        }
        // One assignment for the whole broker: a receive on it is served from
        // every queue of the topic, so one long poll per consumer suffices.
        let assignment = pb::Assignment {
            message_queue: Some(pb::MessageQueue {
                topic: req.topic.clone(),
                id: 0,
                permission: pb::Permission::ReadWrite as i32,
                broker: Some(pb::Broker {
                    name: BROKER_NAME.into(),
                    id: 0,
                    endpoints: Some(self.endpoints(req.endpoints.as_ref())),
                }),
                accept_message_types: vec![],
            }),
        };
        reply(status::ok(), vec![assignment])
    }

    async fn serve_receive_message(
        &self,
        request: Request<pb::ReceiveMessageRequest>,
    ) -> RpcResult<ReceiveAnswer> {
        let client = match client_id(&request) {
            Ok(c) => c,
            Err(s) => return Ok(Response::new(receive_frames(s, vec![]))),
        };
        let client_wait = grpc_timeout(&request);
        let digest = convert::BodyDigest::accepted(
            request
                .metadata()
                .get(ferry_proto::ext::ACCEPT_DIGEST_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let req = request.into_inner();
        let limits = self.engine.limits();
        let fail = |e: BrokerError| Ok(Response::new(receive_frames(broker_status(e), vec![])));
        let topic = req
            .message_queue
            .as_ref()
            .map(|q| name(&q.topic))
            .unwrap_or_default();
        let filter = match &req.filter_expression {
            None => Ok(Filter::All),
            Some(f) if f.r#type == pb::FilterType::Sql as i32 => Filter::parse_sql(&f.expression),
            Some(f) => Filter::parse_tag(&f.expression),
        };
        let filter = match filter {
            Ok(f) => f,
            Err(e) => return fail(BrokerError::IllegalFilter(e.to_string())),
        };
        let invisible_ms = match &req.invisible_duration {
            None => self.default_invisible_ms,
            Some(d) => match convert::duration_ms(d) {
                Some(ms) => ms,
                None => {
                    return fail(BrokerError::IllegalInvisibleTime(
                        "negative duration".into(),
                    ))
                }
            },
        };
        let mut long_poll = match &req.long_polling_timeout {
            None => self.default_long_poll,
            Some(d) => match convert::duration_ms(d) {
                Some(ms) if ms <= limits.max_long_polling_ms => Duration::from_millis(ms as u64),
                _ => {
                    return fail(BrokerError::IllegalPollingTime(format!(
                        "must be between 0 and {} ms",
                        limits.max_long_polling_ms
                    )))
                }
            },
        };
        if let Some(w) = client_wait {
            // Answer before the client gives up on the call.
            long_poll = long_poll.min(w.saturating_sub(Duration::from_millis(500)));
        }
        if req
            .attempt_id
            .as_ref()
            .is_some_and(|a| a.len() > crate::engine::MAX_ATTEMPT_ID_LEN)
        {
            return fail(BrokerError::BadRequest(format!(
                "attempt id longer than {} bytes",
                crate::engine::MAX_ATTEMPT_ID_LEN
            )));
        }
        if req.batch_size <= 0 {
            return fail(BrokerError::BadRequest(format!(
                "batch size must be positive, got {}",
                req.batch_size
            )));
        }
        if let Err(e) = self.engine.ensure_topic(&topic) {
            return Ok(Response::new(receive_frames(
                status::from_error(&e),
                vec![],
            )));
        }
        let args = ReceiveArgs {
            group: name(&req.group),
            topic: topic.clone(),
            filter,
            max_messages: req.batch_size as usize,
            invisible_ms,
            long_poll,
            attempt_id: req.attempt_id.clone().filter(|a| !a.is_empty()),
            client,
        };
        let store_host = self.listen.clone();
        match self.engine.receive(&args).await {
            Ok(got) if got.is_empty() => Ok(Response::new(receive_frames(
                status::of(Code::MessageNotFound, "no new message"),
                vec![],
            ))),
            Ok(got) => {
                let messages = got
                    .into_iter()
                    .map(|d| convert::outgoing(d, &topic, &store_host, invisible_ms, digest))
                    .collect();
                Ok(Response::new(receive_frames(status::ok(), messages)))
            }
            Err(e) => Ok(Response::new(receive_frames(
                status::from_error(&e),
                vec![],
            ))),
        }
    }

    async fn serve_ack_message(
        &self,
        request: Request<pb::AckMessageRequest>,
    ) -> RpcResult<pb::AckMessageResponse> {
        if let Err(s) = client_id(&request) {
            return Ok(Response::new(pb::AckMessageResponse {
                status: Some(s),
                entries: vec![],
            }));
        }
        let req = request.into_inner();
        let (group, topic) = (name(&req.group), name(&req.topic));
        if req.entries.is_empty() {
            return Ok(Response::new(pb::AckMessageResponse {
                status: Some(status::of(Code::BadRequest, "no entries to acknowledge")),
                entries: vec![],
            }));
        }
        let receipts: Vec<&str> = req
            .entries
            .iter()
            .map(|e| e.receipt_handle.as_str())
            .collect();
        let results = self.engine.ack(&group, &topic, &receipts).await;
        let entries: Vec<pb::AckMessageResultEntry> = req
            .entries
            .iter()
            .zip(results)
            .map(|(e, r)| pb::AckMessageResultEntry {
                message_id: e.message_id.clone(),
                receipt_handle: e.receipt_handle.clone(),
                status: Some(match r {
                    Ok(()) => status::ok(),
                    Err(err) => status::from_error(&err),
                }),
            })
            .collect();
        let statuses: Vec<pb::Status> = entries.iter().filter_map(|e| e.status.clone()).collect();
        Ok(Response::new(pb::AckMessageResponse {
            status: Some(status::overall(&statuses)),
            entries,
        }))
    }

    async fn serve_forward_message_to_dead_letter_queue(
        &self,
        request: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
    ) -> RpcResult<pb::ForwardMessageToDeadLetterQueueResponse> {
        let reply = |status| {
            Ok(Response::new(pb::ForwardMessageToDeadLetterQueueResponse {
                status: Some(status),
            }))
        };
        if let Err(s) = client_id(&request) {
            return reply(s);
        }
        let req = request.into_inner();
        match self
            .engine
            .dead_letter(&name(&req.group), &name(&req.topic), &req.receipt_handle)
            .await
        {
            Ok(()) => reply(status::ok()),
            Err(e) => reply(status::from_error(&e)),
        }
    }

    async fn serve_pull_message(
        &self,
        _request: Request<pb::PullMessageRequest>,
    ) -> RpcResult<BoxStream<pb::PullMessageResponse>> {
        Err(Status::unimplemented(
            "PullMessage is not served by Ferry (no official client needs it)",
        ))
    }

    async fn serve_update_offset(
        &self,
        _request: Request<pb::UpdateOffsetRequest>,
    ) -> RpcResult<pb::UpdateOffsetResponse> {
        Err(Status::unimplemented(
            "UpdateOffset is not served by Ferry (no official client needs it)",
        ))
    }

    async fn serve_get_offset(
        &self,
        _request: Request<pb::GetOffsetRequest>,
    ) -> RpcResult<pb::GetOffsetResponse> {
        Err(Status::unimplemented(
            "GetOffset is not served by Ferry (no official client needs it)",
        ))
    }

    async fn serve_query_offset(
        &self,
        _request: Request<pb::QueryOffsetRequest>,
    ) -> RpcResult<pb::QueryOffsetResponse> {
        Err(Status::unimplemented(
            "QueryOffset is not served by Ferry (no official client needs it)",
        ))
    }

    async fn serve_end_transaction(
        &self,
        request: Request<pb::EndTransactionRequest>,
    ) -> RpcResult<pb::EndTransactionResponse> {
        let reply = |status| {
            Ok(Response::new(pb::EndTransactionResponse {
                status: Some(status),
            }))
        };
        if let Err(s) = client_id(&request) {
            return reply(s);
        }
        let end = match extensions::end_request(request.into_inner()) {
            Ok(Some(end)) => end,
            Ok(None) => return reply(status::ok()),
            Err(refused) => return reply(refused),
        };
        let decided = self.engine.end_transaction(&end).await;
        reply(extensions::end_status(&end, decided))
    }

    async fn serve_telemetry(
        &self,
        request: Request<tonic::Streaming<pb::TelemetryCommand>>,
    ) -> RpcResult<BoxStream<pb::TelemetryCommand>> {
        let id = client_id(&request).map_err(|s| Status::invalid_argument(s.message))?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<pb::TelemetryCommand, Status>>(TELEMETRY_QUEUE);
        let stream_id = self.stream_ids.fetch_add(1, Ordering::Relaxed);
        let clients = self.clients.clone();
        let policy = self.policy.clone();
        let engine = self.engine.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    _ = stop.wait_for(|s| *s) => break,
                };
                let cmd = match next {
                    Ok(Some(cmd)) => cmd,
                    Ok(None) => break,
                    Err(e) => {
                        debug!(client = %id, error = %e, "telemetry stream broke");
                        break;
                    }
                };
                let Some(pb::telemetry_command::Command::Settings(settings)) = cmd.command else {
                    debug!(client = %id, "telemetry command other than settings ignored");
                    continue;
                };
                let group = match &settings.pub_sub {
                    Some(pb::settings::PubSub::Subscription(sub)) => {
                        engine.group_policy(&name(&sub.group))
                    }
                    _ => GroupPolicy::default(),
                };
                let reply = match policy.reply(&settings, &group) {
                    Ok(r) => r,
                    Err(msg) => {
                        warn!(client = %id, %msg, "refusing client settings");
                        let _ = tx.send(Err(Status::invalid_argument(msg))).await;
                        break;
                    }
                };
                let client = Client {
                    settings: reply.clone(),
                    last_seen: Instant::now(),
                    stream_id,
                    commands: tx.clone(),
                };
                if let Err(msg) = clients.register(&id, client) {
                    let _ = tx.send(Err(Status::resource_exhausted(msg))).await;
                    break;
                }
                info!(client = %id, "client settings received");
                let cmd = pb::TelemetryCommand {
                    status: Some(status::ok()),
                    command: Some(pb::telemetry_command::Command::Settings(reply)),
                };
                if tx.send(Ok(cmd)).await.is_err() {
                    break;
                }
            }
            clients.remove(&id, Some(stream_id));
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn serve_notify_client_termination(
        &self,
        request: Request<pb::NotifyClientTerminationRequest>,
    ) -> RpcResult<pb::NotifyClientTerminationResponse> {
        let status = match client_id(&request) {
            Err(s) => s,
            Ok(id) => {
                self.clients.remove(&id, None);
                info!(client = %id, "client terminated");
                status::ok()
            }
        };
        Ok(Response::new(pb::NotifyClientTerminationResponse {
            status: Some(status),
        }))
    }

    async fn serve_change_invisible_duration(
        &self,
        request: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> RpcResult<pb::ChangeInvisibleDurationResponse> {
        let reply = |status, receipt_handle| {
            Ok(Response::new(pb::ChangeInvisibleDurationResponse {
                status: Some(status),
                receipt_handle,
            }))
        };
        if let Err(s) = client_id(&request) {
            return reply(s, String::new());
        }
        let req = request.into_inner();
        let Some(ms) = req
            .invisible_duration
            .as_ref()
            .and_then(convert::duration_ms)
        else {
            return reply(
                broker_status(BrokerError::IllegalInvisibleTime(
                    "a non-negative invisible duration is required".into(),
                )),
                String::new(),
            );
        };
        match self
            .engine
            .change_invisible(
                &name(&req.group),
                &name(&req.topic),
                &req.receipt_handle,
                ms,
            )
            .await
        {
            Ok(handle) => reply(status::ok(), handle),
            Err(e) => reply(status::from_error(&e), String::new()),
        }
    }

    async fn serve_recall_message(
        &self,
        request: Request<pb::RecallMessageRequest>,
    ) -> RpcResult<pb::RecallMessageResponse> {
        let reply = |status, message_id| {
            Ok(Response::new(pb::RecallMessageResponse {
                status: Some(status),
                message_id,
            }))
        };
        if let Err(s) = client_id(&request) {
            return reply(s, String::new());
        }
        let req = request.into_inner();
        match self
            .engine
            .recall(&name(&req.topic), &req.recall_handle)
            .await
        {
            Ok(id) => reply(status::ok(), id),
            Err(e) => reply(status::from_error(&e), String::new()),
        }
    }

    async fn serve_sync_lite_subscription(
        &self,
        _request: Request<pb::SyncLiteSubscriptionRequest>,
    ) -> RpcResult<pb::SyncLiteSubscriptionResponse> {
        Err(Status::unimplemented("lite topics are not served by Ferry"))
    }
}

/// Every call goes through [`timed`]. ReceiveMessage is timed until its
/// answer, long-polling wait included (its frames follow at once).
/// Telemetry is counted when its stream opens and not timed: the stream
/// lasts as long as the client's session.
#[tonic::async_trait]
impl MessagingService for Service {
    async fn query_route(
        &self,
        request: Request<pb::QueryRouteRequest>,
    ) -> RpcResult<pb::QueryRouteResponse> {
        let call = self.serve_query_route(request);
        timed(self.metrics(), Rpc::QueryRoute, call).await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> RpcResult<pb::HeartbeatResponse> {
        let call = self.serve_heartbeat(request);
        timed(self.metrics(), Rpc::Heartbeat, call).await
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> RpcResult<pb::SendMessageResponse> {
        let call = self.serve_send_message(request);
        timed(self.metrics(), Rpc::SendMessage, call).await
    }

    async fn query_assignment(
        &self,
        request: Request<pb::QueryAssignmentRequest>,
    ) -> RpcResult<pb::QueryAssignmentResponse> {
        let call = self.serve_query_assignment(request);
        timed(self.metrics(), Rpc::QueryAssignment, call).await
    }

    type ReceiveMessageStream = BoxStream<pb::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        request: Request<pb::ReceiveMessageRequest>,
    ) -> RpcResult<Self::ReceiveMessageStream> {
        let call = self.serve_receive_message(request);
        let answer = timed(self.metrics(), Rpc::ReceiveMessage, call).await?;
        Ok(answer.map(ReceiveAnswer::into_stream))
    }

    async fn ack_message(
        &self,
        request: Request<pb::AckMessageRequest>,
    ) -> RpcResult<pb::AckMessageResponse> {
        let call = self.serve_ack_message(request);
        timed(self.metrics(), Rpc::AckMessage, call).await
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
    ) -> RpcResult<pb::ForwardMessageToDeadLetterQueueResponse> {
        let call = self.serve_forward_message_to_dead_letter_queue(request);
        timed(self.metrics(), Rpc::ForwardMessageToDeadLetterQueue, call).await
    }

    type PullMessageStream = BoxStream<pb::PullMessageResponse>;

    async fn pull_message(
        &self,
        request: Request<pb::PullMessageRequest>,
    ) -> RpcResult<Self::PullMessageStream> {
        let call = self.serve_pull_message(request);
        timed(self.metrics(), Rpc::PullMessage, call).await
    }

    async fn update_offset(
        &self,
        request: Request<pb::UpdateOffsetRequest>,
    ) -> RpcResult<pb::UpdateOffsetResponse> {
        let call = self.serve_update_offset(request);
        timed(self.metrics(), Rpc::UpdateOffset, call).await
    }

    async fn get_offset(
        &self,
        request: Request<pb::GetOffsetRequest>,
    ) -> RpcResult<pb::GetOffsetResponse> {
        let call = self.serve_get_offset(request);
        timed(self.metrics(), Rpc::GetOffset, call).await
    }

    async fn query_offset(
        &self,
        request: Request<pb::QueryOffsetRequest>,
    ) -> RpcResult<pb::QueryOffsetResponse> {
        let call = self.serve_query_offset(request);
        timed(self.metrics(), Rpc::QueryOffset, call).await
    }

    async fn end_transaction(
        &self,
        request: Request<pb::EndTransactionRequest>,
    ) -> RpcResult<pb::EndTransactionResponse> {
        let call = self.serve_end_transaction(request);
        timed(self.metrics(), Rpc::EndTransaction, call).await
    }

    type TelemetryStream = BoxStream<pb::TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<tonic::Streaming<pb::TelemetryCommand>>,
    ) -> RpcResult<Self::TelemetryStream> {
        let call = self.serve_telemetry(request);
        timed(self.metrics(), Rpc::Telemetry, call).await
    }

    async fn notify_client_termination(
        &self,
        request: Request<pb::NotifyClientTerminationRequest>,
    ) -> RpcResult<pb::NotifyClientTerminationResponse> {
        let call = self.serve_notify_client_termination(request);
        timed(self.metrics(), Rpc::NotifyClientTermination, call).await
    }

    async fn change_invisible_duration(
        &self,
        request: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> RpcResult<pb::ChangeInvisibleDurationResponse> {
        let call = self.serve_change_invisible_duration(request);
        timed(self.metrics(), Rpc::ChangeInvisibleDuration, call).await
    }

    async fn recall_message(
        &self,
        request: Request<pb::RecallMessageRequest>,
    ) -> RpcResult<pb::RecallMessageResponse> {
        let call = self.serve_recall_message(request);
        timed(self.metrics(), Rpc::RecallMessage, call).await
    }

    async fn sync_lite_subscription(
        &self,
        request: Request<pb::SyncLiteSubscriptionRequest>,
    ) -> RpcResult<pb::SyncLiteSubscriptionResponse> {
        let call = self.serve_sync_lite_subscription(request);
        timed(self.metrics(), Rpc::SyncLiteSubscription, call).await
    }
}
