//! Small metadata files (topic definitions and the like), written atomically
//! and checksummed: write a temporary file, fsync it, rename it over the old
//! one, fsync the directory. The first line holds the CRC32C of the JSON that
//! follows, so a damaged file is detected rather than half-parsed.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use crate::segment::sync_dir;
use crate::StoreError;

/// Writes `value` to `path` atomically.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let json = serde_json::to_string_pretty(value).map_err(|e| StoreError::BadMeta {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(StoreError::io("creating metadata", &tmp))?;
    let text = format!("crc32c={:08x}\n{json}\n", crc32c::crc32c(json.as_bytes()));
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(StoreError::io("writing metadata", &tmp))?;
    fs::rename(&tmp, path).map_err(StoreError::io("replacing metadata", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Reads a file written by [`write`]; `Ok(None)` when it does not exist.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("reading metadata", path)(e)),
    };
    let bad = |reason: &str| StoreError::BadMeta {
        path: path.into(),
        reason: reason.into(),
    };
    let (first, rest) = text
        .split_once('\n')
        .ok_or_else(|| bad("no checksum line"))?;
    let stored = first
        .strip_prefix("crc32c=")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| bad("unreadable checksum line"))?;
    // Written with a final newline: without it the file was cut short,
    // even if what is left happens to match its checksum.
    let json = rest
        .strip_suffix('\n')
        .ok_or_else(|| bad("truncated (no final newline)"))?;
    if crc32c::crc32c(json.as_bytes()) != stored {
        return Err(bad("checksum mismatch"));
    }
    serde_json::from_str(json)
        .map(Some)
        .map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        assert_eq!(read::<Vec<u32>>(&p).unwrap(), None);
        write(&p, &vec![1u32, 2, 3]).unwrap();
        assert_eq!(read::<Vec<u32>>(&p).unwrap(), Some(vec![1, 2, 3]));
        let mut raw = fs::read(&p).unwrap();
        let last = raw.len() - 3;
        raw[last] ^= 0x04;
        fs::write(&p, raw).unwrap();
        assert!(matches!(
            read::<Vec<u32>>(&p),
            Err(StoreError::BadMeta { .. })
        ));
    }

    #[test]
    fn a_cut_at_any_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        write(&p, &vec![1u32, 2, 3]).unwrap();
        let raw = fs::read(&p).unwrap();
        for len in 0..raw.len() {
            fs::write(&p, &raw[..len]).unwrap();
            assert!(
                matches!(read::<Vec<u32>>(&p), Err(StoreError::BadMeta { .. })),
                "cut to {len} of {} bytes went unnoticed",
                raw.len()
            );
        }
    }
}
