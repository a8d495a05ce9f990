//! The commit-log record format.
//!
//! Every fact Ferry keeps — a message, a delivery, an acknowledgement, a
//! change of invisibility, a transaction's check or outcome, a timer firing,
//! a topic's deletion — is one record appended to the commit log. This
//! crate owns the byte layout of those records and nothing else: it is pure
//! (no files, no clock), so the store, the broker core, the recovery scanner
//! and the fuzzers all share one definition.
//!
//! # Layout
//!
//! ```text
//! offset  size  field
//!      0     4  total length of the record, header included (LE u32)
//!      4     4  CRC32C of bytes [0..4) and [8..len)   — the whole record
//!      8     1  kind
//!      9     1  format version (1)
//!     10     2  reserved, zero
//!     12     8  term (replication epoch; 0 on a single node)
//!     20     8  log offset of this record
//!     28     8  store timestamp, ms since the Unix epoch
//!     36     …  kind-specific payload
//! ```
//!
//! The checksum covers the length and every header field, so a flipped bit
//! anywhere is caught. The record carries its own log offset inside the
//! checksum, so a valid record found at the wrong place (stale bytes of a
//! reused file, a misdirected write) is rejected as well.

mod codec;
mod types;

pub use codec::{decode, encode, encoded_len, peek_len, DecodeError};
pub use types::{
    AckRecord, DeadLetterRecord, DeliverRecord, FireRecord, Kind, MessageRecord, Payload,
    RecallRecord, Record, RedriveRecord, RenewRecord, TopicDeleteRecord, TxCheckRecord,
    TxEndRecord, TxOutcome, TxSource, MAX_CLIENT_ID_BYTES,
};

/// Longest string field a record holds (a 16-bit length prefix). Every
/// string a message carries must be validated against this or a tighter
/// limit before a record is built: the encoder asserts it.
pub const MAX_STR_BYTES: usize = u16::MAX as usize;

/// Bytes of the fixed record header.
pub const HEADER_LEN: usize = 36;
/// The only format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
