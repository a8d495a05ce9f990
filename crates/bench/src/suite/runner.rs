//! One run of one workload against one driver: publish lanes paced by the
//! workload's rate, consumers, and what they record.
//!
//! Latency is measured from the *intended* send time, so a broker that
//! stalls cannot hide the wait behind a producer that stopped sending
//! (coordinated omission). At a fixed rate message k of a producer is due
//! at `start + k / rate`; a lane that is still waiting for an earlier
//! acknowledgement sends it late, and the lateness counts. At "max" rate a
//! lane sends as soon as its previous call returned, and that moment is the
//! intended time.
//!
//! Every body starts with a 24-byte header — intended send time (ns since
//! the run's start, on this process's monotonic clock), producer, message
//! group or lane, sequence — so a consumer in the same process computes
//! end-to-end latency and checks FIFO order without a side table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::driver::{BoxError, Driver, Payload, Publisher, Received};
use super::procstat::Sampler;
use super::workload::{Kind, Workload, HEADER_BYTES};

/// Most error messages kept per run (the count is always complete).
const ERROR_SAMPLES: usize = 5;
/// Histograms hold up to an hour in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// Messages per second in one interval of the run (warm-up included).
#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    /// Seconds from the start of the run to the end of the interval.
    pub t_s: f64,
    pub publish_per_s: f64,
    pub consume_per_s: f64,
}

/// The figures of one run; rates and latencies cover the measured window
/// (after warm-up) only.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub window_s: f64,
    pub published: u64,
    pub publish_per_s: f64,
    pub publish_mb_per_s: f64,
    pub consumed: u64,
    pub consume_per_s: f64,
    pub consume_mb_per_s: f64,
    /// From the intended send time to the acknowledgement.
    pub publish_latency: Percentiles,
    /// From the intended send time (plus the delay, for delayed messages)
    /// to the receipt.
    pub end_to_end_latency: Percentiles,
    pub publish_errors: u64,
    pub consume_errors: u64,
    pub error_samples: Vec<String>,
    /// Acknowledged messages never received before the drain deadline
    /// (acknowledged count minus distinct messages received; a message
    /// stored although its publish reported an error can hide a loss).
    pub not_received: u64,
    /// Receipts of a message already received (redeliveries).
    pub duplicates: u64,
    /// FIFO: messages received after a later message of their group.
    pub order_violations: u64,
    /// Delayed: messages received before their delivery time.
    pub early: u64,
    /// Broker process CPU over the window, percent of one core.
    pub broker_cpu_pct: Option<f64>,
    /// Broker process resident memory, highest sample in the window.
    pub broker_rss_mb: Option<f64>,
    /// This process (the clients) over the window, percent of one core.
    pub client_cpu_pct: Option<f64>,
    pub series: Vec<SeriesPoint>,
}

struct Stats {
    publish: Histogram<u64>,
    e2e: Histogram<u64>,
    published_in_window: u64,
    consumed_in_window: u64,
    publish_errors: u64,
    consume_errors: u64,
    errors: Vec<String>,
    order_violations: u64,
    early: u64,
    /// FIFO: highest sequence received per (producer, group).
    last_seq: HashMap<(u32, u32), u64>,
    /// Sequences received per (producer, lane), one bit each: sequences of
    /// a lane are dense from 1, so this tells a duplicate from a new
    /// message in n/8 bytes.
    seen: HashMap<(u32, u32), Vec<u64>>,
    duplicates: u64,
    series_pub: Vec<u64>,
    series_con: Vec<u64>,
}

struct Shared {
    w: Workload,
    start: Instant,
    warm_end: Instant,
    end: Instant,
    bucket: Duration,
    stats: Mutex<Stats>,
    published_total: AtomicU64,
    /// Distinct messages received (duplicates left out).
    received_total: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn new(
        w: &Workload,
        start: Instant,
        bucket: Duration,
        buckets: usize,
    ) -> Result<Shared, BoxError> {
        let warm_end = start + Duration::from_secs_f64(w.warmup_s);
        Ok(Shared {
            w: w.clone(),
            start,
            warm_end,
            end: warm_end + Duration::from_secs_f64(w.duration_s),
            bucket,
            stats: Mutex::new(Stats {
                publish: Histogram::new_with_max(MAX_LATENCY_US, 3)?,
                e2e: Histogram::new_with_max(MAX_LATENCY_US, 3)?,
                published_in_window: 0,
                consumed_in_window: 0,
                publish_errors: 0,
                consume_errors: 0,
                errors: Vec::new(),
                order_violations: 0,
                early: 0,
                last_seq: HashMap::new(),
                seen: HashMap::new(),
                duplicates: 0,
                series_pub: vec![0; buckets],
                series_con: vec![0; buckets],
            }),
            published_total: AtomicU64::new(0),
            received_total: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    fn in_window(&self, t: Instant) -> bool {
        t >= self.warm_end && t < self.end
    }

    fn bucket_of(&self, t: Instant) -> usize {
        (t.saturating_duration_since(self.start).as_nanos() / self.bucket.as_nanos()) as usize
    }

    fn note_error(st: &mut Stats, e: &BoxError) {
        if st.errors.len() < ERROR_SAMPLES {
            st.errors.push(e.to_string());
        }
    }

    fn record_publish(&self, intended: Instant, done: Instant, n: u64, r: Result<(), BoxError>) {
        let mut st = self.stats.lock().expect("stats");
        match r {
            Ok(()) => {
                self.published_total.fetch_add(n, Ordering::Relaxed);
                if self.in_window(intended) {
                    let us = done.saturating_duration_since(intended).as_micros() as u64;
                    let _ = st.publish.record_n(us.clamp(1, MAX_LATENCY_US), n);
                }
                if self.in_window(done) {
                    st.published_in_window += n;
                }
                if done < self.end {
                    let b = self.bucket_of(done);
                    if let Some(slot) = st.series_pub.get_mut(b) {
                        *slot += n;
                    }
                }
            }
            Err(e) => {
                st.publish_errors += n;
                Shared::note_error(&mut st, &e);
            }
        }
    }

    fn record_receipt(&self, r: Received) {
        let n = r.bodies.len() as u64;
        let delay = Duration::from_millis(self.w.delay_ms);
        let mut guard = self.stats.lock().expect("stats");
        let st = &mut *guard;
        if self.in_window(r.at) {
            st.consumed_in_window += n;
        }
        if r.at < self.end {
            let b = self.bucket_of(r.at);
            if let Some(slot) = st.series_con.get_mut(b) {
                *slot += n;
            }
        }
        for body in &r.bodies {
            let Some(h) = Header::read(body) else {
                st.consume_errors += 1;
                if st.errors.len() < ERROR_SAMPLES {
                    st.errors
                        .push(format!("a {}-byte body without the header", body.len()));
                }
                continue;
            };
            let bits = st.seen.entry((h.producer, h.group)).or_default();
            let (word, bit) = ((h.seq / 64) as usize, h.seq % 64);
            if bits.len() <= word {
                bits.resize(word + 1, 0);
            }
            if bits[word] & (1 << bit) != 0 {
                st.duplicates += 1;
                continue;
            }
            bits[word] |= 1 << bit;
            self.received_total.fetch_add(1, Ordering::Relaxed);
            let intended = self.start + Duration::from_nanos(h.sent_ns);
            let due = intended + delay;
            if r.at < due {
                st.early += 1;
            }
            if self.in_window(intended) {
                let us = r.at.saturating_duration_since(due).as_micros() as u64;
                let _ = st.e2e.record(us.clamp(1, MAX_LATENCY_US));
            }
            if self.w.kind == Kind::Fifo {
                // An inversion: a later message of the group came first. A
                // gap alone is not one (a failed publish leaves a gap), and
                // redeliveries were counted above.
                let last = st.last_seq.entry((h.producer, h.group)).or_insert(0);
                if h.seq < *last {
                    st.order_violations += 1;
                } else {
                    *last = h.seq;
                }
            }
        }
    }
}

/// The suite's per-message header.
#[derive(Debug, PartialEq)]
struct Header {
    sent_ns: u64,
    producer: u32,
    group: u32,
    /// 1 for a lane's first message.
    seq: u64,
}

impl Header {
    fn body(&self, size: usize) -> Bytes {
        assert!(size >= HEADER_BYTES, "workload check guarantees room");
        let mut b = BytesMut::with_capacity(size);
        b.put_u64(self.sent_ns);
        b.put_u32(self.producer);
        b.put_u32(self.group);
        b.put_u64(self.seq);
        b.resize(size, b'x');
        b.freeze()
    }

    fn read(body: &[u8]) -> Option<Header> {
        if body.len() < HEADER_BYTES {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(body[i..i + 8].try_into().expect("8"));
        let u32_at = |i: usize| u32::from_be_bytes(body[i..i + 4].try_into().expect("4"));
        Some(Header {
            sent_ns: u64_at(0),
            producer: u32_at(8),
            group: u32_at(12),
            seq: u64_at(16),
        })
    }
}

/// How long the consumers may take to catch up after the last send.
fn drain_limit(w: &Workload) -> Duration {
    Duration::from_millis(w.delay_ms) + Duration::from_secs_f64((w.duration_s * 0.5).max(5.0))
}

/// Longest wait for one publish call before it counts as an error: a broker
/// that stops answering (a RabbitMQ resource alarm blocks publishers
/// silently) must not hang the suite.
const PUBLISH_LIMIT: Duration = Duration::from_secs(30);

/// Runs `w` once against `driver` and returns its figures. Whatever
/// happens after the driver prepared the run — a lane that panics, a
/// consumer that hangs — consumers are stopped and the driver's teardown
/// runs before this returns.
pub async fn run(driver: &dyn Driver, w: &Workload, run_id: &str) -> Result<Measured, BoxError> {
    let run = driver.prepare(w, run_id).await?;
    let start = Instant::now();
    let total = Duration::from_secs_f64(w.warmup_s + w.duration_s);
    // About 60 points over the run, between 100 ms and 1 s apart.
    let bucket = Duration::from_secs_f64((total.as_secs_f64() / 60.0).clamp(0.1, 1.0));
    let buckets = (total.as_secs_f64() / bucket.as_secs_f64()).ceil().max(1.0) as usize;
    let shared = Arc::new(Shared::new(w, start, bucket, buckets)?);
    let sampler = Sampler::spawn(run.broker_pid, shared.warm_end, shared.end);

    let mut consumers = Vec::new();
    for mut sub in run.subscribers {
        let s = shared.clone();
        consumers.push(tokio::spawn(async move {
            while !s.stop.load(Ordering::Relaxed) {
                let r = match sub.next().await {
                    Ok(r) => {
                        s.record_receipt(r);
                        sub.ack().await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    {
                        let mut st = s.stats.lock().expect("stats");
                        st.consume_errors += 1;
                        Shared::note_error(&mut st, &e);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            // The subscriber (and its connection) goes with the task.
            drop(sub);
        }));
    }

    let mut lanes = Vec::new();
    let producers = run.publishers.len();
    for (pi, publisher) in run.publishers.iter().enumerate() {
        // Producer p's ticket k is due at (k·P + p)·batch / rate: the
        // producers take turns instead of sending in bursts of P.
        let pacing = w.rate.per_second().map(|r| Pacing {
            per_ticket: Duration::from_secs_f64(w.batch_size as f64 * producers as f64 / r as f64),
            offset: Duration::from_secs_f64(w.batch_size as f64 * pi as f64 / r as f64),
        });
        let tickets = Arc::new(AtomicU64::new(0));
        for lane in 0..w.lanes() {
            let (s, p, tickets) = (shared.clone(), publisher.clone(), tickets.clone());
            lanes.push(tokio::spawn(publish_lane(
                s,
                p,
                tickets,
                pacing,
                pi as u32,
                lane as u32,
            )));
        }
    }
    let mut lane_failure = None;
    for l in lanes {
        if let Err(e) = l.await {
            lane_failure.get_or_insert_with(|| format!("a publish lane failed: {e}"));
        }
    }
    if lane_failure.is_none() {
        let drain_until = Instant::now() + drain_limit(w);
        while shared.received_total.load(Ordering::Relaxed)
            < shared.published_total.load(Ordering::Relaxed)
            && Instant::now() < drain_until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for c in consumers {
        // A receive long-polls about a second; don't wait for a stuck one.
        let abort = c.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), c)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let usage = sampler.finish().await;
    (run.teardown)().await;
    if let Some(e) = lane_failure {
        return Err(e.into());
    }

    let st = shared.stats.lock().expect("stats");
    let window = w.duration_s;
    let mb = |n: u64| n as f64 * w.message_size as f64 / window / 1e6;
    let published_total = shared.published_total.load(Ordering::Relaxed);
    let received_total = shared.received_total.load(Ordering::Relaxed);
    let series = st
        .series_pub
        .iter()
        .zip(&st.series_con)
        .enumerate()
        .map(|(i, (p, c))| {
            let from = i as f64 * bucket.as_secs_f64();
            let to = ((i + 1) as f64 * bucket.as_secs_f64()).min(total.as_secs_f64());
            // The last interval may be shorter than the others.
            let width = (to - from).max(1e-3);
            SeriesPoint {
                t_s: to,
                publish_per_s: *p as f64 / width,
                consume_per_s: *c as f64 / width,
            }
        })
        .collect();
    Ok(Measured {
        window_s: window,
        published: st.published_in_window,
        publish_per_s: st.published_in_window as f64 / window,
        publish_mb_per_s: mb(st.published_in_window),
        consumed: st.consumed_in_window,
        consume_per_s: st.consumed_in_window as f64 / window,
        consume_mb_per_s: mb(st.consumed_in_window),
        publish_latency: Percentiles::of(&st.publish),
        end_to_end_latency: Percentiles::of(&st.e2e),
        publish_errors: st.publish_errors,
        consume_errors: st.consume_errors,
        error_samples: st.errors.clone(),
        not_received: published_total.saturating_sub(received_total),
        duplicates: st.duplicates,
        order_violations: st.order_violations,
        early: st.early,
        broker_cpu_pct: usage.broker_cpu_pct,
        broker_rss_mb: usage.broker_rss_mb,
        client_cpu_pct: usage.self_cpu_pct,
        series,
    })
}

/// When a producer's tickets fall due at a fixed rate.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    per_ticket: Duration,
    offset: Duration,
}

/// One lane of a producer: a batch at a time, paced by the producer's
/// shared ticket counter when the rate is fixed. The due time is the
/// intended send time; the timer wakes the lane at most about a
/// millisecond after it (tokio's timer granularity), and that lateness is
/// counted in the latency, for every broker alike.
async fn publish_lane(
    s: Arc<Shared>,
    publisher: Arc<dyn Publisher>,
    tickets: Arc<AtomicU64>,
    pacing: Option<Pacing>,
    producer: u32,
    lane: u32,
) {
    let w = &s.w;
    let batch = w.batch_size;
    let mut seq = 0u64;
    loop {
        let intended = match pacing {
            Some(p) => {
                let k = tickets.fetch_add(1, Ordering::Relaxed);
                let t = s.start + p.offset + p.per_ticket.mul_f64(k as f64);
                if t >= s.end {
                    break;
                }
                tokio::time::sleep_until(t.into()).await;
                t
            }
            None => {
                let now = Instant::now();
                if now >= s.end {
                    break;
                }
                now
            }
        };
        let sent_ns = intended.duration_since(s.start).as_nanos() as u64;
        let payloads: Vec<Payload> = (0..batch)
            .map(|_| {
                seq += 1;
                Payload {
                    body: Header {
                        sent_ns,
                        producer,
                        group: lane,
                        seq,
                    }
                    .body(w.message_size),
                    group: (w.kind == Kind::Fifo).then(|| format!("g{lane}")),
                    delay: (w.kind == Kind::Delayed).then(|| Duration::from_millis(w.delay_ms)),
                }
            })
            .collect();
        let r = match tokio::time::timeout(PUBLISH_LIMIT, publisher.publish(payloads)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer to a publish within {PUBLISH_LIMIT:?}").into()),
        };
        s.record_publish(intended, Instant::now(), batch as u64, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(s: &Shared, lane: u32, seqs: &[u64]) {
        let bodies = seqs
            .iter()
            .map(|&seq| {
                Header {
                    sent_ns: 0,
                    producer: 0,
                    group: lane,
                    seq,
                }
                .body(64)
            })
            .collect();
        s.record_receipt(Received {
            at: Instant::now(),
            bodies,
        });
    }

    #[test]
    fn fifo_check_counts_inversions_not_gaps_and_duplicates_apart() {
        let w = Workload::parse(
            "name = \"f\"\nkind = \"fifo\"\nmessage_size = 64\ngroups = 2\nrate = \"max\"\nwarmup_s = 0\nduration_s = 10\n",
            "test",
        )
        .unwrap();
        let s = Shared::new(&w, Instant::now(), Duration::from_secs(1), 10).unwrap();
        receipt(&s, 0, &[1, 2, 4]); // 3 failed to publish: a gap, in order
        receipt(&s, 1, &[1, 2]);
        receipt(&s, 0, &[4]); // redelivered
        receipt(&s, 1, &[5, 3]); // 3 after 5: an inversion
        let st = s.stats.lock().unwrap();
        assert_eq!(st.order_violations, 1);
        assert_eq!(st.duplicates, 1);
        assert_eq!(s.received_total.load(Ordering::Relaxed), 7);
        assert_eq!(st.consumed_in_window, 8, "every receipt counts as consumed");
    }

    #[test]
    fn header_round_trips_and_short_bodies_are_refused() {
        let h = Header {
            sent_ns: 123_456_789,
            producer: 3,
            group: 99,
            seq: 42,
        };
        let body = h.body(100);
        assert_eq!(body.len(), 100);
        assert_eq!(Header::read(&body), Some(h));
        assert_eq!(Header::read(&body[..HEADER_BYTES - 1]), None);
    }
}
