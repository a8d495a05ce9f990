//! The start-up scan of the commit log.
//!
//! Every record of every segment is decoded, which verifies its checksum and
//! the log offset it claims. What fails is never handed to the broker:
//!
//! * damage in the middle of the log (a later valid record exists) is skipped
//!   and reported as a [`DroppedRange`];
//! * damage with nothing valid after it in the last segment is a torn tail
//!   (a write the crash interrupted, never acknowledged) and is truncated;
//! * a segment whose header is damaged is renamed to `*.damaged` and
//!   reported, so an operator can inspect it; the log continues without it.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_record::{decode, Record};
use tracing::{error, warn};

use crate::segment::{self, HEADER_LEN};
use crate::StoreError;

/// A byte range of the log that recovery refused to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedRange {
    /// Segment file the range lies in.
    pub segment: PathBuf,
    /// First and one-past-last log offset of the dropped bytes.
    pub from: u64,
    pub to: u64,
    pub reason: String,
}

/// What recovery found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    /// The previous run closed the log cleanly (and nothing was dropped).
    pub clean_shutdown: bool,
    /// Damaged ranges skipped in the middle of the log.
    pub dropped: Vec<DroppedRange>,
    /// Bytes cut from the end of the last segment (a torn, unacknowledged tail).
    pub truncated_bytes: u64,
    /// Segments set aside because their header is damaged.
    pub damaged_segments: Vec<PathBuf>,
    /// Log offset where the next record will be written.
    pub end_offset: u64,
}

/// A segment that survived the scan.
#[derive(Debug)]
pub(crate) struct ScannedSegment {
    pub base: u64,
    pub path: PathBuf,
    /// One past the last valid record.
    pub end: u64,
}

/// Scans `dir`, feeding each valid record to `on_record(offset, len, record)`
/// in log order, and repairs the tail.
pub(crate) fn scan(
    dir: &Path,
    max_record: usize,
    on_record: &mut dyn FnMut(u64, u32, Record),
) -> Result<(Vec<ScannedSegment>, RecoveryReport), StoreError> {
    let mut names: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(StoreError::io("listing log directory", dir))? {
        let entry = entry.map_err(StoreError::io("listing log directory", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match segment::parse_name(&name) {
            Some(base) => names.push((base, entry.path())),
            None if name.ends_with(".damaged") || name == "CLEAN" || name == "LOCK" => {}
            None => warn!(file = %name, "ignoring unexpected file in the log directory"),
        }
    }
    names.sort();

    let mut report = RecoveryReport::default();
    let mut out = Vec::new();
    let count = names.len();
    for (i, (base, path)) in names.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let data = Bytes::from(fs::read(&path).map_err(StoreError::io("reading segment", &path))?);
        // A segment must name its own base, leave room for its bytes below
        // u64::MAX, and start where the previous one ended or later: two
        // segments holding the same offsets would serve two records there.
        let previous_end = out.last().map(|p: &ScannedSegment| p.end);
        let problem = match segment::check_header(&data) {
            Ok(declared) if declared != base => {
                Some(format!("header declares base {declared}, name says {base}"))
            }
            Ok(_) if base.checked_add(data.len() as u64).is_none() => Some(format!(
                "base offset {base} leaves no room for the segment's {} bytes",
                data.len()
            )),
            Ok(_) if previous_end.is_some_and(|end| base < end) => Some(format!(
                "starts at offset {base}, inside the previous segment (which ends at {})",
                previous_end.unwrap_or_default()
            )),
            Ok(_) => None,
            Err(e) => Some(e),
        };
        match problem {
            None => {}
            Some(reason) => {
                if is_last && data.len() <= HEADER_LEN as usize {
                    // Crash while creating the segment: it never held a record.
                    warn!(path = %path.display(), %reason, "removing segment torn at creation");
                    fs::remove_file(&path)
                        .map_err(StoreError::io("removing torn segment", &path))?;
                } else {
                    let aside = path.with_extension("seg.damaged");
                    error!(path = %path.display(), %reason, "segment header damaged; set aside as {}", aside.display());
                    fs::rename(&path, &aside)
                        .map_err(StoreError::io("setting damaged segment aside", &path))?;
                    report.damaged_segments.push(aside);
                }
                segment::sync_dir(dir)?;
                continue;
            }
        }
        // Segments follow each other without a gap (a roll starts the next
        // at the previous one's end); a gap means the earlier one lost its
        // end — cut short at a record boundary, where no checksum can tell.
        if let Some(prev) = out.last() {
            let prev: &ScannedSegment = prev;
            if prev.end < base {
                error!(segment = %prev.path.display(), from = prev.end, to = base,
                    "segment ends before the next one begins; the missing records will not be served");
                report.dropped.push(DroppedRange {
                    segment: prev.path.clone(),
                    from: prev.end,
                    to: base,
                    reason: "segment ends before the next one begins (truncated)".into(),
                });
            }
        }
        let body = data.slice(HEADER_LEN as usize..);
        let offset_at = |pos: usize| base + pos as u64;
        let walked = walk(&body, base, max_record, on_record);
        report.records += walked.records;
        let mut pos = body.len();
        for d in walked.damage {
            if d.tail && is_last {
                let torn = (body.len() - d.from) as u64;
                warn!(segment = %path.display(), at = offset_at(d.from), bytes = torn, error = %d.reason,
                    "truncating torn tail (an interrupted, unacknowledged write)");
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(StoreError::io("opening segment to truncate", &path))?;
                f.set_len(HEADER_LEN + d.from as u64)
                    .and_then(|_| f.sync_all())
                    .map_err(StoreError::io("truncating torn tail", &path))?;
                report.truncated_bytes += torn;
                pos = d.from;
                continue;
            }
            if d.tail {
                error!(segment = %path.display(), from = offset_at(d.from), to = offset_at(d.to), error = %d.reason,
                    "damaged end of a closed segment skipped; it will not be served");
            } else {
                error!(segment = %path.display(), from = offset_at(d.from), to = offset_at(d.to), error = %d.reason,
                    "damaged records skipped; they will not be served");
            }
            report.dropped.push(DroppedRange {
                segment: path.clone(),
                from: offset_at(d.from),
                to: offset_at(d.to),
                reason: d.reason,
            });
        }
        // One past the last valid record: the body's end, unless a torn
        // tail was cut.
        out.push(ScannedSegment {
            base,
            path,
            end: offset_at(pos),
        });
    }
    report.segments = out.len();
    report.end_offset = out.last().map_or(0, |s| s.end);
    Ok((out, report))
}

/// A damaged stretch of a segment's body found by [`walk`].
pub(crate) struct Damage {
    /// Body positions (after the header) of the stretch: `from..to`.
    pub from: usize,
    pub to: usize,
    /// No valid record follows it in this segment (`to` is the body's end).
    pub tail: bool,
    pub reason: String,
}

/// What [`walk`] found in one segment's body.
pub(crate) struct Walked {
    pub records: u64,
    pub damage: Vec<Damage>,
}

/// Hands every valid record of `body` (a segment's bytes after its header,
/// the segment starting at log offset `base`) to `on_record` in order,
/// passing over damage to the next valid record. Changes nothing on disk:
/// the caller decides what the damage means (recovery: a torn tail of the
/// last segment is cut; a heal's replay: nothing).
pub(crate) fn walk(
    body: &Bytes,
    base: u64,
    max_record: usize,
    on_record: &mut dyn FnMut(u64, u32, Record),
) -> Walked {
    let mut out = Walked {
        records: 0,
        damage: Vec::new(),
    };
    let mut pos = 0usize;
    while pos < body.len() {
        match decode(&body.slice(pos..), base + pos as u64, max_record) {
            Ok((rec, len)) => {
                on_record(base + pos as u64, len as u32, rec);
                out.records += 1;
                pos += len;
            }
            Err(e) => {
                let next = resync(body, pos + 1, base, max_record);
                out.damage.push(Damage {
                    from: pos,
                    to: next.unwrap_or(body.len()),
                    tail: next.is_none(),
                    reason: e.to_string(),
                });
                pos = next.unwrap_or(body.len());
            }
        }
    }
    out
}

/// Finds the first position at or after `from` where a valid record starts.
/// Candidates are rejected cheaply by length and claimed offset before any
/// checksum is computed, so scanning a long damaged stretch stays fast.
fn resync(body: &Bytes, from: usize, base: u64, max_record: usize) -> Option<usize> {
    (from..body.len().saturating_sub(ferry_record::HEADER_LEN - 1))
        .find(|&q| decode(&body.slice(q..), base + q as u64, max_record).is_ok())
}
