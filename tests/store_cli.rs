//! The store through the real `osdeploy` binary: commit → checkout round trips with full
//! metadata (archive and bare repositories; btrfs and xfs with reflinks, ext4 with copies), the
//! read commands and their JSON, commit id resolution, prune.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::*;
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn commit(repo: &Path, branch: &str, dir: &Path, version: &str) -> String {
    let out = ok(osdeploy(repo)
        .args(["commit", "--branch", branch, "--version", version, "--subject", "test", "--json"])
        .arg(dir));
    json(&out)["commit"].as_str().unwrap().to_string()
}

#[test]
fn archive_round_trip_keeps_every_kind_of_entry_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo, out) = (tmp.path().join("src"), tmp.path().join("repo"), tmp.path().join("out"));
    make_sample_tree(&src);
    ok(osdeploy(&repo).args(["init", "--mode", "archive"]));
    let id = commit(&repo, "main", &src, "1");
    let co = json(&ok(osdeploy(&repo).args(["checkout", "--json", "main"]).arg(&out)));
    assert_eq!(co["method"], "decompress");
    assert_eq!(co["stats"]["hardlinks"], 2);
    assert_same_tree(&src, &out);
    // the same tree commits to the same id (deterministic encoding), and nothing new is stored
    let again = json(&ok(osdeploy(&repo)
        .args(["commit", "-b", "other", "--version", "1", "--subject", "test", "--timestamp"])
        .arg(json(&ok(osdeploy(&repo).args(["show", "--json", &id])))["timestamp"].to_string())
        .arg("--json")
        .arg(&src)));
    assert_eq!(again["stored"]["chunks_new"], 0);
    assert_eq!(again["stored"]["metadata_new"], 0, "identical tree and commit fields reuse every object");
    assert_eq!(again["commit"], id.as_str());
    let fsck = json(&ok(osdeploy(&repo).args(["fsck", "--json"])));
    assert_eq!(fsck["errors"].as_array().unwrap().len(), 0, "{fsck}");
}

#[test]
fn read_commands_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = (tmp.path().join("src"), tmp.path().join("repo"));
    make_sample_tree(&src);
    ok(osdeploy(&repo).args(["init", "--mode", "archive"]));
    let v1 = commit(&repo, "stable/x86_64", &src, "1");
    fs::write(src.join("etc/os-release"), "NAME=osdeploy-sample\nVERSION=2\n").unwrap();
    fs::remove_file(src.join("usr/bin/dangling")).unwrap();
    fs::create_dir(src.join("opt")).unwrap();
    fs::write(src.join("opt/new"), "new file").unwrap();
    let v2 = commit(&repo, "stable/x86_64", &src, "2");

    let log = json(&ok(osdeploy(&repo).args(["log", "--json", "stable/x86_64"])));
    assert_eq!(log.as_array().unwrap().len(), 2);
    assert_eq!(log[0]["commit"], v2.as_str());
    assert_eq!(log[0]["parent"], v1.as_str());
    assert_eq!(log[1]["version"], "1");

    // full id, unique prefix and branch all resolve; a bad spec names itself
    for spec in [v2.as_str(), &v2[..10], "stable/x86_64"] {
        assert_eq!(json(&ok(osdeploy(&repo).args(["show", "--json", spec])))["commit"], v2.as_str());
    }
    let err = fails(osdeploy(&repo).args(["show", "nosuchbranch"]));
    assert!(err.contains("\"nosuchbranch\" is not a branch"), "{err}");

    let cat = ok(osdeploy(&repo).args(["cat", &v1, "/etc/os-release"]));
    assert_eq!(cat, "NAME=osdeploy-sample\nVERSION=1\n");
    let err = fails(osdeploy(&repo).args(["cat", &v1, "/etc"]));
    assert!(err.contains("/etc in commit") && err.contains("is a directory"), "{err}");
    let err = fails(osdeploy(&repo).args(["cat", &v1, "/etc/nope"]));
    assert!(err.contains("/etc/nope: no such path"), "{err}");

    let ls = json(&ok(osdeploy(&repo).args(["ls", "--json", &v1, "/usr/bin"])));
    let small = ls.as_array().unwrap().iter().find(|e| e["path"] == "usr/bin/small").unwrap();
    assert_eq!(small["mode"], "4755");
    assert_eq!(small["size"], 1000);
    assert!(small["xattrs"]["security.capability"].is_string());
    let sh = ls.as_array().unwrap().iter().find(|e| e["path"] == "usr/bin/sh").unwrap();
    assert_eq!(
        (sh["type"].as_str(), sh["target"].as_str(), sh["uid"].as_u64()),
        (Some("symlink"), Some("small"), Some(42))
    );
    let human = ok(osdeploy(&repo).args(["ls", &v1, "/usr/bin"]));
    assert!(human.contains("-rwsr-xr-x"), "{human}");
    let all = json(&ok(osdeploy(&repo).args(["ls", "-R", "--json", &v1])));
    assert!(all.as_array().unwrap().iter().any(|e| e["path"] == "dev/loop9" && e["type"] == "block-device"));

    let diff = json(&ok(osdeploy(&repo).args(["diff", "--json", &v1, &v2])));
    let changes: Vec<(String, String)> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["path"].as_str().unwrap().to_string(), c["change"].as_str().unwrap().to_string()))
        .collect();
    for expected in
        [("etc/os-release", "modified"), ("usr/bin/dangling", "removed"), ("opt", "added"), ("opt/new", "added")]
    {
        assert!(changes.contains(&(expected.0.to_string(), expected.1.to_string())), "{expected:?} not in {changes:?}");
    }
    let text = ok(osdeploy(&repo).args(["diff", &v1, &v2]));
    assert!(text.contains("M  /etc/os-release  (content"), "{text}");

    let refs = json(&ok(osdeploy(&repo).args(["refs", "--json"])));
    assert_eq!(refs["stable/x86_64"], v2.as_str());
    let summary = json(&fs::read_to_string(repo.join("summary")).unwrap());
    assert_eq!(summary["refs"]["stable/x86_64"]["commit"], v2.as_str());
    assert_eq!(summary["refs"]["stable/x86_64"]["version"], "2");
}

#[test]
fn prune_removes_only_unreachable_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = (tmp.path().join("src"), tmp.path().join("repo"));
    for mode in ["archive", "bare"] {
        let repo = repo.join(mode);
        fs::create_dir_all(&src).unwrap();
        write_random(&src.join("keep"), 300_000, 1);
        write_random(&src.join("drop"), 300_000, 2);
        ok(osdeploy(&repo).args(["init", "--mode", mode]));
        commit(&repo, "old", &src, "1");
        fs::remove_file(src.join("drop")).unwrap();
        let kept = commit(&repo, "new", &src, "2");
        let dry = json(&ok(osdeploy(&repo).args(["prune", "--dry-run", "--json"])));
        assert_eq!(dry["objects_removed"], 0, "{mode}: everything is reachable: {dry}");
        fs::remove_file(repo.join("refs/heads/old")).unwrap();
        // The dry run prints the plan the prune then carries out, and removes nothing.
        let before = listing_below(&repo);
        let dry = json(&ok(osdeploy(&repo).args(["prune", "--dry-run", "--json"])));
        assert_eq!(listing_below(&repo), before, "{mode}: prune --dry-run changed the repository");
        let report = json(&ok(osdeploy(&repo).args(["prune", "--json"])));
        assert_eq!(dry["dry_run"], true);
        assert_eq!(report["dry_run"], false);
        for key in ["objects_removed", "objects_kept", "bytes_freed", "packs_deleted", "packs_rewritten"] {
            assert_eq!(dry[key], report[key], "{mode} {key}: {dry} {report}");
        }
        assert!(report["objects_removed"].as_u64().unwrap() >= 3, "{mode}: {report}");
        assert!(report["bytes_freed"].as_u64().unwrap() >= 300_000 / 2, "{mode}: {report}");
        let fsck = json(&ok(osdeploy(&repo).args(["fsck", "--json"])));
        assert_eq!(fsck["errors"].as_array().unwrap().len(), 0, "{mode}: {fsck}");
        let out = tmp.path().join(format!("out-{mode}"));
        ok(osdeploy(&repo).args(["checkout", &kept]).arg(&out));
        assert_same_tree(&src, &out);
        fs::remove_dir_all(&src).unwrap();
    }
}

/// Commits into a bare repository on `fstype` and checks out on the same filesystem.
fn bare_round_trip_on(fstype: &str) -> Value {
    let fs = LoopFs::new(fstype, 512);
    let (src, repo, out) = (fs.mount.join("src"), fs.mount.join("repo"), fs.mount.join("slot"));
    make_sample_tree(&src);
    ok(osdeploy(&repo).args(["init", "--mode", "bare"]));
    commit(&repo, "main", &src, "1");
    let co = json(&ok(osdeploy(&repo).args(["checkout", "--json", "main"]).arg(&out)));
    assert_same_tree(&src, &out);
    let fsck = json(&ok(osdeploy(&repo).args(["fsck", "--json"])));
    assert_eq!(fsck["errors"].as_array().unwrap().len(), 0, "{fsck}");
    if fstype != "ext4" {
        // The big file's extents are shared with the repository's copy: FIEMAP flags them.
        let frag =
            String::from_utf8(sh("filefrag", &["-v", &out.join("usr/bin/big").display().to_string()]).stdout).unwrap();
        assert!(frag.contains("shared"), "{fstype}: checkout did not share extents:\n{frag}");
    }
    co
}

#[test]
fn bare_checkout_reflinks_on_btrfs() {
    let co = bare_round_trip_on("btrfs");
    assert_eq!(co["method"], "reflink", "{co}");
}

#[test]
fn bare_checkout_reflinks_on_xfs() {
    let co = bare_round_trip_on("xfs");
    assert_eq!(co["method"], "reflink", "{co}");
}

#[test]
fn bare_checkout_copies_on_ext4_and_says_so() {
    let co = bare_round_trip_on("ext4");
    assert_eq!(co["method"], "copy", "{co}");
}

#[test]
fn checkout_refuses_a_non_empty_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo, out) = (tmp.path().join("src"), tmp.path().join("repo"), tmp.path().join("out"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "a").unwrap();
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("precious"), "keep me").unwrap();
    ok(osdeploy(&repo).args(["init", "--mode", "archive"]));
    commit(&repo, "main", &src, "1");
    let err = fails(osdeploy(&repo).args(["checkout", "main"]).arg(&out));
    assert!(err.contains("exists and is not an empty directory") && err.contains(&out.display().to_string()), "{err}");
    assert_eq!(fs::read_to_string(out.join("precious")).unwrap(), "keep me");
}

#[test]
fn delta_plans_few_requests_for_a_small_update() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = (tmp.path().join("src"), tmp.path().join("repo"));
    fs::create_dir_all(src.join("lib")).unwrap();
    for i in 0..20 {
        write_random(&src.join(format!("lib/lib{i}.so")), 400_000, i);
    }
    ok(osdeploy(&repo).args(["init", "--mode", "archive"]));
    let v1 = commit(&repo, "main", &src, "1");
    write_random(&src.join("lib/lib7.so"), 400_000, 1000);
    fs::write(src.join("new"), "added").unwrap();
    let v2 = commit(&repo, "main", &src, "2");
    let plan = json(&ok(osdeploy(&repo).args(["delta", "--json", &v1, &v2])));
    // lib7.so was rewritten (≈ 400 kB of incompressible chunks) and one small file added.
    let raw = plan["chunk_bytes_raw"].as_u64().unwrap();
    assert!((400_000..450_000).contains(&raw), "{plan}");
    // Two new files (lib7.so rewritten with other random bytes, and "new"): no chunk of theirs is
    // on the node; the 19 unchanged libraries are not even looked at (their dirtree entries are held).
    assert_eq!((plan["files_new"].as_u64(), plan["chunks_reused"].as_u64()), (Some(2), Some(0)), "{plan}");
    // new chunks are contiguous in the new data pack, new metadata in its own pack: 2 ranges,
    // 2 indexes, the summary
    assert_eq!(plan["requests"], 5, "{plan}");
    let full = json(&ok(osdeploy(&repo).args(["delta", "--json", "none", &v2])));
    assert!(full["transfer_bytes"].as_u64().unwrap() > 20 * 400_000, "{full}");
    let text = ok(osdeploy(&repo).args(["delta", &v1, "main"]));
    assert!(text.contains("in 5 requests"), "{text}");
    let err = fails(osdeploy(&repo).args(["delta", "nope", "main"]));
    assert!(err.contains("\"nope\""), "{err}");
}

/// Runs every read command on `repo` (branch `main`) through `run`, and checks it out below `out`
/// when given (a user other than root cannot: the sample tree holds device nodes).
fn run_read_commands(repo: &Path, src: &Path, out: Option<&Path>, run: &dyn Fn(&mut std::process::Command) -> String) {
    let as_text = |args: &[&str]| run(osdeploy(repo).args(args));
    assert!(json(&as_text(&["refs", "--json"]))["main"].is_string());
    for args in [&["log", "main"][..], &["show", "main"], &["ls", "-R", "main"], &["diff", "main", "main"]] {
        as_text(args);
    }
    assert_eq!(as_text(&["cat", "main", "/etc/os-release"]), fs::read_to_string(src.join("etc/os-release")).unwrap());
    assert!(as_text(&["fsck"]).contains(" 0 errors"));
    let Some(out) = out else { return };
    let checkout = out.join(repo.file_name().unwrap());
    run(osdeploy(repo).args(["checkout", "main"]).arg(&checkout));
    assert_same_tree(src, &checkout);
}

/// Read commands need read access only: on a read-only mount (an immutable OS's sysroot, a mirror
/// served read-only), for a user who may not write the repository, and on a full disk, where a
/// write fails naming the lack of space and a rerun after freeing space completes.
#[test]
fn read_commands_work_read_only_for_other_users_and_on_a_full_disk() {
    let disk = LoopFs::new("ext4", 64);
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = tmp.path().join("src");
    make_sample_tree(&src);
    let repos: Vec<_> = ["bare", "archive"].map(|mode| disk.mount.join(mode)).into();
    for repo in &repos {
        ok(osdeploy(repo).args(["init", "--mode", repo.file_name().unwrap().to_str().unwrap()]));
        commit(repo, "main", &src, "1");
    }
    let listing = || sh("find", &[&disk.mount.display().to_string(), "-printf", "%p %s %T@\n"]).stdout;
    let before = listing();

    sh("mount", &["-o", "remount,ro", &disk.mount.display().to_string()]);
    let out = tmp.path().join("read-only");
    fs::create_dir(&out).unwrap();
    for repo in &repos {
        run_read_commands(repo, &src, Some(&out), &|cmd| ok(cmd));
    }
    sh("mount", &["-o", "remount,rw", &disk.mount.display().to_string()]);
    assert_eq!(before, listing(), "a read command changed the repository");

    // Another user (nobody), who may read but not write the repositories.
    let binary = tmp.path().join("osdeploy");
    fs::copy(env!("CARGO_BIN_EXE_osdeploy"), &binary).unwrap();
    let nobody = |cmd: &mut std::process::Command| {
        let mut wrapped = std::process::Command::new("setpriv");
        wrapped.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&binary).args(cmd.get_args());
        wrapped
    };
    let as_nobody = |cmd: &mut std::process::Command| ok(&mut nobody(cmd));
    for repo in &repos {
        run_read_commands(repo, &src, None, &as_nobody);
    }
    let err = fails(&mut nobody(osdeploy(&repos[0]).args(["commit", "-b", "other"]).arg(&src)));
    assert!(err.contains("Permission denied") && err.contains(&repos[0].display().to_string()), "{err}");

    // A full disk: reads work; a write names the lack of space and loses nothing. No `-shm` is
    // left from before, so a reader must set up its own, which the full disk refuses.
    for repo in &repos {
        assert!(!repo.join("index.sqlite-shm").exists(), "a -shm file was left in {}", repo.display());
    }
    for (block, name) in [("1M", "filler"), ("4k", "filler-4k"), ("1", "filler-1")] {
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", &format!("bs={block}"), &format!("of={}", disk.mount.join(name).display())])
            .stderr(std::process::Stdio::null())
            .status();
    }
    let free = sh("df", &["--output=avail", &disk.mount.display().to_string()]).stdout;
    assert_eq!(String::from_utf8_lossy(&free).lines().nth(1).map(str::trim), Some("0"), "the disk is not full");
    let out = tmp.path().join("full-disk");
    fs::create_dir(&out).unwrap();
    let bigger = tmp.path().join("bigger");
    sh("cp", &["-a", &src.display().to_string(), &bigger.display().to_string()]);
    write_random(&bigger.join("usr/new.so"), 4 << 20, 3);
    for repo in &repos {
        run_read_commands(repo, &src, Some(&out), &|cmd| ok(cmd));
        let err = fails(osdeploy(repo).args(["commit", "-b", "main"]).arg(&bigger));
        assert!(err.contains("No space left on device") && !err.contains("damaged"), "{err}");
    }
    for name in ["filler", "filler-4k", "filler-1"] {
        fs::remove_file(disk.mount.join(name)).unwrap();
    }
    for repo in &repos {
        assert!(ok(osdeploy(repo).arg("fsck")).contains(" 0 errors"));
        commit(repo, "main", &bigger, "2");
        assert!(ok(osdeploy(repo).arg("fsck")).contains(" 0 errors"));
    }
}

/// Names that are not UTF-8 (and names with a newline or a backslash) print escaped — two names
/// that lossy UTF-8 would print alike print differently — carry through JSON losslessly, and are
/// accepted as arguments, raw or as printed.
#[test]
fn names_that_are_not_utf8_print_escaped_and_can_be_named() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = (tmp.path().join("src"), tmp.path().join("repo"));
    let dir = src.join("d");
    fs::create_dir_all(&dir).unwrap();
    let names: [&[u8]; 5] = [b"\xff", b"\xfe", b"line\nbreak", b"back\\slash", b"caf\xc3\xa9"];
    for (i, name) in names.iter().enumerate() {
        fs::write(dir.join(OsStr::from_bytes(name)), format!("file {i}\n")).unwrap();
    }
    ok(osdeploy(&repo).args(["init", "--mode", "archive"]));
    let first = commit(&repo, "main", &src, "1");
    let printed = [r"/d/\xff", r"/d/\xfe", r"/d/line\nbreak", r"/d/back\\slash", "/d/café"];

    let listing = ok(osdeploy(&repo).args(["ls", "main", "/d"]));
    let shown: Vec<&str> = listing.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    let mut expected: Vec<&str> = printed.iter().map(|p| &p[1..]).collect();
    expected.sort_by_key(|p| osdeploy_store::name::unescape(p.as_bytes()).unwrap());
    assert_eq!(shown, expected, "{listing}");

    let entries = json(&ok(osdeploy(&repo).args(["ls", "--json", "-R", "main", "/d"])));
    let mut carried: Vec<Vec<u8>> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| osdeploy_store::name::unescape(e["path"].as_str().unwrap().as_bytes()).unwrap())
        .collect();
    carried.sort();
    let mut originals: Vec<Vec<u8>> = names.iter().map(|n| [&b"d/"[..], n].concat()).collect();
    originals.sort();
    assert_eq!(carried, originals);

    for (i, (name, shown)) in names.iter().zip(printed).enumerate() {
        let raw = [&b"/d/"[..], name].concat();
        assert_eq!(ok(osdeploy(&repo).args(["cat", "main"]).arg(OsStr::from_bytes(&raw))), format!("file {i}\n"));
        assert_eq!(ok(osdeploy(&repo).args(["cat", "main", shown])), format!("file {i}\n"), "{shown}");
    }
    let err = fails(osdeploy(&repo).args(["cat", "main"]).arg(OsStr::from_bytes(b"/d/\xfd")));
    assert!(err.contains(r"d/\xfd"), "{err}");

    fs::write(dir.join(OsStr::from_bytes(b"\xfe")), "changed\n").unwrap();
    let second = commit(&repo, "main", &src, "2");
    let diff = ok(osdeploy(&repo).args(["diff", &first, &second]));
    assert!(diff.trim().starts_with(r"M  /d/\xfe  (content"), "{diff}");
    let changes = json(&ok(osdeploy(&repo).args(["diff", "--json", &first, &second])));
    assert_eq!(changes["changes"][0]["path"], r"d/\xfe");
}
