//! Encoding and defensive decoding. The decoder never panics and never
//! allocates more than the record it was given: every length is checked
//! against the bytes actually present before anything is read.

use bytes::{BufMut, Bytes};
use thiserror::Error;

use crate::types::*;
use crate::{FORMAT_VERSION, HEADER_LEN};

/// Why bytes were not accepted as a record.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("record length {len} outside [{min}, {max}]")]
    BadLength { len: u32, min: usize, max: usize },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("record claims log offset {found}, but lies at {expected}")]
    OffsetMismatch { expected: u64, found: u64 },
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("unsupported record format version {0}")]
    UnsupportedVersion(u8),
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

/// Exact encoded size of `rec`, header included.
pub fn encoded_len(rec: &Record) -> usize {
    fn s(v: &str) -> usize {
        2 + v.len()
    }
    fn opt(v: &Option<String>) -> usize {
        1 + v.as_deref().map_or(0, s)
    }
    let payload = match &rec.payload {
        Payload::Message(m) => {
            s(&m.topic)
                + 4
                + 8
                + s(&m.message_id)
                + 1
                + 1
                + opt(&m.tag)
                + 2
                + m.keys.iter().map(|k| s(k)).sum::<usize>()
                + opt(&m.message_group)
                + 1
                + m.delivery_timestamp_ms.map_or(0, |_| 8)
                + 1
                + m.check_after_ms.map_or(0, |_| 8)
                + 8
                + s(&m.born_host)
                + 2
                + m.properties
                    .iter()
                    .map(|(k, v)| s(k) + 4 + v.len())
                    .sum::<usize>()
                + 4
                + m.body.len()
        }
        Payload::Deliver(d) => {
            s(&d.group) + s(&d.topic) + 4 + 8 + 4 + 8 + 8 + 8 + d.client.as_deref().map_or(0, s)
        }
        Payload::Ack(a) => s(&a.group) + s(&a.topic) + 4 + 8 + 8,
        Payload::Renew(r) => s(&r.group) + s(&r.topic) + 4 + 8 + 8 + 8,
        Payload::TxEnd(t) => {
            8 + s(&t.topic)
                + s(&t.message_id)
                + 1
                + 1
                + 4
                + 1
                + t.queue_offset.map_or(0, |_| 8)
                + s(&t.reason)
        }
        Payload::TxCheck(_) => 8 + 4 + 8,
        Payload::Fire(f) => 8 + s(&f.topic) + 4 + 8,
        Payload::DeadLetter(d) => s(&d.group) + s(&d.topic) + 4 + 8 + 8 + 4 + 4 + 8,
        Payload::Recall(r) => 8 + s(&r.topic) + s(&r.message_id),
        Payload::Redrive(r) => s(&r.group) + s(&r.topic) + 4 + 8 + 8 + 8,
        Payload::TopicDelete(t) => s(&t.topic),
    };
    HEADER_LEN + payload
}

/// Reads the length field of a record starting at `buf[0]`, if present.
pub fn peek_len(buf: &[u8]) -> Option<u32> {
    buf.get(0..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Appends the encoding of `rec`, placed at log `offset`, to `out`.
///
/// Panics if a string is longer than 65 535 bytes or the body longer than
/// 4 GiB: callers validate sizes long before a record is built, so reaching
/// that is a bug, not bad input.
pub fn encode(rec: &Record, offset: u64, out: &mut Vec<u8>) {
    let start = out.len();
    let len = encoded_len(rec);
    assert!(len <= u32::MAX as usize, "record too large to encode");
    out.reserve(len);
    out.put_u32_le(len as u32);
    out.put_u32_le(0); // checksum, patched below
    out.put_u8(rec.payload.kind() as u8);
    out.put_u8(FORMAT_VERSION);
    out.put_u16_le(0);
    out.put_u64_le(rec.term);
    out.put_u64_le(offset);
    out.put_i64_le(rec.timestamp_ms);
    match &rec.payload {
        Payload::Message(m) => {
            put_str(out, &m.topic);
            out.put_u32_le(m.queue_id);
            out.put_u64_le(m.queue_offset);
            put_str(out, &m.message_id);
            out.put_u8(m.message_type);
            out.put_u8(m.body_encoding);
            put_opt(out, &m.tag);
            assert!(m.keys.len() <= u16::MAX as usize);
            out.put_u16_le(m.keys.len() as u16);
            for k in &m.keys {
                put_str(out, k);
            }
            put_opt(out, &m.message_group);
            put_opt_i64(out, m.delivery_timestamp_ms);
            put_opt_i64(out, m.check_after_ms);
            out.put_i64_le(m.born_timestamp_ms);
            put_str(out, &m.born_host);
            assert!(m.properties.len() <= u16::MAX as usize);
            out.put_u16_le(m.properties.len() as u16);
            for (k, v) in &m.properties {
                put_str(out, k);
                out.put_u32_le(v.len() as u32);
                out.put_slice(v.as_bytes());
            }
            out.put_u32_le(m.body.len() as u32);
            out.put_slice(&m.body);
        }
        Payload::Deliver(d) => {
            put_str(out, &d.group);
            put_str(out, &d.topic);
            out.put_u32_le(d.queue_id);
            out.put_u64_le(d.queue_offset);
            out.put_u32_le(d.attempt);
            out.put_u64_le(d.handle);
            out.put_i64_le(d.visible_at_ms);
            out.put_u64_le(d.cursor);
            if let Some(c) = &d.client {
                put_str(out, c);
            }
        }
        Payload::Ack(a) => {
            put_str(out, &a.group);
            put_str(out, &a.topic);
            out.put_u32_le(a.queue_id);
            out.put_u64_le(a.queue_offset);
            out.put_u64_le(a.handle);
        }
        Payload::Renew(r) => {
            put_str(out, &r.group);
            put_str(out, &r.topic);
            out.put_u32_le(r.queue_id);
            out.put_u64_le(r.queue_offset);
            out.put_u64_le(r.handle);
            out.put_i64_le(r.visible_at_ms);
        }
        Payload::TxEnd(t) => {
            out.put_u64_le(t.half_offset);
            put_str(out, &t.topic);
            put_str(out, &t.message_id);
            out.put_u8(t.outcome as u8);
            out.put_u8(t.source as u8);
            out.put_u32_le(t.queue_id);
            match t.queue_offset {
                Some(q) => {
                    out.put_u8(1);
                    out.put_u64_le(q);
                }
                None => out.put_u8(0),
            }
            put_str(out, &t.reason);
        }
        Payload::TxCheck(c) => {
            out.put_u64_le(c.half_offset);
            out.put_u32_le(c.checks);
            out.put_i64_le(c.next_check_ms);
        }
        Payload::Fire(f) => {
            out.put_u64_le(f.message_offset);
            put_str(out, &f.topic);
            out.put_u32_le(f.queue_id);
            out.put_u64_le(f.queue_offset);
        }
        Payload::DeadLetter(d) => {
            put_str(out, &d.group);
            put_str(out, &d.topic);
            out.put_u32_le(d.queue_id);
            out.put_u64_le(d.queue_offset);
            out.put_u64_le(d.message_offset);
            out.put_u32_le(d.message_len);
            out.put_u32_le(d.attempts);
            out.put_u64_le(d.dlq_queue_offset);
        }
        Payload::Recall(r) => {
            out.put_u64_le(r.message_offset);
            put_str(out, &r.topic);
            put_str(out, &r.message_id);
        }
        Payload::Redrive(r) => {
            put_str(out, &r.group);
            put_str(out, &r.topic);
            out.put_u32_le(r.queue_id);
            out.put_u64_le(r.queue_offset);
            out.put_u64_le(r.dlq_queue_offset);
            out.put_u64_le(r.handle);
        }
        Payload::TopicDelete(t) => put_str(out, &t.topic),
    }
    debug_assert_eq!(out.len() - start, len, "encoded_len disagrees with encode");
    let crc = checksum(&out[start..start + len]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(record: &[u8]) -> u32 {
    let c = crc32c::crc32c(&record[0..4]);
    crc32c::crc32c_append(c, &record[8..])
}

fn put_str(out: &mut Vec<u8>, v: &str) {
    assert!(v.len() <= crate::MAX_STR_BYTES, "string field over 64 KiB");
    out.put_u16_le(v.len() as u16);
    out.put_slice(v.as_bytes());
}

fn put_opt_i64(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(t) => {
            out.put_u8(1);
            out.put_i64_le(t);
        }
        None => out.put_u8(0),
    }
}

fn put_opt(out: &mut Vec<u8>, v: &Option<String>) {
    match v {
        Some(v) => {
            out.put_u8(1);
            put_str(out, v);
        }
        None => out.put_u8(0),
    }
}

/// Decodes the record at the start of `buf`, which must lie at log offset
/// `expected_offset`. Records longer than `max_len` are refused before any
/// checksum work. Returns the record and its length.
pub fn decode(
    buf: &Bytes,
    expected_offset: u64,
    max_len: usize,
) -> Result<(Record, usize), DecodeError> {
    let len = peek_len(buf).ok_or(DecodeError::Truncated {
        need: 4,
        have: buf.len(),
    })?;
    if (len as usize) < HEADER_LEN || len as usize > max_len {
        return Err(DecodeError::BadLength {
            len,
            min: HEADER_LEN,
            max: max_len,
        });
    }
    let len = len as usize;
    if buf.len() < len {
        return Err(DecodeError::Truncated {
            need: len,
            have: buf.len(),
        });
    }
    let rec = &buf[..len];
    // Cheap rejection first: a record at the wrong place is stale bytes.
    let found = u64::from_le_bytes(rec[20..28].try_into().expect("8 bytes"));
    if found != expected_offset {
        return Err(DecodeError::OffsetMismatch {
            expected: expected_offset,
            found,
        });
    }
    let stored = u32::from_le_bytes(rec[4..8].try_into().expect("4 bytes"));
    let computed = checksum(rec);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    if rec[9] != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(rec[9]));
    }
    // Version 1 writes the reserved bytes as zero; anything else is not a
    // record this build wrote, and would not re-encode to the same bytes.
    if rec[10..12] != [0, 0] {
        return Err(DecodeError::Malformed("reserved header bytes are not zero"));
    }
    let kind = Kind::from_u8(rec[8]).ok_or(DecodeError::UnknownKind(rec[8]))?;
    let term = u64::from_le_bytes(rec[12..20].try_into().expect("8 bytes"));
    let timestamp_ms = i64::from_le_bytes(rec[28..36].try_into().expect("8 bytes"));
    let mut r = Reader {
        buf: buf.slice(HEADER_LEN..len),
        pos: 0,
    };
    let payload = match kind {
        Kind::Message => Payload::Message(MessageRecord {
            topic: r.string()?,
            queue_id: r.u32()?,
            queue_offset: r.u64()?,
            message_id: r.string()?,
            message_type: r.u8()?,
            body_encoding: r.u8()?,
            tag: r.opt_string()?,
            keys: {
                let n = r.u16()? as usize;
                let mut keys = Vec::with_capacity(n.min(r.remaining() / 2));
                for _ in 0..n {
                    keys.push(r.string()?);
                }
                keys
            },
            message_group: r.opt_string()?,
            delivery_timestamp_ms: r.opt_i64()?,
            check_after_ms: r.opt_i64()?,
            born_timestamp_ms: r.i64()?,
            born_host: r.string()?,
            properties: {
                let n = r.u16()? as usize;
                let mut props = Vec::with_capacity(n.min(r.remaining() / 6));
                for _ in 0..n {
                    let k = r.string()?;
                    let vlen = r.u32()? as usize;
                    let v = r.utf8(vlen)?;
                    props.push((k, v));
                }
                props
            },
            body: {
                let n = r.u32()? as usize;
                r.bytes(n)?
            },
        }),
        Kind::Deliver | Kind::DeliverTo => Payload::Deliver(DeliverRecord {
            group: r.string()?,
            topic: r.string()?,
            queue_id: r.u32()?,
            queue_offset: r.u64()?,
            attempt: r.u32()?,
            handle: r.u64()?,
            visible_at_ms: r.i64()?,
            cursor: r.u64()?,
            client: if kind == Kind::DeliverTo {
                Some(r.string()?)
            } else {
                None
            },
        }),
        Kind::Ack => Payload::Ack(AckRecord {
            group: r.string()?,
            topic: r.string()?,
            queue_id: r.u32()?,
            queue_offset: r.u64()?,
            handle: r.u64()?,
        }),
        Kind::Renew => Payload::Renew(RenewRecord {
            group: r.string()?,
            topic: r.string()?,
            queue_id: r.u32()?,
            queue_offset: r.u64()?,
            handle: r.u64()?,
            visible_at_ms: r.i64()?,
        }),
        Kind::TxEnd => Payload::TxEnd(TxEndRecord {
            half_offset: r.u64()?,
            topic: r.string()?,
            message_id: r.string()?,
            outcome: TxOutcome::from_u8(r.u8()?)
                .ok_or(DecodeError::Malformed("unknown transaction outcome"))?,
            source: TxSource::from_u8(r.u8()?)
                .ok_or(DecodeError::Malformed("unknown transaction source"))?,
            queue_id: r.u32()?,
            queue_offset: match r.u8()? {
                0 => None,
                1 => Some(r.u64()?),
                _ => return Err(DecodeError::Malformed("bad option flag")),
            },
            reason: r.string()?,
        }),
        Kind::TxCheck => Payload::TxCheck(TxCheckRecord {
            half_offset: r.u64()?,
            checks: r.u32()?,
            next_check_ms: r.i64()?,
        }),
        Kind::Fire => Payload::Fire(FireRecord {
            message_offset: r.u64()?,
            topic: r.string()?,
            queue_id: r.u32()?,
            queue_offset: r.u64()?,
        }),
        Kind::DeadLetter => Payload::DeadLetter(DeadLetterRecord {
            group: r.string()?,
            topic: r.string()?,
            queue_id: r.u32()?,
            queue_offset: r.u64()?,
            message_offset: r.u64()?,
            message_len: r.u32()?,
            attempts: r.u32()?,
            dlq_queue_offset: r.u64()?,
        }),
        Kind::Recall => Payload::Recall(RecallRecord {
            message_offset: r.u64()?,
            topic: r.string()?,
            message_id: r.string()?,
        }),
        Kind::Redrive => Payload::Redrive(RedriveRecord {
            group: r.string()?,
            topic: r.string()?,
            queue_id: r.u32()?,
            queue_offset: r.u64()?,
            dlq_queue_offset: r.u64()?,
            handle: r.u64()?,
        }),
        Kind::TopicDelete => Payload::TopicDelete(TopicDeleteRecord { topic: r.string()? }),
    };
    if r.remaining() != 0 {
        return Err(DecodeError::Malformed("trailing bytes after payload"));
    }
    Ok((
        Record {
            term,
            timestamp_ms,
            payload,
        },
        len,
    ))
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Malformed("field runs past the record end"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn utf8(&mut self, n: usize) -> Result<String, DecodeError> {
        let raw = self.take(n)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Malformed("string is not UTF-8"))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        self.utf8(n)
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.i64()?)),
            _ => Err(DecodeError::Malformed("bad option flag")),
        }
    }
    fn opt_string(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.string()?)),
            _ => Err(DecodeError::Malformed("bad option flag")),
        }
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Malformed("body runs past the record end"));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }
}
