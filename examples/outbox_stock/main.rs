//! Order → stock through a transactional outbox and an idempotent inbox
//! (`ferry-outbox`), with processes killed at random.
//!
//! - The **order service** (PostgreSQL) takes orders. For each, one
//!   PostgreSQL transaction inserts the order row and enqueues the order
//!   message in the outbox table (`Outbox::enqueue`), then commits. About
//!   one order in ten fails (a declined payment) and is rolled back: its
//!   message goes with it and must never reach the stock.
//! - Two **relays** (`ferry_outbox::Relay` with a `FerryPublisher`) claim
//!   committed outbox rows under a short lease, publish them to Ferry and
//!   mark them sent. A relay killed between publishing and marking leaves
//!   its rows to come back when the lease runs out: they are published
//!   again, under the same message id.
//! - The **stock service** (MariaDB) consumes the order messages and, in
//!   one MariaDB transaction, records the message id in the inbox
//!   (`Inbox::process_once`), takes the quantity off the stock and records
//!   the order as processed; then it acks. A redelivery — the broker's, or
//!   a relay's re-publish — finds the id and changes nothing.
//! - The **demo** driver creates fresh databases for the run, starts all
//!   of them as child processes, kills one with SIGKILL at random moments
//!   (`--kills` in all, spread over the three kinds) and restarts it, lets
//!   everything drain once the orders are placed, and checks that every
//!   committed order was taken off the stock exactly once, no rolled-back
//!   one ever, and nothing is left pending in the outbox. On top of that
//!   (`--crash`, 0 to turn off), the relays and the stock service now and
//!   then kill themselves at their most dangerous moment — published but
//!   not marked sent; committed but not acked — which a kill from outside
//!   rarely hits: those are what the inbox's duplicates come from.
//!
//! Needs PostgreSQL and MariaDB (or MySQL 8) reachable at `--pg` and
//! `--mysql`; each run creates (and, when consistent, drops) its own
//! `outbox_demo_<run>` database on both.
//!
//! ```sh
//! cargo run --release -- serve &
//! cargo run --release -p ferry-examples --example outbox_stock -- demo --orders 300 --kills 12
//! ```

mod orders;
#[path = "../common/process.rs"]
mod process;
#[path = "../order_stock/random.rs"]
mod random;
mod relay;
mod report;
mod stock;

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use process::Service;
use random::Random;
use sqlx::{Connection as _, Executor as _};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Each run has its own topic, consumer group and databases, so runs
/// against one broker and one database server never meet.
pub fn topic(run: &str) -> String {
    format!("outbox-orders-{run}")
}

pub fn group(run: &str) -> String {
    format!("outbox-stock-{run}")
}

pub fn database(run: &str) -> String {
    format!("outbox_demo_{run}")
}

/// `url` with its database swapped for the run's.
pub fn run_url(url: &str, run: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    // After the scheme's "//", the last '/' starts the database name.
    let host_start = base.find("//").map_or(0, |i| i + 2);
    let server = match base[host_start..].rfind('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    format!("{server}/{}{query}", database(run))
}

#[derive(Parser)]
#[command(
    about = "Order → stock over ferry-outbox (PostgreSQL → Ferry → MariaDB), with random kills"
)]
struct Cli {
    /// Broker gRPC address
    #[arg(long, global = true, default_value = "127.0.0.1:8081")]
    server: String,
    /// Run id: names the topic, the group and the databases (the demo picks one)
    #[arg(long, global = true, default_value = "0")]
    run: String,
    /// PostgreSQL server (the order service's database is created on it)
    #[arg(
        long,
        global = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pg: String,
    /// MariaDB / MySQL server (the stock service's database is created on it)
    #[arg(
        long,
        global = true,
        default_value = "mysql://root@127.0.0.1:3306/test"
    )]
    mysql: String,
    #[command(subcommand)]
    command: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Run the whole demo: databases, services, random kills, the final check
    Demo {
        /// Orders to attempt (committed or rolled back)
        #[arg(long, default_value_t = 300)]
        orders: u32,
        /// SIGKILLs, spread over the order service, the relays and the stock service
        #[arg(long, default_value_t = 12)]
        kills: u32,
        /// Random seed (printed, so a run can be repeated)
        #[arg(long)]
        seed: Option<u64>,
        /// Most seconds to wait for everything to drain at the end
        #[arg(long, default_value_t = 120)]
        settle_secs: u64,
        /// Keep the run's databases even when the run is consistent
        #[arg(long)]
        keep: bool,
        /// Chance that a relay or the stock service kills itself at its
        /// most dangerous point — a relay after publishing a batch, before
        /// marking it sent; the stock service after a commit, before the
        /// ack — on top of the driver's kills (0: the driver's only)
        #[arg(long, default_value_t = 0.02)]
        crash: f64,
    },
    /// The order service (started by the demo)
    Orders {
        #[arg(long)]
        orders: u32,
        #[arg(long)]
        seed: u64,
        /// Pause between orders, ms (spreads the orders over the kills)
        #[arg(long, default_value_t = 0)]
        pace_ms: u64,
    },
    /// An outbox relay (started by the demo)
    Relay {
        /// Names its leases
        #[arg(long)]
        name: String,
        /// Chance of dying after each publish, before marking it sent
        #[arg(long, default_value_t = 0.0)]
        crash: f64,
    },
    /// The stock service (started by the demo)
    Stock {
        /// Chance of dying after each commit, before the ack
        #[arg(long, default_value_t = 0.0)]
        crash: f64,
    },
    /// Print the end state of run `--run` and check it
    Check,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    process::init_logging();
    let cli = Cli::parse();
    let urls = Urls {
        pg: run_url(&cli.pg, &cli.run),
        mysql: run_url(&cli.mysql, &cli.run),
    };
    let outcome = match &cli.command {
        Role::Demo {
            orders,
            kills,
            seed,
            settle_secs,
            keep,
            crash,
        } => {
            let plan = Plan {
                orders: *orders,
                kills: *kills,
                seed: seed.unwrap_or_else(random::seed_from_clock),
                settle: Duration::from_secs(*settle_secs),
                keep: *keep,
                crash: *crash,
            };
            demo(&cli, plan).await
        }
        Role::Orders {
            orders,
            seed,
            pace_ms,
        } => {
            let pace = Duration::from_millis(*pace_ms);
            orders::run(&urls.pg, &cli.run, *orders, *seed, pace).await
        }
        Role::Relay { name, crash } => {
            relay::run(&cli.server, &urls.pg, &cli.run, name, *crash).await
        }
        Role::Stock { crash } => stock::run(&cli.server, &urls.mysql, &cli.run, *crash).await,
        Role::Check => check(&urls).await,
    };
    outcome.map_or_else(
        |e| {
            eprintln!("outbox_stock: {e}");
            ExitCode::FAILURE
        },
        |()| ExitCode::SUCCESS,
    )
}

async fn check(urls: &Urls) -> Res<()> {
    let dbs = Dbs::open(urls).await?;
    let ok = report::check(&dbs).await?.print();
    dbs.close().await;
    println!("{}", if ok { "CONSISTENT" } else { "INCONSISTENT" });
    if ok {
        Ok(())
    } else {
        Err("the run's databases disagree".into())
    }
}

/// The run's two databases.
pub struct Urls {
    pub pg: String,
    pub mysql: String,
}

/// The driver's connections to them.
pub struct Dbs {
    pub pg: sqlx::PgPool,
    pub my: sqlx::MySqlPool,
    /// The outbox, as a relay sees it (for its gauges).
    pub outbox: ferry_outbox::Store,
}

impl Dbs {
    async fn open(urls: &Urls) -> Res<Dbs> {
        Ok(Dbs {
            pg: sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(&urls.pg)
                .await?,
            my: sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(2)
                .connect(&urls.mysql)
                .await?,
            outbox: ferry_outbox::Store::connect(&urls.pg, 1).await?,
        })
    }

    async fn close(self) {
        self.pg.close().await;
        self.my.close().await;
        self.outbox.pool().close().await;
    }
}

struct Plan {
    orders: u32,
    kills: u32,
    seed: u64,
    settle: Duration,
    keep: bool,
    crash: f64,
}

/// Creates (`create`) or drops the run's database on both servers.
async fn databases(cli: &Cli, run: &str, create: bool) -> Res<()> {
    let name = database(run);
    let (pg, my) = if create {
        (
            format!("CREATE DATABASE {name}"),
            format!("CREATE DATABASE {name}"),
        )
    } else {
        (
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("DROP DATABASE IF EXISTS {name}"),
        )
    };
    let mut c = sqlx::PgConnection::connect(&cli.pg).await?;
    c.execute(pg.as_str()).await?;
    c.close().await?;
    let mut c = sqlx::MySqlConnection::connect(&cli.mysql).await?;
    c.execute(my.as_str()).await?;
    c.close().await?;
    Ok(())
}

/// What the driver kills.
#[derive(Clone, Copy)]
enum Kind {
    Orders,
    Relay,
    Stock,
}

/// The kill schedule: `kills` victims, the three kinds taking turns, in
/// a shuffled order.
fn schedule(rng: &mut Random, kills: u32) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = (0..kills)
        .map(|i| [Kind::Orders, Kind::Relay, Kind::Stock][i as usize % 3])
        .collect();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.below(i as u64 + 1) as usize);
    }
    kinds
}

async fn demo(cli: &Cli, plan: Plan) -> Res<()> {
    let run = format!("{:016x}", plan.seed);
    let urls = Urls {
        pg: run_url(&cli.pg, &run),
        mysql: run_url(&cli.mysql, &run),
    };
    println!(
        "outbox order → stock demo: {} orders, {} kills, self-kill chance {}, seed {} \
         (topic {}, group {}, databases {})",
        plan.orders,
        plan.kills,
        plan.crash,
        plan.seed,
        topic(&run),
        group(&run),
        database(&run)
    );
    let began = Instant::now();
    databases(cli, &run, true).await?;
    orders::init(&urls.pg).await?;
    stock::init(&urls.mysql).await?;
    let dbs = Dbs::open(&urls).await?;

    let mut rng = Random::new(plan.seed);
    let mut services = services(cli, &run, &plan, rng.next());
    for s in services.iter_mut() {
        s.start()?;
    }
    let mut tally = Tally::default();
    for (n, kind) in schedule(&mut rng, plan.kills).into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
        tally.revive(&mut services)?;
        let victim = match kind {
            Kind::Relay => rng.below(2) as usize,
            Kind::Stock => STOCK,
            Kind::Orders => ORDERS,
        };
        tally.kills[kind as usize] += 1;
        services[victim].kill();
        let progress = report::progress(&dbs).await?;
        println!(
            "{:>6.1}s  kill {}/{}: the {} (kill -9); {progress}",
            began.elapsed().as_secs_f64(),
            n + 1,
            plan.kills,
            services[victim].name,
        );
        // Down for a moment: the other relay, the broker's redelivery and
        // the leases have to cope.
        tokio::time::sleep(Duration::from_millis(rng.below(1500))).await;
        tally.revive(&mut services)?;
    }
    let placed_at = loop {
        let p = report::progress(&dbs).await?;
        if p.attempted() >= u64::from(plan.orders) {
            break began.elapsed();
        }
        if began.elapsed() > plan.settle * 2 {
            return Err(format!("the order service did not finish: {p}").into());
        }
        tally.revive(&mut services)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "{:>6.1}s  all {} orders attempted; draining",
        placed_at.as_secs_f64(),
        plan.orders
    );
    let mut drained = false;
    while began.elapsed() < placed_at + plan.settle {
        tally.revive(&mut services)?;
        let p = report::progress(&dbs).await?;
        if p.pending == 0 && p.processed >= p.committed {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained_at = began.elapsed();
    // Deliveries still owed — a message whose ack died with a killed stock
    // service, a row a killed relay published but never marked — come
    // within a lease or an invisible duration: let them, so the check
    // counts them (and would see them applied twice).
    let grace = relay::LEASE.max(stock::INVISIBLE) * 2;
    while began.elapsed() < drained_at + grace {
        tokio::time::sleep(Duration::from_millis(250)).await;
        tally.revive(&mut services)?;
    }
    for s in services.iter_mut() {
        s.kill();
    }
    let ok = report::check(&dbs).await?.print() && drained;
    dbs.close().await;
    tally.print();
    println!(
        "time: {:.1}s in all; orders placed after {:.1}s, drained {:.1}s later",
        began.elapsed().as_secs_f64(),
        placed_at.as_secs_f64(),
        (drained_at - placed_at).as_secs_f64()
    );
    if !drained {
        println!("did not drain within {:?}", plan.settle);
    }
    if ok && !plan.keep {
        databases(cli, &run, false).await?;
        println!("dropped the run's databases");
    } else {
        println!(
            "kept the run's databases: check again with --run {run} check ({} / {})",
            urls.pg, urls.mysql
        );
    }
    println!("{}", if ok { "CONSISTENT" } else { "INCONSISTENT" });
    if ok {
        Ok(())
    } else {
        Err("orders and stock disagree (see the problems above)".into())
    }
}

/// Where each service sits in [`services`]' answer (the relays are 0, 1).
const STOCK: usize = 2;
const ORDERS: usize = 3;

/// The child processes: two relays, the stock service, the order service.
fn services(cli: &Cli, run: &str, plan: &Plan, order_seed: u64) -> [Service; 4] {
    let base: Vec<OsString> = [
        "--server",
        cli.server.as_str(),
        "--pg",
        cli.pg.as_str(),
        "--mysql",
        cli.mysql.as_str(),
        "--run",
        run,
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    let crash = plan.crash.to_string();
    let relay = |name: &str| -> Vec<String> {
        vec![
            "relay".into(),
            "--name".into(),
            name.into(),
            "--crash".into(),
            crash.clone(),
        ]
    };
    // Orders are paced to span the kills (about 1.6 s apart on average).
    let pace_ms = (u64::from(plan.kills) * 1500 / u64::from(plan.orders.max(1))).min(200);
    let orders = [
        "orders",
        "--orders",
        &plan.orders.to_string(),
        "--seed",
        &order_seed.to_string(),
        "--pace-ms",
        &pace_ms.to_string(),
    ]
    .map(String::from)
    .to_vec();
    [
        Service::new("relay 1", &base, relay("relay-1")),
        Service::new("relay 2", &base, relay("relay-2")),
        Service::new(
            "stock service",
            &base,
            vec!["stock".into(), "--crash".into(), crash.clone()],
        ),
        Service::new("order service", &base, orders),
    ]
}

/// Kills and deaths, by kind.
#[derive(Default)]
struct Tally {
    /// The driver's, indexed by [`Kind`].
    kills: [u32; 3],
    /// Self-kills at the dangerous points.
    relay_self_kills: u32,
    stock_self_kills: u32,
    /// Exits for any other reason (an error; see the service's stderr).
    other_exits: u32,
}

impl Tally {
    /// Starts every service that is not running, noting why it was not.
    fn revive(&mut self, services: &mut [Service; 4]) -> Res<()> {
        for (i, s) in services.iter_mut().enumerate() {
            let status = s.exit_status()?;
            if !s.revive()? {
                continue;
            }
            // Not started, or killed by the driver: nothing to note.
            let Some(status) = status else { continue };
            match status.signal() {
                Some(9) if i == STOCK => self.stock_self_kills += 1,
                Some(9) if i != ORDERS => self.relay_self_kills += 1,
                _ => {
                    self.other_exits += 1;
                    eprintln!("demo: the {} exited ({status}); restarted it", s.name);
                }
            }
        }
        Ok(())
    }

    fn print(&self) {
        let k = &self.kills;
        println!(
            "\nkill -9 by the driver: {} (order service {}, relays {}, stock service {})",
            k.iter().sum::<u32>(),
            k[Kind::Orders as usize],
            k[Kind::Relay as usize],
            k[Kind::Stock as usize]
        );
        println!(
            "kill -9 by the services themselves: {} (relays after publishing, before marking \
             sent: {}; stock service after committing, before acking: {})",
            self.relay_self_kills + self.stock_self_kills,
            self.relay_self_kills,
            self.stock_self_kills
        );
        if self.other_exits > 0 {
            println!("other exits, restarted: {}", self.other_exits);
        }
    }
}
