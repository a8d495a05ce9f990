//! Segment files: naming and the 64-byte header.
//!
//! A segment is named by the log offset of its first record (20 decimal
//! digits, `.seg`). Its header repeats that base offset under a checksum, so
//! a file renamed by mistake, or stale bytes in a reused file, can never be
//! read as data at the wrong offset. Record bytes follow the header; the
//! record at file position `p` has log offset `base + (p - HEADER_LEN)`.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::disk::{self, Hook};
use crate::StoreError;

pub const HEADER_LEN: u64 = 64;
const MAGIC: &[u8; 8] = b"FERRYSEG";
const VERSION: u32 = 1;

pub fn file_name(base: u64) -> String {
    format!("{base:020}.seg")
}

/// Parses a segment file name back into its base offset.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes a header for a segment starting at `base`.
pub fn encode_header(base: u64, created_ms: i64, term: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    h[24..32].copy_from_slice(&created_ms.to_le_bytes());
    h[32..40].copy_from_slice(&term.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a header read from disk; returns the base offset it declares.
pub fn check_header(h: &[u8]) -> Result<u64, String> {
    if h.len() < HEADER_LEN as usize {
        return Err(format!("header truncated to {} bytes", h.len()));
    }
    if &h[0..8] != MAGIC {
        return Err("bad magic".into());
    }
    let crc = u32::from_le_bytes(h[60..64].try_into().expect("4"));
    if crc != crc32c::crc32c(&h[0..60]) {
        return Err("header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4"));
    if version != VERSION {
        return Err(format!("unsupported segment version {version}"));
    }
    Ok(u64::from_le_bytes(h[16..24].try_into().expect("8")))
}

/// Creates a new segment file with its header, durably: the header and the
/// directory entry are fsynced before the file is used.
pub fn create(dir: &Path, base: u64, created_ms: i64) -> Result<(PathBuf, File), StoreError> {
    create_with(None, dir, base, created_ms)
}

/// [`create`], each disk operation passed by `hook` first.
pub(crate) fn create_with(
    hook: Hook<'_>,
    dir: &Path,
    base: u64,
    created_ms: i64,
) -> Result<(PathBuf, File), StoreError> {
    let path = dir.join(file_name(base));
    let f = disk::create(hook, &path, true).map_err(StoreError::io("creating segment", &path))?;
    disk::write_at(hook, &f, &path, &encode_header(base, created_ms, 0), 0)
        .map_err(StoreError::io("writing segment header", &path))?;
    disk::sync_all(hook, &f, &path, HEADER_LEN)
        .map_err(StoreError::io("syncing segment header", &path))?;
    sync_dir_with(hook, dir)?;
    Ok((path, f))
}

/// Makes a directory's entries (created, renamed or deleted files) durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    sync_dir_with(None, dir)
}

pub(crate) fn sync_dir_with(hook: Hook<'_>, dir: &Path) -> Result<(), StoreError> {
    disk::sync_dir(hook, dir).map_err(StoreError::io("syncing directory", dir))
}
