//! The scheduler task: fires due timers and sends transaction check-backs.
//!
//! It sleeps until the core's next deadline (a timer or a check), or until
//! the engine says the schedule changed. Check-backs go out over the
//! Telemetry stream of a connected producer of the topic (the one with the
//! most room), at most `max_checks_per_second`, and never wait on a slow
//! client: a check is only decided while some producer of the topic has room
//! on its stream (otherwise it is postponed without counting), and a stream
//! that closes in between loses that one check (counted as failed; the next
//! interval asks again) without holding up the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::v2 as pb;
use tokio::sync::watch;
use tracing::{debug, error, warn};

use crate::clients::Clients;
use crate::convert;
use crate::engine::{now_ms, Engine};
use crate::metrics::Metrics;

/// Longest sleep between looks, so a clock jump cannot strand the schedule.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Most timers fired in one pass; the pass repeats at once if more are due.
const FIRE_BATCH: usize = 4096;

pub async fn run(
    engine: Arc<Engine>,
    clients: Arc<Clients>,
    store_host: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut limit = RateLimit::new(engine.transaction_config().max_checks_per_second);
    let mut last = tokio::time::Instant::now();
    loop {
        let changed = engine.schedule_changed();
        let changed = changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();

        let fired = match engine.fire_timers(FIRE_BATCH).await {
            Ok(n) => n,
            Err(e) => {
                error!(error = %e, "firing timers failed");
                0
            }
        };

        let now = tokio::time::Instant::now();
        limit.refill(now.duration_since(last));
        last = now;
        let budget = limit.budget();
        if budget > 0 {
            // A check is decided (and counted) only when a producer of the
            // topic has room on its stream for it in this round.
            let mut room: HashMap<String, usize> = HashMap::new();
            let mut online = |topic: &str| {
                let left = room
                    .entry(topic.to_string())
                    .or_insert_with(|| clients.producer_room(topic));
                if *left == 0 {
                    return false;
                }
                *left -= 1;
                true
            };
            match engine.run_checks(budget, &mut online).await {
                Ok(checks) => {
                    limit.spend(checks.len());
                    for cb in checks {
                        let topic = cb.order.topic.clone();
                        let Some(tx) = clients.producer_for(&topic) else {
                            warn!(%topic, transaction = %cb.order.transaction_id,
                                "producer went away before its check-back was sent");
                            continue;
                        };
                        let cmd = pb::TelemetryCommand {
                            status: None,
                            command: Some(
                                pb::telemetry_command::Command::RecoverOrphanedTransactionCommand(
                                    pb::RecoverOrphanedTransactionCommand {
                                        message: Some(convert::stored_message(
                                            cb.message,
                                            cb.store_ms,
                                            &topic,
                                            &store_host,
                                            // Check-backs are rare: the
                                            // digest every client checks.
                                            convert::BodyDigest::Md5,
                                        )),
                                        transaction_id: cb.order.transaction_id.clone(),
                                    },
                                ),
                            ),
                        };
                        match tx.try_send(Ok(cmd)) {
                            Ok(()) => {
                                Metrics::add(&engine.metrics.tx_checks_sent, 1);
                                debug!(%topic, transaction = %cb.order.transaction_id,
                                    check = cb.order.check, "check-back sent");
                            }
                            Err(e) => {
                                Metrics::add(&engine.metrics.tx_checks_failed, 1);
                                warn!(%topic, transaction = %cb.order.transaction_id, error = %e,
                                    "check-back could not be sent; the next interval asks again");
                            }
                        }
                    }
                }
                Err(e) => error!(error = %e, "transaction check round failed"),
            }
        }
        if fired >= FIRE_BATCH {
            continue;
        }
        let mut sleep = MAX_SLEEP;
        if let Some(due) = engine.next_due() {
            let ms = (due - now_ms()).max(0) as u64;
            sleep = sleep.min(Duration::from_millis(ms));
        }
        if limit.budget() == 0 {
            sleep = sleep.max(Duration::from_millis(10));
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = &mut changed => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// A token bucket: at most `per_second` check-backs a second, with bursts
/// up to one second's worth.
#[derive(Debug)]
struct RateLimit {
    per_second: f64,
    tokens: f64,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        RateLimit {
            per_second,
            tokens: per_second,
        }
    }

    fn refill(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + self.per_second * elapsed.as_secs_f64()).min(self.per_second);
    }

    /// Check-backs that may be sent now.
    fn budget(&self) -> usize {
        self.tokens.max(0.0) as usize
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_one_second_of_burst_then_the_rate() {
        let mut r = RateLimit::new(100);
        assert_eq!(r.budget(), 100);
        r.spend(100);
        assert_eq!(r.budget(), 0);
        r.refill(Duration::from_millis(250));
        assert_eq!(r.budget(), 25);
        r.refill(Duration::from_secs(60));
        assert_eq!(r.budget(), 100, "idle time does not build a bigger burst");
        assert_eq!(RateLimit::new(0).budget(), 1, "zero means one a second");
    }
}
