//! Shared helpers of osdeploy's benchmarks: a realistic in-memory corpus, a generated source
//! tree for commit/checkout benchmarks, and the regular-file walk of a rootfs.
//!
//! The criterion benchmarks live in `benches/`; `src/bin/chunk-params.rs` measures chunker
//! parameters on a real OS pair.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use osdeploy_store::chunker::ChunkerParams;

/// Where [`load_corpus`] takes real bytes from: executables are the bulk of an OS tree.
pub const CORPUS_DIR: &str = "/usr/bin";

/// The chunker parameter sets compared by the benchmarks, as (min, avg, max) KiB.
pub const PARAM_SETS_KIB: [(u32, u32, u32); 4] = [(4, 16, 64), (8, 32, 128), (16, 64, 256), (32, 128, 512)];

/// [`PARAM_SETS_KIB`] as chunker parameters in bytes.
pub fn param_sets() -> Vec<ChunkerParams> {
    PARAM_SETS_KIB
        .iter()
        .map(|&(min, avg, max)| ChunkerParams { min: min << 10, avg: avg << 10, max: max << 10 })
        .collect()
}

/// `min/avg/max` in KiB, e.g. `16K/64K/256K`.
pub fn params_label(p: &ChunkerParams) -> String {
    format!("{}K/{}K/{}K", p.min >> 10, p.avg >> 10, p.max >> 10)
}

/// A small deterministic xorshift64 generator (benchmarks must not vary between runs).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

/// Every regular file below `root`, sorted by path. Symlinks are not followed (the walk uses
/// `symlink_metadata`); directories are descended; devices, fifos, sockets and symlinks are skipped.
pub fn regular_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let kind = fs::symlink_metadata(&path)?.file_type();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Pseudo-random bytes interleaved with repeated text, roughly as compressible as a mix of binaries
/// and configuration files: the fallback when [`CORPUS_DIR`] cannot be read.
pub fn synthetic_corpus(len: usize, seed: u64) -> Vec<u8> {
    const TEXT: &[u8] = b"# osdeploy synthetic corpus: key = value\nExecStart=/usr/lib/systemd/systemd-udevd\n";
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let block = rng.range(1 << 10, 64 << 10) as usize;
        if rng.next_u64().is_multiple_of(2) {
            out.extend((0..block).map(|_| rng.next_u64() as u8));
        } else {
            out.extend(TEXT.iter().cycle().take(block));
        }
    }
    out.truncate(len);
    out
}

/// `len` bytes of realistic data: the regular files of [`CORPUS_DIR`] concatenated in path order,
/// topped up with [`synthetic_corpus`] when they are unreadable or too few.
pub fn load_corpus(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for path in regular_files(Path::new(CORPUS_DIR)).unwrap_or_default() {
        if out.len() >= len {
            break;
        }
        if let Ok(bytes) = fs::read(&path) {
            out.extend_from_slice(&bytes);
        }
    }
    out.truncate(len);
    if out.len() < len {
        let missing = len - out.len();
        out.extend(synthetic_corpus(missing, 1));
    }
    out
}

/// What [`generate_tree`] created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GeneratedTree {
    /// Regular files.
    pub files: u64,
    /// Directories below the root.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Writes a deterministic tree of `files` regular files below `root` (which must exist), shaped
/// like an OS tree: 80 % small files (0–8 KiB), 19 % medium (8–128 KiB), 1 % large (256 KiB–2 MiB),
/// spread over nested directories, plus one symlink per directory. File contents are slices of
/// `corpus` (which must be at least 2 MiB) at pseudo-random offsets.
pub fn generate_tree(root: &Path, corpus: &[u8], files: usize, seed: u64) -> io::Result<GeneratedTree> {
    assert!(corpus.len() >= 2 << 20, "the corpus must hold at least 2 MiB");
    let mut rng = Rng::new(seed);
    let mut stats = GeneratedTree::default();
    let mut dirs = vec![root.to_path_buf()];
    for i in 0..files {
        // A new directory every 30 files, below a random existing one (depth grows slowly).
        if i.is_multiple_of(30) {
            let parent = dirs[rng.range(0, dirs.len() as u64) as usize].clone();
            let dir = parent.join(format!("d{:03}", dirs.len()));
            fs::create_dir(&dir)?;
            std::os::unix::fs::symlink(format!("../f{i:05}"), dir.join("link"))?;
            stats.dirs += 1;
            stats.symlinks += 1;
            dirs.push(dir);
        }
        let size = match rng.range(0, 100) {
            0 => rng.range(256 << 10, 2 << 20),
            1..=19 => rng.range(8 << 10, 128 << 10),
            _ => rng.range(0, 8 << 10),
        } as usize;
        let start = rng.range(0, (corpus.len() - size) as u64 + 1) as usize;
        let dir = &dirs[rng.range(0, dirs.len() as u64) as usize];
        fs::write(dir.join(format!("f{i:05}")), &corpus[start..start + size])?;
        stats.files += 1;
        stats.bytes += size as u64;
    }
    Ok(stats)
}
