//! Crash recovery of the commit log: `ferry_store::Log::open` on a log
//! directory whose segment files come from the fuzzer.
//!
//! Input: `flags:u8 [base:u64|u16] [max:u16] [clean:u16]`, then per segment
//! `sflags:u8 [delta:u32] len:u16 bytes…` (the last segment takes the rest).
//!
//! * flags bits 0–1 — 1 to 3 segment files;
//! * bit 2 — leave a `CLEAN` mark holding `clean`;
//! * bit 3 — record limit `36 + max` instead of the default 16 MiB;
//! * bit 4 — append a record after recovery (it must survive the reopen;
//!   only when the record limit lets it through);
//! * bit 5 — first base offset is any u64 below 2^63 (otherwise a u16);
//! * bit 6 — tiny segments, so that append rolls a new segment.
//! * sflags bit 0 — the segment file is the raw bytes (no header added);
//! * bit 1 — reseal every record of the segment (offsets and checksums);
//! * bit 2 — the header declares a base other than the file name's;
//! * bit 3 — the next segment starts `delta` bytes after this segment's
//!   end, leaving a gap (with FERRY_FUZZ_STRICT: `delta` after its base,
//!   so segments may overlap); otherwise right after this segment's end.
//!
//! Checked: no panic, no error from `open`; every record handed to the
//! callback decodes from the bytes written at its place in one of the
//! files, in increasing, non-overlapping log order; `Log::read`,
//! `Log::read_at` and `Log::scan` give the same records back; an appended
//! record is readable; a second `open` sees exactly the same records
//! (recovery is idempotent).
//!
//! Three known issues of `ferry-store` are kept out of the default run (see
//! fuzz/README.md, and fuzz/regressions/segment_recovery/ for inputs); set
//! `FERRY_FUZZ_STRICT=1` to fuzz with them in.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_fuzz::{reseal_chain, Cursor};
use ferry_record::{decode, Payload, Record, TopicDeleteRecord};
use ferry_store::segment::{encode_header, file_name, HEADER_LEN};
use ferry_store::{Log, LogConfig};
use libfuzzer_sys::fuzz_target;

const SEG_HEADER: usize = HEADER_LEN as usize;

/// One log directory per process, emptied for every input.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let root = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        root.join(format!("ferry-fuzz-segment-{}", std::process::id()))
    })
}

type Seen = Vec<(u64, u32, Record)>;

/// `FERRY_FUZZ_STRICT=1`: do not tolerate the known issues noted below.
fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    // The issues it guarded are fixed: strict unless FERRY_FUZZ_STRICT=0.
    *STRICT.get_or_init(|| std::env::var_os("FERRY_FUZZ_STRICT").is_none_or(|v| v != "0"))
}

/// Whether some segment's file ends before the next segment begins.
fn has_gap(log: &Log) -> bool {
    log.segments().windows(2).any(|w| {
        let data = w[0].bytes.saturating_sub(HEADER_LEN);
        w[0].base.saturating_add(data) < w[1].base
    })
}

fn open(config: &LogConfig) -> (Log, ferry_store::RecoveryReport, Seen) {
    let mut seen = Vec::new();
    let (log, report) = Log::open(config.clone(), &mut |o, l, r| seen.push((o, l, r)))
        .unwrap_or_else(|e| panic!("Log::open failed: {e}"));
    (log, report, seen)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let flags = input.u8();
    let nseg = 1 + (flags & 3) % 3;
    let mut base = if flags & 32 != 0 {
        // Known issue (fuzz/README.md): recovery computes `base + position`
        // unchecked, which overflows for a segment whose (checksummed)
        // header declares a base within a file's length of u64::MAX. Bases
        // stay below 2^63 unless FERRY_FUZZ_STRICT is set.
        let b = input.u64();
        if strict() {
            b
        } else {
            b >> 1
        }
    } else {
        input.u16() as u64
    };
    let max_record = if flags & 8 != 0 {
        36 + input.u16() as usize
    } else {
        16 << 20
    };
    let clean = (flags & 4 != 0).then(|| input.u16());

    let dir = dir();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("creating the fuzz log directory");

    // (base, whole file) of every segment written.
    let mut files: Vec<(u64, Vec<u8>)> = Vec::new();
    for i in 0..nseg {
        let sflags = input.u8();
        let delta = (sflags & 8 != 0).then(|| input.u32());
        let content = if i + 1 == nseg {
            input.rest()
        } else {
            let n = input.u16() as usize;
            input.take(n)
        };
        let mut file = Vec::with_capacity(SEG_HEADER + content.len());
        if sflags & 1 == 0 {
            let declared = if sflags & 4 != 0 { base ^ 1 } else { base };
            file.extend_from_slice(&encode_header(declared, 0, 0));
        }
        file.extend_from_slice(content);
        if sflags & 2 != 0 && file.len() > SEG_HEADER {
            reseal_chain(&mut file[SEG_HEADER..], base);
        }
        let body_len = file.len().saturating_sub(SEG_HEADER) as u64;
        if files.iter().all(|(b, _)| *b != base) {
            std::fs::write(dir.join(file_name(base)), &file).expect("writing a segment");
            files.push((base, file));
        }
        // Known issue (fuzz/README.md): recovery does not notice segments
        // that overlap (a base below the previous segment's end) and hands
        // their records over out of log order. Only FERRY_FUZZ_STRICT makes
        // such logs; otherwise the delta is a gap after this segment.
        base = match delta {
            Some(d) if strict() => base.wrapping_add(d as u64),
            Some(d) => base.wrapping_add(body_len).wrapping_add(d as u64),
            None => base.wrapping_add(body_len),
        };
    }
    if let Some(c) = clean {
        std::fs::write(dir.join("CLEAN"), c.to_string()).expect("writing CLEAN");
    }

    let mut config = LogConfig::new(dir);
    config.max_record_bytes = max_record;
    if flags & 64 != 0 {
        config.segment_bytes = 64;
    }

    let (log, report, seen) = open(&config);
    assert_eq!(report.records, seen.len() as u64);

    // Every record lies where it claims to, in one of the files written,
    // and records come in log order without overlapping.
    let mut prev_end = 0u64;
    for (i, (o, l, r)) in seen.iter().enumerate() {
        let (o, l) = (*o, *l as usize);
        if i > 0 {
            assert!(
                o >= prev_end,
                "record at {o} overlaps the previous one ending at {prev_end}"
            );
        }
        prev_end = o.saturating_add(l as u64);
        let found = files.iter().any(|(b, f)| {
            let Some(rel) = o.checked_sub(*b) else {
                return false;
            };
            let Some(at) = (rel as usize).checked_add(SEG_HEADER) else {
                return false;
            };
            at.checked_add(l).is_some_and(|end| end <= f.len())
                && decode(&Bytes::copy_from_slice(&f[at..at + l]), o, max_record).as_ref()
                    == Ok(&(r.clone(), l))
        });
        assert!(
            found,
            "record at {o} (len {l}) does not lie in any segment file"
        );
    }
    if let Some((o, l, _)) = seen.last() {
        assert!(
            report.end_offset >= o.saturating_add(*l as u64),
            "end offset before the last record"
        );
    }

    // Reads give back what recovery handed over.
    for (o, l, r) in &seen {
        let got = log
            .read(*o, *l)
            .unwrap_or_else(|e| panic!("Log::read({o}, {l}) of a recovered record: {e}"));
        assert_eq!(&got, r, "Log::read({o}) differs from recovery");
        let (got, len) = log
            .read_at(*o)
            .unwrap_or_else(|e| panic!("Log::read_at({o}) of a recovered record: {e}"));
        assert_eq!(
            (&got, len),
            (r, *l),
            "Log::read_at({o}) differs from recovery"
        );
    }
    let mut scanned: Seen = Vec::new();
    let end = match log.scan(0, u64::MAX, &mut |o, l, r| scanned.push((o, l, r.clone()))) {
        Ok(end) => Some(end),
        // Known issue (fuzz/README.md): `Log::scan` takes the next
        // segment's base as a segment's end, so when the segments left
        // after recovery have a gap (a damaged segment set aside), it reads
        // past the end of the file before the gap and fails with an I/O
        // error. Tolerated unless FERRY_FUZZ_STRICT is set.
        Err(_) if !strict() && has_gap(&log) => None,
        Err(e) => panic!("Log::scan from 0: {e}"),
    };
    // A scan ends a segment at its first undecodable record where recovery
    // skips ahead, so it may see fewer records, never others.
    let mut rest = seen.iter();
    for s in &scanned {
        assert!(
            rest.any(|x| x == s),
            "scan handed over a record recovery did not: {}",
            s.0
        );
    }
    if let (Some(end), true) = (end, report.dropped.is_empty()) {
        assert_eq!(
            scanned.len(),
            seen.len(),
            "scan missed records of an undamaged log"
        );
        assert!(end.complete, "scan of an undamaged log incomplete");
    }

    // A record appended after recovery is durable and readable.
    let mut expected = seen.clone();
    if flags & 16 != 0 && max_record >= 64 {
        let rec = Record {
            term: 0,
            timestamp_ms: 1,
            payload: Payload::TopicDelete(TopicDeleteRecord {
                topic: "fuzz".into(),
            }),
        };
        let (o, l) = log
            .append(&rec)
            .unwrap_or_else(|e| panic!("append after recovery: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let p = log.progress();
            if let Some(f) = p.failed {
                panic!("log failed after recovery: {f}");
            }
            if p.committed >= o.saturating_add(l as u64) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "append after recovery never committed"
            );
            std::thread::yield_now();
        }
        let got = log
            .read(o, l)
            .unwrap_or_else(|e| panic!("reading the record appended at {o}: {e}"));
        assert_eq!(got, rec);
        expected.push((o, l, rec));
    }
    drop(log);

    // Recovery is idempotent: a second open sees the same records.
    let (log, _, again) = open(&config);
    if again != expected {
        let offsets = |s: &Seen| s.iter().map(|(o, l, _)| (*o, *l)).collect::<Vec<_>>();
        panic!(
            "second open differs:\n first:  {:?}\n second: {:?}",
            offsets(&expected),
            offsets(&again)
        );
    }
    drop(log);
});
