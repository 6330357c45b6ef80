//! `fsck`: re-hash every stored object and check that everything the refs reach is present.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{IoContext, Result};
use crate::id::{ChunkId, ObjectId};
use crate::object::{FileObject, ObjectKind};
use crate::pack::{self, PACK_HEADER_LEN};
use crate::reach::reachable;
use crate::repo::Repo;

/// What fsck found.
#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    /// Objects whose bytes were re-hashed.
    pub objects_checked: u64,
    /// Stored bytes read.
    pub bytes_checked: u64,
    /// Commits reachable from refs.
    pub commits: u64,
    /// Corruption: missing or damaged objects, packs, indexes. Empty when the repository is sound.
    pub errors: Vec<String>,
    /// Harmless findings: unreferenced leftovers of interrupted transactions, truncated history.
    pub warnings: Vec<String>,
}

/// Checks the whole repository.
pub fn fsck(repo: &Repo) -> Result<FsckReport> {
    let mut report = FsckReport::default();
    if let Some(archive) = repo.archive() {
        for (path, problem) in &archive.broken_indexes {
            report.errors.push(format!("pack index {}: {problem}", path.display()));
        }
        for info in archive.packs() {
            check_pack(info, &mut report)?;
        }
        for entry in fs::read_dir(archive.packs_dir()).at(archive.packs_dir())? {
            let path = entry.at(archive.packs_dir())?.path();
            if path.extension().is_some_and(|x| x == "pack") && !path.with_extension("idx").exists() {
                report.warnings.push(format!(
                    "pack {} has no index (left by an interrupted write; prune removes it)",
                    path.display()
                ));
            }
        }
    }
    if let Some(bare) = repo.bare() {
        let ids = bare.ids(ObjectKind::File)?;
        let mut objects = Vec::with_capacity(ids.len());
        for id in &ids {
            match repo.file_object(&crate::FileId(*id)) {
                Ok(o) => objects.push((*id, bare.content_path(&crate::FileId(*id)), o)),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        let results: Vec<Result<Option<String>>> =
            objects.par_iter().map(|(id, path, object)| check_content(path, id, object)).collect();
        for r in results {
            if let Some(problem) = r? {
                report.errors.push(problem);
            }
        }
        report.objects_checked += ids.len() as u64;
        report.bytes_checked += objects.iter().map(|(_, _, o)| o.size).sum::<u64>();
        for kind in [ObjectKind::DirTree, ObjectKind::Commit] {
            for id in bare.ids(kind)? {
                report.objects_checked += 1;
                if let Err(e) = repo.read(kind, &id) {
                    report.errors.push(e.to_string());
                }
            }
        }
    }
    let refs = repo.refs()?;
    let roots: Vec<_> = refs.values().copied().collect();
    let reach = reachable(repo, &roots)?;
    report.commits = reach.objects.iter().filter(|(_, k)| *k == ObjectKind::Commit).count() as u64;
    report.errors.extend(reach.errors);
    for c in reach.missing_parents {
        report.warnings.push(format!("commit {c}: parent not in this repository (history is truncated)"));
    }
    Ok(report)
}

fn check_pack(info: &crate::archive::PackInfo, report: &mut FsckReport) -> Result<()> {
    let mut file = File::open(&info.path).at(&info.path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut first = true;
    loop {
        let n = file.read(&mut buf).at(&info.path)?;
        if n == 0 {
            break;
        }
        if first {
            if let Err(e) =
                pack::check_pack_header(&buf[..n.min(PACK_HEADER_LEN as usize)], &info.path.display().to_string())
            {
                report.errors.push(e.to_string());
            }
            first = false;
        }
        hasher.update(&buf[..n]);
    }
    let actual = ObjectId::from(hasher.finalize());
    if actual != info.id {
        report.errors.push(format!("pack {}: its bytes hash to {actual}, not to its name", info.path.display()));
    }
    report.bytes_checked += info.size;
    let bytes = fs::read(info.path.with_extension("idx")).at(info.path.with_extension("idx"))?;
    let index = pack::decode_index(&bytes, &info.path.display().to_string())?;
    let problems: Vec<String> = index
        .entries
        .par_iter()
        .filter_map(|e| pack::read_entry(&file, e, &info.path).err().map(|err| err.to_string()))
        .collect();
    report.objects_checked += index.entries.len() as u64;
    report.errors.extend(problems);
    Ok(())
}

/// Re-hashes a bare file object's content chunk by chunk; returns the problem, if any.
fn check_content(path: &std::path::Path, id: &ObjectId, object: &FileObject) -> Result<Option<String>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return Ok(Some(format!("file object {id}: content {}: {e}", path.display()))),
    };
    let len = file.metadata().at(path)?.len();
    if len != object.size {
        return Ok(Some(format!(
            "file object {id}: content {} is {len} bytes, the object says {}",
            path.display(),
            object.size
        )));
    }
    let mut offset = 0u64;
    let mut buf = Vec::new();
    for (chunk, clen) in &object.chunks {
        buf.resize(*clen as usize, 0);
        file.read_exact_at(&mut buf, offset).at(path)?;
        let actual = ChunkId(ObjectId::of(&buf));
        if actual != *chunk {
            return Ok(Some(format!(
                "file object {id}: content {} at offset {offset} hashes to {actual}, expected chunk {chunk}",
                path.display()
            )));
        }
        offset += u64::from(*clen);
    }
    Ok(None)
}
