//! `fsck`: re-hash every stored object and check that everything the refs reach is present.

use std::fs;

use rayon::prelude::*;
use serde::Serialize;

use crate::delta::published::PublishedDeltas;
use crate::error::{IoContext, Result};
use crate::layout;
use crate::object::ObjectKind;
use crate::pack;
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
    if repo.archive().is_some() {
        check_deltas(repo, &mut report)?;
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
            objects.par_iter().map(|(id, path, object)| crate::bare::content_problem(path, id, object)).collect();
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
    let index_path = info.path.with_extension("idx");
    let bytes = fs::read(&index_path).at(&index_path)?;
    let index = pack::decode_index(&bytes, &info.path.display().to_string())?;
    report.errors.extend(pack::verify_pack_file(&info.path, &info.id, index.pack_size, &index.entries)?);
    report.bytes_checked += info.size;
    report.objects_checked += index.entries.len() as u64;
    Ok(())
}

/// Delta packs are checked like packs; every delta a delta index lists must lie where it says.
fn check_deltas(repo: &Repo, report: &mut FsckReport) -> Result<()> {
    let published = match PublishedDeltas::load(repo.path()) {
        Ok(published) => published,
        Err(e) => {
            report.errors.push(e.to_string());
            return Ok(());
        }
    };
    for pack in published.packs.values() {
        let path = published.dir().join(layout::pack_name(&pack.id));
        report.errors.extend(pack::verify_pack_file(&path, &pack.id, pack.size, &pack.entries)?);
        report.bytes_checked += pack.size;
        report.objects_checked += pack.entries.len() as u64;
    }
    for index in published.indexes.values() {
        let files = index.index.entries.iter().map(|d| (d.pack, d.entry, format!("delta {} → {}", d.base, d.target)));
        let metadata =
            index.index.metadata.iter().map(|m| (m.pack, m.entry, format!("metadata delta from {}", m.from)));
        for (pack, entry, what) in files.chain(metadata) {
            let listed = published.packs.get(&pack).and_then(|p| {
                let at = p.entries.binary_search_by_key(&(entry.id, entry.kind), |e| (e.id, e.kind));
                at.ok().map(|i| &p.entries[i])
            });
            if listed != Some(&entry) {
                report
                    .errors
                    .push(format!("delta index {}: {what} is not where it says (delta pack {pack})", index.hash));
            }
        }
    }
    Ok(())
}
