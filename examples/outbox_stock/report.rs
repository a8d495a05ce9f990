//! The driver's view of the two databases: progress while the demo runs,
//! and the final check.

use std::collections::BTreeMap;
use std::fmt;

use sqlx::Row as _;

use crate::orders::ITEMS;
use crate::stock::CONSUMER;
use crate::{Dbs, Res};

pub struct Progress {
    pub committed: u64,
    pub rolled_back: u64,
    /// Outbox rows not yet published.
    pub pending: u64,
    /// Orders taken off the stock.
    pub processed: u64,
}

impl Progress {
    pub fn attempted(&self) -> u64 {
        self.committed + self.rolled_back
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "orders {} committed + {} rolled back, outbox {} pending, stock {} processed",
            self.committed, self.rolled_back, self.pending, self.processed
        )
    }
}

async fn count_pg(dbs: &Dbs, sql: &str) -> Res<u64> {
    let n: i64 = sqlx::query_scalar(sql).fetch_one(&dbs.pg).await?;
    Ok(n as u64)
}

async fn count_my(dbs: &Dbs, sql: &str) -> Res<u64> {
    let n: i64 = sqlx::query_scalar(sql).fetch_one(&dbs.my).await?;
    Ok(n as u64)
}

pub async fn progress(dbs: &Dbs) -> Res<Progress> {
    Ok(Progress {
        committed: count_pg(dbs, "SELECT COUNT(*) FROM orders").await?,
        rolled_back: count_pg(dbs, "SELECT COUNT(*) FROM failed_orders").await?,
        pending: dbs.outbox.stats().await?.pending as u64,
        processed: count_my(dbs, "SELECT COUNT(*) FROM processed").await?,
    })
}

/// An order as one side recorded it: message id, item, quantity.
type Order = (String, String, i64);

/// The end state, and what is wrong with it.
pub struct Report {
    committed: BTreeMap<String, Order>,
    rolled_back: BTreeMap<String, String>,
    processed: BTreeMap<String, Order>,
    /// Rows of `processed`: more than orders if one was applied twice.
    processed_rows: u64,
    stock: BTreeMap<String, i64>,
    inbox_rows: u64,
    deliveries: u64,
    duplicates: u64,
    /// Duplicates that were the broker's redeliveries (attempt > 1); the
    /// rest were relays publishing a row again.
    redelivered: u64,
    outbox: ferry_outbox::Stats,
    sent: i64,
    /// Outbox rows claimed more than once (a relay died holding them).
    reclaimed: u64,
    problems: Vec<String>,
}

/// The columns both sides keep of an order.
const ORDER_COLUMNS: &str = "SELECT order_id, message_id, item, qty FROM";

fn by_order(rows: Vec<(String, String, String, i64)>) -> BTreeMap<String, Order> {
    rows.into_iter()
        .map(|(id, message_id, item, qty)| (id, (message_id, item, qty)))
        .collect()
}

pub async fn check(dbs: &Dbs) -> Res<Report> {
    let rolled_back = sqlx::query("SELECT order_id, message_id FROM failed_orders")
        .fetch_all(&dbs.pg)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let stock = sqlx::query("SELECT item, qty FROM stock")
        .fetch_all(&dbs.my)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let inbox_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ferry_inbox WHERE consumer = ?")
        .bind(CONSUMER)
        .fetch_one(&dbs.my)
        .await?;
    let mut report = Report {
        committed: by_order(
            sqlx::query_as(&format!("{ORDER_COLUMNS} orders"))
                .fetch_all(&dbs.pg)
                .await?,
        ),
        rolled_back,
        processed: by_order(
            sqlx::query_as(&format!("{ORDER_COLUMNS} processed"))
                .fetch_all(&dbs.my)
                .await?,
        ),
        processed_rows: count_my(dbs, "SELECT COUNT(*) FROM processed").await?,
        stock,
        inbox_rows: inbox_rows as u64,
        deliveries: count_my(dbs, "SELECT COUNT(*) FROM deliveries").await?,
        duplicates: count_my(dbs, "SELECT COUNT(*) FROM deliveries WHERE duplicate").await?,
        redelivered: count_my(
            dbs,
            "SELECT COUNT(*) FROM deliveries WHERE duplicate AND attempt > 1",
        )
        .await?,
        outbox: dbs.outbox.stats().await?,
        sent: dbs.outbox.sent_kept().await?,
        reclaimed: count_pg(dbs, "SELECT COUNT(*) FROM ferry_outbox WHERE attempts > 1").await?,
        problems: Vec::new(),
    };
    report.find_problems();
    Ok(report)
}

impl Report {
    fn find_problems(&mut self) {
        let mut p = Vec::new();
        for (id, order) in &self.committed {
            match self.processed.get(id) {
                None => p.push(format!("{id} committed but never reached the stock")),
                Some(seen) if seen != order => p.push(format!(
                    "{id}: committed as {order:?}, processed as {seen:?}"
                )),
                Some(_) => {}
            }
        }
        for (id, (message_id, ..)) in &self.processed {
            if self.rolled_back.contains_key(id)
                || self.rolled_back.values().any(|m| m == message_id)
            {
                p.push(format!("{id} was rolled back but reached the stock"));
            } else if !self.committed.contains_key(id) {
                p.push(format!("{id} reached the stock but was never placed"));
            }
        }
        if self.processed_rows != self.processed.len() as u64 {
            p.push(format!(
                "{} processed rows for {} orders: some applied more than once",
                self.processed_rows,
                self.processed.len()
            ));
        }
        if self.inbox_rows != self.processed_rows {
            p.push(format!(
                "{} inbox rows for {} processed orders",
                self.inbox_rows, self.processed_rows
            ));
        }
        for (item, start) in ITEMS {
            let now = self.stock.get(item).copied().unwrap_or(start);
            let expected = start - self.ordered(item);
            if now != expected {
                p.push(format!("{item}: stock {now}, expected {expected}"));
            }
        }
        if self.outbox.pending != 0 {
            p.push(format!("{} outbox rows still pending", self.outbox.pending));
        }
        if self.outbox.failed != 0 {
            p.push(format!(
                "{} outbox rows parked as failed",
                self.outbox.failed
            ));
        }
        self.problems = p;
    }

    /// Quantity of `item` in committed orders.
    fn ordered(&self, item: &str) -> i64 {
        self.committed
            .values()
            .filter(|(_, i, _)| i == item)
            .map(|(.., q)| q)
            .sum()
    }

    /// Prints the figures and the problems; `true` when there are none.
    pub fn print(&self) -> bool {
        let attempted = self.committed.len() + self.rolled_back.len();
        println!("\nend state");
        println!(
            "  orders attempted (PostgreSQL):   {attempted}: {} committed, {} rolled back",
            self.committed.len(),
            self.rolled_back.len()
        );
        println!(
            "  outbox rows:                     {} sent, {} pending, {} parked; {} claimed more than once",
            self.sent, self.outbox.pending, self.outbox.failed, self.reclaimed
        );
        println!(
            "  orders processed (MariaDB):      {} ({} rows, {} inbox rows)",
            self.processed.len(),
            self.processed_rows,
            self.inbox_rows
        );
        println!(
            "  deliveries committed:            {}; duplicates dropped by the inbox: {} \
             ({} relay re-publishes, {} broker redeliveries)",
            self.deliveries,
            self.duplicates,
            self.duplicates - self.redelivered,
            self.redelivered
        );
        println!("  stock per item (start → now, ordered):");
        for (item, start) in ITEMS {
            let now = self.stock.get(item).copied().unwrap_or(start);
            let ordered = self.ordered(item);
            let mark = if start - ordered == now {
                ""
            } else {
                "  ← MISMATCH"
            };
            println!("    {item:<5} {start} → {now}  (ordered {ordered}){mark}");
        }
        for p in self.problems.iter().take(20) {
            println!("  problem: {p}");
        }
        if self.problems.len() > 20 {
            println!("  ... and {} more problems", self.problems.len() - 20);
        }
        self.problems.is_empty()
    }
}
