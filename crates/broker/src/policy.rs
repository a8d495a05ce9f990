//! Per-consumer-group delivery policy: how often a message is tried, how long
//! consumers wait between tries, and whether the group consumes in FIFO
//! order per message group.
//!
//! The broker enforces `max_delivery_attempts` (the attempt after the last
//! one goes to the dead-letter topic instead) and `fifo` (one message of a
//! message group in flight at a time). The backoff steps are published to
//! clients in the Settings reply: a consumer that fails a message asks for
//! the step of its attempt when it changes the message's invisibility, so the
//! broker never has to guess how long a failing consumer needs.

use serde::{Deserialize, Serialize};

use crate::BrokerError;

/// Most backoff steps a policy may list (the last one repeats).
pub const MAX_BACKOFF_STEPS: usize = 64;
/// Shortest and longest backoff step: 1 s (the broker's minimum invisible
/// time) to 12 h (its maximum).
pub const MIN_BACKOFF_MS: u64 = 1_000;
pub const MAX_BACKOFF_MS: u64 = 12 * 3_600_000;
/// Most delivery attempts a policy may allow.
pub const MAX_ATTEMPTS: u32 = 1_000;

/// The RocketMQ default retry schedule: 1s 5s 10s 30s 1m 2m … 10m 20m 30m 1h 2h.
pub const DEFAULT_BACKOFF_MS: [u64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000,
    480_000, 540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPolicy {
    /// Deliveries of one message before it moves to `%DLQ%<group>` (17: 16
    /// retries).
    pub max_delivery_attempts: u32,
    /// Wait before retry `i` (1-based) is `backoff_ms[i-1]`; the last step
    /// repeats.
    pub backoff_ms: Vec<u64>,
    /// Messages of one message group are delivered one at a time, in order.
    pub fifo: bool,
}

impl Default for GroupPolicy {
    fn default() -> Self {
        GroupPolicy {
            max_delivery_attempts: 17,
            backoff_ms: DEFAULT_BACKOFF_MS.to_vec(),
            fifo: false,
        }
    }
}

impl GroupPolicy {
    /// Checks the policy's bounds, naming the first one broken.
    pub fn validate(&self) -> Result<(), BrokerError> {
        if self.max_delivery_attempts == 0 || self.max_delivery_attempts > MAX_ATTEMPTS {
            return Err(BrokerError::BadRequest(format!(
                "max_delivery_attempts must be 1 to {MAX_ATTEMPTS}, not {}",
                self.max_delivery_attempts
            )));
        }
        if self.backoff_ms.is_empty() || self.backoff_ms.len() > MAX_BACKOFF_STEPS {
            return Err(BrokerError::BadRequest(format!(
                "backoff needs 1 to {MAX_BACKOFF_STEPS} steps, not {}",
                self.backoff_ms.len()
            )));
        }
        if let Some((i, ms)) = self
            .backoff_ms
            .iter()
            .enumerate()
            .find(|(_, ms)| !(MIN_BACKOFF_MS..=MAX_BACKOFF_MS).contains(ms))
        {
            return Err(BrokerError::BadRequest(format!(
                "backoff step {} is {ms} ms; steps must be {MIN_BACKOFF_MS} to {MAX_BACKOFF_MS} ms",
                i + 1
            )));
        }
        Ok(())
    }
}

/// Parses a backoff list such as `1s 5s 500ms 2m 1h` (spaces or commas).
pub fn parse_backoff(text: &str) -> Result<Vec<u64>, String> {
    let mut steps = Vec::new();
    for word in text.split([' ', ',']).filter(|w| !w.is_empty()) {
        steps.push(parse_duration_ms(word)?);
    }
    if steps.is_empty() {
        return Err("the backoff list is empty".into());
    }
    Ok(steps)
}

/// Parses `250ms`, `5s`, `2m`, `1h` into milliseconds.
pub fn parse_duration_ms(word: &str) -> Result<u64, String> {
    let split = word
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{word:?} needs a unit: ms, s, m or h"))?;
    let (num, unit) = word.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{word:?} does not start with a number"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{word:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{word:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_follow_the_rocketmq_schedule() {
        let p = GroupPolicy::default();
        p.validate().unwrap();
        assert_eq!(p.max_delivery_attempts, 17);
        assert_eq!(p.backoff_ms.len(), 18);
        assert_eq!((p.backoff_ms[0], p.backoff_ms[1]), (1_000, 5_000));
        assert_eq!(p.backoff_ms[17], 7_200_000);
    }

    #[test]
    fn bounds_are_named() {
        let mut p = GroupPolicy {
            max_delivery_attempts: 0,
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("1 to 1000"));
        p.max_delivery_attempts = 3;
        p.backoff_ms = vec![1_000, 10];
        assert!(p.validate().unwrap_err().to_string().contains("step 2"));
        p.backoff_ms = vec![];
        assert!(p.validate().is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(
            parse_backoff("1s 5s,500ms  2m 1h").unwrap(),
            vec![1_000, 5_000, 500, 120_000, 3_600_000]
        );
        assert!(parse_backoff("").is_err());
        assert!(parse_backoff("5").is_err());
        assert!(parse_backoff("5d").is_err());
        assert!(parse_backoff("x5s").is_err());
    }
}
