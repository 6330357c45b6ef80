//! The repository commands: init, commit, log, show, ls, cat, diff, checkout, fsck, prune, refs.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use osdeploy_store::checkout::{CheckoutMethod, CheckoutOptions, checkout as store_checkout};
use osdeploy_store::chunker::ChunkerParams;
use osdeploy_store::commit::{CommitOptions, CommitProgress, commit as store_commit};
use osdeploy_store::history::{Ancestor, ancestry};
use osdeploy_store::name::{escaped, escaped_path, unescape};
use osdeploy_store::object::{Commit, Entry, EntryKind, Meta};
use osdeploy_store::repo::RepoMode;
use osdeploy_store::{Access, CommitId, RefName, Repo, tree};

use crate::delta_cmds;
use crate::output::{self, print_json};
use crate::reports;
use crate::views::{CheckoutView, CommitReport, CommitView, DiffView, EntryView, PruneView};

pub fn open(repo: &Path, access: Access) -> Result<Repo> {
    Ok(Repo::open(repo, access)?)
}

/// `init`.
pub fn init(repo: &Path, mode: RepoMode, level: i32, chunk_sizes: Option<&str>) -> Result<()> {
    let chunker = match chunk_sizes {
        None => ChunkerParams::default(),
        Some(text) => {
            let parts: Vec<u32> = text
                .split('/')
                .map(|p| p.parse::<u32>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--chunk-sizes {text:?}: expected MIN/AVG/MAX in bytes"))?;
            let [min, avg, max] = parts[..] else {
                bail!("--chunk-sizes {text:?}: expected three numbers MIN/AVG/MAX");
            };
            ChunkerParams { min, avg, max }
        }
    };
    Repo::init(repo, mode, level, chunker)?;
    println!("initialized {} repository at {}", mode.as_str(), repo.display());
    Ok(())
}

/// Shows commit progress: a bar on a terminal, a log line every few seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .expect("valid template"),
            );
            bar
        });
        Progress { bar, last_line: Instant::now() }
    }

    fn update(&mut self, p: &CommitProgress) {
        let dedup = dedup_percent(p.write.bytes_reused, p.write.bytes_new);
        let msg = format!("{}/{} files, dedup {dedup:.1}%", p.files, p.totals.files);
        if let Some(bar) = &self.bar {
            bar.set_length(p.totals.bytes);
            bar.set_position(p.bytes);
            bar.set_message(msg);
        } else if self.last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!("commit: {msg}, {} of {}", output::size(p.bytes), output::size(p.totals.bytes));
            self.last_line = Instant::now();
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn dedup_percent(reused: u64, new: u64) -> f64 {
    if reused + new == 0 { 0.0 } else { 100.0 * reused as f64 / (reused + new) as f64 }
}

/// What `commit` records besides the tree.
#[derive(clap::Args, Debug)]
pub struct CommitArgs {
    /// Branch to commit on (its current commit becomes the parent).
    #[arg(long, short)]
    pub branch: String,
    /// One-line subject.
    #[arg(long, short, default_value = "")]
    pub subject: String,
    /// Longer description.
    #[arg(long, default_value = "")]
    pub body: String,
    /// Release version.
    #[arg(long = "version", id = "release_version", value_name = "VERSION", default_value = "")]
    pub release_version: String,
    /// Extra metadata, KEY=VALUE (repeatable).
    #[arg(long = "add-metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Commit timestamp in seconds since the epoch (default: now, or SOURCE_DATE_EPOCH).
    #[arg(long)]
    pub timestamp: Option<i64>,
    /// Then generate per-file deltas to the new commit from its last K ancestors, as
    /// `delta generate --to COMMIT --last K` does (archive repositories).
    #[arg(long, value_name = "K")]
    pub deltas: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The directory to commit.
    pub dir: PathBuf,
}

/// `commit`.
pub fn commit(repo: &Path, args: CommitArgs) -> Result<()> {
    let CommitArgs { branch, subject, body, release_version: version, metadata, timestamp, deltas, json, dir } = args;
    let branch = RefName::new(branch)?;
    let mut meta = BTreeMap::new();
    for item in &metadata {
        let (k, v) = item.split_once('=').with_context(|| format!("--add-metadata {item:?}: expected KEY=VALUE"))?;
        meta.insert(k.to_string(), v.to_string());
    }
    let timestamp = match timestamp {
        Some(t) => Some(t),
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => Some(v.parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number"))?),
            Err(_) => None,
        },
    };
    let mut repo = open(repo, Access::Write)?;
    let options = CommitOptions { branch, version, subject, body, metadata: meta, timestamp };
    let started = Instant::now();
    let mut progress = Progress::new();
    let outcome = store_commit(&mut repo, &dir, &options, &mut |p| progress.update(p));
    progress.finish();
    let outcome = outcome.with_context(|| format!("committing {}", dir.display()))?;
    let s = outcome.stats;
    let seconds = started.elapsed().as_secs_f64();
    let deltas = match deltas {
        Some(last) if outcome.commit.parent.is_some() => Some(delta_cmds::generate_to(&repo, &[], outcome.id, last)?),
        _ => None,
    };
    if json {
        return print_json(&CommitReport {
            commit: outcome.id,
            branch: &options.branch,
            parent: outcome.commit.parent,
            tree: (&outcome.commit.stats).into(),
            stored: s,
            dedup_percent: dedup_percent(s.bytes_reused, s.bytes_new),
            seconds,
            deltas,
        });
    }
    println!("{}", outcome.id);
    eprintln!(
        "committed {} files ({}) on {} in {seconds:.1}s: {} new chunks ({} → {} stored), {} reused ({}), dedup {:.1}%",
        outcome.commit.stats.files,
        output::size(outcome.commit.stats.bytes),
        options.branch,
        s.chunks_new,
        output::size(s.bytes_new),
        output::size(s.bytes_stored),
        s.chunks_reused,
        output::size(s.bytes_reused),
        dedup_percent(s.bytes_reused, s.bytes_new),
    );
    if let Some(stats) = &deltas {
        reports::print_generate(stats);
    }
    Ok(())
}

fn print_commit(id: &CommitId, c: &Commit) {
    println!("commit {id}");
    if let Some(p) = c.parent {
        println!("parent {p}");
    }
    println!("date    {}", output::date(c.timestamp));
    if !c.version.is_empty() {
        println!("version {}", c.version);
    }
    for (k, v) in &c.metadata {
        println!("{k}: {v}");
    }
    println!(
        "tree    {} files, {} dirs, {} symlinks, {} special, {}",
        c.stats.files,
        c.stats.dirs,
        c.stats.symlinks,
        c.stats.specials,
        output::size(c.stats.bytes)
    );
    println!();
    if !c.subject.is_empty() {
        println!("    {}", c.subject);
    }
    for line in c.body.lines() {
        println!("    {line}");
    }
}

/// `log`.
pub fn log(repo: &Path, spec: &str, json: bool) -> Result<()> {
    let repo = open(repo, Access::Read)?;
    let mut entries = Vec::new();
    for ancestor in ancestry(&repo, repo.resolve(spec)?) {
        match ancestor? {
            Ancestor::Held(id, c) if json => entries.push(CommitView::new(id, *c)),
            Ancestor::Held(id, c) => {
                print_commit(&id, &c);
                println!();
            }
            Ancestor::Missing(id) if !json => {
                println!("(history continues with {id}, which this repository does not hold)")
            }
            Ancestor::Missing(_) => {}
        }
    }
    if json {
        print_json(&entries)?;
    }
    Ok(())
}

/// `show`.
pub fn show(repo: &Path, spec: &str, json: bool) -> Result<()> {
    let repo = open(repo, Access::Read)?;
    let id = repo.resolve(spec)?;
    let c = repo.commit_object(&id)?;
    if json {
        return print_json(&CommitView::new(id, c));
    }
    print_commit(&id, &c);
    Ok(())
}

fn entry_line(repo: &Repo, path: &str, kind: &EntryKind, meta: &Meta) -> Result<String> {
    let size = match kind {
        EntryKind::File { file, .. } => repo.file_object(file)?.size.to_string(),
        EntryKind::CharDevice(d) | EntryKind::BlockDevice(d) => {
            format!("{},{}", rustix::fs::major(*d), rustix::fs::minor(*d))
        }
        _ => "0".into(),
    };
    let target = match kind {
        EntryKind::Symlink(t) => format!(" -> {}", escaped(t)),
        _ => String::new(),
    };
    Ok(format!(
        "{} {:>5} {:>5} {:>10} {} {path}{target}",
        output::mode_string(kind, meta),
        meta.uid,
        meta.gid,
        size,
        output::date(meta.mtime.sec)
    ))
}

/// The path `arg` names in a commit: the argument's bytes as the shell gave them, or, when no such
/// path exists, the bytes of the escaped form `ls` prints (so that a printed name can be pasted).
fn named_path(repo: &Repo, id: &CommitId, commit: &Commit, arg: &OsStr) -> Vec<u8> {
    let given = arg.as_bytes();
    match unescape(given) {
        Some(unescaped)
            if unescaped != given
                && tree::lookup(repo, id, commit, given).is_err()
                && tree::lookup(repo, id, commit, &unescaped).is_ok() =>
        {
            unescaped
        }
        _ => given.to_vec(),
    }
}

/// `ls`.
pub fn ls(repo: &Path, spec: &str, path: &OsStr, recursive: bool, json: bool) -> Result<()> {
    let repo = open(repo, Access::Read)?;
    let id = repo.resolve(spec)?;
    let c = repo.commit_object(&id)?;
    let path = named_path(&repo, &id, &c, path);
    let (meta, kind) = tree::lookup(&repo, &id, &c, &path)?;
    let base: PathBuf = tree::components(&path).into_iter().map(OsStr::from_bytes).collect();
    let mut rows: Vec<(PathBuf, EntryKind, Meta)> = Vec::new();
    match &kind {
        EntryKind::Dir(dir) if recursive => {
            tree::walk(&repo, dir, &mut |rel, e: &Entry| {
                rows.push((base.join(rel), e.kind.clone(), e.meta.clone()));
                Ok(())
            })?;
        }
        EntryKind::Dir(dir) => {
            for e in repo.tree(dir)?.entries {
                rows.push((base.join(OsStr::from_bytes(&e.name)), e.kind, e.meta));
            }
        }
        _ => rows.push((base, kind.clone(), meta)),
    }
    if json {
        let views = rows
            .into_iter()
            .map(|(path, kind, meta)| EntryView::new(&repo, escaped_path(&path), &kind, &meta))
            .collect::<Result<Vec<_>, _>>()?;
        return print_json(&views);
    }
    let mut out = std::io::stdout().lock();
    for (p, k, m) in &rows {
        writeln!(out, "{}", entry_line(&repo, &escaped_path(p), k, m)?)?;
    }
    Ok(())
}

/// `cat`.
pub fn cat(repo: &Path, spec: &str, path: &OsStr) -> Result<()> {
    let repo = open(repo, Access::Read)?;
    let id = repo.resolve(spec)?;
    let c = repo.commit_object(&id)?;
    let path = named_path(&repo, &id, &c, path);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    tree::write_file(&repo, &id, &c, &path, &mut out)?;
    out.flush()?;
    Ok(())
}

/// `diff`.
pub fn diff(repo: &Path, a: &str, b: &str, json: bool) -> Result<()> {
    let repo = open(repo, Access::Read)?;
    let (ia, ib) = (repo.resolve(a)?, repo.resolve(b)?);
    let (ca, cb) = (repo.commit_object(&ia)?, repo.commit_object(&ib)?);
    let changes = osdeploy_store::diff::diff_commits(&repo, &ca, &cb)?;
    if json {
        return print_json(&DiffView { from: ia, to: ib, changes: &changes });
    }
    let mut out = std::io::stdout().lock();
    for c in &changes {
        let mark = match c.change {
            osdeploy_store::diff::ChangeKind::Added => "A",
            osdeploy_store::diff::ChangeKind::Removed => "D",
            osdeploy_store::diff::ChangeKind::Modified => "M",
        };
        let what = if c.what.is_empty() { String::new() } else { format!("  ({})", c.what) };
        writeln!(out, "{mark}  /{}{what}", c.path)?;
    }
    Ok(())
}

/// `checkout`.
pub fn checkout(repo: &Path, spec: &str, dir: &Path, reflink: bool, json: bool) -> Result<()> {
    let repo = open(repo, Access::Read)?;
    let id = repo.resolve(spec)?;
    let options = CheckoutOptions { reflink, ..Default::default() };
    let started = Instant::now();
    let stats = store_checkout(&repo, &id, dir, options)
        .with_context(|| format!("checking out {id} into {}", dir.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        return print_json(&CheckoutView {
            commit: id,
            dir,
            method: stats.method(),
            stats,
            seconds,
            owners_preserved: options.preserve_owner,
        });
    }
    let how = match stats.methods().as_slice() {
        [CheckoutMethod::Reflink] => "reflinked (FICLONE, no data copied)".to_string(),
        [CheckoutMethod::Copy] => "copied (this filesystem cannot share extents with the repository)".to_string(),
        [CheckoutMethod::Decompress] => "written from compressed chunks (archive repository)".to_string(),
        _ => format!("placed by {}", stats.method()),
    };
    println!(
        "checked out {id} into {} in {seconds:.2}s: {} files {how}, {} hardlinks, {} dirs, {} symlinks, {} special, {}",
        dir.display(),
        stats.files,
        stats.hardlinks,
        stats.dirs,
        stats.symlinks,
        stats.specials,
        output::size(stats.bytes)
    );
    if stats.copied > 0 && stats.reflinked > 0 {
        println!("note: {} files reflinked, {} copied", stats.reflinked, stats.copied);
    }
    if !options.preserve_owner {
        println!("note: not running as root: ownership and non-user xattrs were not applied");
    }
    Ok(())
}

/// `fsck`.
pub fn fsck(repo: &Path, json: bool) -> Result<()> {
    let repo = open(repo, Access::Read)?;
    let report = osdeploy_store::fsck::fsck(&repo)?;
    if json {
        print_json(&report)?;
    } else {
        for w in &report.warnings {
            println!("warning: {w}");
        }
        for e in &report.errors {
            println!("error: {e}");
        }
        println!(
            "fsck: {} objects ({}) checked, {} commits reachable, {} errors, {} warnings",
            report.objects_checked,
            output::size(report.bytes_checked),
            report.commits,
            report.errors.len(),
            report.warnings.len()
        );
    }
    if !report.errors.is_empty() {
        bail!(
            "the repository at {} is damaged: {} errors (first: {})",
            repo.path().display(),
            report.errors.len(),
            report.errors[0]
        );
    }
    Ok(())
}

/// `prune` and `prune --dry-run`.
pub fn prune(repo: &Path, dry_run: bool, json: bool) -> Result<()> {
    let mut repo = open(repo, if dry_run { Access::Read } else { Access::Prune })?;
    let plan = osdeploy_store::prune::plan(&repo)?;
    let view = PruneView::new(&plan, dry_run);
    let mut line = format!(
        "{} objects removed, {} kept, {} freed, {} packs deleted, {} rewritten",
        plan.objects_removed,
        plan.objects_kept,
        output::size(plan.bytes_freed),
        plan.packs_deleted,
        plan.packs_rewritten
    );
    if plan.delta_indexes_deleted + plan.delta_packs_deleted > 0 {
        line += &format!(
            ", {} delta indexes and {} delta packs deleted",
            plan.delta_indexes_deleted, plan.delta_packs_deleted
        );
    }
    if !dry_run {
        osdeploy_store::prune::execute(&mut repo, plan)?;
    }
    if json {
        return print_json(&view);
    }
    println!("prune{}: {line}", if dry_run { " (dry run: nothing removed)" } else { "" });
    Ok(())
}

/// `refs`.
pub fn refs(repo: &Path, json: bool) -> Result<()> {
    let repo = open(repo, Access::Read)?;
    let refs = repo.refs()?;
    if json {
        return print_json(&refs);
    }
    for (name, id) in refs {
        println!("{id} {name}");
    }
    Ok(())
}
