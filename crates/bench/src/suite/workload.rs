//! Workloads described in TOML files: what is sent, how fast, for how long.
//!
//! ```toml
//! name = "1kib-max"
//! description = "1 KiB messages, as fast as acknowledgements allow"
//! kind = "normal"          # normal | transactional | fifo | delayed
//! message_size = 1024      # bytes, header included (at least 24)
//! batch_size = 1           # messages per publish call
//! producers = 1            # producer clients
//! in_flight = 256          # publish calls outstanding per producer
//! consumers = 4            # consumer clients
//! rate = "max"             # or messages per second over all producers
//! warmup_s = 5.0
//! duration_s = 30.0
//! groups = 100             # fifo: message groups (in_flight is then one per group)
//! delay_ms = 1000          # delayed: delivery this long after the send
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The smallest body: the header the suite writes into every message.
pub const HEADER_BYTES: usize = 24;
/// Limits that keep a typo from exhausting the machine.
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
pub const MAX_BATCH: usize = 1024;
pub const MAX_CLIENTS: usize = 64;
pub const MAX_IN_FLIGHT: usize = 4096;
pub const MAX_GROUPS: usize = 4096;
pub const MAX_SECONDS: f64 = 3600.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Normal,
    /// Half message, then commit; acknowledged once the commit is.
    Transactional,
    /// Ordered per message group.
    Fifo,
    /// Delivered `delay_ms` after the send.
    Delayed,
}

/// Target publish rate over all producers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rate {
    /// Messages per second.
    Fixed(u64),
    /// `"max"`: as fast as the in-flight window allows.
    Named(MaxRate),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaxRate {
    Max,
}

impl Rate {
    pub fn per_second(&self) -> Option<u64> {
        match self {
            Rate::Fixed(n) => Some(*n),
            Rate::Named(MaxRate::Max) => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub kind: Kind,
    pub message_size: usize,
    #[serde(default = "one")]
    pub batch_size: usize,
    #[serde(default = "one")]
    pub producers: usize,
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    #[serde(default = "default_consumers")]
    pub consumers: usize,
    pub rate: Rate,
    pub warmup_s: f64,
    pub duration_s: f64,
    #[serde(default)]
    pub groups: usize,
    #[serde(default)]
    pub delay_ms: u64,
}

fn one() -> usize {
    1
}
fn default_in_flight() -> usize {
    256
}
fn default_consumers() -> usize {
    4
}

/// The standard set, as shipped in `crates/bench/workloads/`.
const STANDARD: &[(&str, &str)] = &[
    (
        "1kib-max.toml",
        include_str!("../../workloads/1kib-max.toml"),
    ),
    (
        "1kib-max-batch32.toml",
        include_str!("../../workloads/1kib-max-batch32.toml"),
    ),
    (
        "1kib-20k.toml",
        include_str!("../../workloads/1kib-20k.toml"),
    ),
    (
        "100b-max.toml",
        include_str!("../../workloads/100b-max.toml"),
    ),
    (
        "tx-1kib-max.toml",
        include_str!("../../workloads/tx-1kib-max.toml"),
    ),
    (
        "fifo-100-groups.toml",
        include_str!("../../workloads/fifo-100-groups.toml"),
    ),
    (
        "delayed-1s.toml",
        include_str!("../../workloads/delayed-1s.toml"),
    ),
];

impl Workload {
    pub fn parse(text: &str, origin: &str) -> Result<Workload, String> {
        let w: Workload = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        w.check().map_err(|e| format!("{origin}: {e}"))?;
        Ok(w)
    }

    pub fn load(path: &Path) -> Result<Workload, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Workload::parse(&text, &path.display().to_string())
    }

    /// The standard workloads, in report order.
    pub fn standard() -> Vec<Workload> {
        STANDARD
            .iter()
            .map(|(file, text)| Workload::parse(text, file).expect("shipped workloads are valid"))
            .collect()
    }

    /// Publish lanes per producer: each sends one batch at a time. A FIFO
    /// workload has one lane per message group so a group's messages are
    /// sent one after another (send order is then store order).
    pub fn lanes(&self) -> usize {
        match self.kind {
            Kind::Fifo => self.groups,
            _ => self.in_flight,
        }
    }

    /// Shortens the run for a smoke test: seconds, not minutes. Rates stay
    /// as they are; delays are capped at half a second.
    pub fn smoke(mut self) -> Workload {
        self.warmup_s = self.warmup_s.min(0.5);
        self.duration_s = self.duration_s.min(1.5);
        self.delay_ms = self.delay_ms.min(500);
        self
    }

    fn check(&self) -> Result<(), String> {
        let bad = |what: &str| Err(format!("workload {:?}: {what}", self.name));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("name must be non-empty ASCII letters, digits, '-' or '_'");
        }
        if self.message_size < HEADER_BYTES || self.message_size > MAX_MESSAGE_SIZE {
            return bad(&format!(
                "message_size must be {HEADER_BYTES}..={MAX_MESSAGE_SIZE} bytes"
            ));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return bad(&format!("batch_size must be 1..={MAX_BATCH}"));
        }
        if self.producers == 0 || self.producers > MAX_CLIENTS {
            return bad(&format!("producers must be 1..={MAX_CLIENTS}"));
        }
        if self.consumers == 0 || self.consumers > MAX_CLIENTS {
            return bad(&format!("consumers must be 1..={MAX_CLIENTS}"));
        }
        if self.in_flight == 0 || self.in_flight > MAX_IN_FLIGHT {
            return bad(&format!("in_flight must be 1..={MAX_IN_FLIGHT}"));
        }
        if self.rate == Rate::Fixed(0) {
            return bad("rate must be \"max\" or a positive number of messages per second");
        }
        if !(self.warmup_s >= 0.0 && self.warmup_s <= MAX_SECONDS) {
            return bad(&format!("warmup_s must be 0..={MAX_SECONDS}"));
        }
        if !(self.duration_s > 0.0 && self.duration_s <= MAX_SECONDS) {
            return bad(&format!(
                "duration_s must be above 0 and at most {MAX_SECONDS}"
            ));
        }
        match self.kind {
            Kind::Fifo if self.groups == 0 || self.groups > MAX_GROUPS => {
                bad(&format!("a fifo workload needs groups = 1..={MAX_GROUPS}"))
            }
            Kind::Fifo if self.batch_size != 1 => {
                bad("a fifo workload sends one message per call (batch_size = 1)")
            }
            Kind::Delayed if self.delay_ms == 0 || self.delay_ms > 3_600_000 => {
                bad("a delayed workload needs delay_ms = 1..=3600000")
            }
            Kind::Transactional if self.batch_size != 1 => bad(
                "a transactional workload sends one half message per transaction (batch_size = 1)",
            ),
            Kind::Normal | Kind::Transactional | Kind::Delayed if self.groups != 0 => {
                bad("groups applies to fifo workloads only")
            }
            Kind::Normal | Kind::Transactional | Kind::Fifo if self.delay_ms != 0 => {
                bad("delay_ms applies to delayed workloads only")
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_workloads_parse() {
        let all = Workload::standard();
        assert_eq!(all.len(), STANDARD.len());
        assert!(all.iter().any(|w| w.kind == Kind::Fifo && w.groups == 100));
        assert!(all.iter().any(|w| w.rate == Rate::Fixed(20_000)));
    }

    #[test]
    fn bad_workloads_are_refused_with_the_reason() {
        let base = "name = \"x\"\nkind = \"normal\"\nmessage_size = 1024\nrate = \"max\"\nwarmup_s = 1\nduration_s = 2\n";
        assert!(Workload::parse(base, "t").is_ok());
        let e = Workload::parse(&base.replace("1024", "10"), "t").unwrap_err();
        assert!(e.contains("message_size"), "{e}");
        let e = Workload::parse(&base.replace("\"max\"", "\"fast\""), "t").unwrap_err();
        assert!(e.contains("rate"), "{e}");
        let e = Workload::parse(&format!("{base}colour = 1\n"), "t").unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = Workload::parse(&base.replace("normal", "fifo"), "t").unwrap_err();
        assert!(e.contains("groups"), "{e}");
        let e = Workload::parse(&format!("{base}delay_ms = 5\n"), "t").unwrap_err();
        assert!(e.contains("delay_ms"), "{e}");
        let e =
            Workload::parse(&base.replace("duration_s = 2", "duration_s = 0"), "t").unwrap_err();
        assert!(e.contains("duration_s"), "{e}");
    }
}
