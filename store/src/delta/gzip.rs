//! Deltas of gzip files by their inflated content.
//!
//! A small change to a text compresses into different deflate bytes from the change on, so a
//! delta of gzip bytes is nearly as large as the file (a changelog.gz, an initramfs). This codec
//! diffs the inflated content instead and deflates the result again at apply time, bit for bit as
//! the original compressor did: preflate predicts the compressor's choices from the plain text and
//! records only where it guessed wrong (a few hundred bytes for a 36 MB initramfs), and generation
//! keeps such a delta only when decoding it was proven to give back the exact file.
//!
//! Payload: a flags byte (bit 0: the base was inflated, else used as it is), the inflated sizes of
//! the target and the base (u64 each), then three u32-length-prefixed byte strings — the gzip
//! header, what follows the deflate stream (the CRC-32 and size trailer), preflate's corrections —
//! and last the inner codec's number and its payload, which encodes the target's plain text
//! against the base's.
//!
//! preflate's reconstruction is not hardened against hostile corrections as our own decoders are:
//! panics are caught and become errors, and delta objects reach a decoder only after their id was
//! checked against the delta index that the signed summary names, so only the origin can craft one.

use std::io::{self, Read};

use preflate_rs::{PreflateConfig, preflate_whole_deflate_stream, recreate_whole_deflate_stream};

use crate::delta::codec::{self, DeltaCodec, EncodeOptions};

/// Largest plain text a gzip delta inflates (of its base or target): applying holds both.
pub const MAX_INFLATED: u64 = 256 << 20;

/// Largest number of bytes after the deflate stream kept as they are (the 8-byte trailer, and
/// padding some tools add); a file with more, such as a second gzip member, is not a candidate.
const MAX_TRAILER: usize = 4096;

/// Flag: the base was inflated before the inner codec used it.
const BASE_INFLATED: u8 = 1;

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
    let mut plain = Vec::new();
    flate2::read::DeflateDecoder::new(&content[header..])
        .take(limit.saturating_add(1))
        .read_to_end(&mut plain)
        .map_err(|e| format!("inflating: {e}"))?;
    if plain.len() as u64 > limit {
        return Err(format!("inflates to more than {limit} bytes"));
    }
    Ok(plain)
}

/// Encodes the gzip file `new` by its plain text against `old` (inflated too when it is a gzip
/// file), with the best inner codec. `None` when `new` is not a gzip file preflate can rebuild,
/// or when decoding the payload does not give back `new` exactly.
pub fn encode(old: &[u8], new: &[u8], options: &EncodeOptions) -> io::Result<Option<Vec<u8>>> {
    let Some(header) = header_len(new) else { return Ok(None) };
    let config =
        PreflateConfig { plain_text_limit: MAX_INFLATED as usize, verify_compression: false, ..Default::default() };
    let Ok(Ok((analysis, plain))) = std::panic::catch_unwind(|| preflate_whole_deflate_stream(&new[header..], &config))
    else {
        return Ok(None);
    };
    let trailer = &new[header + analysis.compressed_size..];
    if trailer.len() > MAX_TRAILER {
        return Ok(None);
    }
    let base = inflate(old, MAX_INFLATED).ok();
    let (inner, inner_payload) = codec::encode_best_plain(base.as_deref().unwrap_or(old), plain.text(), options)?;
    let mut payload = vec![if base.is_some() { BASE_INFLATED } else { 0 }];
    payload.extend_from_slice(&(plain.text().len() as u64).to_le_bytes());
    payload.extend_from_slice(&(base.as_ref().map_or(0, |b| b.len()) as u64).to_le_bytes());
    for part in [&new[..header], trailer, &analysis.corrections] {
        payload.extend_from_slice(&(part.len() as u32).to_le_bytes());
        payload.extend_from_slice(part);
    }
    payload.push(inner as u8);
    payload.extend_from_slice(&inner_payload);
    drop(plain);
    // Kept only when proven: the decoder, as a node runs it, gives back the file exactly.
    Ok(decode(old, &payload, new.len() as u64).is_ok_and(|rebuilt| rebuilt == new).then_some(payload))
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

/// Rebuilds the gzip file of `target_size` bytes from `old` and a payload of [`encode`].
pub fn decode(old: &[u8], payload: &[u8], target_size: u64) -> Result<Vec<u8>, String> {
    let mut rest = payload;
    let flags = take(&mut rest, 1, "flags")?[0];
    if flags & !BASE_INFLATED != 0 {
        return Err(format!("gzip delta has unknown flags {flags:#x}"));
    }
    let plain_size = take_u64(&mut rest, "plain size")?;
    let base_size = take_u64(&mut rest, "base size")?;
    if plain_size > MAX_INFLATED || base_size > MAX_INFLATED {
        return Err(format!("gzip delta declares {plain_size} and {base_size} inflated bytes, over {MAX_INFLATED}"));
    }
    let header = take_part(&mut rest, "gzip header")?;
    let trailer = take_part(&mut rest, "trailer")?;
    let corrections = take_part(&mut rest, "corrections")?;
    let inner = take(&mut rest, 1, "inner codec")?[0];
    let inner = match DeltaCodec::from_u8(inner) {
        Some(codec @ (DeltaCodec::ZstdPatch | DeltaCodec::Bsdiff)) => codec,
        _ => return Err(format!("gzip delta has an invalid inner codec {inner}")),
    };
    let framing = (header.len() + trailer.len()) as u64;
    if framing > target_size {
        return Err(format!("gzip header and trailer ({framing} bytes) exceed the target's {target_size}"));
    }
    let inflated_base = if flags & BASE_INFLATED != 0 {
        let plain = inflate(old, base_size)?;
        if plain.len() as u64 != base_size {
            return Err(format!("the base inflates to {} bytes, the delta expects {base_size}", plain.len()));
        }
        Some(plain)
    } else {
        None
    };
    let base = inflated_base.as_deref().unwrap_or(old);
    let plain = codec::decode(inner, base, rest, plain_size)?;
    drop(inflated_base);
    let deflated = std::panic::catch_unwind(|| recreate_whole_deflate_stream(&plain, corrections))
        .map_err(|_| "deflating again failed (preflate panicked)".to_owned())?
        .map_err(|e| format!("deflating again failed: {e}"))?;
    let size = framing + deflated.len() as u64;
    if size != target_size {
        return Err(format!("gzip delta rebuilds {size} bytes instead of {target_size}"));
    }
    Ok([header, &deflated, trailer].concat())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

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
            let payload = encode(&old, &new, &EncodeOptions::default()).unwrap().expect("a gzip delta");
            assert_eq!(decode(&old, &payload, new.len() as u64).unwrap(), new);
            let (_, raw) = codec::encode_best_plain(&old, &new, &EncodeOptions::default()).unwrap();
            assert!(payload.len() * 4 < raw.len(), "level {level}: {} vs {} bytes", payload.len(), raw.len());
        }
        // A base that is not gzip is used as it is.
        let new = gzip(&new_plain, 9);
        let payload = encode(&old_plain, &new, &EncodeOptions::default()).unwrap().unwrap();
        assert_eq!(payload[0], 0);
        assert_eq!(decode(&old_plain, &payload, new.len() as u64).unwrap(), new);
    }

    #[test]
    fn what_is_not_one_rebuildable_gzip_member_is_not_a_candidate() {
        let options = EncodeOptions::default();
        assert!(encode(b"old", &changelog(10), &options).unwrap().is_none());
        let mut two_members = gzip(&changelog(400), 9);
        two_members.extend_from_slice(&gzip(&changelog(500), 9));
        assert!(encode(b"old", &two_members, &options).unwrap().is_none());
        let mut truncated = gzip(&changelog(400), 9);
        truncated.truncate(truncated.len() / 2);
        assert!(encode(b"old", &truncated, &options).unwrap().is_none());
    }

    #[test]
    fn hostile_payloads_are_errors() {
        let (old, new) = (gzip(&changelog(300), 9), gzip(&changelog(301), 9));
        let payload = encode(&old, &new, &EncodeOptions::default()).unwrap().unwrap();
        let size = new.len() as u64;
        for len in [0, 1, 9, 17, 30, payload.len() - 1] {
            assert!(decode(&old, &payload[..len], size).is_err(), "truncated to {len}");
        }
        let mut huge = payload.clone();
        huge[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&old, &huge, size).unwrap_err().contains("inflated bytes"));
        let mut other_base = old.clone();
        let at = other_base.len() - 20;
        other_base[at] ^= 0xff;
        assert!(decode(&other_base, &payload, size).is_err());
        let mut flipped = payload.clone();
        for at in (25..flipped.len()).step_by(7) {
            flipped[at] ^= 0x55;
            let _ = decode(&old, &flipped, size);
            flipped[at] ^= 0x55;
        }
        assert!(decode(&old, &payload, size + 1).unwrap_err().contains("instead of"));
    }
}
