//! `ferry outbox relay` as real child processes, killed with SIGKILL over
//! and over while a writer fills the outbox and a consumer reads the
//! topic: every committed message arrives, and the duplicates stay within
//! what the killed relays held.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ferry_bin, Broker};
use ferry_client::{FilterExpression, SimpleConsumer};
use ferry_outbox::{Outbox, OutboxMessage};

const WORKERS: usize = 2;
const BATCH: usize = 50;

fn spawn_relay(b: &Broker, url: &str, n: usize, dir: &std::path::Path) -> Child {
    let log = std::fs::File::create(dir.join(format!("relay-{n}.log"))).unwrap();
    Command::new(ferry_bin())
        .args(["outbox", "relay", "--database", url, "--server", &b.grpc])
        .args(["--lease", "2s", "--idle-poll", "20ms"])
        .args([
            "--workers",
            &WORKERS.to_string(),
            "--batch",
            &BATCH.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn ferry outbox relay")
}

/// Writes `total` messages in transactions of 20 while relays are killed;
/// returns the committed message ids.
async fn write_all<F, Fut>(total: usize, mut write_tx: F) -> Vec<String>
where
    F: FnMut(Vec<OutboxMessage>) -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let mut ids = Vec::with_capacity(total);
    for chunk in 0..total / 20 {
        let messages = (0..20)
            .map(|i| {
                OutboxMessage::from(
                    ferry_client::Message::new("relay-kill", format!("{chunk}-{i}"))
                        .with_key(format!("k{chunk}")),
                )
            })
            .collect();
        ids.extend(write_tx(messages).await);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    ids
}

async fn kill_loop(
    b: &Broker,
    url: &str,
    kills: usize,
    ids_future: impl std::future::Future<Output = Vec<String>>,
) -> (Vec<String>, Vec<Child>) {
    let dir = tempfile::tempdir().unwrap();
    let mut relays: Vec<Child> = (0..2).map(|n| spawn_relay(b, url, n, dir.path())).collect();
    let writer = ids_future;
    tokio::pin!(writer);
    let mut ids = None;
    let mut seed = 0x5EED_u64;
    let mut killed = 0;
    let mut spawned = 2;
    while killed < kills || ids.is_none() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pause = Duration::from_millis(200 + seed % 400);
        tokio::select! {
            done = &mut writer, if ids.is_none() => { ids = Some(done); }
            _ = tokio::time::sleep(pause) => {
                if killed < kills {
                    let i = (seed % 2) as usize;
                    let _ = relays[i].kill(); // SIGKILL
                    let _ = relays[i].wait();
                    killed += 1;
                    relays[i] = spawn_relay(b, url, spawned, dir.path());
                    spawned += 1;
                }
            }
        }
    }
    std::mem::forget(dir);
    (ids.unwrap(), relays)
}

async fn consume_until(b: &Broker, want: &HashSet<String>, within: Duration) -> Vec<String> {
    let c = SimpleConsumer::builder(b.config(), "relay-kill-check")
        .subscribe("relay-kill", FilterExpression::all())
        .await_duration(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let deadline = Instant::now() + within;
    loop {
        let seen: HashSet<String> = got.lock().unwrap().iter().cloned().collect();
        if want.is_subset(&seen) || Instant::now() > deadline {
            // Anything re-published late would arrive within a lease.
            if want.is_subset(&seen) {
                let settle = Instant::now() + Duration::from_secs(3);
                while Instant::now() < settle {
                    for m in c.receive(32, Duration::from_secs(10)).await.unwrap() {
                        c.ack(&m).await.unwrap();
                        got.lock().unwrap().push(m.message_id.clone());
                    }
                }
            }
            break;
        }
        for m in c.receive(32, Duration::from_secs(10)).await.unwrap() {
            c.ack(&m).await.unwrap();
            got.lock().unwrap().push(m.message_id.clone());
        }
    }
    c.shutdown().await;
    let v = got.lock().unwrap().clone();
    v
}

fn check(b: &Broker, url: &str, ids: &[String], got: &[String], kills: usize) {
    let want: HashSet<&String> = ids.iter().collect();
    let seen: HashSet<&String> = got.iter().collect();
    let missing = want.difference(&seen).count();
    assert_eq!(missing, 0, "{missing} committed messages never arrived");
    let dups = got.len() - seen.len();
    let bound = kills * WORKERS * BATCH;
    eprintln!(
        "{} messages, {kills} relay kills, {dups} duplicates (bound {bound})",
        ids.len()
    );
    assert!(
        dups <= bound,
        "{dups} duplicates, more than the {bound} the killed relays could hold"
    );
    let (ok, out, err) = b.cli(&["outbox", "status", "--database", url, "--json"], None);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pending"], 0, "{out}");
    assert_eq!(v["failed"], 0, "{out}");
}

/// One transaction of `enqueue_batch` per call, on a native sqlx pool.
macro_rules! writer {
    ($pool:expr, $outbox:expr) => {
        |messages: Vec<OutboxMessage>| {
            let (pool, outbox) = ($pool.clone(), $outbox.clone());
            async move {
                let mut tx = pool.begin().await.unwrap();
                let ids = outbox.enqueue_batch(&mut tx, &messages).await.unwrap();
                tx.commit().await.unwrap();
                ids
            }
        }
    };
}

/// A broker, `total` messages written while relays are killed `kills`
/// times, a consumer reading until all arrived, then the checks.
async fn scenario<F, Fut>(url: &str, total: usize, kills: usize, write_tx: F)
where
    F: FnMut(Vec<OutboxMessage>) -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let b = Broker::start(&[]);
    let writer = write_all(total, write_tx);
    let (ids, mut relays) = kill_loop(&b, url, kills, writer).await;
    let want: HashSet<String> = ids.iter().cloned().collect();
    let got = consume_until(&b, &want, Duration::from_secs(90)).await;
    check(&b, url, &ids, &got, kills);
    for r in &mut relays {
        let _ = r.kill();
        let _ = r.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_kill9_loop_loses_nothing_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .busy_timeout(Duration::from_secs(30))
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal),
        )
        .await
        .unwrap();
    ferry_outbox::migrate(&url).await.unwrap();
    let outbox = Outbox::new();
    scenario(&url, 1000, 8, writer!(pool, outbox)).await;
}

#[cfg(feature = "db-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_kill9_loop_loses_nothing_postgres() {
    use sqlx::Connection as _;
    use sqlx::Executor as _;
    let server = std::env::var("FERRY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {server}: {e}; start it or set FERRY_TEST_PG_URL"
            )
        });
    let name = format!("ferry_relay_kill_{}", std::process::id());
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
        .await
        .unwrap();
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let url = format!("{}/{name}", &server[..server.rfind('/').unwrap()]);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    ferry_outbox::migrate(&url).await.unwrap();
    let outbox = Outbox::new();
    scenario(&url, 2000, 10, writer!(pool, outbox)).await;
    pool.close().await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
}

/// The maintenance commands answer, and refuse without a database.
#[test]
fn outbox_commands_need_a_database_and_report_state() {
    let b = Broker::start(&[]);
    let (ok, _, err) = b.cli(&["outbox", "status"], None);
    assert!(!ok);
    assert!(err.contains("--database"), "{err}");
    let (ok, _, err) = b.cli(&["outbox", "status", "--database", "oracle://x"], None);
    assert!(!ok);
    assert!(err.contains("oracle"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("o.db").display());
    let (ok, out, err) = b.cli(&["outbox", "migrate", "--database", &url], None);
    assert!(ok, "{err}");
    assert!(out.contains("schema at version 1"), "{out}");
    let (ok, out, _) = b.cli(&["outbox", "status", "--database", &url], None);
    assert!(ok);
    assert!(out.contains("PENDING"), "{out}");
    let (ok, out, _) = b.cli(&["outbox", "requeue", "--database", &url, "--json"], None);
    assert!(ok);
    assert!(
        out.contains("\"requeued\": 0") || out.contains("\"requeued\":0"),
        "{out}"
    );
    let (ok, out, _) = b.cli(&["outbox", "cleanup", "--database", &url], None);
    assert!(ok);
    assert!(out.contains("deleted 0 sent rows"), "{out}");
}

#[cfg(feature = "db-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_kill9_loop_loses_nothing_mariadb() {
    use sqlx::Connection as _;
    use sqlx::Executor as _;
    let server = std::env::var("FERRY_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let mut admin = sqlx::MySqlConnection::connect(&server)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "MySQL/MariaDB is not reachable at {server}: {e}; start it or set FERRY_TEST_MYSQL_URL"
            )
        });
    let name = format!("ferry_relay_kill_{}", std::process::id());
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin.execute(sql.as_str()).await.unwrap();
    }
    let url = format!("{}/{name}", &server[..server.rfind('/').unwrap()]);
    let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
    ferry_outbox::migrate(&url).await.unwrap();
    let outbox = Outbox::new();
    scenario(&url, 2000, 10, writer!(pool, outbox)).await;
    pool.close().await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
        .await
        .unwrap();
}
