//! Shared helpers of the integration tests: running the real `osdeploy` binary, building sample
//! trees with every kind of entry and metadata, comparing trees with rsync, loop-mounted
//! filesystems, nginx, and a fault-injecting HTTP proxy (`fault_proxy`). A missing tool or
//! privilege fails the test loudly; nothing is skipped silently.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

pub mod etcd;
pub mod fault_proxy;
pub mod fsync_order;

/// The `osdeploy` binary under test with `--sysroot SYSROOT --config-dir CONFIG` (no `--repo`: the
/// sysroot's repository).
pub fn osd_at(sysroot: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osdeploy"));
    cmd.arg("--sysroot")
        .arg(sysroot)
        .arg("--config-dir")
        .arg(config)
        .env_remove("OSDEPLOY_CRASH_AT")
        .env_remove("OSDEPLOY_REPO");
    cmd
}

/// The `osdeploy` binary under test, with `--repo REPO` set.
pub fn osdeploy(repo: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osdeploy"));
    cmd.arg("--repo").arg(repo).env_remove("OSDEPLOY_CRASH_AT");
    cmd
}

/// Runs `cmd`, asserts success, returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn osdeploy");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs `cmd`, asserts failure, returns stderr.
pub fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn osdeploy");
    assert!(!out.status.success(), "{cmd:?} succeeded unexpectedly: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs an external tool and asserts it succeeded; panics naming the tool when it is missing.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("{program} is required by this test and could not be run: {e} (install it; .ci/run does)")
    });
    assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs a shell script (`sh -ec`), asserting success; returns stdout.
pub fn shell(script: &str) -> String {
    let out = Command::new("sh").args(["-ec", script]).output().expect("sh");
    assert!(
        out.status.success(),
        "{script}\nfailed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes an executable shell script running `body`. A child process writes it: a descriptor this
/// multi-threaded test process held open for writing could leak into a child another test thread
/// forks meanwhile, and running the script would fail with "Text file busy" until that child execs.
pub fn write_script(path: &Path, body: &str) {
    use std::io::Write;
    let mut writer = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh");
    writer.stdin.take().expect("piped").write_all(format!("#!/bin/sh\n{body}\n").as_bytes()).unwrap();
    assert!(writer.wait().unwrap().success(), "writing the script {}", path.display());
}

/// Quotes a path for [`shell`].
pub fn q(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Asserts that the tests run as root (loop devices, devices nodes, ownership need it).
pub fn require_root() {
    assert!(rustix::process::geteuid().is_root(), "this test needs root (CI runs as root)");
}

/// Writes `len` deterministic pseudo-random bytes to `path`.
pub fn write_random(path: &Path, len: usize, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1; // distinct seeds, distinct streams
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    fs::write(path, data).unwrap();
}

/// Builds a tree with every entry type and the metadata osdeploy must keep: empty, small, large
/// and sparse files, setuid/setgid/sticky modes, owners, xattrs (user.*, security.capability),
/// hardlinks, symlinks (also dangling and absolute), char/block devices, a fifo, a socket.
pub fn make_sample_tree(root: &Path) {
    require_root();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("etc/ssh")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::create_dir_all(root.join("var/empty")).unwrap();
    fs::write(root.join("etc/os-release"), "NAME=osdeploy-sample\nVERSION=1\n").unwrap();
    fs::write(root.join("etc/empty"), "").unwrap();
    write_random(&root.join("usr/bin/big"), 3 << 20, 1);
    write_random(&root.join("usr/bin/small"), 1000, 2);
    fs::set_permissions(root.join("usr/bin/small"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("usr/bin/big"), root.join("usr/bin/big-link")).unwrap();
    fs::hard_link(root.join("usr/bin/big"), root.join("etc/big-link2")).unwrap();
    // sparse: a hole, then data
    let sparse = fs::File::create(root.join("var/sparse")).unwrap();
    sparse.set_len(5 << 20).unwrap();
    drop(sparse);
    sh(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", root.join("var/sparse").display()),
            "bs=4096",
            "count=1",
            "seek=1000",
            "conv=notrunc",
            "status=none",
        ],
    );
    symlink("small", root.join("usr/bin/sh")).unwrap();
    symlink("/nonexistent/target", root.join("usr/bin/dangling")).unwrap();
    symlink("../../etc/os-release", root.join("usr/bin/os-release")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(root.join("var/empty"), fs::Permissions::from_mode(0o2750)).unwrap();
    sh("chown", &["1234:5678", &root.join("etc/ssh").display().to_string()]);
    sh("chown", &["-h", "42:43", &root.join("usr/bin/sh").display().to_string()]);
    sh("setfattr", &["-n", "user.note", "-v", "hello", &root.join("etc/os-release").display().to_string()]);
    sh("mknod", &[&root.join("dev/null").display().to_string(), "c", "1", "3"]);
    sh("setcap", &["cap_net_raw+ep", &root.join("usr/bin/small").display().to_string()]);
    // SELinux labels on a file, a directory, a symlink and a device node (set by path, no LSM needed)
    for (path, label) in [
        ("usr/bin/big", "system_u:object_r:bin_t:s0"),
        ("etc", "system_u:object_r:etc_t:s0"),
        ("usr/bin/sh", "system_u:object_r:bin_t:s0"),
        ("dev/null", "system_u:object_r:null_device_t:s0"),
    ] {
        sh("setfattr", &["-h", "-n", "security.selinux", "-v", label, &root.join(path).display().to_string()]);
    }
    sh("mknod", &[&root.join("dev/loop9").display().to_string(), "b", "7", "9"]);
    sh("mkfifo", &[&root.join("dev/fifo").display().to_string()]);
    let _listener = std::os::unix::net::UnixListener::bind(root.join("tmp/socket")).unwrap();
    sh("touch", &["-h", "-d", "2001-02-03 04:05:06.789", &root.join("usr/bin/sh").display().to_string()]);
    sh("touch", &["-d", "2002-03-04 05:06:07.123456789", &root.join("etc").display().to_string()]);
}

/// Asserts that two trees are identical in content and metadata (rsync -aHAX --checksum, numeric
/// ids, also reporting extra files), printing rsync's itemized differences otherwise.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let out = sh(
        "rsync",
        &[
            "-aHAXn",
            "--checksum",
            "--itemize-changes",
            "--delete",
            "--numeric-ids",
            &format!("{}/", expected.display()),
            &format!("{}/", actual.display()),
        ],
    );
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(diff.trim().is_empty(), "trees differ ({} vs {}):\n{diff}", expected.display(), actual.display());
    // rsync skips some metadata (e.g. nanoseconds of directory mtimes); a stat listing does not.
    let (a, b) = (stat_listing(expected), stat_listing(actual));
    let (set_a, set_b): (HashSet<&String>, HashSet<&String>) = (a.iter().collect(), b.iter().collect());
    let only_a: Vec<&&String> = set_a.difference(&set_b).take(20).collect();
    let only_b: Vec<&&String> = set_b.difference(&set_a).take(20).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "stat listings differ:\nexpected only: {only_a:#?}\nactual only: {only_b:#?}"
    );
}

/// The crash points of delta generation and of a pull's delta phase; tests/deltas.rs aborts at each.
pub const DELTA_CRASH_POINTS: [&str; 3] = ["delta:before-publish", "delta:published", "pull:deltas-applied"];

/// The crash points of `switch`, in order; tests/deploy.rs aborts a switch at each.
pub const SWITCH_CRASH_POINTS: [&str; 5] =
    ["switch:before-empty", "switch:emptied", "switch:checked-out", "switch:merged", "switch:recorded"];

/// The crash points of a switch's kernel installation, in order; tests/boot.rs aborts at each.
pub const KERNEL_CRASH_POINTS: [&str; 2] = ["switch:kernel-partial", "switch:kernel-installed"];

/// One sorted line per entry below `root`: path, type, mode, owner, group, mtime (ns) and size
/// (directory sizes are left out: they depend on the filesystem, not on the tree).
pub fn stat_listing(root: &Path) -> Vec<String> {
    let out =
        Command::new("find").arg(root).args(["-printf", "%P\\t%y\\t%m\\t%U\\t%G\\t%T@\\t%s\\t%l\\n"]).output().unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split('\t').collect();
            if f.get(1) == Some(&"d") {
                f[6] = "-";
            }
            f.join("\t")
        })
        .collect();
    lines.sort();
    lines
}

/// [`stat_listing`] of what a command that must write nothing may not change: everything but the
/// directories of bare repositories, whose mtime changes with every reader (SQLite's WAL files
/// come and go), and `root` itself when it is one.
pub fn listing_below(root: &Path) -> Vec<String> {
    let is_bare_repo = |line: &String| {
        let path = line.split('\t').next().unwrap_or_default();
        root.join(path).join("index.sqlite").exists()
    };
    stat_listing(root).into_iter().filter(|line| !is_bare_repo(line)).collect()
}

/// A filesystem image on a loop device mounted on a temporary directory; unmounted and detached
/// on drop, also when the test fails.
pub struct LoopFs {
    /// Where it is mounted.
    pub mount: PathBuf,
    device: String,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    /// Creates a `size_mib` image and formats it: "btrfs", "xfs" (with reflink=1) or "ext4".
    pub fn new(fstype: &str, size_mib: u64) -> LoopFs {
        LoopFs::labelled(fstype, size_mib, None)
    }

    /// [`LoopFs::new`] with a filesystem label.
    pub fn labelled(fstype: &str, size_mib: u64, label: Option<&str>) -> LoopFs {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        fs::File::create(&image).unwrap().set_len(size_mib << 20).unwrap();
        let device = String::from_utf8(sh("losetup", &["-f", "--show", &image.display().to_string()]).stdout)
            .unwrap()
            .trim()
            .to_string();
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount).unwrap();
        let guard = LoopFs { mount: mount.clone(), device: device.clone(), _dir: dir };
        let (mkfs, mut args): (&str, Vec<&str>) = match fstype {
            "btrfs" => ("mkfs.btrfs", vec!["-q"]),
            "xfs" => ("mkfs.xfs", vec!["-q", "-m", "reflink=1"]),
            "ext4" => ("mkfs.ext4", vec!["-q"]),
            other => panic!("unknown filesystem {other}"),
        };
        if let Some(label) = label {
            args.extend(["-L", label]);
        }
        args.push(&device);
        sh(mkfs, &args);
        sh("mount", &[&device, &mount.display().to_string()]);
        guard
    }
}

impl LoopFs {
    /// Unmounts the filesystem now (the device stays attached until drop).
    pub fn unmount(&self) {
        sh("umount", &[&self.mount.display().to_string()]);
    }
}

/// Unmounts a bind mount on drop, also when the test fails.
pub struct BindMount(pub PathBuf);

impl BindMount {
    /// Bind-mounts `from` on `to`.
    pub fn new(from: &Path, to: &Path) -> BindMount {
        sh("mount", &["--bind", &from.display().to_string(), &to.display().to_string()]);
        BindMount(to.to_owned())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Unmounts a mount point (lazily) on drop, also when the test fails: for mounts that a command
/// under test made.
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mount_point(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Whether something is mounted at `point` (per /proc/self/mountinfo).
pub fn is_mount_point(point: &Path) -> bool {
    let point = point.display().to_string();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(point.as_str()))
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).stderr(Stdio::null()).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// The names in a directory, sorted; none when it does not exist.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Parses a command's JSON output, showing it when it is not JSON.
pub fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A server process, killed on drop.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its base URL.
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `osdeploy serve REPO` on an ephemeral loopback port.
pub fn osdeploy_serve(repo: &Path) -> Server {
    let mut serve = Command::new(env!("CARGO_BIN_EXE_osdeploy"));
    serve.args(["serve", "--listen", "127.0.0.1:0"]).arg(repo);
    start_serve(serve)
}

/// Starts `serve`, an `osdeploy serve --listen 127.0.0.1:0` command (perhaps behind a wrapper such
/// as `prlimit`), once it listens; its log is read past the first line.
pub fn start_serve(mut serve: Command) -> Server {
    let mut child = serve.stderr(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.as_mut().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().last().unwrap_or_default().trim_end_matches('/').to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "serve said: {line}");
    Server { child, url }
}

/// nginx (from Debian, installed by .ci/run) serving `root` on a free loopback port. One process
/// (no master and workers), so that killing it on drop leaves no worker behind.
pub fn nginx(root: &Path, work: &Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = work.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off; master_process off; pid {w}/nginx.pid; error_log {w}/error.log;\n\
             events {{}}\n\
             http {{ access_log {w}/access.log; client_body_temp_path {w}; proxy_temp_path {w};\n\
             fastcgi_temp_path {w}; uwsgi_temp_path {w}; scgi_temp_path {w};\n\
             server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
            w = work.display(),
            root = root.display()
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(work)
        .spawn()
        .unwrap_or_else(|e| panic!("nginx is required (apt-get install nginx-light): {e}"));
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Server { child, url };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(Server { child, url });
    panic!("nginx did not start; see {}", work.join("error.log").display());
}
