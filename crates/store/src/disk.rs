//! The seam between the log's writer and the file system.
//!
//! Every disk operation the log's writer does — creating a segment, writing
//! its header and its records, `fdatasync`, the directory fsync, the clean
//! mark, and what [`crate::Log::heal`] cuts and removes — goes through the
//! helpers here. When a [`DiskHook`] is configured
//! ([`crate::LogConfig::disk_hook`]) it is asked first and may refuse the
//! operation or let only part of a write land: that is how tests inject disk
//! faults (see `ferry_store::faults`, feature `fault-injection`). Production
//! never sets a hook; then each helper is the plain system call behind one
//! `None` check.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What a [`DiskHook`] lets a write do.
#[derive(Debug)]
pub enum WriteVerdict {
    /// The whole write goes to the file.
    Full,
    /// The first `n` bytes land, then the write fails with the error: a
    /// torn write.
    Torn(usize, io::Error),
    /// Nothing lands; the write fails with the error.
    Fail(io::Error),
}

/// Consulted before every disk operation the log's writer does (tests only).
///
/// Paths are the ones the writer uses (`<log dir>/<segment name>`, the log
/// directory itself for directory syncs). The `*ed` methods are told after
/// an operation succeeded, so an implementation can track what a power cut
/// would keep.
pub trait DiskHook: Send + Sync + fmt::Debug {
    /// A new file is about to be created at `path`.
    fn create(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Ok(())
    }

    /// `len` bytes are about to be written at `pos` of `path`.
    fn write(&self, path: &Path, pos: u64, len: usize) -> WriteVerdict;

    /// `path` (a file) is about to be fsynced (`fdatasync` or `fsync`).
    fn sync(&self, path: &Path) -> io::Result<()>;

    /// The fsync of `path` returned OK: its first `len` bytes (its whole
    /// length) are durable.
    fn synced(&self, path: &Path, len: u64) {
        let _ = (path, len);
    }

    /// The directory `dir` is about to be fsynced.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.sync(dir)
    }

    /// The fsync of `dir` returned OK: its entries (files created or removed
    /// in it) are durable.
    fn dir_synced(&self, dir: &Path) {
        let _ = dir;
    }

    /// `path` is about to be cut to `len` bytes.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let _ = (path, len);
        Ok(())
    }

    /// `path` is about to be removed.
    fn remove(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Ok(())
    }
}

pub(crate) type Hook<'a> = Option<&'a dyn DiskHook>;

/// Creates `path`: a new file only (`new_only`), else created or emptied.
pub(crate) fn create(hook: Hook<'_>, path: &Path, new_only: bool) -> io::Result<File> {
    if let Some(h) = hook {
        h.create(path)?;
    }
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if new_only {
        o.create_new(true);
    } else {
        o.create(true).truncate(true);
    }
    o.open(path)
}

/// `write_all_at`, or what the hook lets land of it.
pub(crate) fn write_at(
    hook: Hook<'_>,
    file: &File,
    path: &Path,
    buf: &[u8],
    pos: u64,
) -> io::Result<()> {
    if let Some(h) = hook {
        match h.write(path, pos, buf.len()) {
            WriteVerdict::Full => {}
            WriteVerdict::Torn(n, e) => {
                file.write_all_at(&buf[..n.min(buf.len())], pos)?;
                return Err(e);
            }
            WriteVerdict::Fail(e) => return Err(e),
        }
    }
    file.write_all_at(buf, pos)
}

/// `fdatasync` of a file whose length is `len`.
pub(crate) fn sync_data(hook: Hook<'_>, file: &File, path: &Path, len: u64) -> io::Result<()> {
    sync_with(hook, file, path, len, File::sync_data)
}

/// `fsync` (data and metadata) of a file whose length is `len`.
pub(crate) fn sync_all(hook: Hook<'_>, file: &File, path: &Path, len: u64) -> io::Result<()> {
    sync_with(hook, file, path, len, File::sync_all)
}

fn sync_with(
    hook: Hook<'_>,
    file: &File,
    path: &Path,
    len: u64,
    sync: fn(&File) -> io::Result<()>,
) -> io::Result<()> {
    if let Some(h) = hook {
        h.sync(path)?;
    }
    sync(file)?;
    if let Some(h) = hook {
        h.synced(path, len);
    }
    Ok(())
}

/// Makes a directory's entries durable.
pub(crate) fn sync_dir(hook: Hook<'_>, dir: &Path) -> io::Result<()> {
    if let Some(h) = hook {
        h.sync_dir(dir)?;
    }
    File::open(dir).and_then(|d| d.sync_all())?;
    if let Some(h) = hook {
        h.dir_synced(dir);
    }
    Ok(())
}

/// Cuts `file` to `len` bytes (not durable until synced).
pub(crate) fn truncate(hook: Hook<'_>, file: &File, path: &Path, len: u64) -> io::Result<()> {
    if let Some(h) = hook {
        h.truncate(path, len)?;
    }
    file.set_len(len)
}

/// Removes `path`; a file already gone counts as removed.
pub(crate) fn remove(hook: Hook<'_>, path: &Path) -> io::Result<()> {
    if let Some(h) = hook {
        h.remove(path)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
