//! Deployments end to end with the real binary, on loop-mounted filesystems: an origin archive repository served by
//! `osdeploy serve`, a sysroot with the state-file bootloader (boot-check plays the bootloader, so a reboot is one
//! command), pull, switch by reflink, boot-check, health-checked mark-good, automatic fallback after failed trial
//! boots, rollback, crashes in the middle of a switch, the /etc three-way merge, symlinks pointing out of the tree,
//! the sysroot lock, bad input. User data (var/, home/, var/lib/containerd/) is proven untouched by a manifest of
//! every path's type, mode, owner, size, mtime, ctime and content hash.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

/// A node: a sysroot on a loop-mounted filesystem (state-file bootloader, remote `origin` added), an origin archive
/// repository served over HTTP, a config dir. Fields drop in order: server, then the filesystem, then the temp dir.
struct Node {
    server: Server,
    fs: LoopFs,
    tmp: tempfile::TempDir,
}

impl Node {
    fn new(fstype: &str) -> Node {
        let fs = LoopFs::new(fstype, 600);
        let tmp = tempfile::tempdir().unwrap();
        let origin = tmp.path().join("origin");
        ok(osdeploy(&origin).args(["init", "--mode", "archive"]));
        fs::create_dir_all(tmp.path().join("config/health.d")).unwrap();
        let server = osdeploy_serve(&origin);
        let node = Node { server, fs, tmp };
        let out = ok(node.osd().args(["init-sysroot", "--bootloader", "file"]));
        assert!(out.contains("initialized sysroot"), "{out}");
        ok(node.osd().args(["remote", "add", "origin", &node.server.url, "--insecure"]));
        node
    }

    fn sysroot(&self) -> &Path {
        &self.fs.mount
    }

    fn slot(&self, slot: &str) -> PathBuf {
        self.sysroot().join("osdeploy/slots").join(slot)
    }

    fn config(&self) -> PathBuf {
        self.tmp.path().join("config")
    }

    /// `osdeploy --sysroot SYSROOT --config-dir CONFIG` (no --repo: the sysroot's repository).
    fn osd(&self) -> Command {
        osd_at(self.sysroot(), &self.config())
    }

    /// Commits `tree` on the origin's `stable` branch; returns the commit id.
    fn release(&self, version: &str, tree: &Path) -> String {
        let origin = self.tmp.path().join("origin");
        ok(osdeploy(&origin).args(["commit", "-b", "stable", "--version", version]).arg(tree)).trim().to_string()
    }

    /// Pulls the origin's release, switches to it, boots it (slot b) and marks it good.
    fn deploy_first_release(&self) {
        ok(self.osd().args(["pull", "origin", "stable"]));
        self.switch(None);
        assert_eq!(self.boot(), "b");
        ok(self.osd().arg("mark-good"));
    }

    fn status(&self) -> Value {
        json(&ok(self.osd().args(["status", "--json"])))
    }

    fn switch(&self, target: Option<&str>) -> Value {
        json(&ok(self.osd().arg("switch").arg("--json").args(target)))
    }

    /// Simulated reboot; returns the slot booted.
    fn boot(&self) -> String {
        let report = json(&ok(self.osd().args(["boot-check", "--json"])));
        report["booted"].as_str().unwrap().to_string()
    }

    fn health_check(&self, name: &str, body: &str) {
        write_script(&self.config().join("health.d").join(name), body);
    }

    fn remove_health_check(&self, name: &str) {
        fs::remove_file(self.config().join("health.d").join(name)).unwrap();
    }

    fn tree(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// Release 1: the sample tree (every kind of entry) plus libraries and /etc files to merge.
fn release_tree(dir: &Path) {
    make_sample_tree(dir);
    fs::create_dir_all(dir.join("usr/lib")).unwrap();
    for i in 0..4 {
        write_random(&dir.join(format!("usr/lib/lib{i}.so")), 300_000, 10 + i);
    }
    fs::write(dir.join("etc/app.conf"), "setting=default-1\n").unwrap();
    fs::write(dir.join("etc/motd"), "welcome\n").unwrap();
    fs::create_dir_all(dir.join("etc/app.d")).unwrap();
    fs::write(dir.join("etc/app.d/10-base.conf"), "base=1\n").unwrap();
}

/// A copy of `from` at `to` with the changes of a new release.
fn next_release(from: &Path, to: &Path, version: &str) {
    sh("cp", &["-a", &from.display().to_string(), &to.display().to_string()]);
    fs::write(to.join("etc/os-release"), format!("NAME=osdeploy-sample\nVERSION={version}\n")).unwrap();
    write_random(&to.join("usr/lib/lib1.so"), 300_000, 1000 + version.len() as u64);
}

/// Type, mode, owner, size, mtime, ctime, symlink target of every path below var/ and home/, and the sha256 of
/// every file: any write, chmod, chown, xattr change, rename or deletion shows.
fn manifest(sysroot: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "cd \"$1\" && find var home -printf '%p|%y|%m|%U|%G|%s|%T@|%C@|%l\\n' | LC_ALL=C sort && \
             find var home -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum",
        )
        .arg("sh")
        .arg(sysroot)
        .output()
        .unwrap();
    assert!(out.status.success(), "manifest: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Fills the shared user-data directories with files of every kind.
fn fill_user_data(sysroot: &Path) {
    let blobs = sysroot.join("var/lib/containerd/io.containerd.content.v1.content/blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    for i in 0..5 {
        write_random(&blobs.join(format!("{i:064x}")), 400_000, 500 + i);
    }
    fs::create_dir_all(sysroot.join("var/log")).unwrap();
    fs::write(sysroot.join("var/log/app.log"), "line 1\nline 2\n").unwrap();
    let home = sysroot.join("home/alice");
    fs::create_dir_all(home.join(".ssh")).unwrap();
    fs::write(home.join(".ssh/authorized_keys"), "ssh-ed25519 AAAA alice\n").unwrap();
    fs::set_permissions(home.join(".ssh"), fs::Permissions::from_mode(0o700)).unwrap();
    sh("chown", &["-R", "1000:1000", &home.display().to_string()]);
    sh("setfattr", &["-n", "user.tag", "-v", "mine", &home.join(".ssh/authorized_keys").display().to_string()]);
    symlink("/etc/passwd", home.join("passwd-link")).unwrap();
    symlink("../..", sysroot.join("var/log/up")).unwrap();
}

#[test]
fn update_fallback_rollback_and_crashes_leave_user_data_untouched() {
    let node = Node::new("btrfs");
    let (v1_tree, v2_tree) = (node.tree("v1"), node.tree("v2"));
    release_tree(&v1_tree);
    let v1 = node.release("1", &v1_tree);
    fill_user_data(node.sysroot());
    let before = manifest(node.sysroot());
    assert!(before.contains("var/lib/containerd/") && before.contains("home/alice/.ssh"), "{before}");

    // First deployment: pull records the followed branch, switch deploys into slot b by reflink.
    ok(node.osd().args(["pull", "origin", "stable"]));
    assert_eq!(node.status()["follows"], serde_json::json!({"remote": "origin", "branch": "stable"}));
    let sw = node.switch(None);
    assert_eq!((sw["slot"].as_str(), sw["commit"].as_str()), (Some("b"), Some(v1.as_str())), "{sw}");
    assert_eq!(sw["method"], "reflink", "{sw}");
    assert_eq!(sw["same_filesystem"], true);
    assert_same_tree(&v1_tree, &node.slot("b"));
    // Every data extent of the slot is shared with the repository: the switch wrote no file data.
    let slot_b = node.slot("b").display().to_string();
    let du = String::from_utf8(sh("btrfs", &["filesystem", "du", "--raw", "-s", &slot_b]).stdout).unwrap();
    let fields: Vec<u64> = du.lines().nth(1).unwrap().split_whitespace().take(3).map(|f| f.parse().unwrap()).collect();
    assert!(fields[0] > 8 << 20 && fields[1] == 0 && fields[2] == fields[0], "btrfs filesystem du: {du}");
    let st = node.status();
    assert_eq!((st["default"].as_str(), st["next_boot"].as_str()), (Some("a"), Some("b")), "{st}");
    assert_eq!(st["slots"]["b"]["state"], "trial");
    assert_eq!(st["slots"]["a"]["state"], "empty");

    // Reboot into the trial, health check passes, mark-good makes b the default.
    assert_eq!(node.boot(), "b");
    node.health_check("10-os-release", "test -f \"$OSDEPLOY_SYSROOT/osdeploy/slots/$OSDEPLOY_SLOT/etc/os-release\"");
    let out = ok(node.osd().arg("mark-good"));
    assert!(out.contains("10-os-release: passed") && out.contains("slot b is good"), "{out}");
    let st = node.status();
    for (key, want) in [("booted", "b"), ("default", "b"), ("next_boot", "b")] {
        assert_eq!(st[key], want, "{key}: {st}");
    }
    assert_eq!(st["slots"]["b"]["commit"], v1.as_str());
    assert_eq!(st["slots"]["b"]["version"], "1");
    assert_eq!(st["slots"]["b"]["state"], "good");
    assert_eq!(st["slots"]["a"]["state"], "empty");

    // Release 2 with a failing health check: mark-good refuses, the tries run out, the bootloader falls back.
    next_release(&v1_tree, &v2_tree, "2");
    let v2 = node.release("2", &v2_tree);
    ok(node.osd().arg("pull")); // the followed branch
    // The dry run prints the switch that follows, and writes nothing: not the state, a slot, a ref or the bootloader.
    let sysroot_before = listing_below(node.sysroot());
    let plan = json(&ok(node.osd().args(["switch", "--dry-run", "--json"])));
    assert_eq!(listing_below(node.sysroot()), sysroot_before, "switch --dry-run wrote to the sysroot");
    assert_eq!(
        (plan["slot"].as_str(), plan["booted"].as_str(), plan["commit"].as_str(), plan["method"].as_str()),
        (Some("a"), Some("b"), Some(v2.as_str()), Some("reflink")),
        "{plan}"
    );
    assert_eq!(plan["etc"], serde_json::json!({"kind": "merge", "base": v1}), "{plan}");
    assert_eq!((plan["tries"].as_u64(), plan["cancel_trial"].as_bool()), (Some(3), Some(false)), "{plan}");
    let text = ok(node.osd().args(["switch", "--dry-run"]));
    assert!(text.contains("nothing written") && text.contains("three-way merge"), "{text}");
    let sw = node.switch(None);
    assert_eq!(
        (sw["slot"].as_str(), sw["commit"].as_str(), sw["method"].as_str()),
        (Some("a"), Some(v2.as_str()), Some("reflink"))
    );
    assert_same_tree(&v2_tree, &node.slot("a"));
    node.health_check("20-fails", "echo 'service not up' >&2; exit 1");
    assert_eq!(node.boot(), "a");
    let err = fails(node.osd().arg("mark-good"));
    assert!(err.contains("health checks failed (20-fails)") && err.contains("slot a was not marked good"), "{err}");
    let st = node.status();
    assert_eq!((st["default"].as_str(), st["slots"]["a"]["state"].as_str()), (Some("b"), Some("trial")), "{st}");
    let booted: Vec<String> = (0..3).map(|_| node.boot()).collect();
    assert_eq!(booted, ["a", "a", "b"], "three tries, then the default again");
    let st = node.status();
    assert_eq!(
        (st["booted"].as_str(), st["default"].as_str(), st["next_boot"].as_str()),
        (Some("b"), Some("b"), Some("b"))
    );
    assert_eq!(st["slots"]["a"]["state"], "bad", "{st}");
    assert_eq!(st["slots"]["a"]["boot_attempts"], 3, "{st}");
    assert_eq!(st["slots"]["b"]["state"], "good");
    node.remove_health_check("20-fails");

    // A hanging health check is killed at its timeout and counts as failed.
    fs::write(node.config().join("config.toml"), "health_check_timeout = 2\n").unwrap();
    node.health_check("30-hangs", "sleep 600");
    let started = Instant::now();
    let err = fails(node.osd().arg("mark-good"));
    assert!(started.elapsed() < Duration::from_secs(30), "the hanging check was not killed");
    assert!(err.contains("health checks failed (30-hangs)"), "{err}");
    node.remove_health_check("30-hangs");

    // Cycles of switch / reboot / mark-good / rollback, with crashes in the middle of switch.
    let releases = [v1.as_str(), v2.as_str()];
    for cycle in 0..20 {
        let target = releases[cycle % 2];
        if let Some(step) = [2, 7, 11, 13, 17].iter().position(|c| *c == cycle).map(|i| SWITCH_CRASH_POINTS[i]) {
            // Aborted at each named step of the switch: the booted slot still boots, the rerun below completes.
            let booted = node.status()["booted"].as_str().unwrap().to_string();
            let out = node.osd().env("OSDEPLOY_CRASH_AT", step).args(["switch", target]).output();
            let out = out.unwrap();
            assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(step), "{step}");
            assert_eq!(node.status()["next_boot"], booted.as_str());
            assert_eq!(node.boot(), booted, "the active slot boots after the crash");
            assert!(node.slot(&booted).join("etc/os-release").exists());
        }
        if cycle == 5 || cycle == 15 {
            // SIGKILL in the middle of the switch (as soon as it recorded its start): the slot that boots next is
            // complete.
            let state_file = node.sysroot().join("osdeploy/state");
            let started_switches = |text: &str| text.matches("\"switch-started\"").count();
            let before = started_switches(&fs::read_to_string(&state_file).unwrap());
            let mut child =
                node.osd().args(["switch", target]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while started_switches(&fs::read_to_string(&state_file).unwrap_or_default()) == before {
                assert!(Instant::now() < deadline, "the switch did not start");
            }
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert_eq!(status.signal(), Some(9), "the switch was killed midway, not after it finished");
            let booted = node.boot();
            let st = node.status();
            let state = st["slots"][&booted]["state"].as_str().unwrap().to_string();
            assert!(state == "good" || state == "trial", "slot {booted} booted in state {state}: {st}");
            assert!(node.slot(&booted).join("etc/os-release").exists());
            ok(node.osd().arg("mark-good"));
            continue;
        }
        let booted = node.status()["booted"].as_str().unwrap().to_string();
        let standby = if booted == "a" { "b" } else { "a" };
        let sw = node.switch(Some(target));
        assert_eq!((sw["slot"].as_str(), sw["method"].as_str()), (Some(standby), Some("reflink")), "{sw}");
        assert_eq!(node.boot(), standby);
        ok(node.osd().arg("mark-good"));
        if cycle % 3 == 0 {
            let out = ok(node.osd().arg("rollback"));
            assert!(out.contains(&format!("slot {booted} boots next")), "{out}");
            assert_eq!(node.boot(), booted);
            let st = node.status();
            assert_eq!(st["default"], booted.as_str());
            assert_eq!(st["slots"][&booted]["state"], "good");
        }
    }
    let after = manifest(node.sysroot());
    assert_eq!(before, after, "user data changed");
    let booted = node.status()["booted"].as_str().unwrap().to_string();
    let commit = node.status()["slots"][&booted]["commit"].as_str().unwrap().to_string();
    assert_same_tree(if commit == v1 { &v1_tree } else { &v2_tree }, &node.slot(&booted));
}

#[test]
fn etc_three_way_merge_keeps_local_changes_and_reports_conflicts() {
    let node = Node::new("btrfs");
    let (v1_tree, v2_tree) = (node.tree("v1"), node.tree("v2"));
    release_tree(&v1_tree);
    node.release("1", &v1_tree);
    node.deploy_first_release();

    // Local edits in the booted slot.
    let etc = node.slot("b").join("etc");
    fs::write(etc.join("motd"), "welcome to alice's host\n").unwrap();
    fs::write(etc.join("app.conf"), "setting=local\n").unwrap();
    fs::write(etc.join("app.d/50-local.conf"), "local=1\n").unwrap();
    fs::set_permissions(etc.join("app.d/50-local.conf"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::remove_file(etc.join("empty")).unwrap();

    // Release 2 changes os-release (not edited locally), app.conf (edited locally too) and adds a file.
    next_release(&v1_tree, &v2_tree, "2");
    fs::write(v2_tree.join("etc/app.conf"), "setting=default-2\n").unwrap();
    fs::write(v2_tree.join("etc/new.conf"), "new=2\n").unwrap();
    node.release("2", &v2_tree);
    ok(node.osd().arg("pull"));
    let out = ok(node.osd().arg("switch"));
    assert!(out.contains("/etc conflict: app.conf changed locally and in the new release"), "{out}");
    let new_etc = node.slot("a").join("etc");
    let read = |p: &str| fs::read_to_string(new_etc.join(p)).unwrap();
    assert_eq!(read("motd"), "welcome to alice's host\n", "a local edit survives");
    assert_eq!(read("app.conf"), "setting=local\n", "on conflict, local wins");
    assert_eq!(read("os-release"), "NAME=osdeploy-sample\nVERSION=2\n", "the release's change arrives");
    assert_eq!(read("new.conf"), "new=2\n");
    assert_eq!(read("app.d/50-local.conf"), "local=1\n", "a local addition is carried over");
    assert_eq!(fs::metadata(new_etc.join("app.d/50-local.conf")).unwrap().permissions().mode() & 0o7777, 0o640);
    assert!(!new_etc.join("empty").exists(), "a local deletion is kept");
    let st = node.status();
    assert_eq!(st["slots"]["a"]["etc_conflicts"], serde_json::json!(["app.conf"]), "{st}");

    // Release 3 makes /etc a symlink: the local changes cannot be carried over, and switch says
    // so instead of calling them kept.
    let v3_tree = node.tree("v3");
    next_release(&v2_tree, &v3_tree, "3");
    fs::rename(v3_tree.join("etc"), v3_tree.join("usr/etc")).unwrap();
    std::os::unix::fs::symlink("usr/etc", v3_tree.join("etc")).unwrap();
    node.release("3", &v3_tree);
    ok(node.osd().arg("pull"));
    let out = ok(node.osd().arg("switch"));
    assert!(out.contains("local changes were not carried over"), "{out}");
    assert!(out.contains("/etc: local changes NOT carried over: ") && out.contains("app.conf"), "{out}");
    assert!(!out.contains("the local version was kept"), "{out}");
    let st = node.status();
    assert_eq!(st["slots"]["a"]["etc_conflicts"], serde_json::json!([]), "{st}");
}

#[test]
fn symlinks_pointing_outside_never_make_switch_write_outside_the_slot() {
    let node = Node::new("btrfs");
    let canary = node.tree("canary");
    fs::create_dir_all(canary.join("sub")).unwrap();
    fs::write(canary.join("precious"), "do not touch\n").unwrap();
    let canary_before = sh("find", &[&canary.display().to_string(), "-printf", "%p|%y|%m|%s|%T@|%C@\\n"]).stdout;
    let (v1_tree, v2_tree) = (node.tree("v1"), node.tree("v2"));
    release_tree(&v1_tree);
    symlink(&canary, v1_tree.join("etc/evil")).unwrap();
    symlink("/", v1_tree.join("etc/root")).unwrap();
    symlink(&canary, v1_tree.join("usr/escape")).unwrap();
    node.release("1", &v1_tree);
    node.deploy_first_release();

    // Locally, etc/evil becomes a directory with a file and a new local symlink points out too.
    let etc = node.slot("b").join("etc");
    fs::remove_file(etc.join("evil")).unwrap();
    fs::create_dir(etc.join("evil")).unwrap();
    fs::write(etc.join("evil/precious"), "local\n").unwrap();
    symlink(canary.join("sub"), etc.join("local-link")).unwrap();
    // Release 2 points etc/evil elsewhere outside: a conflict, the local directory wins, inside the slot.
    next_release(&v1_tree, &v2_tree, "2");
    fs::remove_file(v2_tree.join("etc/evil")).unwrap();
    symlink(canary.join("sub"), v2_tree.join("etc/evil")).unwrap();
    node.release("2", &v2_tree);
    ok(node.osd().arg("pull"));
    let sw = node.switch(None);
    assert!(sw["etc"]["conflicts"].as_array().unwrap().iter().any(|c| c == "evil"), "{sw}");
    let new_etc = node.slot("a").join("etc");
    assert_eq!(fs::read_to_string(new_etc.join("evil/precious")).unwrap(), "local\n");
    assert!(fs::symlink_metadata(new_etc.join("evil")).unwrap().is_dir());
    assert_eq!(fs::read_link(new_etc.join("local-link")).unwrap(), canary.join("sub"));
    assert_eq!(fs::read_link(new_etc.join("root")).unwrap(), Path::new("/"));
    // Boot it and switch back into slot b (emptying a tree full of outward symlinks), and again.
    assert_eq!(node.boot(), "a");
    ok(node.osd().arg("mark-good"));
    node.switch(Some("origin/stable"));
    assert_eq!(node.boot(), "b");
    ok(node.osd().arg("mark-good"));
    node.switch(Some("origin/stable"));
    let canary_after = sh("find", &[&canary.display().to_string(), "-printf", "%p|%y|%m|%s|%T@|%C@\\n"]).stdout;
    assert_eq!(String::from_utf8_lossy(&canary_before), String::from_utf8_lossy(&canary_after));
    assert_eq!(fs::read_to_string(canary.join("precious")).unwrap(), "do not touch\n");
    assert!(!Path::new("/precious").exists());
}

#[test]
fn lock_missing_commits_and_corrupt_objects_are_refused_clearly() {
    let node = Node::new("btrfs");
    let v1_tree = node.tree("v1");
    release_tree(&v1_tree);
    node.release("1", &v1_tree);
    ok(node.osd().args(["pull", "origin", "stable"]));

    // A commit that is not in the repository, a branch that does not exist.
    let missing = "0".repeat(64);
    let err = fails(node.osd().args(["switch", &missing]));
    assert!(err.contains("is not a branch or commit of the repository") && err.contains("pull it first"), "{err}");
    let err = fails(node.osd().args(["switch", "origin/nope"]));
    assert!(err.contains("\"origin/nope\" is not a branch or commit"), "{err}");
    assert_eq!(node.status()["slots"]["b"]["state"], "empty", "nothing was touched");

    // A second osdeploy on the same sysroot while one holds the lock (mark-good running a slow check).
    node.switch(None);
    assert_eq!(node.boot(), "b");
    let started = node.tmp.path().join("check-started");
    node.health_check("10-slow", &format!("touch {}; sleep 3", started.display()));
    let mut holder = node.osd().arg("mark-good").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the health check did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = fails(node.osd().arg("switch"));
    assert!(
        err.contains("is locked by another osdeploy process") && err.contains(&format!("pid {}", holder.id())),
        "{err}"
    );
    assert!(holder.wait().unwrap().success());
    node.remove_health_check("10-slow");
    assert_eq!(node.status()["slots"]["b"]["state"], "good");

    // A content file of the commit is missing: the checkout fails, the slot is bad, the bootloader is not armed.
    let objects = node.sysroot().join("osdeploy/repo/objects");
    let victim =
        String::from_utf8(sh("find", &[&objects.display().to_string(), "-type", "f", "-size", "+200k"]).stdout)
            .unwrap()
            .lines()
            .next()
            .expect("a large content file")
            .to_string();
    // A bit flipped in it on disk: `switch --verify` re-hashes the content and refuses it.
    let mut bytes = fs::read(&victim).unwrap();
    bytes[1000] ^= 0x01;
    fs::write(&victim, &bytes).unwrap();
    let err = fails(node.osd().args(["switch", "--verify"]));
    assert!(err.contains("slot a is marked bad and the bootloader was not changed"), "{err}");
    assert!(err.contains("hashes to") && err.contains(&victim), "{err}");
    assert_eq!(node.status()["next_boot"], "b");
    fs::remove_file(&victim).unwrap();
    let err = fails(node.osd().arg("switch"));
    assert!(err.contains("slot a is marked bad and the bootloader was not changed"), "{err}");
    assert!(err.contains("content is missing"), "{err}");
    let st = node.status();
    assert_eq!(st["slots"]["a"]["state"], "bad", "{st}");
    assert!(st["slots"]["a"]["reason"].as_str().unwrap().contains("content is missing"), "{st}");
    assert_eq!((st["next_boot"].as_str(), st["trial"].clone()), (Some("b"), Value::Null), "{st}");
    assert_eq!(node.boot(), "b");
    let err = fails(node.osd().arg("rollback"));
    assert!(err.contains("slot a is bad") && err.contains("refusing to roll back"), "{err}");
}

#[test]
fn on_xfs_switch_reflinks() {
    let node = Node::new("xfs");
    let v1_tree = node.tree("v1");
    release_tree(&v1_tree);
    let v1 = node.release("1", &v1_tree);
    ok(node.osd().args(["pull", "origin", "stable"]));
    let sw = node.switch(None);
    assert_eq!((sw["method"].as_str(), sw["commit"].as_str()), (Some("reflink"), Some(v1.as_str())), "{sw}");
    assert_same_tree(&v1_tree, &node.slot("b"));
    // The slot's large file shares its extents with the repository's content file.
    let filefrag = sh("filefrag", &["-v", &node.slot("b").join("usr/bin/big").display().to_string()]).stdout;
    assert!(String::from_utf8_lossy(&filefrag).contains("shared"), "{}", String::from_utf8_lossy(&filefrag));
    assert_eq!(node.boot(), "b");
    ok(node.osd().arg("mark-good"));
    assert_eq!(node.status()["slots"]["b"]["state"], "good");
}

#[test]
fn on_ext4_switch_copies_and_says_so_and_survives_a_full_disk() {
    let node = Node::new("ext4");
    let v1_tree = node.tree("v1");
    release_tree(&v1_tree);
    node.release("1", &v1_tree);
    ok(node.osd().args(["pull", "origin", "stable"]));

    // A full disk in the middle of the copy: the slot is bad, the bootloader not armed, a rerun with space works.
    let filler = node.sysroot().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=1M", "status=none"])
        .status()
        .expect("dd");
    let full = fs::metadata(&filler).unwrap().len();
    fs::OpenOptions::new().write(true).open(&filler).unwrap().set_len(full - (4 << 20)).unwrap();
    let err = fails(node.osd().arg("switch"));
    assert!(err.contains("No space left on device") && err.contains("slot b is marked bad"), "{err}");
    let st = node.status();
    assert_eq!(st["slots"]["b"]["state"], "bad", "{st}");
    assert_eq!((st["next_boot"].as_str(), st["trial"].clone()), (Some("a"), Value::Null), "{st}");
    assert_eq!(fs::read_dir(node.slot("b")).unwrap().count(), 0, "the partial tree was removed");
    fs::remove_file(&filler).unwrap();

    let plan = json(&ok(node.osd().args(["switch", "--dry-run", "--json"])));
    assert_eq!((plan["method"].as_str(), plan["same_filesystem"].as_bool()), (Some("copy"), Some(true)), "{plan}");
    let out = ok(node.osd().arg("switch"));
    assert!(
        out.contains("checkout method: copy") && out.contains("copied (this filesystem cannot share extents)"),
        "{out}"
    );
    assert_same_tree(&v1_tree, &node.slot("b"));
    assert_eq!(node.boot(), "b");
    ok(node.osd().arg("mark-good"));
    assert_eq!(node.status()["default"], "b");
}

#[test]
fn systemd_units_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let mut names = Vec::new();
    for name in ["osdeploy-boot-check.service", "osdeploy-mark-good.service"] {
        let text = fs::read_to_string(units.join(name)).unwrap();
        assert!(text.contains("ExecStart=/usr/bin/osdeploy --sysroot /sysroot"), "{name}");
        // verify checks that ExecStart is executable: point it at the binary under test
        fs::write(tmp.path().join(name), text.replace("/usr/bin/osdeploy", env!("CARGO_BIN_EXE_osdeploy"))).unwrap();
        names.push(tmp.path().join(name).display().to_string());
    }
    let mark_good = fs::read_to_string(units.join("osdeploy-mark-good.service")).unwrap();
    assert!(mark_good.contains("After=boot-complete.target"), "mark-good runs once the boot is complete");
    let mut args = vec!["verify", "--man=no"];
    args.extend(names.iter().map(String::as_str));
    let out = sh("systemd-analyze", &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("osdeploy-"), "systemd-analyze verify complained: {stderr}");
}

#[test]
fn real_bootloader_backends_drive_a_trial_from_the_kernel_command_line() {
    for kind in ["grub", "systemd-boot", "uboot"] {
        let tmp = tempfile::tempdir().unwrap();
        let (sysroot, config, tree) = (tmp.path().join("sysroot"), tmp.path().join("config"), tmp.path().join("tree"));
        fs::create_dir_all(&sysroot).unwrap();
        fs::create_dir_all(config.join("health.d")).unwrap();
        release_tree(&tree);
        // GRUB and systemd-boot nodes boot the release's kernel with the configured command line.
        fs::create_dir_all(tree.join("boot")).unwrap();
        fs::write(tree.join("boot/vmlinuz-6.1.0-1-amd64"), "kernel").unwrap();
        fs::write(config.join("config.toml"), "kernel_cmdline = \"root=LABEL=sysroot rw\"\n").unwrap();
        ok(osd_at(&sysroot, &config).args(["init-sysroot", "--bootloader", kind]));
        ok(osd_at(&sysroot, &config).args(["commit", "-b", "release"]).arg(&tree));
        // A fresh node boots slot a (nothing in it yet); switch fills and arms slot b.
        let cmdline = tmp.path().join("cmdline");
        fs::write(&cmdline, "BOOT_IMAGE=/vmlinuz ro quiet osdeploy.slot=a\n").unwrap();
        ok(osd_at(&sysroot, &config).args(["boot-check", "--cmdline"]).arg(&cmdline));
        let sw = json(&ok(osd_at(&sysroot, &config).args(["switch", "--json", "release"])));
        assert_eq!(sw["slot"], "b", "{kind}: {sw}");
        let st = json(&ok(osd_at(&sysroot, &config).args(["status", "--json"])));
        assert_eq!((st["next_boot"].as_str(), st["default"].as_str()), (Some("b"), Some("a")), "{kind}: {st}");
        if kind == "grub" {
            // the real grub-editenv reads the trial we armed
            let env = sh("grub-editenv", &[&sysroot.join("boot/grub/grubenv").display().to_string(), "list"]);
            let env = String::from_utf8_lossy(&env.stdout).into_owned();
            assert!(env.contains("osdeploy_trial=b") && env.contains("osdeploy_default=a"), "{env}");
        }
        // the bootloader started slot b: the kernel command line says so
        fs::write(&cmdline, "BOOT_IMAGE=/vmlinuz ro quiet osdeploy.slot=b\n").unwrap();
        let bc = json(&ok(osd_at(&sysroot, &config).args(["boot-check", "--json", "--cmdline"]).arg(&cmdline)));
        assert_eq!(bc["booted"], "b", "{kind}: {bc}");
        ok(osd_at(&sysroot, &config).arg("mark-good"));
        let st = json(&ok(osd_at(&sysroot, &config).args(["status", "--json"])));
        assert_eq!((st["booted"].as_str(), st["default"].as_str()), (Some("b"), Some("b")), "{kind}: {st}");
        assert_eq!(st["slots"]["b"]["state"], "good", "{kind}: {st}");
        if kind == "grub" {
            let env = sh("grub-editenv", &[&sysroot.join("boot/grub/grubenv").display().to_string(), "list"]);
            assert!(String::from_utf8_lossy(&env.stdout).contains("osdeploy_default=b"), "{kind}");
        }
        // a command line without osdeploy.slot= is an error that says what is missing
        fs::write(&cmdline, "BOOT_IMAGE=/vmlinuz ro quiet\n").unwrap();
        let err = fails(osd_at(&sysroot, &config).args(["boot-check", "--cmdline"]).arg(&cmdline));
        assert!(err.contains("osdeploy.slot"), "{kind}: {err}");
    }
}

#[test]
fn slots_on_another_filesystem_are_copied_and_it_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let (sysroot, config, tree) = (tmp.path().join("sysroot"), tmp.path().join("config"), tmp.path().join("tree"));
    fs::create_dir_all(&sysroot).unwrap();
    fs::create_dir_all(config.join("health.d")).unwrap();
    release_tree(&tree);
    ok(osd_at(&sysroot, &config).args(["init-sysroot", "--bootloader", "file"]));
    ok(osd_at(&sysroot, &config).args(["commit", "-b", "release"]).arg(&tree));
    // slot b lives on another filesystem than the repository
    let other = LoopFs::new("btrfs", 300);
    let slot_b = sysroot.join("osdeploy/slots/b");
    let _bind = BindMount::new(&other.mount, &slot_b);
    let plan = json(&ok(osd_at(&sysroot, &config).args(["switch", "--dry-run", "--json", "release"])));
    assert_eq!((plan["method"].as_str(), plan["same_filesystem"].as_bool()), (Some("copy"), Some(false)), "{plan}");
    let human = ok(osd_at(&sysroot, &config).args(["switch", "release"]));
    assert!(human.contains("copied (the slots are not on the repository's filesystem"), "{human}");
    let st = json(&ok(osd_at(&sysroot, &config).args(["status", "--json"])));
    assert_eq!((st["next_boot"].as_str(), st["slots"]["b"]["state"].as_str()), (Some("b"), Some("trial")), "{st}");
    assert_same_tree(&tree, &slot_b);
}
