//! `ferry bench suite`: workloads from files, run against Ferry, RabbitMQ
//! and NATS JetStream one after another on this machine, reported side by
//! side (JSON, Markdown, SVG chart).
//!
//! Every driver acknowledges a publish only once the message is on disk:
//! Ferry's sync flush, RabbitMQ quorum queues with publisher confirms, and
//! a NATS server started by the suite with `sync_interval: always`. Runs
//! never overlap; each gets a fresh broker or a fresh queue.

mod chart;
mod disk;
pub mod driver;
mod procstat;
mod report;
mod runner;
pub mod workload;

use std::path::PathBuf;
use std::time::SystemTime;

use clap::Args;

use driver::{BoxError, Driver};
use report::{Machine, Outcome, Report, RunResult};
use workload::Workload;

#[derive(Debug, Args)]
pub struct SuiteArgs {
    /// Workload files (TOML); without any, the standard set shipped with
    /// Ferry (see --list).
    #[arg(long = "workload", value_name = "FILE")]
    workloads: Vec<PathBuf>,
    /// Run only the workloads with these names.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Brokers to measure, in this order.
    #[arg(long, value_delimiter = ',', default_value = "ferry,rabbitmq,nats")]
    drivers: Vec<String>,
    /// Seconds, not minutes: at most 0.5 s warm-up and 1.5 s measured per
    /// run, a small disk probe. For keeping the tool working, not figures.
    #[arg(long)]
    smoke: bool,
    /// Where results.json, results.md and chart.svg are written.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Where brokers the suite starts keep their data, and where the disk
    /// is probed: put it on the disk you want measured.
    #[arg(long, default_value = ".")]
    work_dir: PathBuf,
    /// The ferry binary to start as the broker [default: this one].
    #[arg(long)]
    ferry_bin: Option<PathBuf>,
    /// RabbitMQ to measure (a running server; queues are created and deleted).
    #[arg(
        long,
        env = "FERRY_BENCH_RABBITMQ_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    rabbitmq_url: String,
    /// nats-server ≥ 2.11 (for sync_interval), started by the suite on a free port.
    #[arg(long, env = "FERRY_BENCH_NATS_SERVER", default_value = "nats-server")]
    nats_server: PathBuf,
    /// MiB written to measure the disk's sequential bandwidth [default: 1024, smoke 32].
    #[arg(long)]
    disk_mib: Option<u64>,
    /// Print the standard workloads (TOML) and exit.
    #[arg(long)]
    list: bool,
}

pub fn run(a: SuiteArgs) -> Result<(), BoxError> {
    if a.list {
        for w in Workload::standard() {
            println!("# {}\n{}", w.name, toml::to_string(&w)?);
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

fn workloads(a: &SuiteArgs) -> Result<Vec<Workload>, BoxError> {
    let mut all = if a.workloads.is_empty() {
        Workload::standard()
    } else {
        a.workloads
            .iter()
            .map(|p| Workload::load(p))
            .collect::<Result<Vec<_>, String>>()?
    };
    if !a.only.is_empty() {
        for name in &a.only {
            if !all.iter().any(|w| &w.name == name) {
                let known: Vec<&str> = all.iter().map(|w| w.name.as_str()).collect();
                return Err(
                    format!("no workload named {name:?} (have: {})", known.join(", ")).into(),
                );
            }
        }
        all.retain(|w| a.only.contains(&w.name));
    }
    if a.smoke {
        all = all.into_iter().map(Workload::smoke).collect();
    }
    Ok(all)
}

fn drivers(a: &SuiteArgs) -> Result<Vec<Box<dyn Driver>>, BoxError> {
    let mut out: Vec<Box<dyn Driver>> = Vec::new();
    for name in &a.drivers {
        match name.as_str() {
            "ferry" => out.push(Box::new(driver::ferry::Ferry {
                bin: match &a.ferry_bin {
                    Some(p) => p.clone(),
                    None => std::env::current_exe()?,
                },
                work_dir: a.work_dir.clone(),
            })),
            "rabbitmq" => out.push(Box::new(driver::rabbitmq::RabbitMq::new(
                a.rabbitmq_url.clone(),
            ))),
            "nats" => {
                let n = driver::nats::Nats::new(a.nats_server.clone(), a.work_dir.clone());
                n.check()?;
                out.push(Box::new(n));
            }
            other => return Err(format!("unknown driver {other:?} (ferry, rabbitmq, nats)").into()),
        }
    }
    Ok(out)
}

async fn run_async(a: SuiteArgs) -> Result<(), BoxError> {
    let workloads = workloads(&a)?;
    let drivers = drivers(&a)?;
    std::fs::create_dir_all(&a.out)
        .map_err(|e| format!("cannot create {}: {e}", a.out.display()))?;
    let started = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let mib = a.disk_mib.unwrap_or(if a.smoke { 32 } else { 1024 });
    if mib == 0 {
        return Err("--disk-mib must be at least 1".into());
    }
    eprintln!(
        "suite: probing the disk under {} ({mib} MiB)",
        a.work_dir.display()
    );
    let dir = a.work_dir.clone();
    let disk = tokio::task::spawn_blocking(move || disk::measure(&dir, mib, 500)).await??;
    eprintln!(
        "suite: disk {:.0} MB/s sequential, 4 KiB fdatasync p99 {:.2} ms",
        disk.sequential_mb_per_s, disk.fsync_4k_p99_ms
    );
    let mut results = Vec::new();
    let stamp = std::process::id();
    for (i, w) in workloads.iter().enumerate() {
        for d in &drivers {
            let outcome = if let Some(reason) = d.unsupported(w) {
                Outcome::NotApplicable { reason }
            } else {
                eprintln!(
                    "suite: {} × {} ({} s warm-up + {} s)",
                    w.name,
                    d.name(),
                    w.warmup_s,
                    w.duration_s
                );
                let run_id = format!("{stamp}-{i}-{}", d.name());
                match runner::run(d.as_ref(), w, &run_id).await {
                    Ok(m) => {
                        eprintln!(
                            "suite:   publish {:.0} msg/s p99 {:.2} ms; consume {:.0} msg/s e2e p99 {:.2} ms; errors {}",
                            m.publish_per_s,
                            m.publish_latency.p99_ms,
                            m.consume_per_s,
                            m.end_to_end_latency.p99_ms,
                            m.publish_errors + m.consume_errors
                        );
                        Outcome::Ok {
                            measured: Box::new(m),
                        }
                    }
                    Err(e) => {
                        eprintln!("suite:   FAILED: {e}");
                        Outcome::Failed {
                            error: e.to_string(),
                        }
                    }
                }
            };
            results.push(RunResult {
                workload: w.name.clone(),
                driver: d.name().to_string(),
                outcome,
            });
        }
    }
    let mut report = Report {
        started,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::read(),
        disk,
        drivers: drivers
            .iter()
            .map(|d| (d.name().to_string(), d.describe()))
            .collect(),
        workloads,
        results,
        targets: Vec::new(),
    };
    report.evaluate_targets();
    let md = report.markdown();
    std::fs::write(
        a.out.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(a.out.join("results.md"), &md)?;
    std::fs::write(a.out.join("chart.svg"), chart::svg(&report))?;
    println!("{md}");
    eprintln!(
        "suite: wrote results.json, results.md and chart.svg to {}",
        a.out.display()
    );
    let problems: Vec<String> = report
        .results
        .iter()
        .filter_map(|r| {
            r.problem()
                .map(|p| format!("{} × {}: {p}", r.workload, r.driver))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} run(s) failed:\n  {}",
            problems.len(),
            problems.join("\n  ")
        )
        .into())
    }
}
