//! Order → stock: transactional messages keeping two services consistent
//! while they are killed at random.
//!
//! - The **order service** takes orders. For each it sends a half message,
//!   writes the order row in its own SQLite database inside a local
//!   transaction, then commits the message (or rolls it back if the local
//!   transaction failed). Its transaction checker answers the broker's
//!   check-backs from the same database.
//! - The **stock service** consumes the order messages and, in one SQLite
//!   transaction, records the order as processed and takes the quantity off
//!   the stock: a redelivered message finds its order already processed and
//!   changes nothing (an idempotent consumer).
//! - The **demo** driver runs both as child processes, kills them with
//!   SIGKILL at random moments (the order service also kills itself at the
//!   most dangerous points: after the half message, after the local commit),
//!   restarts them, lets everything finish, and checks that orders and stock
//!   agree: every committed order taken off the stock exactly once, nothing
//!   else.
//!
//! ```sh
//! cargo run --release -- serve --tx-check-after-ms 1000 --tx-check-interval-ms 1000 &
//! cargo run --release -p ferry-examples --example order_stock -- demo --orders 200 --kills 10
//! ```

mod db;
mod orders;
#[path = "../common/process.rs"]
mod process;
mod random;
mod stock;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
pub use process::kill_self;
use process::Service;
use random::Random;

/// Topic of a run: each demo run has its own topic and consumer group, so
/// runs against one broker never see each other's messages.
pub fn topic(run: &str) -> String {
    format!("orders-{run}")
}

pub fn group(run: &str) -> String {
    format!("stock-service-{run}")
}
/// Items on sale and the stock each starts with.
pub const ITEMS: [(&str, i64); 4] = [
    ("apple", 100_000),
    ("pear", 100_000),
    ("plum", 100_000),
    ("fig", 100_000),
];

#[derive(Parser)]
#[command(about = "Order → stock over transactional messages, with random kills")]
struct Cli {
    /// Broker gRPC address
    #[arg(long, global = true, default_value = "127.0.0.1:8081")]
    server: String,
    /// Directory for the two SQLite databases
    #[arg(long, global = true, default_value = "order-stock-data")]
    dir: PathBuf,
    /// Run id (names the topic and group; the demo picks one per run)
    #[arg(long, global = true, default_value = "0")]
    run: String,
    #[command(subcommand)]
    command: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Run the whole demo: both services, random kills, the final check
    Demo {
        /// Orders to place
        #[arg(long, default_value_t = 200)]
        orders: u32,
        /// Kill -9 rounds
        #[arg(long, default_value_t = 10)]
        kills: u32,
        /// Random seed (printed, so a run can be repeated)
        #[arg(long)]
        seed: Option<u64>,
        /// Most time to wait for the services to agree at the end
        #[arg(long, default_value = "120s", value_parser = parse_secs)]
        settle: Duration,
    },
    /// The order service (started by the demo)
    Orders {
        #[arg(long)]
        orders: u32,
        /// Chance of killing itself at each dangerous point
        #[arg(long, default_value_t = 0.0)]
        crash: f64,
        #[arg(long)]
        seed: u64,
        /// Pause between orders, ms (spreads the orders over the kill rounds)
        #[arg(long, default_value_t = 0)]
        pace_ms: u64,
    },
    /// The stock service (started by the demo)
    Stock,
    /// Print the end state and check it
    Check,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{s:?}: {e} (seconds, e.g. 120s)"))
}

pub fn orders_db(dir: &Path) -> PathBuf {
    dir.join("orders.db")
}

pub fn stock_db(dir: &Path) -> PathBuf {
    dir.join("stock.db")
}

fn main() -> ExitCode {
    process::init_logging();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match cli.command {
        Role::Demo {
            orders,
            kills,
            seed,
            settle,
        } => demo(&cli.server, &cli.dir, orders, kills, seed, settle),
        Role::Orders {
            orders,
            crash,
            seed,
            pace_ms,
        } => rt.block_on(orders::run(
            &cli.server,
            &cli.dir,
            &cli.run,
            orders::Plan {
                orders,
                crash,
                seed,
                pace: Duration::from_millis(pace_ms),
            },
        )),
        Role::Stock => rt.block_on(stock::run(&cli.server, &cli.dir, &cli.run)),
        Role::Check => rt.block_on(check(&cli.dir)).map(|ok| {
            if !ok {
                std::process::exit(1)
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("order_stock: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn demo(
    server: &str,
    dir: &Path,
    orders: u32,
    kills: u32,
    seed: Option<u64>,
    settle: Duration,
) -> Res<()> {
    let seed = seed.unwrap_or_else(random::seed_from_clock);
    let run = format!("{seed:016x}");
    println!(
        "order → stock demo: {orders} orders, {kills} kill rounds, seed {seed} (topic {}, group {})",
        topic(&run),
        group(&run)
    );
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(orders::init(&orders_db(dir)))?;
    rt.block_on(stock::init(&stock_db(dir)))?;
    let mut rng = Random::new(seed);
    let base: Vec<OsString> = vec![
        "--server".into(),
        server.into(),
        "--run".into(),
        run.clone().into(),
        "--dir".into(),
        dir.into(),
    ];
    let service = |name, args: Vec<String>| Service::new(name, &base, args);
    // Orders are paced so that they span the kill rounds (about 900 ms
    // apart on average).
    let pace_ms = (u64::from(kills) * 900 / u64::from(orders.max(1))).min(200);
    let order_args = |crash: f64, seed: u64| {
        vec![
            "orders".to_string(),
            "--orders".into(),
            orders.to_string(),
            "--crash".into(),
            crash.to_string(),
            "--seed".into(),
            seed.to_string(),
            "--pace-ms".into(),
            pace_ms.to_string(),
        ]
    };
    let mut order_svc = service("order service", order_args(0.02, rng.next()));
    let mut stock_svc = service("stock service", vec!["stock".into()]);
    order_svc.start()?;
    stock_svc.start()?;
    let mut killed = 0;
    let mut self_killed = 0;
    for round in 1..=kills {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
        // Which to kill: the order service, the stock service, or both.
        let pick = rng.below(3);
        let mut victims = Vec::new();
        if pick != 1 {
            victims.push(&mut order_svc);
        }
        if pick != 0 {
            victims.push(&mut stock_svc);
        }
        for s in victims {
            s.kill();
            killed += 1;
            println!("round {round}: killed the {} (kill -9)", s.name);
        }
        // A service found dead without being picked killed itself at one of
        // its dangerous points.
        order_svc.args = order_args(0.02, rng.next());
        for s in [&mut order_svc, &mut stock_svc] {
            if s.started() && s.revive()? {
                self_killed += 1;
                println!("round {round}: the {} had killed itself", s.name);
            } else {
                s.revive()?;
            }
        }
    }
    // Final stretch: no more self-kills; the order service finishes every
    // order and stays up to answer check-backs.
    std::thread::sleep(Duration::from_millis(500));
    order_svc.kill();
    order_svc.args = order_args(0.0, rng.next());
    order_svc.start()?;
    stock_svc.revive()?;
    let started = Instant::now();
    let mut consistent = false;
    while started.elapsed() < settle {
        std::thread::sleep(Duration::from_millis(500));
        // The stock service may still kill itself between commit and ack.
        for s in [&mut order_svc, &mut stock_svc] {
            if s.revive()? {
                self_killed += 1;
            }
        }
        if rt.block_on(settled(dir, orders))? {
            consistent = true;
            break;
        }
    }
    // Messages whose ack died with a killed stock service come back after
    // their invisible duration: let them, so the check sees them handled.
    std::thread::sleep(stock::INVISIBLE * 2);
    order_svc.kill();
    stock_svc.kill();
    println!("kill -9: {killed} by the driver, {self_killed} by the services themselves");
    let ok = rt.block_on(check(dir))?;
    if !consistent {
        return Err(format!("orders and stock did not agree within {settle:?}").into());
    }
    if !ok {
        return Err("INCONSISTENT".into());
    }
    Ok(())
}

/// Every order placed and every committed order processed.
async fn settled(dir: &Path, orders: u32) -> Res<bool> {
    let placed = db::count(&orders_db(dir), "orders").await?;
    let processed = db::count(&stock_db(dir), "processed").await?;
    Ok(placed == u64::from(orders) && processed == placed)
}

/// Prints the end state and whether orders and stock agree.
async fn check(dir: &Path) -> Res<bool> {
    let placed = orders::all(&orders_db(dir)).await?;
    let state = stock::state(&stock_db(dir)).await?;
    let mut ok = true;
    let mut problems = Vec::new();
    // Every committed order processed once, with the attempt that committed it.
    for (order, (attempt, item, qty)) in &placed {
        match state.processed.get(order) {
            None => problems.push(format!(
                "order {order} committed but never reached the stock"
            )),
            Some(p) if p.attempt != *attempt => problems.push(format!(
                "order {order}: the stock processed attempt {} but attempt {attempt} committed",
                p.attempt
            )),
            Some(p) if p.item != *item || p.qty != *qty => {
                problems.push(format!("order {order}: contents differ"))
            }
            Some(_) => {}
        }
    }
    for order in state.processed.keys() {
        if !placed.contains_key(order) {
            problems.push(format!(
                "order {order} reached the stock but was never committed"
            ));
        }
    }
    println!("\nend state");
    println!("  orders committed (orders.db):    {}", placed.len());
    println!(
        "  orders processed (stock.db):     {}",
        state.processed.len()
    );
    println!(
        "  attempts rolled back on check-back:  {}",
        db::count(&orders_db(dir), "aborted").await?
    );
    println!(
        "  redeliveries recognised and skipped: {}",
        state.redeliveries
    );
    println!(
        "  anomalies recorded by the stock service: {}",
        state.anomalies
    );
    println!("  stock per item (start → now, ordered):");
    for (item, start) in ITEMS {
        let ordered: i64 = placed
            .values()
            .filter(|(_, i, _)| i == item)
            .map(|(_, _, q)| q)
            .sum();
        let now = state.stock.get(item).copied().unwrap_or(start);
        let agree = start - ordered == now;
        ok &= agree;
        println!(
            "    {item:<6} {start} → {now}  (ordered {ordered}){}",
            if agree { "" } else { "  ← MISMATCH" }
        );
    }
    if state.anomalies > 0 {
        problems.push(format!("{} anomalies", state.anomalies));
    }
    for p in &problems {
        println!("  problem: {p}");
    }
    ok &= problems.is_empty();
    println!(
        "\n{}",
        if ok {
            "CONSISTENT: orders and stock agree"
        } else {
            "INCONSISTENT"
        }
    );
    Ok(ok)
}
