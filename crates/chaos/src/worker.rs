//! The load: producer and consumer processes, each recording its history.
//!
//! Every worker can be killed at any moment and started again with the
//! same id; it reads its own history to carry on where it was:
//!
//! * a FIFO producer resends the last message of each message group whose
//!   send had no answer before it sends the next (so each group's order is
//!   the order of its sequence numbers);
//! * a transactional producer ends every transaction whose local outcome
//!   it recorded but whose end it never saw answered — the "producer killed
//!   between its local commit and its end" case — and its checker answers
//!   from the recorded local outcomes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_client::{
    ClientConfig, ClientError, FilterExpression, HalfId, Message, Producer, ReceivedMessage,
    SimpleConsumer, TransactionChecker, TransactionProducer, TransactionResolution,
};

use crate::history::{self, body_for, key_of, Event, Kind, TxPlan, Writer};

/// Message groups one FIFO producer writes.
pub const FIFO_GROUPS: u64 = 4;
/// How long a consumer keeps a message invisible: short, so messages of a
/// killed consumer come back soon.
const INVISIBLE: Duration = Duration::from_secs(4);
/// Share of deliveries a consumer does not ack (its handler "failed").
const SKIP_PER_MILLE: u64 = 30;
/// How long the late transactions' local work takes: past the first
/// check-back (the run starts the broker with 1 s checks).
const LATE_WORK: Duration = Duration::from_millis(2500);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub endpoint: String,
    pub history_dir: PathBuf,
    pub kind: Kind,
    pub id: u32,
    /// Sends per second (producers).
    pub rate: u32,
    /// Producers only: send nothing new, only finish what the history
    /// left open (and answer check-backs).
    pub drain: bool,
}

impl WorkerConfig {
    fn name(&self, role: &str) -> String {
        format!("{role}-{}-{}", self.kind.name(), self.id)
    }
}

fn is_refusal(e: &ClientError) -> bool {
    matches!(e, ClientError::Status { code, .. } if (40000..50000).contains(code))
        || matches!(e, ClientError::Invalid { .. })
}

/// Starts a client, retrying while the broker is down (it may have been
/// killed just as this worker restarted), for at most a minute.
async fn started<T, F, Fut>(mut start: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match start().await {
            Ok(c) => return Ok(c),
            Err(e) if std::time::Instant::now() < until && !is_refusal(&e) => {
                tracing::warn!(error = %e, "broker not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn shared_writer(config: &WorkerConfig, role: &str) -> std::io::Result<Arc<Mutex<Writer>>> {
    let name = config.name(role);
    let mut w = Writer::open(&config.history_dir.join(format!("{name}.jsonl")))?;
    w.record(Event::Start {
        worker: name,
        pid: std::process::id(),
    });
    Ok(Arc::new(Mutex::new(w)))
}

fn record(w: &Mutex<Writer>, e: Event) {
    w.lock().unwrap_or_else(|p| p.into_inner()).record(e);
}

/// What this producer's earlier incarnations did, read from its history.
#[derive(Default)]
struct Past {
    next_seq: u64,
    /// FIFO: per message group, the last key sent, its sequence number and
    /// whether it was stored.
    last_in_group: BTreeMap<String, (String, u64, bool)>,
    /// Transactions: local outcome, half identity, whether an end was
    /// answered OK.
    locals: HashMap<String, bool>,
    halves: HashMap<String, HalfId>,
    ended: HashMap<String, bool>,
}

fn read_past(config: &WorkerConfig) -> std::io::Result<Past> {
    let name = config.name("producer");
    let (files, _) = history::read_dir(&config.history_dir)?;
    let mut past = Past::default();
    let mut sent: HashMap<String, (Option<String>, u64)> = HashMap::new();
    for (_, lines) in files.iter().filter(|(n, _)| *n == name) {
        for line in lines {
            match &line.event {
                Event::Send {
                    key, group, seq, ..
                } => {
                    past.next_seq = past.next_seq.max(seq + 1);
                    sent.insert(key.clone(), (group.clone(), *seq));
                    if let Some(g) = group {
                        past.last_in_group
                            .insert(g.clone(), (key.clone(), *seq, false));
                    }
                }
                Event::SendOk {
                    key,
                    message_id,
                    transaction_id,
                } => {
                    if let Some((Some(g), _)) = sent.get(key) {
                        if let Some(last) = past.last_in_group.get_mut(g) {
                            if last.0 == *key {
                                last.2 = true;
                            }
                        }
                    }
                    if let Some(t) = transaction_id {
                        past.halves.insert(
                            key.clone(),
                            HalfId {
                                topic: config.kind.topic().to_string(),
                                message_id: message_id.clone(),
                                transaction_id: t.clone(),
                            },
                        );
                    }
                }
                Event::Local { key, commit } => {
                    past.locals.insert(key.clone(), *commit);
                }
                Event::EndOk { key, commit } => {
                    past.ended.insert(key.clone(), *commit);
                }
                _ => {}
            }
        }
    }
    Ok(past)
}

/// Sends `key` once and records the attempt and its outcome.
async fn send_recorded(
    w: &Mutex<Writer>,
    producer: &Producer,
    config: &WorkerConfig,
    key: &str,
    group: Option<String>,
    seq: u64,
) -> bool {
    let kind = config.kind;
    let deliver_at_ms = (kind == Kind::Delayed).then(|| {
        // 0.2 to 3 s ahead, different per key.
        history::now_ms() + 200 + (u64::from(crc32c::crc32c(key.as_bytes())) % 2800) as i64
    });
    let mut m = Message::new(kind.topic(), body_for(key)).with_key(key);
    if let Some(g) = &group {
        m = m.with_message_group(g.clone());
    }
    if let Some(at) = deliver_at_ms {
        m = m.with_delivery_time(UNIX_EPOCH + Duration::from_millis(at as u64));
    }
    record(
        w,
        Event::Send {
            key: key.to_string(),
            kind,
            group,
            seq,
            deliver_at_ms,
            plan: None,
        },
    );
    match producer.send(m).await {
        Ok(r) => {
            record(
                w,
                Event::SendOk {
                    key: key.to_string(),
                    message_id: r.message_id,
                    transaction_id: None,
                },
            );
            true
        }
        Err(e) => {
            record(
                w,
                Event::SendFailed {
                    key: key.to_string(),
                    refused: is_refusal(&e),
                    error: e.to_string(),
                },
            );
            false
        }
    }
}

async fn pause(rate: u32) {
    tokio::time::sleep(Duration::from_micros(1_000_000 / u64::from(rate.max(1)))).await;
}

/// A producer of plain, FIFO or delayed messages; runs until killed.
pub async fn produce(config: WorkerConfig) -> Result<(), crate::BoxError> {
    if config.kind == Kind::Tx {
        return produce_transactions(config).await;
    }
    let past = read_past(&config)?;
    let w = shared_writer(&config, "producer")?;
    let producer = started(|| {
        Producer::builder(ClientConfig::new(config.endpoint.clone()))
            .topics([config.kind.topic()])
            .start()
    })
    .await?;
    let mut seq = past.next_seq;
    if config.kind == Kind::Fifo {
        // Next sequence number per message group; a group's unanswered
        // last message is sent again first.
        let mut next: BTreeMap<String, u64> = BTreeMap::new();
        for g in 0..FIFO_GROUPS {
            let group = format!("mg-{}-{g}", config.id);
            let (n, resend) = match past.last_in_group.get(&group) {
                Some((key, s, stored)) => (*s + u64::from(*stored), (!stored).then(|| key.clone())),
                None => (0, None),
            };
            if let Some(key) = resend {
                while !send_recorded(&w, &producer, &config, &key, Some(group.clone()), n).await {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                next.insert(group, n + 1);
            } else {
                next.insert(group, n);
            }
        }
        if config.drain {
            return Ok(());
        }
        loop {
            for (group, n) in next.iter_mut() {
                let key = format!("fifo-{group}-{n}");
                while !send_recorded(&w, &producer, &config, &key, Some(group.clone()), *n).await {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                *n += 1;
                pause(config.rate).await;
            }
        }
    }
    if config.drain {
        return Ok(());
    }
    loop {
        let key = format!("{}-{}-{seq}", config.kind.name(), config.id);
        send_recorded(&w, &producer, &config, &key, None, seq).await;
        seq += 1;
        pause(config.rate).await;
    }
}

/// What a transaction's sequence number makes of it: most are prompt, some
/// replay their end, some end late against a check-back, some never end.
pub fn tx_plan(seq: u64) -> TxPlan {
    match seq % 10 {
        0 => TxPlan::Silent,
        1 => TxPlan::Late,
        2 => TxPlan::Replayed,
        _ => TxPlan::Prompt,
    }
}

/// Whether a transaction's local work commits (two in three; a late one
/// always does, to contradict the check-back that came first).
fn tx_commits(seq: u64) -> bool {
    tx_plan(seq) == TxPlan::Late || !seq.is_multiple_of(3)
}

fn seq_of(key: &str) -> Option<u64> {
    key.rsplit('-').next()?.parse().ok()
}

/// Answers check-backs from the recorded local outcomes, like an
/// application reading its own database: no local record means the local
/// transaction never committed (or has not yet), so rollback.
struct HistoryChecker {
    writer: Arc<Mutex<Writer>>,
    locals: Arc<Mutex<HashMap<String, bool>>>,
}

impl TransactionChecker for HistoryChecker {
    async fn check(&self, message: &ReceivedMessage) -> TransactionResolution {
        let Some(key) = message.keys.first().cloned() else {
            return TransactionResolution::Unknown;
        };
        let answer = if seq_of(&key).map(tx_plan) == Some(TxPlan::Silent) {
            TransactionResolution::Unknown
        } else {
            match self
                .locals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
            {
                Some(true) => TransactionResolution::Commit,
                Some(false) | None => TransactionResolution::Rollback,
            }
        };
        let text = match answer {
            TransactionResolution::Commit => "commit",
            TransactionResolution::Rollback => "rollback",
            TransactionResolution::Unknown => "unknown",
        };
        record(
            &self.writer,
            Event::Check {
                key,
                answer: text.into(),
            },
        );
        answer
    }
}

async fn end_recorded(
    w: &Mutex<Writer>,
    producer: &TransactionProducer,
    key: &str,
    half: HalfId,
    commit: bool,
) {
    let tx = producer.resume(vec![half]);
    let result = if commit {
        tx.commit().await
    } else {
        tx.rollback().await
    };
    let key = key.to_string();
    match result {
        Ok(()) => record(w, Event::EndOk { key, commit }),
        Err(e) => record(
            w,
            Event::EndFailed {
                key,
                commit,
                error: e.to_string(),
            },
        ),
    }
}

async fn produce_transactions(config: WorkerConfig) -> Result<(), crate::BoxError> {
    let past = read_past(&config)?;
    let w = shared_writer(&config, "producer")?;
    let locals = Arc::new(Mutex::new(past.locals.clone()));
    let producer = Arc::new(
        started(|| {
            let checker = HistoryChecker {
                writer: w.clone(),
                locals: locals.clone(),
            };
            TransactionProducer::builder(ClientConfig::new(config.endpoint.clone()), checker)
                .topics([Kind::Tx.topic()])
                .start()
        })
        .await?,
    );
    // Local outcomes recorded, ends never answered: end them now, at the
    // broker as it is after whatever happened meanwhile.
    for (key, commit) in &past.locals {
        if past.ended.contains_key(key) {
            continue;
        }
        if let Some(half) = past.halves.get(key) {
            end_recorded(&w, &producer, key, half.clone(), *commit).await;
        }
    }
    if config.drain {
        // Stay to answer check-backs until the run stops this process.
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    let mut seq = past.next_seq;
    loop {
        let (w, producer, locals) = (w.clone(), producer.clone(), locals.clone());
        let plan = tx_plan(seq);
        let key = format!("tx-{}-{seq}", config.id);
        // Late transactions run beside the others, so they do not hold
        // up the load.
        let one = async move {
            record(
                &w,
                Event::Send {
                    key: key.clone(),
                    kind: Kind::Tx,
                    group: None,
                    seq,
                    deliver_at_ms: None,
                    plan: Some(plan),
                },
            );
            let mut tx = producer.begin().with_check_after(Duration::from_secs(1));
            let m = Message::new(Kind::Tx.topic(), body_for(&key)).with_key(key.clone());
            match tx.send(m).await {
                Ok(r) => record(
                    &w,
                    Event::SendOk {
                        key: key.clone(),
                        message_id: r.message_id,
                        transaction_id: Some(r.transaction_id),
                    },
                ),
                Err(e) => {
                    record(
                        &w,
                        Event::SendFailed {
                            key,
                            refused: is_refusal(&e),
                            error: e.to_string(),
                        },
                    );
                    return;
                }
            }
            let half = tx.halves()[0].clone();
            match plan {
                TxPlan::Silent => return,
                TxPlan::Late => tokio::time::sleep(LATE_WORK).await,
                TxPlan::Prompt | TxPlan::Replayed => {}
            }
            let commit = tx_commits(seq);
            // The local commit: durable (in the history) before the end.
            locals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), commit);
            record(
                &w,
                Event::Local {
                    key: key.clone(),
                    commit,
                },
            );
            end_recorded(&w, &producer, &key, half.clone(), commit).await;
            if plan == TxPlan::Replayed {
                end_recorded(&w, &producer, &key, half, commit).await;
            }
        };
        if plan == TxPlan::Late {
            tokio::spawn(one);
        } else {
            one.await;
        }
        seq += 1;
        pause(config.rate).await;
    }
}

/// A consumer of one kind's topic; runs until killed.
pub async fn consume(config: WorkerConfig) -> Result<(), crate::BoxError> {
    let w = shared_writer(&config, "consumer")?;
    let kind = config.kind;
    let group = kind.group().to_string();
    let consumer = started(|| {
        SimpleConsumer::builder(ClientConfig::new(config.endpoint.clone()), &group)
            .subscribe(kind.topic(), FilterExpression::all())
            .await_duration(Duration::from_secs(1))
            .start()
    })
    .await?;
    let seed = u64::from(std::process::id())
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = fastrand::Rng::with_seed(seed);
    loop {
        let batch = match consumer.receive(32, INVISIBLE).await {
            Ok(b) => b,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for m in batch {
            let (key, intact) =
                key_of(&m.body).unwrap_or_else(|| (format!("?{}", m.message_id), false));
            record(
                &w,
                Event::Delivered {
                    group: group.clone(),
                    key: key.clone(),
                    message_id: m.message_id.clone(),
                    queue_id: m.queue_id,
                    queue_offset: m.queue_offset,
                    attempt: m.delivery_attempt,
                    intact,
                },
            );
            if rng.u64(..1000) < SKIP_PER_MILLE {
                record(
                    &w,
                    Event::Skipped {
                        group: group.clone(),
                        key,
                        message_id: m.message_id.clone(),
                    },
                );
                continue;
            }
            let ok = consumer.ack(&m).await.is_ok();
            record(
                &w,
                Event::Acked {
                    group: group.clone(),
                    key,
                    message_id: m.message_id.clone(),
                    queue_id: m.queue_id,
                    queue_offset: m.queue_offset,
                    ok,
                },
            );
        }
    }
}
