//! Timer lateness while many timers are pending.
//!
//! First `--pending` delayed messages are sent that fall due hours ahead
//! (spread over an hour from `--pending-hours` on), so the broker holds a
//! big schedule; the bulk of them go `--pending-batch` per SendMessage call
//! to keep the run short, the last ones one per call like the measured ones.
//! From that tail's send rate (with 1.5× and 2 s margin) a due second D is
//! picked by which all `--messages` measured ones can be sent; those are
//! sent with delivery times spread uniformly over the milliseconds of D.
//! Consumers receive and ack; each receipt's lateness is the local receive
//! time minus the delivery time the broker reports on the message. With all
//! measured messages due within one second, lateness past the first
//! milliseconds is the time to hand them all out (the drain, bounded by the
//! consumers: try `--consumers 16`), not the timer's precision.
//!
//! Checks (printed loudly, not asserted): nothing received before its
//! delivery time, no pending (hours-ahead) message received at all, the
//! delivery time reported as sent, every measured message received exactly
//! once.
//!
//! The defaults (1 000 000 pending, 100 000 measured) take about 30 s on 2
//! cores and ~400 MB; `--messages 5000 --pending 20000` is a smoke run of a
//! few seconds.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use ferry_proto::v2 as pb;
use ferry_proto::v2::messaging_service_client::MessagingServiceClient;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

use crate::net::{self, connect, req, resource, BoxError};

#[derive(Debug, Args)]
pub struct TimersArgs {
    /// gRPC address of a running broker (host:port). Without it, a broker is
    /// started in this process on a temporary directory.
    #[arg(long)]
    server: Option<String>,
    /// Measured delayed messages, all due within the same second.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Delayed messages due far ahead, sent first so the schedule is big
    /// while the measured ones fire.
    #[arg(long, default_value_t = 1_000_000)]
    pending: u64,
    /// The pending messages fall due this many hours ahead (spread over the
    /// following hour); must be within the broker's --max-delay-hours.
    #[arg(long, default_value_t = 6)]
    pending_hours: u64,
    /// Body size, bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Concurrent receive loops (batches of 32, each acked in one call).
    #[arg(long, default_value_t = 4)]
    consumers: u64,
    /// Sends in flight at once (both phases).
    #[arg(long, default_value_t = 128)]
    inflight: u64,
    /// Messages per SendMessage call for the measured ones, and for the
    /// last pending ones (whose send rate picks D).
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Messages per SendMessage call for the bulk of the pending ones.
    #[arg(long, default_value_t = 32)]
    pending_batch: u64,
    /// Seconds after D+1s to wait for missing messages before giving up.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Topic to use.
    #[arg(long, default_value = "bench-timers")]
    topic: String,
}

pub fn run(a: TimersArgs) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    now_us() / 1000
}

/// What one send phase did.
struct Sent {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    /// Wall clock (µs) when the last send was answered.
    done_us: i64,
}

impl Sent {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }
}

struct Phase {
    topic: String,
    queues: u64,
    body: Bytes,
    inflight: u64,
}

/// Sends DELAY messages `first..first + count`, `batch` per call, message
/// `i` with id `{prefix}{i}` and due at `due(i)` (ms since the epoch).
async fn send_phase(
    client: &MessagingServiceClient<Channel>,
    p: &Phase,
    prefix: &str,
    (first, count): (u64, u64),
    batch: u64,
    due: Arc<dyn Fn(u64) -> i64 + Send + Sync>,
) -> Result<Sent, BoxError> {
    let count = first + count;
    let next = Arc::new(AtomicU64::new(first));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..p.inflight.max(1) {
        let mut c = client.clone();
        let (next, due, prefix) = (next.clone(), due.clone(), prefix.to_string());
        let (topic, queues, body, batch) =
            (p.topic.clone(), p.queues, p.body.clone(), batch.max(1));
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= count {
                    break;
                }
                let to = (from + batch).min(count);
                let messages = (from..to)
                    .map(|i| {
                        let mut m = net::message(
                            &topic,
                            format!("{prefix}{i:010}"),
                            pb::MessageType::Delay,
                            (i % queues) as i32,
                            &body,
                        );
                        let ms = due(i);
                        if let Some(sp) = m.system_properties.as_mut() {
                            sp.delivery_timestamp = Some(prost_types::Timestamp {
                                seconds: ms.div_euclid(1000),
                                nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
                            });
                        }
                        m
                    })
                    .collect();
                let n = to - from;
                match c
                    .send_message(req(pb::SendMessageRequest { messages }))
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        let good = r
                            .entries
                            .iter()
                            .filter(|e| {
                                e.status
                                    .as_ref()
                                    .is_some_and(|s| s.code == pb::Code::Ok as i32)
                            })
                            .count() as u64;
                        let good = if r.entries.is_empty()
                            && r.status
                                .as_ref()
                                .is_some_and(|s| s.code == pb::Code::Ok as i32)
                        {
                            n
                        } else {
                            good.min(n)
                        };
                        ok += good;
                        errors += n - good;
                        if good < n && first_error.is_none() {
                            let s = r
                                .entries
                                .iter()
                                .filter_map(|e| e.status.clone())
                                .find(|s| s.code != pb::Code::Ok as i32)
                                .or(r.status);
                            first_error = Some(format!("{s:?}"));
                        }
                    }
                    Err(e) => {
                        errors += n;
                        if first_error.is_none() {
                            first_error = Some(e.to_string());
                        }
                    }
                }
            }
            (ok, errors, first_error)
        }));
    }
    let mut sent = Sent {
        ok: 0,
        errors: 0,
        first_error: None,
        secs: 0.0,
        done_us: 0,
    };
    for t in tasks {
        let (ok, errors, first_error) = t.await?;
        sent.ok += ok;
        sent.errors += errors;
        if sent.first_error.is_none() {
            sent.first_error = first_error;
        }
    }
    sent.secs = start.elapsed().as_secs_f64();
    sent.done_us = now_us();
    Ok(sent)
}

/// What the consumers saw, shared between them.
struct Seen {
    /// One slot per measured message: times received.
    times: Vec<AtomicU8>,
    unique: AtomicU64,
    duplicates: AtomicU64,
    early: AtomicU64,
    /// Most negative lateness seen, µs (0 when none was early).
    earliest_us: AtomicI64,
    /// Pending (far-future) messages received: each one early by hours.
    pending_received: AtomicU64,
    /// Messages of other runs (the topic is reused on a running broker).
    foreign: AtomicU64,
    no_delivery_time: AtomicU64,
    /// Delivery time on the received message differs from the one sent.
    mismatched: AtomicU64,
    /// Measured message `i` was sent due at `due(i)`.
    due: Arc<dyn Fn(u64) -> i64 + Send + Sync>,
    /// The due second D, ms.
    d_ms: i64,
    /// Measured messages received after D+1s (all are due by then).
    after_d1: AtomicU64,
    first_us: AtomicI64,
    last_us: AtomicI64,
    stop: AtomicBool,
}

async fn consume(
    mut c: MessagingServiceClient<Channel>,
    topic: String,
    group: String,
    run: String,
    seen: Arc<Seen>,
) -> Result<Histogram<u64>, BoxError> {
    let mut lateness = Histogram::<u64>::new(3)?;
    let measured = format!("{run}M");
    let pending = format!("{run}P");
    while !seen.stop.load(Ordering::Relaxed) {
        let mut stream = match c
            .receive_message(req(net::receive_request(&group, &topic, 60)))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut entries = Vec::new();
        while let Ok(Some(item)) = stream.message().await {
            let Some(pb::receive_message_response::Content::Message(m)) = item.content else {
                continue;
            };
            let at = now_us();
            let sp = m.system_properties.unwrap_or_default();
            if let Some(i) = sp
                .message_id
                .strip_prefix(&measured)
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|&i| i < seen.times.len())
            {
                if seen.times[i].fetch_add(1, Ordering::Relaxed) == 0 {
                    seen.unique.fetch_add(1, Ordering::Relaxed);
                } else {
                    seen.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                seen.first_us.fetch_min(at, Ordering::Relaxed);
                seen.last_us.fetch_max(at, Ordering::Relaxed);
                if at >= (seen.d_ms + 1000) * 1000 {
                    seen.after_d1.fetch_add(1, Ordering::Relaxed);
                }
                match sp.delivery_timestamp.as_ref() {
                    Some(t) => {
                        let due_us = t.seconds * 1_000_000 + i64::from(t.nanos) / 1000;
                        if due_us != (seen.due)(i as u64) * 1000 {
                            seen.mismatched.fetch_add(1, Ordering::Relaxed);
                        }
                        let late = at - due_us;
                        if late < 0 {
                            seen.early.fetch_add(1, Ordering::Relaxed);
                            seen.earliest_us.fetch_min(late, Ordering::Relaxed);
                        } else {
                            // Auto-resizing: `saturating_record` would clamp
                            // to the initial (tiny) range instead.
                            lateness.record(late as u64)?;
                        }
                    }
                    None => {
                        seen.no_delivery_time.fetch_add(1, Ordering::Relaxed);
                    }
                }
            } else if sp.message_id.starts_with(&pending) {
                seen.pending_received.fetch_add(1, Ordering::Relaxed);
            } else {
                seen.foreign.fetch_add(1, Ordering::Relaxed);
            }
            entries.push(net::ack_entry(sp));
        }
        if entries.is_empty() {
            continue;
        }
        let _ = c
            .ack_message(req(pb::AckMessageRequest {
                group: resource(&group),
                topic: resource(&topic),
                entries,
            }))
            .await;
        if seen.unique.load(Ordering::Relaxed) >= seen.times.len() as u64 {
            seen.stop.store(true, Ordering::Relaxed);
        }
    }
    Ok(lateness)
}

async fn run_async(a: TimersArgs) -> Result<(), BoxError> {
    let (addr, _tmp) = net::broker(a.server.clone()).await?;
    let client = MessagingServiceClient::new(connect(&addr).await?);
    let route = client
        .clone()
        .query_route(req(pb::QueryRouteRequest {
            topic: resource(&a.topic),
            endpoints: None,
        }))
        .await?
        .into_inner();
    let phase = Phase {
        topic: a.topic.clone(),
        queues: route.message_queues.len().max(1) as u64,
        body: Bytes::from(vec![b'x'; a.size]),
        inflight: a.inflight,
    };
    // Ids and the group are unique per run, so a reused broker's older
    // messages are told apart (and acked away) rather than counted.
    let run = format!("T{:x}{:x}", std::process::id(), now_ms() % 0xffff_ffff);
    let group = format!("bench-timers-{run}");
    println!(
        "timers: {} pending + {} measured delayed messages of {} B, {} sends in flight, {} consumers, server {}",
        a.pending,
        a.messages,
        a.size,
        a.inflight,
        a.consumers,
        a.server.as_deref().unwrap_or("in-process (sync flush)")
    );

    // --- pending: due hours ahead, spread over an hour. The bulk goes
    // `--pending-batch` per call; the last ones (a fifth of the measured
    // count, at least 1000) go like the measured ones, and their rate
    // predicts how long the measured sends take. ---
    let far = now_ms() + a.pending_hours as i64 * 3_600_000;
    let far_due: Arc<dyn Fn(u64) -> i64 + Send + Sync> =
        Arc::new(move |i| far + ((i * 7919) % 3_600_000) as i64);
    let tail = a.pending.min((a.messages / 5).max(1000));
    let bulk = send_phase(
        &client,
        &phase,
        &format!("{run}P"),
        (0, a.pending - tail),
        a.pending_batch,
        far_due.clone(),
    )
    .await?;
    let last = send_phase(
        &client,
        &phase,
        &format!("{run}P"),
        (a.pending - tail, tail),
        a.batch,
        far_due,
    )
    .await?;
    println!(
        "timers: pending phase: {} sent in {:.1} s, errors {}: {} at {:.0} msg/s ({} per call), then {} at {:.0} msg/s ({} per call)",
        bulk.ok + last.ok,
        bulk.secs + last.secs,
        bulk.errors + last.errors,
        bulk.ok,
        bulk.rate(),
        a.pending_batch.max(1),
        last.ok,
        last.rate(),
        a.batch.max(1),
    );
    if let Some(e) = bulk.first_error.as_ref().or(last.first_error.as_ref()) {
        println!("timers: first pending send error: {e}");
    }
    let pending_ok = bulk.ok + last.ok;

    // --- the due second D: after all measured sends, with margin ---
    let rate = if last.ok > 0 { last.rate() } else { 5_000.0 };
    let estimate = a.messages as f64 / rate.max(1.0);
    let lead_ms = (estimate * 1.5 * 1000.0) as i64 + 2_000;
    let d_ms = (now_ms() + lead_ms).div_euclid(1000) * 1000 + 1000;
    println!(
        "timers: measured sends estimated at {estimate:.1} s; due second D = now + {:.1} s",
        (d_ms - now_ms()) as f64 / 1000.0
    );

    // Message i of n is due at D + (i·stride mod n)·1000/n ms: every
    // millisecond of D gets its share, sent in mixed order.
    let n = a.messages.max(1);
    let stride = (0..)
        .map(|k| 7919 + 2 * k)
        .find(|s| gcd(*s, n) == 1)
        .unwrap_or(1);
    let due: Arc<dyn Fn(u64) -> i64 + Send + Sync> =
        Arc::new(move |i| d_ms + (((i * stride) % n) * 1000 / n) as i64);

    // --- consumers first, so they are polling when D comes ---
    let seen = Arc::new(Seen {
        times: (0..a.messages).map(|_| AtomicU8::new(0)).collect(),
        unique: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        early: AtomicU64::new(0),
        earliest_us: AtomicI64::new(0),
        pending_received: AtomicU64::new(0),
        foreign: AtomicU64::new(0),
        no_delivery_time: AtomicU64::new(0),
        mismatched: AtomicU64::new(0),
        due: due.clone(),
        d_ms,
        after_d1: AtomicU64::new(0),
        first_us: AtomicI64::new(i64::MAX),
        last_us: AtomicI64::new(i64::MIN),
        stop: AtomicBool::new(a.messages == 0),
    });
    let mut consumers = Vec::new();
    for _ in 0..a.consumers.max(1) {
        consumers.push(tokio::spawn(consume(
            client.clone(),
            a.topic.clone(),
            group.clone(),
            run.clone(),
            seen.clone(),
        )));
    }

    // --- measured: uniformly over the milliseconds of D, in mixed order ---
    let measured = send_phase(
        &client,
        &phase,
        &format!("{run}M"),
        (0, a.messages),
        a.batch,
        due.clone(),
    )
    .await?;
    let spare_ms = d_ms - measured.done_us / 1000;
    println!(
        "timers: measured phase: {} sent in {:.1} s ({:.0} msg/s), errors {}, last answer {} ms before D",
        measured.ok,
        measured.secs,
        measured.rate(),
        measured.errors,
        spare_ms
    );
    if let Some(e) = &measured.first_error {
        println!("timers: first measured send error: {e}");
    }
    if spare_ms < 0 {
        println!(
            "timers: WARNING: sends ran past D; lateness of the last ones includes their send"
        );
    }

    // --- wait for all, or the deadline ---
    let give_up = d_ms + 1000 + a.timeout as i64 * 1000;
    while !seen.stop.load(Ordering::Relaxed) && now_ms() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything delivered twice or early would show up shortly after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.stop.store(true, Ordering::Relaxed);
    let mut lateness = Histogram::<u64>::new(3)?;
    for c in consumers {
        lateness.add(c.await??)?;
    }

    let unique = seen.unique.load(Ordering::Relaxed);
    let early = seen.early.load(Ordering::Relaxed);
    let dup = seen.duplicates.load(Ordering::Relaxed);
    let pending_got = seen.pending_received.load(Ordering::Relaxed);
    let missing = measured.ok.saturating_sub(unique);
    println!(
        "timers: pending timers {}, measured {}",
        pending_ok, measured.ok
    );
    if !lateness.is_empty() {
        let ms = |v: u64| v as f64 / 1000.0;
        println!(
            "timers: lateness (receive − delivery time) ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (min {:.2})",
            ms(lateness.value_at_quantile(0.5)),
            ms(lateness.value_at_quantile(0.99)),
            ms(lateness.value_at_quantile(0.999)),
            ms(lateness.max()),
            ms(lateness.min())
        );
    }
    let (first, last) = (
        seen.first_us.load(Ordering::Relaxed),
        seen.last_us.load(Ordering::Relaxed),
    );
    if unique > 0 {
        let drain_ms = (last - (d_ms + 1000) * 1000) as f64 / 1000.0;
        println!(
            "timers: first receipt D+{:.1} ms, last D+{:.1} ms: drain (D+1s → last receipt) {drain_ms:.1} ms; {} received after D+1s",
            (first - d_ms * 1000) as f64 / 1000.0,
            (last - d_ms * 1000) as f64 / 1000.0,
            seen.after_d1.load(Ordering::Relaxed)
        );
    }
    if early == 0 {
        println!("timers: early receipts: 0");
    } else {
        println!(
            "timers: !!!!! EARLY RECEIPTS: {early} measured messages received before their delivery time (earliest {:.3} ms early) !!!!!",
            -seen.earliest_us.load(Ordering::Relaxed) as f64 / 1000.0
        );
    }
    if pending_got > 0 {
        println!("timers: !!!!! {pending_got} PENDING (hours-ahead) MESSAGES RECEIVED EARLY !!!!!");
    }
    let wrong = seen.mismatched.load(Ordering::Relaxed);
    if wrong > 0 {
        println!("timers: !!!!! {wrong} received with a delivery timestamp other than the one sent !!!!!");
    }
    let none = seen.no_delivery_time.load(Ordering::Relaxed);
    if none > 0 {
        println!("timers: !!!!! {none} received without a delivery timestamp !!!!!");
    }
    println!(
        "timers: exactly once: {} — received {unique} of {} sent, missing {missing}, duplicates {dup}{}",
        if missing == 0 && dup == 0 { "yes" } else { "NO" },
        measured.ok,
        match seen.foreign.load(Ordering::Relaxed) {
            0 => String::new(),
            f => format!(", {f} messages of earlier runs acked away"),
        }
    );
    Ok(())
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
