//! Whole files of the target release inside a plain text, named instead of diffed.
//!
//! An initramfs is a cpio archive of the release's own files: on a Debian kernel update, 99 % of
//! its 130 MB are kernel modules and programs byte-identical to files of the new tree. A delta can
//! name those files by id and carry only the rest (cpio headers, generated files), because the
//! node holds every file of the release once the other files of the pull are written.
//!
//! [`find`] locates the regular members of cpio "newc" archives (`070701`/`070702`, the format
//! of initramfs images; several archives back to back, zero padding between them) whose content
//! is a file of the release; [`literals`] is the plain text without them and [`Spliced`] puts them
//! back. A plain text that is not cpio, or is cpio only in part, gets references only for what
//! parsed: references are an optimisation, never a guess (the result is verified by the target's
//! id in any case).

use std::borrow::Cow;

use crate::delta::codec::{FileReader, ReleaseLookup};
use crate::id::FileId;

/// Members smaller than this stay literal: a reference costs 48 bytes.
pub const MIN_REFERENCED: u64 = 4096;

/// Bytes of one reference in a payload: offset, length, file id.
pub const REF_LEN: usize = 48;

/// `len` bytes at `offset` of the plain text are the content of `file`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TreeRef {
    /// Where the content starts in the plain text.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// The file whose content it is.
    pub file: FileId,
}

impl TreeRef {
    /// The payload encoding: offset and length (u64 little endian), file id.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.file.0.0);
    }

    /// Decodes one reference of [`REF_LEN`] bytes.
    pub fn decode(bytes: &[u8; REF_LEN]) -> TreeRef {
        let (offset, rest) = bytes.split_at(8);
        let (len, id) = rest.split_at(8);
        TreeRef {
            offset: u64::from_le_bytes(offset.try_into().expect("8 bytes")),
            len: u64::from_le_bytes(len.try_into().expect("8 bytes")),
            file: FileId(crate::id::ObjectId(id.try_into().expect("32 bytes"))),
        }
    }
}

/// Size of a newc header: magic and 13 eight-digit hex fields.
const NEWC_HEADER: usize = 110;

fn align4(at: usize) -> usize {
    at.next_multiple_of(4)
}

/// The regular members of the cpio archives in `plain` at least [`MIN_REFERENCED`] bytes long
/// whose content `lookup` knows as a file of the release, in order.
pub fn find(plain: &[u8], lookup: &ReleaseLookup<'_>) -> Vec<TreeRef> {
    let mut refs = Vec::new();
    let mut at = 0usize;
    while at < plain.len() {
        let header = match plain.get(at..at + NEWC_HEADER) {
            Some(header) if header.starts_with(b"07070") && matches!(header[5], b'1' | b'2') => header,
            // Padding between archives (and after the last) is zeros to a 4-byte boundary or more.
            _ if plain[at] == 0 => {
                at += 1;
                continue;
            }
            _ => break,
        };
        let field = |i: usize| {
            std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).ok().and_then(|hex| usize::from_str_radix(hex, 16).ok())
        };
        let (Some(mode), Some(size), Some(name_size)) = (field(1), field(6), field(11)) else { break };
        let data = align4(at + NEWC_HEADER + name_size);
        let Some(end) = data.checked_add(size).filter(|end| *end <= plain.len()) else { break };
        if mode & 0o170000 == 0o100000 && size as u64 >= MIN_REFERENCED {
            let content = &plain[data..end];
            if let Some(file) = lookup(content) {
                refs.push(TreeRef { offset: data as u64, len: size as u64, file });
            }
        }
        at = align4(end);
    }
    refs
}

/// `plain` without the referenced ranges.
pub fn literals(plain: &[u8], refs: &[TreeRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plain.len() - refs.iter().map(|r| r.len as usize).sum::<usize>());
    let mut at = 0usize;
    for r in refs {
        out.extend_from_slice(&plain[at..r.offset as usize]);
        at = (r.offset + r.len) as usize;
    }
    out.extend_from_slice(&plain[at..]);
    out
}

/// A plain text of literals with each reference's file content put back at its offset, put
/// together range by range: a range reads only the files it covers, so a caller can use the start
/// of the plain text while the files further on are still being written.
pub struct Spliced<'a> {
    literals: &'a [u8],
    /// The references, each with where its gap of literals before it starts in `literals`.
    refs: Vec<(TreeRef, usize)>,
    /// Where the literals after the last reference start.
    tail: usize,
    size: u64,
}

/// One piece of a spliced plain text: literals, or a referenced file.
enum Piece<'r> {
    Literals(std::ops::Range<usize>),
    File(&'r TreeRef),
}

impl<'a> Spliced<'a> {
    /// The plain text of `size` bytes made of `literals` and `refs`. References must be in order,
    /// not overlap, and account with the literals for exactly `size` bytes.
    pub fn new(literals: &'a [u8], refs: &[TreeRef], size: u64) -> Result<Self, String> {
        let referenced = refs.iter().try_fold(0u64, |sum, r| sum.checked_add(r.len));
        if referenced.and_then(|r| r.checked_add(literals.len() as u64)) != Some(size) {
            return Err(format!("references and {} literal bytes do not add up to {size}", literals.len()));
        }
        let (mut plain_at, mut literal_at) = (0u64, 0usize);
        let mut located = Vec::with_capacity(refs.len());
        for r in refs {
            let gap = r.offset.checked_sub(plain_at).ok_or("references overlap or are out of order")?;
            located.push((*r, literal_at));
            literal_at = literal_at
                .checked_add(gap as usize)
                .filter(|end| *end <= literals.len())
                .ok_or("a reference lies past the literals")?;
            plain_at = r.offset + r.len;
        }
        Ok(Spliced { literals, refs: located, tail: literal_at, size })
    }

    /// Bytes `range` of the plain text; `file` returns a file's content. A range that lies within
    /// literals is borrowed.
    pub fn range(&self, range: std::ops::Range<u64>, file: &FileReader<'_>) -> Result<Cow<'a, [u8]>, String> {
        if range.start > range.end || range.end > self.size {
            return Err(format!("bytes {range:?} of a plain text of {} bytes", self.size));
        }
        let wanted = (range.end - range.start) as usize;
        let mut out = Vec::new();
        for (at, piece) in self.pieces() {
            let len = match &piece {
                Piece::Literals(bytes) => bytes.len() as u64,
                Piece::File(r) => r.len,
            };
            let (start, end) = (range.start.max(at), range.end.min(at + len));
            if at >= range.end {
                break;
            }
            if start >= end {
                continue;
            }
            let within = (start - at) as usize..(end - at) as usize;
            if out.is_empty() {
                // A range that lies within one run of literals is borrowed; any other is built.
                if let Piece::Literals(bytes) = &piece
                    && end == range.end
                {
                    return Ok(Cow::Borrowed(&self.literals[bytes.clone()][within]));
                }
                out.try_reserve_exact(wanted).map_err(|e| format!("cannot allocate {wanted} bytes: {e}"))?;
            }
            match piece {
                Piece::Literals(bytes) => out.extend_from_slice(&self.literals[bytes][within]),
                Piece::File(r) => {
                    let content = file(&r.file, r.len)?;
                    if content.len() as u64 != r.len {
                        return Err(format!(
                            "file {} has {} bytes, the reference says {}",
                            r.file,
                            content.len(),
                            r.len
                        ));
                    }
                    out.extend_from_slice(&content[within]);
                }
            }
        }
        Ok(Cow::Owned(out))
    }

    /// The pieces in order, each with its offset in the plain text.
    fn pieces(&self) -> impl Iterator<Item = (u64, Piece<'_>)> {
        let mut plain_at = 0u64;
        let refs = self.refs.iter().map(|(r, literal_at)| (r.offset, *literal_at, Some(r)));
        refs.chain(std::iter::once((self.size, self.tail, None))).flat_map(move |(next, literal_at, r)| {
            let gap = (plain_at, Piece::Literals(literal_at..literal_at + (next - plain_at) as usize));
            let file = r.map(|r| (r.offset, Piece::File(r)));
            plain_at = r.map_or(next, |r| r.offset + r.len);
            std::iter::once(gap).chain(file)
        })
    }
}

/// Appends a newc member to `out` (for tests that build initramfs images).
#[cfg(test)]
pub(crate) fn newc_member(out: &mut Vec<u8>, name: &str, mode: u32, content: &[u8]) {
    let fields = [1, mode, 0, 0, 1, 0, content.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(align4(out.len()), 0);
    out.extend_from_slice(content);
    out.resize(align4(out.len()), 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ObjectId;

    fn member(out: &mut Vec<u8>, name: &str, mode: u32, content: &[u8]) {
        newc_member(out, name, mode, content)
    }

    #[test]
    fn members_that_are_release_files_are_found_and_spliced_back() {
        let module = vec![7u8; 10_000];
        let program = vec![9u8; 5_000];
        let mut plain = Vec::new();
        member(&mut plain, "usr", 0o40755, b"");
        member(&mut plain, "usr/lib/m.ko", 0o100644, &module);
        member(&mut plain, "conf/small", 0o100644, b"tiny");
        member(&mut plain, "usr/lib/unknown", 0o100644, &[1u8; 6000]);
        member(&mut plain, "TRAILER!!!", 0, b"");
        plain.resize(plain.len() + 512, 0);
        // A second archive after the padding.
        member(&mut plain, "bin/sh", 0o100755, &program);
        member(&mut plain, "TRAILER!!!", 0, b"");
        let ids = |content: &[u8]| match content[0] {
            7 => Some(FileId(ObjectId::of(b"module"))),
            9 => Some(FileId(ObjectId::of(b"program"))),
            _ => None,
        };
        let refs = find(&plain, &ids);
        assert_eq!(refs.len(), 2, "{refs:?}");
        assert_eq!(refs[0].len, 10_000);
        let lits = literals(&plain, &refs);
        assert_eq!(lits.len(), plain.len() - 15_000);
        let files = |id: &FileId, _: u64| {
            Ok(if *id == FileId(ObjectId::of(b"module")) { module.clone() } else { program.clone() })
        };
        let size = plain.len() as u64;
        let spliced = Spliced::new(&lits, &refs, size).unwrap();
        assert_eq!(spliced.range(0..size, &files).unwrap(), plain);
        // Any range, reading only the files it covers; one within literals is borrowed.
        let read = std::cell::RefCell::new(Vec::new());
        let counted = |id: &FileId, len: u64| {
            read.borrow_mut().push(*id);
            files(id, len)
        };
        for (start, end) in [(0, 1), (0, 300), (100, 12_000), (300, 10_400), (12_000, size), (size - 7, size), (5, 5)] {
            read.borrow_mut().clear();
            let got = spliced.range(start..end, &counted).unwrap();
            assert_eq!(got, &plain[start as usize..end as usize], "{start}..{end}");
            let covered = refs.iter().filter(|r| r.offset < end && r.offset + r.len > start).map(|r| r.file);
            assert_eq!(*read.borrow(), covered.collect::<Vec<_>>(), "{start}..{end}");
        }
        assert!(matches!(spliced.range(0..100, &files).unwrap(), Cow::Borrowed(_)));
        assert!(spliced.range(0..size + 1, &files).is_err());
        let mut encoded = Vec::new();
        refs[1].encode(&mut encoded);
        assert_eq!(TreeRef::decode(encoded.as_slice().try_into().unwrap()), refs[1]);
        // Inconsistent references are errors.
        assert!(Spliced::new(&lits, &refs, size + 1).is_err());
        let swapped = [refs[1], refs[0]];
        assert!(Spliced::new(&lits, &swapped, size).is_err());
        let short = |_: &FileId, _: u64| Ok(vec![0u8; 3]);
        assert!(spliced.range(0..size, &short).unwrap_err().contains("has 3 bytes"));
    }

    #[test]
    fn what_is_not_cpio_gets_no_reference() {
        let text = b"070701 is where this text starts, but it is no cpio archive".repeat(200);
        assert!(find(&text, &|_| Some(FileId(ObjectId::of(b"x")))).is_empty());
        let mut truncated = Vec::new();
        member(&mut truncated, "big", 0o100644, &[3u8; 8000]);
        truncated.truncate(4000);
        assert!(find(&truncated, &|_| Some(FileId(ObjectId::of(b"x")))).is_empty());
    }
}
