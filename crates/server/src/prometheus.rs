//! `GET /metrics`: everything the broker counts, in the Prometheus text
//! exposition format (0.0.4).
//!
//! Hand-rolled: the counters are atomics and maps the engine already keeps
//! ([`crate::metrics`]), the gauges are read from the core at scrape time,
//! and the histograms are the store's fixed-bucket [`Histogram`]; a metrics
//! crate would only copy them into its own types on every scrape. Each
//! family gets its HELP and TYPE lines (also when it has no series yet);
//! label values are escaped.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use ferry_broker::GroupQueueStats;
use ferry_store::{Histogram, HistogramSnapshot};

use crate::clients::Clients;
use crate::engine::Engine;
use crate::metrics::{Metrics, Rpc};

/// Escapes a label value: backslash, double quote and newline.
pub fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Builds the text, one family at a time.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.0, " {value}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.0.push('{');
        let mut first = true;
        for (k, v) in labels {
            if !first {
                self.0.push(',');
            }
            first = false;
            let _ = write!(self.0, "{k}=\"{}\"", escape(v));
        }
        if let Some(le) = le {
            if !first {
                self.0.push(',');
            }
            let _ = write!(self.0, "le=\"{le}\"");
        }
        self.0.push('}');
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// One histogram series; `per_unit` converts the histogram's integer
    /// unit to the exported base unit (1e9 for nanoseconds → seconds).
    fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        h: &HistogramSnapshot,
        per_unit: f64,
    ) {
        let scaled = |v: u64| v as f64 / per_unit;
        for (bound, n) in &h.buckets {
            self.0.push_str(name);
            self.0.push_str("_bucket");
            self.labels(labels, Some(&scaled(*bound).to_string()));
            let _ = writeln!(self.0, " {n}");
        }
        self.0.push_str(name);
        self.0.push_str("_bucket");
        self.labels(labels, Some("+Inf"));
        let _ = writeln!(self.0, " {}", h.count);
        self.sample(&format!("{name}_sum"), labels, scaled(h.sum));
        self.sample(&format!("{name}_count"), labels, h.count);
    }

    fn histogram_family(&mut self, name: &str, help: &str, h: &Histogram, per_unit: f64) {
        self.family(name, "histogram", help);
        self.histogram(name, &[], &h.snapshot(), per_unit);
    }
}

const NS_PER_S: f64 = 1e9;
const MS_PER_S: f64 = 1e3;

/// A per-group-and-queue gauge: metric name, help text, how to read it.
type GroupGauge = (&'static str, &'static str, fn(&GroupQueueStats) -> u64);

/// The whole `/metrics` answer.
pub fn render(engine: &Engine, clients: &Clients) -> String {
    let mut out = Out(String::with_capacity(16 << 10));
    let m = &engine.metrics;
    counters(&mut out, m);
    core_gauges(&mut out, engine);
    log_stats(&mut out, engine);
    topics(&mut out, engine, m);
    groups(&mut out, engine, m);
    grpc(&mut out, m);
    out.histogram_family(
        "ferry_timer_lateness_seconds",
        "Per fired delayed message: when it became deliverable (durably indexed) minus its delivery time.",
        &m.timer_lateness_ms,
        MS_PER_S,
    );
    out.family("ferry_clients", "gauge", "Connected clients by language.");
    for (lang, n) in clients.by_language() {
        out.sample("ferry_clients", &[("language", &lang)], n);
    }
    out.0
}

fn counters(out: &mut Out, m: &Metrics) {
    let counters: [(&str, &str, &AtomicU64); 22] = [
        (
            "ferry_messages_stored_total",
            "Messages durably stored.",
            &m.messages_stored,
        ),
        (
            "ferry_message_bytes_stored_total",
            "Body bytes durably stored.",
            &m.bytes_stored,
        ),
        (
            "ferry_send_rejected_total",
            "Messages refused by validation.",
            &m.send_rejected,
        ),
        (
            "ferry_messages_delivered_total",
            "Messages handed to consumers.",
            &m.messages_delivered,
        ),
        (
            "ferry_redeliveries_total",
            "Deliveries with attempt > 1.",
            &m.redeliveries,
        ),
        (
            "ferry_acks_total",
            "Acknowledgements made durable.",
            &m.acks,
        ),
        (
            "ferry_invisibility_changes_total",
            "ChangeInvisibleDuration calls applied.",
            &m.invisibility_changes,
        ),
        (
            "ferry_corrupt_reads_total",
            "Records that failed their checksum on read.",
            &m.corrupt_reads,
        ),
        (
            "ferry_tx_half_stored_total",
            "Half (transactional) messages durably stored.",
            &m.tx_half_stored,
        ),
        (
            "ferry_tx_committed_total",
            "Transactions committed (by the producer or on check-back).",
            &m.tx_committed,
        ),
        (
            "ferry_tx_rolled_back_total",
            "Transactions rolled back (by the producer or on check-back).",
            &m.tx_rolled_back,
        ),
        (
            "ferry_tx_checks_sent_total",
            "Check-backs sent to producers.",
            &m.tx_checks_sent,
        ),
        (
            "ferry_tx_checks_failed_total",
            "Check-backs that could not be handed to a producer's stream.",
            &m.tx_checks_failed,
        ),
        (
            "ferry_tx_checks_deferred_total",
            "Check rounds postponed because no producer of the topic was connected.",
            &m.tx_checks_deferred,
        ),
        (
            "ferry_tx_discarded_total",
            "Half messages discarded after the last check-back went unanswered.",
            &m.tx_discarded,
        ),
        (
            "ferry_tx_end_repeated_total",
            "EndTransaction calls repeating an outcome already recorded (answered OK, no effect).",
            &m.tx_end_repeated,
        ),
        (
            "ferry_tx_end_refused_total",
            "EndTransaction calls refused (unknown id, mismatch, or conflicting outcome).",
            &m.tx_end_refused,
        ),
        (
            "ferry_timers_fired_total",
            "Messages indexed when their delivery time came.",
            &m.timers_fired,
        ),
        (
            "ferry_dead_lettered_total",
            "Messages moved to a dead-letter topic (last attempt failed, or forwarded).",
            &m.dead_lettered,
        ),
        (
            "ferry_redriven_total",
            "Dead letters sent back to their topic by an operator.",
            &m.redriven,
        ),
        (
            "ferry_receive_attempt_replays_total",
            "Receives retried with the same attempt id that got the same messages again.",
            &m.attempt_replays,
        ),
        (
            "ferry_log_heals_total",
            "Times the commit log was healed after a disk fault stopped its writes.",
            &m.log_heals,
        ),
    ];
    for (name, help, c) in counters {
        out.counter(name, help, Metrics::get(c));
    }
}

fn core_gauges(out: &mut Out, engine: &Engine) {
    let (tx_pending, timers_pending, (index_ids, index_keys)) = engine.with_core(|c| {
        (
            c.transactions().pending_len(),
            c.timers().len(),
            c.message_index_len(),
        )
    });
    let progress = engine.log().progress();
    let gauges = [
        (
            "ferry_tx_pending",
            "Half messages waiting for their transaction outcome.",
            tx_pending as u64,
        ),
        (
            "ferry_timers_pending",
            "Messages waiting for their delivery time.",
            timers_pending as u64,
        ),
        (
            "ferry_log_committed_offset_bytes",
            "Committed end of the commit log.",
            progress.committed,
        ),
        (
            "ferry_log_failed",
            "1 while the commit log refuses writes after a disk fault, else 0.",
            u64::from(progress.failed.is_some()),
        ),
        (
            "ferry_message_index_ids",
            "Message-id entries in the lookup index (one per retained message record).",
            index_ids as u64,
        ),
        (
            "ferry_message_index_keys",
            "Message-key entries in the lookup index.",
            index_keys as u64,
        ),
    ];
    for (name, help, v) in gauges {
        out.gauge(name, help, v);
    }
}

fn log_stats(out: &mut Out, engine: &Engine) {
    let stats = engine.log().stats();
    out.histogram_family(
        "ferry_log_fsync_seconds",
        "Duration of each fdatasync of a commit-log segment (group commits and segment rolls).",
        &stats.fsync_ns,
        NS_PER_S,
    );
    out.histogram_family(
        "ferry_log_commit_batch_records",
        "Records per group commit (one flusher write; in sync mode one fdatasync).",
        &stats.batch_records,
        1.0,
    );
    out.histogram_family(
        "ferry_log_commit_batch_bytes",
        "Encoded bytes per group commit.",
        &stats.batch_bytes,
        1.0,
    );
}

fn topics(out: &mut Out, engine: &Engine, m: &Metrics) {
    out.family(
        "ferry_queue_max_offset",
        "gauge",
        "Next queue offset per queue.",
    );
    for t in engine.with_core(|c| c.topic_stats()) {
        for (i, (_, max)) in t.queues.iter().enumerate() {
            out.sample(
                "ferry_queue_max_offset",
                &[("topic", &t.name), ("queue", &i.to_string())],
                max,
            );
        }
    }
    let counts = m.topic_counts();
    let per_topic = [
        (
            "ferry_topic_messages_stored_total",
            "Messages durably stored per topic (sent since start; delayed and half messages count when stored).",
            false,
        ),
        (
            "ferry_topic_bytes_stored_total",
            "Body bytes durably stored per topic.",
            true,
        ),
    ];
    for (name, help, bytes) in per_topic {
        out.family(name, "counter", help);
        for (topic, queues) in &counts {
            let v: u64 = queues
                .iter()
                .map(|q| if bytes { q.bytes } else { q.messages })
                .sum();
            out.sample(name, &[("topic", topic)], v);
        }
    }
    let per_queue = [
        (
            "ferry_queue_messages_stored_total",
            "Messages durably stored per topic and queue.",
            false,
        ),
        (
            "ferry_queue_bytes_stored_total",
            "Body bytes durably stored per topic and queue.",
            true,
        ),
    ];
    for (name, help, bytes) in per_queue {
        out.family(name, "counter", help);
        for (topic, queues) in &counts {
            for (i, q) in queues.iter().enumerate() {
                if q.messages == 0 {
                    continue;
                }
                let v = if bytes { q.bytes } else { q.messages };
                out.sample(name, &[("topic", topic), ("queue", &i.to_string())], v);
            }
        }
    }
}

fn groups(out: &mut Out, engine: &Engine, m: &Metrics) {
    let (stats, dead_letters) = engine.with_core(|c| {
        let dead: Vec<(String, usize)> = c
            .group_names()
            .into_iter()
            .map(|g| {
                let n = c.dead_letter_count(&g);
                (g, n)
            })
            .collect();
        (c.group_stats(), dead)
    });
    let gauges: [GroupGauge; 2] = [
        (
            "ferry_group_lag",
            "Messages not yet consumed per group and queue.",
            |g| g.lag,
        ),
        (
            "ferry_group_inflight",
            "Messages delivered and not yet settled.",
            |g| g.inflight as u64,
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, "gauge", help);
        for g in &stats {
            out.sample(
                name,
                &[
                    ("group", &g.group),
                    ("topic", &g.topic),
                    ("queue", &g.queue_id.to_string()),
                ],
                value(g),
            );
        }
    }
    out.family(
        "ferry_group_dead_letters",
        "gauge",
        "Dead letters of the group still retained in its dead-letter topic.",
    );
    for (g, n) in &dead_letters {
        out.sample("ferry_group_dead_letters", &[("group", g)], n);
    }
    let counts = m.group_counts();
    out.family(
        "ferry_group_redeliveries_total",
        "counter",
        "Deliveries with attempt > 1 per consumer group.",
    );
    for (g, c) in &counts {
        out.sample(
            "ferry_group_redeliveries_total",
            &[("group", g)],
            c.redeliveries,
        );
    }
    out.family(
        "ferry_group_dead_lettered_total",
        "counter",
        "Messages the group moved to its dead-letter topic (last attempt failed, or forwarded).",
    );
    for (g, c) in &counts {
        out.sample(
            "ferry_group_dead_lettered_total",
            &[("group", g)],
            c.dead_lettered,
        );
    }
}

fn grpc(out: &mut Out, m: &Metrics) {
    out.family(
        "ferry_grpc_requests_total",
        "counter",
        "gRPC calls by RPC and outcome: the RocketMQ status code of the answer (OK, BAD_REQUEST, ...), GRPC_<code> for a gRPC error, CANCELLED when the client went away first.",
    );
    for ((rpc, outcome), n) in m.grpc.calls() {
        out.sample(
            "ferry_grpc_requests_total",
            &[("rpc", rpc.name()), ("code", &outcome.label())],
            n,
        );
    }
    out.family(
        "ferry_grpc_request_duration_seconds",
        "histogram",
        "Time from a call's start to its answer (ReceiveMessage: long-polling wait included; Telemetry streams are not timed).",
    );
    for rpc in Rpc::ALL.into_iter().filter(|r| r.timed()) {
        let snap = m.grpc.duration(rpc).snapshot();
        if snap.count == 0 {
            continue;
        }
        out.histogram(
            "ferry_grpc_request_duration_seconds",
            &[("rpc", rpc.name())],
            &snap,
            NS_PER_S,
        );
    }
}
