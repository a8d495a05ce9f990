//! Forward scans and length-less reads: every committed record from an
//! offset on, across segments, within a byte budget; records larger than a
//! read chunk; damage passed over, never handed out.

use std::path::Path;

use bytes::Bytes;
use ferry_record::{AckRecord, MessageRecord, Payload, Record};
use ferry_store::{Log, LogConfig, StoreError};

fn msg(i: u64, body_len: usize) -> Record {
    Record {
        term: 0,
        timestamp_ms: 1_700_000_000_000 + i as i64,
        payload: Payload::Message(MessageRecord {
            topic: "orders".into(),
            queue_id: 0,
            queue_offset: i,
            message_id: format!("ID{i:08}"),
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
            body: Bytes::from(vec![(i % 251) as u8; body_len]),
        }),
    }
}

fn ack(i: u64) -> Record {
    Record {
        term: 0,
        timestamp_ms: 5,
        payload: Payload::Ack(AckRecord {
            group: "g".into(),
            topic: "orders".into(),
            queue_id: 0,
            queue_offset: i,
            handle: i,
        }),
    }
}

fn open(dir: &Path, segment_bytes: u64) -> Log {
    let mut c = LogConfig::new(dir);
    c.segment_bytes = segment_bytes;
    Log::open(c, &mut |_, _, _| {}).expect("open").0
}

fn write_all(log: &Log, records: &[Record]) -> Vec<(u64, u32)> {
    let placed: Vec<_> = records.iter().map(|r| log.append(r).unwrap()).collect();
    let end = placed.last().map_or(0, |(o, l)| o + *l as u64);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(log.wait_committed(end))
        .unwrap();
    placed
}

fn scan_all(log: &Log, from: u64, budget: u64) -> (Vec<u64>, ferry_store::ScanEnd) {
    let mut seen = Vec::new();
    let end = log.scan(from, budget, &mut |o, _, _| seen.push(o)).unwrap();
    (seen, end)
}

#[test]
fn scans_every_record_from_an_offset_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 64 << 10);
    let records: Vec<Record> = (0..60)
        .map(|i| if i % 3 == 0 { ack(i) } else { msg(i, 5_000) })
        .collect();
    let placed = write_all(&log, &records);
    assert!(log.segments().len() > 3, "the records span segments");
    let committed = log.progress().committed;
    for start in [0, 1, 17, 59] {
        let (seen, end) = scan_all(&log, placed[start].0, u64::MAX);
        let want: Vec<u64> = placed[start..].iter().map(|p| p.0).collect();
        assert_eq!(seen, want);
        assert!(end.complete);
        assert_eq!(end.scanned_to, committed);
        assert_eq!(end.skipped, 0);
    }
    // The budget stops the scan at a record boundary, incomplete.
    let (seen, end) = scan_all(&log, placed[10].0, 20_000);
    assert!(!end.complete);
    assert_eq!(end.scanned_to, placed[10 + seen.len()].0);
    assert!(end.bytes >= 20_000 && seen.len() < 50);
    // Nothing beyond the committed end; reading length-less gives the record.
    let (rec, len) = log.read_at(placed[7].0).unwrap();
    assert_eq!((rec, len), (records[7].clone(), placed[7].1));
    assert!(matches!(
        log.read_at(committed),
        Err(StoreError::OutOfRange { .. })
    ));
}

#[test]
fn records_larger_than_a_read_chunk_are_scanned_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 8 << 20);
    let records = vec![msg(0, 10), msg(1, 3 << 20), msg(2, 10), msg(3, 1 << 20)];
    let placed = write_all(&log, &records);
    let mut got = Vec::new();
    let end = log
        .scan(0, u64::MAX, &mut |o, l, r| got.push((o, l, r.clone())))
        .unwrap();
    assert!(end.complete);
    let want: Vec<(u64, u32, Record)> = placed
        .iter()
        .zip(records)
        .map(|((o, l), r)| (*o, *l, r))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn damage_ends_the_segment_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let placed;
    {
        let log = open(dir.path(), 64 << 10);
        placed = write_all(&log, &(0..40).map(|i| msg(i, 5_000)).collect::<Vec<_>>());
        log.shutdown().unwrap();
    }
    // Flip a byte inside the body of record 2 (first segment).
    let seg = dir.path().join(ferry_store::segment::file_name(0));
    let mut raw = std::fs::read(&seg).unwrap();
    let at = 64 + placed[2].0 as usize + 100;
    raw[at] ^= 0xFF;
    std::fs::write(&seg, raw).unwrap();
    let log = open(dir.path(), 64 << 10);
    let (seen, end) = scan_all(&log, 0, u64::MAX);
    assert!(end.complete);
    assert!(end.skipped > 0);
    assert_eq!(&seen[..2], &[placed[0].0, placed[1].0]);
    assert!(
        !seen.contains(&placed[2].0),
        "a damaged record is never handed out"
    );
    // The next segment is scanned again.
    let next = log.segments()[1].base;
    assert!(seen.contains(&next));
    assert!(matches!(
        log.read_at(placed[2].0),
        Err(StoreError::Corrupt { .. })
    ));
}
