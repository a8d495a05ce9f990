use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use ferry_proto::v2 as pb;
use ferry_proto::v2::messaging_service_client::MessagingServiceClient;
use hdrhistogram::Histogram;

use crate::net::{self, connect, req, resource};

#[derive(Debug, Args)]
pub struct E2eArgs {
    /// gRPC address of a running broker (host:port). Without it, a broker is
    /// started in this process on a temporary directory.
    #[arg(long)]
    server: Option<String>,
    /// Messages to send.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Body size, bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Sends in flight at once (each a one-message SendMessage call).
    #[arg(long, default_value_t = 256)]
    inflight: u64,
    /// Concurrent consumer long polls.
    #[arg(long, default_value_t = 4)]
    consumers: u64,
    /// Topic to use.
    #[arg(long, default_value = "bench-e2e")]
    topic: String,
}

pub fn run(a: E2eArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: E2eArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (addr, _tmp) = net::broker(a.server.clone()).await?;
    let channel = connect(&addr).await?;
    let client = MessagingServiceClient::new(channel);
    let route = client
        .clone()
        .query_route(req(pb::QueryRouteRequest {
            topic: resource(&a.topic),
            endpoints: None,
        }))
        .await?
        .into_inner();
    let queues = route.message_queues.len().max(1) as u64;
    let group = format!("bench-{}", std::process::id());
    let body = Bytes::from(vec![b'x'; a.size]);
    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();

    let mut consumers = Vec::new();
    for _ in 0..a.consumers {
        let mut c = client.clone();
        let (acked, topic, group, total) =
            (acked.clone(), a.topic.clone(), group.clone(), a.messages);
        consumers.push(tokio::spawn(async move {
            while acked.load(Ordering::Relaxed) < total {
                let mut stream = match c
                    .receive_message(req(net::receive_request(&group, &topic, 30)))
                    .await
                {
                    Ok(s) => s.into_inner(),
                    Err(_) => continue,
                };
                let mut entries = Vec::new();
                while let Ok(Some(item)) = stream.message().await {
                    if let Some(pb::receive_message_response::Content::Message(m)) = item.content {
                        let sp = m.system_properties.unwrap_or_default();
                        entries.push(net::ack_entry(sp));
                    }
                }
                if entries.is_empty() {
                    continue;
                }
                let n = entries.len() as u64;
                if c.ack_message(req(pb::AckMessageRequest {
                    group: resource(&group),
                    topic: resource(&topic),
                    entries,
                }))
                .await
                .is_ok()
                {
                    acked.fetch_add(n, Ordering::Relaxed);
                }
            }
        }));
    }

    let per_task = a.messages / a.inflight.max(1);
    let mut producers = Vec::new();
    for t in 0..a.inflight {
        let mut c = client.clone();
        let (body, topic, sent) = (body.clone(), a.topic.clone(), sent.clone());
        producers.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut errors = 0u64;
            for i in 0..per_task {
                let msg = net::message(
                    &topic,
                    format!("B{t:05}{i:010}"),
                    pb::MessageType::Normal,
                    ((t + i) % queues) as i32,
                    &body,
                );
                let t0 = Instant::now();
                let ok = c
                    .send_message(req(pb::SendMessageRequest {
                        messages: vec![msg],
                    }))
                    .await
                    .map(|r| {
                        r.into_inner()
                            .status
                            .is_some_and(|s| s.code == pb::Code::Ok as i32)
                    })
                    .unwrap_or(false);
                let _ = h.record(t0.elapsed().as_micros() as u64);
                if ok {
                    sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
            (h, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for p in producers {
        let (h, e) = p.await?;
        hist.add(h)?;
        errors += e;
    }
    let send_secs = start.elapsed().as_secs_f64();
    let total = per_task * a.inflight;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < sent.load(Ordering::Relaxed) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e2e_secs = start.elapsed().as_secs_f64();
    for c in consumers {
        c.abort();
    }
    let n = sent.load(Ordering::Relaxed);
    println!(
        "e2e: {total} sends of {} B, {} in flight, {} consumers, server {}",
        a.size,
        a.inflight,
        a.consumers,
        a.server.as_deref().unwrap_or("in-process (sync flush)")
    );
    println!(
        "e2e: send {:.0} msg/s ({:.1} MB/s), errors {errors}",
        n as f64 / send_secs,
        n as f64 * a.size as f64 / send_secs / 1e6
    );
    println!(
        "e2e: received+acked {} of {n} in {:.2} s → {:.0} msg/s end to end",
        acked.load(Ordering::Relaxed),
        e2e_secs,
        acked.load(Ordering::Relaxed) as f64 / e2e_secs
    );
    println!("{}", crate::percentiles("send", &hist));
    Ok(())
}
