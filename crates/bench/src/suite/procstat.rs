//! CPU time and resident memory of a process, read from /proc (Linux).
//!
//! CPU is the change in user + system time between the start and the end
//! of the measured window, as percent of one core (200 % is both cores of
//! this machine). Memory is the highest resident set size seen in samples
//! taken every 250 ms during the window.

use std::time::{Duration, Instant};

/// Clock ticks per second of /proc/<pid>/stat times: USER_HZ, 100 on every
/// Linux architecture this runs on (it is fixed in the kernel's user ABI).
const TICKS_PER_SECOND: f64 = 100.0;
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// user + system time of `pid`, in ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are
    // plain. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn rss_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[derive(Debug, Default, Clone)]
pub struct Usage {
    pub broker_cpu_pct: Option<f64>,
    pub broker_rss_mb: Option<f64>,
    pub self_cpu_pct: Option<f64>,
}

pub struct Sampler {
    task: tokio::task::JoinHandle<Usage>,
}

impl Sampler {
    /// Samples `broker` (if known) and this process from `from` to `to`.
    pub fn spawn(broker: Option<u32>, from: Instant, to: Instant) -> Sampler {
        let task = tokio::spawn(async move {
            let broker = broker.map(|p| p.to_string());
            tokio::time::sleep_until(from.into()).await;
            let t0 = Instant::now();
            let b0 = broker.as_deref().and_then(cpu_ticks);
            let s0 = cpu_ticks("self");
            let mut peak: Option<u64> = None;
            while Instant::now() < to {
                if let Some(rss) = broker.as_deref().and_then(rss_bytes) {
                    peak = Some(peak.map_or(rss, |p| p.max(rss)));
                }
                tokio::time::sleep(SAMPLE_EVERY.min(to.saturating_duration_since(Instant::now())))
                    .await;
            }
            let secs = t0.elapsed().as_secs_f64().max(1e-3);
            let pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => {
                    Some(b.saturating_sub(a) as f64 / TICKS_PER_SECOND / secs * 100.0)
                }
                _ => None,
            };
            Usage {
                broker_cpu_pct: pct(b0, broker.as_deref().and_then(cpu_ticks)),
                broker_rss_mb: peak.map(|b| b as f64 / 1e6),
                self_cpu_pct: pct(s0, cpu_ticks("self")),
            }
        });
        Sampler { task }
    }

    pub async fn finish(self) -> Usage {
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(cpu_ticks("self").is_some());
        assert!(rss_bytes("self").unwrap() > 0);
        assert!(cpu_ticks("0").is_none(), "no such process");
    }
}
