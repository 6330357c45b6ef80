//! Primitives of the canonical object encoding (docs/format.md §2): little-endian fixed-width
//! integers and length-prefixed byte strings, with no padding and no optional framing, so that one
//! value has exactly one encoding.

use crate::id::ObjectId;

/// Appends canonical primitives to a byte vector.
#[derive(Default)]
pub(crate) struct Encoder {
    pub(crate) buf: Vec<u8>,
}

impl Encoder {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn id(&mut self, id: &ObjectId) {
        self.buf.extend_from_slice(&id.0);
    }
    /// Bytes with a u16 length prefix; the caller guarantees `v.len() <= u16::MAX`.
    pub(crate) fn bytes16(&mut self, v: &[u8]) {
        self.u16(v.len() as u16);
        self.buf.extend_from_slice(v);
    }
    /// Bytes with a u32 length prefix; the caller guarantees `v.len() <= u32::MAX`.
    pub(crate) fn bytes32(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }
}

/// Reads canonical primitives, failing with a reason that names the byte offset.
pub(crate) struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

/// Why a decode failed (the caller adds which object it was).
pub(crate) type DecodeResult<T> = Result<T, String>;

impl<'a> Decoder<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Decoder { data, pos: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return Err(format!(
                "truncated: needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.data.len() - self.pos
            ));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    pub(crate) fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> DecodeResult<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    pub(crate) fn u32(&mut self) -> DecodeResult<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub(crate) fn u64(&mut self) -> DecodeResult<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub(crate) fn i64(&mut self) -> DecodeResult<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub(crate) fn id(&mut self) -> DecodeResult<ObjectId> {
        Ok(ObjectId(self.take(32)?.try_into().unwrap()))
    }
    pub(crate) fn bytes16(&mut self) -> DecodeResult<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    pub(crate) fn bytes32(&mut self, limit: usize) -> DecodeResult<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > limit {
            return Err(format!("a field at offset {} declares {n} bytes, above its limit of {limit}", self.pos - 4));
        }
        self.take(n)
    }
    pub(crate) fn string(&mut self, limit: usize) -> DecodeResult<String> {
        let at = self.pos;
        String::from_utf8(self.bytes32(limit)?.to_vec()).map_err(|_| format!("the string at offset {at} is not UTF-8"))
    }
    /// Fails unless every byte was consumed: trailing bytes would give one value two encodings.
    pub(crate) fn finish(&self) -> DecodeResult<()> {
        if self.pos != self.data.len() {
            return Err(format!("{} trailing bytes after offset {}", self.data.len() - self.pos, self.pos));
        }
        Ok(())
    }
}
