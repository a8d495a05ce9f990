//! Transactional sends next to plain sends, in one run against one broker.
//!
//! A plain send is one SendMessage call; a transactional send is a half
//! message (SendMessage, type TRANSACTION) followed by EndTransaction
//! COMMIT, both durable before their answers. Phases alternate (plain, tx,
//! plain, tx, …) so drift of a noisy machine hits both alike, and the
//! figures are reported with their ratio.

use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use ferry_proto::v2 as pb;
use ferry_proto::v2::messaging_service_client::MessagingServiceClient;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

use crate::net::{self, connect, req, resource, BoxError};

#[derive(Debug, Args)]
pub struct TxArgs {
    /// gRPC address of a running broker (host:port). Without it, a broker is
    /// started in this process on a temporary directory.
    #[arg(long)]
    server: Option<String>,
    /// Messages per phase.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Body size, bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Producers in flight at once, each sending one message at a time.
    #[arg(long, default_value_t = 128)]
    inflight: u64,
    /// Plain/transactional phase pairs.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Transactional,
}

struct Phase {
    messages: u64,
    secs: f64,
    errors: u64,
    latency: Histogram<u64>,
}

pub fn run(a: TxArgs) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: TxArgs) -> Result<(), BoxError> {
    let (addr, _tmp) = net::broker(a.server.clone()).await?;
    let client = MessagingServiceClient::new(connect(&addr).await?);
    let body = Bytes::from(vec![b'x'; a.size]);
    let mut totals = [
        (Mode::Plain, 0u64, 0f64, 0u64, Histogram::<u64>::new(3)?),
        (Mode::Transactional, 0, 0.0, 0, Histogram::<u64>::new(3)?),
    ];
    for round in 0..a.rounds {
        for t in totals.iter_mut() {
            let p = phase(&client, &a, t.0, round, &body).await?;
            t.1 += p.messages;
            t.2 += p.secs;
            t.3 += p.errors;
            t.4.add(&p.latency)?;
        }
    }
    println!(
        "tx: {} rounds of {} messages of {} B per mode, {} in flight, server {}",
        a.rounds,
        a.messages,
        a.size,
        a.inflight,
        a.server.as_deref().unwrap_or("in-process (sync flush)")
    );
    let mut rates = Vec::new();
    for (mode, n, secs, errors, h) in &totals {
        let name = match mode {
            Mode::Plain => "plain send",
            Mode::Transactional => "half + commit",
        };
        let rate = *n as f64 / secs.max(f64::EPSILON);
        rates.push((rate, h.value_at_quantile(0.99)));
        println!("tx: {name}: {rate:.0} msg/s, errors {errors}");
        println!("{}", crate::percentiles(name, h));
    }
    let (plain, tx) = (rates[0], rates[1]);
    println!(
        "tx: cost of a transactional message vs a plain one: throughput {:.2}x, p99 latency {:.2}x",
        plain.0 / tx.0.max(f64::EPSILON),
        tx.1 as f64 / plain.1.max(1) as f64
    );
    Ok(())
}

async fn phase(
    client: &MessagingServiceClient<Channel>,
    a: &TxArgs,
    mode: Mode,
    round: u32,
    body: &Bytes,
) -> Result<Phase, BoxError> {
    let topic = "bench-tx";
    let per_task = a.messages / a.inflight.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..a.inflight {
        let mut c = client.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut errors = 0u64;
            for i in 0..per_task {
                let id = format!("X{}{round:02}{t:05}{i:08}", mode as u8);
                let t0 = Instant::now();
                let ok = match mode {
                    Mode::Plain => send(&mut c, topic, &id, &body, pb::MessageType::Normal)
                        .await
                        .is_some(),
                    Mode::Transactional => {
                        match send(&mut c, topic, &id, &body, pb::MessageType::Transaction).await {
                            Some(tx) => commit(&mut c, topic, &id, &tx).await,
                            None => false,
                        }
                    }
                };
                let _ = h.record(t0.elapsed().as_micros() as u64);
                if !ok {
                    errors += 1;
                }
            }
            (h, errors)
        }));
    }
    let mut latency = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        latency.add(h)?;
        errors += e;
    }
    Ok(Phase {
        messages: per_task * a.inflight - errors,
        secs: start.elapsed().as_secs_f64(),
        errors,
        latency,
    })
}

/// Sends one message; returns its transaction id ("" for a plain one).
async fn send(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    id: &str,
    body: &Bytes,
    kind: pb::MessageType,
) -> Option<String> {
    let msg = net::message(topic, id.to_string(), kind, 0, body);
    let r = c
        .send_message(req(pb::SendMessageRequest {
            messages: vec![msg],
        }))
        .await
        .ok()?
        .into_inner();
    if r.status.is_some_and(|s| s.code == pb::Code::Ok as i32) {
        r.entries.into_iter().next().map(|e| e.transaction_id)
    } else {
        None
    }
}

async fn commit(c: &mut MessagingServiceClient<Channel>, topic: &str, id: &str, tx: &str) -> bool {
    c.end_transaction(req(pb::EndTransactionRequest {
        topic: resource(topic),
        message_id: id.to_string(),
        transaction_id: tx.to_string(),
        resolution: pb::TransactionResolution::Commit as i32,
        source: pb::TransactionSource::SourceClient as i32,
        trace_context: String::new(),
    }))
    .await
    .map(|r| {
        r.into_inner()
            .status
            .is_some_and(|s| s.code == pb::Code::Ok as i32)
    })
    .unwrap_or(false)
}
