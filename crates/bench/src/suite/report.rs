//! The suite's outputs: JSON (everything), a Markdown table (all workloads
//! × all drivers), and the targets checked against this run's figures.

use std::fmt::Write as _;

use serde::Serialize;

use super::disk::Disk;
use super::runner::Measured;
use super::workload::Workload;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    Ok {
        measured: Box<Measured>,
    },
    /// The broker has no equivalent of the workload.
    #[serde(rename = "n/a")]
    NotApplicable {
        reason: String,
    },
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub workload: String,
    pub driver: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl RunResult {
    pub fn measured(&self) -> Option<&Measured> {
        match &self.outcome {
            Outcome::Ok { measured } => Some(measured),
            _ => None,
        }
    }

    /// What makes the run a failure of the suite (not merely a slow
    /// figure): an error, or a broken guarantee.
    pub fn problem(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Failed { error } => Some(error.clone()),
            Outcome::NotApplicable { .. } => None,
            Outcome::Ok { measured: m } => {
                if m.order_violations > 0 {
                    Some(format!("{} FIFO order violations", m.order_violations))
                } else if m.early > 0 {
                    Some(format!("{} delayed messages delivered early", m.early))
                } else if m.published == 0 {
                    Some("nothing was published in the measured window".into())
                } else {
                    None
                }
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub figure: String,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started: String,
    pub command: String,
    pub machine: Machine,
    pub disk: Disk,
    pub drivers: Vec<(String, String)>,
    pub workloads: Vec<Workload>,
    pub results: Vec<RunResult>,
    pub targets: Vec<Target>,
}

impl Report {
    pub fn find(&self, workload: &str, driver: &str) -> Option<&Measured> {
        self.results
            .iter()
            .find(|r| r.workload == workload && r.driver == driver)
            .and_then(RunResult::measured)
    }

    /// The targets, evaluated where this run has the figures.
    pub fn evaluate_targets(&mut self) {
        let mut t = Vec::new();
        for w in ["1kib-max", "1kib-max-batch32"] {
            let Some(f) = self.find(w, "ferry") else {
                continue;
            };
            for (peer, need) in [("rabbitmq", 3.0), ("nats", 2.0)] {
                if let Some(p) = self.find(w, peer).filter(|p| p.publish_per_s > 0.0) {
                    let ratio = f.publish_per_s / p.publish_per_s;
                    t.push(Target {
                        what: format!("{w}: Ferry publish ≥ {need}× {peer}"),
                        figure: format!(
                            "{ratio:.2}× ({:.0} vs {:.0} msg/s)",
                            f.publish_per_s, p.publish_per_s
                        ),
                        met: Some(ratio >= need),
                    });
                }
            }
            let frac = f.publish_mb_per_s / self.disk.sequential_mb_per_s.max(1e-9);
            t.push(Target {
                what: format!("{w}: Ferry publish bytes / raw sequential disk write"),
                figure: format!(
                    "{:.1} % ({:.1} of {:.0} MB/s)",
                    frac * 100.0,
                    f.publish_mb_per_s,
                    self.disk.sequential_mb_per_s
                ),
                met: None,
            });
        }
        if let Some(f) = self.find("1kib-20k", "ferry") {
            t.push(Target {
                what: "1kib-20k: Ferry publish p99 ≤ 5 ms".into(),
                figure: format!(
                    "{:.2} ms at {:.0} msg/s",
                    f.publish_latency.p99_ms, f.publish_per_s
                ),
                met: Some(f.publish_latency.p99_ms <= 5.0),
            });
            t.push(Target {
                what: "1kib-20k: Ferry end-to-end p99 ≤ 10 ms".into(),
                figure: format!("{:.2} ms", f.end_to_end_latency.p99_ms),
                met: Some(f.end_to_end_latency.p99_ms <= 10.0),
            });
        }
        if let (Some(tx), Some(plain)) = (
            self.find("tx-1kib-max", "ferry"),
            self.find("1kib-max", "ferry"),
        ) {
            let ratio = tx.publish_per_s / plain.publish_per_s.max(1e-9);
            t.push(Target {
                what: "tx-1kib-max: Ferry transactional ≥ 50 % of plain 1kib-max".into(),
                figure: format!(
                    "{:.1} % ({:.0} vs {:.0} msg/s)",
                    ratio * 100.0,
                    tx.publish_per_s,
                    plain.publish_per_s
                ),
                met: Some(ratio >= 0.5),
            });
        }
        self.targets = t;
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "Run started {} with `{}`.\n", self.started, self.command);
        let _ = writeln!(
            s,
            "Machine: {} CPUs ({}), {:.0} GiB, Linux {}. Disk: sequential write {:.0} MB/s ({} MiB, fdatasync at the end); 4 KiB write + fdatasync p50 {:.2} ms, p99 {:.2} ms.\n",
            m.cpus,
            m.cpu_model,
            m.memory_gib,
            m.kernel,
            self.disk.sequential_mb_per_s,
            self.disk.sequential_mib,
            self.disk.fsync_4k_p50_ms,
            self.disk.fsync_4k_p99_ms
        );
        let _ = writeln!(s, "Drivers:\n");
        for (name, what) in &self.drivers {
            let _ = writeln!(s, "- **{name}**: {what}");
        }
        let _ = writeln!(
            s,
            "\n| workload | driver | publish msg/s | MB/s | consume msg/s | publish p50 / p99 / p99.9 / max ms | end-to-end p50 / p99 / p99.9 / max ms | broker CPU % | broker RSS MB | client CPU % | errors | notes |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.results {
            match &r.outcome {
                Outcome::Ok { measured: x } => {
                    let lat = |p: &super::runner::Percentiles| {
                        format!(
                            "{:.2} / {:.2} / {:.2} / {:.2}",
                            p.p50_ms, p.p99_ms, p.p999_ms, p.max_ms
                        )
                    };
                    let opt = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.0}"));
                    let mut notes = Vec::new();
                    if x.not_received > 0 {
                        notes.push(format!("{} not received by the end", x.not_received));
                    }
                    if x.duplicates > 0 {
                        notes.push(format!("{} redelivered", x.duplicates));
                    }
                    if x.order_violations > 0 {
                        notes.push(format!("{} ORDER VIOLATIONS", x.order_violations));
                    }
                    if x.early > 0 {
                        notes.push(format!("{} EARLY", x.early));
                    }
                    let _ = writeln!(
                        s,
                        "| {} | {} | {:.0} | {:.1} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                        r.workload,
                        r.driver,
                        x.publish_per_s,
                        x.publish_mb_per_s,
                        x.consume_per_s,
                        lat(&x.publish_latency),
                        lat(&x.end_to_end_latency),
                        opt(x.broker_cpu_pct),
                        opt(x.broker_rss_mb),
                        opt(x.client_cpu_pct),
                        x.publish_errors + x.consume_errors,
                        notes.join("; ")
                    );
                }
                Outcome::NotApplicable { reason } => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | n/a | | | | | | | | | {} |",
                        r.workload,
                        r.driver,
                        reason.replace('|', "/")
                    );
                }
                Outcome::Failed { error } => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | FAILED | | | | | | | | | {} |",
                        r.workload,
                        r.driver,
                        error.replace('\n', " ").replace('|', "/")
                    );
                }
            }
        }
        if !self.targets.is_empty() {
            let _ = writeln!(s, "\n| target | this run | met |\n|---|---|---|");
            for t in &self.targets {
                let met = match t.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "(report)",
                };
                let _ = writeln!(s, "| {} | {} | {met} |", t.what, t.figure);
            }
        }
        s
    }
}
