//! What the gRPC benchmarks share: request metadata, connecting, and a
//! broker started in-process on a temporary directory when none is named.

use std::time::{Duration, Instant};

use ferry_proto::v2 as pb;
use tonic::transport::Channel;
use tonic::Request;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-mq-client-id", "ferry-bench".parse().expect("ascii"));
    r
}

pub fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        resource_namespace: String::new(),
        name: name.to_string(),
    })
}

use crate::suite::driver::free_port;

pub async fn connect(addr: &str) -> Result<Channel, Box<dyn std::error::Error + Send + Sync>> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))?;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match endpoint.connect().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > until => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A benchmark message: `kind`, for `queue_id` (the broker takes it modulo
/// the topic's queue count).
pub fn message(
    topic: &str,
    id: String,
    kind: pb::MessageType,
    queue_id: i32,
    body: &bytes::Bytes,
) -> pb::Message {
    pb::Message {
        topic: resource(topic),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            message_id: id,
            message_type: kind as i32,
            queue_id,
            born_host: "bench".into(),
            ..Default::default()
        }),
        body: body.clone(),
    }
}

/// The broker to measure: `server` if given, else one started in this
/// process (default settings, sync flush) on a temporary directory that
/// lives as long as the returned guard.
pub async fn broker(
    server: Option<String>,
) -> Result<(String, Option<tempfile::TempDir>), BoxError> {
    let (grpc, _http, tmp) = broker_with_http(server, None).await?;
    Ok((grpc, tmp))
}

/// As [`broker`], with the HTTP (admin) address too: the in-process
/// broker's own, or `http` as given when `server` names a running one.
pub async fn broker_with_http(
    server: Option<String>,
    http: Option<String>,
) -> Result<(String, Option<String>, Option<tempfile::TempDir>), BoxError> {
    if let Some(s) = server {
        return Ok((s, http, None));
    }
    let tmp = tempfile::tempdir_in(".")?;
    let port = free_port()?;
    let http = format!("127.0.0.1:{}", free_port()?);
    let config = ferry_server::ServerConfig {
        data_dir: tmp.path().to_path_buf(),
        grpc_listen: format!("127.0.0.1:{port}"),
        http_listen: http.clone(),
        ..Default::default()
    };
    tokio::spawn(ferry_server::run(config, std::future::pending()));
    Ok((format!("127.0.0.1:{port}"), Some(http), Some(tmp)))
}

/// A ReceiveMessage request as every bench consumer makes it: all tags,
/// batch 32, long polling 1 s, invisible for `invisible_s`.
pub fn receive_request(group: &str, topic: &str, invisible_s: i64) -> pb::ReceiveMessageRequest {
    pb::ReceiveMessageRequest {
        group: resource(group),
        message_queue: Some(pb::MessageQueue {
            topic: resource(topic),
            ..Default::default()
        }),
        filter_expression: None,
        batch_size: 32,
        invisible_duration: Some(prost_types::Duration {
            seconds: invisible_s,
            nanos: 0,
        }),
        auto_renew: false,
        long_polling_timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        attempt_id: None,
    }
}

/// The ack entry for a received message's system properties.
pub fn ack_entry(sp: pb::SystemProperties) -> pb::AckMessageEntry {
    pb::AckMessageEntry {
        message_id: sp.message_id,
        receipt_handle: sp.receipt_handle.unwrap_or_default(),
        lite_topic: None,
    }
}
