//! `ferry message get|find`: a message's headers, properties, body preview
//! and lifecycle (stored, committed or rolled back, deliveries, acked or
//! dead-lettered).

use clap::{Args, Subcommand};
use ferry_admin::segment;
use serde_json::Value;

use super::output::{json, list, show, table, text, time_ms};
use super::{fail, CliResult, Target};

#[derive(Debug, Args)]
pub struct MessageArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: MessageCommand,
}

#[derive(Debug, Subcommand)]
enum MessageCommand {
    /// Look a message up by its id
    Get { message_id: String },
    /// Find messages by key
    Find {
        #[arg(long)]
        key: String,
        /// Only this topic
        #[arg(long)]
        topic: Option<String>,
        /// Most messages shown (1 to 1000)
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

pub async fn run(args: MessageArgs) -> CliResult {
    let t = &args.target;
    let admin = t.admin();
    let v = match &args.command {
        MessageCommand::Get { message_id } => {
            admin
                .get(&format!("/v1/messages/{}", segment(message_id)))
                .await?
        }
        MessageCommand::Find { key, topic, limit } => {
            if *limit == 0 || *limit > 1000 {
                return Err(fail(format!("--limit must be 1 to 1000, not {limit}")));
            }
            let mut path = format!("/v1/messages?key={}&limit={limit}", segment(key));
            if let Some(topic) = topic {
                path.push_str(&format!("&topic={}", segment(topic)));
            }
            admin.get(&path).await?
        }
    };
    if t.json {
        return json(&v);
    }
    let messages = list(&v, "messages");
    if messages.is_empty() {
        println!("no message found");
        return Ok(());
    }
    if v.get("truncated").and_then(Value::as_bool) == Some(true) {
        eprintln!("more messages match than shown; raise --limit or narrow with --topic");
    }
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            println!("\n---\n");
        }
        print_message(m);
    }
    Ok(())
}

fn print_message(m: &Value) {
    let field = |label: &str, value: String| println!("{label:<12}{value}");
    field("message", text(m, "message_id"));
    field(
        "topic",
        format!("{} ({})", text(m, "topic"), text(m, "type")),
    );
    field("tag", text(m, "tag"));
    field("keys", text(m, "keys"));
    field("group", text(m, "message_group"));
    field(
        "born",
        format!(
            "{} on {}",
            time_ms(
                m.get("born_timestamp_ms")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            ),
            text(m, "born_host")
        ),
    );
    field(
        "stored",
        format!(
            "{} (log offset {})",
            time_ms(m.get("stored_ms").and_then(Value::as_i64).unwrap_or(0)),
            text(m, "log_offset")
        ),
    );
    if let Some(d) = m.get("delivery_timestamp_ms").and_then(Value::as_i64) {
        field("deliver at", time_ms(d));
    }
    field(
        "queue",
        format!("{} offset {}", text(m, "queue_id"), text(m, "queue_offset")),
    );
    field(
        "body",
        format!(
            "{} bytes: {}",
            text(m, "body_size"),
            text(m, "body_preview")
        ),
    );
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        if !props.is_empty() {
            println!("properties");
            for (k, v) in props {
                println!("  {k} = {}", show(v));
            }
        }
    }
    let Some(life) = m.get("lifecycle") else {
        return;
    };
    if let Some(tx) = life.get("transaction").filter(|v| !v.is_null()) {
        field("transaction", summary(tx));
    }
    if let Some(timer) = life.get("timer").filter(|v| !v.is_null()) {
        field("timer", summary(timer));
    }
    let groups = list(life, "groups");
    if !groups.is_empty() {
        println!("\nstatus per consumer group");
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                vec![
                    text(g, "group"),
                    text(g, "state"),
                    details(g, &["group", "state"]),
                ]
            })
            .collect();
        table(&["GROUP", "STATE", "DETAIL"], &rows);
    }
    println!("\nlifecycle");
    let rows: Vec<Vec<String>> = list(life, "events")
        .iter()
        .map(|e| {
            vec![
                time_ms(e.get("at_ms").and_then(Value::as_i64).unwrap_or(0)),
                text(e, "event"),
                text(e, "group"),
                details(e, &["at_ms", "event", "group", "log_offset"]),
            ]
        })
        .collect();
    table(&["TIME", "EVENT", "GROUP", "DETAIL"], &rows);
    let omitted = life
        .get("events_omitted")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if omitted > 0 {
        println!("({omitted} more events not shown)");
    }
    if life.get("complete").and_then(Value::as_bool) == Some(false) {
        println!(
            "(history cut short: the log was read up to offset {}; later events are not shown)",
            text(life, "scanned_to")
        );
    }
}

/// `k=v` pairs of an object, minus the keys already shown.
fn details(v: &Value, skip: &[&str]) -> String {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| !skip.contains(&k.as_str()) && !v.is_null())
                .map(|(k, v)| {
                    if k.ends_with("_ms") && v.as_i64().is_some_and(|x| x > 1_000_000_000_000) {
                        format!("{k}={}", time_ms(v.as_i64().unwrap_or(0)))
                    } else {
                        format!("{k}={}", show(v))
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn summary(v: &Value) -> String {
    match v {
        Value::Object(_) => {
            let state = v.get("state").or_else(|| v.get("status"));
            let rest = details(v, &["state", "status"]);
            match state {
                Some(s) => format!("{} {rest}", show(s)).trim().to_string(),
                None => rest,
            }
        }
        other => show(other),
    }
}
