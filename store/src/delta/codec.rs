//! Delta codecs: how new content is encoded against old content, and rebuilt from the two.
//!
//! Codecs tried side by side because each wins on different files:
//! - [`DeltaCodec::ZstdPatch`] is one zstd frame compressed with the old content as its reference
//!   prefix (the idea of `zstd --patch-from`): strong on text and on data that moved whole.
//! - [`DeltaCodec::Bsdiff`] is bsdiff's control, diff and extra streams (suffix-array matching by
//!   qbsdiff), each stored zstd-compressed: strong on executables, where a rebuild shifts addresses
//!   throughout the code and the bytewise difference of a match is mostly zeros.
//! - [`DeltaCodec::Gzip`] diffs a gzip file by its inflated content with one of the two above and
//!   deflates it again exactly ([`super::gzip`]): for compressed docs and initramfs images.
//! - [`DeltaCodec::GzipTree`] is the same, naming the members of an initramfs that are files of
//!   the target release instead of diffing them ([`super::tree_refs`]).
//!
//! Decoding treats the payload as hostile: every length is checked against the expected size
//! before anything is allocated, no decode produces more than that size, and any malformed
//! payload is an error, never a panic.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read};

use zstd::zstd_safe::{self, CParameter};

use super::deflate_segments::SEGMENT_PLAIN;
use super::gzip;
use crate::id::FileId;

/// How a delta payload encodes new content against old content (the number is stored in delta
/// objects).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaCodec {
    /// One zstd frame compressed with the old content as reference prefix.
    ZstdPatch = 1,
    /// bsdiff's control, diff and extra streams, each in a zstd frame.
    Bsdiff = 2,
    /// A gzip file's plain text by one of the codecs above, deflated again bit for bit.
    Gzip = 3,
    /// [`DeltaCodec::Gzip`] naming files of the target release that its plain text contains:
    /// applied once the node holds them.
    GzipTree = 4,
}

impl DeltaCodec {
    /// The codec stored as `v`, if any.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(DeltaCodec::ZstdPatch),
            2 => Some(DeltaCodec::Bsdiff),
            3 => Some(DeltaCodec::Gzip),
            4 => Some(DeltaCodec::GzipTree),
            _ => None,
        }
    }

    /// Its name in reports: `zstd-patch`, `bsdiff`, `gzip` or `gzip-tree`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeltaCodec::ZstdPatch => "zstd-patch",
            DeltaCodec::Bsdiff => "bsdiff",
            DeltaCodec::Gzip => "gzip",
            DeltaCodec::GzipTree => "gzip-tree",
        }
    }
}

impl fmt::Display for DeltaCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of delta generation.
///
/// The defaults were measured on a Debian update (docs/deltas.md): zstd-patch at level 19 costs
/// 5 times the time of level 12 on large files for 1 % fewer bytes, while on small files and on
/// bsdiff's streams (mostly zeros, no reference to search) level 19 is cheap and pays; bsdiff on
/// text never beat zstd-patch, so it is tried on binary content only.
#[derive(Clone, Copy, Debug)]
pub struct EncodeOptions {
    /// The zstd level of bsdiff's streams, and of zstd-patch on inputs up to `large_input`.
    pub zstd_level: i32,
    /// zstd-patch runs at `large_level` when old and new together exceed this many bytes.
    pub large_input: usize,
    /// The zstd-patch level for large inputs.
    pub large_level: i32,
    /// bsdiff is tried only when old and new are each at most this many bytes: it holds a suffix
    /// array of the old content, about 5 times its size in memory.
    pub bsdiff_max_input: usize,
    /// A gzip file's deflate stream is rebuilt in segments of about this much plain text, in
    /// parallel, when it holds at least two ([`super::deflate_segments`]).
    pub deflate_segment: u64,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            zstd_level: 19,
            large_input: 1 << 20,
            large_level: 12,
            bsdiff_max_input: 64 << 20,
            deflate_segment: SEGMENT_PLAIN,
        }
    }
}

/// True for content that is not text: a NUL byte in its first 8 KiB (how grep and git tell).
fn is_binary(content: &[u8]) -> bool {
    content[..content.len().min(8 << 10)].contains(&0)
}

/// Reads a file of the target release by id and size, for [`DeltaCodec::GzipTree`].
pub type FileReader<'a> = dyn Fn(&FileId, u64) -> Result<Vec<u8>, String> + 'a;

/// Tells the file of the target release whose content is the given bytes, if any.
pub type ReleaseLookup<'a> = dyn Fn(&[u8]) -> Option<FileId> + 'a;

/// A [`FileReader`] for deltas that read no release file: any request is an error.
pub fn no_files(file: &FileId, _: u64) -> Result<Vec<u8>, String> {
    Err(format!("this delta cannot read file {file} of the release"))
}

/// Encodes `new` against `old` with `codec` (bsdiff whatever `options.bsdiff_max_input` says; gzip
/// fails on content it cannot rebuild exactly, gzip-tree here always: see [`encode_best`]).
/// zstd-patch finds no match in an `old` that overlaps `new` in memory: zstd drops such a prefix.
pub fn encode(codec: DeltaCodec, old: &[u8], new: &[u8], options: &EncodeOptions) -> io::Result<Vec<u8>> {
    match codec {
        DeltaCodec::ZstdPatch => {
            let large = old.len().saturating_add(new.len()) > options.large_input;
            zstd_compress(new, old, if large { options.large_level } else { options.zstd_level })
        }
        DeltaCodec::Bsdiff => bsdiff_encode(old, new, options.zstd_level),
        DeltaCodec::Gzip => gzip::encode(old, new, options, None)?
            .map(|encoded| encoded.payload)
            .ok_or_else(|| io::Error::other("not a gzip file that can be deflated again exactly")),
        DeltaCodec::GzipTree => Err(io::Error::other("gzip-tree deltas need the release's files: see encode_best")),
    }
}

/// Tries every codec that applies (bsdiff only on binary content within
/// `options.bsdiff_max_input`, gzip only on gzip files it rebuilds exactly, naming the files of
/// the target release that `release` knows by content) and returns the smallest payload; on a
/// tie, the codec with the lower number. Deterministic: the same inputs and options give the same
/// bytes on any machine.
pub fn encode_best(
    old: &[u8],
    new: &[u8],
    options: &EncodeOptions,
    release: Option<&ReleaseLookup<'_>>,
) -> io::Result<(DeltaCodec, Vec<u8>)> {
    let (codec, payload) = encode_best_plain(old, new, options)?;
    Ok(match gzip::encode(old, new, options, release)? {
        Some(gzip) if gzip.payload.len() < payload.len() => (gzip.codec, gzip.payload),
        _ => (codec, payload),
    })
}

/// [`encode_best`] among the codecs that take content as it is: zstd-patch and bsdiff.
pub(super) fn encode_best_plain(old: &[u8], new: &[u8], options: &EncodeOptions) -> io::Result<(DeltaCodec, Vec<u8>)> {
    let bsdiff_applies =
        is_binary(new) && old.len() <= options.bsdiff_max_input && new.len() <= options.bsdiff_max_input;
    let (zstd_patch, bsdiff) = rayon::join(
        || encode(DeltaCodec::ZstdPatch, old, new, options),
        || bsdiff_applies.then(|| encode(DeltaCodec::Bsdiff, old, new, options)).transpose(),
    );
    let zstd_patch = zstd_patch?;
    Ok(match bsdiff? {
        Some(bsdiff) if bsdiff.len() < zstd_patch.len() => (DeltaCodec::Bsdiff, bsdiff),
        _ => (DeltaCodec::ZstdPatch, zstd_patch),
    })
}

/// Rebuilds the new content from `old` and a `codec` payload (`files` reads the release files a
/// gzip-tree delta names). Never produces more than `target_size` bytes, and allocates only in
/// proportion to it whatever the payload declares (the output, and for bsdiff the streams, checked
/// against it first): a payload that yields more or fewer bytes, or is malformed in any way, is an
/// error describing the problem.
pub fn decode(
    codec: DeltaCodec,
    old: &[u8],
    payload: &[u8],
    target_size: u64,
    files: &FileReader<'_>,
) -> Result<Vec<u8>, String> {
    let target =
        usize::try_from(target_size).map_err(|_| format!("target size {target_size} does not fit in memory"))?;
    let new = match codec {
        DeltaCodec::ZstdPatch => zstd_decompress(payload, old, target)?,
        DeltaCodec::Bsdiff => bsdiff_decode(old, payload, target)?,
        DeltaCodec::Gzip | DeltaCodec::GzipTree => gzip::decode(codec, old, payload, target_size, files)?,
    };
    if new.len() != target {
        return Err(format!("{codec} payload yields {} bytes instead of {target_size}", new.len()));
    }
    Ok(new)
}

/// Compresses `data` into one zstd frame at `level`, with `prefix` (possibly empty) as reference
/// prefix, long-distance matching on and a window that covers prefix and data. The frame records
/// its content size (one-shot compression always does).
fn zstd_compress(data: &[u8], prefix: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut cctx = zstd_safe::CCtx::try_create().ok_or_else(|| io::Error::other("cannot create a zstd context"))?;
    for parameter in [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(window_log(prefix.len().saturating_add(data.len()))),
        CParameter::EnableLongDistanceMatching(true),
    ] {
        cctx.set_parameter(parameter).map_err(zstd_io_error)?;
    }
    cctx.ref_prefix(prefix).map_err(zstd_io_error)?;
    let mut frame = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut frame, data).map_err(zstd_io_error)?;
    Ok(frame)
}

/// The zstd window log that covers `len` bytes: ceil(log2(len)), within zstd's 10..=31.
fn window_log(len: usize) -> u32 {
    (usize::BITS - len.saturating_sub(1).leading_zeros()).clamp(10, 31)
}

fn zstd_io_error(code: zstd_safe::ErrorCode) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)))
}

thread_local! {
    /// A decompression context per thread: creating one costs about 15 µs, and a kernel update
    /// applies 5,000 deltas (0.1 s of CPU, 2 % of its apply, when each made its own).
    static DCTX: RefCell<Option<zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// The first bytes of a zstd dictionary: a `prefix` that starts with them would be read as one by
/// `ZSTD_decompress_usingDict` instead of as raw content.
const ZSTD_DICTIONARY_MAGIC: [u8; 4] = 0xEC30_A437u32.to_le_bytes();

/// Decompresses zstd `frames` into at most `capacity` bytes, the frames compressed with reference
/// `prefix` (possibly empty; a delta's payload is one frame, a bsdiff container's three without
/// one). One-shot decompression into a buffer allocated up front: unlike a stream decoder, it
/// allocates no window, whatever window size a hostile frame declares.
fn zstd_decompress(frames: &[u8], prefix: &[u8], capacity: usize) -> Result<Vec<u8>, String> {
    if let Ok(Some(declared)) = zstd_safe::get_frame_content_size(frames)
        && declared > capacity as u64
    {
        return Err(format!("zstd frame declares {declared} bytes, more than the expected {capacity}"));
    }
    let mut out = Vec::new();
    out.try_reserve_exact(capacity).map_err(|e| format!("cannot allocate {capacity} bytes: {e}"))?;
    let failed =
        |code| format!("zstd data does not decode to at most {capacity} bytes: {}", zstd_safe::get_error_name(code));
    if prefix.starts_with(&ZSTD_DICTIONARY_MAGIC) {
        // Rare: such a prefix is referenced as raw content by a context of its own.
        let mut dctx = zstd_safe::DCtx::try_create().ok_or("cannot create a zstd context")?;
        dctx.ref_prefix(prefix).map_err(|code| format!("zstd: {}", zstd_safe::get_error_name(code)))?;
        dctx.decompress(&mut out, frames).map_err(failed)?;
        return Ok(out);
    }
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd_safe::DCtx::try_create();
        }
        let dctx = slot.as_mut().ok_or("cannot create a zstd context")?;
        // Raw content as dictionary is the prefix, referenced for this call only (not copied).
        dctx.decompress_using_dict(&mut out, frames, prefix).map_err(failed)
    })?;
    Ok(out)
}

// Bsdiff container: the lengths of the control, diff and extra streams (u64 little endian each),
// then each stream in its own zstd frame, the three frames back to back (the decoder decompresses
// them at once: zstd decodes concatenated frames into one buffer).
//
// Three frames rather than one of the three streams concatenated, because each stream has its own
// statistics. At level 19, Rust 1.95.0 against 1.97.0-nightly: libstd-*.so (5.4 MB) 751 040 bytes
// against 752 839 for one frame; rustfmt (5.3 MB) 740 590 against 752 456; cargo-clippy (1.3 MB)
// 55 674 against 56 785; cargo (42 MB) 7 137 601 against 7 144 649; and libpython3.11.so (7.7 MB)
// with 300 bytes changed and 4 KiB inserted, 2 932 against 2 963.
//
// The control stream is a sequence of (add, copy, seek) triples of 24 bytes, each number in
// bsdiff's sign-magnitude encoding ([`offtin`]): add bytes of old content from the current old
// position, each plus the next diff byte; then copy bytes of the extra stream; then move the old
// position by seek. The encoder folds triples that add and copy nothing into the seek of the one
// before, so that only a first triple may produce no byte and a payload holds at most one more
// triple than the new content has bytes, which the decoder checks before decompressing.

/// Size of the bsdiff container's header: three u64 stream lengths.
const BSDIFF_HEADER_LEN: usize = 24;
/// Size of one (add, copy, seek) triple of the control stream.
const CONTROL_LEN: usize = 24;

/// bsdiff's integer encoding: the magnitude in the low 63 bits and the sign in bit 63, little
/// endian.
fn offtin(bytes: [u8; 8]) -> i64 {
    let x = u64::from_le_bytes(bytes);
    let magnitude = (x & (u64::MAX >> 1)) as i64;
    if x >> 63 == 1 { -magnitude } else { magnitude }
}

/// The inverse of [`offtin`], for any value but `i64::MIN`.
fn offtin_bytes(v: i64) -> [u8; 8] {
    let magnitude = v.unsigned_abs();
    (if v < 0 { magnitude | 1 << 63 } else { magnitude }).to_le_bytes()
}

/// The three streams of a bsdiff patch, uncompressed.
struct BsdiffStreams {
    control: Vec<u8>,
    diff: Vec<u8>,
    extra: Vec<u8>,
}

fn bsdiff_encode(old: &[u8], new: &[u8], level: i32) -> io::Result<Vec<u8>> {
    if old.len() > qbsdiff::bsdiff::MAX_LENGTH {
        return Err(io::Error::other(format!("bsdiff cannot index {} bytes of old content", old.len())));
    }
    let mut bsdiff40 = Vec::new();
    // bzip2 level 1 (the fastest): its output is only decompressed again just below.
    qbsdiff::Bsdiff::new(old, new).compression_level(1).compare(&mut bsdiff40)?;
    let streams = parse_bsdiff40(&bsdiff40)?;
    let control = fold_empty_controls(&streams.control)?;
    let streams = [&control, &streams.diff, &streams.extra];
    let mut payload: Vec<u8> = streams.iter().flat_map(|stream| (stream.len() as u64).to_le_bytes()).collect();
    for stream in streams {
        payload.extend_from_slice(&zstd_compress(stream, &[], level)?);
    }
    Ok(payload)
}

/// Splits qbsdiff's BSDIFF40 output (magic, the bzip2'd control and diff sizes and the new size,
/// then three bzip2 streams) into its decompressed streams.
fn parse_bsdiff40(patch: &[u8]) -> io::Result<BsdiffStreams> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("qbsdiff output: {what}"));
    let header = patch.get(..32).ok_or_else(|| invalid("shorter than its header"))?;
    if &header[..8] != b"BSDIFF40" {
        return Err(invalid("no BSDIFF40 magic"));
    }
    let (numbers, _) = header.as_chunks::<8>();
    let size = |number: [u8; 8]| usize::try_from(offtin(number)).map_err(|_| invalid("negative or oversized length"));
    let (control_len, diff_len) = (size(numbers[1])?, size(numbers[2])?);
    let body = &patch[32..];
    let (control, rest) = body.split_at_checked(control_len).ok_or_else(|| invalid("truncated"))?;
    let (diff, extra) = rest.split_at_checked(diff_len).ok_or_else(|| invalid("truncated"))?;
    let bunzip2 = |stream: &[u8]| {
        let mut out = Vec::new();
        bzip2::read::BzDecoder::new(stream).read_to_end(&mut out).map(|_| out)
    };
    Ok(BsdiffStreams { control: bunzip2(control)?, diff: bunzip2(diff)?, extra: bunzip2(extra)? })
}

/// Rewrites a control stream without triples that add and copy nothing, their seek added to the
/// triple before (a first such triple stays).
fn fold_empty_controls(control: &[u8]) -> io::Result<Vec<u8>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("qbsdiff control stream: {what}"));
    let (triples_in, rest) = control.as_chunks::<CONTROL_LEN>();
    if !rest.is_empty() {
        return Err(invalid("not whole triples"));
    }
    let mut triples: Vec<[i64; 3]> = Vec::with_capacity(triples_in.len());
    for triple in triples_in {
        let [add, copy, seek] = control_triple(triple);
        match triples.last_mut() {
            Some(last) if add == 0 && copy == 0 => {
                last[2] = last[2].checked_add(seek).ok_or_else(|| invalid("seek overflows"))?;
            }
            _ => triples.push([add, copy, seek]),
        }
    }
    Ok(triples.iter().flatten().flat_map(|&v| offtin_bytes(v)).collect())
}

/// The (add, copy, seek) numbers of a control triple.
fn control_triple(triple: &[u8; CONTROL_LEN]) -> [i64; 3] {
    let (numbers, _) = triple.as_chunks::<8>();
    [offtin(numbers[0]), offtin(numbers[1]), offtin(numbers[2])]
}

fn bsdiff_decode(old: &[u8], payload: &[u8], target: usize) -> Result<Vec<u8>, String> {
    let (header, frames) =
        payload.split_at_checked(BSDIFF_HEADER_LEN).ok_or("bsdiff payload is shorter than its header")?;
    let (lengths, _) = header.as_chunks::<8>();
    let [control_len, diff_len, extra_len] = [0, 1, 2].map(|i| u64::from_le_bytes(lengths[i]));
    let target_u64 = target as u64;
    if control_len % CONTROL_LEN as u64 != 0 {
        return Err(format!("bsdiff control stream of {control_len} bytes is not whole triples"));
    }
    let max_control_len = target_u64.checked_add(1).and_then(|n| n.checked_mul(CONTROL_LEN as u64));
    if max_control_len.is_none_or(|max| control_len > max) {
        return Err(format!("bsdiff control stream of {control_len} bytes is too long for {target} bytes of output"));
    }
    if diff_len.checked_add(extra_len) != Some(target_u64) {
        return Err(format!(
            "bsdiff diff and extra streams of {diff_len} and {extra_len} bytes do not add up to {target}"
        ));
    }
    // All three fit in memory: the control stream is bounded above, diff + extra is `target`.
    let (control_len, diff_len) = (control_len as usize, diff_len as usize);
    let total = control_len
        .checked_add(target)
        .ok_or_else(|| format!("bsdiff streams of {control_len} + {target} bytes do not fit in memory"))?;
    let streams = zstd_decompress(frames, &[], total)?;
    if streams.len() != total {
        return Err(format!("bsdiff streams decode to {} bytes instead of the declared {total}", streams.len()));
    }
    let (control, rest) = streams.split_at(control_len);
    let (diff, extra) = rest.split_at(diff_len);
    apply_bsdiff(old, control, diff, extra, target)
}

/// Applies bsdiff streams to `old`, checking every triple against the bounds of `old`, of the
/// streams and of `target` bytes of output.
fn apply_bsdiff(old: &[u8], control: &[u8], diff: &[u8], extra: &[u8], target: usize) -> Result<Vec<u8>, String> {
    let mut new = Vec::new();
    new.try_reserve_exact(target).map_err(|e| format!("cannot allocate {target} bytes: {e}"))?;
    // The old position may leave the old content between two triples (qbsdiff's last seek often
    // does); it must lie within it only where bytes are read.
    let (mut old_at, mut diff_at, mut extra_at) = (0i64, 0usize, 0usize);
    // Whole triples: the length was checked by the caller.
    for (index, triple) in control.as_chunks::<CONTROL_LEN>().0.iter().enumerate() {
        let [add, copy, seek] = control_triple(triple);
        let bad = |what: String| format!("bsdiff control triple {index} (add {add}, copy {copy}, seek {seek}): {what}");
        let add = usize::try_from(add).map_err(|_| bad("negative add".into()))?;
        let copy = usize::try_from(copy).map_err(|_| bad("negative copy".into()))?;
        let old_part = match add {
            0 => &[][..],
            _ => usize::try_from(old_at)
                .ok()
                .and_then(|at| old.get(at..))
                .and_then(|rest| rest.get(..add))
                .ok_or_else(|| bad(format!("reads outside the old content ({} bytes)", old.len())))?,
        };
        let diff_part = diff
            .get(diff_at..)
            .and_then(|rest| rest.get(..add))
            .ok_or_else(|| bad("adds past the end of the diff stream".into()))?;
        let extra_part = extra
            .get(extra_at..)
            .and_then(|rest| rest.get(..copy))
            .ok_or_else(|| bad("copies past the end of the extra stream".into()))?;
        // Within `target` bytes: diff and extra hold `target` bytes together, and each is read once.
        new.extend(old_part.iter().zip(diff_part).map(|(o, d)| o.wrapping_add(*d)));
        new.extend_from_slice(extra_part);
        diff_at += add;
        extra_at += copy;
        old_at = i64::try_from(add)
            .ok()
            .and_then(|add| old_at.checked_add(add))
            .and_then(|at| at.checked_add(seek))
            .ok_or_else(|| bad("the old position overflows".into()))?;
    }
    if new.len() != target {
        return Err(format!("bsdiff control stream produces {} bytes instead of {target}", new.len()));
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    const CODECS: [DeltaCodec; 2] = [DeltaCodec::ZstdPatch, DeltaCodec::Bsdiff];

    /// Deterministic pseudo-random bytes (xorshift64).
    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn round_trip(codec: DeltaCodec, old: &[u8], new: &[u8]) -> Vec<u8> {
        let payload = encode(codec, old, new, &EncodeOptions::default()).unwrap();
        let decoded = decode(codec, old, &payload, new.len() as u64, &no_files).unwrap();
        assert!(decoded == new, "{codec} does not round-trip ({} → {} bytes)", old.len(), new.len());
        payload
    }

    fn edited(base: &[u8]) -> Vec<u8> {
        let mut new = base.to_vec();
        for at in (0..new.len()).step_by(65_537) {
            new[at] ^= 0x5a;
        }
        new[1000..1010].copy_from_slice(b"0123456789");
        new
    }

    #[test]
    fn codec_numbers_and_names() {
        for codec in CODECS {
            assert_eq!(DeltaCodec::from_u8(codec as u8), Some(codec));
            assert_eq!(serde_json::to_string(&codec).unwrap(), format!("\"{codec}\""));
        }
        assert_eq!(DeltaCodec::from_u8(0), None);
        assert_eq!(DeltaCodec::from_u8(3), Some(DeltaCodec::Gzip));
        assert_eq!(DeltaCodec::from_u8(4), Some(DeltaCodec::GzipTree));
        assert_eq!(DeltaCodec::from_u8(5), None);
        assert_eq!(DeltaCodec::GzipTree.as_str(), "gzip-tree");
        assert_eq!(DeltaCodec::ZstdPatch.as_str(), "zstd-patch");
        assert_eq!(serde_json::to_string(&DeltaCodec::Gzip).unwrap(), "\"gzip\"");
        assert_eq!(DeltaCodec::Bsdiff.to_string(), "bsdiff");
    }

    /// A base that starts like a zstd dictionary is still a prefix of raw content, and the
    /// decompression context a thread reuses decodes the next delta as if it were new.
    #[test]
    fn a_base_that_starts_like_a_zstd_dictionary_is_raw_content() {
        let mut old = ZSTD_DICTIONARY_MAGIC.to_vec();
        old.extend_from_slice(&pseudo_random(200_000, 7));
        round_trip(DeltaCodec::ZstdPatch, &old, &edited(&old));
        let other = pseudo_random(200_000, 8);
        for _ in 0..2 {
            round_trip(DeltaCodec::ZstdPatch, &other, &edited(&other));
            round_trip(DeltaCodec::Bsdiff, &other, &edited(&other));
        }
        // Decoding against the wrong base (its result is never the target) leaves nothing behind.
        let new = edited(&other);
        let payload = encode(DeltaCodec::ZstdPatch, &other, &new, &EncodeOptions::default()).unwrap();
        assert!(decode(DeltaCodec::ZstdPatch, &old, &payload, new.len() as u64, &no_files).is_ok_and(|d| d != new));
        round_trip(DeltaCodec::ZstdPatch, &other, &new);
    }

    #[test]
    fn window_covers_the_input() {
        assert_eq!(window_log(0), 10);
        assert_eq!(window_log(1024), 10);
        assert_eq!(window_log(1025), 11);
        assert_eq!(window_log(3 << 20), 22);
        assert_eq!(window_log(usize::MAX), 31);
    }

    #[test]
    fn offtin_is_sign_magnitude() {
        for v in [0, 1, -1, 24, -24, i64::MAX, -i64::MAX] {
            assert_eq!(offtin(offtin_bytes(v)), v);
        }
        assert_eq!(offtin_bytes(-2), [2, 0, 0, 0, 0, 0, 0, 0x80]);
    }

    #[test]
    fn both_codecs_round_trip_edge_cases() {
        let data = pseudo_random(10_000, 1);
        for codec in CODECS {
            round_trip(codec, b"", b"");
            round_trip(codec, b"", &data);
            round_trip(codec, &data, b"");
            // A copy: zstd drops a reference prefix that overlaps the input in memory.
            let same = round_trip(codec, &data, &data.clone());
            assert!(same.len() < 200, "{codec}: {} bytes for identical content", same.len());
        }
    }

    #[test]
    fn zstd_patch_frames_record_their_size() {
        let old = pseudo_random(5000, 2);
        let payload = encode(DeltaCodec::ZstdPatch, &old, &edited(&old), &EncodeOptions::default()).unwrap();
        assert_eq!(zstd_safe::get_frame_content_size(&payload).ok(), Some(Some(5000)));
    }

    #[test]
    fn small_edits_to_a_large_buffer_give_small_deltas() {
        let old = pseudo_random(1 << 20, 3);
        let new = edited(&old);
        for codec in CODECS {
            let payload = round_trip(codec, &old, &new);
            assert!(payload.len() < 2000, "{codec}: {} bytes for 27 changed bytes", payload.len());
        }
    }

    #[test]
    fn an_insertion_shifting_everything_gives_a_small_delta() {
        let old = pseudo_random(1 << 20, 4);
        let mut new = old.clone();
        new.splice(300_000..300_000, pseudo_random(777, 5));
        for codec in CODECS {
            let payload = round_trip(codec, &old, &new);
            assert!(payload.len() < 2000, "{codec}: {} bytes for a 777-byte insertion", payload.len());
        }
    }

    #[test]
    fn encode_best_picks_the_smaller_payload() {
        let old = pseudo_random(100_000, 6);
        // Every 64th byte incremented: bsdiff's diff stream is regular, zstd sees 1563 changes.
        let mut new = old.clone();
        for at in (0..new.len()).step_by(64) {
            new[at] = new[at].wrapping_add(1);
        }
        let options = EncodeOptions::default();
        let sizes = CODECS.map(|codec| encode(codec, &old, &new, &options).unwrap().len());
        let (codec, payload) = encode_best(&old, &new, &options, None).unwrap();
        assert_eq!(payload.len(), sizes.into_iter().min().unwrap());
        assert_eq!(codec, if sizes[1] < sizes[0] { DeltaCodec::Bsdiff } else { DeltaCodec::ZstdPatch });
        assert_eq!(decode(codec, &old, &payload, new.len() as u64, &no_files).unwrap(), new);
        assert_eq!(encode_best(&old, &new, &options, None).unwrap(), (codec, payload), "not deterministic");

        let no_bsdiff = EncodeOptions { bsdiff_max_input: 99_999, ..options };
        assert_eq!(encode_best(&old, &new, &no_bsdiff, None).unwrap().0, DeltaCodec::ZstdPatch);
        // Text (no NUL byte) is never given to bsdiff.
        let text = |bytes: &[u8]| bytes.iter().map(|b| b'a' + b % 26).collect::<Vec<u8>>();
        assert_eq!(encode_best(&text(&old), &text(&new), &options, None).unwrap().0, DeltaCodec::ZstdPatch);
    }

    #[test]
    fn decode_rejects_wrong_target_sizes_and_truncation() {
        let old = pseudo_random(50_000, 7);
        let new = edited(&old);
        for codec in CODECS {
            let payload = encode(codec, &old, &new, &EncodeOptions::default()).unwrap();
            let len = new.len() as u64;
            for target in [0, len - 1, len + 1, 2 * len] {
                assert!(decode(codec, &old, &payload, target, &no_files).is_err(), "{codec}: accepted target {target}");
            }
            for cut in [0, 1, 10, 24, 25, payload.len() / 2, payload.len() - 1] {
                assert!(decode(codec, &old, &payload[..cut], len, &no_files).is_err(), "{codec}: accepted {cut} bytes");
            }
            assert!(decode(codec, &old, &pseudo_random(payload.len(), 8), len, &no_files).is_err(), "{codec}: garbage");
        }
    }

    /// A bsdiff payload of the given streams, as the encoder would store them.
    fn bsdiff_payload(triples: &[[i64; 3]], diff: &[u8], extra: &[u8]) -> Vec<u8> {
        let control: Vec<u8> = triples.iter().flatten().flat_map(|&v| offtin_bytes(v)).collect();
        let mut payload = Vec::new();
        for stream in [&control[..], diff, extra] {
            payload.extend_from_slice(&(stream.len() as u64).to_le_bytes());
        }
        for stream in [&control[..], diff, extra] {
            payload.extend(zstd_compress(stream, &[], 3).unwrap());
        }
        payload
    }

    #[test]
    fn bsdiff_decode_checks_every_triple() {
        let old = b"abcdefgh";
        let decode = |triples: &[[i64; 3]], diff: &[u8], extra: &[u8], target| {
            decode(DeltaCodec::Bsdiff, old, &bsdiff_payload(triples, diff, extra), target, &no_files)
        };
        assert_eq!(decode(&[[4, 2, 2], [2, 0, -8]], &[0, 1, 0, 0, 0, 0], b"XY", 8).unwrap(), b"accdXYgh");
        // Adds past the end of old.
        let error = decode(&[[4, 0, 1], [4, 0, 0]], &[0; 8], b"", 8).unwrap_err();
        assert!(error.contains("reads outside the old content"), "{error}");
        // Reads before the start and after the end of old; a seek outside that reads nothing more is
        // harmless (qbsdiff's last triple often seeks back past the start).
        assert!(decode(&[[4, 0, -5], [4, 0, 0]], &[0; 8], b"", 8).unwrap_err().contains("reads outside"));
        assert!(decode(&[[4, 0, 5], [4, 0, 0]], &[0; 8], b"", 8).unwrap_err().contains("reads outside"));
        assert!(decode(&[[4, 0, i64::MAX], [4, 0, 0]], &[0; 8], b"", 8).unwrap_err().contains("overflows"));
        assert_eq!(decode(&[[8, 0, -100]], &[0; 8], b"", 8).unwrap(), old);
        // Negative lengths; streams not consumed; streams that do not add up; too many triples.
        assert!(decode(&[[-1, 2, 0]], &[], b"ab", 2).unwrap_err().contains("negative add"));
        assert!(decode(&[[0, -1, 0]], &[], b"ab", 2).unwrap_err().contains("negative copy"));
        assert!(decode(&[[0, 1, 0]], &[], b"ab", 2).unwrap_err().contains("produces 1 bytes"));
        assert!(decode(&[[0, 3, 0]], &[], b"ab", 2).unwrap_err().contains("past the end of the extra"));
        assert!(decode(&[[0, 2, 0]], &[], b"ab", 3).unwrap_err().contains("do not add up"));
        assert!(decode(&[[0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 1, 0]], &[], b"ab", 2).unwrap_err().contains("too long"));
    }

    #[test]
    fn zero_triples_are_folded_into_the_seek_before() {
        let control: Vec<u8> = [[0, 0, 3], [2, 1, 4], [0, 0, -5], [0, 0, 1], [1, 0, 0]]
            .iter()
            .flatten()
            .flat_map(|&v| offtin_bytes(v))
            .collect();
        let folded = fold_empty_controls(&control).unwrap();
        let triples: Vec<[i64; 3]> = folded.as_chunks::<CONTROL_LEN>().0.iter().map(control_triple).collect();
        assert_eq!(triples, [[0, 0, 3], [2, 1, 0], [1, 0, 0]]);
    }

    fn small_pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        // Related contents: new is old with a few splices, or unrelated bytes.
        (vec(any::<u8>(), 0..4096), vec((any::<prop::sample::Index>(), 0usize..64, vec(any::<u8>(), 0..64)), 0..8))
            .prop_map(|(old, edits)| {
                let mut new = old.clone();
                for (at, removed, inserted) in edits {
                    let start = if new.is_empty() { 0 } else { at.index(new.len()) };
                    let end = (start + removed).min(new.len());
                    new.splice(start..end, inserted);
                }
                (old, new)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn both_codecs_round_trip((old, new) in small_pair(), unrelated in vec(any::<u8>(), 0..2048)) {
            let options = EncodeOptions { zstd_level: 3, ..EncodeOptions::default() };
            for codec in CODECS {
                for new in [&new, &unrelated] {
                    let payload = encode(codec, &old, new, &options).unwrap();
                    prop_assert_eq!(&decode(codec, &old, &payload, new.len() as u64, &no_files).unwrap(), new);
                }
            }
        }

        #[test]
        fn decode_never_panics_on_garbage(
            old in vec(any::<u8>(), 0..256),
            payload in vec(any::<u8>(), 0..512),
            target in 0u64..1024,
        ) {
            for codec in CODECS {
                let _ = decode(codec, &old, &payload, target, &no_files);
            }
        }

        #[test]
        fn decode_never_panics_on_valid_frames_of_garbage_streams(
            old in vec(any::<u8>(), 0..64),
            triples in vec([0i64..80, 0i64..80, -80i64..80], 0..6),
            diff in vec(any::<u8>(), 0..80),
            extra in vec(any::<u8>(), 0..80),
        ) {
            let payload = bsdiff_payload(&triples, &diff, &extra);
            let target = (diff.len() + extra.len()) as u64;
            if let Ok(new) = decode(DeltaCodec::Bsdiff, &old, &payload, target, &no_files) {
                prop_assert_eq!(new.len() as u64, target);
            }
        }

        #[test]
        fn decode_never_panics_on_corrupted_payloads(
            (old, new) in small_pair(),
            flips in vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        ) {
            for codec in CODECS {
                let mut payload = encode(codec, &old, &new, &EncodeOptions { zstd_level: 1, ..EncodeOptions::default() }).unwrap();
                for (at, mask) in &flips {
                    let at = at.index(payload.len());
                    payload[at] ^= mask;
                }
                if let Ok(decoded) = decode(codec, &old, &payload, new.len() as u64, &no_files) {
                    prop_assert_eq!(decoded.len(), new.len());
                }
            }
        }
    }
}
