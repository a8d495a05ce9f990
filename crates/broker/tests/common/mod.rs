//! The test harness shared by the core's test files: the core driven with an
//! explicit clock and an in-memory stand-in for the log — decide → "append"
//! (assign an offset) → apply, as the shell does.

#![allow(dead_code)]

use bytes::Bytes;
use ferry_broker::*;
use ferry_record::{encoded_len, Record};

/// The core plus the records it produced, as a log would hold them.
pub struct Harness {
    pub core: Broker,
    pub log: Vec<(u64, u32, Record)>,
    pub next: u64,
    /// Group commit: the log is durable up to here. Records above it were
    /// appended (and applied) but not flushed yet; a crash may lose any
    /// suffix of them. Only [`Harness::flush`] and the crash methods move
    /// it, so tests that never flush ignore it.
    pub committed: u64,
    config: CoreConfig,
    /// Group policies, set again on the core rebuilt after a crash (the
    /// broker keeps them in a metadata file, not the log).
    policies: Vec<(String, GroupPolicy)>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(CoreConfig::default())
    }

    pub fn with_config(config: CoreConfig) -> Self {
        let mut core = Broker::new(config.clone());
        core.create_topic("t", 2).unwrap();
        Harness {
            core,
            log: Vec::new(),
            next: 0,
            committed: 0,
            config,
            policies: Vec::new(),
        }
    }

    pub fn set_policy(&mut self, group: &str, p: GroupPolicy) {
        self.core.set_policy(group, Some(p.clone())).unwrap();
        self.policies.push((group.to_string(), p));
    }

    /// Changes a delivery's invisibility (a nack when short); returns the
    /// delivery with its new receipt.
    pub fn renew(
        &mut self,
        now: i64,
        group: &str,
        d: &Delivery,
        invisible: i64,
    ) -> Result<Delivery, BrokerError> {
        let (rec, handle) = self
            .core
            .plan_renew(now, group, "t", &d.receipt_handle, invisible)?;
        self.commit(rec);
        Ok(Delivery {
            receipt_handle: handle,
            visible_at_ms: now + invisible,
            ..d.clone()
        })
    }

    /// The message id a delivery carries.
    pub fn id_of(&self, d: &Delivery) -> String {
        let (_, _, rec) = self
            .log
            .iter()
            .find(|(o, _, _)| *o == d.log_offset)
            .expect("delivery points into the log");
        match &rec.payload {
            ferry_record::Payload::Message(m) => m.message_id.clone(),
            other => panic!("delivery points at {:?}", other.kind()),
        }
    }

    /// "Appends" and applies a record; returns its log offset.
    pub fn commit(&mut self, rec: Record) -> u64 {
        let len = encoded_len(&rec) as u32;
        let at = self.next;
        self.core.apply(at, len, &rec);
        self.log.push((at, len, rec));
        self.next += len as u64;
        at
    }

    /// Stores any message; returns the log offset of its record.
    pub fn store(&mut self, now: i64, m: &Incoming) -> u64 {
        ferry_broker::validate::message(m, &self.core.config().limits).unwrap();
        self.core.admit_batch(now, std::slice::from_ref(m)).unwrap();
        let rec = self.core.prepare_message(now, m).unwrap();
        self.commit(rec)
    }

    /// Simulates kill -9 and restart: the core is rebuilt from the log.
    pub fn crash_and_recover(&mut self) {
        self.core = self.replayed();
    }

    /// The flusher ran: everything appended so far is durable.
    pub fn flush(&mut self) {
        self.committed = self.next;
    }

    /// How many records lie wholly at or below the committed offset.
    pub fn durable_records(&self) -> usize {
        self.log
            .partition_point(|(o, l, _)| o + *l as u64 <= self.committed)
    }

    /// kill -9 under group commit: the first `keep` records survive (at
    /// least every durable one; the rest is a torn tail that was never
    /// acknowledged), and the core is rebuilt from them. What survived is
    /// durable from then on.
    pub fn crash_keeping(&mut self, keep: usize) {
        assert!(
            (self.durable_records()..=self.log.len()).contains(&keep),
            "a crash cannot lose durable records"
        );
        self.log.truncate(keep);
        self.next = self.log.last().map_or(0, |(o, l, _)| o + *l as u64);
        self.committed = self.next;
        self.core = self.replayed();
    }

    /// Fires every timer due at `now`.
    pub fn fire(&mut self, now: i64) -> usize {
        let mut n = 0;
        while let Some(rec) = self.core.plan_fire(now) {
            self.commit(rec);
            n += 1;
        }
        n
    }

    pub fn send(&mut self, now: i64, id: &str, tag: Option<&str>, queue: u32) {
        let m = incoming(id, tag, queue);
        ferry_broker::validate::message(&m, &self.core.config().limits).unwrap();
        let rec = self.core.prepare_message(now, &m).unwrap();
        self.commit(rec);
    }

    pub fn receive(
        &mut self,
        now: i64,
        group: &str,
        filter: &Filter,
        max: usize,
        invisible: i64,
    ) -> Vec<Delivery> {
        let req = ReceiveRequest {
            group,
            topic: "t",
            filter,
            max_messages: max,
            invisible_ms: invisible,
            client: "consumer-1",
            properties: None,
        };
        let plan = self.core.plan_receive(now, &req, self.next).unwrap();
        for r in plan.records {
            self.commit(r);
        }
        self.core.apply_scans(group, "t", &plan.scans);
        plan.deliveries
    }

    pub fn ack(&mut self, now: i64, group: &str, d: &Delivery) -> Result<(), BrokerError> {
        let rec = self.core.plan_ack(now, group, "t", &d.receipt_handle)?;
        self.commit(rec);
        Ok(())
    }

    /// The topic file as the engine would write it now: each topic's
    /// definition and where it began.
    pub fn topic_file(&self) -> Vec<(String, TopicConfig, u64)> {
        self.core
            .topic_stats()
            .into_iter()
            .map(|t| {
                let config = TopicConfig {
                    queues: t.queues.len() as u32,
                    message_types: t.message_types,
                };
                (t.name, config, t.created_at)
            })
            .collect()
    }

    /// A core rebuilt the way the engine starts: topics from `file`, the
    /// policies, then the first `records` records of the log.
    pub fn restart_from(&self, file: &[(String, TopicConfig, u64)], records: usize) -> Broker {
        let mut core = Broker::new(self.config.clone());
        for (name, config, created_at) in file {
            core.restore_topic(name, *config, *created_at).unwrap();
        }
        for (g, p) in &self.policies {
            core.set_policy(g, Some(p.clone())).unwrap();
        }
        for (o, l, r) in &self.log[..records] {
            core.apply(*o, *l, r);
        }
        core
    }

    /// A fresh core rebuilt from the records alone: what recovery does.
    pub fn replayed(&self) -> Broker {
        let mut core = Broker::new(self.config.clone());
        core.create_topic("t", 2).unwrap();
        for (g, p) in &self.policies {
            core.set_policy(g, Some(p.clone())).unwrap();
        }
        for (o, l, r) in &self.log {
            core.apply(*o, *l, r);
        }
        core
    }
}

pub fn incoming(id: &str, tag: Option<&str>, queue: u32) -> Incoming {
    Incoming {
        topic: "t".into(),
        message_id: id.into(),
        kind: MessageKind::Normal,
        tag: tag.map(String::from),
        keys: vec![],
        message_group: None,
        delivery_timestamp_ms: None,
        check_after_ms: None,
        born_timestamp_ms: 0,
        born_host: "h".into(),
        queue_id: queue,
        body_encoding: 1,
        properties: vec![],
        body: Bytes::from_static(b"x"),
    }
}
