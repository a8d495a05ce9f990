//! `ferry dlq list|redrive`: a group's dead letters, and sending them back.

use clap::{ArgGroup, Args, Subcommand};
use ferry_admin::{segment, AdminClient};
use serde_json::{json, Value};

use super::output::{json, list, table, text, time_ms, Progress};
use super::{fail, CliResult, Target};

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List a group's dead letters: where each came from and after how many attempts
    List {
        group: String,
        /// Most dead letters shown
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send dead letters back to their topic, for this group only, with attempts starting over
    #[command(group(ArgGroup::new("which").required(true).args(["message_id", "offset", "all"])))]
    Redrive {
        group: String,
        /// The dead letter with this message id
        #[arg(long)]
        message_id: Option<String>,
        /// The dead letter at this offset of %DLQ%<group>
        #[arg(long)]
        offset: Option<u64>,
        /// Every dead letter of the group not re-driven before
        #[arg(long)]
        all: bool,
        /// With --all or --message-id: also letters already re-driven once
        /// (their message may have been handled since)
        #[arg(long)]
        again: bool,
    },
}

/// Dead letters fetched per listing call.
const PAGE: usize = 500;

/// Every dead letter of `group`, up to `max`, following `next_from`.
async fn fetch(
    admin: &AdminClient,
    group: &str,
    max: usize,
) -> Result<Vec<Value>, Box<dyn std::error::Error + Send + Sync>> {
    let mut out = Vec::new();
    let mut from = 0u64;
    while out.len() < max {
        let page = PAGE.min(max - out.len());
        let v = admin
            .get(&format!(
                "/v1/groups/{}/dead-letters?from={from}&limit={page}",
                segment(group)
            ))
            .await?;
        out.extend(list(&v, "dead_letters").iter().cloned());
        match v.get("next_from").and_then(Value::as_u64) {
            Some(n) if n > from => from = n,
            _ => break,
        }
    }
    Ok(out)
}

pub async fn run(args: DlqArgs) -> CliResult {
    let t = &args.target;
    let admin = t.admin();
    match args.command {
        DlqCommand::List { group, limit } => {
            if limit == 0 {
                return Err(fail("--limit must be at least 1"));
            }
            let letters = fetch(&admin, &group, limit).await?;
            if t.json {
                return json(&json!({"group": group, "dead_letters": letters}));
            }
            let rows: Vec<Vec<String>> = letters
                .iter()
                .map(|d| {
                    vec![
                        text(d, "dlq_queue_offset"),
                        text(d, "message_id"),
                        text(d, "topic"),
                        format!("{}/{}", text(d, "queue_id"), text(d, "queue_offset")),
                        text(d, "attempts"),
                        text(d, "tag"),
                        time_ms(d.get("stored_ms").and_then(Value::as_i64).unwrap_or(0)),
                        time_ms(d.get("redriven_at_ms").and_then(Value::as_i64).unwrap_or(0)),
                    ]
                })
                .collect();
            table(
                &[
                    "DLQ_OFFSET",
                    "MESSAGE_ID",
                    "TOPIC",
                    "QUEUE/OFFSET",
                    "ATTEMPTS",
                    "TAG",
                    "STORED",
                    "REDRIVEN",
                ],
                &rows,
            );
            println!("{} dead letter(s) of group {group}", rows.len());
        }
        DlqCommand::Redrive {
            group,
            message_id,
            offset,
            // Exactly one of the three is set (the argument group says so):
            // neither an offset nor an id means --all.
            all: _,
            again,
        } => {
            // Bulk selections skip letters already sent back once, unless
            // asked: re-driving those again would deliver a message that
            // may have been handled after its first re-drive.
            let fresh = |d: &&Value| again || d.get("redriven_at_ms").is_none_or(Value::is_null);
            // Only a message's newest letter can be sent back (the broker
            // refuses older ones): a bulk selection takes that one, if fresh.
            let dlq_offset = |d: &Value| d.get("dlq_queue_offset").and_then(Value::as_u64);
            let newest = |rows: Vec<Value>| -> Vec<Value> {
                let mut by_id: std::collections::BTreeMap<String, Value> = Default::default();
                for d in rows {
                    let id = text(&d, "message_id");
                    if by_id
                        .get(&id)
                        .is_none_or(|old| dlq_offset(old) < dlq_offset(&d))
                    {
                        by_id.insert(id, d);
                    }
                }
                let mut rows: Vec<Value> = by_id.into_values().collect();
                rows.sort_by_key(dlq_offset);
                rows
            };
            let offsets: Vec<u64> = match (offset, message_id) {
                (Some(o), _) => vec![o],
                (None, Some(id)) => {
                    let found: Vec<u64> = newest(fetch(&admin, &group, usize::MAX).await?)
                        .iter()
                        .filter(|d| {
                            d.get("message_id").and_then(Value::as_str) == Some(id.as_str())
                        })
                        .filter(fresh)
                        .filter_map(dlq_offset)
                        .collect();
                    if found.is_empty() {
                        return Err(fail(format!(
                            "group {group} has no dead letter with message id {id}{}",
                            if again {
                                ""
                            } else {
                                " that was not re-driven already (--again to include those)"
                            }
                        )));
                    }
                    found
                }
                (None, None) => newest(fetch(&admin, &group, usize::MAX).await?)
                    .iter()
                    .filter(fresh)
                    .filter_map(dlq_offset)
                    .collect(),
            };
            let total = offsets.len() as u64;
            let mut progress = Progress::new("redriven", t.json);
            let mut done = Vec::new();
            let mut failed = Vec::new();
            for o in offsets {
                let path = format!("/v1/groups/{}/dead-letters/{o}/redrive", segment(&group));
                match admin.post(&path, None).await {
                    Ok(v) => done.push(v),
                    Err(e) => failed.push(json!({"dlq_offset": o, "error": e.to_string()})),
                }
                progress.tick(done.len() as u64 + failed.len() as u64, Some(total));
            }
            progress.finish();
            if t.json {
                json(&json!({"group": group, "redriven": done, "failed": failed}))?;
            } else {
                println!(
                    "{} of {total} dead letter(s) of group {group} sent back",
                    done.len()
                );
                for f in &failed {
                    eprintln!(
                        "ferry: dead letter {}: {}",
                        text(f, "dlq_offset"),
                        text(f, "error")
                    );
                }
            }
            if !failed.is_empty() {
                return Err(fail(format!("{} re-drive(s) failed", failed.len())));
            }
        }
    }
    Ok(())
}
