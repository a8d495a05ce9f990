//! RocketMQ message types, and the set of them a topic accepts.
//!
//! A topic that only carries orders in FIFO order should refuse a stray
//! delayed or transactional message rather than mix it in: its consumers
//! were written for one kind. The set is topic configuration (kept in
//! `meta/topics.json` with the queue count), checked when a batch is
//! admitted and published in the route so clients can refuse early.

use std::fmt;

/// RocketMQ message types, by their wire numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Normal = 1,
    Fifo = 2,
    Delay = 3,
    Transaction = 4,
}

impl MessageKind {
    /// Every kind, in wire-number order.
    pub const ALL: [MessageKind; 4] = [
        MessageKind::Normal,
        MessageKind::Fifo,
        MessageKind::Delay,
        MessageKind::Transaction,
    ];

    pub fn from_code(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Normal),
            2 => Some(Self::Fifo),
            3 => Some(Self::Delay),
            4 => Some(Self::Transaction),
            _ => None,
        }
    }

    /// The RocketMQ name: `NORMAL`, `FIFO`, `DELAY`, `TRANSACTION`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Fifo => "FIFO",
            Self::Delay => "DELAY",
            Self::Transaction => "TRANSACTION",
        }
    }

    /// Parses a name, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }

    fn bit(self) -> u8 {
        1 << (self as u8 - 1)
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A non-empty set of message kinds, one bit each.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MessageTypes(u8);

impl MessageTypes {
    /// What every topic accepted before types existed, and what an
    /// auto-created topic accepts.
    pub const ALL: MessageTypes = MessageTypes(0b1111);

    /// The set of `kinds`; `None` when empty (a topic that accepts nothing
    /// is a mistake, not a configuration).
    pub fn of(kinds: impl IntoIterator<Item = MessageKind>) -> Option<Self> {
        let bits = kinds.into_iter().fold(0, |b, k| b | k.bit());
        (bits != 0).then_some(MessageTypes(bits))
    }

    /// Parses names such as `["NORMAL", "FIFO"]`, naming the first unknown
    /// one in the error.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let mut kinds = Vec::with_capacity(names.len());
        for n in names {
            let n = n.as_ref();
            kinds.push(MessageKind::from_name(n).ok_or_else(|| {
                format!("unknown message type {n:?}: use NORMAL, FIFO, DELAY or TRANSACTION")
            })?);
        }
        Self::of(kinds).ok_or_else(|| "a topic must accept at least one message type".into())
    }

    pub fn contains(self, kind: MessageKind) -> bool {
        self.0 & kind.bit() != 0
    }

    pub fn kinds(self) -> impl Iterator<Item = MessageKind> {
        MessageKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }

    /// The names, in wire-number order.
    pub fn names(self) -> Vec<&'static str> {
        self.kinds().map(MessageKind::name).collect()
    }
}

impl Default for MessageTypes {
    fn default() -> Self {
        Self::ALL
    }
}

impl fmt::Debug for MessageTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

/// As the list of names, in wire-number order.
impl serde::Serialize for MessageTypes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// `NORMAL, FIFO` — how refusals name a topic's set.
impl fmt::Display for MessageTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_in_wire_order() {
        let t = MessageTypes::parse(&["transaction", "NORMAL", "Normal"]).unwrap();
        assert_eq!(t.names(), ["NORMAL", "TRANSACTION"]);
        assert_eq!(t.to_string(), "NORMAL, TRANSACTION");
        assert!(t.contains(MessageKind::Transaction));
        assert!(!t.contains(MessageKind::Fifo));
        assert_eq!(MessageTypes::ALL.names().len(), 4);
        let err = MessageTypes::parse(&["NORMAL", "LITE"]).unwrap_err();
        assert!(err.contains("\"LITE\""), "{err}");
        assert!(MessageTypes::parse::<&str>(&[]).is_err());
        for k in MessageKind::ALL {
            assert_eq!(MessageKind::from_code(k as u8), Some(k));
            assert_eq!(MessageKind::from_name(k.name()), Some(k));
        }
    }
}
