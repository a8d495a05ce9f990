//! The broker over gRPC while its disk fails: with fsync failing, sends are
//! answered with an error status (never OK) and `/readyz` is 503; once the
//! fault clears the heal task brings the broker back without a restart.
//! Every acknowledged message is delivered, a refused one only if it is
//! byte-identical to what was sent, and all acknowledged messages are still
//! there after a restart.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{code, receive_frames, receive_request, req, res, start_with, Running};
use ferry_proto::v2 as pb;
use ferry_proto::v2::messaging_service_client::MessagingServiceClient;
use ferry_store::faults::{Fault, FaultyDisk};
use pb::receive_message_response::Content;
use pb::Code;
use tonic::transport::Channel;

/// A broker whose heal task retries often, its disk behind `disk` when
/// given.
async fn start(dir: &std::path::Path, disk: Option<Arc<FaultyDisk>>) -> Running {
    start_with(dir, |config| {
        config.heal_interval = Duration::from_millis(100);
        config.disk_hook = disk.map(|d| d as Arc<dyn ferry_store::DiskHook>);
    })
    .await
}

impl Running {
    async fn readyz(&self) -> (u16, String) {
        let (status, body) = self.admin().request("GET", "/readyz", None).await.unwrap();
        (status, body.as_str().unwrap_or_default().to_string())
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = self.admin().get_text("/metrics").await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }
}

fn body_of(id: &str) -> Bytes {
    Bytes::from(format!("body of {id}: {}", "x".repeat(id.len() * 7)))
}

async fn send(c: &mut MessagingServiceClient<Channel>, id: &str) -> pb::SendMessageResponse {
    let m = pb::Message {
        topic: res("t"),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            message_id: id.into(),
            message_type: pb::MessageType::Normal as i32,
            ..Default::default()
        }),
        body: body_of(id),
    };
    c.send_message(req(pb::SendMessageRequest { messages: vec![m] }))
        .await
        .unwrap()
        .into_inner()
}

/// One receive of up to `batch` messages of topic `t` for `group`: the
/// messages (id, body, receipt handle) and the status frame.
async fn receive_once(
    c: &mut MessagingServiceClient<Channel>,
    group: &str,
    batch: i32,
) -> (Vec<(String, Bytes, String)>, Option<pb::Status>) {
    let invisible = Duration::from_secs(60);
    let r = receive_request(group, "t", batch, invisible, Duration::from_millis(300));
    let mut messages = Vec::new();
    let mut status = None;
    for frame in receive_frames(c, req(r)).await {
        match frame {
            Content::Message(m) => {
                let sp = m.system_properties.unwrap();
                messages.push((sp.message_id, m.body, sp.receipt_handle.unwrap_or_default()));
            }
            Content::Status(st) => status = Some(st),
            _ => {}
        }
    }
    (messages, status)
}

/// Every acknowledged message is among `got` with its own body (else
/// `missing`); anything else delivered was at least sent (a refused send
/// may still have been stored) and is intact too.
fn check_delivered(
    got: &BTreeMap<String, Bytes>,
    acked: &[String],
    refused: &[String],
    missing: &str,
) {
    for id in acked {
        assert_eq!(got.get(id), Some(&body_of(id)), "{id} {missing}");
    }
    for (id, body) in got {
        assert!(
            acked.contains(id) || refused.contains(id),
            "{id} was never sent"
        );
        assert_eq!(body, &body_of(id), "{id} delivered damaged");
    }
}

/// Receives everything `group` can get from topic `t` (until a receive
/// comes back empty), as message id → body.
async fn receive_everything(
    c: &mut MessagingServiceClient<Channel>,
    group: &str,
) -> BTreeMap<String, Bytes> {
    let mut got = BTreeMap::new();
    loop {
        let (messages, status) = receive_once(c, group, 32).await;
        assert!(
            matches!(code(&status), Code::Ok | Code::MessageNotFound),
            "receive refused: {status:?}"
        );
        if messages.is_empty() {
            return got;
        }
        for (id, body, _) in messages {
            assert!(
                got.insert(id.clone(), body).is_none(),
                "{id} delivered twice to {group}"
            );
        }
    }
}

async fn ack(
    c: &mut MessagingServiceClient<Channel>,
    group: &str,
    received: &[(String, Bytes, String)],
) -> pb::AckMessageResponse {
    let entries = received
        .iter()
        .map(|(id, _, handle)| pb::AckMessageEntry {
            message_id: id.clone(),
            receipt_handle: handle.clone(),
            ..Default::default()
        })
        .collect();
    c.ack_message(req(pb::AckMessageRequest {
        group: res(group),
        topic: res("t"),
        entries,
    }))
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_fault_refuses_sends_until_it_clears_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::new(3));
    let mut b = start(dir.path(), Some(disk.clone())).await;
    let mut acked: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();

    for i in 0..20 {
        let id = format!("before-{i}");
        let r = send(&mut b.c, &id).await;
        assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
        acked.push(id);
    }
    assert_eq!(b.readyz().await.0, 200);
    // A consumer holds five messages when the disk fails.
    let (early, status) = receive_once(&mut b.c, "early", 5).await;
    assert_eq!(code(&status), Code::Ok);
    assert_eq!(early.len(), 5);

    // fsync fails from now on: every send is refused with a server error
    // saying why; readiness turns 503.
    disk.fail_from_now(Fault::SyncEio);
    for i in 0..5 {
        let id = format!("refused-{i}");
        let r = send(&mut b.c, &id).await;
        assert_eq!(code(&r.status), Code::InternalError, "{:?}", r.status);
        let message = &r.status.as_ref().unwrap().message;
        assert!(
            message.contains("commit log refuses writes after a disk fault"),
            "unclear refusal: {message}"
        );
        for e in &r.entries {
            assert_ne!(code(&e.status), Code::Ok, "an entry acknowledged: {e:?}");
        }
        refused.push(id);
    }
    let (status, text) = b.readyz().await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("disk fault"), "{text}");
    assert_eq!(b.metric("ferry_log_failed").await, 1);
    // Acks and receives need the log too: refused the same way.
    let r = ack(&mut b.c, "early", &early).await;
    assert_eq!(code(&r.status), Code::InternalError, "{:?}", r.status);
    let (none, status) = receive_once(&mut b.c, "g", 32).await;
    assert!(none.is_empty());
    assert_eq!(code(&status), Code::InternalError, "{status:?}");

    // The heal task keeps trying and fails while the fault persists (its
    // directory fsync is refused): wait until it did a few times.
    let syncs_failed = disk.counts().syncs_failed;
    let since = Instant::now();
    while disk.counts().syncs_failed < syncs_failed + 3 {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "no heal attempts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.readyz().await.0, 503);
    assert_eq!(b.metric("ferry_log_heals_total").await, 0);
    let r = send(&mut b.c, "refused-5").await;
    assert_eq!(code(&r.status), Code::InternalError, "{:?}", r.status);
    refused.push("refused-5".into());

    // The fault clears: within a bounded wait the broker takes sends again.
    disk.clear();
    let since = Instant::now();
    while b.readyz().await.0 != 200 {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the broker did not heal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.metric("ferry_log_heals_total").await, 1);
    assert_eq!(b.metric("ferry_log_failed").await, 0);
    for i in 0..20 {
        let id = format!("after-{i}");
        let r = send(&mut b.c, &id).await;
        assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
        acked.push(id);
    }

    // The receipts handed out before the fault are still good: the rebuilt
    // core restored them from the log.
    let r = ack(&mut b.c, "early", &early).await;
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    let rest = receive_everything(&mut b.c, "early").await;
    for (id, _, _) in &early {
        assert!(!rest.contains_key(id), "{id} acked, yet delivered again");
    }
    for id in &acked {
        let was_early = early.iter().any(|(e, _, _)| e == id);
        assert_eq!(rest.contains_key(id), !was_early, "{id} to the early group");
    }

    // Every acknowledged message is delivered, byte for byte; a refused one
    // may be there (it was never acknowledged), but then intact.
    let got = receive_everything(&mut b.c, "g").await;
    check_delivered(&got, &acked, &refused, "not delivered intact");
    b.try_stop().await.expect("a clean stop after the heal");

    // After a restart (no fault hook) every acknowledged message is still
    // there for a new group.
    let mut b = start(dir.path(), None).await;
    let got = receive_everything(&mut b.c, "h").await;
    check_delivered(&got, &acked, &refused, "lost by the restart");
    b.try_stop().await.unwrap();
}
