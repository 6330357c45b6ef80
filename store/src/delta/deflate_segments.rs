//! A long deflate stream rebuilt as independent segments, one per core.
//!
//! preflate deflates a plain text again in order, at 15–20 MB a second here: the 130 MB cpio of an
//! initramfs took 7 s on one core, most of a kernel update's apply time. So the generator cuts a
//! long stream at block starts that fall on a byte boundary (about one block in eight does), and
//! analyses each segment as a stream of its own: a stored block holding the 32 KiB of plain text
//! before the segment (all its matches can reach back to), the segment's blocks, and — but for the
//! last segment — an empty final block. That is valid deflate; preflate rebuilds it exactly from
//! its plain text, and the segment's bytes are cut out of it. The segments' bytes, concatenated,
//! are the stream. A segment costs its window once more and some corrections (preflate predicts
//! its start afresh): about 0.1 % of the stream.
//!
//! A segment, like every gzip stream, is predicted with a shallower search than its compressor's
//! ([`deflate::PREDICTED_CHAIN_DEPTH`]): the rebuild at apply then takes 40 % less CPU, and the
//! matches the shallower search misses travel as corrections instead.
//!
//! The segment table is what a gzip delta's payload carries as its corrections when its flags say
//! so ([`super::gzip`]): a u32 count, then per segment its end in the plain text (u64), its end in
//! the stream (u64) and its corrections (u32 length, bytes).

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use rayon::prelude::*;

use crate::delta::deflate::{self, Corrections, predict};
use crate::delta::deflate_blocks::Blocks;

/// Plain text per segment the generator aims at by default: 16 segments for a 130 MB initramfs.
pub const SEGMENT_PLAIN: u64 = 8 << 20;

/// How far back a deflate match reaches.
const WINDOW: u64 = 32 << 10;

/// Most segments a table may have.
const MAX_SEGMENTS: u32 = 4096;

/// The empty final block closing every segment but the last: BFINAL, fixed codes, end of block.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0b011, 0];

/// One segment: bytes `stream` of the stream, inflating to bytes `plain` of the plain text.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Segment {
    plain: std::ops::Range<u64>,
    stream: std::ops::Range<u64>,
}

impl Segment {
    fn window(&self) -> std::ops::Range<usize> {
        self.plain.start.saturating_sub(WINDOW) as usize..self.plain.start as usize
    }

    /// Bytes of the stream of its own before the segment's: the stored block of its window.
    fn head_len(&self) -> usize {
        let window = self.window().len();
        if window == 0 { 0 } else { 5 + window }
    }

    /// The segment as a stream of its own, from the stream's bytes and plain text.
    fn own_stream(&self, stream: &[u8], plain: &[u8], last: bool) -> Vec<u8> {
        let window = &plain[self.window()];
        let mut own = Vec::with_capacity(self.head_len() + (self.stream.end - self.stream.start) as usize + 2);
        if !window.is_empty() {
            // A stored block that is not final: its 3 header bits, padding, LEN and NLEN.
            let len = window.len() as u16;
            own.push(0);
            own.extend_from_slice(&len.to_le_bytes());
            own.extend_from_slice(&(!len).to_le_bytes());
            own.extend_from_slice(window);
        }
        own.extend_from_slice(&stream[self.stream.start as usize..self.stream.end as usize]);
        if !last {
            own.extend_from_slice(&FINAL_EMPTY_BLOCK);
        }
        own
    }
}

/// Segments of about `segment_plain` bytes of plain text, cut at byte-aligned block starts.
fn cut(blocks: &Blocks, segment_plain: u64) -> Vec<Segment> {
    let mut cuts = vec![(0u64, 0u64)];
    let mut target = segment_plain;
    for start in blocks.starts.iter().skip(1) {
        if start.plain >= target && start.bit % 8 == 0 && start.plain < blocks.plain_len {
            cuts.push((start.bit / 8, start.plain));
            target = start.plain + segment_plain;
        }
    }
    cuts.push((blocks.end_bit.div_ceil(8), blocks.plain_len));
    cuts.windows(2).map(|w| Segment { plain: w[0].1..w[1].1, stream: w[0].0..w[1].0 }).collect()
}

/// preflate's corrections for `stream` (whose blocks are `blocks` and plain text `plain`) in
/// segments of about `segment_plain` bytes, analysed in parallel: the segment table, or `None`
/// when the stream does not split in two or preflate cannot rebuild a segment.
pub fn analyse(stream: &[u8], blocks: &Blocks, plain: &[u8], segment_plain: u64) -> Option<Vec<u8>> {
    let segments = cut(blocks, segment_plain);
    if segments.len() < 2 || plain.len() as u64 != blocks.plain_len {
        return None;
    }
    let last = segments.len() - 1;
    let corrections: Vec<Vec<u8>> = segments
        .par_iter()
        .enumerate()
        .map(|(at, segment)| {
            let own = segment.own_stream(stream, plain, at == last);
            let prediction = predict(&own, usize::MAX)?;
            (prediction.stream_len == own.len()).then_some(prediction.corrections)
        })
        .collect::<Option<_>>()?;
    let mut table = (segments.len() as u32).to_le_bytes().to_vec();
    for (segment, corrections) in segments.iter().zip(&corrections) {
        table.extend_from_slice(&segment.plain.end.to_le_bytes());
        table.extend_from_slice(&segment.stream.end.to_le_bytes());
        table.extend_from_slice(&(corrections.len() as u32).to_le_bytes());
        table.extend_from_slice(corrections);
    }
    Some(table)
}

/// Reads a segment table for a stream of `stream_len` bytes inflating to `plain_len`.
fn read_table(table: &[u8], plain_len: u64, stream_len: u64) -> Result<Vec<(Segment, &[u8])>, String> {
    let mut rest = table;
    let mut take = |len: usize| -> Result<&[u8], String> {
        let (head, tail) = rest.split_at_checked(len).ok_or("the segment table ends early")?;
        rest = tail;
        Ok(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    if count == 0 || count > MAX_SEGMENTS {
        return Err(format!("a segment table of {count} segments"));
    }
    let mut segments = Vec::with_capacity(count as usize);
    let (mut plain_at, mut stream_at) = (0u64, 0u64);
    for _ in 0..count {
        let plain_end = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let stream_end = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        let corrections = take(len as usize)?;
        if plain_end <= plain_at || stream_end <= stream_at || plain_end > plain_len || stream_end > stream_len {
            return Err("the segment table's segments are out of order or out of bounds".into());
        }
        segments.push((Segment { plain: plain_at..plain_end, stream: stream_at..stream_end }, corrections));
        (plain_at, stream_at) = (plain_end, stream_end);
    }
    if (plain_at, stream_at) != (plain_len, stream_len) || !rest.is_empty() {
        return Err("the segment table does not cover the stream exactly".into());
    }
    Ok(segments)
}

/// Deflates a plain text of `plain_len` bytes again into the `stream_len` bytes the segment
/// `table` of [`analyse`] describes (its corrections [`deflate::bounded`] if `bounded`), its
/// segments in parallel. `plain` returns a range of the plain text; it is asked for the segments'
/// ranges in order, on this thread, and a node's segment is deflated as soon as its range is there,
/// while the later ones are still being put together.
pub(crate) fn rebuild<'a>(
    plain_len: u64,
    plain: &mut dyn FnMut(std::ops::Range<u64>) -> Result<Cow<'a, [u8]>, String>,
    table: &[u8],
    bounded: bool,
    stream_len: u64,
    source: Corrections,
) -> Result<Vec<u8>, String> {
    let segments = read_table(table, plain_len, stream_len)?;
    let last = segments.len() - 1;
    let range = |at: usize| {
        let segment = &segments[at].0;
        segment.window().start as u64..segment.plain.end
    };
    let one = |at: usize, own_plain: &[u8]| {
        let (segment, corrections) = &segments[at];
        let len = (segment.stream.end - segment.stream.start) as usize;
        let own_len = segment.head_len() + len + if at == last { 0 } else { FINAL_EMPTY_BLOCK.len() };
        let corrections = deflate::led_by_bound(corrections, bounded);
        let own = deflate::recreate(own_plain, &corrections, own_len as u64, source)
            .map_err(|e| format!("segment {} of {}: {e}", at + 1, last + 1))?;
        Ok(own[segment.head_len()..segment.head_len() + len].to_vec())
    };
    let rebuilt = match source {
        // The generator's proof deflates in this process: CPU work, on rayon's threads like the
        // rest of its work (threads of their own let one more file be encoded meanwhile: 760
        // instead of 700 MiB of peak RSS on the kernel pair).
        Corrections::Own => {
            let pieces = (0..segments.len()).map(|at| plain(range(at))).collect::<Result<Vec<_>, String>>()?;
            pieces.par_iter().enumerate().map(|(at, piece)| one(at, piece)).collect::<Result<Vec<_>, String>>()?
        }
        // A node's segments wait for child processes, and rayon's threads apply the pull's other
        // deltas meanwhile.
        Corrections::Received => on_own_threads(segments.len(), &mut |at| plain(range(at)), &one)?,
    };
    Ok(rebuilt.concat())
}

/// Rebuilds segment `at` from its plain text (its window, then its own).
type RebuildOne<'f> = dyn Fn(usize, &[u8]) -> Result<Vec<u8>, String> + Sync + 'f;

/// `one(at, piece(at))` for `at` in `0..count` on threads of their own, one per core, while this
/// thread calls `piece` in order; stops at the first error.
fn on_own_threads<'a>(
    count: usize,
    piece: &mut dyn FnMut(usize) -> Result<Cow<'a, [u8]>, String>,
    one: &RebuildOne<'_>,
) -> Result<Vec<Vec<u8>>, String> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(count);
    // At most one piece waits per worker: the pieces ahead of the workers are what memory holds.
    let (to_workers, pieces) = mpsc::sync_channel::<(usize, Cow<'a, [u8]>)>(workers);
    let (pieces, failed) = (Mutex::new(pieces), AtomicBool::new(false));
    let work = || {
        let mut done = Vec::new();
        loop {
            let next = pieces.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv();
            let Ok((at, piece)) = next else { break };
            // After a failure the rest is received and dropped, so that no send waits forever.
            if failed.load(Ordering::Relaxed) {
                continue;
            }
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| one(at, &piece)))
                .unwrap_or_else(|_| Err(format!("segment {}: its rebuild panicked", at + 1)));
            failed.fetch_or(result.is_err(), Ordering::Relaxed);
            done.push((at, result));
        }
        done
    };
    let mut results = vec![None; count];
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..workers).map(|_| scope.spawn(work)).collect();
        let mut put_together = Ok(());
        for at in 0..count {
            if failed.load(Ordering::Relaxed) {
                break;
            }
            match piece(at) {
                Ok(piece) => to_workers.send((at, piece)).expect("the workers receive until the channel closes"),
                Err(e) => {
                    put_together = Err(e);
                    break;
                }
            }
        }
        drop(to_workers);
        for worker in workers {
            for (at, result) in worker.join().expect("a worker catches its rebuild's panic") {
                results[at] = Some(result?);
            }
        }
        put_together
    })?;
    results.into_iter().map(|r| r.ok_or_else(|| "a segment was not rebuilt".to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::deflate_blocks::scan;
    use crate::delta::deflate_blocks::tests::{deflate, mixed_plain};

    fn rebuild_whole(plain: &[u8], table: &[u8], stream_len: u64, source: Corrections) -> Result<Vec<u8>, String> {
        rebuild(
            plain.len() as u64,
            &mut |range| Ok(Cow::Borrowed(&plain[range.start as usize..range.end as usize])),
            table,
            true,
            stream_len,
            source,
        )
    }

    #[test]
    fn segments_rebuild_the_stream_exactly_with_stored_and_compressed_blocks() {
        let plain = mixed_plain(900_000);
        for level in [1, 6, 9] {
            let stream = deflate(&plain, level);
            let blocks = scan(&stream, u64::MAX).unwrap();
            let table = analyse(&stream, &blocks, &plain, 100_000).expect("segments");
            let segments = read_table(&table, plain.len() as u64, stream.len() as u64).unwrap();
            assert!(segments.len() >= 3, "level {level}: {} segments", segments.len());
            // Predicted 16 deep, the search after a mispredicted literal is bounded by as deep as
            // zlib searched (level 6: 128, 9: 4096); level 1 searches 4 deep: nothing to bound.
            let bounds: Vec<u32> =
                segments.iter().map(|(_, c)| u32::from_le_bytes(c[..4].try_into().unwrap())).collect();
            match level {
                1 => assert!(bounds.iter().all(|&b| b == 0), "level {level}: {bounds:?}"),
                _ => assert!(bounds.iter().any(|&b| b > deflate::PREDICTED_CHAIN_DEPTH), "level {level}: {bounds:?}"),
            }
            // In this process (generation's proof) and as a node rebuilds (here without children).
            for source in [Corrections::Own, Corrections::Received] {
                let rebuilt = rebuild_whole(&plain, &table, stream.len() as u64, source).unwrap();
                assert!(rebuilt == stream, "level {level}, {source:?}: the segments rebuild the stream");
            }
        }
    }

    #[test]
    fn a_stream_that_does_not_split_is_not_segmented() {
        let plain = mixed_plain(50_000);
        let stream = deflate(&plain, 6);
        let blocks = scan(&stream, u64::MAX).unwrap();
        assert!(analyse(&stream, &blocks, &plain, 1 << 20).is_none());
    }

    #[test]
    fn hostile_tables_are_errors() {
        let plain = mixed_plain(400_000);
        let stream = deflate(&plain, 6);
        let blocks = scan(&stream, u64::MAX).unwrap();
        let table = analyse(&stream, &blocks, &plain, 60_000).unwrap();
        let (plain_len, stream_len) = (plain.len() as u64, stream.len() as u64);
        for len in [0, 3, 4, 12, 20, table.len() - 1] {
            assert!(read_table(&table[..len], plain_len, stream_len).is_err(), "truncated to {len}");
        }
        assert!(read_table(&table, plain_len + 1, stream_len).unwrap_err().contains("exactly"));
        assert!(read_table(&table, plain_len, stream_len - 1).unwrap_err().contains("out of"));
        let mut many = table.clone();
        many[..4].copy_from_slice(&(MAX_SEGMENTS + 1).to_le_bytes());
        assert!(read_table(&many, plain_len, stream_len).unwrap_err().contains("4097 segments"));
        // Corrections swapped between two segments rebuild nothing, and say which segment.
        let segments = read_table(&table, plain_len, stream_len).unwrap();
        let mut swapped = (segments.len() as u32).to_le_bytes().to_vec();
        for (at, (segment, _)) in segments.iter().enumerate() {
            let other = segments[(at + 1) % segments.len()].1;
            swapped.extend_from_slice(&segment.plain.end.to_le_bytes());
            swapped.extend_from_slice(&segment.stream.end.to_le_bytes());
            swapped.extend_from_slice(&(other.len() as u32).to_le_bytes());
            swapped.extend_from_slice(other);
        }
        for source in [Corrections::Own, Corrections::Received] {
            let err = rebuild_whole(&plain, &swapped, stream_len, source).unwrap_err();
            assert!(err.starts_with("segment "), "{source:?}: {err}");
        }
    }
}
