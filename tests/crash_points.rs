//! Crash consistency through the real `osdeploy` binary: a commit (archive and bare) or a prune
//! aborted at every named crash point (`OSDEPLOY_CRASH_AT`), and commits killed with SIGKILL at
//! arbitrary instants. After each interruption fsck must be clean, refs unchanged, the old commit
//! must still check out, and the rerun must complete with the same result a clean run gives.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

const SIGKILL: i32 = 9;
const SIGABRT: i32 = 6;
/// Timestamps of the first and second commit (fixed, so that reruns are comparable).
const T1: i64 = 1_700_000_000;
const T2: i64 = 1_700_000_600;

/// The crash points a commit meets in each mode, in the order it meets them.
const ARCHIVE_COMMIT_POINTS: [&str; 4] =
    ["commit:before-finish", "archive:before-sync", "archive:between-pack-and-index", "commit:before-ref"];
const BARE_COMMIT_POINTS: [&str; 4] =
    ["commit:before-finish", "bare:before-sync", "bare:before-index", "commit:before-ref"];
const PRUNE_POINTS: [&str; 1] = ["prune:before-delete"];
/// The crash points of the transport, tested where pulls and mirrors run against real servers:
/// `tests/transport.rs` (a_crashed_pull_resumes_without_fetching_twice) and `tests/mirror.rs`
/// (a_mirror_aborted_at_each_crash_point_stays_consistent_and_a_rerun_completes).
const TRANSPORT_POINTS: [&str; 7] = [
    "pull:before-store",
    "pull:after-assembly",
    "pull:before-ref",
    "mirror:after-download",
    "mirror:between-pack-and-index",
    "mirror:before-refs",
    "mirror:between-signature-and-summary",
];

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Deterministic pseudo-random bytes (xorshift64, eight bytes a step: fast also unoptimized).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    data
}

fn write_bytes(path: &Path, len: usize, seed: u64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, random_bytes(len, seed)).unwrap();
}

fn init(repo: &Path, mode: &str) {
    ok(osdeploy(repo).args(["init", "--mode", mode]));
}

fn commit_cmd(repo: &Path, branch: &str, dir: &Path, version: &str, timestamp: i64) -> Command {
    let mut cmd = osdeploy(repo);
    cmd.args(["commit", "--branch", branch, "--version", version, "--subject", "crash test", "--json"])
        .arg("--timestamp")
        .arg(timestamp.to_string())
        .arg(dir);
    cmd
}

/// Commits and returns the JSON report.
fn commit(repo: &Path, branch: &str, dir: &Path, version: &str, timestamp: i64) -> Value {
    json(&ok(&mut commit_cmd(repo, branch, dir, version, timestamp)))
}

fn id_of(report: &Value) -> String {
    report["commit"].as_str().unwrap_or_else(|| panic!("no commit id in {report}")).to_string()
}

/// Runs `cmd` with `OSDEPLOY_CRASH_AT=point` (in `cwd`, where a core file would land) and asserts
/// that it died of SIGABRT at that point.
fn abort_at(cmd: &mut Command, point: &str, cwd: &Path) {
    let out = cmd.env("OSDEPLOY_CRASH_AT", point).current_dir(cwd).output().expect("spawn osdeploy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(SIGABRT),
        "{cmd:?} with OSDEPLOY_CRASH_AT={point} did not abort: {:?}\nstderr: {stderr}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains(&format!("crash point {point}")), "stderr does not name the crash point {point}: {stderr}");
}

/// Runs `fsck --json`, asserts it found no errors, returns its report.
fn fsck_clean(repo: &Path, context: &str) -> Value {
    let out = osdeploy(repo).args(["fsck", "--json"]).output().expect("spawn osdeploy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.trim().is_empty(), "{context}: fsck printed no report ({:?}): {stderr}", out.status);
    let report = json(&stdout);
    assert!(
        report["errors"].as_array().is_some_and(|e| e.is_empty()),
        "{context}: fsck found errors: {report:#}\n{stderr}"
    );
    assert!(out.status.success(), "{context}: fsck failed without listing errors: {stderr}");
    report
}

/// `fsck_clean`, and no warnings either (nothing left over).
fn fsck_spotless(repo: &Path, context: &str) -> Value {
    let report = fsck_clean(repo, context);
    assert!(report["warnings"].as_array().is_some_and(|w| w.is_empty()), "{context}: fsck warnings: {report:#}");
    report
}

fn objects_checked(report: &Value) -> u64 {
    report["objects_checked"].as_u64().unwrap_or_else(|| panic!("no objects_checked in {report}"))
}

fn ref_of(repo: &Path, branch: &str) -> Option<String> {
    let refs = json(&ok(osdeploy(repo).args(["refs", "--json"])));
    refs.get(branch).map(|v| v.as_str().unwrap().to_string())
}

/// Points `branch` at `id` by writing the ref file, as a branch copy would.
fn set_ref(repo: &Path, branch: &str, id: &str) {
    fs::write(repo.join("refs/heads").join(branch), format!("{id}\n")).unwrap();
}

/// Checks `spec` out into the new directory `out` and compares it with `expected`.
fn assert_checks_out(repo: &Path, spec: &str, expected: &Path, out: &Path) {
    ok(osdeploy(repo).args(["checkout", spec]).arg(out));
    assert_same_tree(expected, out);
    fs::remove_dir_all(out).unwrap();
}

/// Stems of the files with extension `ext` in `dir`.
fn stems(dir: &Path, ext: &str) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Regular files below `dir`, recursively.
fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            n += count_files(&entry.path());
        } else {
            n += 1;
        }
    }
    n
}

/// Archive mode: the summary names every indexed pack and every ref, as they are on disk.
fn assert_summary_current(repo: &Path, context: &str) {
    let summary = json(&fs::read_to_string(repo.join("summary")).unwrap());
    let listed: BTreeSet<String> =
        summary["packs"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, stems(&repo.join("packs"), "idx"), "{context}: summary packs: {summary:#}");
    let refs = json(&ok(osdeploy(repo).args(["refs", "--json"])));
    let summary_refs: serde_json::Map<String, Value> =
        summary["refs"].as_object().unwrap().iter().map(|(name, r)| (name.clone(), r["commit"].clone())).collect();
    assert_eq!(Value::Object(summary_refs), refs, "{context}: summary refs");
}

/// The first tree: every kind of entry and metadata, plus a few MiB of random data (many chunks).
fn build_v1(src: &Path) {
    make_sample_tree(src);
    for i in 0..4u64 {
        write_bytes(&src.join(format!("opt/data/r{i}")), (1 << 20) + 4096 * i as usize, 100 + i);
    }
}

/// A copy of `v1` with the changes of an update: part of a (hardlinked) large file rewritten, a
/// file replaced, one removed, one added, a new directory.
fn build_v2(v1: &Path, v2: &Path) {
    sh("rsync", &["-aHAX", "--numeric-ids", &format!("{}/", v1.display()), &format!("{}/", v2.display())]);
    let big = fs::OpenOptions::new().write(true).open(v2.join("usr/bin/big")).unwrap();
    big.write_all_at(&random_bytes(64 << 10, 7), 1 << 20).unwrap();
    drop(big);
    fs::remove_file(v2.join("opt/data/r0")).unwrap();
    write_bytes(&v2.join("opt/data/r1"), 1 << 20, 201);
    write_bytes(&v2.join("opt/data/new"), 2 << 20, 202);
    fs::write(v2.join("etc/os-release"), "NAME=osdeploy-sample\nVERSION=2\n").unwrap();
    fs::create_dir_all(v2.join("var/lib/app")).unwrap();
    fs::write(v2.join("var/lib/app/state"), "v2\n").unwrap();
}

/// v1 committed on main, then the commit of v2 aborted at `point`; then the checks of the crash
/// contract, the rerun, and determinism against the rerun itself and against a clean repository.
fn commit_aborted_at(mode: &str, point: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (src1, src2, repo, out) = (t.join("v1"), t.join("v2"), t.join("repo"), t.join("out"));
    build_v1(&src1);
    build_v2(&src1, &src2);
    init(&repo, mode);
    let v1 = id_of(&commit(&repo, "main", &src1, "1", T1));
    let before = fsck_spotless(&repo, "after v1");
    let files_before = if mode == "bare" { count_files(&repo.join("objects")) } else { 0 };

    abort_at(&mut commit_cmd(&repo, "main", &src2, "2", T2), point, t);
    let ctx = format!("{mode}, commit aborted at {point}");
    let after = fsck_clean(&repo, &ctx);
    assert_eq!(ref_of(&repo, "main").as_deref(), Some(v1.as_str()), "{ctx}: main moved");
    // What the crash left: nothing is visible before the objects are published; everything is
    // (unreferenced) once they are.
    if point == "commit:before-ref" {
        assert!(objects_checked(&after) > objects_checked(&before), "{ctx}: objects not published: {after}");
    } else {
        assert_eq!(objects_checked(&after), objects_checked(&before), "{ctx}: objects visible before publication");
    }
    match (mode, point) {
        ("archive", "archive:between-pack-and-index") => {
            let orphans: Vec<_> =
                stems(&repo.join("packs"), "pack").difference(&stems(&repo.join("packs"), "idx")).cloned().collect();
            assert_eq!(orphans.len(), 1, "{ctx}: expected one published pack without its index: {orphans:?}");
            let warnings = after["warnings"].to_string();
            assert!(warnings.contains("has no index"), "{ctx}: fsck does not warn about the orphan pack: {after}");
        }
        ("archive", "commit:before-finish" | "archive:before-sync") => {
            assert!(count_files(&repo.join("tmp")) > 0, "{ctx}: the transaction left nothing in tmp/");
        }
        ("bare", "commit:before-finish" | "bare:before-sync" | "bare:before-index") => {
            assert!(count_files(&repo.join("objects")) > files_before, "{ctx}: no content written before the crash");
        }
        _ => {}
    }
    if mode == "archive" {
        let summary = json(&fs::read_to_string(repo.join("summary")).unwrap());
        assert_eq!(summary["refs"]["main"]["commit"], v1.as_str(), "{ctx}: summary moved");
    }
    assert_checks_out(&repo, "main", &src1, &out);

    // The rerun completes and gives v2, on top of v1.
    let rerun = commit(&repo, "main", &src2, "2", T2);
    let v2 = id_of(&rerun);
    assert_eq!(rerun["parent"], v1.as_str(), "{ctx}: rerun: {rerun}");
    if point == "commit:before-ref" {
        // Everything was published before the crash: the rerun reuses it all.
        assert_eq!(rerun["stored"]["chunks_new"], 0, "{ctx}: rerun: {rerun}");
        assert_eq!(rerun["stored"]["metadata_new"], 0, "{ctx}: rerun: {rerun}");
    }
    fsck_clean(&repo, &format!("{ctx}, after the rerun"));
    assert_eq!(ref_of(&repo, "main").as_deref(), Some(v2.as_str()), "{ctx}: rerun did not move main");
    assert_checks_out(&repo, "main", &src2, &out);
    assert_checks_out(&repo, &v1, &src1, &out);
    if mode == "archive" {
        assert_summary_current(&repo, &format!("{ctx}, after the rerun"));
    }

    // Determinism: the same commit again (same parent, same --timestamp) is the same commit and
    // stores nothing; a repository that never crashed gives the same ids.
    set_ref(&repo, "again", &v1);
    let again = commit(&repo, "again", &src2, "2", T2);
    assert_eq!(id_of(&again), v2, "{ctx}: committing v2 again gave another id: {again}");
    assert_eq!(again["stored"]["chunks_new"], 0, "{ctx}: {again}");
    assert_eq!(again["stored"]["metadata_new"], 0, "{ctx}: {again}");
    let clean = t.join("clean");
    init(&clean, mode);
    assert_eq!(id_of(&commit(&clean, "main", &src1, "1", T1)), v1, "{ctx}: v1 differs in a clean repository");
    assert_eq!(id_of(&commit(&clean, "main", &src2, "2", T2)), v2, "{ctx}: v2 differs in a clean repository");

    // Prune removes whatever the crash left over; afterwards there is nothing more to remove.
    let pruned = json(&ok(osdeploy(&repo).args(["prune", "--json"])));
    let final_report = fsck_spotless(&repo, &format!("{ctx}, after prune ({pruned})"));
    assert_eq!(
        objects_checked(&final_report),
        objects_checked(&fsck_spotless(&clean, "clean repository")),
        "{ctx}: after prune the repository holds other objects than one that never crashed"
    );
    let dry = json(&ok(osdeploy(&repo).args(["prune", "--dry-run", "--json"])));
    assert_eq!((&dry["objects_removed"], &dry["bytes_freed"]), (&0.into(), &0.into()), "{ctx}: {dry}");
    assert_eq!(count_files(&repo.join("tmp")), 0, "{ctx}: tmp/ not emptied");
    if mode == "archive" {
        assert_eq!(stems(&repo.join("packs"), "pack"), stems(&repo.join("packs"), "idx"), "{ctx}: packs vs indexes");
        assert_summary_current(&repo, &format!("{ctx}, after prune"));
    }
    assert_checks_out(&repo, "main", &src2, &out);
}

#[test]
fn archive_commit_aborted_before_finish() {
    commit_aborted_at("archive", "commit:before-finish");
}

#[test]
fn archive_commit_aborted_before_sync() {
    commit_aborted_at("archive", "archive:before-sync");
}

#[test]
fn archive_commit_aborted_between_pack_and_index() {
    commit_aborted_at("archive", "archive:between-pack-and-index");
}

#[test]
fn archive_commit_aborted_before_ref() {
    commit_aborted_at("archive", "commit:before-ref");
}

#[test]
fn bare_commit_aborted_before_finish() {
    commit_aborted_at("bare", "commit:before-finish");
}

#[test]
fn bare_commit_aborted_before_sync() {
    commit_aborted_at("bare", "bare:before-sync");
}

#[test]
fn bare_commit_aborted_before_index() {
    commit_aborted_at("bare", "bare:before-index");
}

#[test]
fn bare_commit_aborted_before_ref() {
    commit_aborted_at("bare", "commit:before-ref");
}

/// Prune aborted after publishing the rewritten packs, before deleting the old ones. The branch
/// "other" is committed first so that its packs also hold objects main reuses: prune must rewrite
/// those packs (not only delete whole ones).
#[test]
fn archive_prune_aborted_before_delete() {
    let point = PRUNE_POINTS[0];
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (src1, src2, src3, repo, out) = (t.join("v1"), t.join("v2"), t.join("v3"), t.join("repo"), t.join("out"));
    build_v1(&src1);
    build_v2(&src1, &src2);
    sh("rsync", &["-aHAX", "--numeric-ids", &format!("{}/", src2.display()), &format!("{}/", src3.display())]);
    write_bytes(&src3.join("opt/data/only-in-v3"), 2 << 20, 300);
    init(&repo, "archive");
    commit(&repo, "other", &src2, "2", T1);
    let v1 = id_of(&commit(&repo, "main", &src1, "1", T1));
    commit(&repo, "other", &src3, "3", T2);
    fs::remove_file(repo.join("refs/heads/other")).unwrap();

    let dry = json(&ok(osdeploy(&repo).args(["prune", "--dry-run", "--json"])));
    let removable = dry["objects_removed"].as_u64().unwrap();
    assert!(removable > 0, "{dry}");
    assert!(dry["packs_rewritten"].as_u64().unwrap() >= 1, "the scenario must make prune rewrite a pack: {dry}");
    assert!(dry["packs_deleted"].as_u64().unwrap() >= 1, "the scenario must make prune delete a pack: {dry}");
    let packs_before = stems(&repo.join("packs"), "pack");

    abort_at(osdeploy(&repo).args(["prune", "--json"]), point, t);
    let ctx = format!("prune aborted at {point}");
    fsck_clean(&repo, &ctx);
    let packs_crashed = stems(&repo.join("packs"), "pack");
    assert!(packs_crashed.is_superset(&packs_before), "{ctx}: a pack was deleted before the crash point");
    assert_eq!(
        packs_crashed.len() as u64,
        packs_before.len() as u64 + dry["packs_rewritten"].as_u64().unwrap(),
        "{ctx}: the rewritten packs were not published before the crash point"
    );
    assert_eq!(ref_of(&repo, "main").as_deref(), Some(v1.as_str()), "{ctx}: main moved");
    assert_checks_out(&repo, "main", &src1, &out);

    let report = json(&ok(osdeploy(&repo).args(["prune", "--json"])));
    assert_eq!(report["objects_removed"].as_u64(), Some(removable), "{ctx}: rerun: {report} (dry run: {dry})");
    let fsck = fsck_spotless(&repo, &format!("{ctx}, after the rerun"));
    // Rewriting is deterministic: the rerun re-created the packs the crashed run had published
    // (no second copy of the live objects), and the repository holds exactly the live objects.
    let packs_final = stems(&repo.join("packs"), "pack");
    assert!(packs_final.is_subset(&packs_crashed), "{ctx}: the rerun wrote packs the crashed run had not");
    assert_eq!(objects_checked(&fsck), dry["objects_kept"].as_u64().unwrap(), "{ctx}: duplicate or lost objects");
    assert_eq!(packs_final, stems(&repo.join("packs"), "idx"), "{ctx}: packs vs indexes");
    assert_summary_current(&repo, &format!("{ctx}, after the rerun"));
    assert_eq!(ref_of(&repo, "main").as_deref(), Some(v1.as_str()), "{ctx}: main moved");
    assert_checks_out(&repo, "main", &src1, &out);
    let again = json(&ok(osdeploy(&repo).args(["prune", "--dry-run", "--json"])));
    assert_eq!(again["objects_removed"], 0, "{ctx}: {again}");
    assert_eq!((&again["packs_deleted"], &again["packs_rewritten"]), (&0.into(), &0.into()), "{ctx}: {again}");
}

/// Every crash point in the source of every crate is exercised by a test (above, where
/// [`TRANSPORT_POINTS`] says, in tests/deploy.rs for [`SWITCH_CRASH_POINTS`], in tests/boot.rs for
/// [`KERNEL_CRASH_POINTS`], in tests/deltas.rs
/// for [`DELTA_CRASH_POINTS`]).
#[test]
fn every_crash_point_is_tested() {
    fn scan(dir: &Path, found: &mut BTreeSet<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scan(&path, found);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("crash_point(\"") {
                    let rest = &text[i + "crash_point(\"".len()..];
                    found.insert(rest[..rest.find('"').unwrap()].to_string());
                }
            }
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut found = BTreeSet::new();
    for krate in ["store", "transport", "deploy-cli", "fuse-mount"] {
        scan(&workspace.join(krate), &mut found);
    }
    assert!(found.contains("switch:merged"), "the scan reaches the deploy library: {found:?}");
    let tested: BTreeSet<String> = ARCHIVE_COMMIT_POINTS
        .iter()
        .chain(&BARE_COMMIT_POINTS)
        .chain(&PRUNE_POINTS)
        .chain(&TRANSPORT_POINTS)
        .chain(&SWITCH_CRASH_POINTS)
        .chain(&KERNEL_CRASH_POINTS)
        .chain(&DELTA_CRASH_POINTS)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, tested, "crash points in the source vs. crash points tested");
}

/// A tree of about 200 MiB of random data in a few hundred files.
fn build_large_tree(root: &Path) {
    for i in 0..300u64 {
        let len = (256 << 10) + ((i * 7919) % 900) as usize * 1024;
        write_bytes(&root.join(format!("d{:02}/f{i:03}", i % 12)), len, 1000 + i);
    }
}

/// One attempt to kill a commit of `large` after `delay`: a fresh repository with a small first
/// commit, the large commit killed, the checks, the rerun. Returns the rerun's commit id and
/// duration, or `None` when the commit had already completed (the kill came too late).
fn kill_commit_after(
    mode: &str,
    small: &Path,
    large: &Path,
    repo: &Path,
    delay: Duration,
) -> Option<(String, Duration)> {
    init(repo, mode);
    let v1 = id_of(&commit(repo, "main", small, "1", T1));
    let ctx = format!("{mode}, commit killed after {delay:?}");
    let mut child = commit_cmd(repo, "main", large, "2", T2)
        .current_dir(repo.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn osdeploy");
    std::thread::sleep(delay);
    if let Some(status) = child.try_wait().unwrap() {
        assert!(status.success(), "{ctx}: the commit failed on its own: {status:?}");
        fsck_clean(repo, &ctx);
        return None;
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    if status.success() {
        // It completed between try_wait and kill.
        fsck_clean(repo, &ctx);
        return None;
    }
    assert_eq!(status.signal(), Some(SIGKILL), "{ctx}: {status:?}");
    let stored = if mode == "archive" { "packs" } else { "objects" };
    eprintln!(
        "{ctx}: left {} files in tmp/, {} in {stored}/",
        count_files(&repo.join("tmp")),
        count_files(&repo.join(stored))
    );
    fsck_clean(repo, &ctx);
    let now = ref_of(repo, "main");
    if now.as_deref() != Some(v1.as_str()) {
        // Killed after the ref write (while writing the summary or exiting): the commit had
        // completed, and fsck above found it whole. Not an interrupted commit; try earlier.
        eprintln!("{ctx}: the kill came after the ref write (main = {now:?})");
        return None;
    }
    if mode == "archive" {
        let summary = json(&fs::read_to_string(repo.join("summary")).unwrap());
        assert_eq!(summary["refs"]["main"]["commit"], v1.as_str(), "{ctx}: summary moved");
    }
    let out = repo.with_extension("out");
    assert_checks_out(repo, "main", small, &out);
    let started = Instant::now();
    let rerun = commit(repo, "main", large, "2", T2);
    let took = started.elapsed();
    assert_eq!(rerun["parent"], v1.as_str(), "{ctx}: rerun: {rerun}");
    let id = id_of(&rerun);
    fsck_clean(repo, &format!("{ctx}, after the rerun"));
    assert_eq!(ref_of(repo, "main").as_deref(), Some(id.as_str()), "{ctx}: rerun did not move main");
    // Prune clears whatever the killed commit left; then nothing is left over.
    ok(osdeploy(repo).args(["prune"]));
    fsck_spotless(repo, &format!("{ctx}, after the rerun and prune"));
    assert_eq!(count_files(&repo.join("tmp")), 0, "{ctx}: tmp/ not emptied");
    Some((id, took))
}

/// SIGKILL at a few instants of a ~200 MiB commit in each mode. The instants are fractions of the
/// duration of an uninterrupted commit measured first, so that they fall inside the commit on
/// fast and slow machines alike; a kill that comes too late is retried earlier. Every rerun must
/// give the uninterrupted commit's id, which with a clean fsck means the same content (the
/// checkout of whole trees after a crash is covered by the crash-point tests above).
#[test]
fn commit_killed_at_arbitrary_instants() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (small, large) = (t.join("small"), t.join("large"));
    write_bytes(&small.join("etc/hostname"), 100, 1);
    write_bytes(&small.join("usr/bin/tool"), 200 << 10, 2);
    build_large_tree(&large);
    // Flush the new tree now, so that the calibration commit's syncfs does not pay for it.
    sh("sync", &["-f", &large.display().to_string()]);
    let mut expected_id: Option<String> = None;
    for mode in ["archive", "bare"] {
        // Calibration: the same two commits, uninterrupted.
        let calib = t.join(format!("calibrate-{mode}"));
        init(&calib, mode);
        commit(&calib, "main", &small, "1", T1);
        let started = Instant::now();
        let reference = id_of(&commit(&calib, "main", &large, "2", T2));
        let mut full = started.elapsed();
        fs::remove_dir_all(&calib).unwrap();
        match &expected_id {
            Some(id) => assert_eq!(&reference, id, "{mode}: the commit id depends on the repository mode"),
            None => expected_id = Some(reference.clone()),
        }
        let fractions = [0.15, 0.45, 0.75];
        for (i, fraction) in fractions.iter().enumerate() {
            let mut delay = full.mul_f64(*fraction);
            let mut killed = false;
            for attempt in 0..6 {
                let repo = t.join(format!("{mode}-{i}-{attempt}"));
                let result = kill_commit_after(mode, &small, &large, &repo, delay);
                fs::remove_dir_all(&repo).unwrap();
                match result {
                    Some((id, took)) => {
                        assert_eq!(id, reference, "{mode}: the rerun after a kill after {delay:?} gave another commit");
                        full = full.min(took);
                        killed = true;
                        break;
                    }
                    None => {
                        eprintln!("{mode}: the commit completed within {delay:?}; retrying earlier");
                        delay /= 2;
                    }
                }
            }
            assert!(killed, "{mode}: the commit always completed before the kill (last delay {delay:?})");
        }
    }
}
