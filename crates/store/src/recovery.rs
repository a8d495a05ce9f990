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
        match segment::check_header(&data) {
            Ok(declared) if declared == base => {}
            other => {
                let reason = match other {
                    Ok(declared) => format!("header declares base {declared}, name says {base}"),
                    Err(e) => e,
                };
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
        let body = data.slice(HEADER_LEN as usize..);
        let offset_at = |pos: usize| base + pos as u64;
        let mut pos = 0usize;
        while pos < body.len() {
            match decode(&body.slice(pos..), offset_at(pos), max_record) {
                Ok((rec, len)) => {
                    on_record(offset_at(pos), len as u32, rec);
                    report.records += 1;
                    pos += len;
                }
                Err(first_err) => {
                    let next = resync(&body, pos + 1, base, max_record);
                    match next {
                        Some(q) => {
                            error!(segment = %path.display(), from = offset_at(pos), to = offset_at(q), error = %first_err,
                                "damaged records skipped; they will not be served");
                            report.dropped.push(DroppedRange {
                                segment: path.clone(),
                                from: offset_at(pos),
                                to: offset_at(q),
                                reason: first_err.to_string(),
                            });
                            pos = q;
                        }
                        None if is_last => {
                            let torn = (body.len() - pos) as u64;
                            warn!(segment = %path.display(), at = offset_at(pos), bytes = torn, error = %first_err,
                                "truncating torn tail (an interrupted, unacknowledged write)");
                            let f = fs::OpenOptions::new()
                                .write(true)
                                .open(&path)
                                .map_err(StoreError::io("opening segment to truncate", &path))?;
                            f.set_len(HEADER_LEN + pos as u64)
                                .and_then(|_| f.sync_all())
                                .map_err(StoreError::io("truncating torn tail", &path))?;
                            report.truncated_bytes += torn;
                            break;
                        }
                        None => {
                            error!(segment = %path.display(), from = offset_at(pos), to = offset_at(body.len()), error = %first_err,
                                "damaged end of a closed segment skipped; it will not be served");
                            report.dropped.push(DroppedRange {
                                segment: path.clone(),
                                from: offset_at(pos),
                                to: offset_at(body.len()),
                                reason: first_err.to_string(),
                            });
                            pos = body.len();
                        }
                    }
                }
            }
        }
        let end = if is_last {
            offset_at(pos)
        } else {
            offset_at(body.len())
        };
        out.push(ScannedSegment { base, path, end });
    }
    report.segments = out.len();
    report.end_offset = out.last().map_or(0, |s| s.end);
    Ok((out, report))
}

/// Finds the first position at or after `from` where a valid record starts.
/// Candidates are rejected cheaply by length and claimed offset before any
/// checksum is computed, so scanning a long damaged stretch stays fast.
fn resync(body: &Bytes, from: usize, base: u64, max_record: usize) -> Option<usize> {
    (from..body.len().saturating_sub(ferry_record::HEADER_LEN - 1))
        .find(|&q| decode(&body.slice(q..), base + q as u64, max_record).is_ok())
}
