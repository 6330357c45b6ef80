//! Power cuts (issue 13): osdeploy runs in a QEMU guest on an emulated NVMe disk, and the host
//! pulls the plug — SIGKILL to QEMU — at a random instant of a command: a commit to the origin, a
//! pull, a switch, the next boot's `boot-check` and `mark-good`, a prune. The disk is opened with
//! `cache=none` (O_DIRECT): a write the guest has not yet handed to the device is lost, as at a
//! real power cut; what it handed over stays, flushed or not.
//!
//! The guest is Debian's cloud kernel (NVMe and ext4 built in, fetched with `apt-get download`)
//! booted directly with an initramfs of busybox, the `osdeploy` under test and its libraries; its
//! init mounts the disk, runs the command the host wrote there and powers off. After each cut the
//! host checks what a machine coming back would find: ext4 replays its journal and `e2fsck -fn`
//! finds nothing; `osdeploy fsck` is clean on the origin and the node; every ref names the old or
//! the new commit; the node's status reads, its booted slot is untouched, and the user data and the
//! container store are byte for byte what they were. Then it runs the command again, which must
//! complete — a machine's next boot does the same.
//!
//! The story repeats with a new release each round; the first round runs every command to its end
//! in the guest, which proves the commands work there and tells how long each takes, so that the
//! cuts fall within them — or up to a quarter of their time after they ended, where what the
//! command reported done must have survived. `OSDEPLOY_POWER_CUTS` sets the number of cuts
//! (default 15).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Where the guest's kernel and busybox are kept between runs.
fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("power-cuts")
}

/// The guest's kernel and initramfs, built once per run.
struct Guest {
    kernel: PathBuf,
    initramfs: PathBuf,
}

/// The init of the guest: mounts the disk, runs `ctl/prepare` (unrecorded), announces the command,
/// runs `ctl/command`, reports how it ended and powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 /dev/nvme0n1 /mnt || echo "POWERCUT no disk"
cd /mnt
sh ctl/prepare > ctl/prepare.out 2>&1
echo "POWERCUT start"
sh ctl/command > ctl/command.out 2>&1
echo "POWERCUT exit $?"
cd /
umount /mnt
poweroff -f
"#;

fn guest() -> &'static Guest {
    static GUEST: OnceLock<Guest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let cache = cache_dir();
        let debs = cache.join("debs");
        if !debs.join("done").exists() {
            let _ = fs::remove_dir_all(&debs);
            fs::create_dir_all(&debs).unwrap();
            // The cloud kernel's versioned package, as the metapackage names it today.
            shell(&format!(
                "cd {debs}
                 kernel=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \\(linux-image-[0-9][^ ]*\\).*/\\1/p' | head -1)
                 [ -n \"$kernel\" ] || {{ echo 'no linux-image-cloud-amd64 in the apt lists (apt-get update?)' >&2; exit 1; }}
                 apt-get download -q \"$kernel\" busybox-static
                 for deb in *.deb; do dpkg-deb -x \"$deb\" root; done
                 touch done",
                debs = q(&debs)
            ));
        }
        let kernel = fs::read_dir(debs.join("root/boot"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("vmlinuz-"))
            .expect("the kernel package holds boot/vmlinuz-*");
        // The initramfs: busybox, osdeploy (without its debug info) and the libraries it loads.
        let root = cache.join(format!("initramfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for dir in ["bin", "proc", "sys", "dev", "mnt", "tmp"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::copy(debs.join("root/bin/busybox"), root.join("bin/busybox")).unwrap();
        let osdeploy = Path::new(env!("CARGO_BIN_EXE_osdeploy"));
        shell(&format!("objcopy --strip-debug {} {}", q(osdeploy), q(&root.join("bin/osdeploy"))));
        for library in shell(&format!("ldd {}", q(osdeploy))).split_whitespace().filter(|w| w.starts_with('/')) {
            let to = root.join(library.trim_start_matches('/'));
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(fs::canonicalize(library).unwrap(), &to).unwrap();
        }
        fs::write(root.join("init"), INIT).unwrap();
        shell(&format!("chmod 755 {}", q(&root.join("init"))));
        let initramfs = cache.join(format!("initramfs-{}.cpio", std::process::id()));
        shell(&format!("cd {} && find . | cpio -o -H newc --quiet > {}", q(&root), q(&initramfs)));
        fs::remove_dir_all(&root).unwrap();
        Guest { kernel, initramfs }
    })
}

/// The machine: an ext4 image holding the origin repository, the node's sysroot and configuration,
/// the release trees and the control files of the guest.
struct Machine {
    image: PathBuf,
    mount: PathBuf,
    device: Option<String>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        require_root();
        // In a directory that takes O_DIRECT (not tmpfs).
        fs::create_dir_all(cache_dir()).unwrap();
        let dir = tempfile::tempdir_in(cache_dir()).unwrap();
        let image = dir.path().join("disk.img");
        fs::File::create(&image).unwrap().set_len(768 << 20).unwrap();
        shell(&format!("mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 {}", q(&image)));
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount).unwrap();
        // A port for the origin's server: the guest serves it on its own loopback, the host on its.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut machine = Machine { image, mount, device: None, port, _dir: dir };
        machine.attach();
        machine
    }

    /// Mounts the image on the host (ext4 replays its journal).
    fn attach(&mut self) {
        let device = shell(&format!("losetup -f --show {}", q(&self.image))).trim().to_owned();
        shell(&format!("mount {device} {}", q(&self.mount)));
        self.device = Some(device);
    }

    /// Unmounts it; with `check`, `e2fsck -fn` must find the filesystem clean.
    fn detach(&mut self, check: bool, context: &str) {
        let device = self.device.take().expect("attached");
        shell(&format!("umount {}", q(&self.mount)));
        if check {
            let fsck = Command::new("e2fsck").args(["-fn", &device]).output().unwrap();
            assert!(
                fsck.status.success(),
                "{context}: e2fsck found damage:\n{}{}",
                String::from_utf8_lossy(&fsck.stdout),
                String::from_utf8_lossy(&fsck.stderr)
            );
        }
        shell(&format!("losetup -d {device}"));
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mount.join(rel)
    }

    fn node(&self) -> Command {
        osd_at(&self.path("sysroot"), &self.path("config"))
    }

    fn origin(&self) -> Command {
        osdeploy(&self.path("origin"))
    }

    /// `osdeploy serve` of the origin on the host, for commands the host runs.
    fn serve(&self) -> Server {
        let mut serve = Command::new(env!("CARGO_BIN_EXE_osdeploy"));
        serve.args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)]).arg(self.path("origin"));
        start_serve(serve)
    }

    /// Boots the guest to run `command` (a shell script run in the disk's root, where `osdeploy` is
    /// on the PATH; `prepare` runs first, unrecorded). With `cut_after`, the power is cut that long
    /// after the command started. Returns the command's exit status, if it ended, and how long it
    /// ran (until it ended or the cut).
    fn run_in_guest(&mut self, prepare: &str, command: &str, cut_after: Option<Duration>) -> (Option<i32>, Duration) {
        fs::create_dir_all(self.path("ctl")).unwrap();
        fs::write(self.path("ctl/prepare"), prepare).unwrap();
        fs::write(self.path("ctl/command"), command).unwrap();
        self.detach(false, "");
        let guest = guest();
        let serial = self.image.with_file_name("serial.log");
        let _ = fs::remove_file(&serial);
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-m", "1024", "-smp", "2", "-nic", "none"])
            .args(["-display", "none", "-no-reboot", "-kernel"])
            .arg(&guest.kernel)
            .arg("-initrd")
            .arg(&guest.initramfs)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .arg("-drive")
            .arg(format!("file={},if=none,id=disk,format=raw,cache=none", self.image.display()))
            .args(["-device", "nvme,drive=disk,serial=osdeploy", "-serial"])
            .arg(format!("file:{}", serial.display()))
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 is required (Debian: qemu-system-x86)");
        let booted = Instant::now();
        let mut started = None;
        let ended = loop {
            let console = String::from_utf8_lossy(&fs::read(&serial).unwrap_or_default()).into_owned();
            if started.is_none() && console.contains("POWERCUT start") {
                started = Some(Instant::now());
            }
            if let Some(rest) = console.split("POWERCUT exit ").nth(1) {
                let status = rest.split_whitespace().next().and_then(|s| s.parse().ok());
                let ran = started.map(|s| s.elapsed()).unwrap_or_default();
                if cut_after.is_none() {
                    let finished = qemu.wait().unwrap();
                    assert!(finished.success() || finished.code().is_some(), "QEMU: {finished}");
                } else {
                    let _ = qemu.kill();
                    let _ = qemu.wait();
                }
                break (status, ran);
            }
            if let (Some(at), Some(start)) = (cut_after, started)
                && start.elapsed() >= at
            {
                qemu.kill().unwrap();
                qemu.wait().unwrap();
                break (None, start.elapsed());
            }
            if let Some(status) = qemu.try_wait().unwrap() {
                panic!("the guest stopped ({status}) before its command ended; console:\n{console}");
            }
            assert!(
                booted.elapsed() < Duration::from_secs(300),
                "the guest did not finish within 300 s; console:\n{console}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        self.attach();
        ended
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(device) = self.device.take() {
            let _ = Command::new("umount").arg(&self.mount).status();
            let _ = Command::new("losetup").args(["-d", &device]).status();
        }
    }
}

/// Release `n`'s tree: the sample tree, 16 MiB of random files (a quarter of them new each
/// release) and a file naming the release.
fn make_release_tree(dir: &Path, n: u64) {
    make_sample_tree(dir);
    fs::create_dir_all(dir.join("usr/lib/data")).unwrap();
    for i in 0..16u64 {
        let seed = if i % 4 == 0 { n * 100 + i } else { i };
        write_random(&dir.join(format!("usr/lib/data/blob-{i:02}")), 1 << 20, seed);
    }
    fs::write(dir.join("etc/release"), format!("{n}\n")).unwrap();
}

/// The commands of one round, in order.
const STEPS: [&str; 5] = ["commit", "pull", "switch", "boot", "prune"];

/// What the host sees on the machine: refs, the node's status, and a digest of the user data.
#[derive(Debug)]
struct Seen {
    origin_ref: Option<String>,
    node_ref: Option<String>,
    status: Value,
    user_data: String,
}

fn branch_ref(repo: &Path, branch: &str) -> Option<String> {
    let refs = json(&ok(osdeploy(repo).args(["refs", "--json"])));
    refs.get(branch).and_then(Value::as_str).map(str::to_owned)
}

impl Machine {
    fn seen(&self) -> Seen {
        let user_data = shell(&format!(
            "cd {} && sha256sum home/user/notes var/lib/containerd/image.blob",
            q(&self.path("sysroot"))
        ));
        Seen {
            origin_ref: branch_ref(&self.path("origin"), "stable"),
            node_ref: branch_ref(&self.path("sysroot/osdeploy/repo"), "origin/stable"),
            status: json(&ok(self.node().args(["status", "--json"]))),
            user_data,
        }
    }

    /// Both repositories are fsck-clean.
    fn assert_fsck_clean(&self, context: &str) {
        for repo in [self.path("origin"), self.path("sysroot/osdeploy/repo")] {
            let out = osdeploy(&repo).args(["fsck", "--json"]).output().unwrap();
            let report = String::from_utf8_lossy(&out.stdout);
            let clean = out.status.success()
                && serde_json::from_str::<Value>(&report)
                    .is_ok_and(|r| r["errors"].as_array().is_some_and(Vec::is_empty));
            assert!(clean, "{context}: fsck of {}: {report}{}", repo.display(), String::from_utf8_lossy(&out.stderr));
        }
    }

    /// The guest's script for `step` of round `n`, and what must run before it.
    fn script(&self, step: &str, n: u64) -> (String, String) {
        let node = "osdeploy --sysroot /mnt/sysroot --config-dir /mnt/config";
        let serve = format!(
            "osdeploy serve /mnt/origin --listen 127.0.0.1:{port} > /dev/null 2>&1 &\n\
             i=0; until wget -q -O /dev/null http://127.0.0.1:{port}/summary || [ $i -gt 100 ]; do sleep 0.1; i=$((i+1)); done\n",
            port = self.port
        );
        match step {
            "commit" => (
                String::new(),
                format!(
                    "osdeploy --repo /mnt/origin commit -b stable --version {n} --timestamp {} trees/{n}\n",
                    1_700_000_000 + n * 600
                ),
            ),
            "pull" => (serve, format!("{node} pull\n")),
            "switch" => (String::new(), format!("{node} switch\n")),
            "boot" => (String::new(), format!("{node} boot-check && {node} mark-good\n")),
            "prune" => (String::new(), format!("{node} prune\n")),
            other => unreachable!("{other}"),
        }
    }

    /// Runs `step` of round `n` on the host (a rerun after a cut).
    fn run_on_host(&self, step: &str, n: u64) {
        let tree = self.path(&format!("trees/{n}"));
        match step {
            "commit" => {
                let timestamp = (1_700_000_000 + n * 600).to_string();
                ok(self
                    .origin()
                    .args(["commit", "-b", "stable", "--version", &n.to_string(), "--timestamp"])
                    .arg(&timestamp)
                    .arg(&tree));
            }
            "pull" => {
                let _server = self.serve();
                ok(self.node().arg("pull"));
            }
            "switch" => {
                ok(self.node().arg("switch"));
            }
            "boot" => {
                ok(self.node().arg("boot-check"));
                ok(self.node().arg("mark-good"));
            }
            "prune" => {
                ok(self.node().arg("prune"));
            }
            other => unreachable!("{other}"),
        }
    }
}

/// What changed between `before` and `after`, in a few words.
fn found(before: &Seen, after: &Seen) -> String {
    let moved = |old: &Option<String>, new: &Option<String>| if old == new { "kept" } else { "moved" };
    let slot = |status: &Value, key: &str| status[key].as_str().unwrap_or("-").to_owned();
    let standby = if slot(&after.status, "booted") == "a" { "b" } else { "a" };
    format!(
        "origin ref {}, node ref {}, booted {} (default {}), standby {} {}",
        moved(&before.origin_ref, &after.origin_ref),
        moved(&before.node_ref, &after.node_ref),
        slot(&after.status, "booted"),
        slot(&after.status, "default"),
        standby,
        after.status["slots"][standby]["state"].as_str().unwrap_or("-")
    )
}

/// The commit the node's booted slot holds.
fn booted_commit(status: &Value) -> Option<String> {
    let booted = status["booted"].as_str()?;
    status["slots"][booted]["commit"].as_str().map(str::to_owned)
}

#[test]
fn power_cuts_leave_repositories_slots_and_user_data_consistent_and_a_rerun_completes() {
    let cuts: usize = std::env::var("OSDEPLOY_POWER_CUTS").ok().and_then(|n| n.parse().ok()).unwrap_or(15);
    let mut machine = Machine::new();
    // The node: release 1 deployed and booted, user data and a container image beside it.
    ok(machine.origin().args(["init", "--mode", "archive"]));
    fs::create_dir_all(machine.path("config/health.d")).unwrap();
    ok(machine.node().args(["init-sysroot", "--bootloader", "file"]));
    let url = format!("http://127.0.0.1:{}", machine.port);
    ok(machine.node().args(["remote", "add", "origin", &url, "--insecure"]));
    fs::create_dir_all(machine.path("sysroot/home/user")).unwrap();
    write_random(&machine.path("sysroot/home/user/notes"), 3 << 20, 1);
    write_random(&machine.path("sysroot/var/lib/containerd/image.blob"), 5 << 20, 2);
    make_release_tree(&machine.path("trees/1"), 1);
    machine.run_on_host("commit", 1);
    {
        let _server = machine.serve();
        ok(machine.node().args(["pull", "origin", "stable"]));
    }
    for step in ["switch", "boot"] {
        machine.run_on_host(step, 1);
    }
    let user_data = machine.seen().user_data;

    let mut took: BTreeMap<&str, Duration> = BTreeMap::new();
    let mut timeline = Vec::new();
    let mut seed = 0x5eed_u64;
    let mut made = 0;
    let mut round = 2;
    while made < cuts {
        make_release_tree(&machine.path(&format!("trees/{round}")), round);
        for step in STEPS {
            let before = machine.seen();
            let context = format!("round {round}, {step}");
            let (prepare, command) = machine.script(step, round);
            let cut = took.get(step).map(|whole| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Within the command, or up to a quarter of its time after it ended.
                whole.mul_f64((seed % 1250) as f64 / 1000.0)
            });
            if cut.is_some() && made >= cuts {
                machine.run_on_host(step, round);
                continue;
            }
            let (status, ran) = machine.run_in_guest(&prepare, &command, cut);
            let output = fs::read_to_string(machine.path("ctl/command.out")).unwrap_or_default();
            let how = match (cut, status) {
                (None, _) => {
                    assert_eq!(status, Some(0), "{context} in the guest failed:\n{output}");
                    took.insert(step, ran);
                    format!("ran to its end in {:.2} s", ran.as_secs_f64())
                }
                (Some(_), Some(code)) => format!("had ended ({code}) in {:.2} s before the cut", ran.as_secs_f64()),
                (Some(at), None) => format!("cut {:.2} s in", at.as_secs_f64()),
            };
            made += usize::from(cut.is_some());
            // What the machine finds when it comes back.
            machine.detach(true, &context);
            machine.attach();
            machine.assert_fsck_clean(&context);
            let after = machine.seen();
            timeline.push(format!("{context}: {how}; found {}", found(&before, &after)));
            assert_eq!(after.user_data, user_data, "{context}: user data changed");
            if step == "boot" {
                // The boot itself may have reached the trial slot: the old one or the new one.
                let booted = booted_commit(&after.status);
                assert!(
                    booted == booted_commit(&before.status) || booted == after.node_ref,
                    "{context}: booted {booted:?}: {:#}",
                    after.status
                );
            } else {
                assert_eq!(after.status["booted"], before.status["booted"], "{context}: the booted slot moved");
                assert_eq!(
                    booted_commit(&after.status),
                    booted_commit(&before.status),
                    "{context}: the booted slot's commit changed"
                );
            }
            for (name, old, new) in [
                ("origin's stable", &before.origin_ref, &after.origin_ref),
                ("node's origin/stable", &before.node_ref, &after.node_ref),
            ] {
                if old != new {
                    assert!(
                        matches!(step, "commit" | "pull") && new.is_some(),
                        "{context}: {name} moved from {old:?} to {new:?}"
                    );
                }
            }
            // What a command reported done before the cut has survived it.
            if cut.is_some() && status == Some(0) {
                let booted = after.status["booted"].as_str().unwrap_or("-").to_owned();
                let standby = if booted == "a" { "b" } else { "a" };
                let done = match step {
                    "commit" => after.origin_ref != before.origin_ref,
                    "pull" => after.node_ref != before.node_ref,
                    "switch" => after.status["slots"][standby]["state"] == "trial",
                    "boot" => after.status["slots"][booted.as_str()]["state"] == "good",
                    _ => true,
                };
                assert!(done, "{context}: the command ended well, but the cut undid it: {:#}", after.status);
            }
            // The rerun completes (for a step the guest finished, it is a no-op or a repeat).
            if status != Some(0) {
                machine.run_on_host(step, round);
            }
            machine.assert_fsck_clean(&format!("{context}, rerun"));
        }
        // The round ends on the new release, marked good (a cut in the trial boot may have sent
        // the node back to the old one: then it switches again).
        let status = machine.seen().status;
        let newest = branch_ref(&machine.path("sysroot/osdeploy/repo"), "origin/stable");
        if booted_commit(&status) != newest {
            for step in ["switch", "boot"] {
                machine.run_on_host(step, round);
            }
        }
        let status = machine.seen().status;
        assert_eq!(booted_commit(&status), newest, "round {round} ends on its release: {status:#}");
        assert_eq!(
            newest,
            branch_ref(&machine.path("origin"), "stable"),
            "round {round}: the node has the origin's release"
        );
        assert_eq!(
            fs::read_to_string(
                machine.path(&format!("sysroot/osdeploy/slots/{}/etc/release", status["booted"].as_str().unwrap()))
            )
            .unwrap(),
            format!("{round}\n")
        );
        round += 1;
    }
    eprintln!("power cuts: {made} cuts in {} rounds", round - 2);
    for line in &timeline {
        eprintln!("  {line}");
    }
}
