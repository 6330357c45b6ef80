//! The JSON forms of the repository commands' output: typed, so that each field is named once and
//! every `--json` prints through [`crate::output::print_json`].

use std::collections::BTreeMap;
use std::path::Path;

use osdeploy_store::checkout::CheckoutStats;
use osdeploy_store::delta::generate::GenerateStats;
use osdeploy_store::diff::Change;
use osdeploy_store::name::escaped;
use osdeploy_store::object::{Commit, EntryKind, Meta, TreeStats};
use osdeploy_store::write::WriteStats;
use osdeploy_store::{CommitId, FileId, RefName, Repo, TreeId};
use serde::Serialize;

/// Counts over a committed tree.
#[derive(Serialize)]
pub struct TreeView {
    files: u64,
    dirs: u64,
    symlinks: u64,
    specials: u64,
    bytes: u64,
}

impl From<&TreeStats> for TreeView {
    fn from(s: &TreeStats) -> Self {
        TreeView { files: s.files, dirs: s.dirs, symlinks: s.symlinks, specials: s.specials, bytes: s.bytes }
    }
}

/// A commit (`show`, each entry of `log`).
#[derive(Serialize)]
pub struct CommitView {
    commit: CommitId,
    parent: Option<CommitId>,
    root: TreeId,
    timestamp: i64,
    version: String,
    subject: String,
    body: String,
    metadata: BTreeMap<String, String>,
    tree: TreeView,
}

impl CommitView {
    /// The view of commit `id`.
    pub fn new(id: CommitId, c: Commit) -> Self {
        CommitView {
            commit: id,
            parent: c.parent,
            root: c.root,
            timestamp: c.timestamp,
            tree: (&c.stats).into(),
            version: c.version,
            subject: c.subject,
            body: c.body,
            metadata: c.metadata,
        }
    }
}

/// What `commit` did.
#[derive(Serialize)]
pub struct CommitReport<'a> {
    /// The new commit.
    pub commit: CommitId,
    /// Its branch.
    pub branch: &'a RefName,
    /// Its parent.
    pub parent: Option<CommitId>,
    /// Counts over its tree.
    pub tree: TreeView,
    /// What was stored.
    pub stored: WriteStats,
    /// Bytes reused as a share of all content bytes.
    pub dedup_percent: f64,
    /// Seconds taken.
    pub seconds: f64,
    /// The deltas generated to it (`--deltas`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deltas: Option<GenerateStats>,
}

/// One entry of `ls`.
#[derive(Serialize)]
pub struct EntryView {
    path: String,
    r#type: &'static str,
    mode: String,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    /// Extended attributes: name → value in hex.
    xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<FileId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hardlink_group: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tree: Option<TreeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rdev: Option<u64>,
}

impl EntryView {
    /// The view of the entry at `path` (a file's size is read from its file object).
    pub fn new(repo: &Repo, path: String, kind: &EntryKind, meta: &Meta) -> osdeploy_store::Result<Self> {
        let mut view = EntryView {
            path,
            r#type: kind.type_name(),
            mode: format!("{:04o}", meta.mode),
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime.sec,
            mtime_nsec: meta.mtime.nsec,
            xattrs: meta
                .xattrs
                .iter()
                .map(|(n, v)| (escaped(n), v.iter().map(|b| format!("{b:02x}")).collect()))
                .collect(),
            size: None,
            file: None,
            hardlink_group: None,
            tree: None,
            target: None,
            rdev: None,
        };
        match kind {
            EntryKind::File { file, hardlink } => {
                view.size = Some(repo.file_object(file)?.size);
                view.file = Some(*file);
                view.hardlink_group = (*hardlink != 0).then_some(*hardlink);
            }
            EntryKind::Dir(tree) => view.tree = Some(*tree),
            EntryKind::Symlink(t) => view.target = Some(escaped(t)),
            EntryKind::CharDevice(d) | EntryKind::BlockDevice(d) => view.rdev = Some(*d),
            EntryKind::Fifo | EntryKind::Socket => {}
        }
        Ok(view)
    }
}

/// What `diff` found.
#[derive(Serialize)]
pub struct DiffView<'a> {
    /// The old commit.
    pub from: CommitId,
    /// The new commit.
    pub to: CommitId,
    /// The changed paths.
    pub changes: &'a [Change],
}

/// What `checkout` did.
#[derive(Serialize)]
pub struct CheckoutView<'a> {
    /// The commit checked out.
    pub commit: CommitId,
    /// Where.
    pub dir: &'a Path,
    /// How content was placed.
    pub method: String,
    /// The counts.
    pub stats: CheckoutStats,
    /// Seconds taken.
    pub seconds: f64,
    /// Whether owners were set.
    pub owners_preserved: bool,
}

/// What `prune` removed, or would remove.
#[derive(Serialize)]
pub struct PruneView {
    objects_removed: u64,
    objects_kept: u64,
    bytes_freed: u64,
    packs_deleted: u64,
    packs_rewritten: u64,
    delta_indexes_deleted: u64,
    delta_packs_deleted: u64,
    /// Nothing was removed.
    dry_run: bool,
}

impl PruneView {
    /// The view of a plan, carried out unless `dry_run`.
    pub fn new(plan: &osdeploy_store::prune::PrunePlan, dry_run: bool) -> Self {
        PruneView {
            objects_removed: plan.objects_removed,
            objects_kept: plan.objects_kept,
            bytes_freed: plan.bytes_freed,
            packs_deleted: plan.packs_deleted,
            packs_rewritten: plan.packs_rewritten,
            delta_indexes_deleted: plan.delta_indexes_deleted,
            delta_packs_deleted: plan.delta_packs_deleted,
            dry_run,
        }
    }
}
