//! `osdeploy mount`: a commit as a read-only FUSE filesystem (issue 12), through the real binary
//! and real mounts. The mount must show the committed tree exactly (rsync -aHAX --checksum and a
//! stat listing, hardlinks sharing an inode), read correct bytes under 16 concurrent readers,
//! refuse writes with EROFS, give EIO — never wrong bytes — for a corrupt chunk, hold off a prune,
//! and unmount cleanly by `osdeploy umount`, by SIGTERM, and after its process was killed.
//! Every test unmounts what it mounted, also when it fails.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::*;

/// A mount made by `osdeploy mount`; lazily unmounted on drop, also when the test fails, and then
/// with the serving process's log printed.
struct Mount {
    point: UnmountOnDrop,
    /// The process serving it, as `mount` reported it.
    pid: u32,
    /// Its `--log-file`, beside the mount point.
    log: PathBuf,
}

impl Mount {
    fn new(repo: &Path, commit: &str, point: &Path) -> Mount {
        let log = point.with_extension("log");
        let out = ok(osdeploy(repo).args(["mount", commit]).arg(point).arg("--log-file").arg(&log));
        let mount = Mount { point: UnmountOnDrop(point.to_owned()), pid: served_by(&out), log };
        assert!(out.starts_with("mounted commit "), "{out}");
        assert!(is_mount_point(point), "{out}");
        mount
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let alive = Path::new(&format!("/proc/{}", self.pid)).exists();
            let log = fs::read_to_string(&self.log).unwrap_or_else(|e| format!("({e})"));
            eprintln!("the mount process {} (alive: {alive}) logged:\n{log}", self.pid);
        }
    }
}

/// The pid in `mount`'s "served by process N" line.
fn served_by(out: &str) -> u32 {
    out.split("served by process ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no serving process named: {out}"))
}

/// A repository of `mode` with `tree` committed on branch `main`.
fn repo_with(dir: &Path, mode: &str, tree: &Path) -> PathBuf {
    let repo = dir.join(format!("repo-{mode}"));
    ok(osdeploy(&repo).args(["init", "--mode", mode]));
    ok(osdeploy(&repo).args(["commit", "-b", "main"]).arg(tree));
    repo
}

fn inode_and_links(path: &Path) -> (u64, u64) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.ino(), meta.nlink())
}

/// The sample tree made at `tree`, committed to an archive and a bare repository beside it, each
/// with an empty mount point.
fn sample_repos(tree: &Path) -> Vec<(&'static str, PathBuf, PathBuf)> {
    make_sample_tree(tree);
    let dir = tree.parent().unwrap();
    ["archive", "bare"]
        .into_iter()
        .map(|mode| {
            let point = dir.join(format!("mnt-{mode}"));
            fs::create_dir(&point).unwrap();
            (mode, repo_with(dir, mode, tree), point)
        })
        .collect()
}

#[test]
fn a_mounted_commit_is_the_committed_tree_from_archive_and_bare_repositories() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    for (mode, repo, point) in sample_repos(&tree) {
        let mount = Mount::new(&repo, "main", &point);
        assert_same_tree(&tree, &point);
        // Hardlinks share one inode and count their names; devices keep their numbers.
        let big = inode_and_links(&point.join("usr/bin/big"));
        assert_eq!(big.1, 3, "{mode}");
        assert_eq!(inode_and_links(&point.join("usr/bin/big-link")), big, "{mode}");
        assert_eq!(inode_and_links(&point.join("etc/big-link2")), big, "{mode}");
        assert_eq!(fs::symlink_metadata(point.join("dev/null")).unwrap().rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(fs::symlink_metadata(point.join("dev/loop9")).unwrap().rdev(), rustix::fs::makedev(7, 9));
        // Inode numbers are stable: the same at every lookup and in readdir.
        let listed = String::from_utf8(sh("ls", &["-i", &point.join("usr/bin").display().to_string()]).stdout).unwrap();
        assert!(listed.lines().any(|l| l.trim_start().starts_with(&format!("{} big", big.0))), "{listed}");
        let statfs =
            String::from_utf8(sh("stat", &["-f", "-c", "%b %c", &point.display().to_string()]).stdout).unwrap();
        assert_ne!(statfs.trim(), "0 0", "statfs reports the commit's size and inodes");
        let out = ok(Command::new(env!("CARGO_BIN_EXE_osdeploy")).arg("umount").arg(&mount.point.0));
        assert!(out.contains("unmounted"), "{out}");
        assert!(!is_mount_point(&point), "{mode}: still mounted");
        assert!(wait_gone(mount.pid), "{mode}: the serving process ended after the unmount");
    }
}

/// Waits up to 5 s for process `pid` to end.
fn wait_gone(pid: u32) -> bool {
    for _ in 0..50 {
        if !Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
        {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

#[test]
fn reads_cross_chunk_boundaries_and_writes_fail_with_erofs() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("data")).unwrap();
    write_random(&tree.join("data/blob"), 5 << 20, 7);
    let repo = tmp.path().join("repo");
    // Small chunks: a read of 128 KiB spans several.
    ok(osdeploy(&repo).args(["init", "--mode", "archive", "--chunk-sizes", "4096/16384/65536"]));
    ok(osdeploy(&repo).args(["commit", "-b", "main"]).arg(&tree));
    let point = tmp.path().join("mnt");
    fs::create_dir(&point).unwrap();
    let _mount = Mount::new(&repo, "main", &point);
    let expected = fs::read(tree.join("data/blob")).unwrap();
    let file = fs::File::open(point.join("data/blob")).unwrap();
    let len = expected.len() as u64;
    for (offset, size) in [(0, 1), (1, 4095), (4095, 2), (65_535, 200_000), (1_000_003, 77_777), (len - 10, 10)] {
        let mut buf = vec![0u8; size];
        file.read_exact_at(&mut buf, offset).unwrap();
        assert!(buf == expected[offset as usize..offset as usize + size], "bytes at {offset}+{size}");
    }
    let mut past_end = [0u8; 16];
    assert_eq!(file.read_at(&mut past_end, len).unwrap(), 0);
    let mut all = Vec::new();
    fs::File::open(point.join("data/blob")).unwrap().read_to_end(&mut all).unwrap();
    assert!(all == expected, "the whole file");

    let erofs = |e: std::io::Error| e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error());
    assert!(fs::OpenOptions::new().write(true).open(point.join("data/blob")).is_err_and(erofs));
    assert!(fs::create_dir(point.join("new")).is_err_and(erofs));
    assert!(fs::write(point.join("data/new-file"), "x").is_err_and(erofs));
    assert!(fs::remove_file(point.join("data/blob")).is_err_and(erofs));
}

#[test]
fn sixteen_concurrent_readers_read_correct_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    for i in 0..96u64 {
        let dir = tree.join(format!("d{}", i % 8));
        fs::create_dir_all(&dir).unwrap();
        write_random(&dir.join(format!("f{i}")), (i as usize * 37_171) % (700 << 10) + 1, i + 100);
    }
    for mode in ["archive", "bare"] {
        let repo = repo_with(tmp.path(), mode, &tree);
        let point = tmp.path().join(format!("mnt-{mode}"));
        fs::create_dir(&point).unwrap();
        let _mount = Mount::new(&repo, "main", &point);
        let sums = |root: &Path| {
            let script = "cd \"$1\" && find . -type f -print0 | xargs -0 -P16 -n3 sha256sum | sort";
            let out = sh("sh", &["-c", script, "sh", &root.display().to_string()]);
            String::from_utf8(out.stdout).unwrap()
        };
        let (expected, seen) = (sums(&tree), sums(&point));
        assert_eq!(expected.lines().count(), 96);
        assert_eq!(seen, expected, "{mode}");
    }
}

/// A tree of one random file `payload` of `len` bytes, committed to a repository of `mode`, and
/// an empty mount point.
fn payload_repo(dir: &Path, mode: &str, len: usize) -> (PathBuf, PathBuf, PathBuf) {
    let tree = dir.join("tree");
    fs::create_dir_all(&tree).unwrap();
    write_random(&tree.join("payload"), len, 11);
    let repo = repo_with(dir, mode, &tree);
    let point = dir.join("mnt");
    fs::create_dir(&point).unwrap();
    (tree, repo, point)
}

#[test]
fn a_corrupt_chunk_gives_eio_never_wrong_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (tree, repo, point) = payload_repo(tmp.path(), "archive", 4 << 20);
    // Mounted first: the metadata is read at mount time, the content only when read.
    let mount = Mount::new(&repo, "main", &point);
    // The largest pack holds the chunks (metadata has packs of its own).
    let pack = packs(&repo).into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).expect("a pack");
    let middle = fs::metadata(&pack).unwrap().len() / 2;
    let file = fs::OpenOptions::new().read(true).write(true).open(&pack).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, middle).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], middle).unwrap();
    drop(file);
    let mut seen = Vec::new();
    let error = fs::File::open(point.join("payload")).unwrap().read_to_end(&mut seen).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(rustix::io::Errno::IO.raw_os_error()), "{error}");
    let expected = fs::read(tree.join("payload")).unwrap();
    assert!(expected.starts_with(&seen), "what was read before the error is the file's own bytes");
    // The background process says why in its --log-file.
    let logged = fs::read_to_string(&mount.log).unwrap();
    assert!(logged.contains("chunk object ") && logged.contains(" is corrupt"), "{logged}");
    assert!(!logged.contains("Not Implemented"), "only what matters is logged: {logged}");
}

#[test]
fn a_bare_object_of_the_wrong_size_gives_eio_and_the_log_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, repo, point) = payload_repo(tmp.path(), "bare", 1 << 20);
    let log = tmp.path().join("mount.log");
    let _mount = ForegroundMount::new(&repo, &point, &log, &[]);
    let object = files_below(&repo.join("objects"))
        .into_iter()
        .find(|p| fs::metadata(p).unwrap().len() == 1 << 20)
        .expect("the payload's object");
    fs::OpenOptions::new().write(true).open(&object).unwrap().set_len(1 << 19).unwrap();
    let error = fs::read(point.join("payload")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(rustix::io::Errno::IO.raw_os_error()), "{error}");
    let logged = fs::read_to_string(&log).unwrap();
    let name = object.display().to_string();
    assert!(logged.contains(&name) && logged.contains("524288 bytes, the file has 1048576"), "{logged}");
}

/// Every file below `dir`, recursively.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(files_below(&path)) } else { files.push(path) }
    }
    files
}

/// `osdeploy mount --foreground` of branch `main`, its log (with `env`) in a file; killed and
/// unmounted on drop.
struct ForegroundMount {
    child: std::process::Child,
    _point: UnmountOnDrop,
}

impl ForegroundMount {
    fn new(repo: &Path, point: &Path, log: &Path, env: &[(&str, &str)]) -> ForegroundMount {
        let mut child = osdeploy(repo)
            .args(["mount", "--foreground", "main"])
            .arg(point)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let guard = UnmountOnDrop(point.to_owned());
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        assert!(first.starts_with("mounted commit "), "{first}{}", fs::read_to_string(log).unwrap_or_default());
        ForegroundMount { child, _point: guard }
    }
}

impl Drop for ForegroundMount {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads every entry below `dir` as `tar` would: its metadata, a file's bytes, a symlink's target.
fn read_everything(dir: &Path) -> u64 {
    let mut bytes = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            bytes += read_everything(&path);
        } else if meta.is_symlink() {
            bytes += fs::read_link(&path).unwrap().as_os_str().len() as u64;
        } else if meta.is_file() {
            bytes += fs::read(&path).unwrap().len() as u64;
        }
    }
    bytes
}

/// The kinds of the FUSE requests in fuser's debug log (`FUSE(n) ino 0x... KIND ...`).
fn requests(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| {
            let mut words = line.split_once(" FUSE(")?.1.split_whitespace().skip(1);
            match words.next()? {
                "ino" => words.nth(1),
                kind => Some(kind),
            }
            .map(str::to_owned)
        })
        .collect()
}

#[test]
fn a_second_pass_over_a_mounted_tree_asks_the_mount_process_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    for (mode, repo, point) in sample_repos(&tmp.path().join("tree")) {
        let log = tmp.path().join(format!("{mode}.log"));
        let mount = ForegroundMount::new(&repo, &point, &log, &[("OSDEPLOY_LOG", "fuser=debug")]);
        let first_bytes = read_everything(&point);
        let first = requests(&fs::read_to_string(&log).unwrap());
        // Listings carry the entries' attributes: no lookup or getattr per entry.
        for kind in ["READDIRPLUS", "READ", "READLINK"] {
            assert!(first.iter().any(|k| k == kind), "{mode}: no {kind} in the first pass: {first:?}");
        }
        for kind in ["LOOKUP", "READDIR"] {
            assert!(!first.iter().any(|k| k == kind), "{mode}: {kind} in the first pass: {first:?}");
        }
        // The root's attributes are the only ones asked for on their own.
        assert!(first.iter().filter(|k| *k == "GETATTR").count() <= 1, "{mode}: {first:?}");
        assert_eq!(read_everything(&point), first_bytes);
        let all = requests(&fs::read_to_string(&log).unwrap());
        assert_eq!(all[first.len()..], [] as [String; 0], "{mode}: the second pass asked the mount process");
        drop(mount);
    }
}

/// The pack files of an archive repository.
fn packs(repo: &Path) -> Vec<PathBuf> {
    fs::read_dir(repo.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect()
}

/// A tree of one file, committed to an archive repository, and an empty mount point.
fn one_file_repo(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let tree = dir.join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("file"), "content\n").unwrap();
    let repo = repo_with(dir, "archive", &tree);
    let point = dir.join("mnt");
    fs::create_dir(&point).unwrap();
    (tree, repo, point)
}

#[test]
fn mount_refuses_what_it_cannot_mount_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (tree, repo, point) = one_file_repo(tmp.path());

    let err = fails(osdeploy(&repo).args(["mount", "no-such-branch"]).arg(&point));
    assert!(err.contains("\"no-such-branch\" is not a branch"), "{err}");
    assert!(!err.contains("error: osdeploy: error"), "one prefix: {err}");
    let err = fails(osdeploy(&repo).args(["mount", "main"]).arg(tree.join("file")));
    assert!(err.contains("not a directory"), "{err}");
    let err = fails(osdeploy(&repo).args(["mount", "main"]).arg(tmp.path().join("missing")));
    assert!(err.contains("not a directory"), "{err}");
    assert!(!is_mount_point(&point));
    // Without /dev/fuse: a mount namespace whose /dev is an empty tmpfs.
    let no_fuse = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /dev && exec "$0" --repo "$1" mount --foreground main "$2""#)
        .arg(env!("CARGO_BIN_EXE_osdeploy"))
        .arg(&repo)
        .arg(&point)
        .output()
        .expect("unshare (util-linux) is required");
    let err = String::from_utf8_lossy(&no_fuse.stderr);
    assert!(!no_fuse.status.success() && err.contains("/dev/fuse is missing"), "{err}");

    let _mount = Mount::new(&repo, "main", &point);
    let err = fails(osdeploy(&repo).args(["mount", "main"]).arg(&point));
    assert!(err.contains("mounted here already"), "{err}");
    let err = fails(Command::new(env!("CARGO_BIN_EXE_osdeploy")).arg("umount").arg(&tree));
    assert!(err.contains("no osdeploy mount here"), "{err}");
}

#[test]
fn sigterm_unmounts_a_foreground_mount_and_a_killed_one_is_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, repo, point) = one_file_repo(tmp.path());

    let mut child = osdeploy(&repo)
        .args(["mount", "--foreground", "main"])
        .arg(&point)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = UnmountOnDrop(point.clone());
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("mounted commit "), "{first}");
    assert_eq!(fs::read_to_string(point.join("file")).unwrap(), "content\n");
    // The repository is read-locked while mounted: no prune can take objects away.
    let err = fails(osdeploy(&repo).arg("prune"));
    assert!(err.to_lowercase().contains("lock"), "{err}");
    sh("kill", &["-TERM", &child.id().to_string()]);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("unmounted"), "{stderr}");
    assert!(!is_mount_point(&point));
    drop(guard);
    ok(osdeploy(&repo).arg("prune"));

    // A serving process killed outright leaves a dead mount behind; umount clears it.
    let mount = Mount::new(&repo, "main", &point);
    sh("kill", &["-KILL", &mount.pid.to_string()]);
    assert!(wait_gone(mount.pid));
    let dead = fs::read_dir(&point).unwrap_err();
    let dead_errors = [rustix::io::Errno::NOTCONN, rustix::io::Errno::CONNABORTED].map(|e| Some(e.raw_os_error()));
    assert!(dead_errors.contains(&dead.raw_os_error()), "{dead}");
    ok(Command::new(env!("CARGO_BIN_EXE_osdeploy")).arg("umount").arg(&point));
    assert!(!is_mount_point(&point));
    let again = Mount::new(&repo, "main", &point);
    assert_eq!(fs::read_to_string(again.point.0.join("file")).unwrap(), "content\n");
}

/// The requests in nginx's access log: path, status and body bytes of each.
fn served(log: &Path) -> Vec<(String, u16, u64)> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let request = line.split('"').nth(1)?;
            let path = request.split(' ').nth(1)?.to_owned();
            let mut after = line.split('"').nth(2)?.split_whitespace();
            Some((path, after.next()?.parse().ok()?, after.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_remote_mount_fetches_only_what_is_read_verified_and_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("other")).unwrap();
    write_random(&tree.join("big"), 40 << 20, 21);
    for i in 0..8u64 {
        write_random(&tree.join(format!("other/file{i}")), 10 << 20, 30 + i);
    }
    write_random(&tree.join("zz-last"), 1 << 20, 99);
    let origin = repo_with(tmp.path(), "archive", &tree);
    let work = tmp.path().join("nginx");
    fs::create_dir(&work).unwrap();
    let server = nginx(&origin, &work);
    let log = work.join("access.log");
    let local = tmp.path().join("local");
    ok(osdeploy(&local).args(["init", "--mode", "archive"]));
    ok(osdeploy(&local).args(["remote", "add", "origin", &server.url, "--insecure"]));
    let point = tmp.path().join("mnt");
    fs::create_dir(&point).unwrap();
    let cache = tmp.path().join("cache");
    let mount_remote = || {
        let log = point.with_extension("log");
        let out = ok(osdeploy(&local)
            .args(["mount", "--remote", "origin", "--timeout", "2", "--cache"])
            .arg(&cache)
            .arg("main")
            .arg(&point)
            .arg("--log-file")
            .arg(&log));
        Mount { point: UnmountOnDrop(point.clone()), pid: served_by(&out), log }
    };

    // What a mount killed in the middle of a fetch leaves (its process has ended: no process has
    // this id) is removed by the next mount.
    let left = cache.join("staging/mount-chunks-4294967295-18b2c3d4e5f60718-3");
    fs::create_dir_all(&left).unwrap();
    fs::write(left.join("0.range"), b"half a range").unwrap();
    let mount = mount_remote();
    assert!(!left.exists(), "a dead mount's staging area is left");
    let at_mount = served(&log);
    assert!(at_mount.iter().all(|(_, status, _)| *status == 200 || *status == 206), "{at_mount:?}");
    let metadata_bytes: u64 = at_mount.iter().map(|r| r.2).sum();
    assert!(metadata_bytes < 1 << 20, "only the summary, indexes and metadata at mount: {at_mount:?}");
    assert_same_tree_listing(&tree, &point);

    let expected = fs::read(tree.join("big")).unwrap();
    assert!(fs::read(point.join("big")).unwrap() == expected, "big through the remote mount");
    let reads = &served(&log)[at_mount.len()..];
    let bytes: u64 = reads.iter().map(|r| r.2).sum();
    assert!(reads.iter().all(|(path, status, _)| path.starts_with("/packs/") && *status == 206), "{reads:?}");
    assert!(((40 << 20)..(41 << 20)).contains(&bytes), "the file's chunks and nothing else: {bytes} B");
    assert!(reads.len() <= 40 / 4 + 4, "coalesced with read-ahead: {} requests: {reads:?}", reads.len());
    println!(
        "mount: {} requests, {metadata_bytes} B; reading the 40 MiB file: {} requests, {bytes} B",
        at_mount.len(),
        reads.len()
    );

    // Remounted, the file costs no request: its chunks are in the cache.
    let out = ok(Command::new(env!("CARGO_BIN_EXE_osdeploy")).arg("umount").arg(&point));
    assert!(out.contains("unmounted") && wait_gone(mount.pid));
    let before = served(&log).len();
    let mount = mount_remote();
    let after_mount = served(&log).len();
    assert!(fs::read(point.join("big")).unwrap() == expected, "big from the cache");
    assert_eq!(served(&log).len(), after_mount, "no request for cached chunks");
    assert!(after_mount > before, "the remount fetched the summary again");

    // Bytes flipped all through the packs on the server (big is cached, the metadata read): EIO,
    // never wrong bytes; once the packs are whole again, the same files read.
    let packs = packs(&origin);
    let pristine: Vec<Vec<u8>> = packs.iter().map(|p| fs::read(p).unwrap()).collect();
    for (pack, bytes) in packs.iter().zip(&pristine) {
        let mut damaged = bytes.clone();
        for at in (4096..damaged.len()).step_by(64 << 10) {
            damaged[at] ^= 0x10;
        }
        fs::write(pack, &damaged).unwrap();
    }
    for name in ["zz-last", "other/file5"] {
        let mut seen = Vec::new();
        let error = fs::File::open(point.join(name)).unwrap().read_to_end(&mut seen).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(rustix::io::Errno::IO.raw_os_error()), "{name}: {error}");
        assert!(fs::read(tree.join(name)).unwrap().starts_with(&seen), "{name}: no wrong byte");
    }
    for (pack, bytes) in packs.iter().zip(&pristine) {
        fs::write(pack, bytes).unwrap();
    }
    assert!(fs::read(point.join("zz-last")).unwrap() == fs::read(tree.join("zz-last")).unwrap());

    // The server gone: reads of what was not fetched fail within the timeout, cached data reads.
    drop(server);
    let started = std::time::Instant::now();
    let error = fs::read(point.join("other/file3")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(rustix::io::Errno::IO.raw_os_error()), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(120), "{:?}", started.elapsed());
    assert!(fs::read(point.join("big")).unwrap() == expected, "cached data stays readable");
    drop(mount);
}

/// [`stat_listing`] of both trees is the same (names, types, modes, owners, times, sizes).
fn assert_same_tree_listing(expected: &Path, actual: &Path) {
    assert_eq!(stat_listing(expected), stat_listing(actual));
}
