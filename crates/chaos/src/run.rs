//! The kill -9 loop: a broker and its load as child processes, killed at
//! random moments and started again, then drained and checked.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_admin::AdminClient;
use serde_json::{json, Value};

use crate::checker::{self, Report};
use crate::history::{self, Kind};
use crate::proc::{free_port, Proc};
use crate::ChaosError;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Working directory: broker data, histories, logs and the report
    /// (emptied first).
    #[arg(long, default_value = "chaos-run")]
    pub dir: PathBuf,
    /// Processes killed with SIGKILL (the broker or a worker).
    #[arg(long, default_value_t = 20)]
    pub cycles: u32,
    /// Seeds the choice of victims and moments (the load itself is not
    /// replayable: it races real processes).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Shortest and longest pause between kills, ms.
    #[arg(long, default_value_t = 300)]
    pub min_gap_ms: u64,
    #[arg(long, default_value_t = 2500)]
    pub max_gap_ms: u64,
    /// Share of kills that hit the broker, percent (the rest hit a
    /// producer or a consumer).
    #[arg(long, default_value_t = 50)]
    pub broker_share: u64,
    /// Sends per second of each producer.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Longest wait for every message to be consumed at the end, s.
    #[arg(long, default_value_t = 180)]
    pub drain_limit_secs: u64,
    /// The `ferry` binary (default: this one).
    #[arg(long)]
    pub ferry_bin: Option<PathBuf>,
}

/// What the run adds to the checker's report.
#[derive(Debug, Default, serde::Serialize)]
pub struct RunFigures {
    pub cycles: u32,
    pub broker_kills: u32,
    pub worker_kills: u32,
    pub seconds: f64,
    pub drain_seconds: f64,
    /// Bytes recovery cut as torn tails over all restarts.
    pub truncated_bytes: u64,
    /// Damaged ranges recovery skipped: a kill -9 damages nothing, so this
    /// must be 0.
    pub dropped_ranges: u64,
    pub dead_letters: u64,
    pub tx_silent_discarded: u64,
}

async fn wait_ready(admin: &AdminClient, broker: &mut Proc) -> Result<(), ChaosError> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(t) = admin.get_text("/readyz").await {
            if t.starts_with("ready") {
                return Ok(());
            }
        }
        if let Some(why) = broker.exited() {
            return Err(ChaosError::Failed(why));
        }
        if Instant::now() > until {
            return Err(ChaosError::Failed(format!(
                "the broker did not become ready within 60 s; see {}",
                broker.log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn recovery_figures(admin: &AdminClient, figures: &mut RunFigures) -> Result<(), ChaosError> {
    let r = admin.get("/v1/recovery").await?;
    figures.truncated_bytes += r["truncated_bytes"].as_u64().unwrap_or(0);
    figures.dropped_ranges += r["dropped"].as_array().map_or(0, |a| a.len() as u64);
    figures.dropped_ranges += r["damaged_segments"]
        .as_array()
        .map_or(0, |a| a.len() as u64);
    Ok(())
}

/// Whether everything sent has been consumed: no lag, nothing in flight,
/// no pending transaction or timer.
async fn drained(admin: &AdminClient) -> Result<bool, ChaosError> {
    let tx = admin.get("/v1/transactions").await?;
    if tx["pending_count"].as_u64() != Some(0) || tx["timers_pending"].as_u64() != Some(0) {
        return Ok(false);
    }
    for kind in Kind::ALL {
        let g = match admin
            .get(&format!(
                "/v1/groups/{}",
                ferry_admin::segment(kind.group())
            ))
            .await
        {
            Ok(g) => g,
            // A group that never received anything is not known yet.
            Err(e) if e.http_status() == Some(404) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let busy = g["queues"].as_array().is_some_and(|qs| {
            qs.iter()
                .any(|q| q["lag"].as_u64() != Some(0) || q["inflight"].as_u64() != Some(0))
        });
        if busy {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs the loop and checks the histories; the report is also written to
/// `<dir>/report.json`.
pub async fn run(args: RunArgs) -> Result<(Report, RunFigures), ChaosError> {
    let started = Instant::now();
    let bin = match &args.ferry_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| ChaosError::io("current exe", e))?,
    };
    let dir = &args.dir;
    for sub in ["data", "history", "logs"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| ChaosError::io(&p, e))?;
        }
        std::fs::create_dir_all(&p).map_err(|e| ChaosError::io(&p, e))?;
    }
    let (history_dir, logs) = (dir.join("history"), dir.join("logs"));
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    let admin = AdminClient::new(http.clone()).with_timeout(Duration::from_secs(10));
    let s = |v: &str| v.to_string();
    let mut broker = Proc::new(
        "broker",
        vec![
            s("serve"),
            s("--data-dir"),
            dir.join("data").display().to_string(),
            s("--grpc-listen"),
            grpc.clone(),
            s("--http-listen"),
            http.clone(),
            // Check-backs within seconds, few of them: late ends meet a
            // check, silent transactions are discarded during the run.
            s("--tx-check-after-ms"),
            s("1000"),
            s("--tx-check-interval-ms"),
            s("1000"),
            s("--tx-max-checks"),
            s("3"),
        ],
        &logs,
    );
    broker.start(&bin)?;
    wait_ready(&admin, &mut broker).await?;
    admin
        .put(
            &format!(
                "/v1/groups/{}/policy",
                ferry_admin::segment(Kind::Fifo.group())
            ),
            json!({"fifo": true}),
        )
        .await?;

    let worker = |role: &str, kind: Kind, drain: bool| {
        let mut a = vec![
            s("chaos"),
            s("worker"),
            s("--role"),
            s(role),
            s("--kind"),
            s(kind.name()),
            s("--id"),
            s("1"),
            s("--endpoint"),
            grpc.clone(),
            s("--history"),
            history_dir.display().to_string(),
            s("--rate"),
            args.rate.to_string(),
        ];
        if drain {
            a.push(s("--drain"));
        }
        Proc::new(
            &format!(
                "{role}-{}{}",
                kind.name(),
                if drain { "-drain" } else { "" }
            ),
            a,
            &logs,
        )
    };
    let mut consumers: Vec<Proc> = Kind::ALL
        .iter()
        .map(|k| worker("consumer", *k, false))
        .collect();
    let mut producers: Vec<Proc> = Kind::ALL
        .iter()
        .map(|k| worker("producer", *k, false))
        .collect();
    for p in consumers.iter_mut().chain(producers.iter_mut()) {
        p.start(&bin)?;
    }

    let mut rng = fastrand::Rng::with_seed(args.seed);
    let mut figures = RunFigures {
        cycles: args.cycles,
        ..RunFigures::default()
    };
    for cycle in 0..args.cycles {
        let gap = args.min_gap_ms + rng.u64(..args.max_gap_ms.saturating_sub(args.min_gap_ms) + 1);
        tokio::time::sleep(Duration::from_millis(gap)).await;
        for p in consumers.iter_mut().chain(producers.iter_mut()) {
            if let Some(why) = p.exited() {
                return Err(ChaosError::Failed(why));
            }
        }
        if rng.u64(..100) < args.broker_share {
            broker.kill();
            figures.broker_kills += 1;
            broker.start(&bin)?;
            wait_ready(&admin, &mut broker).await?;
            recovery_figures(&admin, &mut figures).await?;
            eprintln!("cycle {}: broker killed and restarted", cycle + 1);
        } else {
            let n = (rng.u64(..(consumers.len() + producers.len()) as u64)) as usize;
            let victim = if n < consumers.len() {
                &mut consumers[n]
            } else {
                &mut producers[n - consumers.len()]
            };
            victim.kill();
            figures.worker_kills += 1;
            victim.start(&bin)?;
            eprintln!("cycle {}: {} killed and restarted", cycle + 1, victim.name);
        }
    }

    // Drain: the producers stop (killed once more: their last operations
    // are as open as any); a transactional producer in drain mode ends
    // what its history left open and answers the remaining check-backs.
    for p in producers.iter_mut() {
        p.kill();
    }
    let mut finisher: Vec<Proc> = vec![worker("producer", Kind::Fifo, true)];
    finisher.push(worker("producer", Kind::Tx, true));
    for p in finisher.iter_mut() {
        p.start(&bin)?;
    }
    let drain_start = Instant::now();
    let limit = Duration::from_secs(args.drain_limit_secs);
    loop {
        if drained(&admin).await? {
            break;
        }
        if drain_start.elapsed() > limit {
            return Err(ChaosError::Failed(format!(
                "not drained within {limit:?}: {} / groups still lagging; see {}",
                admin.get("/v1/transactions").await.unwrap_or(Value::Null),
                dir.display()
            )));
        }
        for p in consumers.iter_mut().chain(finisher.iter_mut()) {
            if let Some(why) = p.exited() {
                if !p.name.contains("drain") || p.name.contains("tx") {
                    return Err(ChaosError::Failed(why));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The consumers' last acks are answered before the broker's counts
    // show them; let their history lines land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    figures.drain_seconds = drain_start.elapsed().as_secs_f64();
    let tx = admin.get("/v1/transactions").await?;
    let discarded: std::collections::HashSet<String> = tx["recently_discarded"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["message_id"].as_str().map(String::from))
        .collect();
    for kind in Kind::ALL {
        let g = admin
            .get(&format!(
                "/v1/groups/{}",
                ferry_admin::segment(kind.group())
            ))
            .await?;
        figures.dead_letters += g["dead_letters"].as_u64().unwrap_or(0);
    }
    for p in consumers.iter_mut().chain(finisher.iter_mut()) {
        p.kill();
    }
    broker.kill();

    let (files, torn) =
        history::read_dir(&history_dir).map_err(|e| ChaosError::io(&history_dir, e))?;
    let mut report = checker::check(&files, torn);
    figures.tx_silent_discarded = checker::silent_discarded(&files, &discarded);
    if figures.dropped_ranges > 0 {
        report
            .violations_by_kind
            .insert("recovery_dropped_data".into(), figures.dropped_ranges);
    }
    figures.seconds = started.elapsed().as_secs_f64();
    let out = dir.join("report.json");
    let text = serde_json::to_string_pretty(&json!({"run": figures, "check": report}))
        .expect("report serialises");
    std::fs::write(&out, text).map_err(|e| ChaosError::io(&out, e))?;
    Ok((report, figures))
}
