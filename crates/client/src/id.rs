//! Message ids, made by the client as RocketMQ's version-1 layout: 17
//! bytes as 34 upper-case hex characters — version `01`, a 6-byte host
//! part, the low 16 bits of the process id, seconds since 2021-01-01 UTC,
//! and a per-process sequence. Unique per process without coordination;
//! the host part is random per process (no MAC address is read).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// 2021-01-01T00:00:00Z in Unix seconds: the epoch of the time field.
const ID_EPOCH_SECS: u64 = 1_609_459_200;

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

fn process_prefix() -> &'static [u8; 9] {
    static PREFIX: OnceLock<[u8; 9]> = OnceLock::new();
    PREFIX.get_or_init(|| {
        // RandomState is seeded from the OS per process.
        let r = RandomState::new().hash_one(std::process::id());
        let mut p = [0u8; 9];
        p[0] = 1;
        p[1..7].copy_from_slice(&r.to_be_bytes()[..6]);
        p[7..9].copy_from_slice(&(std::process::id() as u16).to_be_bytes());
        p
    })
}

/// A fresh message id.
pub fn new_message_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(ID_EPOCH_SECS) as u32;
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 17];
    bytes[..9].copy_from_slice(process_prefix());
    bytes[9..13].copy_from_slice(&secs.to_be_bytes());
    bytes[13..].copy_from_slice(&seq.to_be_bytes());
    hex::encode_upper(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v1_shaped_and_distinct() {
        let a = new_message_id();
        let b = new_message_id();
        assert_eq!(a.len(), 34);
        assert!(a.starts_with("01"));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        assert_ne!(a, b);
        // Same process: same prefix.
        assert_eq!(a[..18], b[..18]);
    }
}
