//! RabbitMQ through lapin (AMQP 0-9-1), against the server already running
//! on this machine. Each run declares a fresh quorum queue and deletes it
//! afterwards.
//!
//! Durability matches the other drivers: a quorum queue appends every
//! message to its Raft log and fsyncs it before the leader counts it as
//! written, and with publisher confirms the server confirms a message only
//! once a quorum (here: the single node) has it on disk. Messages are
//! published persistent (delivery mode 2); quorum queues store all messages
//! durably anyway, the flag only states the intent. Consumers ack manually.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::maybe_done;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};

use super::{
    ready_batch, BoxError, BoxFuture, Driver, Payload, Publisher, Received, Run, Subscriber,
};
use crate::suite::workload::{Kind, Workload};

/// Unacknowledged deliveries the server may push to one consumer, and the
/// most messages one `next` returns.
const PREFETCH: u16 = 256;
/// How long `next` waits for a first delivery.
const WAIT: Duration = Duration::from_secs(1);
/// lapin retries a refused connection with backoff for several seconds;
/// a benchmark should fail with a clear message instead.
const CONNECT_LIMIT: Duration = Duration::from_secs(15);
/// AMQP reply code for a normal close.
const REPLY_SUCCESS: u16 = 200;

pub struct RabbitMq {
    url: String,
    /// The server's version, read once from its connection handshake.
    version: OnceLock<Option<String>>,
}

impl RabbitMq {
    /// `url` as lapin takes it, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub fn new(url: String) -> RabbitMq {
        RabbitMq {
            url,
            version: OnceLock::new(),
        }
    }

    async fn connect(&self, name: &str) -> Result<Connection, BoxError> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match tokio::time::timeout(CONNECT_LIMIT, Connection::connect(&self.url, props)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                Err(format!("cannot reach RabbitMQ at {}: {e}", redacted(&self.url)).into())
            }
            Err(_) => Err(format!(
                "cannot reach RabbitMQ at {}: no connection within {CONNECT_LIMIT:?}",
                redacted(&self.url)
            )
            .into()),
        }
    }
}

impl Driver for RabbitMq {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn describe(&self) -> String {
        let version = match self.version.get() {
            Some(Some(v)) => format!(" {v}"),
            _ => String::new(),
        };
        format!(
            "RabbitMQ{version} — quorum queue (durable; Raft log fsynced before confirm), \
             publisher confirms, persistent messages, manual acks (multiple); \
             FIFO: single active consumer"
        )
    }

    fn unsupported(&self, w: &Workload) -> Option<String> {
        match w.kind {
            Kind::Normal | Kind::Fifo => None,
            Kind::Transactional => Some(
                "RabbitMQ has no half (prepared) messages with check-back; AMQP 0-9-1 tx \
                 only groups a channel's publishes into one commit, a different guarantee"
                    .to_string(),
            ),
            Kind::Delayed => Some(
                "needs the rabbitmq_delayed_message_exchange plugin, not part of the server"
                    .to_string(),
            ),
        }
    }

    fn prepare<'a>(
        &'a self,
        w: &'a Workload,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Run, BoxError>> {
        Box::pin(async move {
            if self.version.get().is_none() {
                let _ = self.version.set(server_version(&self.url).await);
            }
            let queue = format!("ferry-bench-{run_id}");
            let admin = self.connect(&format!("ferry-bench admin {run_id}")).await?;
            let admin_channel = admin.create_channel().await?;
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            if w.kind == Kind::Fifo {
                // A queue is one ordered log; with a single active consumer
                // the server delivers it to one consumer at a time, in
                // order, so every message group's order holds too. The
                // other consumers stand by (and take over if it goes).
                args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            }
            admin_channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args,
                )
                .await
                .map_err(|e| format!("cannot declare quorum queue {queue}: {e}"))?;
            let admin = Arc::new(admin);
            match self.clients(w, run_id, &queue).await {
                Ok((publishers, subscribers, connections)) => {
                    let mut all = connections;
                    all.push(admin);
                    Ok(Run {
                        publishers,
                        subscribers,
                        broker_pid: broker_pid(),
                        teardown: Box::new(move || Box::pin(teardown(admin_channel, queue, all))),
                    })
                }
                Err(e) => {
                    teardown(admin_channel, queue, vec![admin]).await;
                    Err(e)
                }
            }
        })
    }
}

type Clients = (
    Vec<Arc<dyn Publisher>>,
    Vec<Box<dyn Subscriber>>,
    Vec<Arc<Connection>>,
);

impl RabbitMq {
    /// Connects the producers and consumers of one run. Returns every
    /// connection too, so the teardown closes them even while the suite
    /// still holds the publishers.
    async fn clients(&self, w: &Workload, run_id: &str, queue: &str) -> Result<Clients, BoxError> {
        let mut connections = Vec::new();
        let mut publishers: Vec<Arc<dyn Publisher>> = Vec::new();
        // One connection per producer, as separate producer processes
        // would have: each gets its own socket and server-side
        // connection process, so producers don't queue behind each other.
        for p in 0..w.producers {
            let conn = Arc::new(
                self.connect(&format!("ferry-bench producer {p} {run_id}"))
                    .await?,
            );
            connections.push(conn.clone());
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            publishers.push(Arc::new(RabbitPublisher {
                _conn: conn,
                channel,
                queue: queue.into(),
                in_order: Mutex::new(()),
            }));
        }
        // The consumers share one connection, each on its own channel with
        // its own prefetch window. Every lapin connection runs an I/O
        // thread of its own; on a small machine four more of them would
        // take CPU from the broker under test, while deliveries to a few
        // consumers don't need separate sockets.
        let conn = Arc::new(
            self.connect(&format!("ferry-bench consumers {run_id}"))
                .await?,
        );
        connections.push(conn.clone());
        let mut subscribers: Vec<Box<dyn Subscriber>> = Vec::new();
        for c in 0..w.consumers {
            let channel = conn.create_channel().await?;
            channel
                .basic_qos(PREFETCH, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    format!("ferry-bench-{c}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            subscribers.push(Box::new(RabbitSubscriber {
                _conn: conn.clone(),
                channel,
                consumer,
                unacked: None,
            }));
        }
        Ok((publishers, subscribers, connections))
    }
}

/// Deletes the run's queue and closes every connection; failures are only
/// reported, the run's figures stand.
async fn teardown(admin_channel: Channel, queue: String, connections: Vec<Arc<Connection>>) {
    if let Err(e) = admin_channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
    {
        eprintln!("rabbitmq: cannot delete queue {queue}: {e}");
    }
    for conn in connections {
        if conn.status().connected() {
            if let Err(e) = conn.close(REPLY_SUCCESS, "OK".into()).await {
                eprintln!("rabbitmq: closing a connection: {e}");
            }
        }
    }
}

struct RabbitPublisher {
    /// Keeps the connection open as long as the publisher lives.
    _conn: Arc<Connection>,
    channel: Channel,
    queue: ShortString,
    /// Held while a batch's publishes are handed to lapin; see `publish`.
    in_order: Mutex<()>,
}

impl Publisher for RabbitPublisher {
    /// Publishes the whole batch pipelined, then waits for all of its
    /// confirms.
    ///
    /// Lanes share the channel. lapin numbers a publish for confirms
    /// (`register_pending`) and queues its frames in two steps under two
    /// different locks, both in the first poll of `basic_publish`. Two
    /// threads publishing at once could queue frames in the other order
    /// than they took numbers; the server numbers by arrival, and a confirm
    /// would then resolve the wrong message's future. So the first poll of
    /// every publish of a batch happens under `in_order` — a short, purely
    /// synchronous section — and only the waits happen outside it.
    fn publish(&self, batch: Vec<Payload>) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            // Persistent; the message group of FIFO workloads is not sent:
            // the single-active-consumer queue keeps the order of all
            // messages, which includes every group's.
            let props = BasicProperties::default().with_delivery_mode(2);
            let mut sends: Vec<_> = batch
                .iter()
                .map(|p| {
                    Box::pin(maybe_done(self.channel.basic_publish(
                        "".into(),
                        self.queue.clone(),
                        BasicPublishOptions::default(),
                        &p.body,
                        props.clone(),
                    )))
                })
                .collect();
            std::future::poll_fn(|cx| {
                let _in_order = self.in_order.lock().unwrap_or_else(PoisonError::into_inner);
                for send in sends.iter_mut() {
                    let _ = send.as_mut().poll(cx);
                }
                Poll::Ready(())
            })
            .await;
            // All frames are queued; wait until they are written, then for
            // the confirms (each already in flight).
            let mut confirms = Vec::with_capacity(sends.len());
            for send in sends.iter_mut() {
                send.as_mut().await;
                let sent = send.as_mut().take_output().expect("a finished publish");
                confirms.push(sent.map_err(|e| format!("publish to RabbitMQ: {e}"))?);
            }
            for confirm in confirms {
                match confirm
                    .await
                    .map_err(|e| format!("RabbitMQ confirm: {e}"))?
                {
                    Confirmation::Ack(None) => {}
                    Confirmation::Ack(Some(m)) => {
                        return Err(format!("RabbitMQ returned a message: {}", m.reply_text).into())
                    }
                    Confirmation::Nack(_) => return Err("RabbitMQ nacked a message".into()),
                    Confirmation::NotRequested => {
                        return Err("publisher confirms are not enabled on the channel".into())
                    }
                }
            }
            Ok(())
        })
    }
}

struct RabbitSubscriber {
    /// Shared by the run's consumers; kept open as long as one lives.
    _conn: Arc<Connection>,
    channel: Channel,
    consumer: Consumer,
    /// Delivery tag of the last message `next` returned, not yet acked.
    unacked: Option<u64>,
}

impl Subscriber for RabbitSubscriber {
    fn next(&mut self) -> BoxFuture<'_, Result<Received, BoxError>> {
        Box::pin(async move {
            let deliveries = ready_batch(
                &mut self.consumer,
                usize::from(PREFETCH),
                WAIT,
                "RabbitMQ delivery",
            )
            .await?;
            let at = Instant::now();
            let Some(last) = deliveries.last().map(|d| d.delivery_tag) else {
                return Ok(Received {
                    at,
                    bodies: Vec::new(),
                });
            };
            let bodies = deliveries
                .into_iter()
                .map(|d| Bytes::from(d.data))
                .collect();
            self.unacked = Some(last);
            Ok(Received { at, bodies })
        })
    }

    /// One ack with `multiple` settles everything up to the last delivery:
    /// a channel's delivery tags rise in delivery order.
    fn ack(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            if let Some(tag) = self.unacked.take() {
                self.channel
                    .basic_ack(tag, BasicAckOptions { multiple: true })
                    .await
                    .map_err(|e| format!("RabbitMQ ack: {e}"))?;
            }
            Ok(())
        })
    }
}

/// The RabbitMQ server process: the Erlang VM (`beam.smp`) whose command
/// line mentions rabbit.
fn broker_pid() -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != "beam.smp" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("rabbit") {
            return Some(pid);
        }
    }
    None
}

/// The URL without its credentials, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// The server's version from the `version` entry of the server properties
/// in its `connection.start`, which lapin does not expose: opens a plain
/// socket, sends the protocol header, reads that one frame and hangs up.
/// `None` on any surprise; the version is only for the report.
async fn server_version(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    let addr = format!("{}:{}", uri.authority.host, uri.authority.port);
    let read = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        let mut head = [0u8; 7];
        s.read_exact(&mut head).await.ok()?;
        let size = u32::from_be_bytes(head[3..7].try_into().ok()?) as usize;
        if head[0] != 1 || size > 1 << 20 {
            return None;
        }
        let mut payload = vec![0u8; size];
        s.read_exact(&mut payload).await.ok()?;
        Some(payload)
    };
    let payload = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()??;
    start_version(&payload)
}

/// Reads `version` from a `connection.start` method payload: class 10,
/// method 10, protocol major and minor, then the server-properties table.
fn start_version(p: &[u8]) -> Option<String> {
    if p.get(..4)? != [0, 10, 0, 10] {
        return None;
    }
    let len = u32::from_be_bytes(p.get(6..10)?.try_into().ok()?) as usize;
    let mut t = p.get(10..10 + len)?;
    let take = |t: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (a, b) = (t.get(..n)?.to_vec(), t.get(n..)?);
        *t = b;
        Some(a)
    };
    while !t.is_empty() {
        let klen = usize::from(*take(&mut t, 1)?.first()?);
        let key = take(&mut t, klen)?;
        let kind = *take(&mut t, 1)?.first()?;
        let value = match kind {
            // Long string, nested table, byte array: 32-bit length first.
            b'S' | b'F' | b'x' | b'A' => {
                let n = u32::from_be_bytes(take(&mut t, 4)?.try_into().ok()?) as usize;
                take(&mut t, n)?
            }
            b't' | b'b' | b'B' => take(&mut t, 1)?,
            b's' | b'u' => take(&mut t, 2)?,
            b'I' | b'i' | b'f' => take(&mut t, 4)?,
            b'l' | b'd' | b'T' => take(&mut t, 8)?,
            b'D' => take(&mut t, 5)?,
            b'V' => Vec::new(),
            _ => return None,
        };
        if key == b"version" && kind == b'S' {
            return String::from_utf8(value).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_not_shown() {
        assert_eq!(
            redacted("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://…@127.0.0.1:5672/%2f"
        );
        assert_eq!(redacted("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }

    #[test]
    fn version_is_read_from_connection_start() {
        let mut table = Vec::new();
        let mut entry = |key: &str, kind: u8, value: &[u8]| {
            table.push(key.len() as u8);
            table.extend_from_slice(key.as_bytes());
            table.push(kind);
            table.extend_from_slice(value);
        };
        entry("capabilities", b'F', &[0, 0, 0, 0]);
        entry("flag", b't', &[1]);
        let v = b"3.10.8";
        let mut s = (v.len() as u32).to_be_bytes().to_vec();
        s.extend_from_slice(v);
        entry("version", b'S', &s);
        let mut p = vec![0, 10, 0, 10, 0, 9];
        p.extend_from_slice(&(table.len() as u32).to_be_bytes());
        p.extend_from_slice(&table);
        assert_eq!(start_version(&p).as_deref(), Some("3.10.8"));
        assert_eq!(start_version(&p[..8]), None);
    }
}
