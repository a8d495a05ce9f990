//! Helpers the gRPC test files share: ports, request metadata, resources
//! and status codes; a broker started in this process; receives and acks.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use ferry_proto::v2 as pb;
use ferry_proto::v2::messaging_service_client::MessagingServiceClient;
use pb::receive_message_response::Content;
use pb::Code;
use tonic::transport::Channel;
use tonic::Request;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A request with the client id every RocketMQ call carries.
pub fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-mq-client-id", "test-client".parse().unwrap());
    r
}

pub fn res(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        resource_namespace: String::new(),
        name: name.into(),
    })
}

pub fn code(s: &Option<pb::Status>) -> Code {
    Code::try_from(s.as_ref().expect("status").code).unwrap()
}

/// What `ferry_server::run` ends with.
pub type RunResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A broker running in this process, with a gRPC client and its HTTP
/// address.
pub struct Running {
    pub c: MessagingServiceClient<Channel>,
    /// `host:port` of the admin API.
    pub http: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<RunResult>,
}

/// A broker with the default configuration on free ports, data in `dir`.
pub async fn start(dir: &Path) -> Running {
    start_with(dir, |_| {}).await
}

/// A broker on free ports with data in `dir`, its configuration changed by
/// `tune` first. Returns once both ports answer, so a test may use either
/// at once.
pub async fn start_with(dir: &Path, tune: impl FnOnce(&mut ferry_server::ServerConfig)) -> Running {
    let port = free_port();
    let http = format!("127.0.0.1:{}", free_port());
    let mut config = ferry_server::ServerConfig {
        data_dir: dir.to_path_buf(),
        grpc_listen: format!("127.0.0.1:{port}"),
        http_listen: http.clone(),
        ..Default::default()
    };
    tune(&mut config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ferry_server::run(config, async {
        let _ = stopped.await;
    }));
    let endpoint = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let admin = ferry_admin::AdminClient::new(http.as_str());
    for _ in 0..200 {
        if let Ok(ch) = endpoint.connect().await {
            if admin.get_text("/healthz").await.is_ok() {
                return Running {
                    c: MessagingServiceClient::new(ch),
                    http,
                    stop,
                    task,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server did not start");
}

/// Short invisibility so redeliveries come quickly in tests: for
/// [`start_with`].
pub fn quick_redelivery(config: &mut ferry_server::ServerConfig) {
    config.core.limits.min_invisible_ms = 100;
}

impl Running {
    /// A client of the admin API.
    pub fn admin(&self) -> ferry_admin::AdminClient {
        ferry_admin::AdminClient::new(self.http.as_str())
    }

    /// Stops cleanly and waits until the data directory is free again.
    pub async fn stop(self) {
        self.try_stop().await.unwrap();
    }

    /// Stops and waits until the data directory is free again, with what
    /// the broker ended with.
    pub async fn try_stop(self) -> RunResult {
        drop(self.c);
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// A receive of up to `batch` messages of `topic` for `group`, invisible
/// for `invisible` once delivered, waiting up to `long_poll` for them.
pub fn receive_request(
    group: &str,
    topic: &str,
    batch: i32,
    invisible: Duration,
    long_poll: Duration,
) -> pb::ReceiveMessageRequest {
    pb::ReceiveMessageRequest {
        group: res(group),
        message_queue: Some(pb::MessageQueue {
            topic: res(topic),
            ..Default::default()
        }),
        batch_size: batch,
        invisible_duration: Some(invisible.try_into().unwrap()),
        long_polling_timeout: Some(long_poll.try_into().unwrap()),
        ..Default::default()
    }
}

/// The messages a receive answers with (its status frame left out).
pub async fn receive_messages(
    c: &mut MessagingServiceClient<Channel>,
    r: Request<pb::ReceiveMessageRequest>,
) -> Vec<pb::Message> {
    let mut s = c.receive_message(r).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(item) = s.message().await.unwrap() {
        if let Some(Content::Message(m)) = item.content {
            out.push(m);
        }
    }
    out
}

/// Every frame a receive answers with, in order.
pub async fn receive_frames(
    c: &mut MessagingServiceClient<Channel>,
    r: Request<pb::ReceiveMessageRequest>,
) -> Vec<Content> {
    let mut s = c.receive_message(r).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(item) = s.message().await.unwrap() {
        out.push(item.content.unwrap());
    }
    out
}

/// The receipt handle a received message carries.
pub fn receipt(m: &pb::Message) -> String {
    m.system_properties
        .as_ref()
        .and_then(|p| p.receipt_handle.clone())
        .expect("a receipt handle")
}

/// Acknowledges one message of `group` on `topic` by its receipt handle,
/// asserting the broker took it.
pub async fn ack(c: &mut MessagingServiceClient<Channel>, group: &str, topic: &str, handle: &str) {
    let r = c
        .ack_message(req(pb::AckMessageRequest {
            group: res(group),
            topic: res(topic),
            entries: vec![pb::AckMessageEntry {
                message_id: String::new(),
                receipt_handle: handle.into(),
                lite_topic: None,
            }],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
}

/// A NORMAL message with the given id and body.
pub fn msg(topic: &str, id: &str, body: &[u8]) -> pb::Message {
    pb::Message {
        topic: res(topic),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            message_id: id.into(),
            message_type: pb::MessageType::Normal as i32,
            ..Default::default()
        }),
        body: bytes::Bytes::copy_from_slice(body),
    }
}

/// Wall-clock ms since the Unix epoch, the broker's clock for delivery times.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Makes `m` a DELAY message due at `due_ms`.
pub fn deliver_at(m: &mut pb::Message, due_ms: i64) {
    let sp = m.system_properties.as_mut().expect("system properties");
    sp.message_type = pb::MessageType::Delay as i32;
    sp.delivery_timestamp = Some(prost_types::Timestamp {
        seconds: due_ms.div_euclid(1000),
        nanos: (due_ms.rem_euclid(1000) * 1_000_000) as i32,
    });
}
