//! Storage-engine tests on real files: clean and unclean reopen, truncation
//! at every byte of the tail, flipped bits anywhere, segment rolling, and
//! group commit under concurrency.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ferry_record::{MessageRecord, Payload, Record};
use ferry_store::{segment, Log, LogConfig, RecoveryReport, StoreError};

fn msg(i: u64, body_len: usize) -> Record {
    Record {
        term: 0,
        timestamp_ms: 1_700_000_000_000 + i as i64,
        payload: Payload::Message(MessageRecord {
            topic: "orders".into(),
            queue_id: (i % 4) as u32,
            queue_offset: i,
            message_id: format!("ID{i:08}"),
            message_type: 1,
            body_encoding: 1,
            tag: Some("created".into()),
            keys: vec![format!("k{i}")],
            message_group: None,
            delivery_timestamp_ms: None,
            check_after_ms: None,
            born_timestamp_ms: 1,
            born_host: "h".into(),
            properties: vec![("p".into(), "v".into())],
            body: Bytes::from(vec![(i % 251) as u8; body_len]),
        }),
    }
}

fn id_of(r: &Record) -> String {
    match &r.payload {
        Payload::Message(m) => m.message_id.clone(),
        other => panic!("unexpected {other:?}"),
    }
}

fn config(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.segment_bytes = 1 << 20;
    c
}

/// Opens the log, returning it, the replayed records (offset, len, record)
/// and the report.
fn open(dir: &Path) -> (Log, Vec<(u64, u32, Record)>, RecoveryReport) {
    open_with(config(dir))
}

fn open_with(c: LogConfig) -> (Log, Vec<(u64, u32, Record)>, RecoveryReport) {
    let mut seen = Vec::new();
    let (log, report) = Log::open(c, &mut |o, l, r| seen.push((o, l, r))).expect("open");
    (log, seen, report)
}

fn write_all(log: &Log, records: &[Record]) -> Vec<(u64, u32)> {
    let placed: Vec<_> = records.iter().map(|r| log.append(r).unwrap()).collect();
    let end = placed.last().map_or(0, |(o, l)| o + *l as u64);
    futures_block(log.wait_committed(end)).unwrap();
    placed
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn reopen_after_clean_and_unclean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..200).map(|i| msg(i, 300)).collect();
    {
        let (log, seen, report) = open(dir.path());
        assert!(seen.is_empty());
        assert!(!report.clean_shutdown);
        write_all(&log, &records);
        // Dropped without shutdown(): an unclean stop.
    }
    {
        let (log, seen, report) = open(dir.path());
        assert!(!report.clean_shutdown);
        assert_eq!(
            seen.iter().map(|s| s.2.clone()).collect::<Vec<_>>(),
            records
        );
        // Every replayed record can be read back at its offset.
        for (o, l, r) in &seen {
            assert_eq!(&log.read(*o, *l).unwrap(), r);
        }
        log.shutdown().unwrap();
    }
    let (_log, seen, report) = open(dir.path());
    assert!(report.clean_shutdown, "{report:?}");
    assert!(report.dropped.is_empty() && report.truncated_bytes == 0);
    assert_eq!(seen.len(), records.len());
}

#[test]
fn segments_roll_and_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..100).map(|i| msg(i, 40_000)).collect();
    let placed = {
        let (log, _, _) = open(dir.path());
        let placed = write_all(&log, &records);
        assert!(log.segments().len() >= 4, "expected several 1 MiB segments");
        for (i, (o, l)) in placed.iter().enumerate() {
            assert_eq!(log.read(*o, *l).unwrap(), records[i]);
        }
        placed
    };
    let (log, seen, _) = open(dir.path());
    assert_eq!(seen.len(), 100);
    for (i, (o, l)) in placed.iter().enumerate() {
        assert_eq!(log.read(*o, *l).unwrap(), records[i]);
    }
    // New appends continue after the last record, in the last segment.
    let (o, _) = log.append(&msg(100, 10)).unwrap();
    assert_eq!(o, placed.last().map(|(o, l)| o + *l as u64).unwrap());
}

#[test]
fn truncation_at_every_byte_of_the_tail() {
    let src = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..6).map(|i| msg(i, 50)).collect();
    let placed = {
        let (log, _, _) = open(src.path());
        write_all(&log, &records)
    };
    let tail_start = placed[3].0; // cut anywhere in the last three records
    let end = placed[5].0 + placed[5].1 as u64;
    for cut in tail_start..end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let seg = &segment_files(dir.path())[0];
        let f = fs::OpenOptions::new().write(true).open(seg).unwrap();
        f.set_len(segment::HEADER_LEN + cut).unwrap();
        drop(f);
        let whole = placed.iter().filter(|(o, l)| o + *l as u64 <= cut).count();
        let (log, seen, report) = open(dir.path());
        assert_eq!(seen.len(), whole, "cut at {cut}");
        assert_eq!(
            report.truncated_bytes,
            cut - placed[whole].0,
            "cut at {cut}"
        );
        assert!(report.dropped.is_empty());
        // The log keeps working: the next append lands where the torn one was.
        let (o, l) = log.append(&msg(99, 10)).unwrap();
        assert_eq!(o, placed[whole].0);
        futures_block(log.wait_committed(o + l as u64)).unwrap();
        drop(log);
        let (_log, seen, report) = open(dir.path());
        assert_eq!(seen.len(), whole + 1);
        assert_eq!(report.truncated_bytes, 0);
    }
}

#[test]
fn a_flipped_bit_anywhere_is_detected_and_never_served() {
    let src = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..4).map(|i| msg(i, 20)).collect();
    let placed = {
        let (log, _, _) = open(src.path());
        write_all(&log, &records)
    };
    let end = placed[3].0 + placed[3].1 as u64;
    let seg_name = segment_files(src.path())[0].file_name().unwrap().to_owned();
    for byte in 0..end {
        for bit in [0u8, 3, 7] {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(src.path(), dir.path());
            let seg = dir.path().join(&seg_name);
            let mut raw = fs::read(&seg).unwrap();
            raw[(segment::HEADER_LEN + byte) as usize] ^= 1 << bit;
            fs::write(&seg, raw).unwrap();
            let hit = placed
                .iter()
                .position(|(o, l)| byte >= *o && byte < o + *l as u64)
                .unwrap();
            let (_log, seen, report) = open(dir.path());
            let ids: Vec<_> = seen.iter().map(|s| id_of(&s.2)).collect();
            let expected: Vec<_> = (0..4)
                .filter(|i| *i != hit)
                .map(|i| format!("ID{i:08}"))
                .collect();
            assert_eq!(ids, expected, "flip at byte {byte} bit {bit}");
            if hit == 3 {
                assert!(report.truncated_bytes > 0);
            } else {
                assert_eq!(report.dropped.len(), 1, "flip at byte {byte}");
            }
        }
    }
}

#[test]
fn damaged_segment_header_sets_the_segment_aside() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..60).map(|i| msg(i, 40_000)).collect();
    {
        let (log, _, _) = open(dir.path());
        write_all(&log, &records);
    }
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3);
    let mut raw = fs::read(&segs[0]).unwrap();
    raw[17] ^= 1;
    fs::write(&segs[0], raw).unwrap();
    let (_log, seen, report) = open(dir.path());
    assert_eq!(report.damaged_segments.len(), 1);
    assert!(!seen.is_empty() && seen.len() < 60);
    // The records that remain are exactly the ones after the damaged segment.
    let first = id_of(&seen[0].2);
    let n: usize = first.trim_start_matches("ID").parse().unwrap();
    assert_eq!(seen.len(), 60 - n);
}

#[test]
fn a_record_damaged_at_rest_is_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open(dir.path());
    let placed = write_all(&log, &[msg(0, 100), msg(1, 100)]);
    let seg = &segment_files(dir.path())[0];
    let mut raw = fs::read(seg).unwrap();
    raw[(segment::HEADER_LEN + placed[1].0 + 50) as usize] ^= 0x10;
    fs::write(seg, raw).unwrap();
    assert!(log.read(placed[0].0, placed[0].1).is_ok());
    let err = log.read(placed[1].0, placed[1].1).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    // Reading beyond what is committed is refused, not guessed.
    assert!(matches!(
        log.read(placed[1].0 + 1000, 10),
        Err(StoreError::OutOfRange { .. })
    ));
}

#[test]
fn second_opener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _, _) = open(dir.path());
    let err = Log::open(config(dir.path()), &mut |_, _, _| {})
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
}

#[test]
fn concurrent_appenders_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open(dir.path());
    let log = Arc::new(log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let total = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50u64 {
                    let (o, l) = log.append(&msg(t * 1000 + i, 100)).unwrap();
                    log.wait_committed(o + l as u64).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        log.progress().committed
    });
    assert_eq!(total, log.next_offset());
    drop(rt);
    let log = Arc::into_inner(log).unwrap();
    drop(log);
    let (_log, seen, _) = open(dir.path());
    assert_eq!(seen.len(), 800);
}

#[test]
fn oversized_record_is_refused_before_buffering() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_record_bytes = 1024;
    let (log, _, _) = open_with(c);
    let err = log.append(&msg(0, 2048)).unwrap_err();
    assert!(matches!(err, StoreError::RecordTooLarge { .. }));
    assert_eq!(log.next_offset(), 0);
}

/// A cut at a record boundary leaves records that all check out; only the
/// log's own bookkeeping can tell. After a clean shutdown the clean mark
/// (the end offset) tells for the last segment, and the next segment's base
/// tells for any other: both are reported as dropped ranges.
#[test]
fn a_cut_at_a_record_boundary_after_a_clean_shutdown_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Record> = (0..600).map(|i| msg(i, 4000)).collect();
    let placed = {
        let (log, _, _) = open(dir.path());
        let placed = write_all(&log, &records);
        log.shutdown().unwrap();
        placed
    };
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3, "want several segments, got {}", segs.len());
    // The file position of a record boundary inside `seg`, a few records
    // before its end.
    let boundary_in = |seg: &Path| {
        let base = segment::parse_name(&seg.file_name().unwrap().to_string_lossy()).unwrap();
        let len = fs::metadata(seg).unwrap().len();
        let starts: Vec<u64> = placed
            .iter()
            .map(|(o, _)| *o)
            .filter(|o| *o > base && segment::HEADER_LEN + (o - base) < len)
            .collect();
        let cut = starts[starts.len() - 3];
        (cut, segment::HEADER_LEN + (cut - base))
    };
    for (which, seg) in [("last", segs.last().unwrap()), ("middle", &segs[1])] {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let target = copy.path().join(seg.file_name().unwrap());
        let (cut_offset, cut_pos) = boundary_in(&target);
        let f = fs::OpenOptions::new().write(true).open(&target).unwrap();
        f.set_len(cut_pos).unwrap();
        drop(f);
        let (_log, seen, report) = open(copy.path());
        assert!(!report.clean_shutdown, "{which}: a cut log is not clean");
        assert_eq!(
            report.dropped.len(),
            1,
            "{which}: the cut is reported: {report:?}"
        );
        assert_eq!(report.dropped[0].from, cut_offset, "{which}");
        assert!(
            seen.iter()
                .all(|(o, _, _)| *o < cut_offset || *o >= report.dropped[0].to),
            "{which}: nothing inside the dropped range is replayed"
        );
    }
}
