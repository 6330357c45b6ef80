//! Content-defined chunking of file contents with FastCDC (the 2020 "rolling two bytes" variant).
//!
//! The parameters are part of the repository format: changing them changes cut points and so
//! every chunk id of newly committed files (old chunks stay valid but stop deduplicating).
//! docs/benchmarks.md records the measurement behind the defaults.

use std::io::{ErrorKind, Read};
use std::path::Path;

use fastcdc::v2020::{Normalization, cut, select_masks};
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, StoreError};
use crate::object::MAX_CHUNK_LEN;

/// FastCDC minimum, average and maximum chunk sizes in bytes (even numbers, average a power of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No chunk is shorter, except a file's last.
    pub min: u32,
    /// The targeted average.
    pub avg: u32,
    /// No chunk is longer.
    pub max: u32,
}

impl Default for ChunkerParams {
    /// 16 / 64 / 256 KiB: see docs/benchmarks.md ("chunk size").
    fn default() -> Self {
        ChunkerParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10 }
    }
}

impl ChunkerParams {
    /// Checks the constraints of fastcdc 5 and of the format's chunk limit.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.min >= 64
            && self.min <= self.avg
            && self.avg <= self.max
            && self.max <= MAX_CHUNK_LEN
            && self.avg.is_power_of_two()
            && self.min.is_multiple_of(2)
            && self.max.is_multiple_of(2)
            && (256..=4 << 20).contains(&self.avg);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "invalid chunker parameters {}/{}/{}: need 64 <= min <= avg <= max <= {MAX_CHUNK_LEN}, even sizes, a power-of-two average",
                self.min, self.avg, self.max
            ))
        }
    }
}

/// Cuts byte streams into content-defined chunks.
#[derive(Clone, Debug)]
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// A chunker with `params` (validated by the caller through [`ChunkerParams::validate`]).
    pub fn new(params: ChunkerParams) -> Self {
        let (mask_s, mask_l) = select_masks(params.avg as usize, Normalization::Level1);
        Chunker { params, mask_s, mask_l }
    }

    /// Length of the next chunk at the start of `data`, where `data` holds at least `max` bytes
    /// or everything up to the end of the stream.
    fn next_cut(&self, data: &[u8]) -> usize {
        let p = &self.params;
        cut(
            data,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        )
        .1
    }

    /// Splits everything `reader` yields (the file at `path`, named in errors) into chunks,
    /// calling `each` for every chunk in order; returns the total length. Memory use is bounded by
    /// a 4 × max buffer, whatever the file size. The cut points equal those of chunking the whole
    /// content at once.
    pub fn split(&self, mut reader: impl Read, path: &Path, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        let max = self.params.max as usize;
        let mut buf = vec![0u8; 4 * max];
        let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            if !eof && end - start < max {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                while end < buf.len() {
                    match reader.read(&mut buf[end..]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => end += n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e).at(path),
                    }
                }
            }
            if start == end {
                return Ok(total);
            }
            let len = self.next_cut(&buf[start..end]);
            if len == 0 {
                return Err(StoreError::BadSource { path: path.into(), reason: "the chunker made no progress".into() });
            }
            each(&buf[start..start + len])?;
            start += len;
            total += len as u64;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic xorshift bytes for tests.
    pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn cuts(data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        Chunker::new(ChunkerParams::default())
            .split(data, Path::new("mem"), |c| {
                out.push(c.len());
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn streaming_equals_whole_buffer_chunking() {
        let data = pseudo_random(3 << 20, 7);
        let p = ChunkerParams::default();
        let whole: Vec<usize> = fastcdc::v2020::FastCDC::new(&data, p.min as usize, p.avg as usize, p.max as usize)
            .map(|c| c.length)
            .collect();
        assert_eq!(cuts(&data), whole);
    }

    #[test]
    fn golden_cut_points() {
        // Pins the chunker: a change here changes chunk ids of every newly committed file.
        let data = pseudo_random(1 << 20, 42);
        assert_eq!(
            cuts(&data),
            vec![
                106_980, 69_092, 37_202, 84_751, 19_738, 47_125, 93_102, 133_087, 41_111, 28_239, 44_921, 83_153,
                79_451, 21_276, 21_182, 138_166
            ]
        );
    }

    #[test]
    fn edge_sizes() {
        assert!(cuts(&[]).is_empty());
        assert_eq!(cuts(&[1u8; 100]), vec![100]);
        assert!(cuts(&vec![0u8; 1 << 20]).iter().all(|&l| l <= 256 << 10));
    }

    #[test]
    fn params_validation() {
        assert!(ChunkerParams::default().validate().is_ok());
        assert!(ChunkerParams { min: 16, avg: 64, max: 256 }.validate().is_err());
        assert!(ChunkerParams { min: 4096, avg: 12_000, max: 65_536 }.validate().is_err());
        assert!(ChunkerParams { min: 4096, avg: 16_384, max: 2 << 20 }.validate().is_err());
    }
}
