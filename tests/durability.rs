//! The durability order of every command that publishes something, recorded with strace on a
//! loop-mounted btrfs: commits, pulls into a node (a first release, then an update applied from
//! deltas), switches, the boot check, mark-good and a prune. Before a ref, the deployment state,
//! the bootloader's choice or a committed SQLite transaction is published, everything it makes
//! reachable must be on disk, and what is published must be synced before the command ends
//! (tests/support/fsync_order.rs says how it is checked).

use std::fs;
use std::path::Path;

use crate::support::fsync_order::assert_durable_order;
use crate::support::*;

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

/// The checker itself, on hand-written logs: it sees a ref published before its data is synced,
/// a new directory whose entry is not, and a sync split by another thread; it accepts the order
/// the store uses.
#[test]
fn the_checker_sees_names_published_before_their_data() {
    use crate::support::fsync_order::check;
    use std::collections::HashSet;
    let root = Path::new("/r");
    let existing: HashSet<String> = ["/r", "/r/refs", "/r/refs/heads", "/r/tmp"].map(String::from).into();
    let write = "1  openat(AT_FDCWD</>, \"/r/tmp/w\", O_WRONLY|O_CREAT|O_CLOEXEC, 0666) = 3</r/tmp/w>\n\
                 1  write(3</r/tmp/w>, \"c0ffee\\n\", 7) = 7\n";
    let publish = "1  rename(\"/r/tmp/w\", \"/r/refs/heads/main\") = 0\n";
    let sync_file = "1  fsync(3</r/tmp/w>) = 0\n";
    let sync_dir = "1  fsync(4</r/refs/heads>) = 0\n";

    let unsynced = check(&format!("{write}{publish}{sync_dir}"), root, existing.clone()).1;
    assert!(format!("{unsynced:?}").contains("data of /r/tmp/w"), "{unsynced:?}");
    let never_synced_name = check(&format!("{write}{sync_file}{publish}"), root, existing.clone()).1;
    assert!(format!("{never_synced_name:?}").contains("/r/refs/heads/main itself"), "{never_synced_name:?}");
    let new_dir = "1  mkdir(\"/r/refs/heads/origin\", 0777) = 0\n";
    let publish_below = "1  rename(\"/r/tmp/w\", \"/r/refs/heads/origin/main\") = 0\n\
                         1  fsync(5</r/refs/heads/origin>) = 0\n";
    let unsynced_dir = check(&format!("{write}{sync_file}{new_dir}{publish_below}"), root, existing.clone()).1;
    assert!(format!("{unsynced_dir:?}").contains("entry /r/refs/heads/origin in /r/refs/heads"), "{unsynced_dir:?}");

    assert!(check(&format!("{write}{sync_file}{publish}{sync_dir}"), root, existing.clone()).1.is_empty());
    let split_syncfs =
        "2  syncfs(6</r> <unfinished ...>\n1  write(7</r/log>, \"x\", 1) = 1\n2  <... syncfs resumed>) = 0\n";
    assert!(check(&format!("{write}{split_syncfs}{publish}{sync_dir}"), root, existing).1.is_empty());
}
