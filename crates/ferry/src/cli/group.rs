//! `ferry group list|describe`.

use clap::{Args, Subcommand};
use ferry_admin::segment;
use serde_json::Value;

use super::output::{json, list, table, text};
use super::{CliResult, Target};

#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// List consumer groups with their total lag and in-flight messages
    List,
    /// Show one group: per queue consumed offset, lag, in-flight; FIFO; retry policy
    Describe { group: String },
}

pub async fn run(args: GroupArgs) -> CliResult {
    let t = &args.target;
    let admin = t.admin();
    match args.command {
        GroupCommand::List => {
            let v = admin.get("/v1/groups").await?;
            if t.json {
                return json(&v);
            }
            let rows: Vec<Vec<String>> = list(&v, "summary")
                .iter()
                .map(|g| {
                    vec![
                        text(g, "group"),
                        text(g, "fifo"),
                        text(g, "max_delivery_attempts"),
                        text(g, "queues"),
                        text(g, "lag"),
                        text(g, "inflight"),
                        text(g, "dead_letters"),
                    ]
                })
                .collect();
            table(
                &[
                    "GROUP",
                    "FIFO",
                    "MAX_ATTEMPTS",
                    "QUEUES",
                    "LAG",
                    "IN_FLIGHT",
                    "DEAD_LETTERS",
                ],
                &rows,
            );
        }
        GroupCommand::Describe { group } => {
            let v = admin
                .get(&format!("/v1/groups/{}", segment(&group)))
                .await?;
            if t.json {
                return json(&v);
            }
            let policy = v.get("policy").cloned().unwrap_or(Value::Null);
            let p = policy.get("policy").unwrap_or(&policy);
            let backoff: Vec<String> = list(p, "backoff_ms")
                .iter()
                .filter_map(Value::as_u64)
                .map(|ms| {
                    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
                })
                .collect();
            println!("group:         {}", text(&v, "group"));
            println!("fifo:          {}", text(&v, "fifo"));
            println!(
                "retry policy:  {} attempts, backoff {}{}",
                text(p, "max_delivery_attempts"),
                backoff.join(" "),
                if v.get("own_policy").and_then(Value::as_bool) == Some(true) {
                    " (own policy)"
                } else {
                    " (broker default)"
                }
            );
            println!("dead letters:  {}", text(&v, "dead_letters"));
            println!();
            let rows: Vec<Vec<String>> = list(&v, "queues")
                .iter()
                .map(|q| {
                    vec![
                        text(q, "topic"),
                        text(q, "queue_id"),
                        text(q, "consumed_offset"),
                        text(q, "max_offset"),
                        text(q, "lag"),
                        text(q, "inflight"),
                    ]
                })
                .collect();
            table(
                &[
                    "TOPIC",
                    "QUEUE",
                    "CONSUMED",
                    "MAX_OFFSET",
                    "LAG",
                    "IN_FLIGHT",
                ],
                &rows,
            );
        }
    }
    Ok(())
}
