//! `ferry topic create|list|describe|delete`.

use clap::{Args, Subcommand};
use ferry_admin::segment;
use serde_json::{json, Value};

use super::output::{json, list, num, show, table, text};
use super::{CliResult, Target};

#[derive(Debug, Args)]
pub struct TopicArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic (creating an existing one changes nothing)
    Create {
        name: String,
        /// Queues [default: the broker's --default-queues]
        #[arg(long)]
        queues: Option<u32>,
        /// Message types it accepts, comma-separated: normal, fifo, delay, transaction [default: all]
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
    },
    /// List topics with their queues and message counts
    List,
    /// Show one topic: accepted types, per-queue offsets, consumer groups
    Describe { name: String },
    /// Delete a topic and everything stored for it (messages, group progress, pending timers and transactions)
    Delete { name: String },
}

pub async fn run(args: TopicArgs) -> CliResult {
    let t = &args.target;
    let admin = t.admin();
    match args.command {
        TopicCommand::Create {
            name,
            queues,
            types,
        } => {
            let mut body = json!({});
            if let Some(q) = queues {
                body["queues"] = json!(q);
            }
            if !types.is_empty() {
                body["message_types"] = json!(types
                    .iter()
                    .map(|t| t.trim().to_uppercase())
                    .collect::<Vec<_>>());
            }
            let v = admin
                .post(&format!("/v1/topics/{}", segment(&name)), Some(body))
                .await?;
            if t.json {
                json(&v)?;
            } else if v.get("created").and_then(Value::as_bool) == Some(true) {
                println!("topic {name} created");
            } else {
                // An existing topic keeps its queue count; --types replaces
                // what it accepts.
                println!(
                    "topic {name} already exists: {} queues, accepts {}",
                    text(&v, "queues"),
                    text(&v, "message_types")
                );
            }
        }
        TopicCommand::List => {
            let v = admin.get("/v1/topics").await?;
            if t.json {
                return json(&v);
            }
            let rows: Vec<Vec<String>> = list(&v, "topics")
                .iter()
                .map(|topic| {
                    let queues = list(topic, "queues");
                    let stored: u64 = queues.iter().map(|q| num(q, "max_offset")).sum();
                    let retained: u64 = queues
                        .iter()
                        .map(|q| {
                            num(q, "max_offset") - num(q, "min_offset").min(num(q, "max_offset"))
                        })
                        .sum();
                    vec![
                        text(topic, "name"),
                        queues.len().to_string(),
                        text(topic, "message_types"),
                        stored.to_string(),
                        retained.to_string(),
                    ]
                })
                .collect();
            table(&["TOPIC", "QUEUES", "TYPES", "MESSAGES", "RETAINED"], &rows);
        }
        TopicCommand::Describe { name } => {
            let v = admin.get(&format!("/v1/topics/{}", segment(&name))).await?;
            if t.json {
                return json(&v);
            }
            println!("topic:   {}", text(&v, "name"));
            println!("types:   {}", text(&v, "message_types"));
            println!("groups:  {}", text(&v, "groups"));
            println!();
            let rows: Vec<Vec<String>> = list(&v, "queues")
                .iter()
                .map(|q| vec![text(q, "id"), text(q, "min_offset"), text(q, "max_offset")])
                .collect();
            table(&["QUEUE", "MIN_OFFSET", "MAX_OFFSET"], &rows);
        }
        TopicCommand::Delete { name } => {
            let v = admin
                .delete(&format!("/v1/topics/{}", segment(&name)))
                .await?;
            if t.json {
                json(&v)?;
            } else {
                println!(
                    "topic {} deleted",
                    show(v.get("name").unwrap_or(&json!(name)))
                );
            }
        }
    }
    Ok(())
}
