//! Messages for `request_validation`: an [`Incoming`] built from fuzz data
//! with `arbitrary`, and the check that runs it down the real send path
//! (validate → admit → prepare → encode → decode → apply).

use arbitrary::Arbitrary;
use bytes::Bytes;
use ferry_broker::{validate, Broker, CoreConfig, Incoming, Limits, MessageKind};
use ferry_record::{decode, encode, encoded_len};

/// Longest string a [`Text::Repeat`] builds: past the 64 KiB a record string
/// field can hold, so size limits are reachable from a 4 KiB fuzz input.
const MAX_TEXT: usize = 256 << 10;
/// Longest body a [`Body::Repeat`] builds: past the 4 MiB default limit.
const MAX_BODY: usize = (4 << 20) + 64;

/// Clock of the fuzzed broker (2023-11-14), fixed so runs are reproducible.
pub const NOW_MS: i64 = 1_700_000_000_000;

/// A string field: a plausible value, arbitrary text, or text repeated to a
/// chosen length.
#[derive(Arbitrary, Debug, Clone)]
pub enum Text {
    Word(u8),
    Plain(String),
    Repeat { unit: String, len: u32 },
}

fn word(i: u8) -> String {
    match i % 24 {
        0 => "TopicA".into(),
        1 => "orders".into(),
        2 => "%RETRY%group-1".into(),
        3 => "a-b_c|d%e".into(),
        4 => "TagA".into(),
        5 => "key-1".into(),
        6 => "01A2B3C4D5E6F70000000000".into(),
        7 => "host-1".into(),
        8 => "10.0.0.1:5678".into(),
        9 => String::new(),
        10 => " ".into(),
        11 => "a b".into(),
        12 => "a|b".into(),
        13 => "\u{7}bell".into(),
        14 => "é ü".into(),
        15 => "\0".into(),
        16 => "x".repeat(127),
        17 => "x".repeat(128),
        18 => "g".repeat(63),
        19 => "g".repeat(64),
        20 => "k".repeat(129),
        21 => "region".into(),
        22 => "42".into(),
        _ => "\u{2028}".into(),
    }
}

impl Text {
    pub fn build(&self) -> String {
        match self {
            Text::Word(i) => word(*i),
            Text::Plain(s) => s.clone(),
            Text::Repeat { unit, len } => repeat_to(unit.as_bytes(), *len as usize, MAX_TEXT)
                .and_then(|v| String::from_utf8(v).ok())
                .unwrap_or_default(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Body {
    Plain(Vec<u8>),
    Repeat { unit: Vec<u8>, len: u32 },
}

impl Body {
    pub fn build(&self) -> Bytes {
        match self {
            Body::Plain(b) => Bytes::copy_from_slice(b),
            Body::Repeat { unit, len } => {
                Bytes::from(repeat_to(unit, *len as usize, MAX_BODY).unwrap_or_default())
            }
        }
    }
}

/// `unit` repeated until at least `len` bytes (capped at `cap`), whole units
/// only so UTF-8 stays valid.
fn repeat_to(unit: &[u8], len: usize, cap: usize) -> Option<Vec<u8>> {
    if unit.is_empty() {
        return None;
    }
    let len = len.min(cap);
    let n = len.div_ceil(unit.len()).max(1);
    Some(unit.repeat(n))
}

/// A delivery time: absolute, or relative to [`NOW_MS`] (where the
/// interesting limits lie).
#[derive(Arbitrary, Debug, Clone)]
pub enum When {
    Absolute(i64),
    FromNow(i64),
}

impl When {
    fn build(&self) -> i64 {
        match self {
            When::Absolute(t) => *t,
            When::FromNow(d) => NOW_MS.saturating_add(*d),
        }
    }
}

/// The fuzzer's view of a message from a producer.
#[derive(Arbitrary, Debug, Clone)]
pub struct FuzzIncoming {
    pub topic: Text,
    pub message_id: Text,
    pub kind: u8,
    pub tag: Option<Text>,
    pub keys: Vec<Text>,
    pub message_group: Option<Text>,
    pub delivery: Option<When>,
    pub check_after_ms: Option<i64>,
    pub born_timestamp_ms: i64,
    pub born_host: Text,
    pub queue_id: u32,
    pub body_encoding: u8,
    pub properties: Vec<(Text, Text)>,
    pub body: Body,
}

impl FuzzIncoming {
    pub fn build(&self) -> Incoming {
        Incoming {
            topic: self.topic.build(),
            message_id: self.message_id.build(),
            kind: MessageKind::ALL[self.kind as usize % MessageKind::ALL.len()],
            tag: self.tag.as_ref().map(Text::build),
            keys: self.keys.iter().map(Text::build).collect(),
            message_group: self.message_group.as_ref().map(Text::build),
            delivery_timestamp_ms: self.delivery.as_ref().map(When::build),
            check_after_ms: self.check_after_ms,
            born_timestamp_ms: self.born_timestamp_ms,
            born_host: self.born_host.build(),
            queue_id: self.queue_id,
            body_encoding: self.body_encoding,
            properties: self
                .properties
                .iter()
                .map(|(k, v)| (k.build(), v.build()))
                .collect(),
            body: self.body.build(),
        }
    }
}

/// How far a message got down the send path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `validate::message` refused it.
    Invalid,
    /// `admit_batch` refused it (delivery time too far ahead, …).
    NotAdmitted,
    /// Valid, but its record exceeds the log's record limit, which
    /// `Log::append` refuses with an error.
    TooLarge,
    /// Encoded, decoded back identical, and applied to the broker core.
    Stored,
}

/// Runs `m` through what the engine does with a send, with default limits:
/// `validate::message`, then (for a valid message) topic creation,
/// `admit_batch`, `prepare_message`, the record encoder and decoder, and
/// `Broker::apply`. Panics when a message the validator accepted cannot be
/// stored and read back exactly.
pub fn check_incoming(m: &Incoming, now_ms: i64) -> Outcome {
    let limits = Limits::default();
    if let Err(e) = validate::message(m, &limits) {
        let _ = e.to_string();
        return Outcome::Invalid;
    }
    let mut broker = Broker::new(CoreConfig::default());
    broker
        .create_topic(&m.topic, 8)
        .expect("a topic name validate::message accepted must be creatable");
    if let Err((_, e)) = broker.admit_batch(now_ms, std::slice::from_ref(m)) {
        let _ = e.to_string();
        return Outcome::NotAdmitted;
    }
    let rec = broker
        .prepare_message(now_ms, m)
        .expect("an admitted message must prepare");
    let len = encoded_len(&rec);
    let max = ferry_store::LogConfig::new("/").max_record_bytes;
    if len > max {
        return Outcome::TooLarge;
    }
    // What `Log::append` does with the record.
    let mut buf = Vec::with_capacity(len);
    encode(&rec, 0, &mut buf);
    assert_eq!(buf.len(), len, "encoded_len disagrees with encode");
    let (back, back_len) = decode(&Bytes::from(buf), 0, max)
        .unwrap_or_else(|e| panic!("a stored message does not decode: {e}"));
    assert_eq!(back_len, len);
    assert_eq!(back, rec, "a stored message decodes differently");
    broker.apply(0, len as u32, &rec);
    Outcome::Stored
}
