//! `prune`: remove every object that no ref reaches.
//!
//! Archive packs whose objects are all unreachable are deleted; packs with some live objects are
//! rewritten with only those (their stored bytes copied as they are), the new pack published
//! and made durable before the old one is removed. Bare repositories drop unreachable objects
//! from the index first, then their content files.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;

use serde::Serialize;

use crate::error::{IoContext, Result, StoreError};
use crate::fsutil::{crash_point, fsync_dir, syncfs};
use crate::id::{FileId, ObjectId};
use crate::object::ObjectKind;
use crate::pack::{ENTRY_HEADER_LEN, PackWriter};
use crate::reach::reachable;
use crate::repo::Repo;

/// What prune removed (or would remove, on a dry run).
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    /// Objects removed.
    pub objects_removed: u64,
    /// Objects kept.
    pub objects_kept: u64,
    /// Bytes of storage freed.
    pub bytes_freed: u64,
    /// Packs deleted whole.
    pub packs_deleted: u64,
    /// Packs rewritten without their dead objects.
    pub packs_rewritten: u64,
    /// Nothing was changed.
    pub dry_run: bool,
}

/// Removes what no ref reaches. The repository must be open with [`crate::Access::Prune`].
pub fn prune(repo: &mut Repo, dry_run: bool) -> Result<PruneReport> {
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
    let live = reach.objects;
    let mut report = PruneReport { dry_run, ..Default::default() };
    if repo.archive().is_some() {
        prune_archive(repo, &live, &mut report)?;
    } else {
        prune_bare(repo, &live, &mut report)?;
    }
    Ok(report)
}

fn prune_archive(repo: &mut Repo, live: &HashSet<(ObjectId, ObjectKind)>, report: &mut PruneReport) -> Result<()> {
    let archive = repo.archive().expect("archive mode");
    let packs_dir = archive.packs_dir().to_path_buf();
    let tmp = repo.path().join("tmp");
    let mut doomed_files = Vec::new();
    let mut rewritten = Vec::new();
    for info in archive.packs() {
        let index_path = info.path.with_extension("idx");
        let index =
            crate::pack::decode_index(&fs::read(&index_path).at(&index_path)?, &index_path.display().to_string())?;
        let (keep, drop): (Vec<_>, Vec<_>) = index.entries.iter().partition(|e| live.contains(&(e.id, e.kind)));
        report.objects_kept += keep.len() as u64;
        report.objects_removed += drop.len() as u64;
        if drop.is_empty() {
            continue;
        }
        report.bytes_freed += drop.iter().map(|e: &&crate::pack::IndexEntry| e.span()).sum::<u64>();
        doomed_files.push(index_path);
        doomed_files.push(info.path.clone());
        if keep.is_empty() {
            report.packs_deleted += 1;
            continue;
        }
        report.packs_rewritten += 1;
        if report.dry_run {
            continue;
        }
        let mut keep = keep;
        keep.sort_by_key(|e| e.offset);
        let src = File::open(&info.path).at(&info.path)?;
        let mut writer = PackWriter::create(&tmp)?;
        for e in keep {
            let mut buf = vec![0u8; e.stored_len as usize];
            src.read_exact_at(&mut buf, e.offset + ENTRY_HEADER_LEN).at(&info.path)?;
            writer.append(e.kind, e.id, e.codec, e.raw_len, &buf)?;
        }
        rewritten.push(writer.finish()?);
    }
    for (path, _) in &archive.broken_indexes {
        doomed_files.push(path.clone());
    }
    for entry in fs::read_dir(&packs_dir).at(&packs_dir)? {
        let path = entry.at(&packs_dir)?.path();
        if path.extension().is_some_and(|x| x == "pack") && !path.with_extension("idx").exists() {
            report.bytes_freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            doomed_files.push(path);
        }
    }
    if report.dry_run {
        return Ok(());
    }
    // New packs are durable and published before any old one goes.
    syncfs(repo.path())?;
    for p in &rewritten {
        let hex = p.id.to_hex();
        fs::rename(&p.pack_tmp, packs_dir.join(format!("{hex}.pack"))).at(&p.pack_tmp)?;
        fs::rename(&p.index_tmp, packs_dir.join(format!("{hex}.idx"))).at(&p.index_tmp)?;
    }
    fsync_dir(&packs_dir)?;
    crash_point("prune:before-delete");
    let kept: HashSet<_> = rewritten.iter().map(|p| p.id.to_hex()).collect();
    // Indexes first, so that a crash never leaves an index naming a deleted pack.
    doomed_files.sort_by_key(|p| p.extension().is_some_and(|x| x == "pack"));
    for path in doomed_files {
        if path.file_stem().is_some_and(|s| kept.contains(&*s.to_string_lossy())) {
            continue;
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&path),
            _ => {}
        }
    }
    fsync_dir(&packs_dir)?;
    let reloaded = Repo::reload_archive(repo)?;
    reloaded.write_summary()
}

fn prune_bare(repo: &mut Repo, live: &HashSet<(ObjectId, ObjectKind)>, report: &mut PruneReport) -> Result<()> {
    let bare = repo.bare().expect("bare mode");
    let mut doomed = Vec::new();
    let mut survivors = Vec::new();
    let mut survivor_ids = Vec::new();
    for kind in [ObjectKind::File, ObjectKind::DirTree, ObjectKind::Commit] {
        for id in bare.ids(kind)? {
            if live.contains(&(id, kind)) {
                report.objects_kept += 1;
                if kind == ObjectKind::File {
                    survivors.push(repo.file_object(&FileId(id))?);
                    survivor_ids.push(FileId(id));
                }
            } else {
                report.objects_removed += 1;
                if kind == ObjectKind::File {
                    report.bytes_freed += fs::metadata(bare.content_path(&FileId(id))).map(|m| m.len()).unwrap_or(0);
                }
                doomed.push((kind, id));
            }
        }
    }
    if !report.dry_run {
        bare.delete(&doomed, &survivors, &survivor_ids)?;
    }
    // Content files that no index row names (left by an interrupted write).
    let recorded: HashSet<ObjectId> = survivor_ids.iter().map(|f| f.0).collect();
    let objects_dir = bare.objects_dir().to_path_buf();
    for sub in fs::read_dir(&objects_dir).at(&objects_dir)? {
        let sub = sub.at(&objects_dir)?.path();
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
            report.bytes_freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if !report.dry_run {
                fs::remove_file(&path).at(&path)?;
            }
        }
    }
    Ok(())
}
