//! What a broker must offer the suite: publish a batch and learn when the
//! broker has it durably; receive messages and settle them. One module per
//! broker; each starts or prepares its broker for one run and cleans up
//! after it, so no run sees another's messages.

pub mod ferry;
pub mod nats;
pub mod rabbitmq;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::workload::Workload;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message as the suite hands it to a driver.
#[derive(Debug, Clone)]
pub struct Payload {
    /// Starts with the suite's header (send time, producer, group,
    /// sequence); the rest is filler up to the workload's size.
    pub body: Bytes,
    /// FIFO workloads: the message group (ordering key).
    pub group: Option<String>,
    /// Delayed workloads: deliver this long after the send.
    pub delay: Option<Duration>,
}

/// Publishes on behalf of one producer. Lanes of the producer call it
/// concurrently; one call is one batch.
pub trait Publisher: Send + Sync + 'static {
    /// Resolves once the broker acknowledged every message of `batch` —
    /// for all drivers of the suite that means after an fsync — or with the
    /// first error. Transactional workloads: the half message is sent and
    /// then committed; the call resolves after the commit is acknowledged.
    fn publish(&self, batch: Vec<Payload>) -> BoxFuture<'_, Result<(), BoxError>>;
}

/// Messages that arrived together, and when.
pub struct Received {
    /// When the receive call returned them, before they were settled.
    pub at: Instant,
    pub bodies: Vec<Bytes>,
}

/// Consumes on behalf of one consumer. Called in a loop by one task:
/// `next`, then `ack`.
pub trait Subscriber: Send + 'static {
    /// Waits (at most about a second) for messages and returns them, not
    /// yet settled; an empty batch when none came.
    fn next(&mut self) -> BoxFuture<'_, Result<Received, BoxError>>;
    /// Settles (acks) everything the last `next` returned. Separate from
    /// `next` so the suite records a FIFO message before the ack lets the
    /// broker hand out the group's next one to another consumer.
    fn ack(&mut self) -> BoxFuture<'_, Result<(), BoxError>>;
}

/// A prepared run: clients connected to a broker with a fresh destination.
pub struct Run {
    pub publishers: Vec<std::sync::Arc<dyn Publisher>>,
    pub subscribers: Vec<Box<dyn Subscriber>>,
    /// The broker's process, for CPU and memory figures.
    pub broker_pid: Option<u32>,
    /// Deletes the destination, stops a broker the driver started.
    pub teardown: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}

/// A broker under test.
pub trait Driver: Send + Sync {
    /// Short name used in tables and JSON ("ferry", "rabbitmq", "nats").
    fn name(&self) -> &'static str;
    /// What the broker is and how it was configured for durability, for
    /// the report.
    fn describe(&self) -> String;
    /// `Some(reason)` when the broker has no equivalent of the workload
    /// (the table then says n/a with the reason).
    fn unsupported(&self, w: &Workload) -> Option<String>;
    /// Starts or prepares the broker for one run of `w`; `run_id` is unique
    /// per run and safe in queue, stream and topic names.
    fn prepare<'a>(
        &'a self,
        w: &'a Workload,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Run, BoxError>>;
}

/// The id of a free loopback TCP port (released at once; a small race is
/// accepted for a benchmark).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What a subscriber receives in one `next`: the first item of `stream`
/// within `wait` (none: an empty batch), then whatever has already arrived,
/// up to `max`, without waiting. An error after the first item ends the
/// batch: what came before it is returned, and the error shows again on
/// the next call. `what` names the stream in errors.
pub async fn ready_batch<S, T, E>(
    stream: &mut S,
    max: usize,
    wait: Duration,
    what: &str,
) -> Result<Vec<T>, BoxError>
where
    S: futures_util::Stream<Item = Result<T, E>> + Unpin,
    E: std::fmt::Display,
{
    use futures_util::{FutureExt, StreamExt};
    let first = match tokio::time::timeout(wait, stream.next()).await {
        Err(_) => return Ok(Vec::new()),
        Ok(None) => return Err(format!("{what} ended").into()),
        Ok(Some(item)) => item.map_err(|e| format!("{what}: {e}"))?,
    };
    let mut batch = vec![first];
    while batch.len() < max {
        match stream.next().now_or_never() {
            Some(Some(Ok(item))) => batch.push(item),
            Some(Some(Err(_))) | Some(None) | None => break,
        }
    }
    Ok(batch)
}

/// A child process (a broker the driver started) killed when dropped, so
/// an error or a panic in the suite never leaves a broker behind.
pub struct Child {
    pub inner: std::process::Child,
    pub name: &'static str,
}

impl Child {
    /// Starts `cmd` (a broker) with its output in `log`, and waits until it
    /// accepts TCP connections on `addr`. Fails within `limit`, or at once
    /// with the tail of the log when the process exits first (a refused
    /// configuration, a taken port).
    pub async fn start(
        mut cmd: std::process::Command,
        name: &'static str,
        log: &std::path::Path,
        addr: &str,
        limit: Duration,
    ) -> Result<Child, BoxError> {
        let file = std::fs::File::create(log)?;
        let inner = cmd
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        let mut child = Child { inner, name };
        let until = Instant::now() + limit;
        while let Err(e) = tokio::net::TcpStream::connect(addr).await {
            child.exited(log)?;
            if Instant::now() > until {
                return Err(
                    format!("{name} does not listen on {addr} after {limit:?}: {e}").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(child)
    }

    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// Fails with the tail of `log` if the process has already exited.
    fn exited(&mut self, log: &std::path::Path) -> Result<(), BoxError> {
        if let Some(status) = self.inner.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!("{} exited ({status}):\n{}", self.name, tail.join("\n")).into());
        }
        Ok(())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.inner.kill();
        let _ = self.inner.wait();
    }
}
