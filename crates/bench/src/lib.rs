//! Benchmarks that print figures (they are not tests and assert nothing).
//!
//! * `append` — the commit log alone: concurrent appenders of fixed-size
//!   records, each waiting for its group commit (fsync) before the next.
//! * `e2e` — a broker over gRPC: producers send, consumers receive and ack;
//!   throughput and send latency. Starts its own broker on a temporary
//!   directory unless `--server` names a running one.
//! * `tx` — half message + commit next to plain sends, alternating phases
//!   in one run, with the cost ratio.
//! * `timers` — delayed messages: lateness of 100k timers due in the same
//!   second while 1M more are pending hours ahead; early receipts, drain
//!   time, exactly-once.
//! * `fifo` — FIFO consumer group: throughput of many message groups with
//!   and without one slow group, alternating phases, order checked.
//! * `outbox` — the outbox relay: a PostgreSQL table drained into the
//!   broker, unordered and per-key ordered rows, with the ratio.
//! * `suite` — workloads described in files against Ferry, RabbitMQ and
//!   NATS JetStream with equal durability, side by side.

mod append;
mod e2e;
mod fifo;
mod net;
mod outbox;
pub mod suite;
mod timers;
mod tx;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(Debug, Subcommand)]
pub enum Which {
    /// Commit-log append with fsync per group commit.
    Append(append::AppendArgs),
    /// Send → receive → ack through the gRPC service.
    E2e(e2e::E2eArgs),
    /// Transactional (half + commit) sends next to plain sends.
    Tx(tx::TxArgs),
    /// Lateness of delayed messages due together, with many timers pending.
    Timers(timers::TimersArgs),
    /// FIFO consumption of many message groups, with and without a slow one.
    Fifo(fifo::FifoArgs),
    /// Outbox relay: rows from a PostgreSQL table to the broker.
    Outbox(outbox::OutboxArgs),
    /// Workloads from files against Ferry, RabbitMQ and NATS JetStream,
    /// side by side (JSON, Markdown, SVG chart).
    Suite(suite::SuiteArgs),
}

pub fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match args.which {
        Which::Append(a) => append::run(a),
        Which::E2e(a) => e2e::run(a),
        Which::Tx(a) => tx::run(a),
        Which::Timers(a) => timers::run(a),
        Which::Fifo(a) => fifo::run(a),
        Which::Outbox(a) => outbox::run(a),
        Which::Suite(a) => suite::run(a),
    }
}

/// Prints a latency histogram's percentiles in milliseconds.
pub(crate) fn percentiles(name: &str, h: &hdrhistogram::Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "{name} latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    )
}
