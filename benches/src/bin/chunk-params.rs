//! Measures chunker parameter sets on a real pair of OS trees.
//!
//! Usage: `chunk-params OLD NEW` (run as root so every file is readable). For each parameter set of
//! [`osdeploy_benches::PARAM_SETS_KIB`], every regular file of both trees is chunked separately and
//! each chunk hashed with blake3; then, as one TSV row on stdout:
//!
//! * `new_chunks`: chunks of NEW, counting repeats; `new_unique`, `new_unique_bytes`: distinct ones;
//! * `delta_chunks`, `delta_bytes`: distinct chunks of NEW absent from OLD, what a node holding OLD
//!   fetches to update;
//! * `delta_z3`, `delta_z10`, `delta_z19`: that delta stored at zstd level 3, 10, 19, each chunk
//!   compressed separately as an archive repository does (`osdeploy_store::compress::compress`,
//!   which keeps a chunk raw when zstd would not shrink it);
//! * `new_z3`, `new_z10`: all distinct chunks of NEW stored at level 3 and 10;
//! * `z3_MBps`, `z10_MBps`: compression speed over all distinct chunks of NEW, `z19_MBps` over the
//!   delta (raw MB per second, 10^6 bytes, every core via rayon); `chunk_s`: wall time of chunking
//!   and hashing both trees.
//!
//! Progress goes to stderr.

use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use osdeploy_benches::{param_sets, params_label, regular_files};
use osdeploy_store::chunker::{Chunker, ChunkerParams};
use osdeploy_store::compress::compress;
use rayon::prelude::*;

/// A blake3 digest.
type Hash = [u8; 32];

/// The regular files of one tree, read into memory once.
struct Tree {
    files: Vec<Vec<u8>>,
    bytes: u64,
}

fn load(root: &Path) -> Result<Tree, Box<dyn Error>> {
    let paths = regular_files(root).map_err(|e| format!("walking {}: {e}", root.display()))?;
    let files = paths
        .par_iter()
        .map(|p| fs::read(p).map_err(|e| format!("reading {}: {e}", p.display())))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = files.iter().map(|f| f.len() as u64).sum();
    Ok(Tree { files, bytes })
}

/// Every chunk of every file as (hash, file index, offset, length), files in order.
fn chunk_tree(tree: &Tree, chunker: &Chunker) -> Vec<(Hash, usize, usize, usize)> {
    tree.files
        .par_iter()
        .enumerate()
        .map(|(index, data)| {
            let mut chunks = Vec::new();
            let mut offset = 0;
            chunker
                .split(data.as_slice(), Path::new("memory"), |chunk| {
                    chunks.push((*blake3::hash(chunk).as_bytes(), index, offset, chunk.len()));
                    offset += chunk.len();
                    Ok(())
                })
                .expect("chunking bytes in memory cannot fail");
            chunks
        })
        .flatten()
        .collect()
}

/// Stored bytes of `chunks` at `level`, each compressed separately, and the seconds it took.
fn compressed(chunks: &[&[u8]], level: i32) -> (u64, f64) {
    let start = Instant::now();
    let size = chunks.par_iter().map(|c| compress(c, level).1.len() as u64).sum();
    (size, start.elapsed().as_secs_f64())
}

/// Raw bytes over seconds in MB/s.
fn mbps(bytes: u64, secs: f64) -> String {
    format!("{:.1}", bytes as f64 / 1e6 / secs)
}

fn measure(old: &Tree, new: &Tree, params: ChunkerParams) -> Vec<String> {
    let label = params_label(&params);
    let chunker = Chunker::new(params);
    let start = Instant::now();
    let old_set: HashSet<Hash> = chunk_tree(old, &chunker).into_iter().map(|(hash, ..)| hash).collect();
    let new_chunks = chunk_tree(new, &chunker);
    let chunk_secs = start.elapsed().as_secs_f64();
    let mut unique: HashMap<Hash, &[u8]> = HashMap::with_capacity(new_chunks.len());
    for &(hash, file, offset, len) in &new_chunks {
        unique.entry(hash).or_insert(&new.files[file][offset..offset + len]);
    }
    let mut all: Vec<(Hash, &[u8])> = unique.into_iter().collect();
    all.sort_unstable_by_key(|(hash, _)| *hash);
    let delta: Vec<&[u8]> = all.iter().filter(|(hash, _)| !old_set.contains(hash)).map(|(_, c)| *c).collect();
    let all: Vec<&[u8]> = all.into_iter().map(|(_, c)| c).collect();
    let unique_bytes: u64 = all.iter().map(|c| c.len() as u64).sum();
    let delta_bytes: u64 = delta.iter().map(|c| c.len() as u64).sum();
    eprintln!(
        "{label}: {} chunks ({} distinct) in NEW, {} in delta; chunking took {chunk_secs:.1} s",
        new_chunks.len(),
        all.len(),
        delta.len()
    );
    let (new_z3, z3_secs) = compressed(&all, 3);
    let (new_z10, z10_secs) = compressed(&all, 10);
    let (delta_z3, _) = compressed(&delta, 3);
    let (delta_z10, _) = compressed(&delta, 10);
    let (delta_z19, z19_secs) = compressed(&delta, 19);
    eprintln!("{label}: compression done (level 19 on the delta took {z19_secs:.1} s)");
    vec![
        label,
        new.files.len().to_string(),
        new.bytes.to_string(),
        new_chunks.len().to_string(),
        all.len().to_string(),
        unique_bytes.to_string(),
        delta.len().to_string(),
        delta_bytes.to_string(),
        format!("{:.2}", 100.0 * delta_bytes as f64 / new.bytes as f64),
        delta_z3.to_string(),
        delta_z10.to_string(),
        delta_z19.to_string(),
        new_z3.to_string(),
        new_z10.to_string(),
        mbps(unique_bytes, z3_secs),
        mbps(unique_bytes, z10_secs),
        mbps(delta_bytes, z19_secs),
        format!("{chunk_secs:.2}"),
    ]
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [old_root, new_root] = args.as_slice() else {
        return Err("usage: chunk-params OLD NEW (two rootfs directories)".into());
    };
    let (old, new) = (load(old_root)?, load(new_root)?);
    eprintln!(
        "OLD: {} files, {} bytes; NEW: {} files, {} bytes; {} threads",
        old.files.len(),
        old.bytes,
        new.files.len(),
        new.bytes,
        rayon::current_num_threads()
    );
    println!(
        "params\tnew_files\tnew_bytes\tnew_chunks\tnew_unique\tnew_unique_bytes\tdelta_chunks\tdelta_bytes\tdelta_pct\t\
         delta_z3\tdelta_z10\tdelta_z19\tnew_z3\tnew_z10\tz3_MBps\tz10_MBps\tz19_MBps\tchunk_s"
    );
    for params in param_sets() {
        params.validate()?;
        println!("{}", measure(&old, &new, params).join("\t"));
    }
    Ok(())
}
