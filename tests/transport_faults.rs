//! Faults on the way from a real server (nginx) to `osdeploy pull`: error statuses, a failing
//! first URL, truncated, stalled and corrupted responses (injected by `support::fault_proxy`
//! in front of nginx), files missing or cut short on the server, a full disk on the node, and
//! SIGKILL at arbitrary points of a pull.
//!
//! After every failure: the error names the URL, pack or object and the problem; the node's ref
//! stays where it was (absent, or the old release); fsck is clean; and once the fault is gone a
//! rerun succeeds with a tree identical to the source. A killed pull resumes without fetching
//! what it had already verified.

use std::collections::HashMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::fault_proxy::{Fault, FaultProxy, Record, Rule};
use crate::support::*;
use serde_json::Value;

/// Rounds over all of a remote's URLs before a request is given up (transport/src/client.rs).
const ROUNDS: usize = 3;
/// Range requests a pull keeps in flight by default (`pull --in-flight`).
const IN_FLIGHT: usize = 4;
/// The largest coalesced Range request (`CoalesceOptions::default`, transport/src/plan.rs).
const MAX_REQUEST: u64 = 16 << 20;

/// An origin archive repository served by nginx, with release 1 committed on `stable`.
struct Origin {
    /// Everything of the test lives here (origin, nodes, checkouts, nginx's files).
    root: PathBuf,
    repo: PathBuf,
    v1: PathBuf,
    v2: PathBuf,
    nginx: Server,
    _tmp: tempfile::TempDir,
}

/// The packs a release added to the origin.
struct NewPacks {
    /// The data pack's id (the release's new chunks; the larger of the two).
    data: String,
}

impl NewPacks {
    /// The data pack's file name, to match its requests (and not its index's).
    fn data_pack(&self) -> String {
        format!("{}.pack", self.data)
    }
}

impl Origin {
    /// Release 1 is the sample tree (every kind of entry and metadata) plus `libs` libraries of
    /// `lib_size` pseudo-random (incompressible) bytes.
    fn new(libs: u64, lib_size: usize) -> Origin {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let (repo, v1, v2) = (root.join("origin"), root.join("v1"), root.join("v2"));
        make_sample_tree(&v1);
        fs::create_dir_all(v1.join("usr/lib")).unwrap();
        for i in 0..libs {
            write_random(&v1.join(format!("usr/lib/lib{i}.so")), lib_size, 100 + i);
        }
        ok(osdeploy(&repo).args(["init", "--mode", "archive"]));
        ok(osdeploy(&repo).args(["commit", "-b", "stable", "--version", "1"]).arg(&v1));
        let work = root.join("nginx");
        fs::create_dir_all(&work).unwrap();
        let nginx = nginx(&repo, &work);
        Origin { root, repo, v1, v2, nginx, _tmp: tmp }
    }

    /// The origin's packs: id → size.
    fn packs(&self) -> HashMap<String, u64> {
        fs::read_dir(self.repo.join("packs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "pack"))
            .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), fs::metadata(&p).unwrap().len()))
            .collect()
    }

    /// The pack file `id` on the server.
    fn pack_path(&self, id: &str) -> PathBuf {
        self.repo.join("packs").join(format!("{id}.pack"))
    }

    /// Commits release 2 (two libraries and os-release changed) on `stable`; returns its packs.
    fn commit_v2(&self) -> NewPacks {
        let before = self.packs();
        sh("cp", &["-a", &self.v1.display().to_string(), &self.v2.display().to_string()]);
        write_random(&self.v2.join("usr/lib/lib1.so"), 512 << 10, 901);
        write_random(&self.v2.join("usr/lib/lib5.so"), 512 << 10, 905);
        fs::write(self.v2.join("etc/os-release"), "NAME=osdeploy-sample\nVERSION=2\n").unwrap();
        ok(osdeploy(&self.repo).args(["commit", "-b", "stable", "--version", "2"]).arg(&self.v2));
        let mut new: Vec<(String, u64)> = self.packs().into_iter().filter(|(id, _)| !before.contains_key(id)).collect();
        new.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
        assert_eq!(new.len(), 2, "release 2 should add one data pack and one metadata pack: {new:?}");
        NewPacks { data: new[0].0.clone() }
    }

    /// The commit the origin's `stable` names.
    fn stable(&self) -> String {
        ref_named(&self.repo, "stable").expect("the origin has a stable branch")
    }

    /// A new bare node repository `name` with remote `origin` at `urls` (unsigned data accepted).
    fn node(&self, name: &str, urls: &[&str]) -> PathBuf {
        let node = self.root.join(name);
        ok(osdeploy(&node).args(["init", "--mode", "bare"]));
        set_urls(&node, urls);
        node
    }

    /// Asserts that `node`'s `origin/stable` checks out to exactly `tree`.
    fn assert_holds(&self, node: &Path, tree: &Path) {
        let out = tempfile::tempdir_in(&self.root).unwrap();
        let dest = out.path().join("co");
        ok(osdeploy(node).args(["checkout", "origin/stable"]).arg(&dest));
        assert_same_tree(tree, &dest);
    }
}

/// (Re)defines the node's remote `origin` with `urls`, in this order.
fn set_urls(node: &Path, urls: &[&str]) {
    ok(osdeploy(node).args(["remote", "add", "origin"]).args(urls).arg("--insecure"));
}

/// `osdeploy pull --json origin stable` on `node`; more arguments can be appended.
fn pull(node: &Path) -> Command {
    let mut cmd = osdeploy(node);
    cmd.args(["pull", "--json", "origin", "stable"]);
    cmd
}

/// Pulls successfully; returns the commit pulled.
fn pull_ok(node: &Path) -> String {
    let stats = json(&ok(&mut pull(node)));
    stats["commit"].as_str().expect("the pull names its commit").to_string()
}

/// Runs a pull that must fail; returns (and shows, for the test's output) its stderr.
fn failure(cmd: &mut Command) -> String {
    let err = fails(cmd);
    eprintln!("failed as expected: {err}");
    assert!(!err.contains('\x1b'), "colour codes in a log written to a pipe: {err}");
    err
}

/// The commit the ref `name` of `repo` names, if any.
fn ref_named(repo: &Path, name: &str) -> Option<String> {
    let refs = json(&ok(osdeploy(repo).args(["refs", "--json"])));
    refs.get(name).map(|v| v.as_str().expect("a commit id").to_string())
}

/// The commit the node's `origin/stable` names, if any.
fn stable_ref(node: &Path) -> Option<String> {
    ref_named(node, "origin/stable")
}

/// Asserts that the node's ref is `held` (None: absent) and that fsck finds nothing wrong.
fn assert_intact(node: &Path, held: Option<&str>, context: &str) {
    assert_eq!(stable_ref(node).as_deref(), held, "{context}: the ref origin/stable moved");
    let out = osdeploy(node).args(["fsck", "--json"]).output().unwrap();
    let report: Value = json(&String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success() && report["errors"].as_array().is_some_and(|e| e.is_empty()),
        "{context}: fsck found damage: {report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node that pulled release 1 through `urls`, then the origin's release 2: (node, release 1's
/// commit, release 2's packs).
fn node_at_v1_then_v2(o: &Origin, urls: &[&str]) -> (PathBuf, String, NewPacks) {
    let node = o.node("node", urls);
    let v1 = pull_ok(&node);
    o.assert_holds(&node, &o.v1);
    let packs = o.commit_v2();
    (node, v1, packs)
}

/// The pack requests among `log`.
fn pack_requests(log: &[Record]) -> Vec<&Record> {
    log.iter().filter(|r| r.path.ends_with(".pack")).collect()
}

/// How often each (path, Range) was requested.
fn attempts_per_range(log: &[Record]) -> HashMap<(String, Option<String>), usize> {
    let mut counts = HashMap::new();
    for r in pack_requests(log) {
        *counts.entry((r.path.clone(), r.range.clone())).or_default() += 1;
    }
    counts
}

/// Asserts that every request of `log` that got `fault` was repeated later and then answered
/// in full.
fn assert_retried(log: &[Record], fault: Fault) {
    let faulty: Vec<(usize, &Record)> = log.iter().enumerate().filter(|(_, r)| r.fault == Some(fault)).collect();
    assert!(!faulty.is_empty(), "no request got {fault:?}: {log:#?}");
    for (i, f) in faulty {
        assert!(
            log[i + 1..].iter().any(|r| r.path == f.path && r.range == f.range && r.fault.is_none() && r.complete),
            "{f:?} was not retried with success: {log:#?}"
        );
    }
}

/// True when `err` names a chunk by its full id ("chunk ID" or "chunk object ID").
fn names_a_chunk(err: &str) -> bool {
    ["chunk ", "chunk object "].iter().any(|prefix| {
        err.match_indices(prefix).any(|(at, m)| {
            let id = &err[at + m.len()..];
            id.len() >= 64 && id[..64].bytes().all(|b| b.is_ascii_hexdigit())
        })
    })
}

#[test]
fn transient_503s_on_packs_are_retried() {
    let o = Origin::new(8, 512 << 10);
    let proxy = FaultProxy::start(&o.nginx.url);
    let (node, _, _) = node_at_v1_then_v2(&o, &[&proxy.url]);
    // The same request failing twice is within the bounded rounds.
    proxy.set_rules(vec![Rule::first(2, ".pack", Fault::Status(503))]);
    let start = proxy.log().len();
    let commit = pull_ok(&node);
    proxy.wait_idle();
    let log = &proxy.log()[start..];
    assert_eq!(log.iter().filter(|r| r.status == 503).count(), 2, "{log:#?}");
    assert_retried(log, Fault::Status(503));
    assert_eq!(commit, o.stable());
    assert_intact(&node, Some(&commit), "after the retried pull");
    o.assert_holds(&node, &o.v2);
}

#[test]
fn persistent_errors_on_packs_fail_after_bounded_retries() {
    let o = Origin::new(8, 512 << 10);
    let proxy = FaultProxy::start(&o.nginx.url);
    let (node, v1, _) = node_at_v1_then_v2(&o, &[&proxy.url]);
    for code in [500, 503] {
        proxy.set_rules(vec![Rule::always(".pack", Fault::Status(code))]);
        let start = proxy.log().len();
        let err = failure(&mut pull(&node));
        proxy.wait_idle();
        let log = &proxy.log()[start..];
        assert!(
            err.contains(&format!("HTTP {code}")) && err.contains(&format!("{}/packs/", proxy.url)),
            "HTTP {code}: the error should give the status and the pack's URL: {err}"
        );
        let attempts = attempts_per_range(log);
        assert_eq!(attempts.values().max(), Some(&ROUNDS), "HTTP {code}: {ROUNDS} rounds per request: {log:#?}");
        let total: usize = attempts.values().sum();
        assert!(total <= ROUNDS * IN_FLIGHT, "HTTP {code}: {total} pack requests, unbounded retries: {log:#?}");
        assert_intact(&node, Some(&v1), &format!("after HTTP {code} on every pack"));
    }
    proxy.clear_rules();
    let commit = pull_ok(&node);
    assert_eq!(commit, o.stable());
    assert_intact(&node, Some(&commit), "after the healthy pull");
    o.assert_holds(&node, &o.v2);
}

#[test]
fn a_pack_missing_on_the_server_is_named() {
    let o = Origin::new(8, 512 << 10);
    let (node, v1, packs) = node_at_v1_then_v2(&o, &[&o.nginx.url]);
    let (path, aside) = (o.pack_path(&packs.data), o.root.join("aside.pack"));
    fs::rename(&path, &aside).unwrap();
    let err = failure(&mut pull(&node));
    assert!(
        err.contains(&format!("{}/packs/{}.pack", o.nginx.url, packs.data)) && err.contains("404"),
        "the error should name the missing pack's URL and the 404: {err}"
    );
    assert_intact(&node, Some(&v1), "after a 404 on a pack");
    fs::rename(&aside, &path).unwrap();
    let commit = pull_ok(&node);
    assert_eq!(commit, o.stable());
    assert_intact(&node, Some(&commit), "after the pack came back");
    o.assert_holds(&node, &o.v2);
}

#[test]
fn a_failing_first_url_fails_over_to_the_next() {
    let o = Origin::new(8, 512 << 10);
    let proxy = FaultProxy::start(&o.nginx.url);
    proxy.set_rules(vec![Rule::always("/", Fault::Status(503))]);
    let (node, _, _) = node_at_v1_then_v2(&o, &[&proxy.url, &o.nginx.url]);
    let log = proxy.log();
    assert!(log.iter().all(|r| r.status == 503), "{log:#?}");
    for what in ["/summary", ".idx", ".pack"] {
        assert!(log.iter().any(|r| r.path.contains(what)), "the first URL was not tried for {what}: {log:#?}");
    }
    // Release 2 through a closed port, then the failing proxy, then nginx.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    set_urls(&node, &[&format!("http://{closed}"), &proxy.url, &o.nginx.url]);
    let commit = pull_ok(&node);
    assert_eq!(commit, o.stable());
    assert_intact(&node, Some(&commit), "after failing over");
    o.assert_holds(&node, &o.v2);
}

#[test]
fn truncated_responses_are_retried_and_reported() {
    let o = Origin::new(8, 512 << 10);
    let proxy = FaultProxy::start(&o.nginx.url);
    let (node, v1, packs) = node_at_v1_then_v2(&o, &[&proxy.url]);
    let cut = Fault::Truncate(1000);
    // every response cut short: a clear error
    proxy.set_rules(vec![Rule::always(&packs.data_pack(), cut)]);
    let err = failure(&mut pull(&node));
    let problem = ["truncat", "incomplete", "end of file", "before message length", "closed"];
    assert!(
        err.contains(&format!("{}/packs/{}.pack", proxy.url, packs.data))
            && problem.iter().any(|p| err.to_lowercase().contains(p)),
        "the error should name the pack's URL and say that the response was cut short: {err}"
    );
    assert_intact(&node, Some(&v1), "after truncated responses");
    // one response cut short: retried
    proxy.set_rules(vec![Rule::first(1, &packs.data_pack(), cut)]);
    let start = proxy.log().len();
    let commit = pull_ok(&node);
    proxy.wait_idle();
    assert_retried(&proxy.log()[start..], cut);
    assert_eq!(commit, o.stable());
    assert_intact(&node, Some(&commit), "after a truncated response was retried");
    o.assert_holds(&node, &o.v2);
}

#[test]
fn stalled_connections_time_out() {
    let help = ok(Command::new(env!("CARGO_BIN_EXE_osdeploy")).args(["pull", "--help"]));
    assert!(help.contains("--timeout"), "osdeploy pull has no --timeout option:\n{help}");
    let o = Origin::new(8, 512 << 10);
    let proxy = FaultProxy::start(&o.nginx.url);
    let (node, v1, packs) = node_at_v1_then_v2(&o, &[&proxy.url]);
    // a server that accepts and never answers
    proxy.set_rules(vec![Rule::always(&packs.data_pack(), Fault::Stall)]);
    let start = proxy.log().len();
    let err = failure(pull(&node).args(["--timeout", "2"]));
    proxy.wait_idle();
    assert!(
        err.contains(&format!("{}/packs/{}.pack", proxy.url, packs.data))
            && (err.contains("timed out") || err.contains("timeout")),
        "the error should name the pack's URL and the timeout: {err}"
    );
    let attempts = attempts_per_range(&proxy.log()[start..]);
    assert!(attempts.values().all(|n| *n <= ROUNDS), "{attempts:?}");
    assert_intact(&node, Some(&v1), "after stalled requests");
    // a response that stops half-way, once: abandoned after the timeout, then retried
    let half = Fault::StallAfter(64 << 10);
    proxy.set_rules(vec![Rule::first(1, &packs.data_pack(), half)]);
    let start = proxy.log().len();
    let out = pull(&node).args(["--timeout", "2"]).output().unwrap();
    assert!(out.status.success(), "a stalled response was not retried: {}", String::from_utf8_lossy(&out.stderr));
    proxy.wait_idle();
    assert_retried(&proxy.log()[start..], half);
    let commit = o.stable();
    assert_intact(&node, Some(&commit), "after a stalled response was retried");
    o.assert_holds(&node, &o.v2);
}

#[test]
fn a_pack_shorter_than_its_index_says_is_named() {
    let o = Origin::new(8, 512 << 10);
    let (node, v1, packs) = node_at_v1_then_v2(&o, &[&o.nginx.url]);
    let path = o.pack_path(&packs.data);
    let whole = fs::read(&path).unwrap();
    fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    // nginx answers a range past the end with 416, one that crosses it with a short 206
    let err = failure(&mut pull(&node));
    assert!(
        err.contains(&format!("packs/{}.pack", packs.data))
            && (err.contains("416") || err.contains("truncated") || err.contains("bytes instead of")),
        "the error should name the pack and say that it is too short: {err}"
    );
    assert_intact(&node, Some(&v1), "after a short pack");
    fs::write(&path, &whole).unwrap();
    let commit = pull_ok(&node);
    assert_eq!(commit, o.stable());
    assert_intact(&node, Some(&commit), "after the pack was repaired");
    o.assert_holds(&node, &o.v2);
}

#[test]
fn a_byte_flipped_in_transit_is_refused_and_the_next_url_used() {
    let o = Origin::new(8, 512 << 10);
    let proxy = FaultProxy::start(&o.nginx.url);
    let (node, v1, packs) = node_at_v1_then_v2(&o, &[&proxy.url]);
    proxy.set_rules(vec![Rule::always(&packs.data_pack(), Fault::FlipByte)]);
    let pack_url = format!("{}/packs/{}.pack", proxy.url, packs.data);
    // only the corrupting URL: refused, naming the chunk and where it came from
    let err = failure(&mut pull(&node));
    assert!(
        names_a_chunk(&err) && (err.contains("hashes to") || err.contains("zstd") || err.contains("corrupt")),
        "the error should name the corrupt chunk: {err}"
    );
    assert!(err.contains(&proxy.url), "the error should name the URL that sent corrupt data: {err}");
    assert_intact(&node, Some(&v1), "after corrupt data");
    // a healthy second URL: the corrupt answer counts as a failed request, with a warning
    set_urls(&node, &[&proxy.url, &o.nginx.url]);
    let out = pull(&node).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the second URL was not tried after corrupt data: {stderr}");
    assert!(stderr.contains(&pack_url), "no warning names the URL that sent corrupt data: {stderr}");
    let commit = o.stable();
    assert_intact(&node, Some(&commit), "after failing over from corrupt data");
    o.assert_holds(&node, &o.v2);
}

#[test]
fn an_index_corrupted_in_transit_is_not_kept() {
    let o = Origin::new(8, 512 << 10);
    let proxy = FaultProxy::start(&o.nginx.url);
    let (node, v1, packs) = node_at_v1_then_v2(&o, &[&proxy.url]);
    // The last byte of the first entry's object id (a 52-byte header, then 50-byte entries
    // starting with the id; docs/format.md §3): the index still decodes and stays sorted, but
    // names an object the pack does not hold, and no longer the one it does.
    let index = format!("{}.idx", packs.data);
    proxy.set_rules(vec![Rule::first(1, &index, Fault::FlipByteAt(52 + 31))]);
    let out = pull(&node).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("with a corrupt index: {}: {stderr}", out.status);
    if !out.status.success() {
        assert!(
            stderr.contains(&packs.data) || names_a_chunk(&stderr),
            "the error should name the index or the object it lacks: {stderr}"
        );
        assert_intact(&node, Some(&v1), "after a corrupt index");
    }
    // The fault is gone: the node must not keep using the corrupt copy it cached.
    proxy.clear_rules();
    let out = pull(&node).output().unwrap();
    assert!(
        out.status.success(),
        "the pull still fails once the server sends a good index (a corrupt index was cached?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let commit = o.stable();
    assert_intact(&node, Some(&commit), "after the good index");
    o.assert_holds(&node, &o.v2);
}

/// Free bytes on the filesystem holding `path` (root may use the reserved blocks too).
fn free_bytes(path: &Path) -> u64 {
    sh("sync", &["-f", &path.display().to_string()]);
    let out = sh("stat", &["-f", "-c", "%f %S", &path.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let (blocks, size) = text.trim().split_once(' ').unwrap();
    blocks.parse::<u64>().unwrap() * size.parse::<u64>().unwrap()
}

/// Fills the filesystem holding `path` (a new file) until about `leave` bytes are free.
fn write_ballast(path: &Path, leave: u64) {
    let fill = free_bytes(path.parent().unwrap()).saturating_sub(leave);
    let mut file = fs::File::create(path).unwrap();
    let piece = vec![0xa5u8; 1 << 20];
    let mut written = 0;
    while written < fill {
        let n = piece.len().min((fill - written) as usize);
        std::io::Write::write_all(&mut file, &piece[..n]).unwrap();
        written += n as u64;
    }
    file.sync_all().unwrap();
}

#[test]
fn a_full_disk_fails_cleanly_and_the_rerun_completes() {
    let o = Origin::new(6, 4 << 20); // ~24 MiB of incompressible libraries
    let disk = LoopFs::new("ext4", 160);
    let node = disk.mount.join("node");
    ok(osdeploy(&node).args(["init", "--mode", "bare"]));
    set_urls(&node, &[&o.nginx.url]);
    let ballast = disk.mount.join("ballast");
    // Too little room for the new files: with 8 MiB free the first file does not fit, with 20 MiB
    // some are written (and adopted by the rerun) before the disk is full.
    for leave in [8 << 20, 20 << 20] {
        let _ = fs::remove_file(&ballast);
        write_ballast(&ballast, leave);
        let err = failure(&mut pull(&node));
        assert!(
            err.contains("No space left on device") && err.contains(&disk.mount.display().to_string()),
            "{} MiB free: the error should say that the disk is full, and where: {err}",
            leave >> 20
        );
        assert_intact(&node, None, &format!("after running out of space with {} MiB free", leave >> 20));
    }
    fs::remove_file(&ballast).unwrap();
    let commit = pull_ok(&node);
    assert_eq!(commit, o.stable());
    assert_intact(&node, Some(&commit), "after the rerun with room");
    o.assert_holds(&node, &o.v1);
}

/// Bytes a killed pull kept for its rerun: the verified objects in the node's staging area (with
/// their small record headers; temporary files, whose names start with a dot, are dropped by the
/// next pull and not counted) and the complete new files it had written into `objects/` (the
/// rerun adopts them; the node held nothing before).
fn kept_bytes(node: &Path) -> u64 {
    let staged: u64 = fs::read_dir(node.join("staging"))
        .map(|dir| {
            dir.map(|e| e.unwrap())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.metadata().unwrap().len())
                .sum()
        })
        .unwrap_or(0);
    let written: u64 = fs::read_dir(node.join("objects"))
        .map(|dir| {
            dir.flat_map(|shard| fs::read_dir(shard.unwrap().path()).unwrap())
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum()
        })
        .unwrap_or(0);
    staged + written
}

/// Body bytes the proxy sent for pack requests among `log`.
fn pack_bytes_sent(log: &[Record]) -> u64 {
    pack_requests(log).iter().map(|r| r.body_sent).sum()
}

/// Bytes of packs requested (Range lengths) among `log`.
fn pack_bytes_requested(log: &[Record]) -> u64 {
    pack_requests(log).iter().map(|r| r.range_len().expect("pack requests are Range requests")).sum()
}

#[test]
fn a_pull_killed_at_arbitrary_points_resumes_without_refetching() {
    // ~40 MiB of incompressible libraries: three 16 MiB Range requests, fetched one at a time
    // (--in-flight 1) so that a kill finds whole ranges verified and staged, and loses at most
    // the one in flight.
    let o = Origin::new(10, 4 << 20);
    let final_commit = o.stable();
    let proxy = FaultProxy::start(&o.nginx.url);
    let pull_one_at_a_time = |node: &Path| {
        let mut cmd = pull(node);
        cmd.args(["--in-flight", "1"]);
        cmd
    };
    // An undisturbed pull: how many pack bytes a whole pull requests and receives.
    let reference = o.node("reference", &[&proxy.url]);
    ok(&mut pull_one_at_a_time(&reference));
    proxy.wait_idle();
    let (full_requested, full_sent) = (pack_bytes_requested(&proxy.log()), pack_bytes_sent(&proxy.log()));
    assert!(full_requested > 2 * MAX_REQUEST, "{full_requested}: the pull should take several requests");

    // Throttled so that a whole pull takes about 2 s.
    proxy.set_rules(vec![Rule::always(".pack", Fault::Throttle(full_requested / 2))]);
    let node = o.node("node", &[&proxy.url]);
    let mut seed = 0x5eed_u64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Allowance for the metadata (staged raw, stored compressed), entry headers and gaps
    // merged into requests around what is staged.
    let slack = 1 << 20;
    // Six kills at pseudo-random points, one as the last bytes arrive (while staging or storing),
    // then a rerun left alone; an attempt may also complete before its kill.
    const KILLED: usize = 7;
    let (mut kills, mut total_sent, mut max_resumed) = (0u64, 0u64, 0u64);
    for attempt in 0..=KILLED {
        let staged = kept_bytes(&node);
        max_resumed = max_resumed.max(staged);
        let start = proxy.log().len();
        let stderr = o.root.join(format!("pull-{attempt}.stderr"));
        let mut child =
            pull_one_at_a_time(&node).stdout(Stdio::null()).stderr(fs::File::create(&stderr).unwrap()).spawn().unwrap();
        // Killed once this attempt has received a pseudo-random share of what is left, plus up
        // to 100 ms: during a transfer, between requests, while staging, while storing.
        let left = full_requested.saturating_sub(staged);
        let target = match attempt {
            KILLED => None,
            a if a == KILLED - 1 => Some(left / 100 * 99),
            _ => Some(left / 1000 * (random() % 1000)),
        };
        if let Some(target) = target {
            while child.try_wait().unwrap().is_none() && pack_bytes_sent(&proxy.log()[start..]) < target {
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(random() % 100));
            let _ = child.kill(); // SIGKILL
        }
        let status = child.wait().unwrap();
        proxy.wait_idle();
        let log = &proxy.log()[start..];
        let context = format!("attempt {attempt} (kill after {target:?} bytes, {staged} bytes kept before)");
        match status.signal() {
            Some(9) => kills += 1,
            _ => assert!(status.success(), "{context}: {status}: {}", fs::read_to_string(&stderr).unwrap()),
        }
        let held = stable_ref(&node);
        assert!(held.is_none() || held.as_deref() == Some(final_commit.as_str()), "{context}: the ref names {held:?}");
        assert_intact(&node, held.as_deref(), &context);
        // What was kept before this attempt is not requested again.
        let requested = pack_bytes_requested(log);
        assert!(
            requested + staged <= full_requested + slack,
            "{context}: requested {requested} pack bytes with {staged} kept; a whole pull requests {full_requested}"
        );
        total_sent += pack_bytes_sent(log);
        eprintln!("{context}: {status}, {requested} pack bytes requested, {} sent", pack_bytes_sent(log));
        if held.is_some() {
            break;
        }
    }
    // The first kill comes after more than one range (seed and shares are fixed): what follows
    // must resume from a whole range kept (staged or written into its files).
    assert!(max_resumed >= MAX_REQUEST / 2, "no attempt resumed with a whole range kept ({max_resumed} bytes)");
    assert_intact(&node, Some(&final_commit), "after the last rerun");
    o.assert_holds(&node, &o.v1);
    // At most the one range in flight is lost per kill.
    let allowance = full_sent + kills * MAX_REQUEST;
    assert!(total_sent <= allowance, "{total_sent} pack bytes sent over {kills} kills; allowed {allowance}");
}

/// Body bytes the proxy wrote for the requests of `log` whose path contains `path_contains`.
fn body_sent(log: &[Record], path_contains: &str) -> u64 {
    log.iter().filter(|r| r.path.contains(path_contains)).map(|r| r.body_sent).sum()
}

#[test]
fn answers_without_end_are_cut_at_the_size_the_file_can_have() {
    let o = Origin::new(4, 256 << 10);
    let proxy = FaultProxy::start(&o.nginx.url);
    let node = o.node("node", &[&proxy.url]);
    let conf = o.root.join("etc-osdeploy");
    fs::create_dir_all(&conf).unwrap();
    fs::write(conf.join("config.toml"), "pull_max_metadata = 1048576\n").unwrap();
    let summary_url = format!("{}/summary", proxy.url);

    // The summary, whose size nothing declares: cut at pull_max_metadata, whether the server
    // streams without a length or announces an absurd one.
    for (fault, expected) in [(Fault::Endless, "ran past"), (Fault::Announce(1 << 40), "announces 1099511627776")] {
        proxy.set_rules(vec![Rule::always("summary", fault)]);
        let start = proxy.log().len();
        let err = failure(osdeploy(&node).arg("--config-dir").arg(&conf).args(["pull", "origin", "stable"]));
        proxy.wait_idle();
        assert!(err.contains(&summary_url) && err.contains(expected) && err.contains("1048576"), "{err}");
        let sent = body_sent(&proxy.log()[start..], "summary");
        assert!(sent < (ROUNDS as u64) * (16 << 20), "{sent} bytes of summary were sent before the client stopped");
        assert_intact(&node, None, &format!("after a summary with {fault:?}"));
    }

    // Pack ranges, whose length the client asked for: a longer answer is refused.
    proxy.clear_rules();
    let v1 = pull_ok(&node);
    let packs = o.commit_v2();
    let declared = fs::metadata(o.pack_path(&packs.data)).unwrap().len();
    for fault in [Fault::Endless, Fault::Announce(1 << 40)] {
        proxy.set_rules(vec![Rule::always(&packs.data_pack(), fault)]);
        let err = failure(&mut pull(&node));
        proxy.wait_idle();
        // One Range over the pack's entries: all of it but its 8-byte header.
        let range = format!("the {} bytes it can hold", declared - 8);
        assert!(err.contains(&packs.data_pack()) && err.contains(&range), "{err}");
        assert_intact(&node, Some(&v1), &format!("after pack ranges with {fault:?}"));
    }

    // A mirror downloads whole packs, of the size their index declares: the partial file never
    // grows past it. The pack's own bytes come first in the endless answer, so the capped
    // downloads and their resumes may even complete it (the pack then verifies as always).
    let mirror_dir = o.root.join("mirror");
    let mirror = || {
        let mut cmd = osdeploy(&mirror_dir);
        cmd.arg("mirror").arg(&proxy.url).arg(&mirror_dir).arg("--insecure");
        cmd
    };
    proxy.set_rules(vec![Rule::always(&packs.data_pack(), Fault::Endless)]);
    let out = mirror().output().unwrap();
    proxy.wait_idle();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || err.contains(&format!("ran past the {declared} bytes")), "{err}");
    let partial = mirror_dir.join("mirror/partial").join(packs.data_pack());
    let kept = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(kept <= declared, "the partial pack holds {kept} bytes, the pack has {declared}");
    proxy.clear_rules();
    ok(&mut mirror());
    assert!(!partial.exists());
    assert_eq!(fs::metadata(mirror_dir.join("packs").join(packs.data_pack())).unwrap().len(), declared);
    ok(osdeploy(&mirror_dir).arg("fsck"));
}

#[test]
fn a_trickling_server_is_abandoned_and_a_rate_limited_pull_is_not() {
    let o = Origin::new(8, 512 << 10);
    let proxy = FaultProxy::start(&o.nginx.url);
    let (node, v1, packs) = node_at_v1_then_v2(&o, &[&proxy.url]);
    // 64 bytes every 1.5 s: never silent for the 3 s timeout, far below the low-speed limit.
    let trickle = Fault::Trickle { bytes: 64, every_ms: 1500 };
    proxy.set_rules(vec![Rule::always(&packs.data_pack(), trickle)]);
    let start = proxy.log().len();
    let err = failure(pull(&node).args(["--timeout", "3", "--speed-time", "5"]));
    proxy.wait_idle();
    assert!(err.contains(&packs.data_pack()) && err.contains("below the low-speed limit of 1024 bytes/s"), "{err}");
    let attempts = attempts_per_range(&proxy.log()[start..]);
    assert!(attempts.values().all(|n| *n <= ROUNDS), "{attempts:?}");
    assert_intact(&node, Some(&v1), "after a trickling server");
    // The same pull held back by its own rate limit, far longer than the timeout: the limiter's
    // pauses are not the server's stalls.
    proxy.clear_rules();
    let stats = json(&ok(pull(&node).args(["--limit-rate", "100k", "--timeout", "2"])));
    assert!(stats["bytes_fetched"].as_u64().unwrap() > 600 << 10, "{stats}");
    assert_intact(&node, Some(&o.stable()), "after a rate-limited pull");
    o.assert_holds(&node, &o.v2);
}
