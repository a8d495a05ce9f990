//! FIFO consumption with and without one slow message group, in one run
//! against one broker.
//!
//! Each phase uses a fresh topic and a fresh consumer group made FIFO
//! through the admin API (`PUT /v1/groups/<group>/policy {"fifo": true}`).
//! `--groups` message groups (`mg0`, `mg1`, …) of `--messages` FIFO messages
//! each are sent first (one producer per message group, one message at a
//! time, so send order is store order; the body is "<group> <sequence>").
//! Then the clock starts and `--consumers` loops receive (batch 32, long
//! polling 1 s, invisible 30 s) until every message is acked.
//!
//! The consumer model is a client with one worker per message group: a
//! received batch is processed message by message, and a message of the
//! slow group (`mg0` in a "slow" phase) is handed to its own task, which
//! sleeps `--slow-ms`, then acks it alone; the rest of the batch takes no
//! time and is acked together as soon as the batch is processed. The
//! broker gives out at most one message of a group at a time, so at most
//! one such task exists and no batch waits for it.
//!
//! Every message is checked when its processing starts: its sequence must
//! be the one after the last its group finished. A duplicate, a gap, or a
//! message given out while its predecessor is still being processed (not
//! yet acked) is a violation; their count must be 0.
//!
//! Phases alternate (fast, slow, fast, slow, … `--rounds` pairs). Reported
//! per phase: the time until every message of `mg1`… was acked and their
//! rate (`mg0` is left out in both kinds of phase so the two compare the
//! same messages), and when `mg0` finished; then the ratio of the fast
//! groups' rate with a slow group present to their rate without one, and
//! the slow group's floor (`--messages` × `--slow-ms`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use ferry_proto::v2 as pb;
use ferry_proto::v2::messaging_service_client::MessagingServiceClient;
use tonic::transport::Channel;

use crate::net::{self, connect, req, resource, BoxError};

#[derive(Debug, Args)]
pub struct FifoArgs {
    /// gRPC address of a running broker (host:port). Without it, a broker is
    /// started in this process on a temporary directory.
    #[arg(long)]
    server: Option<String>,
    /// HTTP (admin) address of the broker named by `--server`.
    #[arg(long)]
    http: Option<String>,
    /// Message groups per phase (the first is the slow one in slow phases).
    #[arg(long, default_value_t = 64)]
    groups: u64,
    /// Messages per message group.
    #[arg(long, default_value_t = 200)]
    messages: u64,
    /// Processing time of each message of the slow group, ms.
    #[arg(long, default_value_t = 20)]
    slow_ms: u64,
    /// Concurrent consumer loops (each one ReceiveMessage at a time).
    #[arg(long, default_value_t = 4)]
    consumers: u64,
    /// Fast/slow phase pairs.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fast,
    Slow,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Fast => "fast",
            Mode::Slow => "slow",
        }
    }
}

/// What the consumers of one phase share.
struct State {
    start: Instant,
    per_group: u64,
    /// Per message group: the sequence expected next.
    next: Vec<AtomicU64>,
    /// Per message group: messages acked.
    acked: Vec<AtomicU64>,
    /// Per message group: µs from `start` to its last ack; `u64::MAX` until then.
    done_us: Vec<AtomicU64>,
    /// Message groups not finished yet.
    remaining: AtomicU64,
    violations: AtomicU64,
    ack_errors: AtomicU64,
}

impl State {
    fn new(groups: u64, per_group: u64) -> Self {
        let v = |x: u64| (0..groups).map(|_| AtomicU64::new(x)).collect();
        State {
            start: Instant::now(),
            per_group,
            next: v(0),
            acked: v(0),
            done_us: v(u64::MAX),
            remaining: AtomicU64::new(groups),
            violations: AtomicU64::new(0),
            ack_errors: AtomicU64::new(0),
        }
    }

    fn violation(&self, what: String) {
        let n = self.violations.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 10 {
            eprintln!("fifo: !!! FIFO VIOLATION: {what}");
        }
    }

    /// Processing of `seq` of group `g` starts.
    fn begin(&self, g: usize, seq: u64) {
        let expected = self.next[g].load(Ordering::SeqCst);
        if seq != expected {
            self.violation(format!(
                "mg{g}: got #{seq} while #{expected} was due (duplicate, gap, or predecessor not acked)"
            ));
        }
    }

    /// Processing of `seq` of group `g` is over (before its ack is sent, so
    /// the broker cannot give out the successor before this is recorded).
    fn finish(&self, g: usize, seq: u64) {
        self.next[g].fetch_max(seq + 1, Ordering::SeqCst);
    }

    fn acked(&self, g: usize) {
        let n = self.acked[g].fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.per_group {
            let us = self.start.elapsed().as_micros() as u64;
            self.done_us[g].store(us, Ordering::SeqCst);
            self.remaining.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn done_secs(&self, g: usize) -> Option<f64> {
        match self.done_us[g].load(Ordering::SeqCst) {
            u64::MAX => None,
            us => Some(us as f64 / 1e6),
        }
    }
}

struct Phase {
    send_secs: f64,
    send_errors: u64,
    /// Messages of `mg1`… acked, and the time until the last of them.
    fast_msgs: u64,
    fast_secs: f64,
    fast_complete: bool,
    /// When `mg0` finished, if it did.
    group0_secs: Option<f64>,
    violations: u64,
    ack_errors: u64,
}

pub fn run(a: FifoArgs) -> Result<(), BoxError> {
    if a.groups < 2 || a.messages == 0 || a.consumers == 0 {
        return Err("need --groups ≥ 2, --messages ≥ 1 and --consumers ≥ 1".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: FifoArgs) -> Result<(), BoxError> {
    let (addr, http, _tmp) = net::broker_with_http(a.server.clone(), a.http.clone()).await?;
    let http = http.ok_or("--server needs --http (the broker's admin address)")?;
    let client = MessagingServiceClient::new(connect(&addr).await?);
    let floor = a.messages as f64 * a.slow_ms as f64 / 1000.0;
    println!(
        "fifo: {} message groups × {} messages, {} consumers (batch 32), slow group mg0 {} ms/message, {} rounds, server {}",
        a.groups,
        a.messages,
        a.consumers,
        a.slow_ms,
        a.rounds,
        a.server.as_deref().unwrap_or("in-process (sync flush)")
    );
    // Per mode: fast-group messages, seconds, mg0 finish times.
    let mut totals = [
        (Mode::Fast, 0u64, 0f64, Vec::new()),
        (Mode::Slow, 0, 0.0, Vec::new()),
    ];
    let (mut violations, mut ack_errors, mut incomplete) = (0, 0, 0);
    for round in 0..a.rounds {
        for t in totals.iter_mut() {
            let mode = t.0;
            let p = phase(&client, &http, &a, mode, round).await?;
            let rate = p.fast_msgs as f64 / p.fast_secs.max(f64::EPSILON);
            let g0 = match (mode, p.group0_secs) {
                (_, None) => "mg0 DID NOT FINISH".to_string(),
                (Mode::Fast, Some(s)) => format!("mg0 (fast) done at {s:.2} s"),
                (Mode::Slow, Some(s)) => format!(
                    "mg0 (slow) done at {s:.2} s (floor {floor:.2} s, +{:.1} ms/message)",
                    (s - floor) * 1000.0 / a.messages as f64
                ),
            };
            println!(
                "fifo: round {} {}: sent {} in {:.2} s (errors {}); mg1..mg{} acked {} in {:.2} s{} → {:.0} msg/s; {g0}",
                round + 1,
                mode.name(),
                a.groups * a.messages,
                p.send_secs,
                p.send_errors,
                a.groups - 1,
                p.fast_msgs,
                p.fast_secs,
                if p.fast_complete { "" } else { " (DEADLINE, INCOMPLETE)" },
                rate
            );
            t.1 += p.fast_msgs;
            t.2 += p.fast_secs;
            t.3.extend(p.group0_secs);
            violations += p.violations;
            ack_errors += p.ack_errors;
            if !p.fast_complete || p.group0_secs.is_none() {
                incomplete += 1;
            }
        }
    }
    let rate = |t: &(Mode, u64, f64, Vec<f64>)| t.1 as f64 / t.2.max(f64::EPSILON);
    let (fast, slow) = (rate(&totals[0]), rate(&totals[1]));
    println!(
        "fifo: fast groups: {fast:.0} msg/s with no slow group, {slow:.0} msg/s with one; ratio {:.2}",
        slow / fast.max(f64::EPSILON)
    );
    let s = &totals[1].3;
    if !s.is_empty() {
        println!(
            "fifo: slow group finished after {:.2} s on average; floor {} × {} ms = {floor:.2} s",
            s.iter().sum::<f64>() / s.len() as f64,
            a.messages,
            a.slow_ms
        );
    }
    if violations == 0 {
        println!(
            "fifo: order violations: 0; ack errors: {ack_errors}; incomplete phases: {incomplete}"
        );
    } else {
        println!(
            "fifo: !!! {violations} FIFO ORDER VIOLATIONS (must be 0) !!!; ack errors: {ack_errors}; incomplete phases: {incomplete}"
        );
    }
    Ok(())
}

async fn phase(
    client: &MessagingServiceClient<Channel>,
    http: &str,
    a: &FifoArgs,
    mode: Mode,
    round: u32,
) -> Result<Phase, BoxError> {
    let tag = format!("{}-{round}-{}", std::process::id(), mode.name());
    let topic = format!("bench-fifo-{tag}");
    let group = format!("bench-fifo-{tag}");
    set_fifo(http, &group).await?;

    // Load: one producer per message group, one send at a time.
    let send_start = Instant::now();
    let mut producers = Vec::new();
    for g in 0..a.groups {
        let mut c = client.clone();
        let (topic, n) = (topic.clone(), a.messages);
        producers.push(tokio::spawn(async move {
            let mut errors = 0u64;
            for s in 0..n {
                let body = Bytes::from(format!("{g} {s}"));
                let mut m = net::message(
                    &topic,
                    format!("F{g:05}{s:08}"),
                    pb::MessageType::Fifo,
                    0,
                    &body,
                );
                if let Some(sp) = m.system_properties.as_mut() {
                    sp.message_group = Some(format!("mg{g}"));
                }
                let ok = c
                    .send_message(req(pb::SendMessageRequest { messages: vec![m] }))
                    .await
                    .map(|r| {
                        r.into_inner()
                            .status
                            .is_some_and(|s| s.code == pb::Code::Ok as i32)
                    })
                    .unwrap_or(false);
                if !ok {
                    errors += 1;
                }
            }
            errors
        }));
    }
    let mut send_errors = 0;
    for p in producers {
        send_errors += p.await?;
    }
    let send_secs = send_start.elapsed().as_secs_f64();
    if send_errors > 0 {
        eprintln!("fifo: {send_errors} sends failed: their groups cannot finish");
    }

    // Consume.
    let st = Arc::new(State::new(a.groups, a.messages));
    let slow = (mode == Mode::Slow).then(|| Duration::from_millis(a.slow_ms));
    let mut consumers = Vec::new();
    for _ in 0..a.consumers {
        let (c, st, topic, group) = (client.clone(), st.clone(), topic.clone(), group.clone());
        consumers.push(tokio::spawn(consume(c, st, topic, group, slow)));
    }
    let floor = Duration::from_millis(a.messages * a.slow_ms);
    let deadline = Instant::now() + Duration::from_secs(60) + floor * 2;
    while st.remaining.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for c in consumers {
        c.abort();
    }
    let fast = 1..a.groups as usize;
    let fast_msgs: u64 = fast
        .clone()
        .map(|g| st.acked[g].load(Ordering::SeqCst).min(a.messages))
        .sum();
    let fast_done: Vec<Option<f64>> = fast.map(|g| st.done_secs(g)).collect();
    let fast_complete = fast_done.iter().all(Option::is_some);
    let fast_secs = if fast_complete {
        fast_done.iter().flatten().fold(0.0, |m: f64, &s| m.max(s))
    } else {
        st.start.elapsed().as_secs_f64()
    };
    Ok(Phase {
        send_secs,
        send_errors,
        fast_msgs,
        fast_secs,
        fast_complete,
        group0_secs: st.done_secs(0),
        violations: st.violations.load(Ordering::SeqCst),
        ack_errors: st.ack_errors.load(Ordering::SeqCst),
    })
}

/// One consumer loop: receive a batch, process it (mg0 on its own task
/// when `slow`), ack the rest of the batch together.
async fn consume(
    mut c: MessagingServiceClient<Channel>,
    st: Arc<State>,
    topic: String,
    group: String,
    slow: Option<Duration>,
) {
    loop {
        let mut stream = match c
            .receive_message(req(net::receive_request(&group, &topic, 30)))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut batch: Vec<(usize, pb::AckMessageEntry)> = Vec::new();
        while let Ok(Some(item)) = stream.message().await {
            let Some(pb::receive_message_response::Content::Message(m)) = item.content else {
                continue;
            };
            let sp = m.system_properties.unwrap_or_default();
            let Some((g, seq)) = parse(&m.body).filter(|(g, _)| *g < st.next.len()) else {
                st.violation(format!("unreadable body {:?}", m.body));
                continue;
            };
            if sp.message_group.as_deref() != Some(format!("mg{g}").as_str()) {
                st.violation(format!(
                    "mg{g} #{seq} arrived with message group {:?}",
                    sp.message_group
                ));
            }
            let entry = net::ack_entry(sp);
            st.begin(g, seq);
            match slow.filter(|_| g == 0) {
                Some(delay) => {
                    let (mut c, st, topic, group) =
                        (c.clone(), st.clone(), topic.clone(), group.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        st.finish(g, seq);
                        ack(&mut c, &st, &group, &topic, vec![(g, entry)]).await;
                    });
                }
                None => {
                    st.finish(g, seq);
                    batch.push((g, entry));
                }
            }
        }
        if !batch.is_empty() {
            ack(&mut c, &st, &group, &topic, batch).await;
        }
    }
}

fn parse(body: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let (g, s) = text.split_once(' ')?;
    Some((g.parse().ok()?, s.parse().ok()?))
}

async fn ack(
    c: &mut MessagingServiceClient<Channel>,
    st: &State,
    group: &str,
    topic: &str,
    items: Vec<(usize, pb::AckMessageEntry)>,
) {
    let (groups, entries): (Vec<usize>, Vec<pb::AckMessageEntry>) = items.into_iter().unzip();
    let n = groups.len() as u64;
    match c
        .ack_message(req(pb::AckMessageRequest {
            group: resource(group),
            topic: resource(topic),
            entries,
        }))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            let mut ok = 0;
            for (g, e) in groups.iter().zip(&r.entries) {
                if e.status
                    .as_ref()
                    .is_some_and(|s| s.code == pb::Code::Ok as i32)
                {
                    st.acked(*g);
                    ok += 1;
                }
            }
            st.ack_errors.fetch_add(n - ok, Ordering::Relaxed);
        }
        Err(_) => {
            st.ack_errors.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Makes `group` FIFO through the admin API, retried while the listener
/// is not up yet.
pub(crate) async fn set_fifo(http: &str, group: &str) -> Result<(), BoxError> {
    let admin = ferry_admin::AdminClient::new(http);
    let path = format!("/v1/groups/{}/policy", ferry_admin::segment(group));
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match admin.put(&path, serde_json::json!({"fifo": true})).await {
            Ok(_) => return Ok(()),
            Err(ferry_admin::AdminError::Unreachable { .. }) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
}
