//! One client's connection to the broker: the gRPC channel with its
//! headers, the Telemetry stream (settings exchange, check-backs), and the
//! heartbeat. Producers and consumers are thin layers over a session.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferry_proto::ext;
use ferry_proto::ext::extensions_client::ExtensionsClient;
use ferry_proto::v2 as pb;
use ferry_proto::v2::messaging_service_client::MessagingServiceClient;
use pb::telemetry_command::Command;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::config::ClientConfig;
use crate::error::{check, ClientError, Result};
use crate::headers::{self, Headers};
use crate::message::{duration, from_duration, resource, ReceivedMessage};
use crate::retry::RetryPolicy;
use crate::transaction::{DynChecker, TransactionResolution};

pub(crate) type Rpc = MessagingServiceClient<InterceptedService<Channel, Headers>>;
/// Ferry's own calls (`ferry.v1.Extensions`) on the same connection.
pub(crate) type Ext = ExtensionsClient<InterceptedService<Channel, Headers>>;

/// How often the client says it is alive (the broker forgets clients
/// after about two minutes of silence).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// How often settings are sent again, so policy changes reach the client.
pub const SETTINGS_INTERVAL: Duration = Duration::from_secs(300);
/// Check-backs answered at once; more wait for a free slot.
pub const MAX_CONCURRENT_CHECKS: usize = 32;
/// Largest message the client accepts from the broker (a 4 MiB body plus
/// properties, with room for a larger broker limit).
pub const MAX_DECODING_BYTES: usize = 64 << 20;
/// First wait before reopening a broken Telemetry stream; doubles to
/// [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(200);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(10);

/// Resolves once the flag behind `rx` is true (or its sender is gone).
/// The borrow guard never outlives this function, so callers stay `Send`.
pub(crate) async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// What the broker told this client in the settings exchange, already read.
#[derive(Debug, Clone)]
pub(crate) struct ServerSettings {
    pub retry: RetryPolicy,
    pub max_body: usize,
    pub validate_message_type: bool,
    pub fifo: bool,
    pub receive_batch: usize,
    pub long_polling: Duration,
}

pub(crate) struct Session {
    pub rpc: Rpc,
    ext: Ext,
    pub config: ClientConfig,
    pub client_id: String,
    access_point: pb::Endpoints,
    client_type: pb::ClientType,
    group: Option<String>,
    pub_sub: pb::settings::PubSub,
    /// Swapped whole on each settings reply, so readers (every send and
    /// every handled message) take a reference count, not a copy.
    server: RwLock<Arc<ServerSettings>>,
    checker: Option<Arc<dyn DynChecker>>,
    checks: Arc<Semaphore>,
    stop: watch::Sender<bool>,
    stopped: AtomicBool,
    reconnect: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Session {
    /// Connects, exchanges settings (the broker must answer, or start-up
    /// fails), and starts the Telemetry and heartbeat tasks.
    pub async fn start(
        config: ClientConfig,
        client_type: pb::ClientType,
        group: Option<String>,
        pub_sub: pb::settings::PubSub,
        defaults: ServerSettings,
        checker: Option<Arc<dyn DynChecker>>,
    ) -> Result<Arc<Session>> {
        let (host, port) = config.host_port()?;
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| ClientError::Invalid {
                what: "endpoint",
                why: e.to_string(),
            })?
            .connect_timeout(config.request_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await.map_err(|e| ClientError::Connect {
            endpoint: config.endpoint.clone(),
            reason: crate::error::chain(&e),
        })?;
        let client_id = headers::new_client_id();
        let h = Headers::new(&client_id, &config.namespace, config.credentials.clone()).map_err(
            |e| ClientError::Invalid {
                what: "namespace",
                why: e.message().to_string(),
            },
        )?;
        let ext = ExtensionsClient::with_interceptor(channel.clone(), h.clone());
        let rpc = MessagingServiceClient::with_interceptor(channel, h)
            .max_decoding_message_size(MAX_DECODING_BYTES)
            .max_encoding_message_size(MAX_DECODING_BYTES);
        let scheme = if host.parse::<std::net::Ipv4Addr>().is_ok() {
            pb::AddressScheme::IPv4
        } else if host.parse::<std::net::Ipv6Addr>().is_ok() {
            pb::AddressScheme::IPv6
        } else {
            pb::AddressScheme::DomainName
        };
        let access_point = pb::Endpoints {
            scheme: scheme as i32,
            addresses: vec![pb::Address {
                host,
                port: i32::from(port),
            }],
        };
        let (stop, _) = watch::channel(false);
        let session = Arc::new(Session {
            rpc,
            ext,
            config,
            client_id,
            access_point,
            client_type,
            group,
            pub_sub,
            server: RwLock::new(Arc::new(defaults)),
            checker,
            checks: Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS)),
            stop,
            stopped: AtomicBool::new(false),
            reconnect: Notify::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let (inbound, out) = session.open_telemetry().await?;
        info!(client = %session.client_id, endpoint = %session.config.endpoint, "client started");
        let t = tokio::spawn(session.clone().telemetry_loop(inbound, out));
        let h = tokio::spawn(session.clone().heartbeat_loop());
        session.track(t);
        session.track(h);
        Ok(session)
    }

    pub fn track(&self, task: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    pub fn access_point(&self) -> pb::Endpoints {
        self.access_point.clone()
    }

    pub fn group_resource(&self) -> Option<pb::Resource> {
        self.group
            .as_deref()
            .map(|g| resource(&self.config.namespace, g))
    }

    pub fn server(&self) -> Arc<ServerSettings> {
        self.server
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A receiver that turns true when the client is shutting down.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub fn ensure_running(&self) -> Result<()> {
        if self.is_stopped() {
            Err(ClientError::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Wraps a request with its deadline (sent as `grpc-timeout`, so a long
    /// poll on the broker answers before the client gives up).
    pub fn request<T>(&self, msg: T, deadline: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(deadline);
        r
    }

    /// Runs one unary call with a local deadline as well (a dead connection
    /// must not hang the caller).
    pub async fn unary<T, Fut>(
        &self,
        deadline: Duration,
        call: impl FnOnce(Rpc) -> Fut,
    ) -> Result<T>
    where
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.bounded(deadline, call(self.rpc.clone())).await
    }

    /// A call's answer within `deadline` (a dead connection must not hang
    /// the caller), unless the client is shut down.
    async fn bounded<T>(
        &self,
        deadline: Duration,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        self.ensure_running()?;
        match tokio::time::timeout(deadline, call).await {
            Err(_) => Err(ClientError::Timeout(deadline)),
            Ok(Err(s)) => Err(ClientError::Rpc(s)),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    fn settings_command(&self) -> pb::TelemetryCommand {
        let s = self.server();
        let backoff = match self.client_type {
            pb::ClientType::Producer => Some(pb::RetryPolicy {
                max_attempts: s.retry.max_attempts as i32,
                strategy: None,
            }),
            _ => None,
        };
        pb::TelemetryCommand {
            status: None,
            command: Some(Command::Settings(pb::Settings {
                client_type: Some(self.client_type as i32),
                access_point: Some(self.access_point.clone()),
                backoff_policy: backoff,
                request_timeout: Some(duration(self.config.request_timeout)),
                pub_sub: Some(self.pub_sub.clone()),
                user_agent: Some(pb::Ua {
                    language: pb::Language::Rust as i32,
                    version: headers::CLIENT_VERSION.to_string(),
                    platform: std::env::consts::OS.to_string(),
                    hostname: headers::hostname().to_string(),
                }),
                metric: None,
                client_properties: Default::default(),
            })),
        }
    }

    /// Opens a Telemetry stream, sends settings and waits for the broker's.
    async fn open_telemetry(
        self: &Arc<Self>,
    ) -> Result<(
        tonic::Streaming<pb::TelemetryCommand>,
        mpsc::Sender<pb::TelemetryCommand>,
    )> {
        let deadline = self.config.request_timeout;
        let (tx, rx) = mpsc::channel(64);
        tx.send(self.settings_command())
            .await
            .map_err(|_| ClientError::Shutdown)?;
        let mut rpc = self.rpc.clone();
        let opened = tokio::time::timeout(deadline, rpc.telemetry(ReceiverStream::new(rx)))
            .await
            .map_err(|_| ClientError::Timeout(deadline))??;
        let mut inbound = opened.into_inner();
        loop {
            let cmd = tokio::time::timeout(deadline, inbound.message())
                .await
                .map_err(|_| ClientError::Timeout(deadline))??
                .ok_or_else(|| {
                    ClientError::Protocol(
                        "Telemetry stream closed before the settings reply".into(),
                    )
                })?;
            if let Some(Command::Settings(s)) = &cmd.command {
                if let Some(status) = &cmd.status {
                    check(Some(status.clone()))?;
                }
                self.apply_settings(s);
                return Ok((inbound, tx));
            }
            self.handle(cmd, &tx);
        }
    }

    fn apply_settings(&self, s: &pb::Settings) {
        let mut slot = self.server.write().unwrap_or_else(|p| p.into_inner());
        let mut cur = ServerSettings::clone(&slot);
        if let Some(p) = &s.backoff_policy {
            cur.retry = RetryPolicy::from_wire(p, &cur.retry);
        }
        match &s.pub_sub {
            Some(pb::settings::PubSub::Publishing(p)) => {
                if p.max_body_size > 0 {
                    cur.max_body = p.max_body_size as usize;
                }
                cur.validate_message_type = p.validate_message_type;
            }
            Some(pb::settings::PubSub::Subscription(sub)) => {
                if let Some(f) = sub.fifo {
                    cur.fifo = f;
                }
                if let Some(b) = sub.receive_batch_size.filter(|b| *b > 0) {
                    cur.receive_batch = b as usize;
                }
                if let Some(d) = &sub.long_polling_timeout {
                    cur.long_polling = from_duration(d);
                }
            }
            None => {}
        }
        debug!(client = %self.client_id, settings = ?cur, "settings from the broker");
        *slot = Arc::new(cur);
    }

    /// Reads broker commands until shutdown; reopens the stream when it
    /// breaks (the broker restarted, the network blipped).
    async fn telemetry_loop(
        self: Arc<Self>,
        mut inbound: tonic::Streaming<pb::TelemetryCommand>,
        mut out: mpsc::Sender<pb::TelemetryCommand>,
    ) {
        let mut stop = self.stopping();
        let mut resend = tokio::time::interval(SETTINGS_INTERVAL);
        resend.tick().await;
        loop {
            let broken = tokio::select! {
                _ = until_true(&mut stop) => return,
                _ = resend.tick() => out.send(self.settings_command()).await.is_err(),
                _ = self.reconnect.notified() => true,
                next = inbound.message() => match next {
                    Ok(Some(cmd)) => { self.handle(cmd, &out); false }
                    Ok(None) => true,
                    Err(e) => { debug!(client = %self.client_id, error = %e, "telemetry stream broke"); true }
                },
            };
            if !broken {
                continue;
            }
            let mut delay = FIRST_RECONNECT_DELAY;
            loop {
                tokio::select! {
                    _ = until_true(&mut stop) => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                match self.open_telemetry().await {
                    Ok((i, o)) => {
                        (inbound, out) = (i, o);
                        info!(client = %self.client_id, "telemetry stream reopened");
                        break;
                    }
                    Err(e) => {
                        warn!(client = %self.client_id, error = %e, "cannot reopen the telemetry stream; retrying");
                        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                    }
                }
            }
        }
    }

    fn handle(
        self: &Arc<Self>,
        cmd: pb::TelemetryCommand,
        out: &mpsc::Sender<pb::TelemetryCommand>,
    ) {
        match cmd.command {
            Some(Command::Settings(s)) => self.apply_settings(&s),
            Some(Command::RecoverOrphanedTransactionCommand(c)) => {
                let Some(checker) = self.checker.clone() else {
                    debug!(client = %self.client_id, "check-back ignored: no transaction checker");
                    return;
                };
                let session = self.clone();
                let slots = self.checks.clone();
                let task = tokio::spawn(async move {
                    let Ok(_slot) = slots.acquire_owned().await else {
                        return;
                    };
                    session.answer_check(checker, c).await;
                });
                self.track(task);
            }
            Some(Command::VerifyMessageCommand(v)) => {
                let reply = pb::TelemetryCommand {
                    status: Some(pb::Status {
                        code: pb::Code::NotImplemented as i32,
                        message: "this client does not verify messages".into(),
                    }),
                    command: Some(Command::VerifyMessageResult(pb::VerifyMessageResult {
                        nonce: v.nonce,
                    })),
                };
                let _ = out.try_send(reply);
            }
            Some(Command::PrintThreadStackTraceCommand(p)) => {
                let reply = pb::TelemetryCommand {
                    status: Some(pb::Status {
                        code: pb::Code::Ok as i32,
                        message: String::new(),
                    }),
                    command: Some(Command::ThreadStackTrace(pb::ThreadStackTrace {
                        nonce: p.nonce,
                        thread_stack_trace: Some(
                            "stack traces are not available from a Rust client".into(),
                        ),
                    })),
                };
                let _ = out.try_send(reply);
            }
            Some(Command::ReconnectEndpointsCommand(_)) => self.reconnect.notify_one(),
            _ => debug!(client = %self.client_id, "telemetry command ignored"),
        }
    }

    async fn answer_check(
        &self,
        checker: Arc<dyn DynChecker>,
        c: pb::RecoverOrphanedTransactionCommand,
    ) {
        let Some(wire) = c.message else {
            warn!(client = %self.client_id, "check-back without a message");
            return;
        };
        let mut message = match ReceivedMessage::from_wire(wire) {
            Ok(m) => m,
            Err(e) => {
                warn!(client = %self.client_id, error = %e, "check-back with an unreadable message; not answered");
                return;
            }
        };
        message.transaction_id = Some(c.transaction_id.clone());
        let resolution = checker.check_dyn(&message).await;
        let outcome = match resolution {
            TransactionResolution::Commit => pb::TransactionResolution::Commit,
            TransactionResolution::Rollback => pb::TransactionResolution::Rollback,
            TransactionResolution::Unknown => {
                debug!(message = %message.message_id, "checker does not know yet; the broker asks again");
                return;
            }
        };
        let answer = self.end_request(
            &message.topic,
            &message.message_id,
            &c.transaction_id,
            outcome,
            pb::TransactionSource::SourceServerCheck,
        );
        if let Err(e) = self.end_transaction(answer).await {
            warn!(message = %message.message_id, error = %e, "answering a check-back failed; the broker asks again");
        }
    }

    /// What one EndTransaction carries.
    pub fn end_request(
        &self,
        topic: &str,
        message_id: &str,
        transaction_id: &str,
        resolution: pb::TransactionResolution,
        source: pb::TransactionSource,
    ) -> pb::EndTransactionRequest {
        pb::EndTransactionRequest {
            topic: Some(resource(&self.config.namespace, topic)),
            message_id: message_id.to_string(),
            transaction_id: transaction_id.to_string(),
            resolution: resolution as i32,
            source: source as i32,
            trace_context: String::new(),
        }
    }

    pub async fn end_transaction(&self, req: pb::EndTransactionRequest) -> Result<()> {
        let deadline = self.config.request_timeout;
        let reply = self
            .unary(deadline, |mut rpc| async move {
                rpc.end_transaction(self.request(req, deadline)).await
            })
            .await?;
        check(reply.status)
    }

    /// Ferry's EndTransactions: many ends in one call, one answer each.
    /// Other brokers answer gRPC UNIMPLEMENTED.
    pub async fn end_transactions(
        &self,
        entries: Vec<pb::EndTransactionRequest>,
    ) -> Result<ext::EndTransactionsResponse> {
        let deadline = self.config.request_timeout;
        let req = self.request(ext::EndTransactionsRequest { entries }, deadline);
        self.bounded(deadline, self.ext.clone().end_transactions(req))
            .await
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let this: &Session = &self;
        let mut stop = this.stopping();
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tokio::select! {
                _ = until_true(&mut stop) => return,
                _ = tick.tick() => {}
            }
            let req = pb::HeartbeatRequest {
                group: this.group_resource(),
                client_type: this.client_type as i32,
            };
            let deadline = this.config.request_timeout;
            match this
                .unary(deadline, |mut rpc| async move {
                    rpc.heartbeat(this.request(req, deadline)).await
                })
                .await
                .and_then(|r| check(r.status))
            {
                Ok(()) => {}
                Err(e) if e.code() == Some(pb::Code::UnrecognizedClientType) => {
                    // The broker forgot us (it restarted): settings again.
                    info!(client = %self.client_id, "broker does not know this client; re-sending settings");
                    self.reconnect.notify_one();
                }
                Err(e) => debug!(client = %self.client_id, error = %e, "heartbeat failed"),
            }
        }
    }

    /// Says goodbye to the broker and stops every background task.
    pub async fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let req = pb::NotifyClientTerminationRequest {
            group: self.group_resource(),
        };
        let deadline = self.config.request_timeout;
        let mut rpc = self.rpc.clone();
        let _ = tokio::time::timeout(
            deadline,
            rpc.notify_client_termination(self.request(req, deadline)),
        )
        .await;
        let _ = self.stop.send(true);
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            if tokio::time::timeout(Duration::from_secs(1), t)
                .await
                .is_err()
            {
                debug!(client = %self.client_id, "a background task did not stop in time");
            }
        }
        info!(client = %self.client_id, "client shut down");
    }

    /// Tells the client's loops to stop taking new work; calls still work
    /// until [`Session::shutdown`] (running handlers can settle).
    pub fn signal_stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Stops the background tasks without the goodbye (used on drop).
    pub fn stop_now(&self) {
        self.stopped.store(true, Ordering::Release);
        let _ = self.stop.send(true);
    }
}
