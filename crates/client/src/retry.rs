//! Retry policies as the broker hands them out in the settings exchange:
//! how often to try and how long to wait between tries.

use std::time::Duration;

use std::future::Future;

use ferry_proto::v2 as pb;

use crate::error::Result;
use crate::message::from_duration;

/// Runs `op` until it succeeds, fails with an error not worth retrying,
/// or has been tried `attempts` times; pauses `pause × n` after the n-th
/// failure. Settling calls (ack, nack, dead-letter forward, EndTransaction)
/// use it: their failure only delays an outcome the broker reaches anyway.
pub(crate) async fn with_retries<T, F, Fut>(attempts: u32, pause: Duration, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if e.is_retryable() && attempt < attempts => {
                tokio::time::sleep(pause * attempt).await;
                attempt += 1;
            }
            done => return done,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// `initial × multiplier^(n-1)`, capped at `max`.
    Exponential {
        initial: Duration,
        max: Duration,
        multiplier: f32,
    },
    /// Step `n-1` after the n-th attempt; the last step repeats.
    Customized(Vec<Duration>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    pub backoff: Backoff,
}

/// Longest single wait the client accepts from a policy, whatever the
/// broker says: a typo in a policy must not park a client for days.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2 * 3600);

impl RetryPolicy {
    /// A producer's policy until the broker says otherwise: 3 attempts,
    /// 10 ms doubling to 1 s.
    pub fn producer_default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Exponential {
                initial: Duration::from_millis(10),
                max: Duration::from_secs(1),
                multiplier: 2.0,
            },
        }
    }

    /// A consumer's policy until the broker says otherwise: 17 attempts,
    /// RocketMQ's customary steps.
    pub fn consumer_default() -> Self {
        let s = Duration::from_secs;
        RetryPolicy {
            max_attempts: 17,
            backoff: Backoff::Customized(vec![
                s(1),
                s(5),
                s(10),
                s(30),
                s(60),
                s(120),
                s(180),
                s(240),
                s(300),
                s(360),
                s(420),
                s(480),
                s(540),
                s(600),
                s(1200),
                s(1800),
                s(3600),
                s(7200),
            ]),
        }
    }

    pub(crate) fn from_wire(p: &pb::RetryPolicy, fallback: &RetryPolicy) -> RetryPolicy {
        let backoff = match &p.strategy {
            Some(pb::retry_policy::Strategy::ExponentialBackoff(e)) => Backoff::Exponential {
                initial: e.initial.as_ref().map_or(Duration::ZERO, from_duration),
                max: e.max.as_ref().map_or(MAX_BACKOFF, from_duration),
                multiplier: if e.multiplier.is_finite() && e.multiplier >= 1.0 {
                    e.multiplier
                } else {
                    1.0
                },
            },
            Some(pb::retry_policy::Strategy::CustomizedBackoff(c)) if !c.next.is_empty() => {
                Backoff::Customized(c.next.iter().map(from_duration).collect())
            }
            _ => fallback.backoff.clone(),
        };
        RetryPolicy {
            max_attempts: if p.max_attempts > 0 {
                p.max_attempts as u32
            } else {
                fallback.max_attempts
            },
            backoff,
        }
    }

    /// How long to wait after the `attempt`-th attempt (1-based) failed.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let n = attempt.max(1);
        let d = match &self.backoff {
            Backoff::Exponential {
                initial,
                max,
                multiplier,
            } => {
                let factor = f64::from(*multiplier).powi((n - 1).min(64) as i32);
                let ms = initial.as_secs_f64() * factor;
                Duration::from_secs_f64(ms.min(max.as_secs_f64())).min(*max)
            }
            Backoff::Customized(steps) => {
                let i = ((n - 1) as usize).min(steps.len().saturating_sub(1));
                steps.get(i).copied().unwrap_or(Duration::ZERO)
            }
        };
        d.min(MAX_BACKOFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_and_caps() {
        let p = RetryPolicy::producer_default();
        assert_eq!(p.delay_after(1), Duration::from_millis(10));
        assert_eq!(p.delay_after(2), Duration::from_millis(20));
        assert_eq!(p.delay_after(8), Duration::from_secs(1));
        assert_eq!(p.delay_after(1000), Duration::from_secs(1));
    }

    #[test]
    fn customized_repeats_its_last_step() {
        let p = RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Customized(vec![Duration::from_secs(1), Duration::from_secs(5)]),
        };
        assert_eq!(p.delay_after(1), Duration::from_secs(1));
        assert_eq!(p.delay_after(2), Duration::from_secs(5));
        assert_eq!(p.delay_after(9), Duration::from_secs(5));
    }

    #[test]
    fn wire_policies_fall_back_where_empty() {
        let fallback = RetryPolicy::consumer_default();
        let p = RetryPolicy::from_wire(&pb::RetryPolicy::default(), &fallback);
        assert_eq!(p, fallback);
        let wire = pb::RetryPolicy {
            max_attempts: 3,
            strategy: Some(pb::retry_policy::Strategy::CustomizedBackoff(
                pb::CustomizedBackoff {
                    next: vec![prost_types::Duration {
                        seconds: 2,
                        nanos: 0,
                    }],
                },
            )),
        };
        let p = RetryPolicy::from_wire(&wire, &fallback);
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.delay_after(4), Duration::from_secs(2));
    }
}
