//! `osdeploy mirror` over real HTTP servers (`osdeploy serve`, nginx): a full mirror is a
//! byte-identical copy that nodes trusting only the origin's key pull from, incrementally
//! updated, and can be mirrored again; a partial mirror holds only what its branches need and
//! signs a summary of its own; tampered packs and bad signatures publish nothing; a mirror killed
//! at any step (or mid-download) stays consistent and a rerun completes.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::fault_proxy::{Fault, FaultProxy, Rule};
use crate::support::*;
use serde_json::Value;

const SIGABRT: i32 = 6;

/// The crash points of `transport/src/mirror.rs`, in the order a run meets them (also listed in
/// tests/crash_points.rs, which checks that the source has no others).
const MIRROR_POINTS: [&str; 4] = [
    "mirror:after-download",
    "mirror:between-pack-and-index",
    "mirror:before-refs",
    "mirror:between-signature-and-summary",
];

struct Origin {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    /// The release key (secret); `.pub` beside it.
    key: PathBuf,
    v1: PathBuf,
    v2: PathBuf,
}

impl Origin {
    fn public_key(&self) -> PathBuf {
        self.key.with_extension("pub")
    }

    /// Commits `tree` on `branch` and signs the summary and commits; returns the commit id.
    fn release(&self, branch: &str, tree: &Path, version: &str) -> String {
        let out =
            json(&ok(osdeploy(&self.repo).args(["commit", "--json", "-b", branch, "--version", version]).arg(tree)));
        ok(osdeploy(&self.repo).args(["sign", "--key"]).arg(&self.key));
        out["commit"].as_str().unwrap().to_string()
    }
}

/// An origin with release 1 on `stable`, signed with its release key, and the release 2 tree
/// ready (one 700 kB library and os-release changed).
fn origin() -> Origin {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (repo, v1, v2, key) = (root.join("origin"), root.join("v1"), root.join("v2"), root.join("release.key"));
    make_sample_tree(&v1);
    fs::create_dir_all(v1.join("usr/lib")).unwrap();
    for i in 0..8 {
        write_random(&v1.join(format!("usr/lib/lib{i}.so")), 700_000, 100 + i);
    }
    sh("cp", &["-a", &v1.display().to_string(), &v2.display().to_string()]);
    write_random(&v2.join("usr/lib/lib3.so"), 700_000, 999);
    fs::write(v2.join("etc/os-release"), "NAME=osdeploy-sample\nVERSION=2\n").unwrap();
    ok(osdeploy(&repo).args(["init", "--mode", "archive"]));
    ok(osdeploy(&repo).args(["key", "generate"]).arg(&key));
    let o = Origin { _tmp: tmp, root, repo, key, v1, v2 };
    o.release("stable", &o.v1, "1");
    o
}

fn mirror_cmd(dir: &Path, url: &str, args: &[&str]) -> Command {
    let mut cmd = osdeploy(dir);
    cmd.arg("mirror").arg(url).arg(dir).args(args).arg("--json");
    cmd
}

/// Mirrors `url` into `dir` and returns the JSON stats.
fn mirror(dir: &Path, url: &str, args: &[&str]) -> Value {
    json(&ok(&mut mirror_cmd(dir, url, args)))
}

fn key_arg(key: &Path) -> [&str; 2] {
    ["--key", key.to_str().unwrap()]
}

/// File names in `dir` (empty when it does not exist).
fn names(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Names of the packs in `repo` (without extension).
fn packs(repo: &Path) -> BTreeSet<String> {
    names(&repo.join("packs")).into_iter().filter_map(|n| n.strip_suffix(".pack").map(str::to_string)).collect()
}

fn pack_bytes(repo: &Path, ids: &BTreeSet<String>) -> u64 {
    ids.iter().map(|id| fs::metadata(repo.join(format!("packs/{id}.pack"))).unwrap().len()).sum()
}

/// `mirror` holds exactly `expected` packs, byte-identical to `origin`'s, each with its index.
fn assert_packs_copied(origin: &Path, mirror: &Path, expected: &BTreeSet<String>) {
    let files: BTreeSet<String> = expected.iter().flat_map(|id| [format!("{id}.pack"), format!("{id}.idx")]).collect();
    assert_eq!(names(&mirror.join("packs")), files, "packs of {}", mirror.display());
    for name in &files {
        let (a, b) = (origin.join("packs").join(name), mirror.join("packs").join(name));
        assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "{} differs from {}", b.display(), a.display());
    }
}

/// A full mirror: every pack, the summary and the commits' signatures as the origin's; the summary's
/// signature file is the origin's, followed until the next run by the lines that signed the summary
/// it replaced (for nodes that fetched that one just before).
fn assert_full_copy(origin: &Path, mirror: &Path) {
    assert_packs_copied(origin, mirror, &packs(origin));
    assert_eq!(fs::read(origin.join("summary")).unwrap(), fs::read(mirror.join("summary")).unwrap(), "summary");
    let (signature, passed_on) =
        (fs::read(origin.join("summary.sig")).unwrap(), fs::read(mirror.join("summary.sig")).unwrap());
    assert!(passed_on.starts_with(&signature), "summary.sig: {}", String::from_utf8_lossy(&passed_on));
    // the signatures of the commits the refs name (older ones only if an earlier run mirrored them)
    let summary = json(&fs::read_to_string(origin.join("summary")).unwrap());
    let signatures = names(&mirror.join("signatures"));
    for r in summary["refs"].as_object().unwrap().values() {
        assert!(signatures.contains(&format!("{}.sig", r["commit"].as_str().unwrap())), "{signatures:?}");
    }
    for name in signatures {
        let path = format!("signatures/{name}");
        assert_eq!(fs::read(origin.join(&path)).unwrap(), fs::read(mirror.join(&path)).unwrap(), "{path}");
    }
}

/// fsck finds neither errors nor leftovers.
fn assert_fsck_spotless(repo: &Path) {
    let report = json(&ok(osdeploy(repo).args(["fsck", "--json"])));
    assert!(report["errors"].as_array().unwrap().is_empty(), "{report:#}");
    assert!(report["warnings"].as_array().unwrap().is_empty(), "{report:#}");
}

/// A fresh bare node whose remote `origin` is `url`, trusting `keys`.
fn node(root: &Path, name: &str, url: &str, keys: &[&Path]) -> PathBuf {
    let node = root.join(name);
    ok(osdeploy(&node).args(["init", "--mode", "bare"]));
    let mut add = osdeploy(&node);
    add.args(["remote", "add", "origin", url]);
    for key in keys {
        add.arg("--key").arg(key);
    }
    ok(&mut add);
    node
}

fn pull(node: &Path) -> Value {
    json(&ok(osdeploy(node).args(["pull", "--json", "origin", "stable"])))
}

fn assert_checks_out(node: &Path, expected: &Path, out: &Path) {
    ok(osdeploy(node).args(["checkout", "origin/stable"]).arg(out));
    assert_same_tree(expected, out);
}

#[test]
fn a_full_mirror_is_an_incremental_byte_identical_copy_that_nodes_trust_with_the_origin_key() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let key = o.public_key();
    let m1 = o.root.join("mirror1");
    let v1_packs = packs(&o.repo);

    let first = mirror(&m1, &server.url, &key_arg(&key));
    assert_eq!(first["full"], true, "{first}");
    assert_eq!(first["packs_fetched"], v1_packs.len(), "{first}");
    assert_eq!(first["packs_skipped"], 0, "{first}");
    assert_eq!(first["summary_signed_by"], "origin", "{first}");
    assert_full_copy(&o.repo, &m1);
    assert_fsck_spotless(&m1);
    // the same delta from the mirror as from the origin: same packs, same ranges
    let delta = |repo: &Path| json(&ok(osdeploy(repo).args(["delta", "--json", "none", "stable"])));
    assert_eq!(delta(&o.repo), delta(&m1));

    // a node that trusts only the origin's key pulls from the mirror
    let m1_server = osdeploy_serve(&m1);
    let n1 = node(&o.root, "node1", &m1_server.url, &[&key]);
    pull(&n1);
    assert_checks_out(&n1, &o.v1, &o.root.join("n1-v1"));

    // release 2: the second run fetches only the new packs
    let v2 = o.release("stable", &o.v2, "2");
    let new_packs: BTreeSet<String> = packs(&o.repo).difference(&v1_packs).cloned().collect();
    assert!(!new_packs.is_empty());
    let second = mirror(&m1, &server.url, &key_arg(&key));
    assert_eq!(second["packs_fetched"], new_packs.len(), "{second}");
    assert_eq!(second["packs_skipped"], v1_packs.len(), "{second}");
    assert_eq!(second["refs"]["stable"], v2.as_str(), "{second}");
    let new_bytes = pack_bytes(&o.repo, &new_packs);
    let fetched = second["bytes_fetched"].as_u64().unwrap();
    assert!(fetched >= new_bytes && fetched < new_bytes + (64 << 10), "{new_bytes} bytes of new packs: {second}");
    assert_full_copy(&o.repo, &m1);
    assert_fsck_spotless(&m1);
    assert_eq!(pull(&n1)["commit"], v2.as_str());
    assert_checks_out(&n1, &o.v2, &o.root.join("n1-v2"));

    // nothing new: only the summary, its signature and the commit's signature are read
    let third = mirror(&m1, &server.url, &key_arg(&key));
    assert_eq!(third["packs_fetched"], 0, "{third}");
    assert_eq!(fs::read(o.repo.join("summary.sig")).unwrap(), fs::read(m1.join("summary.sig")).unwrap());
    assert_eq!(third["requests"], 3, "{third}");
    assert!(third["bytes_fetched"].as_u64().unwrap() < 4096, "{third}");

    // a mirror of the mirror: the same bytes again, and nodes still need only the origin's key
    let m2 = o.root.join("mirror2");
    let of_mirror = mirror(&m2, &m1_server.url, &key_arg(&key));
    assert_eq!(of_mirror["packs_fetched"], packs(&o.repo).len(), "{of_mirror}");
    assert_full_copy(&o.repo, &m2);
    let m2_server = osdeploy_serve(&m2);
    let n2 = node(&o.root, "node2", &m2_server.url, &[&key]);
    assert_eq!(pull(&n2)["commit"], v2.as_str());
    assert_checks_out(&n2, &o.v2, &o.root.join("n2-v2"));
}

#[test]
fn a_partial_mirror_holds_only_its_branches_packs_and_signs_its_own_summary() {
    let o = origin();
    let stable_packs = packs(&o.repo);
    // beta: release 2's tree on a branch of its own, so that its new packs are beta's alone
    o.release("beta", &o.v2, "2-beta");
    let server = osdeploy_serve(&o.repo);
    let (key, mirror_key) = (o.public_key(), o.root.join("mirror.key"));
    ok(osdeploy(&o.repo).args(["key", "generate"]).arg(&mirror_key));
    let mirror_pub = mirror_key.with_extension("pub");
    let m = o.root.join("partial");
    let sign = ["--branch", "stable", "--key", key.to_str().unwrap(), "--sign-key", mirror_key.to_str().unwrap()];

    let first = mirror(&m, &server.url, &sign);
    assert_eq!(first["full"], false, "{first}");
    assert_eq!(first["summary_signed_by"], "mirror", "{first}");
    let refs: Vec<&String> = first["refs"].as_object().unwrap().keys().collect();
    assert_eq!(refs, ["stable"], "{first}");
    assert_packs_copied(&o.repo, &m, &stable_packs);
    assert_fsck_spotless(&m);
    let summary = json(&fs::read_to_string(m.join("summary")).unwrap());
    let listed: BTreeSet<String> =
        summary["packs"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, stable_packs, "the summary lists the packs held: {summary:#}");
    assert_eq!(summary["refs"].as_object().unwrap().keys().collect::<Vec<_>>(), ["stable"]);

    // nodes trust the mirror's key (summary) besides the origin's (commits)
    let m_server = osdeploy_serve(&m);
    let both = node(&o.root, "node-both", &m_server.url, &[&key, &mirror_pub]);
    pull(&both);
    assert_checks_out(&both, &o.v1, &o.root.join("both-v1"));
    let origin_only = node(&o.root, "node-origin-only", &m_server.url, &[&key]);
    let err = fails(osdeploy(&origin_only).args(["pull", "origin", "stable"]));
    assert!(err.contains("summary from remote origin is not signed by a trusted key"), "{err}");

    // stable moves to release 2 (the tree beta has): the closure walks into beta's packs
    let v2 = o.release("stable", &o.v2, "2");
    let second = mirror(&m, &server.url, &sign);
    assert_eq!(second["packs_fetched"], packs(&o.repo).len() - stable_packs.len(), "{second}");
    assert_eq!(second["packs_skipped"], stable_packs.len(), "{second}");
    assert_packs_copied(&o.repo, &m, &packs(&o.repo));
    assert_fsck_spotless(&m);
    assert_eq!(pull(&both)["commit"], v2.as_str());
    assert_checks_out(&both, &o.v2, &o.root.join("both-v2"));

    // without --sign-key the mirror is unsigned, and says so
    let unsigned = o.root.join("unsigned");
    let out = mirror_cmd(&unsigned, &server.url, &["--branch", "stable", "--insecure"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: the mirror's summary is not signed") && stderr.contains("--sign-key"),
        "{stderr}"
    );
    assert!(!unsigned.join("summary.sig").exists());
    assert_eq!(json(&String::from_utf8_lossy(&out.stdout))["summary_signed_by"], "none");
}

#[test]
fn signatures_are_checked_unless_insecure() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let key = o.public_key();
    let other = o.root.join("other.key");
    ok(osdeploy(&o.repo).args(["key", "generate"]).arg(&other));
    let m = o.root.join("mirror");

    let err = fails(osdeploy(&m).args(["mirror", &server.url]).arg(&m));
    assert!(err.contains("--key") && err.contains("--insecure"), "{err}");
    let err = fails(osdeploy(&m).args(["mirror", &server.url]).arg(&m).args(["--insecure", "--sign-key"]).arg(&other));
    assert!(err.contains("--branch"), "a full mirror passes the origin's signature on: {err}");

    // signed by a key the mirror does not trust
    let err = fails(&mut mirror_cmd(&m, &server.url, &key_arg(&other.with_extension("pub"))));
    assert!(err.contains("is not signed by a trusted key"), "{err}");
    // the summary is signed, the commit is not
    let commit = names(&o.repo.join("signatures")).into_iter().next().unwrap();
    let commit_sig = o.repo.join("signatures").join(&commit);
    let saved = fs::read(&commit_sig).unwrap();
    fs::remove_file(&commit_sig).unwrap();
    let err = fails(&mut mirror_cmd(&m, &server.url, &key_arg(&key)));
    assert!(err.contains("commit ") && err.contains("is not signed;"), "{err}");
    fs::write(&commit_sig, saved).unwrap();
    // not signed at all
    fs::remove_file(o.repo.join("summary.sig")).unwrap();
    let err = fails(&mut mirror_cmd(&m, &server.url, &key_arg(&key)));
    assert!(err.contains("its summary from remote") && err.contains("is not signed;"), "{err}");
    // nothing was published by the refused runs
    assert!(packs(&m).is_empty() && names(&m.join("refs/heads")).is_empty());
    assert!(!m.join("summary.sig").exists());

    // --insecure accepts it (and passes on the origin's signatures, when it has some)
    let stats = mirror(&m, &server.url, &["--insecure"]);
    assert_eq!(stats["summary_signed_by"], "none", "{stats}");
    ok(osdeploy(&o.repo).args(["sign", "--key"]).arg(&o.key));
    let stats = mirror(&m, &server.url, &["--insecure"]);
    assert_eq!(stats["summary_signed_by"], "origin", "{stats}");
    assert_full_copy(&o.repo, &m);
}

#[test]
fn a_tampered_pack_is_named_and_publishes_nothing() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let key = o.public_key();
    let m = o.root.join("mirror");
    let v1 = mirror(&m, &server.url, &key_arg(&key))["refs"]["stable"].clone();
    let before = packs(&o.repo);
    o.release("stable", &o.v2, "2");
    // flip one byte in the middle of release 2's data pack
    let (id, path) = packs(&o.repo)
        .difference(&before)
        .map(|id| (id.clone(), o.repo.join(format!("packs/{id}.pack"))))
        .max_by_key(|(_, p)| fs::metadata(p).unwrap().len())
        .unwrap();
    let original = fs::read(&path).unwrap();
    let mut bytes = original.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    let published = |file: &str| fs::read(m.join(file)).unwrap();
    let (summary, signature) = (published("summary"), published("summary.sig"));

    let err = fails(&mut mirror_cmd(&m, &server.url, &key_arg(&key)));
    assert!(err.contains(&format!("pack {id}")) && err.contains("chunk object"), "{err}");
    assert_eq!((published("summary"), published("summary.sig")), (summary, signature), "summary changed");
    let refs = json(&ok(osdeploy(&m).args(["refs", "--json"])));
    assert_eq!(refs["stable"], v1, "{refs}");
    assert!(!packs(&m).contains(&id), "the tampered pack was published");
    assert!(names(&m.join("mirror/partial")).is_empty(), "the tampered download was kept");
    let report = json(&ok(osdeploy(&m).args(["fsck", "--json"])));
    assert!(report["errors"].as_array().unwrap().is_empty(), "{report:#}");

    // repaired on the origin, the next run completes
    fs::write(&path, &original).unwrap();
    mirror(&m, &server.url, &key_arg(&key));
    assert_full_copy(&o.repo, &m);
}

#[test]
fn a_mirror_aborted_at_each_crash_point_stays_consistent_and_a_rerun_completes() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let key = o.public_key();
    let mirrors: Vec<PathBuf> = (0..MIRROR_POINTS.len()).map(|i| o.root.join(format!("mirror{i}"))).collect();
    let mut v1 = String::new();
    for m in &mirrors {
        v1 = mirror(m, &server.url, &key_arg(&key))["refs"]["stable"].as_str().unwrap().to_string();
    }
    let v2 = o.release("stable", &o.v2, "2");
    for (point, m) in MIRROR_POINTS.iter().zip(&mirrors) {
        let (summary, signature) = (fs::read(m.join("summary")).unwrap(), fs::read(m.join("summary.sig")).unwrap());
        let out = mirror_cmd(m, &server.url, &key_arg(&key))
            .env("OSDEPLOY_CRASH_AT", point)
            .current_dir(&o.root)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(SIGABRT), "{point}: {:?}: {stderr}", out.status);
        assert!(stderr.contains(&format!("crash point {point}")), "{point}: {stderr}");
        let report = json(&ok(osdeploy(m).args(["fsck", "--json"])));
        assert!(report["errors"].as_array().unwrap().is_empty(), "{point}: {report:#}");
        assert_eq!(fs::read(m.join("summary")).unwrap(), summary, "{point}: the summary changed before the end");
        if *point != "mirror:between-signature-and-summary" {
            assert_eq!(fs::read(m.join("summary.sig")).unwrap(), signature, "{point}");
            let refs = json(&ok(osdeploy(m).args(["refs", "--json"])));
            assert_eq!(refs["stable"], v1.as_str(), "{point}: refs moved before the packs were complete");
        }
        // nodes still get release 1 from the interrupted mirror: its summary verifies
        let served = osdeploy_serve(m);
        let n = node(&o.root, &format!("node-{}", point.replace(':', "-")), &served.url, &[&key]);
        assert_eq!(pull(&n)["commit"], v1.as_str(), "{point}");

        let rerun = mirror(m, &server.url, &key_arg(&key));
        assert_eq!(rerun["refs"]["stable"], v2.as_str(), "{point}: {rerun}");
        assert_full_copy(&o.repo, m);
        assert_fsck_spotless(m);
        assert!(names(&m.join("mirror/partial")).is_empty(), "{point}: a download was left behind");
        assert_eq!(pull(&n)["commit"], v2.as_str(), "{point}");
    }
}

/// A server stopped with SIGTERM before it is killed: nginx's master then stops its worker, which
/// SIGKILL would leave running (holding the test's output pipe open).
struct StoppedGracefully(Server);

impl Drop for StoppedGracefully {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.0.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.0.child.wait();
    }
}

#[test]
fn a_mirror_killed_mid_download_resumes_with_a_range_request() {
    let o = origin();
    let work = o.root.join("nginx");
    fs::create_dir_all(&work).unwrap();
    let nginx = StoppedGracefully(nginx(&o.repo, &work));
    let proxy = FaultProxy::start(&nginx.0.url);
    let key = o.public_key();
    let m = o.root.join("mirror");
    let all = packs(&o.repo);
    let (id, size) = all
        .iter()
        .map(|id| (id.clone(), pack_bytes(&o.repo, &BTreeSet::from([id.clone()]))))
        .max_by_key(|p| p.1)
        .unwrap();
    const SENT: u64 = 200_000;
    assert!(size > 2 * SENT);
    proxy.set_rules(vec![Rule::always(&format!("{id}.pack"), Fault::StallAfter(SENT as usize))]);
    let mut child =
        mirror_cmd(&m, &proxy.url, &key_arg(&key)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let partial = m.join(format!("mirror/partial/{id}.pack"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::metadata(&partial).map_or(0, |m| m.len()) < SENT {
        assert!(Instant::now() < deadline, "the download never reached {SENT} bytes");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    proxy.wait_idle();
    proxy.clear_rules();
    assert!(!packs(&m).contains(&id), "the interrupted pack was published");

    let rerun = mirror(&m, &proxy.url, &key_arg(&key));
    let last = proxy.requests(&format!("{id}.pack")).pop().unwrap();
    assert_eq!(last.range.as_deref(), Some(format!("bytes={SENT}-").as_str()), "{last:?}");
    let fetched = rerun["bytes_fetched"].as_u64().unwrap();
    assert!(fetched < pack_bytes(&o.repo, &all) - SENT + (64 << 10), "{rerun}");
    assert_full_copy(&o.repo, &m);
    assert_fsck_spotless(&m);
}
