//! Retention: which closed segments may be deleted. Pure — the caller
//! supplies the segment list and the clock, and decides what to warn about
//! before it deletes.

use std::time::Duration;

/// Limits on how much log is kept. A segment goes when it is older than
/// `max_age`, or when the log exceeds `max_bytes` (oldest first). The active
/// segment is never deleted.
#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        // RocketMQ keeps commit-log files for 72 hours by default.
        RetentionPolicy {
            max_age: Duration::from_secs(72 * 3600),
            max_bytes: u64::MAX,
        }
    }
}

/// What retention needs to know about one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStat {
    pub base: u64,
    pub bytes: u64,
    /// Time of the last write to the segment, ms since the Unix epoch.
    pub last_write_ms: i64,
}

/// Returns the bases of the segments to delete, oldest first. `segments`
/// must be sorted by base; the last one is the active segment.
pub fn expired(segments: &[SegmentStat], now_ms: i64, policy: RetentionPolicy) -> Vec<u64> {
    let Some((_active, closed)) = segments.split_last() else {
        return Vec::new();
    };
    let max_age_ms = i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX);
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    let mut out = Vec::new();
    for s in closed {
        let too_old = now_ms.saturating_sub(s.last_write_ms) > max_age_ms;
        let too_big = total > policy.max_bytes;
        if !(too_old || too_big) {
            // Segments are in age order: once one stays, later ones stay too.
            break;
        }
        total -= s.bytes;
        out.push(s.base);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: u64, bytes: u64, t: i64) -> SegmentStat {
        SegmentStat {
            base,
            bytes,
            last_write_ms: t,
        }
    }

    #[test]
    fn age_and_size_limits() {
        let policy = RetentionPolicy {
            max_age: Duration::from_millis(100),
            max_bytes: 250,
        };
        let segs = [seg(0, 100, 0), seg(100, 100, 150), seg(200, 100, 190)];
        // Age removes the first; size (300 > 250) would too; then 200 <= 250.
        assert_eq!(expired(&segs, 200, policy), vec![0]);
        // The active segment survives any age.
        assert_eq!(expired(&segs, 10_000, policy), vec![0, 100]);
        assert!(expired(&segs[..1], 10_000, policy).is_empty());
        let roomy = RetentionPolicy {
            max_age: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        };
        assert!(expired(&segs, 200, roomy).is_empty());
    }
}
