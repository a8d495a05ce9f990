use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use ferry_record::{MessageRecord, Payload, Record};
use ferry_store::{FlushMode, Log, LogConfig};
use hdrhistogram::Histogram;

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// Records to append in total.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Body size of each record, bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Concurrent appenders (each waits for durability before its next append).
    #[arg(long, default_value_t = 256)]
    concurrency: u64,
    /// Directory for the log (default: a temporary directory on the same disk as the current one).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Acknowledge after write only (async mode), for comparison.
    #[arg(long)]
    no_fsync: bool,
}

pub fn run(a: AppendArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tmp = tempfile::tempdir_in(a.dir.clone().unwrap_or_else(|| ".".into()))?;
    let mut config = LogConfig::new(tmp.path());
    config.flush = if a.no_fsync {
        FlushMode::Async
    } else {
        FlushMode::Sync
    };
    let (log, _) = Log::open(config, &mut |_, _, _| {})?;
    let log = Arc::new(log);
    let body = Bytes::from(vec![7u8; a.size]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let per_task = a.messages / a.concurrency.max(1);
    let start = Instant::now();
    let hist = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..a.concurrency {
            let log = log.clone();
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                for i in 0..per_task {
                    let rec = Record {
                        term: 0,
                        timestamp_ms: 0,
                        payload: Payload::Message(MessageRecord {
                            topic: "bench".into(),
                            queue_id: (t % 8) as u32,
                            queue_offset: i,
                            message_id: format!("{t:04}-{i:010}"),
                            message_type: 1,
                            body_encoding: 1,
                            tag: None,
                            keys: vec![],
                            message_group: None,
                            delivery_timestamp_ms: None,
                            check_after_ms: None,
                            born_timestamp_ms: 0,
                            born_host: String::new(),
                            properties: vec![],
                            body: body.clone(),
                        }),
                    };
                    let sent = Instant::now();
                    let (o, l) = log.append(&rec).expect("append");
                    log.wait_committed(o + l as u64).await.expect("commit");
                    let _ = h.record(sent.elapsed().as_micros() as u64);
                }
                h
            }));
        }
        let mut all = Histogram::<u64>::new(3).expect("histogram");
        for t in tasks {
            all.add(t.await.expect("task")).expect("merge");
        }
        all
    });
    let secs = start.elapsed().as_secs_f64();
    let n = per_task * a.concurrency;
    let bytes = log.progress().committed;
    println!(
        "append: {n} records of {} B body, concurrency {}, fsync {}",
        a.size,
        a.concurrency,
        if a.no_fsync {
            "off (async)"
        } else {
            "per group commit"
        }
    );
    println!(
        "append: {:.0} records/s, {:.1} MB/s of log, {:.2} s",
        n as f64 / secs,
        bytes as f64 / secs / 1e6,
        secs
    );
    println!("{}", crate::percentiles("append", &hist));
    Ok(())
}
