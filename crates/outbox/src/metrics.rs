//! Counters and gauges, as plain atomics a caller can read or render in the
//! Prometheus text format. No registry dependency: an application already
//! has its own, and copying a few numbers into it is one line each.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The writer's side.
#[derive(Debug, Default)]
pub struct OutboxMetrics {
    /// Rows written by `enqueue` (their transactions may still roll back).
    pub enqueued: AtomicU64,
}

/// The relay's side.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    /// Rows claimed (leased) for publishing.
    pub claimed: AtomicU64,
    /// Rows claimed again after an earlier try: a crashed relay's lease
    /// ran out, or a publish failed. Each may be a duplicate downstream.
    pub reclaimed: AtomicU64,
    /// Rows published and marked sent.
    pub published: AtomicU64,
    /// Rows whose publish failed (they retry after a delay).
    pub publish_failures: AtomicU64,
    /// Rows given up on and parked as failed.
    pub parked: AtomicU64,
    /// Rows left unpublished because the lease was nearly over.
    pub lease_timeouts: AtomicU64,
    /// Sent rows and stale key rows deleted by cleanup.
    pub cleaned: AtomicU64,
    /// Gauge: pending rows, at the last stats pass.
    pub pending: AtomicI64,
    /// Gauge: age of the oldest pending row (ms), at the last stats pass.
    pub oldest_pending_age_ms: AtomicI64,
    /// Gauge: parked (failed) rows, at the last stats pass.
    pub failed_rows: AtomicI64,
    /// Gauge: commit-to-publish lag of the last published batch's oldest
    /// row (ms, database clock).
    pub lag_ms: AtomicI64,
}

/// The consumer's side.
#[derive(Debug, Default)]
pub struct InboxMetrics {
    /// Messages whose handler ran.
    pub processed: AtomicU64,
    /// Redeliveries recognised and dropped.
    pub duplicates: AtomicU64,
    /// Inbox rows deleted after the dedup window.
    pub cleaned: AtomicU64,
}

fn line(out: &mut String, name: &str, kind: &str, help: &str, value: i128) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

fn c(a: &AtomicU64) -> i128 {
    a.load(Ordering::Relaxed).into()
}

fn g(a: &AtomicI64) -> i128 {
    a.load(Ordering::Relaxed).into()
}

impl OutboxMetrics {
    pub fn render(&self, out: &mut String) {
        line(
            out,
            "ferry_outbox_enqueued_total",
            "counter",
            "Rows written by enqueue.",
            c(&self.enqueued),
        );
    }
}

impl RelayMetrics {
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &str, i128); 11] = [
            (
                "ferry_outbox_claimed_total",
                "counter",
                "Rows claimed for publishing.",
                c(&self.claimed),
            ),
            (
                "ferry_outbox_reclaimed_total",
                "counter",
                "Rows claimed again after an earlier try.",
                c(&self.reclaimed),
            ),
            (
                "ferry_outbox_published_total",
                "counter",
                "Rows published and marked sent.",
                c(&self.published),
            ),
            (
                "ferry_outbox_publish_failures_total",
                "counter",
                "Row publishes that failed.",
                c(&self.publish_failures),
            ),
            (
                "ferry_outbox_parked_total",
                "counter",
                "Rows given up on (state failed).",
                c(&self.parked),
            ),
            (
                "ferry_outbox_lease_timeouts_total",
                "counter",
                "Rows not published because their lease was nearly over.",
                c(&self.lease_timeouts),
            ),
            (
                "ferry_outbox_cleaned_total",
                "counter",
                "Sent and key rows deleted by cleanup.",
                c(&self.cleaned),
            ),
            (
                "ferry_outbox_pending",
                "gauge",
                "Pending rows.",
                g(&self.pending),
            ),
            (
                "ferry_outbox_oldest_pending_age_ms",
                "gauge",
                "Age of the oldest pending row, database clock.",
                g(&self.oldest_pending_age_ms),
            ),
            (
                "ferry_outbox_failed_rows",
                "gauge",
                "Rows parked as failed.",
                g(&self.failed_rows),
            ),
            (
                "ferry_outbox_relay_lag_ms",
                "gauge",
                "Commit-to-publish lag of the last batch's oldest row.",
                g(&self.lag_ms),
            ),
        ];
        for (name, kind, help, v) in rows {
            line(out, name, kind, help, v);
        }
    }
}

impl InboxMetrics {
    pub fn render(&self, out: &mut String) {
        line(
            out,
            "ferry_inbox_processed_total",
            "counter",
            "Messages whose handler ran.",
            c(&self.processed),
        );
        line(
            out,
            "ferry_inbox_duplicates_total",
            "counter",
            "Redeliveries dropped.",
            c(&self.duplicates),
        );
        line(
            out,
            "ferry_inbox_cleaned_total",
            "counter",
            "Inbox rows deleted after the window.",
            c(&self.cleaned),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = RelayMetrics::default();
        m.published.fetch_add(3, Ordering::Relaxed);
        m.lag_ms.store(12, Ordering::Relaxed);
        let mut s = String::new();
        m.render(&mut s);
        assert!(s.contains("ferry_outbox_published_total 3\n"), "{s}");
        assert!(
            s.contains("# TYPE ferry_outbox_relay_lag_ms gauge\nferry_outbox_relay_lag_ms 12\n")
        );
    }
}
