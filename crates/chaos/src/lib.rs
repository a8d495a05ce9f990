//! `ferry chaos`: Ferry's reliability harness.
//!
//! * `ferry chaos run` — a broker and a mixed load (plain, FIFO, delayed
//!   and transactional producers; consumers acking, sometimes not) as child
//!   processes; a loop kills one of them with SIGKILL at random moments and
//!   starts it again; then everything is drained and the histories are
//!   checked ([`checker`]).
//! * `ferry chaos check` — the checker alone, on a run's histories.
//! * `ferry chaos damage` — truncations and bit flips in every kind of file
//!   the broker writes: each must be detected, never served as data.
//! * `ferry chaos worker` — one producer or consumer (started by `run`).

pub mod checker;
pub mod damage;
pub mod history;
pub mod proc;
pub mod run;
pub mod worker;

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use thiserror::Error;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Error)]
pub enum ChaosError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] ferry_admin::AdminError),
    #[error(transparent)]
    Client(#[from] ferry_client::ClientError),
    #[error("{0}")]
    Failed(String),
}

impl ChaosError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> ChaosError {
        ChaosError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

#[derive(Debug, Args)]
pub struct ChaosArgs {
    #[command(subcommand)]
    command: ChaosCommand,
}

#[derive(Debug, Subcommand)]
enum ChaosCommand {
    /// Kill -9 loop under mixed load, then drain and check (exit 1 on any
    /// violation).
    Run(run::RunArgs),
    /// Check the histories of an earlier run.
    Check {
        /// The run's directory (its `history/` is read).
        #[arg(long, default_value = "chaos-run")]
        dir: PathBuf,
    },
    /// Truncate and flip bits in every kind of file the broker writes.
    Damage(damage::DamageArgs),
    /// One producer or consumer of a run (started by `run`).
    Worker(WorkerArgs),
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// producer or consumer.
    #[arg(long)]
    role: String,
    /// plain, fifo, delayed or tx.
    #[arg(long)]
    kind: String,
    #[arg(long, default_value_t = 1)]
    id: u32,
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    history: PathBuf,
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Finish what the history left open; send nothing new.
    #[arg(long)]
    drain: bool,
}

/// Prints the figures and the violations; true when there were none.
pub fn print_report(report: &checker::Report, run: Option<&run::RunFigures>) -> bool {
    if let Some(r) = run {
        println!(
            "kill -9 cycles {} (broker {}, workers {}), {:.0} s (drain {:.0} s); recovery: {} torn bytes cut, {} damaged ranges",
            r.cycles, r.broker_kills, r.worker_kills, r.seconds, r.drain_seconds, r.truncated_bytes, r.dropped_ranges
        );
        println!(
            "dead letters {}, silent transactions discarded {}",
            r.dead_letters, r.tx_silent_discarded
        );
    }
    println!(
        "worker starts {}; sends {}, acknowledged {} {:?}, refused {}, unknown outcome {}",
        report.worker_starts,
        report.sends,
        report.acknowledged,
        report.acknowledged_by_kind,
        report.refused,
        report.unknown_outcomes
    );
    println!(
        "deliveries {}, keys delivered {}, redeliveries {}, stored twice (resent after an unknown outcome) {}",
        report.deliveries, report.keys_delivered, report.redeliveries, report.stored_twice
    );
    println!(
        "acknowledged lost {}; FIFO message groups {}; delayed delivered {} (lateness p99 {} ms, max {} ms)",
        report.acknowledged_lost,
        report.fifo_groups,
        report.delayed_delivered,
        report.delayed_lateness_p99_ms,
        report.delayed_lateness_max_ms
    );
    println!(
        "transactions {}: delivered {}, not delivered {}, late ends contradicted by a check {}, ends replayed {}, silent {}",
        report.tx_started,
        report.tx_committed_delivered,
        report.tx_not_delivered,
        report.tx_late_contradicted,
        report.tx_replayed_ends,
        report.tx_silent
    );
    let n = report.violation_count();
    println!("violations {n} {:?}", report.violations_by_kind);
    for v in &report.violations {
        println!("  {} {}: {}", v.kind, v.key, v.detail);
    }
    n == 0
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs a `ferry chaos` command.
pub fn run(args: ChaosArgs) -> Result<(), crate::BoxError> {
    match args.command {
        ChaosCommand::Run(a) => {
            let dir = a.dir.clone();
            let (report, figures) = runtime().block_on(run::run(a))?;
            if !print_report(&report, Some(&figures)) {
                return Err(format!(
                    "violations found; see {}",
                    dir.join("report.json").display()
                )
                .into());
            }
            Ok(())
        }
        ChaosCommand::Check { dir } => {
            let h = dir.join("history");
            let (files, torn) = history::read_dir(&h).map_err(|e| ChaosError::io(&h, e))?;
            if print_report(&checker::check(&files, torn), None) {
                Ok(())
            } else {
                Err("violations found".into())
            }
        }
        ChaosCommand::Damage(a) => {
            let outcome = runtime().block_on(damage::run(a))?;
            if !damage::print(&outcome) {
                return Err("damage went undetected or was served".into());
            }
            Ok(())
        }
        ChaosCommand::Worker(a) => {
            let kind = Kind::parse(&a.kind)
                .ok_or_else(|| format!("unknown kind {:?} (plain, fifo, delayed, tx)", a.kind))?;
            let config = worker::WorkerConfig {
                endpoint: a.endpoint,
                history_dir: a.history,
                kind,
                id: a.id,
                rate: a.rate,
                drain: a.drain,
            };
            runtime().block_on(async move {
                match a.role.as_str() {
                    "producer" => worker::produce(config).await,
                    "consumer" => worker::consume(config).await,
                    other => Err(format!("unknown role {other:?} (producer, consumer)").into()),
                }
            })
        }
    }
}

use history::Kind;
