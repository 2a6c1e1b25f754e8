//! Record framing shared by every append-only file Keel writes.
//!
//! ```text
//! offset  size  field
//!      0     4  magic            b"KLR1"
//!      4     1  kind             what the payload is (owned by the file's user)
//!      5     3  reserved         zero
//!      8     4  payload_len      u32 little-endian
//!     12     4  payload_crc32c   CRC-32C of the payload
//!     16     4  header_crc32c    CRC-32C of bytes 0..16
//!     20     …  payload
//! ```
//!
//! Nothing read from disk is trusted before its checksum matches: the length
//! is only believed once the header checksum covers it, the payload only once
//! its own checksum matches. A record that fails either check marks the end of
//! trustworthy data at that offset (see [`scan`]).

use std::ops::Range;

/// First bytes of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"KLR1";
/// Size of the fixed record header.
pub const RECORD_HEADER_BYTES: usize = 20;
/// Largest payload a record may carry. A header claiming more is damaged.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Record kind reserved for padding that fills a repaired gap; every reader skips it.
pub const KIND_PADDING: u8 = 0;

/// Appends one framed record to `out`.
pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    assert!(
        payload.len() <= RECORD_PAYLOAD_BYTES_MAX,
        "record payload of {} bytes exceeds the {} byte limit",
        payload.len(),
        RECORD_PAYLOAD_BYTES_MAX
    );
    encode_header(kind, payload.len() as u32, crc32c::crc32c(payload), out);
    out.extend_from_slice(payload);
}

/// Appends a record whose payload is `parts` concatenated, without first
/// copying them into one buffer.
pub fn encode_parts(kind: u8, parts: &[&[u8]], out: &mut Vec<u8>) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    assert!(
        len <= RECORD_PAYLOAD_BYTES_MAX,
        "record payload of {len} bytes exceeds the limit"
    );
    let crc = parts
        .iter()
        .fold(0u32, |crc, part| crc32c::crc32c_append(crc, part));
    encode_header(kind, len as u32, crc, out);
    for part in parts {
        out.extend_from_slice(part);
    }
}

fn encode_header(kind: u8, len: u32, payload_crc: u32, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.push(kind);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[start..start + 16]);
    out.extend_from_slice(&header_crc.to_le_bytes());
}

/// A padding record of exactly `total_bytes` (header included), used to
/// overwrite a damaged gap so the file parses cleanly again.
pub fn padding(total_bytes: usize) -> Vec<u8> {
    assert!(
        total_bytes >= RECORD_HEADER_BYTES,
        "a padding record needs at least {RECORD_HEADER_BYTES} bytes"
    );
    let mut out = Vec::with_capacity(total_bytes);
    encode(
        KIND_PADDING,
        &vec![0u8; total_bytes - RECORD_HEADER_BYTES],
        &mut out,
    );
    out
}

/// A decoded, checksum-verified header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub payload_len: u32,
    pub payload_crc: u32,
}

/// Decodes and verifies a header; `None` if it is not a valid header.
pub fn decode_header(bytes: &[u8]) -> Option<Header> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    if header[..4] != RECORD_MAGIC || header[5..8] != [0, 0, 0] {
        return None;
    }
    let stored_crc = u32::from_le_bytes(header[16..20].try_into().ok()?);
    if crc32c::crc32c(&header[..16]) != stored_crc {
        return None;
    }
    let payload_len = u32::from_le_bytes(header[8..12].try_into().ok()?);
    if payload_len as usize > RECORD_PAYLOAD_BYTES_MAX {
        return None;
    }
    Some(Header {
        kind: header[4],
        payload_len,
        payload_crc: u32::from_le_bytes(header[12..16].try_into().ok()?),
    })
}

/// One valid record found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    /// Offset of the record's header in the file.
    pub offset: u64,
    pub kind: u8,
    /// Where the payload lies in the scanned buffer.
    pub payload: Range<usize>,
}

impl ScannedRecord {
    /// Offset just past the record.
    pub fn end(&self) -> u64 {
        self.offset + (RECORD_HEADER_BYTES + self.payload.len()) as u64
    }
}

/// What a scan of a whole file found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Every valid record, in file order (padding included).
    pub records: Vec<ScannedRecord>,
    /// Byte ranges that hold no valid record but are followed by valid ones.
    pub gaps: Vec<Range<u64>>,
    /// Start of an unparseable tail with no valid record after it, if any.
    pub torn_tail: Option<u64>,
}

impl Scan {
    /// Offset of the first damage (gap or torn tail), if the file has any.
    pub fn first_damage(&self) -> Option<u64> {
        let gap = self.gaps.first().map(|g| g.start);
        match (gap, self.torn_tail) {
            (Some(g), Some(t)) => Some(g.min(t)),
            (g, t) => g.or(t),
        }
    }

    /// Offset where valid data ends (the whole length when nothing is torn).
    pub fn valid_end(&self, file_len: u64) -> u64 {
        self.torn_tail.unwrap_or(file_len)
    }
}

/// Tries to read one complete, valid record at `offset` of `buf`.
pub fn record_at(buf: &[u8], offset: usize) -> Option<ScannedRecord> {
    let header = decode_header(buf.get(offset..)?)?;
    let start = offset + RECORD_HEADER_BYTES;
    let end = start.checked_add(header.payload_len as usize)?;
    let payload = buf.get(start..end)?;
    if crc32c::crc32c(payload) != header.payload_crc {
        return None;
    }
    Some(ScannedRecord {
        offset: offset as u64,
        kind: header.kind,
        payload: start..end,
    })
}

/// Scans a whole file image. Damage is never fatal: the scan records where
/// valid data stops and whether valid records resume after a damaged range,
/// so the caller can tell a torn tail (truncate it) from damage in the middle
/// (keep what follows if it is usable).
pub fn scan(buf: &[u8]) -> Scan {
    let mut result = Scan::default();
    let mut offset = 0usize;
    while offset < buf.len() {
        if let Some(record) = record_at(buf, offset) {
            offset = record.end() as usize;
            result.records.push(record);
            continue;
        }
        match next_valid_record(buf, offset + 1) {
            Some(next) => {
                result.gaps.push(offset as u64..next as u64);
                offset = next;
            }
            None => {
                result.torn_tail = Some(offset as u64);
                break;
            }
        }
    }
    result
}

/// Offset of the next valid record at or after `from`, searching by magic.
fn next_valid_record(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + RECORD_HEADER_BYTES <= buf.len() {
        let found = buf[at..]
            .windows(RECORD_MAGIC.len())
            .position(|w| w == RECORD_MAGIC)?;
        let candidate = at + found;
        if record_at(buf, candidate).is_some() {
            return Some(candidate);
        }
        at = candidate + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(records: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, payload) in records {
            encode(*kind, payload, &mut out);
        }
        out
    }

    #[test]
    fn round_trip() {
        let buf = file(&[(1, b"hello"), (2, b""), (3, &[7u8; 1000])]);
        let scan = scan(&buf);
        assert_eq!(scan.records.len(), 3);
        assert!(scan.gaps.is_empty());
        assert_eq!(scan.torn_tail, None);
        assert_eq!(&buf[scan.records[0].payload.clone()], b"hello");
        assert_eq!(scan.records[2].kind, 3);
    }

    #[test]
    fn parts_match_single_payload() {
        let mut a = Vec::new();
        encode(4, b"hello world", &mut a);
        let mut b = Vec::new();
        encode_parts(4, &[b"hello", b" ", b"world"], &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn every_truncation_keeps_the_complete_prefix() {
        let buf = file(&[(1, b"first"), (1, b"second"), (1, &[9u8; 300])]);
        let ends: Vec<u64> = scan(&buf).records.iter().map(|r| r.end()).collect();
        for cut in 0..buf.len() {
            let scan = scan(&buf[..cut]);
            let expected = ends.iter().filter(|&&e| e as usize <= cut).count();
            assert_eq!(scan.records.len(), expected, "cut at {cut}");
            assert!(scan.gaps.is_empty());
            let valid_end = scan.records.last().map_or(0, |r| r.end());
            assert_eq!(scan.valid_end(cut as u64), valid_end, "cut at {cut}");
        }
    }

    #[test]
    fn zeroed_tail_is_torn_and_middle_damage_is_a_gap() {
        let mut buf = file(&[(1, b"first"), (1, b"second"), (1, b"third")]);
        let second = scan(&buf).records[1].clone();
        // Damage the middle record's payload: the third record stays readable.
        buf[second.payload.start] ^= 0xff;
        let scanned = scan(&buf);
        assert_eq!(scanned.records.len(), 2);
        assert_eq!(scanned.gaps, vec![second.offset..second.end()]);
        assert_eq!(scanned.torn_tail, None);
        // Zero everything from the middle record on: a torn tail.
        for byte in &mut buf[second.offset as usize..] {
            *byte = 0;
        }
        let scanned = scan(&buf);
        assert_eq!(scanned.records.len(), 1);
        assert_eq!(scanned.torn_tail, Some(second.offset));
    }

    #[test]
    fn padding_parses_as_padding() {
        let pad = padding(57);
        assert_eq!(pad.len(), 57);
        let scanned = scan(&pad);
        assert_eq!(scanned.records.len(), 1);
        assert_eq!(scanned.records[0].kind, KIND_PADDING);
    }

    #[test]
    fn lying_length_is_rejected() {
        let mut buf = file(&[(1, b"abc")]);
        buf[8] = 0xff; // length byte changes, header checksum no longer matches
        assert!(decode_header(&buf).is_none());
    }
}
