//! `ferry tx list|discarded`: transactions waiting for their outcome, and
//! the ones the broker gave up on.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::output::{age_ms, json, list, table, text, time_ms};
use super::{CliResult, Target};

#[derive(Debug, Args)]
pub struct TxArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: TxCommand,
}

#[derive(Debug, Subcommand)]
enum TxCommand {
    /// Half messages waiting for commit or rollback, oldest first, with age and check count
    List,
    /// Half messages recently discarded after their last check-back went unanswered
    Discarded,
}

pub async fn run(args: TxArgs) -> CliResult {
    let t = &args.target;
    let v = t.admin().get("/v1/transactions").await?;
    match args.command {
        TxCommand::List => {
            if t.json {
                return json(&json!({
                    "pending_count": v.get("pending_count"),
                    "pending": v.get("pending"),
                }));
            }
            let rows: Vec<Vec<String>> = list(&v, "pending")
                .iter()
                .map(|h| {
                    let stored = h.get("stored_ms").and_then(Value::as_i64).unwrap_or(0);
                    vec![
                        text(h, "transaction_id"),
                        text(h, "topic"),
                        text(h, "message_id"),
                        age_ms(stored),
                        text(h, "checks"),
                        time_ms(h.get("next_check_ms").and_then(Value::as_i64).unwrap_or(0)),
                    ]
                })
                .collect();
            table(
                &[
                    "TRANSACTION",
                    "TOPIC",
                    "MESSAGE_ID",
                    "AGE",
                    "CHECKS",
                    "NEXT_CHECK",
                ],
                &rows,
            );
            let shown = rows.len() as u64;
            let total = v
                .get("pending_count")
                .and_then(Value::as_u64)
                .unwrap_or(shown);
            println!(
                "{total} pending{}",
                if total > shown {
                    format!(" ({shown} shown)")
                } else {
                    String::new()
                }
            );
        }
        TxCommand::Discarded => {
            if t.json {
                return json(&json!({"discarded": v.get("recently_discarded")}));
            }
            let rows: Vec<Vec<String>> = list(&v, "recently_discarded")
                .iter()
                .map(|r| {
                    vec![
                        text(r, "transaction_id"),
                        text(r, "topic"),
                        text(r, "message_id"),
                        time_ms(r.get("discarded_ms").and_then(Value::as_i64).unwrap_or(0)),
                        text(r, "checks"),
                        text(r, "reason"),
                    ]
                })
                .collect();
            table(
                &[
                    "TRANSACTION",
                    "TOPIC",
                    "MESSAGE_ID",
                    "DISCARDED",
                    "CHECKS",
                    "REASON",
                ],
                &rows,
            );
        }
    }
    Ok(())
}
