//! The outbox/inbox scenarios, run against each database by the
//! `sqlite`, `postgres` and `mysql` test files.

#![allow(dead_code)]

pub mod db;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_client::Message;
use ferry_outbox::{
    Inbox, JanitorConfig, Outbox, OutboxMessage, PendingMessage, Processed, PublishError,
    Publisher, Relay, RelayConfig,
};

pub use db::TestDb;

/// Scale of a scenario: SQLite serialises writers, so it gets less.
pub struct Scale {
    pub writers: usize,
    pub txs_per_writer: usize,
    pub max_hold_ms: u64,
}

pub fn scale(db: &TestDb) -> Scale {
    match db.dialect {
        ferry_outbox::Dialect::Sqlite => Scale {
            writers: 4,
            txs_per_writer: 40,
            max_hold_ms: 5,
        },
        _ => Scale {
            writers: 8,
            txs_per_writer: 60,
            max_hold_ms: 60,
        },
    }
}

/// A publisher that keeps what it was given, in order.
#[derive(Clone, Default)]
pub struct Recorder {
    pub published: Arc<Mutex<Vec<PendingMessage>>>,
    /// Fail this many calls (retryably) before succeeding.
    pub fail_first: Arc<AtomicUsize>,
    /// Topics refused for good.
    pub refuse_topic: Option<String>,
    /// A batch holding a row with this body is refused for good.
    pub refuse_body: Option<String>,
    /// Batches of this ordering key fail (retryably), always.
    pub fail_key: Option<String>,
    /// Calls that hang forever (a relay "crashing" mid-publish).
    pub hang: Arc<std::sync::atomic::AtomicBool>,
    pub calls: Arc<AtomicU64>,
    pub max_batch: usize,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            max_batch: 64,
            ..Default::default()
        }
    }

    pub fn ids(&self) -> Vec<String> {
        let p = self.published.lock().unwrap();
        p.iter().map(|m| m.message_id().to_string()).collect()
    }

    pub fn count(&self) -> usize {
        self.published.lock().unwrap().len()
    }
}

impl Publisher for Recorder {
    fn max_batch(&self) -> usize {
        self.max_batch
    }

    async fn publish(&self, batch: &[PendingMessage]) -> Result<(), PublishError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.hang.load(Ordering::Relaxed) {
            // Published (the sink has it), but the relay never hears back.
            self.published.lock().unwrap().extend(batch.iter().cloned());
            std::future::pending::<()>().await;
        }
        if self.refuse_topic.as_deref() == Some(batch[0].message.topic.as_str()) {
            return Err(PublishError::permanent("no such topic"));
        }
        if let Some(poison) = &self.refuse_body {
            if batch.iter().any(|m| m.message.body == poison.as_bytes()) {
                return Err(PublishError::permanent("message refused"));
            }
        }
        if self.fail_key.is_some() && batch[0].ordering_key == self.fail_key {
            return Err(PublishError::retryable("broker busy for this key"));
        }
        if self
            .fail_first
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(PublishError::retryable("broker busy"));
        }
        tokio::task::yield_now().await;
        self.published.lock().unwrap().extend(batch.iter().cloned());
        Ok(())
    }
}

pub fn fast_config() -> RelayConfig {
    RelayConfig {
        workers: 2,
        batch: 100,
        idle_poll: Duration::from_millis(20),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        stats_interval: Duration::from_millis(100),
        cleanup: JanitorConfig {
            keep_sent: None,
            key_idle: None,
            ..JanitorConfig::outbox()
        },
        ..RelayConfig::default()
    }
}

pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pseudo_random(seed: &mut u64) -> u64 {
    // xorshift: reproducible holds and choices without a dependency.
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Writers whose transactions commit out of order (random holds, some
/// roll back) while a relay runs: every committed message is published
/// exactly once, no rolled-back one ever.
pub async fn late_commits_lose_nothing(db: &TestDb) {
    let s = scale(db);
    let recorder = Recorder::new();
    let relay = Relay::start(db.store().await, recorder.clone(), fast_config()).unwrap();
    let outbox = Outbox::new();
    let mut tasks = Vec::new();
    for w in 0..s.writers {
        let (db_native, outbox) = (db.native.clone(), outbox.clone());
        let url = db.url.clone();
        let dialect = db.dialect;
        tasks.push(tokio::spawn(async move {
            let db = TestDb::view(url, dialect, db_native);
            let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1);
            let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
            for t in 0..s.txs_per_writer {
                let r = pseudo_random(&mut seed);
                let n = 1 + (r % 3) as usize;
                let messages: Vec<OutboxMessage> = (0..n)
                    .map(|i| {
                        OutboxMessage::from(
                            Message::new("orders", format!("w{w} t{t} m{i}"))
                                .with_tag("created")
                                .with_key(format!("order-{w}-{t}"))
                                .with_property("writer", w.to_string()),
                        )
                    })
                    .collect();
                let hold = Duration::from_millis(r % (s.max_hold_ms + 1));
                let commit = r % 10 != 0;
                let (ids, _) = db
                    .write(&outbox, &messages, None, hold, commit)
                    .await
                    .unwrap();
                if commit {
                    committed.extend(ids);
                } else {
                    rolled_back.extend(ids);
                }
            }
            (committed, rolled_back)
        }));
    }
    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    for t in tasks {
        let (c, r) = t.await.unwrap();
        committed.extend(c);
        rolled_back.extend(r);
    }
    assert!(!committed.is_empty() && !rolled_back.is_empty());
    wait_until(
        "every committed row published",
        Duration::from_secs(60),
        || recorder.count() >= committed.len(),
    )
    .await;
    // A little longer: anything extra would show up now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.shutdown().await;
    let ids = recorder.ids();
    let published: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(
        ids.len(),
        published.len(),
        "a row was published twice without a crash"
    );
    assert_eq!(
        published, committed,
        "published set differs from committed set"
    );
    assert!(published.is_disjoint(&rolled_back));
    // What was written is what is published: body, tag, keys, properties.
    for p in recorder.published.lock().unwrap().iter() {
        let m = &p.message;
        let body = String::from_utf8(m.body.to_vec()).unwrap();
        let w = body[1..].split(' ').next().unwrap();
        assert_eq!(m.tag.as_deref(), Some("created"));
        assert_eq!(m.properties["writer"], w);
        assert!(m.keys[0].starts_with(&format!("order-{w}-")), "{m:?}");
        assert_eq!(m.message_id.as_deref(), Some(p.message_id()));
        assert!(p.attempts >= 1 && p.age_ms >= 0);
    }
    let store = db.store().await;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.pending, 0);
    assert_eq!(store.sent_kept().await.unwrap(), committed.len() as i64);
}

/// Several relays on one table: every row published exactly once.
pub async fn relays_never_double_publish(db: &TestDb) {
    let rows = if db.dialect == ferry_outbox::Dialect::Sqlite {
        1500
    } else {
        4000
    };
    let outbox = Outbox::new();
    for chunk in 0..rows / 100 {
        let messages: Vec<OutboxMessage> = (0..100)
            .map(|i| {
                let m = OutboxMessage::new("orders", format!("{chunk}-{i}"));
                // Some keyed rows too, so blockers are exercised across relays.
                if i % 4 == 0 {
                    m.ordered_by(format!("key-{}", i % 7))
                } else {
                    m
                }
            })
            .collect();
        db.write(&outbox, &messages, None, Duration::ZERO, true)
            .await
            .unwrap();
    }
    let recorder = Recorder::new();
    let mut relays = Vec::new();
    for _ in 0..4 {
        let mut c = fast_config();
        c.owner = format!("relay-{}", relays.len());
        c.batch = 50;
        relays.push(Relay::start(db.store().await, recorder.clone(), c).unwrap());
    }
    wait_until("all rows published", Duration::from_secs(90), || {
        recorder.count() >= rows
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut claimed = 0;
    for r in relays {
        // After shutdown: every publish in flight has been settled.
        let m = r.metrics().clone();
        r.shutdown().await;
        claimed += m.published.load(Ordering::Relaxed);
    }
    let ids = recorder.ids();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), rows);
    assert_eq!(
        ids.len(),
        rows,
        "{} duplicates across relays",
        ids.len() - rows
    );
    assert_eq!(claimed as usize, rows);
}

/// Writers of a few keys commit in an order the test records (a counter
/// bumped just before commit); two relays publish. Per key, publication
/// order is commit order.
pub async fn per_key_order_is_commit_order(db: &TestDb) {
    db.exec("CREATE TABLE counters (k VARCHAR(32) PRIMARY KEY, n BIGINT NOT NULL)")
        .await;
    let keys = ["a", "b", "c"];
    for k in keys {
        db.exec(&format!("INSERT INTO counters (k, n) VALUES ('{k}', 0)"))
            .await;
    }
    let s = scale(db);
    let recorder = Recorder::new();
    let mut relays = Vec::new();
    for i in 0..2 {
        let mut c = fast_config();
        c.owner = format!("ordered-{i}");
        c.batch = 7;
        relays.push(Relay::start(db.store().await, recorder.clone(), c).unwrap());
    }
    let outbox = Outbox::new();
    let commit_seq: Arc<Mutex<HashMap<String, (String, i64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..s.writers {
        let (native, url, dialect) = (db.native.clone(), db.url.clone(), db.dialect);
        let (outbox, commit_seq) = (outbox.clone(), commit_seq.clone());
        tasks.push(tokio::spawn(async move {
            let db = TestDb::view(url, dialect, native);
            let mut seed = 0xDEAD_BEEF ^ (w as u64 + 7);
            for _ in 0..s.txs_per_writer / 2 {
                let r = pseudo_random(&mut seed);
                let k = keys[(r % 3) as usize];
                let m = OutboxMessage::new("orders", "x").ordered_by(k);
                let hold = Duration::from_millis(r % (s.max_hold_ms + 1));
                let (ids, n) = db.write(&outbox, &[m], Some(k), hold, true).await.unwrap();
                commit_seq
                    .lock()
                    .unwrap()
                    .insert(ids[0].clone(), (k.to_string(), n.unwrap()));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = commit_seq.lock().unwrap().len();
    wait_until("ordered rows published", Duration::from_secs(60), || {
        recorder.count() >= total
    })
    .await;
    for r in relays {
        r.shutdown().await;
    }
    let seq = commit_seq.lock().unwrap();
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in recorder.published.lock().unwrap().iter() {
        let (k, n) = &seq[m.message_id()];
        let prev = last.insert(k.clone(), *n).unwrap_or(0);
        assert_eq!(*n, prev + 1, "key {k}: published commit #{n} after #{prev}");
    }
    assert_eq!(recorder.count(), total);
}

/// A relay that dies mid-publish (its publish never returns, then it is
/// dropped): its rows come back after the lease and are published again;
/// the duplicates are at most what it had claimed.
pub async fn crashed_relay_rows_come_back(db: &TestDb) {
    let outbox = Outbox::new();
    let messages: Vec<OutboxMessage> = (0..300)
        .map(|i| OutboxMessage::new("orders", format!("{i}")))
        .collect();
    db.write(&outbox, &messages, None, Duration::ZERO, true)
        .await
        .unwrap();
    let doomed = Recorder::new();
    doomed.hang.store(true, Ordering::Relaxed);
    let mut c = fast_config();
    c.owner = "doomed".into();
    c.workers = 1;
    c.batch = 40;
    c.lease = Duration::from_secs(2);
    let relay = Relay::start(db.store().await, doomed.clone(), c.clone()).unwrap();
    wait_until(
        "the doomed relay to publish",
        Duration::from_secs(10),
        || doomed.count() > 0,
    )
    .await;
    // "kill": the task is gone without marking anything.
    drop(relay);
    let held = doomed.count();
    assert!(held <= 40, "{held}");
    let started = Instant::now();
    let survivor = Recorder::new();
    c.owner = "survivor".into();
    let relay = Relay::start(db.store().await, survivor.clone(), c).unwrap();
    wait_until("all rows published", Duration::from_secs(30), || {
        survivor.count() >= 300
    })
    .await;
    relay.shutdown().await;
    let ids: HashSet<String> = survivor.ids().into_iter().collect();
    assert_eq!(ids.len(), 300);
    assert_eq!(survivor.count(), 300);
    // The doomed relay's rows were only published again after its lease.
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let dup = doomed.ids().into_iter().filter(|i| ids.contains(i)).count();
    assert_eq!(
        dup, held,
        "the re-published rows are exactly the ones it held"
    );
}

/// Retryable failures back off and succeed; a permanent refusal parks the
/// row as failed, visible to operators, until requeued.
pub async fn failures_retry_then_park(db: &TestDb) {
    let outbox = Outbox::new();
    let good: Vec<OutboxMessage> = (0..20)
        .map(|i| OutboxMessage::new("orders", format!("{i}")))
        .collect();
    db.write(&outbox, &good, None, Duration::ZERO, true)
        .await
        .unwrap();
    db.write(
        &outbox,
        &[OutboxMessage::new("nowhere", "lost?")],
        None,
        Duration::ZERO,
        true,
    )
    .await
    .unwrap();
    let mut recorder = Recorder::new();
    recorder.fail_first.store(3, Ordering::Relaxed);
    recorder.refuse_topic = Some("nowhere".into());
    let relay = Relay::start(db.store().await, recorder.clone(), fast_config()).unwrap();
    wait_until("good rows published", Duration::from_secs(20), || {
        recorder.count() >= 20
    })
    .await;
    let m = relay.metrics().clone();
    wait_until("the bad row parked", Duration::from_secs(10), || {
        m.parked.load(Ordering::Relaxed) == 1
    })
    .await;
    wait_until("gauges refreshed", Duration::from_secs(5), || {
        m.failed_rows.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(m.publish_failures.load(Ordering::Relaxed) >= 3);
    assert!(m.reclaimed.load(Ordering::Relaxed) >= 1);
    relay.shutdown().await;
    let store = db.store().await;
    let failed = store.failed(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].topic, "nowhere");
    assert!(failed[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("no such topic"));
    assert_eq!(store.requeue_failed().await.unwrap(), 1);
    assert_eq!(store.stats().await.unwrap().pending, 1);
}

/// A message the outbox refuses writes nothing, and the caller's
/// transaction goes on.
pub async fn bad_input_writes_nothing(db: &TestDb) {
    let outbox = Outbox::new().with_max_body(16);
    let too_big = OutboxMessage::new("orders", vec![b'x'; 17]);
    let e = db
        .write(&outbox, &[too_big], None, Duration::ZERO, true)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("limit of 16"), "{e}");
    // A batch with one bad message writes none of them.
    let batch = [
        OutboxMessage::new("orders", "fine").ordered_by("k"),
        OutboxMessage::new("orders", "fine too"),
        Message::new("orders", "bad").with_tag("a|b").into(),
    ];
    let e = db
        .write(&outbox, &batch, None, Duration::ZERO, true)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("'|'"), "{e}");
    assert_eq!(db.count("SELECT COUNT(*) FROM ferry_outbox").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM ferry_outbox_keys").await, 0);
}

/// Each message delivered up to three times, concurrently, plus handler
/// failures: the effect is applied exactly once per message.
pub async fn inbox_applies_each_message_once(db: &TestDb) {
    db.exec("CREATE TABLE applied (n BIGINT NOT NULL)").await;
    db.exec("INSERT INTO applied (n) VALUES (0)").await;
    let inbox = Inbox::new();
    let ids: Vec<String> = (0..120).map(|_| ferry_client::new_message_id()).collect();
    let deliveries = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..3u64 {
        let (native, url, dialect) = (db.native.clone(), db.url.clone(), db.dialect);
        let (inbox, ids, deliveries) = (inbox.clone(), ids.clone(), deliveries.clone());
        tasks.push(tokio::spawn(async move {
            let db = TestDb::view(url, dialect, native);
            let mut seed = 77 + w;
            for id in &ids {
                let r = pseudo_random(&mut seed);
                // Worker 2 delivers only some; the first try of a few fails.
                if w == 2 && r % 2 == 0 {
                    continue;
                }
                let fail = r % 11 == 0;
                match db.consume(&inbox, "stock", id, fail).await {
                    Ok(_) => {
                        deliveries.fetch_add(1, Ordering::Relaxed);
                    }
                    // A deadlock between two deliveries of one id (MySQL,
                    // when the first rolls back) is a retryable conflict.
                    Err(e) => assert!(fail || e.is_retryable(), "unexpected: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Whatever every worker failed on gets one more, clean delivery.
    for id in &ids {
        db.consume(&inbox, "stock", id, false).await.unwrap();
    }
    assert_eq!(db.count("SELECT n FROM applied").await, 120);
    assert_eq!(db.count("SELECT COUNT(*) FROM ferry_inbox").await, 120);
    let m = inbox.metrics();
    assert_eq!(m.processed.load(Ordering::Relaxed), 120);
    let total = deliveries.load(Ordering::Relaxed) + ids.len() as u64;
    assert_eq!(m.duplicates.load(Ordering::Relaxed), total - 120);
    // Another consumer has its own record.
    let r = db.consume(&inbox, "billing", &ids[0], false).await.unwrap();
    assert_eq!(r, Processed::Done(()));
    // The window is what the inbox's own cleanup enforces.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let short = inbox.clone().with_window(Duration::from_millis(1));
    let janitor = short.start_cleanup(db.store().await).unwrap();
    wait_until(
        "inbox rows past the window deleted",
        Duration::from_secs(10),
        || short.metrics().cleaned.load(Ordering::Relaxed) >= 121,
    )
    .await;
    janitor.shutdown().await;
    assert_eq!(db.count("SELECT COUNT(*) FROM ferry_inbox").await, 0);
}

/// Cleanup deletes sent rows past the grace period and inbox rows past the
/// window, in batches, and leaves pending rows alone.
pub async fn cleanup_deletes_in_batches(db: &TestDb) {
    db.exec("CREATE TABLE applied (n BIGINT NOT NULL)").await;
    db.exec("INSERT INTO applied (n) VALUES (0)").await;
    let outbox = Outbox::new();
    let messages: Vec<OutboxMessage> = (0..250)
        .map(|i| OutboxMessage::new("orders", format!("{i}")).ordered_by(format!("k{}", i % 5)))
        .collect();
    db.write(&outbox, &messages, None, Duration::ZERO, true)
        .await
        .unwrap();
    let recorder = Recorder::new();
    let relay = Relay::start(db.store().await, recorder.clone(), fast_config()).unwrap();
    wait_until("published", Duration::from_secs(20), || {
        recorder.count() >= 250
    })
    .await;
    relay.shutdown().await;
    db.write(
        &outbox,
        &[OutboxMessage::new("orders", "still pending")],
        None,
        Duration::ZERO,
        true,
    )
    .await
    .unwrap();
    let inbox = Inbox::new();
    for i in 0..30 {
        db.consume(&inbox, "stock", &format!("id-{i}"), false)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let store = db.store().await;
    let config = JanitorConfig {
        keep_sent: Some(Duration::ZERO),
        key_idle: Some(Duration::ZERO),
        inbox_window: Some(Duration::from_millis(1)),
        batch: 40,
        max_batches_per_pass: 3,
        ..JanitorConfig::outbox()
    };
    // 3 batches of 40 per pass: a bounded pass, then the rest.
    let first = ferry_outbox::sweep(&store, &config).await.unwrap();
    assert_eq!(first.sent, 120);
    let mut sent = first.sent;
    let mut inbox_rows = first.inbox;
    for _ in 0..5 {
        let s = ferry_outbox::sweep(&store, &config).await.unwrap();
        sent += s.sent;
        inbox_rows += s.inbox;
    }
    assert_eq!(sent, 250);
    assert_eq!(inbox_rows, 30);
    assert_eq!(db.count("SELECT COUNT(*) FROM ferry_outbox").await, 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM ferry_outbox_keys").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM ferry_inbox").await, 0);
}

/// The gauges see pending rows and their age.
pub async fn gauges_report_pending_rows(db: &TestDb) {
    let outbox = Outbox::new();
    let messages: Vec<OutboxMessage> = (0..5)
        .map(|i| OutboxMessage::new("orders", format!("{i}")))
        .collect();
    db.write(&outbox, &messages, None, Duration::ZERO, true)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = db.store().await.stats().await.unwrap();
    assert_eq!(s.pending, 5);
    assert!(s.oldest_pending_age_ms >= 40, "{s:?}");
    assert_eq!(s.failed, 0);
}

/// A relay's workers split keyed rows by key slot: two shares claim
/// disjoint keys that together cover all, and either takes unkeyed rows.
pub async fn worker_shares_split_keys(db: &TestDb) {
    let outbox = Outbox::new();
    let mut messages: Vec<OutboxMessage> = (0..40)
        .map(|i| OutboxMessage::new("orders", format!("{i}")).ordered_by(format!("k{}", i % 20)))
        .collect();
    messages.extend((0..10).map(|i| OutboxMessage::new("orders", format!("plain {i}"))));
    db.write(&outbox, &messages, None, Duration::ZERO, true)
        .await
        .unwrap();
    let store = db.store().await;
    let lease = Duration::from_secs(30);
    let a = store.claim("a", 5, lease, Some((0, 2))).await.unwrap().rows;
    let b = store.claim("b", 5, lease, Some((1, 2))).await.unwrap().rows;
    // Held rows block later rows of their keys until they are settled.
    let held: Vec<i64> = a.iter().chain(&b).map(|r| r.id).collect();
    store.mark_sent(&held).await.unwrap();
    let a_rest = store
        .claim("a", 100, lease, Some((0, 2)))
        .await
        .unwrap()
        .rows;
    let b_rest = store
        .claim("b", 100, lease, Some((1, 2)))
        .await
        .unwrap()
        .rows;
    let keys = |rows: &[PendingMessage]| -> HashSet<String> {
        rows.iter().filter_map(|r| r.ordering_key.clone()).collect()
    };
    let (ka, kb) = (
        keys(&[a.clone(), a_rest.clone()].concat()),
        keys(&[b.clone(), b_rest.clone()].concat()),
    );
    assert!(ka.is_disjoint(&kb), "{ka:?} {kb:?}");
    assert_eq!(ka.len() + kb.len(), 20);
    for k in &ka {
        assert_eq!(ferry_outbox::key_slot(k) % 2, 0);
    }
    let all = a.len() + b.len() + a_rest.len() + b_rest.len();
    assert_eq!(all, 50, "every row claimed once");
}

/// One bad message, one damaged row and one key that keeps failing hold
/// up nothing else: the bad message alone is parked (not its batch), the
/// damaged row is parked with the reason, and the failing key's blocked
/// rows never fill a claim that other keys' rows could use.
pub async fn one_bad_row_or_key_holds_up_nothing_else(db: &TestDb) {
    let outbox = Outbox::new();
    // The stuck key's rows come first, more than a claim holds.
    let stuck: Vec<OutboxMessage> = (0..120)
        .map(|i| OutboxMessage::new("orders", format!("stuck {i}")).ordered_by("stuck"))
        .collect();
    db.write(&outbox, &stuck, None, Duration::ZERO, true)
        .await
        .unwrap();
    let mut rest: Vec<OutboxMessage> = (0..60)
        .map(|i| {
            OutboxMessage::new("orders", format!("fine {i}")).ordered_by(format!("k{}", i % 3))
        })
        .collect();
    rest.extend((0..30).map(|i| OutboxMessage::new("orders", format!("plain {i}"))));
    rest.push(OutboxMessage::new("orders", "poison"));
    rest.push(OutboxMessage::new("orders", "damaged"));
    let (ids, _) = db
        .write(&outbox, &rest, None, Duration::ZERO, true)
        .await
        .unwrap();
    let damaged = ids.last().unwrap();
    db.exec(&format!(
        "UPDATE ferry_outbox SET keys_json = 'not json' WHERE message_id = '{damaged}'"
    ))
    .await;
    let mut recorder = Recorder::new();
    recorder.refuse_body = Some("poison".into());
    recorder.fail_key = Some("stuck".into());
    let mut c = fast_config();
    c.workers = 1;
    c.batch = 50;
    let relay = Relay::start(db.store().await, recorder.clone(), c).unwrap();
    // 60 keyed + 30 plain; not the poison, not the damaged row.
    wait_until(
        "the other keys' rows published",
        Duration::from_secs(30),
        || recorder.count() >= 90,
    )
    .await;
    let m = relay.metrics().clone();
    wait_until("the poison parked", Duration::from_secs(10), || {
        m.parked.load(Ordering::Relaxed) >= 1
    })
    .await;
    relay.shutdown().await;
    let published = recorder.ids();
    assert_eq!(published.len(), 90, "every fine row once, nothing else");
    let store = db.store().await;
    let failed = store.failed(10).await.unwrap();
    assert_eq!(failed.len(), 2, "{failed:?}");
    let errors: Vec<String> = failed.iter().filter_map(|f| f.last_error.clone()).collect();
    assert!(
        errors.iter().any(|e| e.contains("message refused")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("keys_json")), "{errors:?}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM ferry_outbox WHERE state = 0")
            .await,
        120,
        "the stuck key's rows wait, all of them"
    );
}

/// Every scenario, in turn, each on a fresh database.
#[macro_export]
macro_rules! scenarios {
    ($make:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn late_commits_lose_nothing() {
            let db = $make().await;
            common::late_commits_lose_nothing(&db).await;
            db.drop_database().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn relays_never_double_publish() {
            let db = $make().await;
            common::relays_never_double_publish(&db).await;
            db.drop_database().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn per_key_order_is_commit_order() {
            let db = $make().await;
            common::per_key_order_is_commit_order(&db).await;
            db.drop_database().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn crashed_relay_rows_come_back() {
            let db = $make().await;
            common::crashed_relay_rows_come_back(&db).await;
            db.drop_database().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn failures_retry_then_park() {
            let db = $make().await;
            common::failures_retry_then_park(&db).await;
            db.drop_database().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn bad_input_writes_nothing() {
            let db = $make().await;
            common::bad_input_writes_nothing(&db).await;
            db.drop_database().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn inbox_applies_each_message_once() {
            let db = $make().await;
            common::inbox_applies_each_message_once(&db).await;
            db.drop_database().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn cleanup_deletes_in_batches() {
            let db = $make().await;
            common::cleanup_deletes_in_batches(&db).await;
            db.drop_database().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn worker_shares_split_keys() {
            let db = $make().await;
            common::worker_shares_split_keys(&db).await;
            db.drop_database().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn one_bad_row_or_key_holds_up_nothing_else() {
            let db = $make().await;
            common::one_bad_row_or_key_holds_up_nothing_else(&db).await;
            db.drop_database().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn gauges_report_pending_rows() {
            let db = $make().await;
            common::gauges_report_pending_rows(&db).await;
            db.drop_database().await;
        }
    };
}
