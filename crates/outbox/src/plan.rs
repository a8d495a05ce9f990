//! The relay's decisions, as pure functions: which claimed rows may go now
//! without breaking per-key order, how they split into publish lanes and
//! batches, and when a failed row is tried again. No I/O, no clock: the
//! database's clock arrives as an argument.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// What the planner needs of a claimed row.
pub trait Row {
    fn id(&self) -> i64;
    fn ordering_key(&self) -> Option<&str>;
    /// Rows sharing a lane key can share one publish call.
    fn lane_key(&self) -> LaneKey<'_>;
}

/// Rows that may travel in one publish call: same topic, same FIFO group,
/// same kind (a delayed message cannot share a batch with a plain one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaneKey<'a> {
    pub topic: &'a str,
    pub message_group: Option<&'a str>,
    pub delayed: bool,
    pub ordering_key: Option<&'a str>,
}

/// Keeps, of `candidates` (in id order), the rows that may be published
/// now. An unkeyed row always may. A row with ordering key `k` may only if
/// no pending row of `k` outside the candidates has a smaller id:
/// `blockers[k]` is the smallest such id (a row another relay holds, or
/// one waiting out a retry delay). Writers of one key are serialised by
/// the key's lock row, so id order within a key is commit order; keeping
/// every candidate below the blocker keeps that order across relays.
pub fn publishable<R: Row>(candidates: Vec<R>, blockers: &HashMap<String, i64>) -> Vec<R> {
    debug_assert!(candidates.windows(2).all(|w| w[0].id() < w[1].id()));
    candidates
        .into_iter()
        .filter(|r| match r.ordering_key() {
            None => true,
            Some(k) => blockers.get(k).is_none_or(|&b| r.id() < b),
        })
        .collect()
}

/// One unit of publishing: its batches go one after another, in order.
#[derive(Debug)]
pub struct Lane<R> {
    pub batches: Vec<Vec<R>>,
}

/// Splits rows into lanes of at most `max_batch` rows per batch. Rows of
/// one ordering key form one lane whose batches keep id order; unkeyed
/// rows need no order, so each of their batches is a lane of its own and
/// may be published in parallel with the rest.
pub fn lanes<R: Row>(rows: Vec<R>, max_batch: usize) -> Vec<Lane<R>> {
    assert!(max_batch > 0, "max_batch must be positive");
    // BTreeMap: a deterministic lane order, so runs are reproducible.
    let mut grouped: BTreeMap<(Option<String>, LaneOwned), Vec<R>> = BTreeMap::new();
    for r in rows {
        let k = r.lane_key();
        let owned = LaneOwned {
            topic: k.topic.to_string(),
            message_group: k.message_group.map(str::to_string),
            delayed: k.delayed,
        };
        let ordering = k.ordering_key.map(str::to_string);
        grouped.entry((ordering, owned)).or_default().push(r);
    }
    // Rows of one key may sit in different (topic, group) groups; their
    // order must hold across those too, so a key's rows merge into one
    // lane, split into batches wherever the batch key changes.
    let mut keyed: BTreeMap<String, Vec<R>> = BTreeMap::new();
    let mut out = Vec::new();
    for ((ordering, _), rows) in grouped {
        match ordering {
            Some(k) => keyed.entry(k).or_default().extend(rows),
            None => out.extend(
                chunks(rows, max_batch)
                    .into_iter()
                    .map(|b| Lane { batches: vec![b] }),
            ),
        }
    }
    for (_, mut rows) in keyed {
        rows.sort_by_key(Row::id);
        let mut batches: Vec<Vec<R>> = Vec::new();
        for r in rows {
            let fits = batches.last().is_some_and(|b: &Vec<R>| {
                b.len() < max_batch && same_batch(&b[0].lane_key(), &r.lane_key())
            });
            if fits {
                batches.last_mut().expect("checked above").push(r);
            } else {
                batches.push(vec![r]);
            }
        }
        out.push(Lane { batches });
    }
    out
}

fn same_batch(a: &LaneKey<'_>, b: &LaneKey<'_>) -> bool {
    a.topic == b.topic && a.message_group == b.message_group && a.delayed == b.delayed
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct LaneOwned {
    topic: String,
    message_group: Option<String>,
    delayed: bool,
}

fn chunks<R>(rows: Vec<R>, max: usize) -> Vec<Vec<R>> {
    let mut out = Vec::with_capacity(rows.len().div_ceil(max));
    let mut cur = Vec::with_capacity(max.min(rows.len()));
    for r in rows {
        cur.push(r);
        if cur.len() == max {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// How long a row waits before its next try, after `attempts` tries:
/// doubling from `base`, never more than `max`.
pub fn retry_delay(attempts: u32, base: Duration, max: Duration) -> Duration {
    let shift = attempts.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << shift).min(max)
}

/// What to do with a row whose publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again once the delay has passed.
    RetryIn(Duration),
    /// Give up: the row is parked as failed until an operator requeues it.
    Park,
}

/// Decides a failed row's fate from its attempts so far and the error.
pub fn after_failure(
    attempts: u32,
    retryable: bool,
    max_attempts: u32,
    base: Duration,
    max: Duration,
) -> AfterFailure {
    if !retryable || (max_attempts > 0 && attempts >= max_attempts) {
        AfterFailure::Park
    } else {
        AfterFailure::RetryIn(retry_delay(attempts, base, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq)]
    struct R {
        id: i64,
        key: Option<String>,
        topic: String,
        group: Option<String>,
        delayed: bool,
    }

    impl Row for R {
        fn id(&self) -> i64 {
            self.id
        }
        fn ordering_key(&self) -> Option<&str> {
            self.key.as_deref()
        }
        fn lane_key(&self) -> LaneKey<'_> {
            LaneKey {
                topic: &self.topic,
                message_group: self.group.as_deref(),
                delayed: self.delayed,
                ordering_key: self.key.as_deref(),
            }
        }
    }

    fn r(id: i64, key: Option<&str>) -> R {
        R {
            id,
            key: key.map(str::to_string),
            topic: "t".into(),
            group: None,
            delayed: false,
        }
    }

    #[test]
    fn a_blocked_key_keeps_only_rows_before_its_blocker() {
        let rows = vec![
            r(1, Some("a")),
            r(2, None),
            r(3, Some("b")),
            r(5, Some("a")),
        ];
        let blockers = HashMap::from([("a".to_string(), 4)]);
        let kept: Vec<i64> = publishable(rows, &blockers).iter().map(|r| r.id).collect();
        assert_eq!(kept, vec![1, 2, 3]);
    }

    #[test]
    fn keyed_rows_form_one_ordered_lane_and_unkeyed_rows_split() {
        let mut rows: Vec<R> = (1..=10).map(|i| r(i, None)).collect();
        rows.extend((11..=15).map(|i| r(i, Some("k"))));
        let l = lanes(rows, 4);
        // 10 unkeyed rows in batches of 4: 3 lanes; key k: one lane of 2 batches.
        assert_eq!(l.len(), 4);
        let keyed: Vec<&Lane<R>> = l.iter().filter(|l| l.batches[0][0].key.is_some()).collect();
        assert_eq!(keyed.len(), 1);
        let ids: Vec<Vec<i64>> = keyed[0]
            .batches
            .iter()
            .map(|b| b.iter().map(|r| r.id).collect())
            .collect();
        assert_eq!(ids, vec![vec![11, 12, 13, 14], vec![15]]);
    }

    #[test]
    fn a_key_spanning_topics_keeps_its_order_across_batches() {
        let mut a = r(1, Some("k"));
        a.topic = "x".into();
        let b = r(2, Some("k"));
        let mut c = r(3, Some("k"));
        c.topic = "x".into();
        let l = lanes(vec![a, b, c], 10);
        assert_eq!(l.len(), 1);
        let ids: Vec<Vec<i64>> = l[0]
            .batches
            .iter()
            .map(|b| b.iter().map(|r| r.id).collect())
            .collect();
        assert_eq!(ids, vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn failures_back_off_then_park() {
        let (b, m) = (Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(retry_delay(1, b, m), b);
        assert_eq!(retry_delay(3, b, m), Duration::from_millis(400));
        assert_eq!(retry_delay(40, b, m), m);
        assert_eq!(after_failure(2, false, 10, b, m), AfterFailure::Park);
        assert_eq!(after_failure(10, true, 10, b, m), AfterFailure::Park);
        assert_eq!(
            after_failure(9, true, 0, b, m),
            AfterFailure::RetryIn(Duration::from_secs(5))
        );
    }

    fn arb_rows() -> impl Strategy<Value = Vec<R>> {
        proptest::collection::vec(
            (
                proptest::option::of(0u8..4),
                0u8..2,
                proptest::option::of(0u8..2),
                any::<bool>(),
            ),
            0..60,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (k, t, g, d))| R {
                    id: i as i64 * 2 + 1,
                    key: k.map(|k| format!("k{k}")),
                    topic: format!("t{t}"),
                    group: g.map(|g| format!("g{g}")),
                    delayed: d,
                })
                .collect()
        })
    }

    proptest! {
        /// Lanes lose no row, duplicate none, respect the batch limit, never
        /// mix batch keys in a batch, and keep each key's rows in id order
        /// within a single lane.
        #[test]
        fn lanes_partition_rows_and_keep_key_order(rows in arb_rows(), max in 1usize..7) {
            let mut ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let l = lanes(rows, max);
            let mut seen: Vec<i64> = Vec::new();
            let mut key_lanes: HashMap<String, usize> = HashMap::new();
            for (i, lane) in l.iter().enumerate() {
                let mut last_id = 0;
                for b in &lane.batches {
                    prop_assert!(!b.is_empty() && b.len() <= max);
                    for r in b {
                        prop_assert!(same_batch(&b[0].lane_key(), &r.lane_key()));
                        prop_assert_eq!(&b[0].key, &r.key);
                        if let Some(k) = &r.key {
                            prop_assert!(r.id > last_id);
                            last_id = r.id;
                            prop_assert_eq!(*key_lanes.entry(k.clone()).or_insert(i), i);
                        }
                        seen.push(r.id);
                    }
                }
            }
            ids.sort_unstable();
            seen.sort_unstable();
            prop_assert_eq!(ids, seen);
        }

        /// Whatever the blockers, every kept keyed row sits below its key's
        /// blocker, and every unkeyed row is kept.
        #[test]
        fn publishable_never_passes_a_blocker(rows in arb_rows(), b in proptest::collection::vec(0i64..130, 4)) {
            let blockers: HashMap<String, i64> =
                b.iter().enumerate().map(|(i, &id)| (format!("k{i}"), id)).collect();
            let unkeyed = rows.iter().filter(|r| r.key.is_none()).count();
            let kept = publishable(rows, &blockers);
            prop_assert_eq!(kept.iter().filter(|r| r.key.is_none()).count(), unkeyed);
            for r in kept.iter().filter(|r| r.key.is_some()) {
                let k = r.key.as_deref().unwrap();
                prop_assert!(blockers.get(k).is_none_or(|&b| r.id < b));
            }
        }
    }
}
