//! Round trip of a real Debian rootfs (built by benches/harness/make-os-pair.sh with mmdebstrap,
//! its cloud-kernel variant: a container host with Debian's cloud kernel, so that the update holds
//! Debian's monthly package updates and a kernel update — modules renamed, vmlinuz and a real
//! initramfs — at a quarter of the generic kernel's size, which CI's time allows):
//! commit → checkout must be identical in content and metadata, as rsync -aHAX --checksum sees it,
//! in an archive repository and in a bare repository on btrfs (reflinked), and through a FUSE mount
//! of the commit from either; and the update from OLD
//! to NEW through per-file deltas (Debian's own gzip files and the initramfs among them) gives NEW
//! exactly.
//!
//! The pair is built once into `OSDEPLOY_OS_PAIR` (default: target/os-pair) and reused: the script
//! keeps a finished tree whose marker records the current recipe and rebuilds any other
//! (scripts/test.sh builds it while the tests compile).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::support::*;
use serde_json::Value;

/// The pair, built (or found finished) once per test run: the tests run in parallel and must not
/// build it into the same directory at once.
fn os_pair() -> PathBuf {
    static PAIR: OnceLock<PathBuf> = OnceLock::new();
    PAIR.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let pair =
            std::env::var_os("OSDEPLOY_OS_PAIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target/os-pair"));
        let script = workspace.join("benches/harness/make-os-pair.sh");
        assert!(script.exists(), "{} is needed to build the real rootfs pair", script.display());
        sh("bash", &[&script.display().to_string(), "--variant", "cloud-kernel", &pair.display().to_string()]);
        assert!(pair.join("old.done").exists() && pair.join("new.done").exists(), "{} is unfinished", pair.display());
        pair
    })
    .clone()
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap()
}

#[test]
fn real_rootfs_round_trips_through_archive_and_bare_repositories() {
    require_root();
    let pair = os_pair();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("archive");
    ok(osdeploy(&repo).args(["init", "--mode", "archive"]));
    for tree in ["old", "new"] {
        ok(osdeploy(&repo).args(["commit", "-b", "debian", "--version", tree]).arg(pair.join(tree)));
        let out = tmp.path().join(format!("checkout-{tree}"));
        ok(osdeploy(&repo).args(["checkout", "debian"]).arg(&out));
        assert_same_tree(&pair.join(tree), &out);
        std::fs::remove_dir_all(&out).unwrap();
    }
    let fsck = json(&ok(osdeploy(&repo).args(["fsck", "--json"])));
    assert_eq!(fsck["errors"].as_array().unwrap().len(), 0, "{fsck}");

    let fs = LoopFs::new("btrfs", 4096);
    let bare = fs.mount.join("repo");
    ok(osdeploy(&bare).args(["init", "--mode", "bare"]));
    ok(osdeploy(&bare).args(["commit", "-b", "debian"]).arg(pair.join("new")));
    let slot = fs.mount.join("slot");
    let co = json(&ok(osdeploy(&bare).args(["checkout", "--json", "debian"]).arg(&slot)));
    assert_eq!(co["method"], "reflink", "{co}");
    assert_same_tree(&pair.join("new"), &slot);

    // Mounted (FUSE) instead of checked out, from either repository, it is the same tree.
    for (repo, name) in [(&repo, "archive"), (&bare, "bare")] {
        let point = tmp.path().join(format!("mnt-{name}"));
        std::fs::create_dir(&point).unwrap();
        ok(osdeploy(repo).args(["mount", "debian"]).arg(&point));
        let mounted = UnmountOnDrop(point.clone());
        assert_same_tree(&pair.join("new"), &mounted.0);
        ok(osdeploy(repo).arg("umount").arg(&point));
    }
}

#[test]
fn real_update_through_per_file_deltas_is_exact() {
    require_root();
    let pair = os_pair();
    let tmp = tempfile::tempdir().unwrap();
    let origin = tmp.path().join("origin");
    ok(osdeploy(&origin).args(["init", "--mode", "archive"]));
    ok(osdeploy(&origin).args(["commit", "-b", "debian", "--version", "old"]).arg(pair.join("old")));
    let server = osdeploy_serve(&origin);
    let fs = LoopFs::new("btrfs", 4096);
    let node = fs.mount.join("node");
    ok(osdeploy(&node).args(["init", "--mode", "bare"]));
    ok(osdeploy(&node).args(["remote", "add", "origin", &server.url, "--insecure"]));
    ok(osdeploy(&node).args(["pull", "origin", "debian"]));
    let committed = json(&ok(osdeploy(&origin)
        .args(["commit", "-b", "debian", "--version", "new", "--deltas", "1", "--json"])
        .arg(pair.join("new"))));
    let deltas = &committed["deltas"];
    let gzip = deltas["by_codec"]["gzip"].as_u64().unwrap_or(0);
    assert!(gzip > 100, "Debian's .gz files are diffed by their plain text: {committed}");
    // The kernel update: every module moved to a directory named after the new version, and the
    // initramfs is rebuilt from the release's own modules.
    let renamed = deltas["pairs_by_rule"]["version-masked"].as_u64().unwrap_or(0);
    assert!(renamed > 1000, "modules paired across the renamed modules directory: {committed}");
    assert_eq!(deltas["by_codec"]["gzip-tree"], 1, "the initramfs names the release's files: {committed}");
    let planned = json(&ok(osdeploy(&node).args(["pull", "--dry-run", "--json", "origin", "debian"])));
    let pulled = json(&ok(osdeploy(&node).args(["pull", "--json", "origin", "debian"])));
    assert_eq!((&pulled["bytes_fetched"], &pulled["requests"]), (&planned["transfer_bytes"], &planned["requests"]));
    assert_eq!(pulled["delta_fallbacks"], 0, "{pulled}");
    let from_deltas = pulled["files_from_deltas"].as_u64().unwrap();
    assert!(from_deltas * 10 > planned["files_new"].as_u64().unwrap() * 9, "most files from deltas: {pulled}");
    let chunks_only = planned["without_deltas"]["transfer_bytes"].as_u64().unwrap();
    assert!(planned["transfer_bytes"].as_u64().unwrap() * 4 < chunks_only, "{planned}");
    let out = fs.mount.join("new");
    ok(osdeploy(&node).args(["checkout", "origin/debian"]).arg(&out));
    assert_same_tree(&pair.join("new"), &out);
    let fsck = json(&ok(osdeploy(&node).args(["fsck", "--json"])));
    assert_eq!(fsck["errors"].as_array().unwrap().len(), 0, "{fsck}");
}
