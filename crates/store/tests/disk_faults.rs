//! The commit log under disk faults, injected by `FaultyDisk`: write EIO,
//! write ENOSPC, fsync EIO, torn writes and faults while rolling to a new
//! segment, each with concurrent appenders. Nothing acknowledged is lost,
//! nothing is acknowledged after the fault, every later append is refused
//! with a clear error, a heal is refused while the fault persists and
//! brings the log back once it clears; the reopened log holds exactly the
//! acknowledged records.
//!
//! Then a power-loss loop: random appends in sync mode, the power cut at a
//! random operation, the unsynced bytes partly lost and garbled, reopen —
//! for many seeds (`FERRY_POWER_LOSS_SEEDS`, default 200). Run with
//! `--nocapture` to see its one-line summary.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_record::{MessageRecord, Payload, Record};
use ferry_store::faults::{Fault, FaultyDisk, SplitMix64};
use ferry_store::{segment, FlushMode, Log, LogConfig, RecoveryReport, StoreError};

fn record(id: &str, body_len: usize, fill: u64) -> Record {
    let mut rng = SplitMix64::new(fill);
    Record {
        term: 0,
        timestamp_ms: 1_700_000_000_000,
        payload: Payload::Message(MessageRecord {
            topic: "faults".into(),
            queue_id: 0,
            queue_offset: 0,
            message_id: id.into(),
            message_type: 1,
            body_encoding: 1,
            tag: None,
            keys: vec![],
            message_group: None,
            delivery_timestamp_ms: None,
            check_after_ms: None,
            born_timestamp_ms: 1,
            born_host: "h".into(),
            properties: vec![],
            body: Bytes::from(
                (0..body_len)
                    .map(|_| rng.next_u64() as u8)
                    .collect::<Vec<u8>>(),
            ),
        }),
    }
}

fn config(dir: &Path, disk: Option<Arc<FaultyDisk>>, segment_bytes: u64) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.segment_bytes = segment_bytes;
    c.flush = FlushMode::Sync;
    c.disk_hook = disk.map(|d| d as Arc<dyn ferry_store::DiskHook>);
    c
}

type Replayed = Vec<(u64, u32, Record)>;

fn open(c: LogConfig) -> (Log, Replayed, RecoveryReport) {
    let mut seen = Vec::new();
    let (log, report) = Log::open(c, &mut |o, l, r| seen.push((o, l, r))).expect("open");
    (log, seen, report)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Waits (bounded) until `cond` holds.
fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The refusal of a failed log: `Failed`, saying why.
fn assert_refusal(e: &StoreError) {
    assert!(
        matches!(e, StoreError::Failed(_)),
        "expected Failed, got {e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("commit log refuses writes after a disk fault"),
        "unclear refusal: {text}"
    );
}

#[derive(Debug, Clone)]
struct Appended {
    offset: u64,
    len: u32,
    rec: Record,
}

#[derive(Debug, Default)]
struct Outcome {
    /// `wait_committed_in` returned OK.
    acked: Vec<Appended>,
    /// Appended, but the wait failed.
    unacked: Vec<Appended>,
    /// Appends refused.
    refused: u64,
}

/// Appends from `threads` threads, each until `stop` or `per_thread`
/// appends, waiting for each record.
fn appenders(
    log: &Arc<Log>,
    threads: usize,
    per_thread: usize,
    tag: &str,
    stop: &Arc<AtomicBool>,
    refusals: &Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<Outcome>> {
    (0..threads)
        .map(|t| {
            let log = log.clone();
            let stop = stop.clone();
            let refusals = refusals.clone();
            let tag = format!("{tag}-{t}");
            std::thread::spawn(move || {
                let rt = runtime();
                let mut out = Outcome::default();
                for i in 0..per_thread {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let rec = record(&format!("{tag}-{i}"), 20 + (i * 37) % 600, i as u64);
                    let epoch = log.epoch();
                    match log.append(&rec) {
                        Ok((offset, len)) => {
                            let a = Appended { offset, len, rec };
                            match rt.block_on(log.wait_committed_in(epoch, offset + len as u64)) {
                                Ok(()) => out.acked.push(a),
                                Err(e) => {
                                    assert_refusal(&e);
                                    out.unacked.push(a);
                                }
                            }
                        }
                        Err(e) => {
                            assert_refusal(&e);
                            out.refused += 1;
                            refusals.fetch_add(1, Ordering::Relaxed);
                            // Paces the retries; not an assertion.
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                out
            })
        })
        .collect()
}

fn join(handles: Vec<std::thread::JoinHandle<Outcome>>) -> Outcome {
    let mut all = Outcome::default();
    for h in handles {
        let o = h.join().expect("appender panicked");
        all.acked.extend(o.acked);
        all.unacked.extend(o.unacked);
        all.refused += o.refused;
    }
    all
}

fn segment_bases(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| segment::parse_name(&e.unwrap().file_name().to_string_lossy()))
        .collect();
    v.sort_unstable();
    v
}

struct Scenario {
    name: &'static str,
    segment_bytes: u64,
    flush: FlushMode,
    arm: fn(&FaultyDisk),
    /// The fault stays until cleared: a heal must be refused meanwhile.
    persists: bool,
    /// Words the failure reason must hold.
    reason: &'static str,
    /// The fault hits a segment roll after the new file exists: a file at
    /// or above the committed end must be there before the heal.
    leaves_segment: bool,
}

fn run(s: &Scenario) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::new(0xFA));
    let mut c = config(dir.path(), Some(disk.clone()), s.segment_bytes);
    c.flush = s.flush;
    c.async_flush_interval = Duration::from_millis(5);
    let (log, _, _) = open(c);
    let log = Arc::new(log);
    let limit = Duration::from_secs(20);

    // Phase 1: four appenders; the fault comes once some are committed.
    let stop = Arc::new(AtomicBool::new(false));
    let refusals = Arc::new(AtomicU64::new(0));
    let handles = appenders(&log, 4, usize::MAX, "before", &stop, &refusals);
    wait_until("first commits", limit, || log.progress().committed > 20_000);
    (s.arm)(&disk);
    wait_until("the failure", limit, || log.progress().failed.is_some());
    wait_until("refused appends", limit, || {
        refusals.load(Ordering::Relaxed) >= 40
    });
    stop.store(true, Ordering::Relaxed);
    let before = join(handles);
    assert!(before.refused >= 40, "{}", s.name);
    assert!(!before.acked.is_empty(), "{}", s.name);
    let failure = log.progress().failed.expect("failed");
    assert!(
        failure.contains(s.reason),
        "{}: failure {failure:?} should mention {:?}",
        s.name,
        s.reason
    );
    assert!(
        disk.faults_injected() > 0,
        "{}: no fault was injected",
        s.name
    );
    let committed = log.progress().committed;

    // While failed: appends refused, nothing above the committed end
    // readable, every acknowledged record readable and identical.
    assert_refusal(&log.append(&record("late", 10, 0)).unwrap_err());
    assert!(
        matches!(log.read_at(committed), Err(StoreError::OutOfRange { .. })),
        "{}: a read above the committed end must be refused",
        s.name
    );
    for a in &before.acked {
        assert!(a.offset + a.len as u64 <= committed, "{}", s.name);
        assert_eq!(log.read(a.offset, a.len).unwrap(), a.rec, "{}", s.name);
    }
    for u in &before.unacked {
        assert!(
            u.offset + u.len as u64 > committed,
            "{}: a refused wait for a committed record",
            s.name
        );
    }
    if s.leaves_segment {
        assert!(
            segment_bases(dir.path()).iter().any(|b| *b >= committed),
            "{}: the interrupted roll should have left a segment file",
            s.name
        );
    }

    // A heal is refused while the fault persists, and changes nothing.
    if s.persists {
        for _ in 0..3 {
            let e = log
                .heal()
                .expect_err("heal must fail while the fault persists");
            assert!(matches!(e, StoreError::Io { .. }), "{}: {e:?}", s.name);
            assert!(log.progress().failed.is_some(), "{}", s.name);
            assert_eq!(log.progress().committed, committed, "{}", s.name);
            assert_refusal(&log.append(&record("late", 10, 0)).unwrap_err());
        }
    }

    disk.clear();
    assert!(
        log.heal().expect("heal once the fault cleared"),
        "{}",
        s.name
    );
    assert!(!log.heal().unwrap(), "{}: nothing left to heal", s.name);
    let p = log.progress();
    assert_eq!(p.failed, None, "{}", s.name);
    assert_eq!(p.committed, committed, "{}", s.name);
    assert_eq!(p.epoch, 1, "{}", s.name);
    assert_eq!(log.next_offset(), committed, "{}", s.name);
    let bases = segment_bases(dir.path());
    assert!(
        bases.iter().all(|b| *b < committed),
        "{}: a segment at or above the committed end survived the heal: {bases:?}",
        s.name,
    );
    // The segment holding the committed end ends there: nothing torn or
    // unacknowledged is left above it.
    let last = *bases.last().expect("a segment");
    let on_disk = std::fs::metadata(dir.path().join(segment::file_name(last)))
        .unwrap()
        .len();
    assert_eq!(
        on_disk,
        segment::HEADER_LEN + committed - last,
        "{}: bytes above the committed end after the heal",
        s.name
    );

    // Phase 2: every append succeeds again.
    let stop = Arc::new(AtomicBool::new(false));
    let handles = appenders(&log, 4, 60, "after", &stop, &refusals);
    let after = join(handles);
    assert_eq!(after.acked.len(), 240, "{}: {:?}", s.name, after.unacked);
    assert_eq!(after.refused, 0, "{}", s.name);
    // Waits for records dropped by the heal fail, though their offsets
    // are committed again now.
    let rt = runtime();
    for u in before.unacked.iter().take(8) {
        let end = u.offset + u.len as u64;
        assert!(log.progress().committed >= end);
        let e = rt.block_on(log.wait_committed_in(0, end)).unwrap_err();
        assert_refusal(&e);
    }
    drop(rt);
    drop(Arc::try_unwrap(log).ok().expect("appenders are done"));

    // Reopened without faults: exactly the acknowledged records, byte for
    // byte, and nothing torn to cut.
    let (_log, seen, report) = open(config(dir.path(), None, s.segment_bytes));
    assert_eq!(report.truncated_bytes, 0, "{}: {report:?}", s.name);
    assert!(report.dropped.is_empty(), "{}: {report:?}", s.name);
    assert!(report.damaged_segments.is_empty(), "{}: {report:?}", s.name);
    let mut acked: Vec<Appended> = before.acked.into_iter().chain(after.acked).collect();
    acked.sort_by_key(|a| a.offset);
    assert_eq!(seen.len(), acked.len(), "{}", s.name);
    for ((o, l, r), a) in seen.iter().zip(&acked) {
        assert_eq!((*o, *l), (a.offset, a.len), "{}", s.name);
        assert_eq!(*r, a.rec, "{}", s.name);
    }
}

#[test]
fn write_eio_refuses_writes_until_healed() {
    run(&Scenario {
        name: "write EIO",
        segment_bytes: 64 << 10,
        flush: FlushMode::Sync,
        arm: |d| d.fail_from_now(Fault::WriteEio),
        persists: true,
        reason: "Input/output error",
        leaves_segment: false,
    });
}

#[test]
fn write_enospc_refuses_writes_until_healed() {
    run(&Scenario {
        name: "write ENOSPC",
        segment_bytes: 64 << 10,
        flush: FlushMode::Sync,
        arm: |d| d.fail_from_now(Fault::WriteEnospc),
        persists: true,
        reason: "No space left on device",
        leaves_segment: false,
    });
}

#[test]
fn fsync_eio_refuses_writes_until_healed() {
    run(&Scenario {
        name: "fsync EIO",
        segment_bytes: 64 << 10,
        flush: FlushMode::Sync,
        arm: |d| d.fail_from_now(Fault::SyncEio),
        persists: true,
        reason: "Input/output error",
        leaves_segment: false,
    });
}

#[test]
fn torn_write_refuses_writes_until_healed() {
    run(&Scenario {
        name: "torn write",
        segment_bytes: 64 << 10,
        flush: FlushMode::Sync,
        arm: |d| d.fail_from_now(Fault::TornWrite),
        persists: true,
        reason: "Input/output error",
        leaves_segment: false,
    });
}

#[test]
fn write_eio_in_async_mode_refuses_writes_until_healed() {
    run(&Scenario {
        name: "write EIO, async",
        segment_bytes: 64 << 10,
        flush: FlushMode::Async,
        arm: |d| d.fail_from_now(Fault::WriteEio),
        persists: true,
        reason: "Input/output error",
        leaves_segment: false,
    });
}

#[test]
fn a_roll_failing_after_creating_its_file_is_undone_by_the_heal() {
    run(&Scenario {
        name: "roll: directory fsync EIO",
        segment_bytes: 4 << 10,
        flush: FlushMode::Sync,
        arm: |d| d.fail_from_now(Fault::DirSyncEio),
        persists: true,
        reason: "syncing directory",
        leaves_segment: true,
    });
}

#[test]
fn a_roll_failing_to_create_its_file_heals_at_once() {
    run(&Scenario {
        name: "roll: create EIO once",
        segment_bytes: 4 << 10,
        flush: FlushMode::Sync,
        arm: |d| d.fail_nth(Fault::CreateEio, 1),
        persists: false,
        reason: "creating segment",
        leaves_segment: false,
    });
}

#[test]
fn one_shot_faults_heal_at_once() {
    for (name, fault) in [
        ("write EIO once", Fault::WriteEio),
        ("fsync EIO once", Fault::SyncEio),
        ("torn write once", Fault::TornWrite),
    ] {
        let s = Scenario {
            name,
            segment_bytes: 8 << 10,
            flush: FlushMode::Sync,
            arm: match fault {
                Fault::WriteEio => |d| d.fail_nth(Fault::WriteEio, 3),
                Fault::SyncEio => |d| d.fail_nth(Fault::SyncEio, 3),
                _ => |d| d.fail_nth(Fault::TornWrite, 3),
            },
            persists: false,
            reason: "error",
            leaves_segment: false,
        };
        run(&s);
    }
}

/// A record appended just before the failure and dropped by the heal: its
/// wait fails even after new records reuse its offsets, while a record
/// committed before the failure is still reported committed.
#[test]
fn a_wait_for_a_dropped_record_fails_after_its_offset_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::new(1));
    let (log, _, _) = open(config(dir.path(), Some(disk.clone()), 1 << 20));
    let rt = runtime();
    let a = record("a", 100, 1);
    let (ao, al) = log.append(&a).unwrap();
    rt.block_on(log.wait_committed_in(0, ao + al as u64))
        .unwrap();

    disk.fail_nth(Fault::SyncEio, 1);
    let epoch = log.epoch();
    let b = record("b", 100, 2);
    let (bo, bl) = log.append(&b).unwrap();
    wait_until("the failure", Duration::from_secs(10), || {
        log.progress().failed.is_some()
    });
    assert!(log.heal().unwrap());
    assert_eq!(log.epoch(), epoch + 1);

    let c = record("c", 300, 3);
    let (co, cl) = log.append(&c).unwrap();
    assert_eq!(co, bo, "the dropped record's offset is reused");
    rt.block_on(log.wait_committed_in(epoch + 1, co + cl as u64))
        .unwrap();
    assert!(log.progress().committed >= bo + bl as u64);

    let e = rt
        .block_on(log.wait_committed_in(epoch, bo + bl as u64))
        .unwrap_err();
    assert_refusal(&e);
    assert!(e.to_string().contains("dropped"), "{e}");
    rt.block_on(log.wait_committed_in(epoch, ao + al as u64))
        .expect("committed before the failure");
    assert_eq!(log.read(co, cl).unwrap(), c);
    drop(log);

    let (_log, seen, _) = open(config(dir.path(), None, 1 << 20));
    let ids: Vec<Record> = seen.into_iter().map(|(_, _, r)| r).collect();
    assert_eq!(ids, vec![a, c]);
}

/// The roll to a new segment succeeds, then the first write into it
/// fails: the new segment (in the segment map already, holding nothing
/// committed) is removed from the map and the directory by the heal, and
/// the next roll creates it afresh.
#[test]
fn a_failed_first_write_into_a_new_segment_is_undone_by_the_heal() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::new(4));
    let segment_bytes = 4096;
    let (log, _, _) = open(config(dir.path(), Some(disk.clone()), segment_bytes));
    let rt = runtime();
    let mut acked = Vec::new();
    let mut i = 0u64;
    let mut failed_at = None;
    while failed_at.is_none() {
        let rec = record(&format!("r{i}"), 300, i);
        i += 1;
        let len = ferry_record::encoded_len(&rec) as u64;
        let last = log.segments().last().map(|s| s.base);
        let active_len = last.map_or(0, |b| log.next_offset() - b);
        let rolls = last.is_some() && active_len + len > segment_bytes;
        if rolls {
            // The roll writes the header (1st write), then the record.
            disk.fail_nth(Fault::WriteEio, 2);
        }
        let epoch = log.epoch();
        let (o, l) = log.append(&rec).unwrap();
        match rt.block_on(log.wait_committed_in(epoch, o + l as u64)) {
            Ok(()) => {
                assert!(!rolls);
                acked.push((o, l, rec));
            }
            Err(e) => {
                assert!(rolls, "only the armed write fails: {e}");
                assert_refusal(&e);
                failed_at = Some(o);
            }
        }
    }
    let new_base = failed_at.unwrap();
    assert_eq!(log.progress().committed, new_base);
    assert_eq!(log.segments().last().unwrap().base, new_base);
    assert!(segment_bases(dir.path()).contains(&new_base));

    assert!(log.heal().unwrap());
    assert!(log.segments().iter().all(|s| s.base < new_base));
    assert!(!segment_bases(dir.path()).contains(&new_base));
    assert_eq!(log.next_offset(), new_base);

    // The same record again: the roll happens again, into a new file.
    let rec = record("again", 300, 99);
    let (o, l) = log.append(&rec).unwrap();
    assert_eq!(o, new_base);
    rt.block_on(log.wait_committed_in(1, o + l as u64)).unwrap();
    assert_eq!(log.segments().last().unwrap().base, new_base);
    acked.push((o, l, rec));
    drop(log);

    let (_log, seen, report) = open(config(dir.path(), None, segment_bytes));
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(seen, acked);
}

/// Waiters blocked when the fault happens all get an error, never OK.
#[test]
fn waiters_at_the_failure_get_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::new(2));
    disk.fail_from_now(Fault::SyncEio);
    let (log, _, _) = open(config(dir.path(), Some(disk.clone()), 1 << 20));
    let rt = runtime();
    let epoch = log.epoch();
    // Appended until the failure refuses them (the first flush fails).
    let ends: Vec<u64> = (0..50)
        .map_while(|i| {
            let r = log.append(&record(&format!("w{i}"), 64, i));
            r.ok().map(|(o, l)| o + l as u64)
        })
        .collect();
    assert!(!ends.is_empty());
    let results = rt.block_on(async {
        let mut out = Vec::new();
        for end in &ends {
            out.push(log.wait_committed_in(epoch, *end).await);
        }
        out
    });
    for r in results {
        assert_refusal(&r.unwrap_err());
    }
    assert_eq!(log.progress().committed, 0);
    disk.clear();
    assert!(log.heal().unwrap());
    // After the heal, the segment exists and appends work again.
    let (o, l) = log.append(&record("x", 10, 9)).unwrap();
    assert_eq!(o, 0);
    rt.block_on(log.wait_committed_in(1, o + l as u64)).unwrap();
}

#[derive(Debug, Default)]
struct LoopFigures {
    seeds: u64,
    /// Seeds whose power went while records were being appended (the
    /// others are cut after the last append).
    cut_while_appending: u64,
    appends: u64,
    acknowledged: u64,
    acknowledged_lost: u64,
    faults_injected: u64,
    torn_tails_cut: u64,
    torn_bytes_cut: u64,
    damaged_ranges_skipped: u64,
    unacknowledged_kept: u64,
    files_cut: u64,
    files_vanished: u64,
    bytes_garbled: u64,
}

/// One power-loss run; adds to `f`.
fn power_loss_run(seed: u64, f: &mut LoopFigures) {
    let mut rng = SplitMix64::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::new(seed));
    let segment_bytes = 1024 + rng.below(6 << 10);
    let threads = 1 + rng.below(4) as usize;
    let per_thread = 5 + rng.below(40) as usize;
    disk.power_cut_at(1 + rng.below(160));
    let (log, _, _) = open(config(dir.path(), Some(disk.clone()), segment_bytes));
    let log = Arc::new(log);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            let mut rng = SplitMix64::new(seed.wrapping_mul(31).wrapping_add(t as u64));
            std::thread::spawn(move || {
                let rt = runtime();
                let mut out = Outcome::default();
                for i in 0..per_thread {
                    let body = rng.below(1500) as usize;
                    let rec = record(&format!("s{seed}-t{t}-{i}"), body, rng.next_u64());
                    let epoch = log.epoch();
                    let Ok((offset, len)) = log.append(&rec) else {
                        out.refused += 1;
                        break;
                    };
                    let a = Appended { offset, len, rec };
                    if rt
                        .block_on(log.wait_committed_in(epoch, offset + len as u64))
                        .is_ok()
                    {
                        out.acked.push(a);
                    } else {
                        out.unacked.push(a);
                        break;
                    }
                }
                out
            })
        })
        .collect();
    let out = join(handles);
    if disk.power_is_cut() {
        f.cut_while_appending += 1;
    } else {
        disk.power_cut();
    }
    drop(Arc::try_unwrap(log).ok().expect("appenders are done"));
    let loss = disk.lose_unsynced(seed).unwrap();
    f.faults_injected += disk.faults_injected();

    let (log, seen, report) = open(config(dir.path(), None, segment_bytes));
    let appended: BTreeMap<u64, &Appended> = out
        .acked
        .iter()
        .chain(&out.unacked)
        .map(|a| (a.offset, a))
        .collect();
    let served: BTreeMap<u64, (u32, &Record)> =
        seen.iter().map(|(o, l, r)| (*o, (*l, r))).collect();
    for (o, l, r) in &seen {
        let a = appended
            .get(o)
            .unwrap_or_else(|| panic!("seed {seed}: a record at {o} that was never appended"));
        assert_eq!(
            (*l, r),
            (a.len, &a.rec),
            "seed {seed}: record at {o} differs"
        );
        assert_eq!(&log.read(*o, *l).unwrap(), r, "seed {seed}");
    }
    let mut lost = 0;
    for a in &out.acked {
        match served.get(&a.offset) {
            Some((l, r)) if *l == a.len && **r == a.rec => {}
            _ => {
                lost += 1;
                eprintln!("seed {seed}: acknowledged record at {} lost", a.offset);
            }
        }
    }
    // The reopened log takes writes.
    let rt = runtime();
    let (o, l) = log.append(&record("after", 10, 0)).unwrap();
    rt.block_on(log.wait_committed(o + l as u64)).unwrap();

    f.seeds += 1;
    f.appends += appended.len() as u64;
    f.acknowledged += out.acked.len() as u64;
    f.acknowledged_lost += lost;
    f.torn_tails_cut += u64::from(report.truncated_bytes > 0);
    f.torn_bytes_cut += report.truncated_bytes;
    f.damaged_ranges_skipped += report.dropped.len() as u64;
    f.unacknowledged_kept += out
        .unacked
        .iter()
        .filter(|a| served.contains_key(&a.offset))
        .count() as u64;
    f.files_cut += loss.files_cut;
    f.files_vanished += loss.files_vanished;
    f.bytes_garbled += loss.bytes_garbled;
}

#[test]
fn power_loss_keeps_every_acknowledged_record() {
    let seeds: u64 = std::env::var("FERRY_POWER_LOSS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut f = LoopFigures::default();
    let start = Instant::now();
    for seed in 0..seeds {
        power_loss_run(seed, &mut f);
    }
    println!(
        "power-loss loop: {} seeds ({} cut while appending), {} appends, {} acknowledged, \
         {} acknowledged lost, \
         {} faults injected; recovery cut {} torn tails ({} bytes) and skipped {} damaged \
         ranges; {} unacknowledged records survived; the cuts shortened {} files, removed {} \
         and garbled {} bytes ({:.1} s)",
        f.seeds,
        f.cut_while_appending,
        f.appends,
        f.acknowledged,
        f.acknowledged_lost,
        f.faults_injected,
        f.torn_tails_cut,
        f.torn_bytes_cut,
        f.damaged_ranges_skipped,
        f.unacknowledged_kept,
        f.files_cut,
        f.files_vanished,
        f.bytes_garbled,
        start.elapsed().as_secs_f64()
    );
    assert_eq!(f.acknowledged_lost, 0, "acknowledged records lost: {f:?}");
    assert!(f.acknowledged > 0 && f.faults_injected > 0, "{f:?}");
}
