//! FIFO consumer groups: one message of a message group in flight at a
//! time, in send order, through acks, nacks, expiries, dead letters and
//! restarts — checked under every short interleaving of those events and
//! under random long ones, with an explicit clock.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{incoming, Harness};
use ferry_broker::*;
use ferry_record::Payload;
use proptest::prelude::*;

const T0: i64 = 1_000_000;
const INVISIBLE: i64 = 10_000;

fn fifo_policy(max_attempts: u32) -> GroupPolicy {
    GroupPolicy {
        max_delivery_attempts: max_attempts,
        fifo: true,
        ..GroupPolicy::default()
    }
}

fn fifo_message(id: &str, group: Option<&str>) -> Incoming {
    let mut m = incoming(id, None, 0);
    m.kind = if group.is_some() {
        MessageKind::Fifo
    } else {
        MessageKind::Normal
    };
    m.message_group = group.map(String::from);
    m
}

/// Message ids are `<group>-<seq>`; `-` for none.
fn group_and_seq(id: &str) -> (String, u32) {
    let (g, s) = id.rsplit_once('-').unwrap();
    (g.to_string(), s.parse().unwrap())
}

/// The scenario's world: the harness plus what the consumers know.
struct World {
    h: Harness,
    now: i64,
    /// Deliveries the consumers hold (their latest receipt per message).
    held: Vec<Delivery>,
    acked: BTreeSet<String>,
    dead: BTreeSet<String>,
    /// Deliveries per message id.
    deliveries: BTreeMap<String, u32>,
    sent: Vec<String>,
}

impl World {
    fn new(max_attempts: u32, messages: &[(&str, u32)]) -> World {
        let mut h = Harness::new();
        h.set_policy("g", fifo_policy(max_attempts));
        let mut sent = Vec::new();
        // Interleave the groups' messages so groups share queues and
        // positions.
        let most = messages.iter().map(|(_, n)| *n).max().unwrap_or(0);
        for seq in 0..most {
            for (g, n) in messages {
                if seq < *n {
                    let id = format!("{g}-{seq}");
                    let group = (*g != "none").then_some(*g);
                    h.store(T0, &fifo_message(&id, group));
                    sent.push(id);
                }
            }
        }
        World {
            h,
            now: T0,
            held: Vec::new(),
            acked: BTreeSet::new(),
            dead: BTreeSet::new(),
            deliveries: BTreeMap::new(),
            sent,
        }
    }

    fn settled(&self, id: &str) -> bool {
        self.acked.contains(id) || self.dead.contains(id)
    }

    fn receive(&mut self, max: usize) {
        let req = ReceiveRequest {
            group: "g",
            topic: "t",
            filter: &Filter::All,
            max_messages: max,
            invisible_ms: INVISIBLE,
            client: "consumer-1",
            properties: None,
        };
        let plan = self.h.core.plan_receive(self.now, &req, u64::MAX).unwrap();
        for r in plan.records {
            if let Payload::DeadLetter(d) = &r.payload {
                let e = self.h.core.topic("t").unwrap().queues[d.queue_id as usize]
                    .get(d.queue_offset)
                    .unwrap()
                    .clone();
                let id = self.h.id_of(&Delivery {
                    queue_id: d.queue_id,
                    queue_offset: d.queue_offset,
                    log_offset: e.log_offset,
                    len: e.len,
                    attempt: d.attempts,
                    visible_at_ms: 0,
                    receipt_handle: String::new(),
                });
                assert!(self.dead.insert(id.clone()), "{id} dead-lettered twice");
                assert!(
                    !self.acked.contains(&id),
                    "{id} dead-lettered after its ack"
                );
            }
            self.h.commit(r);
        }
        self.h.core.apply_scans("g", "t", &plan.scans);
        let mut in_batch = BTreeSet::new();
        for d in plan.deliveries {
            let id = self.h.id_of(&d);
            let (g, seq) = group_and_seq(&id);
            assert!(!self.settled(&id), "{id} delivered after it was settled");
            if g != "none" {
                assert!(
                    in_batch.insert(g.clone()),
                    "two messages of {g} in one batch"
                );
                for earlier in 0..seq {
                    let e = format!("{g}-{earlier}");
                    assert!(
                        self.settled(&e),
                        "{id} delivered while {e} was not yet acked or dead-lettered"
                    );
                }
            }
            let n = self.deliveries.entry(id.clone()).or_default();
            *n += 1;
            assert_eq!(d.attempt, *n, "{id}: attempt numbers count deliveries");
            self.held
                .retain(|h| (h.queue_id, h.queue_offset) != (d.queue_id, d.queue_offset));
            self.held.push(d);
        }
    }

    /// Acks the consumer's delivery at `i` (of those it holds); a stale
    /// receipt (the message was delivered again since) is refused.
    fn ack(&mut self, i: usize) {
        if self.held.is_empty() {
            return;
        }
        let d = self.held.remove(i % self.held.len());
        let id = self.h.id_of(&d);
        match self.h.ack(self.now, "g", &d) {
            Ok(()) => {
                assert!(self.acked.insert(id.clone()), "{id} acked twice");
                assert!(!self.dead.contains(&id), "{id} acked after dead-lettering");
            }
            Err(BrokerError::InvalidReceiptHandle(_)) => {
                assert!(
                    d.visible_at_ms <= self.now || self.settled(&id),
                    "a receipt still valid was refused"
                );
            }
            Err(e) => panic!("ack failed: {e}"),
        }
    }

    /// Nacks the oldest held delivery: visible again in 1 s.
    fn nack(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let d = self.held.remove(0);
        if let Ok(d) = self.h.renew(self.now, "g", &d, 1_000) {
            self.held.push(d);
        }
    }

    fn restart(&mut self) {
        self.h.crash_and_recover();
    }

    /// Receives and acks until everything is settled; fails if that takes
    /// unreasonably long (a stuck message group).
    fn drain(&mut self) {
        for _ in 0..500 {
            if self.sent.iter().all(|id| self.settled(id)) {
                break;
            }
            self.now += INVISIBLE + 1;
            self.receive(32);
            while !self.held.is_empty() {
                self.ack(0);
            }
        }
        for id in &self.sent {
            assert!(self.settled(id), "{id} never settled");
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Receive1,
    Receive4,
    AckOldest,
    AckNewest,
    Nack,
    Expire,
    Restart,
}

const OPS: [Op; 7] = [
    Op::Receive1,
    Op::Receive4,
    Op::AckOldest,
    Op::AckNewest,
    Op::Nack,
    Op::Expire,
    Op::Restart,
];

fn run(ops: &[Op], max_attempts: u32) {
    let mut w = World::new(max_attempts, &[("a", 3), ("b", 2), ("none", 1)]);
    for op in ops {
        match op {
            Op::Receive1 => w.receive(1),
            Op::Receive4 => w.receive(4),
            Op::AckOldest => w.ack(0),
            Op::AckNewest => w.ack(usize::MAX),
            Op::Nack => w.nack(),
            Op::Expire => w.now += INVISIBLE + 1,
            Op::Restart => w.restart(),
        }
    }
    w.drain();
}

/// Every sequence of up to five events, each followed by a full drain.
#[test]
fn fifo_order_holds_under_every_short_interleaving() {
    let mut seq = Vec::new();
    let mut runs = 0;
    fn each(seq: &mut Vec<Op>, depth: usize, runs: &mut usize) {
        run(seq, 2);
        *runs += 1;
        if depth == 0 {
            return;
        }
        for op in OPS {
            seq.push(op);
            each(seq, depth - 1, runs);
            seq.pop();
        }
    }
    each(&mut seq, 5, &mut runs);
    assert_eq!(runs, (0..=5).map(|d| 7usize.pow(d)).sum::<usize>());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn fifo_order_holds_under_random_long_interleavings(
        ops in proptest::collection::vec(0..OPS.len(), 0..60),
        max_attempts in 1u32..5,
    ) {
        let ops: Vec<Op> = ops.into_iter().map(|i| OPS[i]).collect();
        run(&ops, max_attempts);
    }
}

#[test]
fn a_slow_message_group_does_not_hold_up_the_others() {
    // All in one queue: "slow" first, then "fast" messages behind it.
    let mut w = World::new(17, &[("slow", 3), ("fast", 5)]);
    w.receive(32);
    let ids: Vec<String> = w.held.iter().map(|d| w.h.id_of(d)).collect();
    assert_eq!(ids, ["slow-0", "fast-0"]);
    // The slow consumer keeps slow-0; fast ones are acked one by one and
    // keep coming, in order.
    let mut fast = vec!["fast-0".to_string()];
    for _ in 0..10 {
        let i = w.held.iter().position(|d| w.h.id_of(d).starts_with("fast"));
        let Some(i) = i else { break };
        w.ack(i);
        w.receive(32);
        for d in &w.held {
            let id = w.h.id_of(d);
            if id.starts_with("fast") && !fast.contains(&id) {
                fast.push(id);
            }
        }
    }
    assert_eq!(fast, ["fast-0", "fast-1", "fast-2", "fast-3", "fast-4"]);
    assert!(
        !w.deliveries.contains_key("slow-1"),
        "slow-1 went out early"
    );
    // slow-0 acked: slow-1 follows.
    let i = w
        .held
        .iter()
        .position(|d| w.h.id_of(d) == "slow-0")
        .unwrap();
    w.ack(i);
    w.receive(32);
    assert!(w.held.iter().any(|d| w.h.id_of(d) == "slow-1"));
}

#[test]
fn a_group_waits_behind_its_redelivered_head_and_dead_letter_releases_it() {
    let mut w = World::new(3, &[("a", 2)]);
    for attempt in 1..=3 {
        w.receive(32);
        let ids: Vec<String> = w.held.iter().map(|d| w.h.id_of(d)).collect();
        assert_eq!(ids, ["a-0"], "attempt {attempt}");
        assert_eq!(w.held[0].attempt, attempt);
        w.held.clear();
        w.now += INVISIBLE + 1;
        w.restart();
    }
    // The fourth attempt is not made: a-0 goes to the dead-letter topic and
    // a-1 is next.
    w.receive(32);
    assert!(w.dead.contains("a-0"));
    assert!(w.held.is_empty());
    w.receive(32);
    let ids: Vec<String> = w.held.iter().map(|d| w.h.id_of(d)).collect();
    assert_eq!(ids, ["a-1"]);
}

#[test]
fn held_messages_are_found_again_after_a_restart() {
    let mut w = World::new(17, &[("a", 3), ("b", 3)]);
    w.receive(32);
    assert_eq!(w.held.len(), 2);
    w.restart();
    // Still one per group in flight: nothing new until an ack.
    w.receive(32);
    assert_eq!(w.held.len(), 2);
    w.ack(0);
    w.receive(32);
    assert_eq!(w.held.len(), 2);
    w.drain();
}

#[test]
fn a_non_fifo_group_takes_group_messages_freely() {
    let mut h = Harness::new();
    for i in 0..3 {
        h.store(T0, &fifo_message(&format!("a-{i}"), Some("a")));
    }
    let got = h.receive(T0, "plain", &Filter::All, 32, INVISIBLE);
    assert_eq!(got.len(), 3);
}

#[test]
fn switching_fifo_off_and_on_loses_nothing() {
    let mut w = World::new(17, &[("a", 4), ("b", 4)]);
    w.receive(32);
    assert_eq!(w.held.len(), 2);
    // Not FIFO any more: everything not in flight goes out at once.
    w.h.set_policy("g", GroupPolicy::default());
    let rest = w.h.receive(w.now, "g", &Filter::All, 32, INVISIBLE);
    assert_eq!(rest.len(), 6);
    for d in rest.iter().chain(w.held.iter()) {
        w.h.ack(w.now, "g", d).unwrap();
    }
    w.held.clear();
    // FIFO again: nothing left, nothing delivered twice.
    w.h.set_policy("g", fifo_policy(17));
    assert!(w
        .h
        .receive(w.now, "g", &Filter::All, 32, INVISIBLE)
        .is_empty());
    w.h.crash_and_recover();
    w.now += INVISIBLE + 1;
    assert!(w
        .h
        .receive(w.now, "g", &Filter::All, 32, INVISIBLE)
        .is_empty());
}

#[test]
fn held_messages_per_queue_are_bounded_and_drain_in_order() {
    let mut config = CoreConfig::default();
    config.limits.max_fifo_held_per_queue = 3;
    let mut h = Harness::with_config(config);
    h.set_policy("g", fifo_policy(17));
    for i in 0..6 {
        h.store(T0, &fifo_message(&format!("slow-{i}"), Some("slow")));
    }
    // A message of no group on the same queue, behind them.
    let same_queue = crc32c::crc32c(b"slow") % 2;
    let mut free = fifo_message("free-0", None);
    free.queue_id = same_queue;
    h.store(T0, &free);
    let got = h.receive(T0, "g", &Filter::All, 32, INVISIBLE);
    let ids: Vec<String> = got.iter().map(|d| h.id_of(d)).collect();
    // slow-1..3 are held; the scan stops there, so free-0 waits too.
    assert_eq!(ids, ["slow-0"]);
    let mut order = ids;
    let mut pending = got;
    for _ in 0..20 {
        for d in pending.drain(..) {
            h.ack(T0, "g", &d).unwrap();
        }
        pending = h.receive(T0, "g", &Filter::All, 32, INVISIBLE);
        order.extend(pending.iter().map(|d| h.id_of(d)));
    }
    let slow: Vec<&String> = order.iter().filter(|id| id.starts_with("slow")).collect();
    assert_eq!(
        slow,
        ["slow-0", "slow-1", "slow-2", "slow-3", "slow-4", "slow-5"]
    );
    assert!(order.contains(&"free-0".to_string()));
    assert_eq!(order.len(), 7);
}
