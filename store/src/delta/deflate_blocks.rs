//! Where the blocks of a deflate stream (RFC 1951) start: each block's first bit and the plain
//! text before it, found by decoding the stream's codes without producing its plain text.
//!
//! [`super::deflate_segments`] cuts long streams at these starts. It runs on files being delta'd,
//! which may be anything: every read is bounded by the input, and a stream that is not deflate is
//! an error, never a panic or an endless loop.

/// A block's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStart {
    /// Its first bit in the stream (bit 0 is the low bit of byte 0).
    pub bit: u64,
    /// Bytes of plain text the blocks before it inflate to.
    pub plain: u64,
}

/// The blocks of a whole stream.
#[derive(Debug)]
pub struct Blocks {
    /// Each block's start, in stream order.
    pub starts: Vec<BlockStart>,
    /// The bit after the final block.
    pub end_bit: u64,
    /// The plain text of the whole stream.
    pub plain_len: u64,
}

/// Reads bits least significant first, as deflate packs them.
struct BitReader<'a> {
    data: &'a [u8],
    at: u64,
}

impl BitReader<'_> {
    fn bits(&mut self, count: u32) -> Result<u32, String> {
        debug_assert!(count <= 24);
        if self.at + u64::from(count) > self.data.len() as u64 * 8 {
            return Err("the deflate stream ends inside a block".into());
        }
        let byte = (self.at >> 3) as usize;
        let word = (0..4).fold(0u64, |word, i| word | u64::from(*self.data.get(byte + i).unwrap_or(&0)) << (8 * i));
        let shift = self.at & 7;
        self.at += u64::from(count);
        Ok(((word >> shift) & ((1u64 << count) - 1)) as u32)
    }
}

/// A canonical Huffman code, decoded a bit at a time (RFC 1951 §3.2.2).
struct Huffman {
    /// Codes of each length.
    counts: [u16; 16],
    /// Symbols ordered by code.
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Huffman {
        let mut counts = [0u16; 16];
        lengths.iter().for_each(|&len| counts[usize::from(len)] += 1);
        counts[0] = 0;
        let mut next = [0u16; 16];
        for len in 1..15 {
            next[len + 1] = next[len] + counts[len];
        }
        let mut symbols = vec![0u16; lengths.len()];
        for (symbol, &len) in lengths.iter().enumerate().filter(|(_, len)| **len != 0) {
            symbols[usize::from(next[usize::from(len)])] = symbol as u16;
            next[usize::from(len)] += 1;
        }
        Huffman { counts, symbols }
    }

    fn decode(&self, reader: &mut BitReader) -> Result<u16, String> {
        // The first code of each length, and how many codes of shorter lengths come before it.
        let (mut code, mut first, mut index) = (0u32, 0u32, 0u32);
        for &count in &self.counts[1..] {
            code |= reader.bits(1)?;
            let count = u32::from(count);
            if code - first < count {
                return self
                    .symbols
                    .get((index + code - first) as usize)
                    .copied()
                    .ok_or_else(|| "an over-subscribed Huffman code".into());
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        Err("a code that its Huffman table lacks".into())
    }
}

const LENGTH_BASE: [u16; 29] =
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LENGTH_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DISTANCE_EXTRA: [u8; 30] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
/// The order in which a dynamic block lists its code-length code's lengths.
const CODE_LENGTH_ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/// The start of every block of the deflate stream at the front of `stream`; stops after its final
/// block. Refuses plain text over `plain_limit` bytes.
pub fn scan(stream: &[u8], plain_limit: u64) -> Result<Blocks, String> {
    let mut reader = BitReader { data: stream, at: 0 };
    let mut plain = 0u64;
    let mut starts = Vec::new();
    loop {
        starts.push(BlockStart { bit: reader.at, plain });
        let last = reader.bits(1)? == 1;
        match reader.bits(2)? {
            0 => {
                reader.at = reader.at.next_multiple_of(8);
                let len = reader.bits(16)?;
                if reader.bits(16)? != !len & 0xffff {
                    return Err("a stored block's length and its complement disagree".into());
                }
                if reader.at + u64::from(len) * 8 > stream.len() as u64 * 8 {
                    return Err("the deflate stream ends inside a stored block".into());
                }
                reader.at += u64::from(len) * 8;
                plain += u64::from(len);
            }
            kind @ (1 | 2) => {
                let (literals, distances) = if kind == 1 { fixed_codes() } else { dynamic_codes(&mut reader)? };
                loop {
                    match literals.decode(&mut reader)? {
                        0..=255 => plain += 1,
                        256 => break,
                        symbol => {
                            let at = usize::from(symbol - 257);
                            let (base, extra) = match (LENGTH_BASE.get(at), LENGTH_EXTRA.get(at)) {
                                (Some(base), Some(extra)) => (base, extra),
                                _ => return Err(format!("an invalid length symbol {symbol}")),
                            };
                            plain += u64::from(*base) + u64::from(reader.bits(u32::from(*extra))?);
                            let distance = usize::from(distances.decode(&mut reader)?);
                            let extra = DISTANCE_EXTRA.get(distance).ok_or("an invalid distance symbol")?;
                            reader.bits(u32::from(*extra))?;
                        }
                    }
                }
            }
            _ => return Err("a block of the reserved type 3".into()),
        }
        if plain > plain_limit {
            return Err(format!("it inflates to more than {plain_limit} bytes"));
        }
        if last {
            return Ok(Blocks { starts, end_bit: reader.at, plain_len: plain });
        }
    }
}

/// The codes of a fixed-Huffman block.
fn fixed_codes() -> (Huffman, Huffman) {
    let mut lengths = [8u8; 288];
    lengths[144..256].fill(9);
    lengths[256..280].fill(7);
    (Huffman::new(&lengths), Huffman::new(&[5; 30]))
}

/// The codes a dynamic block's header describes.
fn dynamic_codes(reader: &mut BitReader) -> Result<(Huffman, Huffman), String> {
    let literal_count = reader.bits(5)? as usize + 257;
    let distance_count = reader.bits(5)? as usize + 1;
    let mut code_lengths = [0u8; 19];
    for &symbol in &CODE_LENGTH_ORDER[..reader.bits(4)? as usize + 4] {
        code_lengths[symbol] = reader.bits(3)? as u8;
    }
    let code_length_code = Huffman::new(&code_lengths);
    let total = literal_count + distance_count;
    let mut lengths = Vec::with_capacity(total);
    while lengths.len() < total {
        let (value, repeat) = match code_length_code.decode(reader)? {
            symbol @ 0..=15 => (symbol as u8, 1),
            16 => (*lengths.last().ok_or("a repeat before any code length")?, 3 + reader.bits(2)?),
            17 => (0, 3 + reader.bits(3)?),
            _ => (0, 11 + reader.bits(7)?),
        };
        if lengths.len() + repeat as usize > total {
            return Err("code lengths run past their count".into());
        }
        lengths.extend(std::iter::repeat_n(value, repeat as usize));
    }
    Ok((Huffman::new(&lengths[..literal_count]), Huffman::new(&lengths[literal_count..])))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// Text, then bytes that do not compress (stored blocks), then text again.
    pub(crate) fn mixed_plain(len: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let text = |n: usize, next: &mut dyn FnMut() -> u64| -> Vec<u8> {
            let words = ["kernel", "module", "initramfs", "deflate", "block", "segment", "osdeploy", "\n"];
            let mut out = Vec::new();
            while out.len() < n {
                out.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes());
                out.push(b' ');
            }
            out.truncate(n);
            out
        };
        let mut plain = text(len / 3, &mut next);
        plain.extend((0..len / 3).map(|_| next() as u8));
        plain.extend(text(len - plain.len(), &mut next));
        plain
    }

    pub(crate) fn deflate(plain: &[u8], level: u32) -> Vec<u8> {
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
        encoder.write_all(plain).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn block_starts_and_plain_offsets_are_found() {
        let plain = mixed_plain(600_000);
        for level in [0, 1, 6, 9] {
            let stream = deflate(&plain, level);
            let blocks = scan(&stream, u64::MAX).unwrap();
            assert_eq!(blocks.plain_len, plain.len() as u64, "level {level}");
            assert_eq!(blocks.end_bit.div_ceil(8), stream.len() as u64, "level {level}");
            assert!(blocks.starts.len() > 3, "level {level}: {} blocks", blocks.starts.len());
            assert!(blocks.starts.windows(2).all(|w| w[0].bit < w[1].bit && w[0].plain <= w[1].plain));
        }
        let stored = deflate(&plain, 0);
        let blocks = scan(&stored, u64::MAX).unwrap();
        assert!(blocks.starts.iter().all(|s| s.bit % 8 == 0), "stored blocks start on bytes");
    }

    #[test]
    fn what_is_not_a_whole_deflate_stream_is_an_error() {
        let stream = deflate(&mixed_plain(100_000), 6);
        for len in [0, 1, 2, 100, stream.len() / 2, stream.len() - 1] {
            assert!(scan(&stream[..len], u64::MAX).is_err(), "truncated to {len}");
        }
        assert!(scan(&[0xff; 64], u64::MAX).is_err(), "reserved block type");
        assert!(scan(&[0x00, 0x05, 0x00, 0x00, 0x00], u64::MAX).is_err(), "stored length mismatch");
        assert!(scan(&stream, 1000).unwrap_err().contains("more than 1000 bytes"));
        let mut x = 7u64;
        for _ in 0..200 {
            let noise: Vec<u8> = (0..300)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (x >> 56) as u8
                })
                .collect();
            let _ = scan(&noise, 1 << 20);
        }
    }
}
