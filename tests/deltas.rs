//! Per-file deltas end to end over `osdeploy serve`: generated on the origin, chosen by the plan,
//! applied and verified by the node; a corrupt delta falls back to chunks; a node older than every
//! delta's base uses chunks; generation is deterministic; killed at any step, a generation or a
//! pull finishes on rerun.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;
use serde_json::Value;

/// A text-like "library" of `lines` lines; `release` changes every 400th line, so that every
/// chunk of it differs between releases while a delta stays small.
fn library(path: &Path, lines: u64, release: u64) {
    let mut text = String::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..lines {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let value = if i % 400 == 7 { x.wrapping_add(release) } else { x };
        text.push_str(&format!("symbol_{i:06} {:016x} {}\n", value, i % 97));
    }
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// Runs `command` (a system tool) on `input`; returns its output.
fn filter(command: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} does not run (cpio and gzip are Debian packages): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let writing = std::thread::spawn({
        let input = input.to_vec();
        move || std::io::Write::write_all(&mut stdin, &input)
    });
    let out = child.wait_with_output().unwrap();
    writing.join().unwrap().unwrap();
    assert!(out.status.success(), "{command:?} failed");
    out.stdout
}

/// A changelog of `entries` entries, newest first, compressed as packages ship it (`gzip -9n`, the
/// system's gzip): a new entry changes every deflate byte after it.
fn changelog_gz(path: &Path, entries: u64) {
    let text: String = (0..entries)
        .rev()
        .map(|i| {
            format!(
                "core ({i}.0-1) stable; urgency=medium\n\n  * Fix #{}.\n\n -- Dev <dev@example.org>\n\n",
                i * 7919 % 100_000
            )
        })
        .collect();
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, filter(Command::new("gzip").arg("-9n"), text.as_bytes())).unwrap();
}

/// An initramfs as initramfs-tools makes it: a cpio archive (`cpio -H newc`, the system's cpio)
/// of files of the release under `root`, compressed by `gzip -9n`.
fn initramfs(root: &Path, members: &[&str], out: &Path) {
    let list: String = members.iter().map(|m| format!("{m}\n")).collect();
    // Fixed times, as a reproducible build clamps them: the same release gives the same image.
    ok(Command::new("touch").args(["-h", "-d", "@1700000000"]).args(members).current_dir(root));
    let archive = filter(
        Command::new("cpio").args(["--quiet", "-o", "-H", "newc", "--reproducible"]).current_dir(root),
        list.as_bytes(),
    );
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    fs::write(out, filter(Command::new("gzip").arg("-9n"), &archive)).unwrap();
}

/// How many files change between two releases of [`release_tree`]; each gets a delta.
const CHANGED: u64 = 4;

/// Release `n` of a small OS tree: two libraries, a gzip'd changelog and an initramfs that change
/// with each release (one library under a versioned directory that is renamed, and in the
/// initramfs), files that never change, and a random file.
fn release_tree(root: &Path, n: u64) {
    library(&root.join("usr/lib/libcore.so.1"), 40_000, n);
    library(&root.join(format!("usr/lib/modules/6.1.0-{}-amd64/kernel/fs/ext4.ko", 40 + n)), 20_000, n);
    changelog_gz(&root.join("usr/share/doc/core/changelog.gz"), 3000 + n);
    fs::create_dir_all(root.join("usr/share")).unwrap();
    write_random(&root.join("usr/share/firmware.bin"), 300_000, 5);
    fs::write(root.join("usr/share/README"), "unchanged\n").unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/os-release"), format!("NAME=sample\nVERSION={n}\n")).unwrap();
    let module = format!("usr/lib/modules/6.1.0-{}-amd64/kernel/fs/ext4.ko", 40 + n);
    let members = ["etc", "etc/os-release", "usr", "usr/share/README", &module];
    initramfs(root, &members, &root.join(format!("boot/initrd.img-6.1.0-{}-amd64", 40 + n)));
}

struct Origin {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    commits: Vec<String>,
}

impl Origin {
    /// An archive repository with `releases` releases on `stable`.
    fn new(releases: u64) -> Origin {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("origin");
        ok(osdeploy(&repo).args(["init", "--mode", "archive"]));
        let mut origin = Origin { tmp, repo, commits: Vec::new() };
        for n in 1..=releases {
            origin.commit(n);
        }
        origin
    }

    fn tree(&self, n: u64) -> PathBuf {
        let tree = self.tmp.path().join(format!("v{n}"));
        if !tree.exists() {
            release_tree(&tree, n);
        }
        tree
    }

    fn commit(&mut self, n: u64) -> String {
        let tree = self.tree(n);
        ok(osdeploy(&self.repo).args(["commit", "-b", "stable", "--version", &n.to_string()]).arg(&tree));
        let id = head(&self.repo, "stable");
        self.commits.push(id.clone());
        id
    }

    fn node(&self, name: &str, url: &str) -> PathBuf {
        let node = self.tmp.path().join(name);
        ok(osdeploy(&node).args(["init", "--mode", "bare"]));
        ok(osdeploy(&node).args(["remote", "add", "origin", url, "--insecure"]));
        node
    }
}

/// An origin with release 1 served, a node that pulled it, and release 2 committed.
fn node_behind() -> (Origin, Server, PathBuf) {
    let mut o = Origin::new(1);
    let server = osdeploy_serve(&o.repo);
    let node = o.node("node", &server.url);
    pull(&node);
    o.commit(2);
    (o, server, node)
}

/// Runs osdeploy on `repo` with `args`, aborting at crash point `point`; checks that it did.
fn crash_at(repo: &Path, args: &[&str], point: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_osdeploy"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env("OSDEPLOY_CRASH_AT", point)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{point}: the crash point did not fire");
}

fn head(repo: &Path, branch: &str) -> String {
    json(&ok(osdeploy(repo).args(["show", "--json", branch])))["commit"].as_str().unwrap().to_string()
}

fn pull(node: &Path) -> Value {
    json(&ok(osdeploy(node).args(["pull", "--json", "origin", "stable"])))
}

fn checkout_equals(node: &Path, tree: &Path, out: &Path) {
    ok(osdeploy(node).args(["checkout", "origin/stable"]).arg(out));
    assert_same_tree(tree, out);
    let fsck = ok(osdeploy(node).args(["fsck"]));
    assert!(fsck.contains(" 0 errors"), "{fsck}");
}

#[test]
fn a_pull_rebuilds_changed_files_from_deltas_and_moves_what_its_plan_says() {
    let (o, _server, node) = node_behind();
    let v1 = o.commits[0].clone();
    let generated = json(&ok(osdeploy(&o.repo).args(["delta", "generate", "--json", "--to", "stable"])));
    assert_eq!(generated["from"], serde_json::json!([v1]), "{generated}");
    assert_eq!(generated["listed"], CHANGED, "each changed file gets a delta: {generated}");
    assert_eq!(generated["by_codec"]["gzip"], 1, "the changelog by its plain text: {generated}");
    assert_eq!(generated["by_codec"]["gzip-tree"], 1, "the initramfs names the module: {generated}");
    assert_eq!(generated["pairs_by_rule"]["version-masked"], 2, "the renamed module and initramfs: {generated}");
    // The origin's plan, the plan over HTTP and the node's dry run agree.
    let local = json(&ok(osdeploy(&o.repo).args(["delta", "--json", &v1, "stable"])));
    let remote = json(&ok(osdeploy(&node).args(["delta", "--remote", "origin", "--json", &v1, "stable"])));
    let planned = json(&ok(osdeploy(&node).args(["pull", "--dry-run", "--json", "origin", "stable"])));
    let keys = ["transfer_bytes", "requests", "reads", "deltas", "delta_bytes", "files_from_deltas", "without_deltas"];
    for key in keys.into_iter().chain(["metadata_objects", "metadata_delta_bytes", "index_files", "index_bytes"]) {
        assert_eq!(local[key], remote[key], "{key}: local {local} remote {remote}");
        assert_eq!(planned[key], remote[key], "{key}: dry run {planned} remote {remote}");
    }
    assert_eq!(local["files_from_deltas"], CHANGED, "{local}");
    // The new metadata comes as one delta, not as objects.
    assert_eq!(local["metadata_objects"], 0, "{local}");
    assert!(local["metadata_delta_bytes"].as_u64().unwrap() > 0, "{local}");
    assert_eq!(generated["metadata_deltas"], 1, "{generated}");
    // It also says where the new chunks lie: no pack index is fetched; and it carries the chunk
    // of the small file without a delta (os-release): no chunk read either.
    assert_eq!((&local["index_files"], &local["index_bytes"]), (&0.into(), &0.into()), "{local}");
    assert_eq!(generated["chunks_in_metadata_deltas"], 1, "{generated}");
    assert_eq!(local["chunks"], 0, "{local}");
    assert_eq!(local["reads"].as_array().unwrap().len(), 2, "the metadata delta and the file deltas: {local}");
    let chunks_only = local["without_deltas"]["transfer_bytes"].as_u64().unwrap();
    let with_deltas = local["transfer_bytes"].as_u64().unwrap();
    assert!(with_deltas * 4 < chunks_only, "deltas must make the update far smaller: {with_deltas} vs {chunks_only}");
    let text = ok(osdeploy(&o.repo).args(["delta", &v1, "stable"]));
    assert!(text.contains(&format!("{CHANGED} from deltas")) && text.contains("chunks only"), "{text}");
    // The pull moves exactly the planned bytes in the planned requests, and the tree is exact.
    let pulled = pull(&node);
    assert_eq!(pulled["bytes_fetched"], planned["transfer_bytes"], "{pulled} {planned}");
    assert_eq!(pulled["requests"], planned["requests"], "{pulled} {planned}");
    assert_eq!((&pulled["index_bytes"], &pulled["chunks_fetched"]), (&0.into(), &0.into()), "{pulled}");
    // The summary lists the metadata delta, which lists the file deltas: no delta index either.
    assert_eq!(pulled["requests"], 3, "summary, metadata delta, file deltas: {pulled}");
    assert!(!planned["whole_files"].to_string().contains(".dix"), "{planned}");
    assert_eq!((&pulled["files_from_deltas"], &pulled["delta_fallbacks"]), (&CHANGED.into(), &0.into()), "{pulled}");
    checkout_equals(&node, &o.tree(2), &o.tmp.path().join("co"));
    // `--no-deltas` plans chunks only.
    let plain = json(&ok(osdeploy(&o.repo).args(["delta", "--no-deltas", "--json", &v1, "stable"])));
    assert_eq!(plain["transfer_bytes"].as_u64().unwrap(), chunks_only, "{plain}");
    assert_eq!(plain["deltas"], 0, "{plain}");
}

/// From a signed origin, the summary that lists the metadata delta is verified like any summary:
/// the node pulls with deltas in 5 requests (the summary, its signature, the commit's, the
/// metadata delta, the file deltas), and a summary whose listing was changed is refused.
#[test]
fn a_signed_summary_lists_the_metadata_delta_and_covers_it() {
    let mut o = Origin::new(1);
    let server = osdeploy_serve(&o.repo);
    let key = o.tmp.path().join("release.key");
    ok(osdeploy(&o.repo).args(["key", "generate"]).arg(&key));
    ok(osdeploy(&o.repo).args(["sign", "--key"]).arg(&key));
    let node = o.tmp.path().join("node");
    ok(osdeploy(&node).args(["init", "--mode", "bare"]));
    ok(osdeploy(&node).args(["remote", "add", "origin", &server.url, "--key"]).arg(key.with_extension("pub")));
    pull(&node);
    o.commit(2);
    ok(osdeploy(&o.repo).args(["delta", "generate", "--to", "stable"]));
    ok(osdeploy(&o.repo).args(["sign", "--key"]).arg(&key));
    let summary = fs::read_to_string(o.repo.join("summary")).unwrap();
    assert!(summary.contains("\"metadata_deltas\""), "{summary}");
    // The release the listed metadata delta starts from changed, the signature kept: refused,
    // the ref unchanged.
    let listing = summary.find("\"metadata_deltas\"").unwrap();
    let at = listing + summary[listing..].find("\"from\": \"").unwrap() + "\"from\": \"".len();
    let mut tampered = summary.clone().into_bytes();
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    fs::write(o.repo.join("summary"), &tampered).unwrap();
    let err = fails(osdeploy(&node).args(["pull", "origin", "stable"]));
    assert!(err.contains("not signed by a trusted key"), "{err}");
    assert_eq!(head(&node, "origin/stable"), o.commits[0]);
    fs::write(o.repo.join("summary"), &summary).unwrap();
    let pulled = pull(&node);
    assert_eq!((&pulled["files_from_deltas"], &pulled["delta_fallbacks"]), (&CHANGED.into(), &0.into()), "{pulled}");
    assert_eq!(pulled["requests"], 5, "{pulled}");
    checkout_equals(&node, &o.tree(2), &o.tmp.path().join("co"));
}

/// A node that lacks objects of the release it holds (here every file object, as if lost) cannot
/// rely on the metadata delta's chunk locations alone: it loads the pack indexes and fetches
/// what it lacks, and the tree is exact.
#[test]
fn a_node_lacking_objects_of_its_release_loads_the_pack_indexes() {
    let (o, _server, node) = node_behind();
    ok(osdeploy(&o.repo).args(["delta", "generate", "--to", "stable"]));
    let db = rusqlite::Connection::open(node.join("index.sqlite")).unwrap();
    let lost = db.execute("DELETE FROM objects WHERE kind = 1", []).unwrap();
    assert!(lost > 0, "the node held file objects");
    drop(db);
    let pulled = pull(&node);
    assert!(pulled["index_bytes"].as_u64().unwrap() > 0, "{pulled}");
    assert!(pulled["metadata_fetched"].as_u64().unwrap() > 0, "the lost objects are fetched: {pulled}");
    let out = o.tmp.path().join("co");
    ok(osdeploy(&node).args(["checkout", "origin/stable"]).arg(&out));
    assert_same_tree(&o.tree(2), &out);
}

#[test]
fn a_corrupt_delta_on_the_server_falls_back_to_chunks() {
    let (o, _server, node) = node_behind();
    ok(osdeploy(&o.repo).args(["delta", "generate", "--to", "stable"]));
    // Generation writes two delta packs: the file deltas, then the metadata delta. One byte of
    // the first object of each (past the pack and entry headers) is changed.
    let packs: Vec<PathBuf> = fs::read_dir(o.repo.join("deltas"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    assert_eq!(packs.len(), 2, "{packs:?}");
    for pack in packs {
        let mut bytes = fs::read(&pack).unwrap();
        bytes[8 + 42 + 40] ^= 0x55;
        fs::write(&pack, bytes).unwrap();
    }
    // The origin's own plan finds the metadata delta unusable as the node's does, says so, and
    // plans what the node's dry run plans: the metadata as objects, the delta index, the deltas.
    let v1 = o.commits[0].clone();
    let out = osdeploy(&o.repo).args(["delta", "--json", &v1, "stable"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("metadata is fetched as objects"), "{stderr}");
    let local: Value = serde_json::from_slice(&out.stdout).unwrap();
    let planned = json(&ok(osdeploy(&node).args(["pull", "--dry-run", "--json", "origin", "stable"])));
    for key in ["transfer_bytes", "requests", "metadata_objects", "metadata_delta_bytes", "index_files", "deltas"] {
        assert_eq!(local[key], planned[key], "{key}: local {local} dry run {planned}");
    }
    assert_eq!(local["metadata_delta_bytes"], 0, "{local}");
    assert!(local["whole_files"].to_string().contains(".dix"), "the delta index: {local}");
    let out = osdeploy(&node).args(["pull", "--json", "origin", "stable"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fetched as chunks"), "the fallback is reported: {stderr}");
    assert!(stderr.contains("metadata is fetched as objects"), "the fallback is reported: {stderr}");
    assert_eq!(stats["delta_fallbacks"], CHANGED, "{stats}");
    assert_eq!(stats["files_from_deltas"], 0, "{stats}");
    assert!(stats["metadata_fetched"].as_u64().unwrap() > 0, "{stats}");
    checkout_equals(&node, &o.tree(2), &o.tmp.path().join("co"));
}

/// An initramfs delta reads the new module from where the pull wrote it; a pull into an archive
/// repository cannot read its uncommitted files, so there the initramfs falls back to chunks in
/// a last round, and the tree is still exact.
#[test]
fn an_initramfs_naming_files_new_in_the_pull_falls_back_where_they_are_unreadable() {
    let mut o = Origin::new(1);
    let server = osdeploy_serve(&o.repo);
    let node = o.tmp.path().join("archive-node");
    ok(osdeploy(&node).args(["init", "--mode", "archive"]));
    ok(osdeploy(&node).args(["remote", "add", "origin", &server.url, "--insecure"]));
    pull(&node);
    o.commit(2);
    ok(osdeploy(&o.repo).args(["delta", "generate", "--to", "stable"]));
    let planned = json(&ok(osdeploy(&node).args(["pull", "--dry-run", "--json", "origin", "stable"])));
    let out = osdeploy(&node).args(["pull", "--json", "origin", "stable"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pulled: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not readable here"), "the fallback names its cause: {stderr}");
    assert_eq!((&pulled["files_from_deltas"], &pulled["delta_fallbacks"]), (&(CHANGED - 1).into(), &1.into()));
    assert!(pulled["requests"].as_u64().unwrap() > planned["requests"].as_u64().unwrap(), "{pulled} {planned}");
    checkout_equals(&node, &o.tree(2), &o.tmp.path().join("co"));
}

/// In a bare repository the initramfs's delta is applied as soon as it arrives, and its read of
/// the module it names waits until the pull has written that module. Here the module's own delta
/// cannot be applied (the node's copy of the old module is damaged during the pull), so the
/// module comes as chunks, later: the initramfs waits for it and is still rebuilt from its delta.
#[test]
fn an_initramfs_delta_waits_for_a_named_file_that_comes_as_chunks() {
    let (o, _server, node) = node_behind();
    ok(osdeploy(&o.repo).args(["delta", "generate", "--to", "stable"]));
    let module = "usr/lib/modules/6.1.0-41-amd64/kernel/fs/ext4.ko";
    let listed = json(&ok(osdeploy(&node).args(["ls", "--json", &o.commits[0], module])));
    let id = listed[0]["file"].as_str().unwrap();
    let old_module = node.join("objects").join(&id[..2]).join(&id[2..]);
    let intact = fs::read(&old_module).unwrap();
    fs::write(&old_module, &intact[..intact.len() / 2]).unwrap();
    let out = osdeploy(&node).args(["pull", "--json", "origin", "stable"]).output().unwrap();
    fs::write(&old_module, &intact).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pulled: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fetched as chunks") && stderr.contains(id), "the module's fallback: {stderr}");
    assert_eq!((&pulled["files_from_deltas"], &pulled["delta_fallbacks"]), (&(CHANGED - 1).into(), &1.into()));
    checkout_equals(&node, &o.tree(2), &o.tmp.path().join("co"));
}

#[test]
fn a_node_older_than_every_delta_base_uses_chunks() {
    // The node holds release 1; deltas to release 3 start from release 2 only.
    let mut o = Origin::new(1);
    let server = osdeploy_serve(&o.repo);
    let node = o.node("node", &server.url);
    pull(&node);
    o.commit(2);
    o.commit(3);
    let v2 = o.commits[1].clone();
    ok(osdeploy(&o.repo).args(["delta", "generate", "--from", &v2, "--to", "stable"]));
    let planned = json(&ok(osdeploy(&node).args(["pull", "--dry-run", "--json", "origin", "stable"])));
    assert_eq!(planned["files_from_deltas"], 0, "{planned}");
    let pulled = pull(&node);
    assert_eq!(pulled["files_from_deltas"], 0, "{pulled}");
    assert_eq!(pulled["bytes_fetched"], planned["transfer_bytes"], "{pulled} {planned}");
    checkout_equals(&node, &o.tree(3), &o.tmp.path().join("co"));
    // A node holding release 2 does use them.
    let from_v2 = json(&ok(osdeploy(&o.repo).args(["delta", "--json", &v2, "stable"])));
    assert_eq!(from_v2["files_from_deltas"], CHANGED, "{from_v2}");
}

#[test]
fn generation_is_deterministic_and_reuses_published_deltas() {
    let delta_packs = |o: &Origin| -> Vec<String> {
        let summary: Value = serde_json::from_slice(&fs::read(o.repo.join("summary")).unwrap()).unwrap();
        summary["delta_packs"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect()
    };
    // The file deltas' ids (metadata deltas name their commits, whose times differ here).
    let file_deltas = |o: &Origin| -> Vec<String> {
        let mut ids = Vec::new();
        for pack in delta_packs(o) {
            let bytes = fs::read(o.repo.join(format!("deltas/{pack}.idx"))).unwrap();
            let index = osdeploy_store::pack::decode_index(&bytes, "test").unwrap();
            let files = index.entries.iter().filter(|e| e.kind == osdeploy_store::object::ObjectKind::Delta);
            ids.extend(files.map(|e| e.id.to_hex()));
        }
        ids
    };
    let (a, b) = (Origin::new(2), Origin::new(2));
    for o in [&a, &b] {
        ok(osdeploy(&o.repo).args(["delta", "generate", "--to", "stable"]));
    }
    assert_eq!(file_deltas(&a), file_deltas(&b), "same contents, same deltas");
    // One pack of file deltas, one of the metadata delta (which lists where the file deltas lie).
    assert_eq!((delta_packs(&a).len(), file_deltas(&a).len() as u64), (2, CHANGED));
    // Generating again encodes nothing: every pair's delta is published already.
    let again = json(&ok(osdeploy(&a.repo).args(["delta", "generate", "--json", "--to", "stable"])));
    assert_eq!((&again["reused"], &again["packs_written"]), (&CHANGED.into(), &0.into()), "{again}");
    assert_eq!(delta_packs(&a).len(), 2, "no new pack");
    // Bad requests are refused by name.
    let err = fails(osdeploy(&a.repo).args(["delta", "generate", "--to", &a.commits[0]]));
    assert!(err.contains("has no earlier release"), "{err}");
}

/// Killed at each step of a generation, the repository stays consistent, and a rerun publishes.
#[test]
fn a_killed_generation_is_finished_by_a_rerun() {
    for point in DELTA_CRASH_POINTS.into_iter().filter(|p| p.starts_with("delta:")) {
        let o = Origin::new(2);
        crash_at(&o.repo, &["delta", "generate", "--to", "stable"], point);
        let fsck = ok(osdeploy(&o.repo).args(["fsck"]));
        assert!(fsck.contains(" 0 errors"), "{point}: {fsck}");
        let rerun = json(&ok(osdeploy(&o.repo).args(["delta", "generate", "--json", "--to", "stable"])));
        assert_eq!(rerun["listed"], CHANGED, "{point}: {rerun}");
        let v1 = &o.commits[0];
        let plan = json(&ok(osdeploy(&o.repo).args(["delta", "--json", v1, "stable"])));
        assert_eq!(plan["files_from_deltas"], CHANGED, "{point}: {plan}");
    }
}

/// A pull killed once its deltas are applied resumes: the rebuilt files are adopted, nothing is
/// fetched twice that was kept, and the tree is exact.
#[test]
fn a_pull_killed_after_applying_deltas_resumes() {
    let (o, _server, node) = node_behind();
    ok(osdeploy(&o.repo).args(["delta", "generate", "--to", "stable"]));
    crash_at(&node, &["pull", "origin", "stable"], DELTA_CRASH_POINTS[2]);
    let planned = json(&ok(osdeploy(&node).args(["pull", "--dry-run", "--json", "origin", "stable"])));
    let resumed = pull(&node);
    assert_eq!(resumed["delta_fallbacks"], 0, "{resumed}");
    assert!(
        resumed["bytes_fetched"].as_u64().unwrap() <= planned["transfer_bytes"].as_u64().unwrap(),
        "{resumed} {planned}"
    );
    checkout_equals(&node, &o.tree(2), &o.tmp.path().join("co"));
}

/// A full mirror of the origin and a partial mirror of that mirror both carry the deltas: a node
/// pulling from the second mirror rebuilds the changed files from them; prune drops them with
/// their release.
#[test]
fn a_mirror_of_a_mirror_serves_deltas_and_prune_drops_them_with_their_release() {
    let (o, origin_server, node) = node_behind();
    ok(osdeploy(&o.repo).args(["delta", "generate", "--to", "stable"]));
    let (m1, m2) = (o.tmp.path().join("mirror1"), o.tmp.path().join("mirror2"));
    let first = json(&ok(osdeploy(&m1).args(["mirror", &origin_server.url]).arg(&m1).args(["--insecure", "--json"])));
    assert_eq!((&first["delta_packs_fetched"], &first["delta_indexes_fetched"]), (&2.into(), &1.into()), "{first}");
    let m1_server = osdeploy_serve(&m1);
    let args = ["--insecure", "--branch", "stable", "--json"];
    let second = json(&ok(osdeploy(&m2).args(["mirror", &m1_server.url]).arg(&m2).args(args)));
    assert_eq!((&second["delta_packs_fetched"], &second["delta_indexes_fetched"]), (&2.into(), &1.into()), "{second}");
    let again = json(&ok(osdeploy(&m2).args(["mirror", &m1_server.url]).arg(&m2).args(args)));
    assert_eq!((&again["delta_packs_fetched"], &again["delta_indexes_fetched"]), (&0.into(), &0.into()), "{again}");
    for m in [&m1, &m2] {
        let fsck = ok(osdeploy(m).args(["fsck"]));
        assert!(fsck.contains(" 0 errors"), "{fsck}");
    }
    let m2_server = osdeploy_serve(&m2);
    ok(osdeploy(&node).args(["remote", "add", "edge", &m2_server.url, "--insecure"]));
    let pulled = json(&ok(osdeploy(&node).args(["pull", "--json", "edge", "stable"])));
    assert_eq!((&pulled["files_from_deltas"], &pulled["delta_fallbacks"]), (&CHANGED.into(), &0.into()), "{pulled}");
    // The partial mirror's own summary lists the metadata delta into its branch, as the origin's
    // does: the node fetched it in place of the delta index.
    for m in [&o.repo, &m2] {
        let summary = fs::read_to_string(m.join("summary")).unwrap();
        assert!(summary.contains("\"metadata_deltas\""), "{summary}");
    }
    assert_eq!(pulled["requests"], 3, "summary, metadata delta, file deltas: {pulled}");
    let out = o.tmp.path().join("co");
    ok(osdeploy(&node).args(["checkout", "edge/stable"]).arg(&out));
    assert_same_tree(&o.tree(2), &out);
    // Release 2 goes (its branch deleted): prune drops its deltas; fsck stays clean.
    fs::remove_file(m2.join("refs/heads/stable")).unwrap();
    let dry = json(&ok(osdeploy(&m2).args(["prune", "--dry-run", "--json"])));
    assert_eq!((&dry["delta_indexes_deleted"], &dry["delta_packs_deleted"]), (&1.into(), &2.into()), "{dry}");
    ok(osdeploy(&m2).args(["prune"]));
    let left: Vec<_> = fs::read_dir(m2.join("deltas")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
    let summary = fs::read_to_string(m2.join("summary")).unwrap();
    assert!(!summary.contains("delta"), "{summary}");
}

/// `delta report` gives, for each earlier release, the update's cost with and without deltas,
/// as a table, JSON and an SVG chart.
#[test]
fn the_report_compares_updates_from_each_earlier_release() {
    // Release 3 is committed with its deltas generated at once (`commit --deltas K`).
    let mut o = Origin::new(2);
    let tree = o.tree(3);
    let committed = json(&ok(osdeploy(&o.repo)
        .args(["commit", "-b", "stable", "--version", "3", "--deltas", "3", "--json"])
        .arg(&tree)));
    o.commits.push(committed["commit"].as_str().unwrap().to_string());
    let generated = &committed["deltas"];
    assert_eq!(generated["from"].as_array().unwrap().len(), 2, "the last 3 ancestors are 2 here: {committed}");
    assert_eq!(generated["listed"], 2 * CHANGED, "each changed file, from each release: {committed}");
    let svg = o.tmp.path().join("report.svg");
    let rows = json(&ok(osdeploy(&o.repo)
        .args(["delta", "report", "--json", "--last", "5", "--svg"])
        .arg(&svg)
        .arg("stable")));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (row, from) in rows.iter().zip([&o.commits[1], &o.commits[0]]) {
        assert_eq!(row["from"], from.as_str());
        let (with, without) = (&row["with_deltas"]["transfer_bytes"], &row["chunks_only"]["transfer_bytes"]);
        assert!(with.as_u64().unwrap() * 4 < without.as_u64().unwrap(), "{row}");
        assert_eq!(row["files_from_deltas"], CHANGED, "{row}");
    }
    let chart = fs::read_to_string(&svg).unwrap();
    assert!(
        chart.contains("<svg") && chart.contains("\n1\n</text>") && chart.contains("with per-file deltas"),
        "{chart}"
    );
    let text = ok(osdeploy(&o.repo).args(["delta", "report", "stable"]));
    assert!(text.contains("chunks only") && text.lines().count() == 4, "{text}");
    let err = fails(osdeploy(&o.repo).args(["delta", "report", &o.commits[0]]));
    assert!(err.contains("no earlier release"), "{err}");
}

/// Children deflating received deltas are shared by the process: the tests that count and kill
/// them take turns.
static DEFLATE_CHILDREN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A changelog of `entries` entries and of one more, as `gzip -9n` makes them, and the gzip delta
/// between them.
fn changelog_delta(entries: u64) -> (Vec<u8>, Vec<u8>, osdeploy_store::delta::gzip::Encoded) {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old.gz"), dir.path().join("new.gz"));
    changelog_gz(&old, entries);
    changelog_gz(&new, entries + 1);
    let (old, new) = (fs::read(old).unwrap(), fs::read(new).unwrap());
    let options = osdeploy_store::delta::codec::EncodeOptions::default();
    let delta = osdeploy_store::delta::gzip::encode(&old, &new, &options, None).unwrap().expect("a gzip delta");
    (old, new, delta)
}

/// The fuzzer's input that makes preflate rebuild deflate blocks without end (a codec byte, the
/// target size in 3 bytes, the base's length in 2, the base, the payload: tests/fuzz's
/// `delta_codec` format) fails within its budget of CPU time and memory when `osdeploy` deflates it
/// again in its child, as a pull does; the child is gone afterwards, and a real gzip delta applies
/// through a new one, then through the same one again, and through another once that one is killed.
#[test]
fn a_delta_that_makes_preflate_deflate_without_end_fails_within_its_budget() {
    use osdeploy_store::delta::codec::{DeltaCodec, decode};
    let _turn = DEFLATE_CHILDREN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let known = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/known/delta_codec-preflate-endless-blocks");
    let input = fs::read(&known).unwrap();
    let (header, rest) = input.split_first_chunk::<6>().unwrap();
    assert_eq!(header[0] % 4, 3, "the reproducer is a gzip-tree delta");
    let target_size = u64::from(u32::from_le_bytes([header[1], header[2], header[3], 0]));
    let (base, payload) = rest.split_at(usize::from(u16::from_le_bytes([header[4], header[5]])));
    let files = |_: &osdeploy_store::FileId, size: u64| Ok(vec![b'r'; size as usize]);
    osdeploy_store::delta::deflate::isolate_in(env!("CARGO_BIN_EXE_osdeploy"), &["rebuild-deflate"]);
    let started = std::time::Instant::now();
    let err = decode(DeltaCodec::GzipTree, base, payload, target_size, &files).unwrap_err();
    assert!(err.contains("more than its budget of"), "the budget is named: {err}");
    eprintln!("the rebuild failed after {:?}: {err}", started.elapsed());
    let children = || fs::read_to_string("/proc/thread-self/children").unwrap().split_whitespace().count();
    assert_eq!(children(), 0, "the child that failed is gone");

    let (old, new, delta) = changelog_delta(300);
    for _ in 0..2 {
        let rebuilt = decode(delta.codec, &old, &delta.payload, new.len() as u64, &files).unwrap();
        assert!(rebuilt == new, "the gzip file is rebuilt exactly");
        assert_eq!(children(), 1, "one child, kept for the next rebuild");
    }
    // An idle child killed by someone else is replaced, not sent the next request.
    let idle = fs::read_to_string("/proc/thread-self/children").unwrap();
    ok(Command::new("kill").args(["-KILL", idle.trim()]));
    while fs::read_to_string(format!("/proc/{}/stat", idle.trim())).is_ok_and(|stat| !stat.contains(") Z ")) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let rebuilt = decode(delta.codec, &old, &delta.payload, new.len() as u64, &files).unwrap();
    assert!(rebuilt == new, "rebuilt by a new child");
    let now = fs::read_to_string("/proc/thread-self/children").unwrap();
    assert_ne!(now.trim(), idle.trim(), "a new child");
}

/// A child whose rebuilds keep panicking (preflate on corrupt corrections: debug assertions are on
/// in test builds) keeps answering: each panic is an error, and nothing it says on stderr, which
/// nobody reads while it lives, can fill the pipe and stall it (about 300 panic messages would).
#[test]
fn a_deflate_child_answers_after_hundreds_of_panics() {
    use osdeploy_store::delta::codec::{DeltaCodec, decode};
    let _turn = DEFLATE_CHILDREN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    osdeploy_store::delta::deflate::isolate_in(env!("CARGO_BIN_EXE_osdeploy"), &["rebuild-deflate"]);
    let (old, new, delta) = changelog_delta(200);
    assert_eq!(delta.codec, DeltaCodec::Gzip);
    let files = |_: &osdeploy_store::FileId, _: u64| Err("no release files".to_owned());
    let rebuild = move |payload: &[u8]| decode(DeltaCodec::Gzip, &old, payload, new.len() as u64, &files);
    // A corruption of the payload that makes preflate panic.
    let panicking = (17..delta.payload.len())
        .flat_map(|at| [0x01u8, 0x80].map(|flip| (at, flip)))
        .map(|(at, flip)| {
            let mut bad = delta.payload.clone();
            bad[at] ^= flip;
            bad
        })
        .find(|bad| rebuild(bad).is_err_and(|e| e.contains("panicked")))
        .expect("a corruption that makes preflate panic");
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..500 {
            let err = rebuild(&panicking).unwrap_err();
            assert!(err.contains("panicked"), "{err}");
        }
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("500 panicking rebuilds answered within 2 minutes");
}
