//! `ferry_record::decode` on arbitrary bytes, at an arbitrary claimed log
//! offset with an arbitrary length limit.
//!
//! Input: `flags:u8 offset:u64 max_len:u32 record-bytes…`
//!
//! * flags bit 0 — reseal: write `offset` into the record's offset field and
//!   recompute its CRC32C, so the fuzzer gets past the checksum to the
//!   payload decoder;
//! * flags bit 1 — before resealing, set the length field to the number of
//!   record bytes;
//! * flags bit 2 — use `max_len` as the limit; otherwise the store's default
//!   limit (16 MiB).
//!
//! Checked: no panic; on success the consumed length is within the buffer
//! and the limit, equals `encoded_len`, and `encode` reproduces exactly the
//! consumed bytes; the same bytes are refused at any other offset and under
//! a limit one byte shorter.
#![no_main]

use bytes::Bytes;
use ferry_fuzz::{reseal, reseal_whole, Cursor};
use ferry_record::{decode, encode, encoded_len, DecodeError, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const DEFAULT_MAX: usize = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let flags = input.u8();
    let offset = input.u64();
    let max_arg = input.u32() as usize;
    let mut raw = input.rest().to_vec();
    if flags & 2 != 0 {
        reseal_whole(&mut raw, offset);
    } else if flags & 1 != 0 {
        reseal(&mut raw, offset);
    }
    let max_len = if flags & 4 != 0 { max_arg } else { DEFAULT_MAX };
    let buf = Bytes::from(raw);

    let Ok((rec, len)) = decode(&buf, offset, max_len) else {
        return;
    };
    assert!(
        len >= HEADER_LEN,
        "consumed {len} bytes, less than a header"
    );
    assert!(len <= buf.len(), "consumed {len} of {} bytes", buf.len());
    assert!(
        len <= max_len,
        "consumed {len} bytes over the limit {max_len}"
    );
    assert_eq!(encoded_len(&rec), len, "encoded_len disagrees with decode");

    let mut again = Vec::with_capacity(len);
    encode(&rec, offset, &mut again);
    assert!(
        again[..] == buf[..len],
        "re-encoding differs from the decoded bytes\n decoded: {:02x?}\n encoded: {:02x?}\n record: {rec:?}",
        &buf[..len],
        &again[..],
    );

    // The record is bound to its place and to the limit.
    match decode(&buf, offset ^ 1, max_len) {
        Err(DecodeError::OffsetMismatch { .. }) => {}
        other => panic!("record accepted at another offset: {other:?}"),
    }
    match decode(&buf, offset, len - 1) {
        Err(DecodeError::BadLength { .. }) => {}
        other => panic!("record accepted under a shorter limit: {other:?}"),
    }
});
