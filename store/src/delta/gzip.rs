//! Deltas of gzip files by their inflated content.
//!
//! A small change to a text compresses into different deflate bytes from the change on, so a
//! delta of gzip bytes is nearly as large as the file (a changelog.gz, an initramfs). This codec
//! diffs the inflated content instead and deflates the result again at apply time, bit for bit as
//! the original compressor did: preflate predicts the compressor's choices from the plain text and
//! records only where it guessed wrong (a few hundred bytes for a 36 MB initramfs), and generation
//! keeps such a delta only when decoding it was proven to give back the exact file.
//!
//! When the plain text is cpio archives whose members are files of the target release (an
//! initramfs), those members are named instead of diffed ([`super::tree_refs`]); such a delta is
//! [`DeltaCodec::GzipTree`], applied once the node holds the release's other files.
//!
//! A long stream is rebuilt in segments, on every core ([`super::deflate_segments`]).
//!
//! Payload: a flags byte (bit 0: the base was inflated, else used as it is; bit 1: the corrections
//! are a segment table; bit 2: there is no base; bit 3: the corrections are led by the bound of
//! preflate's search after a mispredicted literal), the inflated sizes of the target and the base
//! (u64 each), then three u32-length-prefixed byte strings — the gzip header, what follows the
//! deflate stream (the CRC-32 and size trailer), preflate's corrections — then, for
//! [`DeltaCodec::GzipTree`] only, a u32 count and that many references, and last the inner
//! codec's number and its payload, which encodes the target's plain text (without the
//! referenced ranges) against the base's.
//!
//! preflate's reconstruction is not hardened against hostile corrections as our own decoders are:
//! panics are caught and become errors, and a received delta is deflated again in a child process
//! within a budget of CPU time and memory ([`super::deflate`]).

use std::io::{self, Read};

use crate::delta::codec::{self, DeltaCodec, EncodeOptions, FileReader, ReleaseLookup};
use crate::delta::deflate::{self, Corrections};
use crate::delta::deflate_blocks;
use crate::delta::deflate_segments;
use crate::delta::tree_refs::{self, REF_LEN, TreeRef};
use crate::id::FileId;

/// Largest plain text a gzip delta inflates (of its base or target): applying holds both.
pub const MAX_INFLATED: u64 = 256 << 20;

/// Most bytes one byte of a deflate stream can inflate to: a 258-byte match coded in two bits.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Most plain bytes a gzip file of `size` bytes can hold.
fn inflated_bound(size: u64) -> u64 {
    size.saturating_add(1).saturating_mul(MAX_DEFLATE_RATIO).min(MAX_INFLATED)
}

/// Largest number of bytes after the deflate stream kept as they are (the 8-byte trailer, and
/// padding some tools add); a file with more, such as a second gzip member, is not a candidate.
const MAX_TRAILER: usize = 4096;

/// Flag: the base was inflated before the inner codec used it.
const BASE_INFLATED: u8 = 1;

/// Flag: the corrections are a table of segments rebuilt apart.
const SEGMENTED: u8 = 2;

/// Flag: the inner codec encodes the plain text against nothing (see [`BASE_WORTH`]).
const NO_BASE: u8 = 4;

/// Flag: preflate's corrections (each segment's) are led by the bound of its search after a
/// mispredicted literal ([`deflate::bounded`]); without it they are preflate's alone, unbounded.
const BOUNDED: u8 = 8;

/// Every flag a payload may have.
const FLAGS: u8 = BASE_INFLATED | SEGMENTED | NO_BASE | BOUNDED;

/// The old gzip file is inflated to serve as the base only when the plain text the inner codec
/// encodes is at least 1/`BASE_WORTH` of the target's: inflating costs the node CPU in proportion
/// to the base, and the base saves bytes in proportion to what it encodes. An initramfs whose
/// members are named ([`tree_refs`]) leaves about 1 % to encode: on the kernel pair, inflating
/// the 130 MB old image would cost a node 0.3 s of CPU to save 179 KB.
const BASE_WORTH: usize = 16;

/// Length of the gzip header at the start of `content`, if it is one (RFC 1952: deflate method,
/// no reserved flags, optional extra field, name, comment and header CRC).
fn header_len(content: &[u8]) -> Option<usize> {
    let fixed = content.get(..10)?;
    if fixed[..3] != [0x1f, 0x8b, 8] || fixed[3] & 0xe0 != 0 {
        return None;
    }
    let flags = fixed[3];
    let mut at = 10usize;
    if flags & 4 != 0 {
        let xlen = content.get(at..at + 2)?;
        at += 2 + u16::from_le_bytes([xlen[0], xlen[1]]) as usize;
    }
    for zero_terminated in [8u8, 16] {
        if flags & zero_terminated != 0 {
            at += content.get(at..)?.iter().position(|&b| b == 0)? + 1;
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    (at <= content.len()).then_some(at)
}

/// Inflates the gzip file `content` (its first member), refusing more than `limit` bytes of output.
fn inflate(content: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let header = header_len(content).ok_or("not a gzip file")?;
    inflate_stream(&content[header..], limit)
}

/// Inflates the deflate stream at the front of `stream`, refusing more than `limit` bytes of output.
fn inflate_stream(stream: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let mut plain = Vec::new();
    flate2::read::DeflateDecoder::new(stream)
        .take(limit.saturating_add(1))
        .read_to_end(&mut plain)
        .map_err(|e| format!("inflating: {e}"))?;
    if plain.len() as u64 > limit {
        return Err(format!("inflates to more than {limit} bytes"));
    }
    Ok(plain)
}

/// A gzip delta payload and its codec: [`DeltaCodec::GzipTree`] when it names files of the
/// release, else [`DeltaCodec::Gzip`].
pub struct Encoded {
    /// The codec the payload is for.
    pub codec: DeltaCodec,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Encodes the gzip file `new` by its plain text against `old` (inflated too when it is a gzip
/// file), with the best inner codec; members of cpio archives in it that `release` knows as files
/// of the target release are named instead. `None` when `new` is not a gzip file preflate can
/// rebuild, or when decoding the payload does not give back `new` exactly.
pub fn encode(
    old: &[u8],
    new: &[u8],
    options: &EncodeOptions,
    release: Option<&ReleaseLookup<'_>>,
) -> io::Result<Option<Encoded>> {
    let Some(header) = header_len(new) else { return Ok(None) };
    let Some(analysis) = analyse(&new[header..], options.deflate_segment) else { return Ok(None) };
    let trailer = &new[header + analysis.stream_len..];
    if trailer.len() > MAX_TRAILER {
        return Ok(None);
    }
    let plain = &analysis.plain[..];
    let refs = release.map(|release| tree_refs::find(plain, release)).unwrap_or_default();
    let literals = if refs.is_empty() { None } else { Some(tree_refs::literals(plain, &refs)) };
    let encoded = literals.as_deref().unwrap_or(plain);
    let no_base = encoded.len() * BASE_WORTH < plain.len();
    let base = if no_base { None } else { inflate(old, MAX_INFLATED).ok() };
    let flags = [(base.is_some(), BASE_INFLATED), (analysis.segmented, SEGMENTED), (no_base, NO_BASE)]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .fold(BOUNDED, |flags, flag| flags | flag);
    let base_size = base.as_ref().map_or(0, |b| b.len());
    let base_bytes = if no_base { &[][..] } else { base.as_deref().unwrap_or(old) };
    let (inner, inner_payload) = codec::encode_best_plain(base_bytes, encoded, options)?;
    let codec = if refs.is_empty() { DeltaCodec::Gzip } else { DeltaCodec::GzipTree };
    let mut payload = vec![flags];
    payload.extend_from_slice(&(plain.len() as u64).to_le_bytes());
    payload.extend_from_slice(&(base_size as u64).to_le_bytes());
    for part in [&new[..header], trailer, &analysis.corrections] {
        payload.extend_from_slice(&(part.len() as u32).to_le_bytes());
        payload.extend_from_slice(part);
    }
    if !refs.is_empty() {
        payload.extend_from_slice(&(refs.len() as u32).to_le_bytes());
        refs.iter().for_each(|r| r.encode(&mut payload));
    }
    payload.push(inner as u8);
    payload.extend_from_slice(&inner_payload);
    // Kept only when proven: the decoder, as a node runs it, gives back the file exactly.
    let files = |id: &FileId, len: u64| {
        let r = refs.iter().find(|r| r.file == *id && r.len == len).ok_or("not a referenced file")?;
        Ok(plain[r.offset as usize..(r.offset + r.len) as usize].to_vec())
    };
    let exact = rebuild(codec, old, base.as_deref(), &payload, new.len() as u64, &files, Corrections::Own)
        .is_ok_and(|rebuilt| rebuilt == new);
    Ok(exact.then_some(Encoded { codec, payload }))
}

/// What preflate needs to deflate a stream's plain text again exactly.
struct Analysis {
    /// The plain text.
    plain: Vec<u8>,
    /// The stream's length in bytes.
    stream_len: usize,
    /// preflate's corrections, or a segment table when `segmented`.
    corrections: Vec<u8>,
    segmented: bool,
}

/// Analyses the deflate stream at the front of `stream`: in segments of about `segment` bytes of
/// plain text when its gzip trailer announces at least two and it splits, else whole. `None` when
/// preflate cannot rebuild it.
fn analyse(stream: &[u8], segment: u64) -> Option<Analysis> {
    let announced = stream.last_chunk::<4>().map_or(0, |size| u32::from_le_bytes(*size));
    if u64::from(announced) >= segment.saturating_mul(2)
        && let Ok(blocks) = deflate_blocks::scan(stream, MAX_INFLATED)
        && let Ok(plain) = inflate_stream(stream, blocks.plain_len)
        && let Some(table) = deflate_segments::analyse(stream, &blocks, &plain, segment)
    {
        let stream_len = blocks.end_bit.div_ceil(8) as usize;
        return Some(Analysis { plain, stream_len, corrections: table, segmented: true });
    }
    let prediction = deflate::predict(stream, MAX_INFLATED as usize)?;
    Some(Analysis {
        plain: prediction.plain.text().to_vec(),
        stream_len: prediction.stream_len,
        corrections: prediction.corrections,
        segmented: false,
    })
}

/// Splits `len` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], len: usize, what: &str) -> Result<&'a [u8], String> {
    let (head, tail) =
        rest.split_at_checked(len).ok_or_else(|| format!("gzip delta payload ends inside its {what}"))?;
    *rest = tail;
    Ok(head)
}

fn take_u64(rest: &mut &[u8], what: &str) -> Result<u64, String> {
    Ok(u64::from_le_bytes(take(rest, 8, what)?.try_into().expect("8 bytes")))
}

fn take_part<'a>(rest: &mut &'a [u8], what: &str) -> Result<&'a [u8], String> {
    let len = u32::from_le_bytes(take(rest, 4, what)?.try_into().expect("4 bytes"));
    take(rest, len as usize, what)
}

/// The flags and the inflated sizes of the target and the base a payload starts with.
fn take_sizes(rest: &mut &[u8]) -> Result<(u8, u64, u64), String> {
    let flags = take(rest, 1, "flags")?[0];
    if flags & !FLAGS != 0 || flags & (BASE_INFLATED | NO_BASE) == BASE_INFLATED | NO_BASE {
        return Err(format!("gzip delta has unknown flags {flags:#x}"));
    }
    Ok((flags, take_u64(rest, "plain size")?, take_u64(rest, "base size")?))
}

/// The gzip header, the trailer and the corrections that follow the sizes.
fn take_parts<'a>(rest: &mut &'a [u8]) -> Result<[&'a [u8]; 3], String> {
    Ok([take_part(rest, "gzip header")?, take_part(rest, "trailer")?, take_part(rest, "corrections")?])
}

/// The references to files of the release that follow the parts (gzip-tree payloads only).
fn take_refs(rest: &mut &[u8]) -> Result<Vec<TreeRef>, String> {
    let count = u32::from_le_bytes(take(rest, 4, "reference count")?.try_into().expect("4 bytes"));
    let bytes = take(rest, (count as usize).saturating_mul(REF_LEN), "references")?;
    Ok(bytes.as_chunks::<{ REF_LEN }>().0.iter().map(TreeRef::decode).collect())
}

/// Whether decoding a payload reads its base: not when the payload encodes against nothing
/// (flag `NO_BASE`), and an unreadable payload is left to decoding to refuse.
pub fn reads_base(payload: &[u8]) -> bool {
    payload.first().is_none_or(|flags| flags & NO_BASE == 0)
}

/// The files of the release a [`DeltaCodec::GzipTree`] payload names, each once, in the order
/// they first appear.
pub fn named_files(payload: &[u8]) -> Result<Vec<FileId>, String> {
    let mut rest = payload;
    take_sizes(&mut rest)?;
    take_parts(&mut rest)?;
    let mut seen = std::collections::HashSet::new();
    Ok(take_refs(&mut rest)?.into_iter().map(|r| r.file).filter(|file| seen.insert(*file)).collect())
}

/// Rebuilds the gzip file of `target_size` bytes from `old` and a `codec` payload of [`encode`];
/// `files` reads the release files a [`DeltaCodec::GzipTree`] payload names.
pub fn decode(
    codec: DeltaCodec,
    old: &[u8],
    payload: &[u8],
    target_size: u64,
    files: &FileReader<'_>,
) -> Result<Vec<u8>, String> {
    rebuild(codec, old, None, payload, target_size, files, Corrections::Received)
}

/// [`decode`], given `old` already inflated when the caller has it, and where the payload came from.
fn rebuild(
    codec: DeltaCodec,
    old: &[u8],
    inflated_old: Option<&[u8]>,
    payload: &[u8],
    target_size: u64,
    files: &FileReader<'_>,
    source: Corrections,
) -> Result<Vec<u8>, String> {
    let mut rest = payload;
    let (flags, plain_size, base_size) = take_sizes(&mut rest)?;
    // A delta's sizes are checked against what its base and target can hold before anything is
    // allocated: a 4 KiB target cannot inflate to 256 MiB (found by the delta_codec fuzz target).
    let (plain_limit, base_limit) = (inflated_bound(target_size), inflated_bound(old.len() as u64));
    if plain_size > plain_limit || base_size > base_limit {
        return Err(format!(
            "gzip delta declares {plain_size} and {base_size} inflated bytes, over the {plain_limit} and {base_limit} \
             its target of {target_size} bytes and its base of {} bytes can hold",
            old.len()
        ));
    }
    let [header, trailer, corrections] = take_parts(&mut rest)?;
    let refs = if codec == DeltaCodec::GzipTree { take_refs(&mut rest)? } else { Vec::new() };
    let referenced = refs.iter().try_fold(0u64, |sum, r| sum.checked_add(r.len)).filter(|r| *r <= plain_size);
    let literal_size = plain_size - referenced.ok_or("gzip delta references more bytes than its plain text")?;
    let inner = take(&mut rest, 1, "inner codec")?[0];
    let inner = match DeltaCodec::from_u8(inner) {
        Some(codec @ (DeltaCodec::ZstdPatch | DeltaCodec::Bsdiff)) => codec,
        _ => return Err(format!("gzip delta has an invalid inner codec {inner}")),
    };
    let framing = (header.len() + trailer.len()) as u64;
    if framing > target_size {
        return Err(format!("gzip header and trailer ({framing} bytes) exceed the target's {target_size}"));
    }
    let inflated = match inflated_old {
        None if flags & BASE_INFLATED != 0 => Some(inflate(old, base_size)?),
        _ => None,
    };
    let base = match flags & (BASE_INFLATED | NO_BASE) {
        NO_BASE => &[][..],
        BASE_INFLATED => inflated_old.or(inflated.as_deref()).unwrap_or_default(),
        _ => old,
    };
    if flags & BASE_INFLATED != 0 && base.len() as u64 != base_size {
        return Err(format!("the base inflates to {} bytes, the delta expects {base_size}", base.len()));
    }
    let literals = codec::decode(inner, base, rest, literal_size, &codec::no_files)?;
    drop(inflated);
    let plain = tree_refs::Spliced::new(&literals, &refs, plain_size)?;
    let deflated = if flags & SEGMENTED != 0 {
        // Each segment starts as soon as the files its plain text names are there.
        deflate_segments::rebuild(
            plain_size,
            &mut |range| plain.range(range, files),
            corrections,
            flags & BOUNDED != 0,
            target_size - framing,
            source,
        )?
    } else {
        let corrections = deflate::led_by_bound(corrections, flags & BOUNDED != 0);
        deflate::recreate(&plain.range(0..plain_size, files)?, &corrections, target_size - framing, source)?
    };
    Ok([header, &deflated, trailer].concat())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use preflate_rs::{PreflateConfig, preflate_whole_deflate_stream};

    use super::*;
    use crate::delta::codec::no_files;
    use crate::delta::tree_refs::newc_member;
    use crate::id::ObjectId;

    fn gzip(plain: &[u8], level: u32) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        encoder.write_all(plain).unwrap();
        encoder.finish().unwrap()
    }

    fn changelog(entries: usize) -> Vec<u8> {
        (0..entries)
            .rev()
            .flat_map(|i| {
                format!(
                    "pkg ({i}.0-1) unstable; urgency=medium\n\n  * Fix bug #{} in module {}.\n\n -- Dev <dev@example.org>  Mon, {} Nov 2026\n\n",
                    i * 7919 % 100_000,
                    i % 13,
                    i % 28 + 1
                )
                .into_bytes()
            })
            .collect()
    }

    #[test]
    fn gzip_files_diff_by_their_plain_text() {
        let old_plain = changelog(2000);
        let new_plain = [&b"pkg (2000.0-1) unstable; urgency=high\n\n  * Security fix.\n\n"[..], &old_plain].concat();
        for level in [1, 6, 9] {
            let (old, new) = (gzip(&old_plain, level), gzip(&new_plain, level));
            let payload = encode(&old, &new, &EncodeOptions::default(), None).unwrap().expect("a gzip delta").payload;
            assert_eq!(decode(DeltaCodec::Gzip, &old, &payload, new.len() as u64, &no_files).unwrap(), new);
            let (_, raw) = codec::encode_best_plain(&old, &new, &EncodeOptions::default()).unwrap();
            // Predicted at most 16 deep, the matches this repetitive text has deeper travel as
            // corrections: a third of the raw delta at level 6, a seventh at 9.
            assert!(payload.len() * 2 < raw.len(), "level {level}: {} vs {} bytes", payload.len(), raw.len());
        }
        // A base that is not gzip is used as it is.
        let new = gzip(&new_plain, 9);
        let payload = encode(&old_plain, &new, &EncodeOptions::default(), None).unwrap().unwrap().payload;
        assert_eq!(payload[0], BOUNDED);
        assert_eq!(decode(DeltaCodec::Gzip, &old_plain, &payload, new.len() as u64, &no_files).unwrap(), new);
    }

    /// A payload made before corrections were led by their bound (flag 8) still applies: its
    /// corrections are preflate's alone, made with the search after a mispredicted literal
    /// unbounded.
    #[test]
    fn corrections_without_their_bound_still_apply() {
        let old_plain = changelog(2000);
        let new_plain = [&b"pkg (2000.0-1) unstable; urgency=high\n\n  * Security fix.\n\n"[..], &old_plain].concat();
        let (old, new) = (gzip(&old_plain, 6), gzip(&new_plain, 6));
        let payload = encode(&old, &new, &EncodeOptions::default(), None).unwrap().unwrap().payload;
        assert_eq!(payload[0], BASE_INFLATED | BOUNDED);
        let header = header_len(&new).unwrap();
        let config = PreflateConfig {
            plain_text_limit: MAX_INFLATED as usize,
            verify_compression: false,
            predicted_chain_limit: Some(deflate::PREDICTED_CHAIN_DEPTH),
            ..Default::default()
        };
        let (unbounded, _) = preflate_whole_deflate_stream(&new[header..], &config).unwrap();
        // The payload's parts, with preflate's own corrections in place of the bounded ones.
        let mut rest = &payload[17..];
        let [gzip_header, trailer, bounded] = take_parts(&mut rest).unwrap();
        let bound = u32::from_le_bytes(bounded[..4].try_into().unwrap());
        // As deep as the stream needs (preflate's estimate), at most gzip -6's 128.
        assert!((17..=128).contains(&bound), "the search after a mispredicted literal is bounded: {bound}");
        let mut legacy = vec![BASE_INFLATED];
        legacy.extend_from_slice(&payload[1..17]);
        for part in [gzip_header, trailer, &unbounded.corrections] {
            legacy.extend_from_slice(&(part.len() as u32).to_le_bytes());
            legacy.extend_from_slice(part);
        }
        legacy.extend_from_slice(rest);
        assert_eq!(decode(DeltaCodec::Gzip, &old, &legacy, new.len() as u64, &no_files).unwrap(), new);
    }

    #[test]
    fn a_long_stream_is_rebuilt_in_segments() {
        let old_plain = changelog(20_000);
        let new_plain = [&b"pkg (20000.0-1) unstable; urgency=high\n\n  * Security fix.\n\n"[..], &old_plain].concat();
        let (old, new) = (gzip(&old_plain, 6), gzip(&new_plain, 6));
        let segmented = EncodeOptions { deflate_segment: 200_000, ..EncodeOptions::default() };
        let payload = encode(&old, &new, &segmented, None).unwrap().expect("a gzip delta").payload;
        assert_eq!(
            payload[0],
            BASE_INFLATED | SEGMENTED | BOUNDED,
            "{} bytes of plain text in segments",
            new_plain.len()
        );
        assert_eq!(decode(DeltaCodec::Gzip, &old, &payload, new.len() as u64, &no_files).unwrap(), new);
        let whole = encode(&old, &new, &EncodeOptions::default(), None).unwrap().unwrap().payload;
        assert_eq!(whole[0], BASE_INFLATED | BOUNDED, "short of two segments: whole");
        // A node that does not know the flag refuses the delta (and fetches chunks).
        let mut unknown = payload.clone();
        unknown[0] |= 16;
        let err = decode(DeltaCodec::Gzip, &old, &unknown, new.len() as u64, &no_files).unwrap_err();
        assert!(err.contains("unknown flags"), "{err}");
    }

    #[test]
    fn what_is_not_one_rebuildable_gzip_member_is_not_a_candidate() {
        let options = EncodeOptions::default();
        assert!(encode(b"old", &changelog(10), &options, None).unwrap().is_none());
        let mut two_members = gzip(&changelog(400), 9);
        two_members.extend_from_slice(&gzip(&changelog(500), 9));
        assert!(encode(b"old", &two_members, &options, None).unwrap().is_none());
        let mut truncated = gzip(&changelog(400), 9);
        truncated.truncate(truncated.len() / 2);
        assert!(encode(b"old", &truncated, &options, None).unwrap().is_none());
    }

    #[test]
    fn hostile_payloads_are_errors() {
        let (old, new) = (gzip(&changelog(300), 9), gzip(&changelog(301), 9));
        let payload = encode(&old, &new, &EncodeOptions::default(), None).unwrap().unwrap().payload;
        let size = new.len() as u64;
        for len in [0, 1, 9, 17, 30, payload.len() - 1] {
            assert!(decode(DeltaCodec::Gzip, &old, &payload[..len], size, &no_files).is_err(), "truncated to {len}");
        }
        let mut huge = payload.clone();
        huge[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(DeltaCodec::Gzip, &old, &huge, size, &no_files).unwrap_err().contains("inflated bytes"));
        let mut other_base = old.clone();
        let at = other_base.len() - 20;
        other_base[at] ^= 0xff;
        assert!(decode(DeltaCodec::Gzip, &other_base, &payload, size, &no_files).is_err());
        let mut flipped = payload.clone();
        for at in (25..flipped.len()).step_by(7) {
            flipped[at] ^= 0x55;
            let _ = decode(DeltaCodec::Gzip, &old, &flipped, size, &no_files);
            flipped[at] ^= 0x55;
        }
        assert!(decode(DeltaCodec::Gzip, &old, &payload, size + 1, &no_files).unwrap_err().contains("instead of"));
    }

    /// Found by the delta_codec fuzz target: a 4 KiB gzip-tree target declaring a plain text of
    /// 256 MiB took 2 GiB of memory before failing.
    #[test]
    fn declared_sizes_are_bounded_by_what_the_target_and_base_can_inflate_to() {
        let mut payload = vec![0];
        payload.extend_from_slice(&(200u64 << 20).to_le_bytes());
        payload.extend_from_slice(&0u64.to_le_bytes());
        let err = decode(DeltaCodec::GzipTree, b"", &payload, 4098, &no_files).unwrap_err();
        assert!(err.contains("its target of 4098 bytes"), "{err}");
        let mut payload = vec![BASE_INFLATED];
        payload.extend_from_slice(&0u64.to_le_bytes());
        payload.extend_from_slice(&(2u64 << 20).to_le_bytes());
        assert!(decode(DeltaCodec::Gzip, &[0; 100], &payload, 4098, &no_files).unwrap_err().contains("base of 100"));
    }

    #[test]
    fn initramfs_members_that_are_release_files_are_named() {
        // A rebuilt module: every line differs between releases.
        let module = |release: u8| -> Vec<u8> {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(release);
            (0..4000)
                .flat_map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    format!("sym_{i} {:08x}\n", x >> 32).into_bytes()
                })
                .collect()
        };
        let initramfs = |release: u8| {
            let mut cpio = Vec::new();
            newc_member(&mut cpio, "conf/initramfs.conf", 0o100644, format!("MODULES=most # {release}\n").as_bytes());
            newc_member(&mut cpio, "usr/lib/modules/ext4.ko", 0o100644, &module(release));
            newc_member(&mut cpio, "TRAILER!!!", 0, b"");
            gzip(&cpio, 9)
        };
        let (old, new) = (initramfs(1), initramfs(2));
        let module_id = FileId(ObjectId::of(b"the new module"));
        let release = |content: &[u8]| (content == module(2)).then_some(module_id);
        let encoded = encode(&old, &new, &EncodeOptions::default(), Some(&release)).unwrap().unwrap();
        assert_eq!(encoded.codec, DeltaCodec::GzipTree);
        // What is left besides the module is too little to be worth inflating the old image for.
        assert_eq!(encoded.payload[0], NO_BASE | BOUNDED);
        assert!(!reads_base(&encoded.payload), "a node need not read the old image");
        assert_eq!(named_files(&encoded.payload).unwrap(), [module_id]);
        let diffed = encode(&old, &new, &EncodeOptions::default(), None).unwrap().unwrap();
        assert_eq!(diffed.codec, DeltaCodec::Gzip);
        let diffed_payload = diffed.payload;
        let (named, diffed) = (encoded.payload.len(), diffed_payload.len());
        assert!(named * 4 < diffed, "the module is named, not diffed: {named} vs {diffed} bytes");
        let files = |id: &FileId, _: u64| if *id == module_id { Ok(module(2)) } else { Err("unknown".into()) };
        assert_eq!(decode(DeltaCodec::GzipTree, &old, &encoded.payload, new.len() as u64, &files).unwrap(), new);
        assert_eq!(decode(DeltaCodec::GzipTree, &[], &encoded.payload, new.len() as u64, &files).unwrap(), new);
        assert!(reads_base(&diffed_payload));
        assert!(decode(DeltaCodec::Gzip, &old, &encoded.payload, new.len() as u64, &files).is_err());
        assert!(decode(DeltaCodec::GzipTree, &old, &diffed_payload, new.len() as u64, &files).is_err());
        let err = decode(DeltaCodec::GzipTree, &old, &encoded.payload, new.len() as u64, &no_files).unwrap_err();
        assert!(err.contains(&module_id.to_string()), "{err}");
    }
}
