//! File damage: truncations and single-bit flips in every kind of file
//! the broker writes, each in a copy of a cleanly closed data directory.
//!
//! For every round the damaged copy is opened by a real `ferry serve` and
//! read back by a fresh consumer group. The rules:
//!
//! * nothing damaged is ever served: every delivered body is exactly the
//!   one sent under its key;
//! * every damage is detected — the broker reports it (`/v1/recovery`:
//!   dropped ranges, damaged segments, a torn tail, or "not a clean
//!   shutdown"; for metadata files, the error it logs) or refuses to start
//!   naming the file;
//! * a message that is not served any more is covered by such a report
//!   (no silent loss);
//! * undamaged, the clean copy is served whole and reported clean.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_admin::AdminClient;
use ferry_client::{ClientConfig, FilterExpression, Message, Producer, SimpleConsumer};
use serde::Serialize;
use serde_json::json;

use crate::history::{body_for, key_of};
use crate::proc::{free_port, Proc};
use crate::ChaosError;

const TOPIC: &str = "chaos-damage";
/// The group whose policy file is written (so `meta/groups.json` exists).
const POLICY_GROUP: &str = "chaos-damage-fifo";

#[derive(Debug, Clone, clap::Args)]
pub struct DamageArgs {
    /// Working directory (emptied first).
    #[arg(long, default_value = "chaos-damage")]
    pub dir: PathBuf,
    /// Damaged copies opened.
    #[arg(long, default_value_t = 24)]
    pub rounds: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Messages stored before the damage (they fill about three 1 MiB
    /// segments at 6000).
    #[arg(long, default_value_t = 6000)]
    pub messages: u32,
    /// The `ferry` binary (default: this one).
    #[arg(long)]
    pub ferry_bin: Option<PathBuf>,
}

/// One round: what was done to which file and what came of it.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub file: String,
    /// segment, segment-header, clean-mark, topics, groups.
    pub file_kind: &'static str,
    /// "truncate to N" or "flip bit B of byte N".
    pub damage: String,
    pub started: bool,
    pub detected: bool,
    pub how: String,
    pub served: u64,
    /// Bodies served that were not the ones sent. Must be 0.
    pub corrupt_served: u64,
    /// Stored messages not served.
    pub missing: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub messages: u32,
    pub clean_reopen_served: u64,
    pub clean_reopen_reported_clean: bool,
    pub rounds: Vec<Round>,
}

impl Outcome {
    fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.clean_reopen_served != u64::from(self.messages) || !self.clean_reopen_reported_clean
        {
            out.push(format!(
                "clean reopen: {} of {} served, reported clean: {}",
                self.clean_reopen_served, self.messages, self.clean_reopen_reported_clean
            ));
        }
        for r in &self.rounds {
            // Undetected damage includes any silent loss (missing messages).
            if !r.detected || r.corrupt_served > 0 {
                out.push(format!("{} ({}): {r:?}", r.file, r.damage));
            }
        }
        out
    }
}

fn broker_args(data: &Path, grpc: &str, http: &str) -> Vec<String> {
    vec![
        "serve".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--grpc-listen".into(),
        grpc.into(),
        "--http-listen".into(),
        http.into(),
        "--segment-mib".into(),
        "1".into(),
    ]
}

/// A broker on `data`; `None` when it exited instead of becoming ready.
async fn start(
    bin: &Path,
    data: &Path,
    logs: &Path,
    name: &str,
) -> Result<(Proc, Option<(String, AdminClient)>), ChaosError> {
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    let mut p = Proc::new(name, broker_args(data, &grpc, &http), logs);
    p.start(bin)?;
    let admin = AdminClient::new(http).with_timeout(Duration::from_secs(10));
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if admin
            .get_text("/readyz")
            .await
            .is_ok_and(|t| t.starts_with("ready"))
        {
            return Ok((p, Some((grpc, admin))));
        }
        if p.exited().is_some() {
            return Ok((p, None));
        }
        if Instant::now() > until {
            return Err(ChaosError::Failed(format!(
                "broker not ready within 60 s; see {}",
                p.log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads everything with a new consumer group: (keys served, corrupt
/// bodies).
async fn read_all(
    grpc: &str,
    group: &str,
    expected: u32,
) -> Result<(HashSet<String>, u64), ChaosError> {
    let consumer = SimpleConsumer::builder(ClientConfig::new(grpc.to_string()), group)
        .subscribe(TOPIC, FilterExpression::all())
        .await_duration(Duration::from_millis(500))
        .start()
        .await?;
    let mut keys = HashSet::new();
    let mut corrupt = 0;
    let mut empty = 0;
    while empty < 3 && keys.len() < expected as usize {
        let batch = consumer.receive(256, Duration::from_secs(60)).await?;
        if batch.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in &batch {
            match key_of(&m.body) {
                Some((k, true)) => {
                    keys.insert(k);
                }
                _ => corrupt += 1,
            }
        }
        consumer.ack_all(&batch).await?;
    }
    consumer.shutdown().await;
    Ok((keys, corrupt))
}

/// What the broker reported about the damaged copy; empty when nothing.
async fn reported(admin: &AdminClient, log: &Path) -> Result<Vec<String>, ChaosError> {
    let r = admin.get("/v1/recovery").await?;
    let mut how = Vec::new();
    let dropped = r["dropped"].as_array().map_or(0, Vec::len);
    if dropped > 0 {
        how.push(format!("{dropped} dropped ranges"));
    }
    let damaged = r["damaged_segments"].as_array().map_or(0, Vec::len);
    if damaged > 0 {
        how.push(format!("{damaged} segments set aside"));
    }
    if r["truncated_bytes"].as_u64().unwrap_or(0) > 0 {
        how.push(format!("torn tail of {} bytes cut", r["truncated_bytes"]));
    }
    if r["clean_shutdown"] == json!(false) {
        how.push("not a clean shutdown".into());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if text.contains("metadata unreadable") || text.contains("is damaged") {
        how.push("metadata damage logged".into());
    }
    Ok(how)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), ChaosError> {
    std::fs::create_dir_all(to).map_err(|e| ChaosError::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| ChaosError::io(from, e))? {
        let entry = entry.map_err(|e| ChaosError::io(from, e))?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(|e| ChaosError::io(&target, e))?;
        }
    }
    Ok(())
}

/// The files a damage may hit, by kind.
fn targets(data: &Path) -> Result<Vec<(PathBuf, &'static str)>, ChaosError> {
    let mut out = Vec::new();
    let log = data.join("log");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&log)
        .map_err(|e| ChaosError::io(&log, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    for s in segments {
        out.push((s.clone(), "segment"));
        out.push((s, "segment-header"));
    }
    out.push((log.join("CLEAN"), "clean-mark"));
    out.push((data.join("meta/topics.json"), "topics"));
    out.push((data.join("meta/groups.json"), "groups"));
    Ok(out)
}

/// Damages one file of `data`: a truncation or a bit flip (within the
/// 64-byte header for "segment-header").
fn damage(path: &Path, file_kind: &str, rng: &mut fastrand::Rng) -> Result<String, ChaosError> {
    let mut bytes = std::fs::read(path).map_err(|e| ChaosError::io(path, e))?;
    if bytes.is_empty() {
        return Err(ChaosError::Failed(format!("{} is empty", path.display())));
    }
    let span = if file_kind == "segment-header" {
        64.min(bytes.len())
    } else {
        bytes.len()
    };
    let at = rng.u64(..span as u64) as usize;
    let text = if file_kind != "segment-header" && rng.u64(..2) == 0 {
        bytes.truncate(at);
        format!("truncate to {at} of {span} bytes")
    } else {
        let bit = rng.u64(..8) as u8;
        bytes[at] ^= 1 << bit;
        format!("flip bit {bit} of byte {at}")
    };
    std::fs::write(path, &bytes).map_err(|e| ChaosError::io(path, e))?;
    Ok(text)
}

pub async fn run(args: DamageArgs) -> Result<Outcome, ChaosError> {
    let bin = match &args.ferry_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| ChaosError::io("current exe", e))?,
    };
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir).map_err(|e| ChaosError::io(&args.dir, e))?;
    }
    let logs = args.dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| ChaosError::io(&logs, e))?;
    let base = args.dir.join("base");
    let mut outcome = Outcome {
        messages: args.messages,
        ..Outcome::default()
    };

    // The base copy: messages stored, a group policy saved, half of the
    // messages consumed (acks in the log too), closed cleanly.
    let (mut p, ready) = start(&bin, &base, &logs, "base").await?;
    let (grpc, admin) =
        ready.ok_or_else(|| ChaosError::Failed("base broker did not start".into()))?;
    admin
        .put(
            &format!("/v1/groups/{POLICY_GROUP}/policy"),
            json!({"fifo": true}),
        )
        .await?;
    let producer = Producer::builder(ClientConfig::new(grpc.clone()))
        .topics([TOPIC])
        .start()
        .await?;
    let keys: Vec<String> = (0..args.messages).map(|i| format!("damage-{i}")).collect();
    for chunk in keys.chunks(32) {
        let batch = chunk
            .iter()
            .map(|k| Message::new(TOPIC, body_for(k)).with_key(k.clone()))
            .collect();
        producer.send_batch(batch).await?;
    }
    producer.shutdown().await;
    read_all(&grpc, "chaos-damage-half", args.messages / 2).await?;
    p.stop()?;

    // Undamaged: everything served, reported clean.
    let clean = args.dir.join("clean");
    copy_dir(&base, &clean)?;
    let (mut p, ready) = start(&bin, &clean, &logs, "clean").await?;
    let (grpc, admin) =
        ready.ok_or_else(|| ChaosError::Failed("clean copy did not start".into()))?;
    outcome.clean_reopen_reported_clean =
        admin.get("/v1/recovery").await?["clean_shutdown"] == json!(true);
    let (served, corrupt) = read_all(&grpc, "chaos-damage-all", args.messages).await?;
    outcome.clean_reopen_served = served.len() as u64 - corrupt.min(served.len() as u64);
    p.stop()?;
    std::fs::remove_dir_all(&clean).map_err(|e| ChaosError::io(&clean, e))?;

    let files = targets(&base)?;
    let mut rng = fastrand::Rng::with_seed(args.seed);
    for round in 0..args.rounds {
        // Every kind in turn, a random file of the kind.
        let kinds = [
            "segment",
            "segment-header",
            "clean-mark",
            "topics",
            "groups",
        ];
        let kind = kinds[round as usize % kinds.len()];
        let of_kind: Vec<&(PathBuf, &str)> = files.iter().filter(|(_, k)| *k == kind).collect();
        let (file, _) = of_kind[rng.u64(..of_kind.len() as u64) as usize];
        let rel = file.strip_prefix(&base).unwrap_or(file).to_path_buf();
        let copy = args.dir.join(format!("round-{round}"));
        copy_dir(&base, &copy)?;
        let what = damage(&copy.join(&rel), kind, &mut rng)?;
        let name = format!("round-{round}");
        let (mut p, ready) = start(&bin, &copy, &logs, &name).await?;
        let mut r = Round {
            file: rel.display().to_string(),
            file_kind: kind,
            damage: what,
            started: ready.is_some(),
            detected: false,
            how: String::new(),
            served: 0,
            corrupt_served: 0,
            missing: 0,
        };
        match ready {
            None => {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let last = log.lines().last().unwrap_or_default().to_string();
                r.detected = log.contains(&*rel.file_name().unwrap_or_default().to_string_lossy());
                r.how = format!("refused to start: {last}");
                r.missing = u64::from(args.messages);
            }
            Some((grpc, admin)) => {
                let how = reported(&admin, &p.log).await?;
                let (served, corrupt) =
                    read_all(&grpc, &format!("chaos-damage-check-{round}"), args.messages).await?;
                r.detected = !how.is_empty();
                r.how = how.join(", ");
                r.served = served.len() as u64;
                r.corrupt_served = corrupt;
                r.missing = u64::from(args.messages).saturating_sub(served.len() as u64);
                p.stop()?;
            }
        }
        eprintln!(
            "round {round}: {} {}: {}{}",
            r.file,
            r.damage,
            if r.detected {
                "detected"
            } else {
                "NOT DETECTED"
            },
            if r.how.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.how)
            }
        );
        outcome.rounds.push(r);
        std::fs::remove_dir_all(&copy).map_err(|e| ChaosError::io(&copy, e))?;
    }
    let out = args.dir.join("report.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&outcome).expect("serialises"),
    )
    .map_err(|e| ChaosError::io(&out, e))?;
    Ok(outcome)
}

/// Prints the figures per file kind; true when every damage was detected
/// and nothing damaged was served.
pub fn print(o: &Outcome) -> bool {
    println!(
        "clean reopen: {} of {} messages served, reported clean: {}",
        o.clean_reopen_served, o.messages, o.clean_reopen_reported_clean
    );
    for kind in [
        "segment",
        "segment-header",
        "clean-mark",
        "topics",
        "groups",
    ] {
        let rs: Vec<&Round> = o.rounds.iter().filter(|r| r.file_kind == kind).collect();
        if rs.is_empty() {
            continue;
        }
        println!(
            "{kind}: {} injected, {} detected, {} refused to start, corrupt bodies served {}, messages missing {}",
            rs.len(),
            rs.iter().filter(|r| r.detected).count(),
            rs.iter().filter(|r| !r.started).count(),
            rs.iter().map(|r| r.corrupt_served).sum::<u64>(),
            rs.iter().filter(|r| r.started).map(|r| r.missing).sum::<u64>(),
        );
    }
    let failures = o.failures();
    for f in &failures {
        println!("  FAILED {f}");
    }
    failures.is_empty()
}
