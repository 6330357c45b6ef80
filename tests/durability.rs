//! The durability order of every command that publishes something, recorded with strace on a
//! loop-mounted btrfs: commits, pulls into a node (a first release, then an update applied from
//! deltas), switches, the boot check, mark-good and a prune. Before a ref, the deployment state,
//! the bootloader's choice or a committed SQLite transaction is published, everything it makes
//! reachable must be on disk, and what is published must be synced before the command ends
//! (tests/support/fsync_order.rs says how it is checked).

mod support;

use std::fs;
use std::path::Path;

use support::fsync_order::assert_durable_order;
use support::*;

fn release(dir: &Path, version: u64) {
    make_sample_tree(dir);
    fs::create_dir_all(dir.join("usr/lib")).unwrap();
    for i in 0..4 {
        write_random(&dir.join(format!("usr/lib/lib{i}.so")), 200_000, 10 + i + version * u64::from(i == 1));
    }
    fs::write(dir.join("etc/os-release"), format!("NAME=osdeploy-sample\nVERSION={version}\n")).unwrap();
}

#[test]
fn commands_put_data_on_disk_before_they_publish_a_name_that_reaches_it() {
    let disk = LoopFs::new("btrfs", 600);
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2, v3, origin, config) = (
        tmp.path().join("v1"),
        tmp.path().join("v2"),
        tmp.path().join("v3"),
        disk.mount.join("origin"),
        tmp.path().join("config"),
    );
    release(&v1, 1);
    release(&v2, 2);
    release(&v3, 3);
    fs::create_dir_all(config.join("health.d")).unwrap();
    let traces = tmp.path().join("traces");
    fs::create_dir(&traces).unwrap();
    let mut figures = Vec::new();
    let mut traced = |what: &str, root: &Path, command: &mut std::process::Command| {
        let summary = assert_durable_order(command, what, root, &traces.join(what.replace(' ', "-")));
        figures.push(format!("{what}: {summary:?}"));
    };

    ok(osdeploy(&origin).args(["init", "--mode", "archive"]));
    traced("commit", &origin, osdeploy(&origin).args(["commit", "-b", "stable"]).arg(&v1));
    let server = osdeploy_serve(&origin);
    let sysroot = disk.mount.join("node");
    fs::create_dir(&sysroot).unwrap();
    let osd = || osd_at(&sysroot, &config);
    ok(osd().args(["init-sysroot", "--bootloader", "file"]));
    ok(osd().args(["remote", "add", "origin", &server.url, "--insecure"]));

    traced("pull", &sysroot, osd().args(["pull", "origin", "stable"]));
    traced("switch", &sysroot, osd().arg("switch"));
    traced("boot-check", &sysroot, osd().arg("boot-check"));
    traced("mark-good", &sysroot, osd().arg("mark-good"));

    traced("commit with deltas", &origin, osdeploy(&origin).args(["commit", "-b", "stable", "--deltas", "1"]).arg(&v2));
    traced("pull of an update", &sysroot, osd().args(["pull", "origin", "stable"]));
    traced("second switch", &sysroot, osd().arg("switch"));
    ok(osd().arg("boot-check"));
    ok(osd().arg("mark-good"));

    // A branch pulled, then dropped, leaves objects no ref reaches: prune deletes them.
    ok(osdeploy(&origin).args(["commit", "-b", "scratch"]).arg(&v3));
    ok(osd().args(["pull", "origin", "scratch"]));
    fs::remove_file(sysroot.join("osdeploy/repo/refs/heads/origin/scratch")).unwrap();
    traced("prune of a bare repository", &sysroot, osd().arg("prune"));
    fs::remove_file(origin.join("refs/heads/scratch")).unwrap();
    traced("prune of an archive repository", &origin, osdeploy(&origin).arg("prune"));
    ok(osd().arg("fsck"));
    ok(osdeploy(&origin).arg("fsck"));
    eprintln!("{}", figures.join("\n"));
}
