//! The durable commit log.
//!
//! One append-only log, cut into segment files, holds every record Ferry
//! keeps (see `ferry-record`). This crate owns those files:
//!
//! * [`Log`] — appends are buffered by the caller's thread and made durable
//!   by one flusher thread that writes the whole pending batch and calls
//!   `fdatasync` once (group commit). Callers wait on the published
//!   *committed* offset; in `sync` mode nothing is committed before it is on
//!   disk.
//! * [`segment`] — the segment file header (magic, version, base offset,
//!   checksum) and file naming.
//! * [`recovery`] — the start-up scan: every record's checksum and offset is
//!   verified, damaged ranges are skipped and reported, a torn tail is
//!   truncated.
//! * [`retention`] — which segments age or size limits allow to delete.
//! * [`meta`] — small checksummed metadata files written atomically.
//! * [`stats`] — fsync latency and group-commit size histograms the
//!   flusher keeps with relaxed atomics (no metrics crate here); the server
//!   renders them.
//! * [`disk`] — the seam every disk operation of the writer passes, where
//!   tests inject faults (`faults::FaultyDisk`, feature `fault-injection`).
//!
//! Nothing here knows about topics or consumer groups; the broker core turns
//! records into state.

pub mod disk;
mod error;
#[cfg(feature = "fault-injection")]
pub mod faults;
mod log;
pub mod meta;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod stats;

pub use disk::{DiskHook, WriteVerdict};
pub use error::StoreError;
pub use log::{FlushMode, Log, LogConfig, Progress, ScanEnd, SegmentInfo};
pub use recovery::{DroppedRange, RecoveryReport};
pub use stats::{Histogram, HistogramSnapshot, LogStats};
