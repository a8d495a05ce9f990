//! Helpers shared by Ferry's fuzz targets and by the seed generator
//! (`examples/gen_seeds.rs`). Nothing here reimplements Ferry: the targets
//! call the real decoder, log, validator and filter parser. What lives here
//! is input plumbing — reading numbers from fuzz bytes, and re-sealing
//! record checksums so the fuzzer can get past the CRC and reach the
//! payload and recovery logic behind it.

pub mod message;

/// Reads little-endian numbers and byte runs off the front of the fuzz
/// input. Past the end every read yields zeros / an empty slice, so a target
/// never has to reject a short input.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.take(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.fixed())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Byte positions in a record header (see the layout in `ferry-record`).
const LEN_AT: usize = 0;
const CRC_AT: usize = 4;
const OFFSET_AT: usize = 20;
/// Header length of a record (`ferry_record::HEADER_LEN`).
pub const RECORD_HEADER: usize = ferry_record::HEADER_LEN;

/// Makes the record starting at `rec[0]` claim log offset `offset` and
/// carry a correct checksum over `rec` as it stands (its length field is
/// not touched). No-op on fewer than `RECORD_HEADER` bytes.
pub fn reseal(rec: &mut [u8], offset: u64) {
    if rec.len() < RECORD_HEADER {
        return;
    }
    rec[OFFSET_AT..OFFSET_AT + 8].copy_from_slice(&offset.to_le_bytes());
    let c = crc32c::crc32c(&rec[LEN_AT..CRC_AT]);
    let c = crc32c::crc32c_append(c, &rec[CRC_AT + 4..]);
    rec[CRC_AT..CRC_AT + 4].copy_from_slice(&c.to_le_bytes());
}

/// Sets the record's length field to `rec.len()`, then reseals it.
pub fn reseal_whole(rec: &mut [u8], offset: u64) {
    if rec.len() < RECORD_HEADER || rec.len() > u32::MAX as usize {
        return;
    }
    let len = rec.len() as u32;
    rec[LEN_AT..LEN_AT + 4].copy_from_slice(&len.to_le_bytes());
    reseal(rec, offset);
}

/// Walks `body` (the bytes after a segment header) as a chain of records
/// and reseals every one whose length field fits, so it claims the offset
/// it lies at (`base + position`). Stops at the first length that cannot
/// be a record; what follows stays as the fuzzer wrote it. Returns how many
/// records were resealed.
pub fn reseal_chain(body: &mut [u8], base: u64) -> usize {
    let mut pos = 0usize;
    let mut n = 0;
    while body.len() - pos >= RECORD_HEADER {
        let len = u32::from_le_bytes(body[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        if len < RECORD_HEADER || len > body.len() - pos {
            break;
        }
        reseal(&mut body[pos..pos + len], base.wrapping_add(pos as u64));
        pos += len;
        n += 1;
    }
    n
}
