//! Round trip of a real Debian rootfs (built by benches/harness/make-os-pair.sh with mmdebstrap):
//! commit → checkout must be identical in content and metadata, as rsync -aHAX --checksum sees it,
//! in an archive repository and in a bare repository on btrfs (reflinked).
//!
//! The pair is built once into `OSDEPLOY_OS_PAIR` (default: target/os-pair) and reused: the script
//! keeps a finished tree whose marker records the current recipe and rebuilds any other.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::*;

fn os_pair() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let pair =
        std::env::var_os("OSDEPLOY_OS_PAIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target/os-pair"));
    let script = workspace.join("benches/harness/make-os-pair.sh");
    assert!(script.exists(), "{} is needed to build the real rootfs pair", script.display());
    sh("bash", &[&script.display().to_string(), &pair.display().to_string()]);
    assert!(pair.join("old.done").exists() && pair.join("new.done").exists(), "{} is unfinished", pair.display());
    pair
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

    let fs = LoopFs::new("btrfs", 2048);
    let bare = fs.mount.join("repo");
    ok(osdeploy(&bare).args(["init", "--mode", "bare"]));
    ok(osdeploy(&bare).args(["commit", "-b", "debian"]).arg(pair.join("new")));
    let slot = fs.mount.join("slot");
    let co = json(&ok(osdeploy(&bare).args(["checkout", "--json", "debian"]).arg(&slot)));
    assert_eq!(co["method"], "reflink", "{co}");
    assert_same_tree(&pair.join("new"), &slot);
}
