//! The log itself: buffered appends, a flusher thread doing group commit,
//! reads by offset, segment rolling and deletion.
//!
//! Appends never touch the disk on the caller's thread: the record is encoded
//! into the pending buffer under a short mutex and gets its log offset there.
//! The flusher takes *everything* pending, writes it and calls `fdatasync`
//! once, then publishes the new committed offset. A thousand concurrent
//! senders therefore cost one fsync, not a thousand.
//!
//! Invariant: bytes below the published committed offset are written (and in
//! `sync` mode fsynced) and will be found by recovery; nothing above it may be
//! served to a consumer or acknowledged to a producer.
//!
//! A failed write or fsync stops the flusher and every later append (see
//! [`Progress::failed`]). [`Log::heal`] brings the log back once the disk
//! works again: it cuts the files back to the committed offset, drops what
//! was pending, and starts a new *epoch* ([`Progress::epoch`]); a record
//! appended in an earlier epoch and not committed by its end is lost, and a
//! wait for it fails (see [`Log::wait_committed_in`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_record::{decode, encode, encoded_len, peek_len, Record};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::disk::{self, DiskHook, Hook};
use crate::recovery::{self, RecoveryReport};
use crate::segment::{self, HEADER_LEN};
use crate::stats::LogStats;
use crate::StoreError;

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Committed only after `fdatasync` returned: survives power loss.
    #[default]
    Sync,
    /// Committed once written to the OS page cache; fsynced every
    /// `async_flush_interval`. Survives a process crash (kill -9), but a power
    /// loss or kernel crash can lose up to one interval of acknowledged data.
    Async,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// Target size of a segment file; a record never spans two segments.
    pub segment_bytes: u64,
    pub flush: FlushMode,
    pub async_flush_interval: Duration,
    /// Largest record accepted on append and on read; anything longer is
    /// treated as damage by recovery.
    pub max_record_bytes: usize,
    /// Appends wait (back-pressure) while this many bytes are pending.
    pub max_pending_bytes: usize,
    /// Asked before every disk operation the writer does: tests inject disk
    /// faults through it (`ferry_store::faults`). Always `None` in
    /// production.
    pub disk_hook: Option<Arc<dyn DiskHook>>,
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            dir: dir.into(),
            segment_bytes: 256 << 20,
            flush: FlushMode::Sync,
            async_flush_interval: Duration::from_millis(1000),
            max_record_bytes: 16 << 20,
            max_pending_bytes: 64 << 20,
            disk_hook: None,
        }
    }
}

/// What the flusher has made durable so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every record ending at or below this offset is committed.
    pub committed: u64,
    /// Set once a write or fsync failed; the log accepts nothing after that
    /// until [`Log::heal`] succeeds.
    pub failed: Option<Arc<str>>,
    /// How many times the log was healed. A record appended in an earlier
    /// epoch and not committed when that epoch ended was dropped.
    pub epoch: u64,
}

/// Bytes read at once by [`Log::scan`] (more when one record is larger).
const SCAN_CHUNK: usize = 1 << 20;

/// How far a [`Log::scan`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanEnd {
    /// Every record below this offset (and at or above the start) was
    /// handed over.
    pub scanned_to: u64,
    /// The scan reached the committed end (not stopped by its budget).
    pub complete: bool,
    /// Record bytes read.
    pub bytes: u64,
    /// Bytes passed over because they did not decode.
    pub skipped: u64,
}

/// A segment as seen by retention and by operators.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub base: u64,
    pub end: u64,
    pub bytes: u64,
    pub last_write_ms: i64,
    pub path: PathBuf,
}

struct Chunk {
    segment_base: u64,
    bytes: Vec<u8>,
    /// Records encoded in `bytes`.
    records: u64,
}

struct Pending {
    next_offset: u64,
    active_base: u64,
    active_len: u64,
    chunks: Vec<Chunk>,
    bytes: usize,
    failed: Option<Arc<str>>,
    shutdown: bool,
    /// Appends made now belong to this epoch (see [`Progress::epoch`]).
    epoch: u64,
}

struct Readable {
    base: u64,
    path: PathBuf,
    file: Arc<File>,
}

struct Shared {
    config: LogConfig,
    pending: Mutex<Pending>,
    /// Wakes the flusher when chunks arrive or on shutdown.
    work: Condvar,
    /// Wakes appenders waiting for buffer space.
    space: Condvar,
    progress: watch::Sender<Progress>,
    segments: RwLock<BTreeMap<u64, Readable>>,
    /// The committed offset at the end of each epoch: entry `e` is where
    /// epoch `e` ended when the log was healed.
    epoch_ends: Mutex<Vec<u64>>,
    stats: LogStats,
}

impl Shared {
    fn hook(&self) -> Hook<'_> {
        self.config.disk_hook.as_deref()
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the segment starting at `base` (durably, header and
    /// directory entry), makes it readable, and returns it to append to.
    fn new_segment(&self, base: u64) -> Result<Active, StoreError> {
        let (path, file) = segment::create_with(self.hook(), &self.config.dir, base, now_ms())?;
        let reader = File::open(&path).map_err(StoreError::io("opening segment", &path))?;
        self.segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                base,
                Readable {
                    base,
                    path: path.clone(),
                    file: Arc::new(reader),
                },
            );
        Ok(Active {
            base,
            file,
            pos: HEADER_LEN,
            path,
        })
    }

    /// `fdatasync` of the segment being appended to, timed into
    /// [`LogStats::fsync_ns`] (failed ones too).
    fn sync_segment(&self, a: &Active, context: &'static str) -> Result<(), StoreError> {
        let started = Instant::now();
        let synced = disk::sync_data(self.hook(), &a.file, &a.path, a.pos);
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.fsync_ns.observe(ns);
        synced.map_err(StoreError::io(context, &a.path))
    }
}

/// Where [`Log::locate`] found an offset.
struct Located {
    committed: u64,
    first: u64,
    file: Arc<File>,
    pos: u64,
    path: PathBuf,
}

impl Located {
    fn out_of_range(&self, offset: u64) -> StoreError {
        StoreError::OutOfRange {
            offset,
            first: self.first,
            committed: self.committed,
        }
    }
}

/// The commit log. Cheap to share behind an `Arc`.
pub struct Log {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    /// One heal at a time.
    healing: Mutex<()>,
    _lock: File,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

const CLEAN_MARK: &str = "CLEAN";

/// Bytes a heal writes above the committed end (and cuts away again) to see
/// that the disk takes writes again — a full disk refuses them.
const HEAL_PROBE: usize = 4096;

impl Log {
    /// Opens (or creates) the log in `config.dir`, runs recovery, and hands
    /// every surviving record to `on_record` in log order before returning.
    pub fn open(
        config: LogConfig,
        on_record: &mut dyn FnMut(u64, u32, Record),
    ) -> Result<(Log, RecoveryReport), StoreError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(StoreError::io("creating log directory", &dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StoreError::io("opening lock file", &lock_path))?;
        lock.try_lock()
            .map_err(|_| StoreError::Locked(dir.clone()))?;

        let clean_path = dir.join(CLEAN_MARK);
        let clean_end = std::fs::read_to_string(&clean_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());

        let (scanned, mut report) = recovery::scan(&dir, config.max_record_bytes, on_record)?;
        if let Some(clean) = clean_end.filter(|&c| c > report.end_offset) {
            // Closed cleanly at `clean`, yet the records end earlier: the
            // log lost its end (cut at a record boundary, which checksums
            // cannot show). Report it rather than carry on as if complete.
            error!(from = report.end_offset, to = clean,
                "the log ends before the end recorded at its clean shutdown; the missing records will not be served");
            report.dropped.push(recovery::DroppedRange {
                segment: scanned
                    .last()
                    .map_or_else(|| dir.clone(), |s| s.path.clone()),
                from: report.end_offset,
                to: clean,
                reason: "log ends before the end recorded at its clean shutdown (truncated)".into(),
            });
        }
        report.clean_shutdown = clean_end == Some(report.end_offset)
            && report.dropped.is_empty()
            && report.truncated_bytes == 0
            && report.damaged_segments.is_empty();
        if clean_end.is_some() {
            let hook = config.disk_hook.as_deref();
            disk::remove(hook, &clean_path)
                .map_err(StoreError::io("removing clean mark", &clean_path))?;
            segment::sync_dir_with(hook, &dir)?;
        }

        let mut segments = BTreeMap::new();
        for s in &scanned {
            let file = File::open(&s.path).map_err(StoreError::io("opening segment", &s.path))?;
            segments.insert(
                s.base,
                Readable {
                    base: s.base,
                    path: s.path.clone(),
                    file: Arc::new(file),
                },
            );
        }
        let end = report.end_offset;
        let (active_base, active_len) = scanned
            .last()
            .map_or((end, 0), |s| (s.base, s.end - s.base));
        let (progress, _) = watch::channel(Progress {
            committed: end,
            failed: None,
            epoch: 0,
        });
        let shared = Arc::new(Shared {
            config,
            pending: Mutex::new(Pending {
                next_offset: end,
                active_base,
                active_len,
                chunks: Vec::new(),
                bytes: 0,
                failed: None,
                shutdown: false,
                epoch: 0,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            progress,
            segments: RwLock::new(segments),
            epoch_ends: Mutex::new(Vec::new()),
            stats: LogStats::default(),
        });
        let active = match scanned.last() {
            Some(s) => Some(Active {
                base: s.base,
                file: OpenOptions::new()
                    .write(true)
                    .open(&s.path)
                    .map_err(StoreError::io("opening active segment", &s.path))?,
                pos: HEADER_LEN + (s.end - s.base),
                path: s.path.clone(),
            }),
            None => None,
        };
        let flusher_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("ferry-log-flusher".into())
            .spawn(move || Flusher::new(flusher_shared, active).run())
            .map_err(StoreError::io("starting flusher thread", &dir))?;
        info!(
            dir = %dir.display(),
            segments = report.segments,
            records = report.records,
            end_offset = end,
            clean = report.clean_shutdown,
            "commit log open"
        );
        Ok((
            Log {
                shared,
                flusher: Mutex::new(Some(handle)),
                healing: Mutex::new(()),
                _lock: lock,
            },
            report,
        ))
    }

    pub fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.shared.lock_pending()
    }

    /// Buffers `rec` for the next group commit and returns its log offset
    /// and length. The record is *not* durable yet: wait with
    /// [`Log::wait_committed`] for `offset + len`.
    pub fn append(&self, rec: &Record) -> Result<(u64, u32), StoreError> {
        let len = encoded_len(rec);
        let max = self.shared.config.max_record_bytes;
        if len > max {
            return Err(StoreError::RecordTooLarge { len, max });
        }
        let mut p = self.lock_pending();
        while p.bytes > self.shared.config.max_pending_bytes && p.failed.is_none() && !p.shutdown {
            p = self.shared.space.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(f) = &p.failed {
            return Err(StoreError::Failed(f.to_string()));
        }
        if p.shutdown {
            return Err(StoreError::ShuttingDown);
        }
        if p.active_len > 0 && p.active_len + len as u64 > self.shared.config.segment_bytes {
            p.active_base = p.next_offset;
            p.active_len = 0;
        }
        let offset = p.next_offset;
        let base = p.active_base;
        let fresh_chunk = p.chunks.last().is_none_or(|c| c.segment_base != base);
        if fresh_chunk {
            p.chunks.push(Chunk {
                segment_base: base,
                bytes: Vec::with_capacity(64 << 10),
                records: 0,
            });
        }
        let chunk = p.chunks.last_mut().expect("chunk pushed above");
        encode(rec, offset, &mut chunk.bytes);
        chunk.records += 1;
        p.next_offset += len as u64;
        p.active_len += len as u64;
        p.bytes += len;
        drop(p);
        self.shared.work.notify_one();
        Ok((offset, len as u32))
    }

    /// Offset where the next record will go (committed or not).
    pub fn next_offset(&self) -> u64 {
        self.lock_pending().next_offset
    }

    /// The latest committed offset and failure state.
    pub fn progress(&self) -> Progress {
        self.shared.progress.borrow().clone()
    }

    /// fsync latencies and group-commit sizes since the log opened.
    pub fn stats(&self) -> &LogStats {
        &self.shared.stats
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.shared.progress.subscribe()
    }

    /// The epoch appends made now belong to (see [`Progress::epoch`]). Read
    /// it *before* appending and wait with [`Log::wait_committed_in`]: then
    /// a heal between the append and the wait cannot pass for a commit.
    pub fn epoch(&self) -> u64 {
        self.lock_pending().epoch
    }

    /// Waits until every byte below `end` is committed, for records
    /// appended in the epoch current when this is called. A heal after the
    /// call fails the wait unless the records were committed before the
    /// failure; a heal *before* the call is not seen — callers that may
    /// race a heal use [`Log::wait_committed_in`].
    pub async fn wait_committed(&self, end: u64) -> Result<(), StoreError> {
        let epoch = self.shared.progress.borrow().epoch;
        self.wait_committed_in(epoch, end).await
    }

    /// Waits until every byte below `end`, appended in `epoch` (read with
    /// [`Log::epoch`] before appending), is committed. Fails when the log
    /// failed first, and when it was healed since: the records above the
    /// committed end of their epoch were dropped then and never come back,
    /// even once new records reuse their offsets.
    pub async fn wait_committed_in(&self, epoch: u64, end: u64) -> Result<(), StoreError> {
        let mut rx = self.shared.progress.subscribe();
        let p = rx
            .wait_for(|p| p.epoch != epoch || p.committed >= end || p.failed.is_some())
            .await
            .map_err(|_| StoreError::ShuttingDown)?
            .clone();
        if p.epoch == epoch {
            return if p.committed >= end {
                Ok(())
            } else {
                Err(StoreError::Failed(
                    p.failed.as_deref().unwrap_or("unknown").to_string(),
                ))
            };
        }
        let kept = self
            .shared
            .epoch_ends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(epoch as usize)
            .copied();
        match kept {
            Some(kept) if end <= kept => Ok(()),
            _ => Err(StoreError::Failed(format!(
                "the write was not durable when the disk failed and was dropped \
                 when the log healed (epoch {epoch} ended at offset {})",
                kept.unwrap_or(0)
            ))),
        }
    }

    /// Reads and verifies the committed record at `offset`. A record that
    /// fails its checksum is reported as [`StoreError::Corrupt`], never
    /// returned.
    pub fn read(&self, offset: u64, len: u32) -> Result<Record, StoreError> {
        let at = self.locate(offset)?;
        if offset + len as u64 > at.committed || len as usize > self.shared.config.max_record_bytes
        {
            return Err(at.out_of_range(offset));
        }
        let mut buf = vec![0u8; len as usize];
        at.file
            .read_exact_at(&mut buf, at.pos)
            .map_err(StoreError::io("reading record", at.path))?;
        decode(
            &Bytes::from(buf),
            offset,
            self.shared.config.max_record_bytes,
        )
        .map(|(rec, _)| rec)
        .map_err(|source| StoreError::Corrupt { offset, source })
    }

    /// The segment holding `offset` and where in its file the offset lies,
    /// with the log's bounds at this moment; the segment map is locked only
    /// while looking.
    fn locate(&self, offset: u64) -> Result<Located, StoreError> {
        let committed = self.shared.progress.borrow().committed;
        let segments = self
            .shared
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let first = segments.keys().next().copied().unwrap_or(committed);
        let Some((_, seg)) = segments.range(..=offset).next_back() else {
            return Err(StoreError::OutOfRange {
                offset,
                first,
                committed,
            });
        };
        Ok(Located {
            committed,
            first,
            file: seg.file.clone(),
            pos: HEADER_LEN + (offset - seg.base),
            path: seg.path.clone(),
        })
    }

    /// Reads and verifies the committed record at `offset` when its length
    /// is not known (an index that keeps only offsets): the length field is
    /// read first, bounded by the record limit, then the record as
    /// [`Log::read`] does. Returns the record and its length.
    pub fn read_at(&self, offset: u64) -> Result<(Record, u32), StoreError> {
        let at = self.locate(offset)?;
        if offset.saturating_add(4) > at.committed {
            return Err(at.out_of_range(offset));
        }
        let (file, pos, path) = (at.file, at.pos, at.path);
        let mut len = [0u8; 4];
        file.read_exact_at(&mut len, pos)
            .map_err(StoreError::io("reading record length", path))?;
        let len = u32::from_le_bytes(len);
        if (len as usize) < ferry_record::HEADER_LEN {
            return Err(StoreError::Corrupt {
                offset,
                source: ferry_record::DecodeError::BadLength {
                    len,
                    min: ferry_record::HEADER_LEN,
                    max: self.shared.config.max_record_bytes,
                },
            });
        }
        self.read(offset, len).map(|rec| (rec, len))
    }

    /// Hands every committed record from `from` (a record's start) on to
    /// `visit`, in log order, until the committed end or until `max_bytes`
    /// of records were read — whichever comes first. Reads in large chunks
    /// and verifies every record's checksum, like recovery.
    ///
    /// A record that does not decode (damage recovery skipped over, never
    /// served) ends the scan of its segment; the scan goes on with the next
    /// one, and the bytes passed over are counted in [`ScanEnd::skipped`].
    /// Meant for a blocking thread: it does disk reads and takes no lock
    /// but the segment map's, briefly.
    pub fn scan(
        &self,
        from: u64,
        max_bytes: u64,
        visit: &mut dyn FnMut(u64, u32, &Record),
    ) -> Result<ScanEnd, StoreError> {
        let committed = self.shared.progress.borrow().committed;
        let max_record = self.shared.config.max_record_bytes;
        // (base, end, file, path) of every segment the scan may touch.
        let segments: Vec<(u64, u64, Arc<File>, PathBuf)> = {
            let segments = self
                .shared
                .segments
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let start = segments
                .range(..=from)
                .next_back()
                .map_or(0, |(base, _)| *base);
            let bases: Vec<u64> = segments.range(start..).map(|(b, _)| *b).collect();
            segments
                .range(start..)
                .enumerate()
                .map(|(i, (base, seg))| {
                    // A segment ends where the next begins, unless recovery
                    // found its end damaged or missing (a gap): then its
                    // file ends first, and reading on would fail.
                    let next = bases.get(i + 1).copied().unwrap_or(committed);
                    let file_end = seg.file.metadata().map_or(next, |m| {
                        base.saturating_add(m.len().saturating_sub(HEADER_LEN))
                    });
                    (
                        *base,
                        next.min(file_end).min(committed),
                        seg.file.clone(),
                        seg.path.clone(),
                    )
                })
                .collect()
        };
        let mut out = ScanEnd {
            scanned_to: from,
            complete: false,
            bytes: 0,
            skipped: 0,
        };
        let mut pos = from;
        for (base, end, file, path) in segments {
            pos = pos.max(base);
            // Bytes of this segment read ahead: [chunk_at, chunk_at + len).
            let mut chunk = Bytes::new();
            let mut chunk_at = pos;
            while pos < end {
                if out.bytes >= max_bytes {
                    out.scanned_to = pos;
                    return Ok(out);
                }
                let have = (chunk_at + chunk.len() as u64).saturating_sub(pos);
                let need = if have >= 4 {
                    let at = (pos - chunk_at) as usize;
                    peek_len(&chunk[at..]).map_or(4, |l| l as usize)
                } else {
                    4
                };
                if need < ferry_record::HEADER_LEN && have >= 4
                    || need > max_record
                    || pos + need as u64 > end
                {
                    out.skipped += end - pos;
                    tracing::warn!(segment = %path.display(), at = pos, "scan passes over an unreadable rest of a segment");
                    pos = end;
                    break;
                }
                if have < need as u64 {
                    let size = (SCAN_CHUNK.max(need) as u64).min(end - pos) as usize;
                    let mut buf = vec![0u8; size];
                    file.read_exact_at(&mut buf, HEADER_LEN + (pos - base))
                        .map_err(StoreError::io("scanning segment", &path))?;
                    chunk = Bytes::from(buf);
                    chunk_at = pos;
                    continue;
                }
                let at = (pos - chunk_at) as usize;
                match decode(&chunk.slice(at..), pos, max_record) {
                    Ok((rec, len)) => {
                        visit(pos, len as u32, &rec);
                        pos += len as u64;
                        out.bytes += len as u64;
                    }
                    Err(e) => {
                        out.skipped += end - pos;
                        tracing::warn!(segment = %path.display(), at = pos, error = %e, "scan passes over an unreadable rest of a segment");
                        pos = end;
                    }
                }
            }
        }
        out.scanned_to = pos.max(from);
        out.complete = out.scanned_to >= committed;
        Ok(out)
    }

    /// Segments in offset order; the last one is active.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let next = self.next_offset();
        let segments = self
            .shared
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let bases: Vec<u64> = segments.keys().copied().collect();
        segments
            .values()
            .enumerate()
            .map(|(i, s)| {
                let meta = std::fs::metadata(&s.path).ok();
                SegmentInfo {
                    base: s.base,
                    end: bases.get(i + 1).copied().unwrap_or(next),
                    bytes: meta.as_ref().map_or(0, |m| m.len()),
                    last_write_ms: meta
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_millis() as i64),
                    path: s.path.clone(),
                }
            })
            .collect()
    }

    /// Deletes the closed segment starting at `base`. The active segment is
    /// refused, and so is a segment not wholly committed yet, and any while
    /// the log has failed (a heal needs the segment holding the committed
    /// end). Readers that already hold the file keep reading it.
    pub fn delete_segment(&self, base: u64) -> Result<bool, StoreError> {
        let seg = {
            let p = self.lock_pending();
            if p.failed.is_some() {
                return Ok(false);
            }
            let committed = self.shared.progress.borrow().committed;
            let mut segments = self
                .shared
                .segments
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let next = segments.range(base + 1..).next().map(|(b, _)| *b);
            if base >= p.active_base || next.is_none_or(|end| end > committed) {
                return Ok(false);
            }
            let Some(seg) = segments.remove(&base) else {
                return Ok(false);
            };
            seg
        };
        let hook = self.shared.hook();
        disk::remove(hook, &seg.path).map_err(StoreError::io("deleting segment", &seg.path))?;
        segment::sync_dir_with(hook, &self.shared.config.dir)?;
        info!(path = %seg.path.display(), "segment deleted by retention");
        Ok(true)
    }

    /// Brings a failed log back once the disk works again; `Ok(false)` when
    /// it had not failed.
    ///
    /// The failed flusher is joined; every segment file at or above the
    /// committed offset (created by a roll the failure interrupted, or
    /// holding only unacknowledged bytes) is removed; the segment holding
    /// the committed end is cut back to it — torn or unacknowledged bytes
    /// above it go — after a probe write shows the disk takes writes again,
    /// and fsynced; the pending records are dropped. Then a new epoch
    /// starts: appends go on at the committed offset, and waits for records
    /// of the old epoch above it fail (see [`Log::wait_committed_in`]).
    ///
    /// When any of this fails (the fault persists) the error is returned
    /// and the log stays failed; calling again is safe.
    pub fn heal(&self) -> Result<bool, StoreError> {
        self.heal_inner(None)
    }

    /// [`Log::heal`], handing every committed record to `on_record` in log
    /// order before appends are accepted again — read as recovery reads
    /// them at open (damage recovery reported is passed over again). A
    /// caller rebuilding state from the log thus sees exactly the records
    /// the healed log holds. If reading fails the log stays failed.
    pub fn heal_and_replay(
        &self,
        on_record: &mut dyn FnMut(u64, u32, Record),
    ) -> Result<bool, StoreError> {
        self.heal_inner(Some(on_record))
    }

    fn heal_inner(
        &self,
        replay: Option<&mut dyn FnMut(u64, u32, Record)>,
    ) -> Result<bool, StoreError> {
        let _one = self.healing.lock().unwrap_or_else(|p| p.into_inner());
        let reason = {
            let p = self.lock_pending();
            if p.shutdown {
                return Err(StoreError::ShuttingDown);
            }
            match &p.failed {
                None => return Ok(false),
                Some(f) => f.clone(),
            }
        };
        // The flusher stops by itself after a failure; once it is gone
        // nothing else writes the files and the committed offset is final.
        self.join_flusher();
        let committed = self.shared.progress.borrow().committed;
        let hook = self.shared.hook();
        let dir = &self.shared.config.dir;

        // Segments at or above the committed end hold nothing acknowledged.
        // Listed from the directory: a roll that failed half way left a
        // file the segment map never had.
        self.shared
            .segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|base, _| *base < committed);
        let listing =
            std::fs::read_dir(dir).map_err(StoreError::io("listing log directory", dir))?;
        for entry in listing {
            let entry = entry.map_err(StoreError::io("listing log directory", dir))?;
            let name = entry.file_name();
            let Some(base) = segment::parse_name(&name.to_string_lossy()) else {
                continue;
            };
            if base >= committed {
                let path = entry.path();
                disk::remove(hook, &path).map_err(StoreError::io(
                    "removing a segment above the committed end",
                    &path,
                ))?;
                warn!(path = %path.display(), committed, "heal removed a segment holding nothing committed");
            }
        }
        segment::sync_dir_with(hook, dir)?;

        // Cut the segment holding the committed end back to it.
        let last = self
            .shared
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .next_back()
            .map(|(base, s)| (*base, s.path.clone()));
        let active = match last {
            None => {
                // Nothing committed is left in a segment (a fresh log, or
                // retention took the rest): start one at the committed end,
                // so the log keeps its place even if it stays empty.
                Some(self.shared.new_segment(committed)?)
            }
            Some((base, path)) => {
                let len = HEADER_LEN + (committed - base);
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(StoreError::io("opening segment to heal", &path))?;
                let on_disk = file
                    .metadata()
                    .map_err(StoreError::io("reading segment length", &path))?
                    .len();
                if on_disk < len {
                    return Err(StoreError::io("healing segment", &path)(
                        std::io::Error::other(format!(
                            "the file holds {on_disk} bytes, less than its committed end at {len}"
                        )),
                    ));
                }
                let cut = on_disk - len;
                disk::write_at(hook, &file, &path, &[0u8; HEAL_PROBE], len)
                    .map_err(StoreError::io("probing segment with a write", &path))?;
                disk::truncate(hook, &file, &path, len).map_err(StoreError::io(
                    "cutting segment back to the committed end",
                    &path,
                ))?;
                disk::sync_all(hook, &file, &path, len)
                    .map_err(StoreError::io("syncing healed segment", &path))?;
                if cut > 0 {
                    warn!(path = %path.display(), bytes = cut, committed,
                        "heal cut unacknowledged bytes above the committed end");
                }
                Some(Active {
                    base,
                    file,
                    pos: len,
                    path,
                })
            }
        };

        if let Some(visit) = replay {
            self.replay(committed, visit)?;
        }

        let mut p = self.lock_pending();
        if p.shutdown {
            return Err(StoreError::ShuttingDown);
        }
        let dropped = p.next_offset - committed;
        p.next_offset = committed;
        (p.active_base, p.active_len) = active
            .as_ref()
            .map_or((committed, 0), |a| (a.base, committed - a.base));
        p.chunks = Vec::new();
        p.bytes = 0;
        // The new flusher waits for this lock, so it starts on the state
        // set here.
        let flusher_shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name("ferry-log-flusher".into())
            .spawn(move || Flusher::new(flusher_shared, active).run())
            .map_err(StoreError::io("starting flusher thread", dir))?;
        *self.flusher.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        let ended = p.epoch;
        {
            let mut ends = self
                .shared
                .epoch_ends
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            debug_assert_eq!(ends.len() as u64, ended);
            ends.push(committed);
        }
        p.epoch = ended + 1;
        p.failed = None;
        // Published under the pending lock: no append of the new epoch can
        // be committed before its epoch is visible to waiters.
        self.shared.progress.send_modify(|pr| {
            pr.failed = None;
            pr.epoch = ended + 1;
        });
        drop(p);
        self.shared.space.notify_all();
        info!(committed, dropped_bytes = dropped, epoch = ended + 1, failure = %reason,
            "commit log healed; accepting appends again");
        Ok(true)
    }

    /// Hands every record below `committed` to `visit`, reading each
    /// segment as recovery does.
    fn replay(
        &self,
        committed: u64,
        visit: &mut dyn FnMut(u64, u32, Record),
    ) -> Result<(), StoreError> {
        let segments: Vec<(u64, Arc<File>, PathBuf)> = self
            .shared
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| (s.base, s.file.clone(), s.path.clone()))
            .collect();
        let max_record = self.shared.config.max_record_bytes;
        for (i, (base, file, path)) in segments.iter().enumerate() {
            let is_last = i + 1 == segments.len();
            let file_len = file
                .metadata()
                .map_err(StoreError::io("reading segment length", path))?
                .len();
            let len = if is_last {
                HEADER_LEN + (committed - base)
            } else {
                file_len
            };
            if len < HEADER_LEN || len > file_len {
                return Err(StoreError::io("replaying segment", path)(
                    std::io::Error::other(format!(
                        "the file holds {file_len} bytes, expected {len}"
                    )),
                ));
            }
            let mut data = vec![0u8; len as usize];
            file.read_exact_at(&mut data, 0)
                .map_err(StoreError::io("replaying segment", path))?;
            match segment::check_header(&data) {
                Ok(declared) if declared == *base => {}
                Ok(declared) => {
                    return Err(StoreError::io("replaying segment", path)(
                        std::io::Error::other(format!(
                            "header declares base {declared}, expected {base}"
                        )),
                    ))
                }
                Err(e) => {
                    return Err(StoreError::io("replaying segment", path)(
                        std::io::Error::other(e),
                    ))
                }
            }
            let body = Bytes::from(data).slice(HEADER_LEN as usize..);
            recovery::walk(&body, *base, max_record, visit);
        }
        Ok(())
    }

    /// Waits for the flusher thread to end (it ends on shutdown or after a
    /// failure); a no-op once it has been joined.
    fn join_flusher(&self) {
        let handle = self
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Flushes everything pending, fsyncs, marks the log cleanly closed and
    /// stops the flusher. Appends after this fail with `ShuttingDown`.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        {
            let mut p = self.lock_pending();
            p.shutdown = true;
        }
        self.shared.work.notify_all();
        self.shared.space.notify_all();
        self.join_flusher();
        let progress = self.progress();
        if let Some(f) = progress.failed {
            return Err(StoreError::Failed(f.to_string()));
        }
        let clean = self.shared.config.dir.join(CLEAN_MARK);
        let text = progress.committed.to_string();
        let hook = self.shared.hook();
        disk::create(hook, &clean, false)
            .and_then(|f| {
                disk::write_at(hook, &f, &clean, text.as_bytes(), 0)?;
                disk::sync_all(hook, &f, &clean, text.len() as u64)
            })
            .map_err(StoreError::io("writing clean mark", &clean))?;
        segment::sync_dir_with(hook, &self.shared.config.dir)?;
        info!(end_offset = progress.committed, "commit log closed cleanly");
        Ok(())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let mut p = self.lock_pending();
        p.shutdown = true;
        drop(p);
        self.shared.work.notify_all();
        self.join_flusher();
    }
}

/// The segment the flusher appends to.
struct Active {
    base: u64,
    file: File,
    /// File position of the next write.
    pos: u64,
    path: PathBuf,
}

/// The single writer of segment files.
struct Flusher {
    shared: Arc<Shared>,
    active: Option<Active>,
    unsynced: bool,
    last_sync: Instant,
}

impl Flusher {
    fn new(shared: Arc<Shared>, active: Option<Active>) -> Self {
        Flusher {
            shared,
            active,
            unsynced: false,
            last_sync: Instant::now(),
        }
    }

    fn run(mut self) {
        loop {
            let (chunks, end, shutdown) = {
                let mut p = self.shared.lock_pending();
                while p.chunks.is_empty() && !p.shutdown {
                    let wait = match self.shared.config.flush {
                        FlushMode::Async if self.unsynced => {
                            self.shared.config.async_flush_interval
                        }
                        _ => Duration::from_secs(3600),
                    };
                    let (g, timeout) = self
                        .shared
                        .work
                        .wait_timeout(p, wait)
                        .unwrap_or_else(|e| e.into_inner());
                    p = g;
                    if timeout.timed_out() && p.chunks.is_empty() {
                        break;
                    }
                }
                let chunks = std::mem::take(&mut p.chunks);
                (chunks, p.next_offset, p.shutdown)
            };
            let result = self.write(&chunks).and_then(|_| self.sync_if_due(shutdown));
            let written: usize = chunks.iter().map(|c| c.bytes.len()).sum();
            {
                let mut p = self.shared.lock_pending();
                p.bytes -= written;
                if let Err(e) = &result {
                    let msg: Arc<str> = Arc::from(e.to_string());
                    error!(error = %msg, "commit log write failed; refusing further appends until the log heals");
                    p.failed = Some(msg.clone());
                    self.shared.progress.send_modify(|pr| pr.failed = Some(msg));
                }
            }
            self.shared.space.notify_all();
            if result.is_ok() && !chunks.is_empty() {
                let stats = &self.shared.stats;
                stats
                    .batch_records
                    .observe(chunks.iter().map(|c| c.records).sum());
                stats.batch_bytes.observe(written as u64);
                self.shared.progress.send_modify(|pr| pr.committed = end);
            }
            if shutdown || result.is_err() {
                return;
            }
        }
    }

    fn write(&mut self, chunks: &[Chunk]) -> Result<(), StoreError> {
        for chunk in chunks {
            if self.active.as_ref().map(|a| a.base) != Some(chunk.segment_base) {
                self.roll(chunk.segment_base)?;
            }
            let a = self.active.as_mut().expect("rolled above");
            disk::write_at(self.shared.hook(), &a.file, &a.path, &chunk.bytes, a.pos)
                .map_err(StoreError::io("appending to segment", &a.path))?;
            a.pos += chunk.bytes.len() as u64;
            self.unsynced = true;
        }
        Ok(())
    }

    /// Closes the active segment (durably) and creates the next one.
    fn roll(&mut self, base: u64) -> Result<(), StoreError> {
        if let Some(old) = self.active.take() {
            self.shared.sync_segment(&old, "syncing closed segment")?;
        }
        self.active = Some(self.shared.new_segment(base)?);
        Ok(())
    }

    fn sync_if_due(&mut self, shutdown: bool) -> Result<(), StoreError> {
        if !self.unsynced {
            return Ok(());
        }
        let due = match self.shared.config.flush {
            FlushMode::Sync => true,
            FlushMode::Async => {
                shutdown || self.last_sync.elapsed() >= self.shared.config.async_flush_interval
            }
        };
        if !due {
            return Ok(());
        }
        if let Some(a) = &self.active {
            self.shared.sync_segment(a, "syncing segment")?;
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }
}
