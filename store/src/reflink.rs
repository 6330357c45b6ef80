//! Copying file content: FICLONE reflink where the filesystem can share extents, a kernel copy
//! (copy_file_range) where it cannot, a userspace copy as the last resort.

use std::fs::File;
use std::io::{Read, Write};

use rustix::io::Errno;
use serde::Serialize;

/// How a file's content reached its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    /// Extents shared with FICLONE: no data copied.
    Reflink,
    /// Data copied (copy_file_range or read/write).
    Copy,
}

/// Errors after which FICLONE cannot work for this pair of files (other filesystem, no reflink
/// support, unaligned or special file), so copying is the answer.
fn cannot_clone(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::BADF | Errno::PERM | Errno::TXTBSY
    )
}

/// Puts `src`'s `len` bytes into the empty file `dst`, by reflink when `try_reflink` and possible.
pub fn clone_or_copy(src: &File, dst: &File, len: u64, try_reflink: bool) -> std::io::Result<CopyMethod> {
    if len == 0 {
        return Ok(CopyMethod::Reflink);
    }
    if try_reflink {
        match rustix::fs::ioctl_ficlone(dst, src) {
            Ok(()) => return Ok(CopyMethod::Reflink),
            Err(e) if cannot_clone(e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut done = 0u64;
    while done < len {
        let (mut src_off, mut dst_off) = (done, done);
        match rustix::fs::copy_file_range(src, Some(&mut src_off), dst, Some(&mut dst_off), (len - done) as usize) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "source is shorter than its object says",
                ));
            }
            Ok(n) => done += n as u64,
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => {
                return copy_userspace(src, dst, done, len);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(CopyMethod::Copy)
}

fn copy_userspace(src: &File, mut dst: &File, from: u64, len: u64) -> std::io::Result<CopyMethod> {
    use std::io::{Seek, SeekFrom};
    let mut src = src;
    src.seek(SeekFrom::Start(from))?;
    dst.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len - from;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = src.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "source is shorter than its object says",
            ));
        }
        dst.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(CopyMethod::Copy)
}
