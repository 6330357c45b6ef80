//! Commit of a generated tree (3000 files of mixed sizes, see `generate_tree`) into a new archive
//! or bare repository, and checkout of that commit from either (CheckoutOptions without owner
//! preservation or sync; reflink where the temporary directory's filesystem can clone, copy
//! otherwise). Temporary directories follow TMPDIR; every repository and checkout is removed
//! outside the timed part, and dirty pages are flushed (syncfs) before every timed iteration.

use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use osdeploy_benches::{generate_tree, load_corpus};
use osdeploy_store::checkout::{CheckoutOptions, checkout};
use osdeploy_store::chunker::ChunkerParams;
use osdeploy_store::commit::{CommitOptions, commit};
use osdeploy_store::fsutil::syncfs;
use osdeploy_store::repo::DEFAULT_COMPRESSION_LEVEL;
use osdeploy_store::{CommitId, Repo, RepoMode};
use tempfile::TempDir;

const FILES: usize = 3000;
const OPTIONS: CheckoutOptions = CheckoutOptions { preserve_owner: false, reflink: true, sync: false, verify: false };

fn commit_options() -> CommitOptions {
    CommitOptions {
        version: "1".into(),
        timestamp: Some(0),
        ..CommitOptions::on("bench".parse().expect("a valid branch"))
    }
}

/// A new repository of `mode` in a new temporary directory.
fn new_repo(mode: RepoMode) -> (TempDir, Repo) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let repo = Repo::init(&dir.path().join("repo"), mode, DEFAULT_COMPRESSION_LEVEL, ChunkerParams::default())
        .expect("repository init");
    (dir, repo)
}

fn commit_into(repo: &mut Repo, source: &Path) -> CommitId {
    commit(repo, source, &commit_options(), &mut |_| {}).expect("commit").id
}

fn commit_checkout(c: &mut Criterion) {
    let corpus = load_corpus(16 << 20);
    let source = tempfile::tempdir().expect("temporary directory");
    let tree = generate_tree(source.path(), &corpus, FILES, 7).expect("generate the source tree");
    eprintln!(
        "generated tree: {} files, {} dirs, {} symlinks, {:.1} MiB",
        tree.files,
        tree.dirs,
        tree.symlinks,
        tree.bytes as f64 / (1 << 20) as f64
    );
    let mut group = c.benchmark_group("tree_3000_files");
    group.throughput(Throughput::Bytes(tree.bytes)).sample_size(10).sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    let modes = [("archive", RepoMode::Archive), ("bare", RepoMode::Bare)];
    for (name, mode) in modes {
        // A bare commit ends with syncfs, which would also flush whatever earlier iterations left dirty.
        group.measurement_time(Duration::from_secs(if mode == RepoMode::Bare { 30 } else { 4 }));
        group.bench_function(format!("commit_{name}"), |b| {
            b.iter_batched(
                || {
                    let fresh = new_repo(mode);
                    syncfs(fresh.0.path()).expect("syncfs");
                    fresh
                },
                |(dir, mut repo)| {
                    commit_into(&mut repo, source.path());
                    (dir, repo)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.measurement_time(Duration::from_secs(16));
    for (name, mode) in modes {
        let (_repo_dir, mut repo) = new_repo(mode);
        let id = commit_into(&mut repo, source.path());
        {
            let probe = tempfile::tempdir().expect("temporary directory");
            let stats = checkout(&repo, &id, &probe.path().join("out"), OPTIONS).expect("checkout");
            eprintln!("checkout from {name}: {} files, method {}", stats.files, stats.method());
        }
        group.bench_function(format!("checkout_{name}"), |b| {
            b.iter_batched(
                || {
                    let dest = tempfile::tempdir().expect("temporary directory");
                    syncfs(dest.path()).expect("syncfs");
                    dest
                },
                |dest| {
                    checkout(&repo, &id, &dest.path().join("out"), OPTIONS).expect("checkout");
                    dest
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, commit_checkout);
criterion_main!(benches);
