//! Ferry through its Rust client, against a `ferry serve` child process
//! started for each run on a fresh data directory with the default (sync)
//! flush: a send is answered only after its record is fsynced.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_client::{
    CheckWith, ClientConfig, FilterExpression, Message, Producer, SimpleConsumer,
    TransactionProducer, TransactionResolution,
};

use super::{
    free_port, BoxError, BoxFuture, Child, Driver, Payload, Publisher, Received, Run, Subscriber,
};
use crate::suite::workload::{Kind, Workload};

/// Messages one receive asks for: the same window as the peers' drivers
/// (RabbitMQ prefetch, NATS fetch batch).
const RECEIVE_BATCH: usize = 256;
/// Long enough that a slow run never sees redeliveries.
const INVISIBLE: Duration = Duration::from_secs(60);
/// How long a started broker may take to listen.
const START_LIMIT: Duration = Duration::from_secs(15);

pub struct Ferry {
    /// The `ferry` binary to start (normally the one running the suite).
    pub bin: PathBuf,
    /// Where run directories are made.
    pub work_dir: PathBuf,
}

impl Driver for Ferry {
    fn name(&self) -> &'static str {
        "ferry"
    }

    fn describe(&self) -> String {
        format!(
            "Ferry {} — `ferry serve` defaults: sync flush (group commit, fsync before every acknowledgement), 8 queues per topic; Rust client, batch acks",
            env!("CARGO_PKG_VERSION")
        )
    }

    fn unsupported(&self, _w: &Workload) -> Option<String> {
        None
    }

    fn prepare<'a>(
        &'a self,
        w: &'a Workload,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Run, BoxError>> {
        Box::pin(async move {
            let dir = tempfile::tempdir_in(&self.work_dir)?;
            let grpc = format!("127.0.0.1:{}", free_port()?);
            let http = format!("127.0.0.1:{}", free_port()?);
            let mut cmd = std::process::Command::new(&self.bin);
            cmd.arg("serve")
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--grpc-listen", &grpc, "--http-listen", &http])
                .env("FERRY_LOG", "warn");
            let log = dir.path().join("ferry.log");
            let child = Child::start(cmd, "ferry serve", &log, &grpc, START_LIMIT).await?;
            let topic = format!("bench-{run_id}");
            let group = format!("bench-{run_id}");
            if w.kind == Kind::Fifo {
                crate::fifo::set_fifo(&http, &group).await?;
            }
            let config = ClientConfig::new(grpc.clone());
            let mut publishers: Vec<Arc<dyn Publisher>> = Vec::new();
            for _ in 0..w.producers {
                let p: Arc<dyn Publisher> = if w.kind == Kind::Transactional {
                    let producer = TransactionProducer::builder(
                        config.clone(),
                        // Every transaction is committed right after its
                        // half message; a check-back only comes for one
                        // whose commit was lost, and it was meant to commit.
                        CheckWith(|_: &ferry_client::ReceivedMessage| {
                            TransactionResolution::Commit
                        }),
                    )
                    .topics([topic.clone()])
                    .start()
                    .await?;
                    Arc::new(TxPublisher {
                        producer,
                        topic: topic.clone(),
                    })
                } else {
                    let producer = Producer::builder(config.clone())
                        .topics([topic.clone()])
                        .start()
                        .await?;
                    Arc::new(PlainPublisher {
                        producer,
                        topic: topic.clone(),
                    })
                };
                publishers.push(p);
            }
            let mut subscribers: Vec<Box<dyn Subscriber>> = Vec::new();
            for _ in 0..w.consumers {
                let consumer = SimpleConsumer::builder(config.clone(), group.clone())
                    .subscribe(topic.clone(), FilterExpression::all())
                    .await_duration(Duration::from_secs(1))
                    .start()
                    .await?;
                subscribers.push(Box::new(FerrySubscriber {
                    consumer,
                    unsettled: Vec::new(),
                }));
            }
            let broker_pid = Some(child.pid());
            Ok(Run {
                publishers,
                subscribers,
                broker_pid,
                teardown: Box::new(move || {
                    Box::pin(async move {
                        drop(child);
                        drop(dir);
                    })
                }),
            })
        })
    }
}

fn message(topic: &str, p: Payload) -> Message {
    let mut m = Message::new(topic, p.body);
    if let Some(g) = p.group {
        m = m.with_message_group(g);
    }
    if let Some(d) = p.delay {
        m = m.with_delay(d);
    }
    m
}

struct PlainPublisher {
    producer: Producer,
    topic: String,
}

impl Publisher for PlainPublisher {
    fn publish(&self, batch: Vec<Payload>) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            if batch.len() == 1 {
                let p = batch.into_iter().next().expect("one");
                self.producer.send(message(&self.topic, p)).await?;
            } else {
                let ms = batch.into_iter().map(|p| message(&self.topic, p)).collect();
                self.producer.send_batch(ms).await?;
            }
            Ok(())
        })
    }
}

struct TxPublisher {
    producer: TransactionProducer,
    topic: String,
}

impl Publisher for TxPublisher {
    fn publish(&self, batch: Vec<Payload>) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            for p in batch {
                let mut tx = self.producer.begin();
                tx.send(message(&self.topic, p)).await?;
                tx.commit().await?;
            }
            Ok(())
        })
    }
}

struct FerrySubscriber {
    consumer: SimpleConsumer,
    unsettled: Vec<ferry_client::ReceivedMessage>,
}

impl Subscriber for FerrySubscriber {
    fn next(&mut self) -> BoxFuture<'_, Result<Received, BoxError>> {
        Box::pin(async move {
            let ms = self.consumer.receive(RECEIVE_BATCH, INVISIBLE).await?;
            let at = Instant::now();
            let bodies = ms.iter().map(|m| m.body.clone()).collect();
            self.unsettled = ms;
            Ok(Received { at, bodies })
        })
    }

    fn ack(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let ms = std::mem::take(&mut self.unsettled);
            if !ms.is_empty() {
                self.consumer.ack_all(&ms).await?;
            }
            Ok(())
        })
    }
}
