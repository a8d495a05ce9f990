//! `ferry consume`: receive from a topic as a consumer group and print.

use std::io::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use clap::Args;
use ferry_client::{FilterExpression, ReceivedMessage, SimpleConsumer};
use serde_json::json;

use super::output::time_ms;
use super::{fail, CliResult, Target};

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    target: Target,
    /// Topic to read
    #[arg(long, short)]
    topic: String,
    /// Consumer group (its progress is shared with every consumer of the group)
    #[arg(long, short)]
    group: String,
    /// TAG filter: `*` or tags joined by `||`
    #[arg(long, default_value = "*", conflicts_with = "sql")]
    filter: String,
    /// SQL92 filter over user properties instead of a TAG filter
    #[arg(long)]
    sql: Option<String>,
    /// Stop after this many messages
    #[arg(long)]
    limit: Option<u64>,
    /// Keep waiting for new messages (until --limit or Ctrl-C)
    #[arg(long, short)]
    follow: bool,
    /// Do not acknowledge: messages are released at the end and delivered again (attempt + 1)
    #[arg(long)]
    peek: bool,
    /// How long one receive waits for messages
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// How long a received message stays invisible to other consumers
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    invisible: Duration,
    /// Bytes of each body printed (0: none)
    #[arg(long, default_value_t = 200)]
    body_bytes: usize,
}

fn body_text(m: &ReceivedMessage, max: usize) -> String {
    let b = &m.body[..m.body.len().min(max)];
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => format!("hex:{}", hex::encode(b)),
    }
}

fn ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn print(m: &ReceivedMessage, args: &ConsumeArgs) {
    let mut out = std::io::stdout().lock();
    if args.target.json {
        let v = json!({
            "message_id": m.message_id,
            "topic": m.topic,
            "tag": m.tag,
            "keys": m.keys,
            "properties": m.properties,
            "message_group": m.message_group,
            "delivery_attempt": m.delivery_attempt,
            "queue_id": m.queue_id,
            "queue_offset": m.queue_offset,
            "born_ms": ms(m.born_time),
            "stored_ms": m.store_time.map(ms),
            "body_size": m.body.len(),
            "body": body_text(m, args.body_bytes),
        });
        let _ = writeln!(out, "{v}");
    } else {
        let mut head = format!(
            "{}  {}  attempt {}",
            time_ms(m.store_time.map_or(0, ms)),
            m.message_id,
            m.delivery_attempt
        );
        if let Some(t) = &m.tag {
            head.push_str(&format!("  tag={t}"));
        }
        if !m.keys.is_empty() {
            head.push_str(&format!("  keys={}", m.keys.join(",")));
        }
        if let Some(g) = &m.message_group {
            head.push_str(&format!("  group={g}"));
        }
        for (k, v) in &m.properties {
            head.push_str(&format!("  {k}={v}"));
        }
        let _ = writeln!(out, "{head}");
        if args.body_bytes > 0 {
            let _ = writeln!(out, "  {}", body_text(m, args.body_bytes));
        }
    }
}

pub async fn run(args: ConsumeArgs) -> CliResult {
    if args.limit == Some(0) {
        return Err(fail("--limit must be at least 1"));
    }
    let filter = match &args.sql {
        Some(s) => FilterExpression::sql(s.clone()),
        None => FilterExpression::tag(args.filter.clone()),
    };
    let consumer = SimpleConsumer::builder(args.target.client(), args.group.clone())
        .subscribe(args.topic.clone(), filter)
        .await_duration(args.wait)
        .start()
        .await?;
    let result = consume(&consumer, &args).await;
    consumer.shutdown().await;
    let count = result?;
    if !args.target.json {
        eprintln!(
            "{count} message(s) {}",
            if args.peek {
                "peeked (not acknowledged)"
            } else {
                "consumed and acknowledged"
            }
        );
    }
    Ok(())
}

/// Returns the number of messages printed.
async fn consume(
    consumer: &SimpleConsumer,
    args: &ConsumeArgs,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let mut count = 0u64;
    let mut held: Vec<ReceivedMessage> = Vec::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let want = args.limit.map_or(32, |l| (l - count).min(32)) as usize;
        if want == 0 {
            break;
        }
        let got = tokio::select! {
            _ = &mut ctrl_c => break,
            r = consumer.receive(want, args.invisible) => r?,
        };
        if got.is_empty() && !args.follow {
            break;
        }
        for m in got {
            print(&m, args);
            count += 1;
            if args.peek {
                held.push(m);
            } else {
                consumer
                    .ack(&m)
                    .await
                    .map_err(|e| fail(format!("acknowledging {}: {e}", m.message_id)))?;
            }
        }
    }
    // Peeked messages go back at once rather than at their deadline.
    for mut m in held {
        if let Err(e) = consumer
            .change_invisible_duration(&mut m, Duration::ZERO)
            .await
        {
            eprintln!(
                "ferry: releasing {}: {e} (it returns after its invisible duration)",
                m.message_id
            );
        }
    }
    Ok(count)
}
