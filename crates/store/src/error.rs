use std::path::PathBuf;

use ferry_record::DecodeError;
use thiserror::Error;

/// Failures of the commit log. Each says what was being done and where.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// The log failed a write or fsync and refuses writes until it heals
    /// (`Log::heal`); or a write waited for was dropped by a heal.
    #[error("commit log refuses writes after a disk fault: {0}")]
    Failed(String),
    #[error("record at log offset {offset} is damaged: {source}")]
    Corrupt {
        offset: u64,
        #[source]
        source: DecodeError,
    },
    #[error("log offset {offset} is not readable (retained range {first}..{committed})")]
    OutOfRange {
        offset: u64,
        first: u64,
        committed: u64,
    },
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },
    #[error("commit log is shutting down")]
    ShuttingDown,
    #[error("metadata file {path} is damaged: {reason}")]
    BadMeta { path: PathBuf, reason: String },
}

impl StoreError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io {
            context,
            path,
            source,
        }
    }
}
