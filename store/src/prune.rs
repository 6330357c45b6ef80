//! `prune`: remove every object that no ref reaches — a [`PrunePlan`] first (what is
//! unreachable, the bytes it frees), then its execution.
//!
//! Archive packs whose objects are all unreachable are deleted; packs with some live objects are
//! rewritten with only those (their stored bytes copied as they are), the new pack published
//! and made durable before the old one is removed. Bare repositories drop unreachable objects
//! from the index first, then their content files.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use serde::Serialize;

use crate::archive::ArchiveStore;
use crate::bare::BareStore;
use crate::delta::published::PublishedDeltas;
use crate::error::{IoContext, Result, StoreError};
use crate::fsutil::{crash_point, fsync_dir, syncfs};
use crate::id::{FileId, ObjectId};
use crate::layout;
use crate::object::{FileObject, ObjectKind};
use crate::pack::{ENTRY_HEADER_LEN, IndexEntry, PackWriter};
use crate::reach::reachable;
use crate::repo::{Objects, Repo};

/// What prune will remove and what it frees: computed without writing anything (`prune
/// --dry-run` prints it), then carried out by [`execute`].
#[derive(Debug, Default, Serialize)]
pub struct PrunePlan {
    /// Objects to remove.
    pub objects_removed: u64,
    /// Objects kept.
    pub objects_kept: u64,
    /// Bytes of storage freed.
    pub bytes_freed: u64,
    /// Packs to delete whole.
    pub packs_deleted: u64,
    /// Packs to rewrite without their dead objects.
    pub packs_rewritten: u64,
    /// Delta indexes to delete: those of unreachable releases, and those a newer index of the
    /// same release replaced.
    pub delta_indexes_deleted: u64,
    /// Delta packs no remaining delta index refers to.
    pub delta_packs_deleted: u64,
    /// What to do.
    #[serde(skip)]
    steps: Steps,
}

/// The changes a prune makes.
#[derive(Debug, Default)]
struct Steps {
    /// Archive: packs to rewrite, each with the entries it keeps (in pack order).
    rewrite: Vec<(PathBuf, Vec<IndexEntry>)>,
    /// Archive: pack and index files to delete (those of rewritten packs included); bare:
    /// content files no index row names.
    delete_files: Vec<PathBuf>,
    /// Bare: objects to drop from the index, with their content.
    doomed: Vec<(ObjectKind, ObjectId)>,
    /// Bare: the file objects that stay (their chunk locations are kept).
    survivors: Vec<(FileId, FileObject)>,
}

/// Plans the removal of what no ref reaches. Reads only.
pub fn plan(repo: &Repo) -> Result<PrunePlan> {
    let roots: Vec<_> = repo.refs()?.values().copied().collect();
    let reach = reachable(repo, &roots)?;
    if let Some(first) = reach.errors.first() {
        return Err(StoreError::Corrupt {
            what: format!("repository {}", repo.path().display()),
            reason: format!(
                "{first} (and {} more); run fsck — prune refuses to run on a damaged repository",
                reach.errors.len() - 1
            ),
        });
    }
    let mut plan = PrunePlan::default();
    match repo.objects() {
        Objects::Archive(archive) => {
            plan_archive(archive, &reach.objects, &mut plan)?;
            plan_deltas(repo, &reach.objects, &mut plan)?;
        }
        Objects::Bare(bare) => plan_bare(repo, bare, &reach.objects, &mut plan)?,
    }
    Ok(plan)
}

/// Carries out a plan made by [`plan`] on the same repository, which must be open with
/// [`crate::Access::Prune`] since before the plan was made.
pub fn execute(repo: &mut Repo, plan: PrunePlan) -> Result<()> {
    match repo.objects() {
        Objects::Archive(_) => execute_archive(repo, plan.steps),
        Objects::Bare(bare) => execute_bare(bare, plan.steps),
    }
}

fn plan_archive(archive: &ArchiveStore, live: &HashSet<(ObjectId, ObjectKind)>, plan: &mut PrunePlan) -> Result<()> {
    for info in archive.packs() {
        let index_path = info.path.with_extension("idx");
        let index =
            crate::pack::decode_index(&fs::read(&index_path).at(&index_path)?, &index_path.display().to_string())?;
        let (mut keep, drop): (Vec<_>, Vec<_>) =
            index.entries.into_iter().partition(|e| live.contains(&(e.id, e.kind)));
        plan.objects_kept += keep.len() as u64;
        plan.objects_removed += drop.len() as u64;
        if drop.is_empty() {
            continue;
        }
        plan.bytes_freed += drop.iter().map(IndexEntry::span).sum::<u64>();
        plan.steps.delete_files.push(index_path);
        plan.steps.delete_files.push(info.path.clone());
        if keep.is_empty() {
            plan.packs_deleted += 1;
            continue;
        }
        plan.packs_rewritten += 1;
        keep.sort_by_key(|e| e.offset);
        plan.steps.rewrite.push((info.path.clone(), keep));
    }
    for (path, _) in &archive.broken_indexes {
        plan.steps.delete_files.push(path.clone());
    }
    let packs_dir = archive.packs_dir();
    for entry in fs::read_dir(packs_dir).at(packs_dir)? {
        let path = entry.at(packs_dir)?.path();
        if path.extension().is_some_and(|x| x == "pack") && !path.with_extension("idx").exists() {
            plan.bytes_freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            plan.steps.delete_files.push(path);
        }
    }
    Ok(())
}

/// Deltas are dropped with the release they lead to; a delta pack goes when no delta index that
/// stays refers to it. (A pack that some remaining index still uses is kept whole.)
fn plan_deltas(repo: &Repo, live: &HashSet<(ObjectId, ObjectKind)>, plan: &mut PrunePlan) -> Result<()> {
    let published = PublishedDeltas::load(repo.path())?;
    let dir = published.dir();
    if !dir.exists() {
        return Ok(());
    }
    let mut kept_indexes = HashSet::new();
    let mut kept_packs = HashSet::new();
    for (to, index) in &published.indexes {
        if live.contains(&(to.0, ObjectKind::Commit)) {
            kept_indexes.insert(layout::delta_index_name(&index.hash));
            kept_packs.extend(index.index.entries.iter().map(|e| e.pack));
            kept_packs.extend(index.index.metadata.iter().map(|m| m.pack));
        }
    }
    for entry in fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let doomed = match path.extension().and_then(|x| x.to_str()) {
            Some("dix") if !kept_indexes.contains(&name) => {
                plan.delta_indexes_deleted += 1;
                true
            }
            Some("pack") if !ObjectId::from_hex(&stem).is_some_and(|id| kept_packs.contains(&id)) => {
                plan.delta_packs_deleted += 1;
                plan.bytes_freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                true
            }
            Some("idx") => !ObjectId::from_hex(&stem).is_some_and(|id| kept_packs.contains(&id)),
            _ => false,
        };
        if doomed {
            plan.steps.delete_files.push(path);
        }
    }
    Ok(())
}

fn execute_archive(repo: &mut Repo, steps: Steps) -> Result<()> {
    let packs_dir = repo.path().join(layout::PACKS);
    let tmp = repo.path().join(layout::TMP);
    let mut rewritten = Vec::new();
    for (path, keep) in &steps.rewrite {
        let src = File::open(path).at(path)?;
        let mut writer = PackWriter::create(&tmp)?;
        for e in keep {
            let mut buf = vec![0u8; e.stored_len as usize];
            src.read_exact_at(&mut buf, e.offset + ENTRY_HEADER_LEN).at(path)?;
            writer.append(e.kind, e.id, e.codec, e.raw_len, &buf)?;
        }
        rewritten.push(writer.finish()?);
    }
    // New packs are durable and published before any old one goes.
    syncfs(repo.path())?;
    for p in &rewritten {
        fs::rename(&p.pack_tmp, packs_dir.join(layout::pack_name(&p.id))).at(&p.pack_tmp)?;
        fs::rename(&p.index_tmp, packs_dir.join(layout::index_name(&p.id))).at(&p.index_tmp)?;
    }
    fsync_dir(&packs_dir)?;
    crash_point("prune:before-delete");
    let kept: HashSet<_> = rewritten.iter().map(|p| p.id.to_hex()).collect();
    // Indexes first, so that a crash never leaves an index naming a deleted pack.
    let mut doomed = steps.delete_files;
    doomed.sort_by_key(|p| p.extension().is_some_and(|x| x == "pack"));
    for path in doomed {
        if path.file_stem().is_some_and(|s| kept.contains(&*s.to_string_lossy())) {
            continue;
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&path),
            _ => {}
        }
    }
    fsync_dir(&packs_dir)?;
    let deltas_dir = repo.path().join(layout::DELTAS);
    if deltas_dir.exists() {
        fsync_dir(&deltas_dir)?;
    }
    repo.reload_archive()?;
    repo.write_summary()
}

fn plan_bare(
    repo: &Repo,
    bare: &BareStore,
    live: &HashSet<(ObjectId, ObjectKind)>,
    plan: &mut PrunePlan,
) -> Result<()> {
    for kind in [ObjectKind::File, ObjectKind::DirTree, ObjectKind::Commit] {
        for id in bare.ids(kind)? {
            if live.contains(&(id, kind)) {
                plan.objects_kept += 1;
                if kind == ObjectKind::File {
                    plan.steps.survivors.push((FileId(id), repo.file_object(&FileId(id))?));
                }
            } else {
                plan.objects_removed += 1;
                if kind == ObjectKind::File {
                    plan.bytes_freed += fs::metadata(bare.content_path(&FileId(id))).map(|m| m.len()).unwrap_or(0);
                }
                plan.steps.doomed.push((kind, id));
            }
        }
    }
    // Content files that no index row names (left by an interrupted write); those of the doomed
    // file objects go with their rows.
    let doomed_files = plan.steps.doomed.iter().filter(|(kind, _)| *kind == ObjectKind::File).map(|(_, id)| *id);
    let recorded: HashSet<ObjectId> = plan.steps.survivors.iter().map(|(f, _)| f.0).chain(doomed_files).collect();
    let objects_dir = bare.objects_dir();
    for sub in fs::read_dir(objects_dir).at(objects_dir)? {
        let sub = sub.at(objects_dir)?.path();
        for entry in fs::read_dir(&sub).at(&sub)? {
            let path = entry.at(&sub)?.path();
            let hex = format!(
                "{}{}",
                sub.file_name().unwrap_or_default().to_string_lossy(),
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            if ObjectId::from_hex(&hex).is_some_and(|id| recorded.contains(&id)) {
                continue;
            }
            plan.bytes_freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            plan.steps.delete_files.push(path);
        }
    }
    Ok(())
}

fn execute_bare(bare: &BareStore, steps: Steps) -> Result<()> {
    let (ids, objects): (Vec<_>, Vec<_>) = steps.survivors.into_iter().unzip();
    bare.delete(&steps.doomed, &objects, &ids)?;
    for path in steps.delete_files {
        fs::remove_file(&path).at(&path)?;
    }
    Ok(())
}
