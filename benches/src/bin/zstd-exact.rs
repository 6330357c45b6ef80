//! Whether the zstd library osdeploy links rebuilds a zstd file exactly from its plain text.
//!
//! Usage: `zstd-exact PLAIN COMPRESSED`. Compresses PLAIN at levels 1 to 19, single-threaded and
//! with 1 and 2 worker threads, with and without a checksum (the content size always in the
//! header, as the zstd program writes it), and prints each setting whose output equals
//! COMPRESSED byte for byte, or that none does; a setting is given up at its first differing byte.
//! It first checks itself: it must find the setting of its own output. `benches/harness/
//! recompress-check.sh` runs it against files made by the system's zstd program.

use std::error::Error;
use std::io::{self, Write};

/// A sink that holds the output to its expected bytes and fails at the first difference, so that
/// a setting that does not rebuild the file is given up after its first block.
struct Compare<'a> {
    expected: &'a [u8],
    at: usize,
}

impl Write for Compare<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.expected.get(self.at..self.at + bytes.len()) != Some(bytes) {
            return Err(io::Error::other("differs"));
        }
        self.at += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether compressing `plain` so gives exactly `expected`.
fn rebuilds(plain: &[u8], expected: &[u8], level: i32, workers: u32, checksum: bool) -> io::Result<bool> {
    let mut encoder = zstd::stream::Encoder::new(Compare { expected, at: 0 }, level)?;
    encoder.set_pledged_src_size(Some(plain.len() as u64))?;
    encoder.include_checksum(checksum)?;
    if workers > 0 {
        encoder.multithread(workers)?;
    }
    if encoder.write_all(plain).is_err() {
        return Ok(false);
    }
    Ok(encoder.finish().is_ok_and(|sink| sink.at == expected.len()))
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, plain, compressed] = args.as_slice() else {
        return Err("usage: zstd-exact PLAIN COMPRESSED".into());
    };
    let (plain, compressed) = (std::fs::read(plain)?, std::fs::read(compressed)?);
    let mut own = zstd::stream::Encoder::new(Vec::new(), 3)?;
    own.set_pledged_src_size(Some(plain.len() as u64))?;
    own.include_checksum(true)?;
    own.write_all(&plain)?;
    if !rebuilds(&plain, &own.finish()?, 3, 0, true)? {
        return Err("the check does not find the setting of its own output (level 3, checksum)".into());
    }
    let mut exact = 0;
    for workers in [0, 1, 2] {
        for level in 1..=19 {
            for checksum in [true, false] {
                if rebuilds(&plain, &compressed, level, workers, checksum)? {
                    println!("exact: level {level}, {workers} workers, checksum {checksum}");
                    exact += 1;
                }
            }
        }
    }
    if exact == 0 {
        println!("none of 114 settings of libzstd {} rebuilds it", zstd::zstd_safe::version_string());
    }
    Ok(())
}
