//! `ferry send`: one message from an argument or a file, or one message
//! per line of stdin.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use ferry_client::{Message, Producer, SendReceipt};
use serde_json::json;

use super::output::{json, Progress};
use super::{fail, CliResult, Target};

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    target: Target,
    /// Topic to send to
    #[arg(long, short)]
    topic: String,
    /// Message body; without it (and without --file) every line of stdin is one message
    body: Option<String>,
    /// Read one message body from this file
    #[arg(long, conflicts_with = "body")]
    file: Option<PathBuf>,
    /// Tag
    #[arg(long)]
    tag: Option<String>,
    /// Key (repeat for several)
    #[arg(long = "key")]
    keys: Vec<String>,
    /// User property as key=value (repeat for several)
    #[arg(long = "property", value_parser = parse_property)]
    properties: Vec<(String, String)>,
    /// Message group: a FIFO message
    #[arg(long)]
    group: Option<String>,
    /// Deliver no sooner than this from now, e.g. 30s or 5m: a delayed message
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "group")]
    delay: Option<Duration>,
    /// Lines sent per call when reading stdin (1 to 1024)
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected key=value")),
    }
}

impl SendArgs {
    fn message(&self, body: Bytes) -> Message {
        let mut m = Message::new(self.topic.clone(), body).with_keys(self.keys.clone());
        if let Some(t) = &self.tag {
            m = m.with_tag(t.clone());
        }
        for (k, v) in &self.properties {
            m = m.with_property(k.clone(), v.clone());
        }
        if let Some(g) = &self.group {
            m = m.with_message_group(g.clone());
        }
        if let Some(d) = self.delay {
            m = m.with_delay(d);
        }
        m
    }
}

fn receipt_json(r: &SendReceipt) -> serde_json::Value {
    json!({
        "message_id": r.message_id,
        "queue_id": r.queue_id,
        "offset": r.offset,
        "recall_handle": (!r.recall_handle.is_empty()).then_some(&r.recall_handle),
    })
}

pub async fn run(args: SendArgs) -> CliResult {
    if args.batch == 0 || args.batch > ferry_client::MAX_BATCH {
        return Err(fail(format!(
            "--batch must be 1 to {}, not {}",
            ferry_client::MAX_BATCH,
            args.batch
        )));
    }
    let single = match (&args.body, &args.file) {
        (Some(b), _) => Some(Bytes::from(b.clone())),
        (None, Some(path)) => {
            Some(Bytes::from(std::fs::read(path).map_err(|e| {
                fail(format!("cannot read {}: {e}", path.display()))
            })?))
        }
        (None, None) => None,
    };
    let producer = Producer::builder(args.target.client())
        .topics([args.topic.clone()])
        .start()
        .await?;
    let result = match single {
        Some(body) => send_one(&producer, &args, body).await,
        None => send_lines(&producer, &args).await,
    };
    producer.shutdown().await;
    result
}

async fn send_one(producer: &Producer, args: &SendArgs, body: Bytes) -> CliResult {
    let r = producer.send(args.message(body)).await?;
    if args.target.json {
        json(&receipt_json(&r))?;
    } else {
        println!(
            "sent {} to {} (queue {}, offset {})",
            r.message_id, args.topic, r.queue_id, r.offset
        );
        if !r.recall_handle.is_empty() {
            println!("recall handle: {}", r.recall_handle);
        }
    }
    Ok(())
}

async fn send_lines(producer: &Producer, args: &SendArgs) -> CliResult {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut progress = Progress::new("sent", args.target.json);
    let mut sent = 0u64;
    let mut receipts = Vec::new();
    loop {
        let mut batch = Vec::with_capacity(args.batch);
        for line in lines.by_ref() {
            let line = line.map_err(|e| fail(format!("reading stdin: {e}")))?;
            if line.is_empty() {
                continue;
            }
            batch.push(args.message(Bytes::from(line)));
            if batch.len() == args.batch {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        let n = batch.len() as u64;
        let r = producer.send_batch(batch).await.map_err(|e| {
            fail(format!(
                "after {sent} messages sent, a batch of {n} failed: {e}"
            ))
        })?;
        sent += n;
        if args.target.json {
            receipts.extend(r.iter().map(receipt_json));
        }
        progress.tick(sent, None);
    }
    progress.finish();
    if args.target.json {
        json(&json!({"sent": sent, "messages": receipts}))?;
    } else {
        println!("sent {sent} messages to {}", args.topic);
    }
    Ok(())
}
