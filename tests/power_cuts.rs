//! Power cuts (issue 13): osdeploy runs in a QEMU guest on an emulated NVMe disk, and the host
//! pulls the plug — SIGKILL to QEMU — at a random instant of a command: a commit to the origin, a
//! pull, a switch, the next boot's `boot-check` and `mark-good`, a prune. The disk is opened with
//! `cache=none` (O_DIRECT): a write the guest has not yet handed to the device is lost, as at a
//! real power cut; what it handed over stays, flushed or not.
//!
//! The guest is Debian's cloud kernel (NVMe and ext4 built in, fetched with `apt-get download`)
//! booted directly with an initramfs of busybox, the `osdeploy` under test, its libraries and the
//! kernel modules btrfs and vfat need (per `modules.dep`); its init loads those, mounts the disk,
//! runs the command the host wrote there and powers off. After each cut the host checks what a
//! machine coming back would find: the filesystem replays its journal (ext4) or log tree (btrfs) at
//! mount and `e2fsck -fn` or `btrfs check --readonly` finds nothing; `osdeploy fsck` is clean on the
//! origin and the node; every ref names the old or the new commit; the node's status reads, its
//! booted slot is untouched, and the user data and the container store are byte for byte what they
//! were. Then it runs the command again, which must complete — a machine's next boot does the same.
//!
//! Two machines, one on btrfs (osdeploy's main target: switch reflinks there) and one on ext4,
//! take turns; each turn is a round that publishes a new release on that machine. The btrfs
//! machine boots through systemd-boot: its ESP, a vfat image on the drive's second namespace, is
//! mounted on the sysroot's `boot/`, and `switch` copies each release's kernel and initramfs
//! (3 MiB each) there. The host's kernel may lack vfat: it reads the ESP with mtools (as firmware
//! reads it, with a FAT driver of its own), plays systemd-boot's boot counting with `mren`, and
//! leaves every write to the ESP to the guest (`switch`, `boot-check` + `mark-good`, their reruns).
//! After each cut on that machine `fsck.vfat -n` may find only what a cut leaves (the dirty bit,
//! unowned clusters; a booting machine's `fsck.vfat -a` repairs them); the slots the command must
//! not touch keep their entries, kernels and initramfs byte for byte; every entry boots the
//! complete kernel of its release or names none that exists (a slot emptied by switch); the
//! firmware's choice is the old one or, once switch armed it, the new trial.
//!
//! Each machine's first round runs every command to its end in the guest, which proves the
//! commands work there and tells how long each takes, so that the cuts fall within them — or up to
//! a quarter of their time after they ended, where what the command reported done must have
//! survived. `OSDEPLOY_POWER_CUTS` sets the number of cuts (default 15: two rounds on btrfs, one on
//! ext4, every command cut on both).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

/// Where the guest's kernel and busybox are kept between runs.
fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("power-cuts")
}

/// The guest's kernel and initramfs, built once per run; the initramfs is removed with it.
struct Guest {
    kernel: PathBuf,
    initramfs: PathBuf,
    _dir: tempfile::TempDir,
}

/// The machines cut, in turn: their disk's filesystem, and whether they boot through systemd-boot
/// from a vfat ESP (else through osdeploy's `file` backend).
const MACHINES: [(&str, bool); 2] = [("btrfs", true), ("ext4", false)];

/// The modules each filesystem the guest mounts needs, as `modules.dep` names them without `.ko`;
/// vfat's include the code page and character set of its default mount options (Debian's
/// `CONFIG_FAT_DEFAULT_CODEPAGE=437`, `CONFIG_FAT_DEFAULT_IOCHARSET="ascii"`).
const GUEST_MODULES: [(&str, &[&str]); 3] = [
    ("btrfs", &["kernel/fs/btrfs/btrfs"]),
    ("ext4", &["kernel/fs/ext4/ext4"]),
    ("vfat", &["kernel/fs/fat/vfat", "kernel/fs/nls/nls_cp437", "kernel/fs/nls/nls_ascii"]),
];

/// The init of the guest: loads the modules of the disk's filesystem (`fstype=` on the kernel's
/// command line) and of the ESP's (`esp=`, if any), mounts the disk and the ESP (the drive's second
/// namespace) on the sysroot's `boot/`, runs `ctl/prepare` (unrecorded), announces the command,
/// runs `ctl/command`, reports how it ended and powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
for fs in $fstype $esp; do
  for module in $(cat "/modules/for-$fs"); do insmod "/modules/$module.ko" || poweroff -f; done
done
for disk in /dev/nvme0n1 ${esp:+/dev/nvme0n2}; do
  i=0
  while [ ! -b $disk ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
done
mount -t "$fstype" /dev/nvme0n1 /mnt || { echo "POWERCUT no disk"; poweroff -f; }
[ -z "$esp" ] || mount -t "$esp" /dev/nvme0n2 /mnt/sysroot/boot || { echo "POWERCUT no ESP"; poweroff -f; }
cd /mnt
sh ctl/prepare > ctl/prepare.out 2>&1
echo "POWERCUT start"
sh ctl/command > ctl/command.out 2>&1
echo "POWERCUT exit $?"
cd /
[ -z "$esp" ] || umount /mnt/sysroot/boot
umount /mnt
poweroff -f
"#;

impl Guest {
    fn build() -> Guest {
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
        let version = kernel.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_owned();
        // The package has no modules.dep (its postinst runs depmod); busybox's depmod writes it.
        let busybox = debs.join("root/bin/busybox");
        let modules = debs.join("root/lib/modules").join(&version);
        if !modules.join("modules.dep").exists() {
            shell(&format!("{} depmod -b {} {version}", q(&busybox), q(&debs.join("root"))));
        }
        // The initramfs: busybox, osdeploy (without its debug info), the libraries it loads, and
        // each filesystem's modules (decompressed: busybox's insmod takes them plain).
        let dir = tempfile::tempdir_in(&cache).unwrap();
        let root = dir.path().join("root");
        for dir in ["bin", "proc", "sys", "dev", "mnt", "tmp", "modules"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::copy(&busybox, root.join("bin/busybox")).unwrap();
        for (fstype, wanted) in GUEST_MODULES {
            let mut load_order = String::new();
            for module in modules_for(&modules, wanted) {
                let file_name = module.rsplit('/').next().unwrap();
                let (name, compression) = file_name.split_once(".ko").unwrap();
                let decompress = match compression {
                    "" => "cat",
                    ".xz" => "xz -dc",
                    ".zst" => "zstd -dc",
                    ".gz" => "gzip -dc",
                    other => panic!("{module}: unknown compression {other}"),
                };
                let plain = root.join(format!("modules/{name}.ko"));
                shell(&format!("{decompress} {} > {}", q(&modules.join(&module)), q(&plain)));
                load_order += &format!("{name}\n");
            }
            fs::write(root.join(format!("modules/for-{fstype}")), load_order).unwrap();
        }
        let osdeploy = Path::new(env!("CARGO_BIN_EXE_osdeploy"));
        shell(&format!("objcopy --strip-debug {} {}", q(osdeploy), q(&root.join("bin/osdeploy"))));
        for library in shell(&format!("ldd {}", q(osdeploy))).split_whitespace().filter(|w| w.starts_with('/')) {
            let to = root.join(library.trim_start_matches('/'));
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(fs::canonicalize(library).unwrap(), &to).unwrap();
        }
        fs::write(root.join("init"), INIT).unwrap();
        shell(&format!("chmod 755 {}", q(&root.join("init"))));
        let initramfs = dir.path().join("initramfs.cpio");
        shell(&format!("cd {} && find . | cpio -o -H newc --quiet > {}", q(&root), q(&initramfs)));
        fs::remove_dir_all(&root).unwrap();
        Guest { kernel, initramfs, _dir: dir }
    }
}

/// The `wanted` modules of the guest kernel that are not built in, each after those it needs, as
/// `modules.dep` names them (relative to `modules`, the kernel's `/lib/modules/VERSION`).
fn modules_for(modules: &Path, wanted: &[&str]) -> Vec<String> {
    let builtin = fs::read_to_string(modules.join("modules.builtin")).unwrap();
    let dep = fs::read_to_string(modules.join("modules.dep")).unwrap();
    let needs: BTreeMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(module, needed)| (module, needed.split_whitespace().collect()))
        .collect();
    fn load_after_its_needs(module: &str, needs: &BTreeMap<&str, Vec<&str>>, order: &mut Vec<String>) {
        if !order.iter().any(|loaded| loaded == module) {
            for needed in &needs[module] {
                load_after_its_needs(needed, needs, order);
            }
            order.push(module.to_owned());
        }
    }
    let mut order = Vec::new();
    for name in wanted {
        let own = format!("{name}.ko");
        if !builtin.lines().any(|line| line == own) {
            let module = needs
                .keys()
                .find(|module| module.starts_with(&own))
                .unwrap_or_else(|| panic!("the guest kernel has no {name}, neither built in nor as a module"));
            load_after_its_needs(module, &needs, &mut order);
        }
    }
    order
}

/// The machine: a filesystem image holding the origin repository, the node's sysroot and
/// configuration, the release trees and the control files of the guest; and, for systemd-boot, a
/// vfat ESP image. The host cannot mount vfat (its kernel may lack it): it reads the ESP with
/// mtools, like the firmware with a FAT driver of its own, and leaves every write to it — `switch`,
/// `boot-check` and `mark-good`, reruns included — to the guest.
struct Machine {
    fstype: &'static str,
    image: PathBuf,
    esp: Option<PathBuf>,
    mount: PathBuf,
    device: Option<String>,
    port: u16,
    guest: Rc<Guest>,
    /// How long each command ran in the machine's first round, uncut.
    took: BTreeMap<&'static str, Duration>,
    /// The digest of the user data and container store, which no command may change.
    user_data: String,
    _dir: tempfile::TempDir,
}

impl Machine {
    fn new(guest: &Rc<Guest>, fstype: &'static str, with_esp: bool) -> Machine {
        require_root();
        // In a directory that takes O_DIRECT (not tmpfs).
        fs::create_dir_all(cache_dir()).unwrap();
        let dir = tempfile::tempdir_in(cache_dir()).unwrap();
        let image = dir.path().join("disk.img");
        fs::File::create(&image).unwrap().set_len(768 << 20).unwrap();
        let mkfs = match fstype {
            "ext4" => "mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0",
            "btrfs" => "mkfs.btrfs -q",
            other => unreachable!("{other}"),
        };
        shell(&format!("{mkfs} {}", q(&image)));
        let esp = with_esp.then(|| dir.path().join("esp.img"));
        if let Some(esp) = &esp {
            fs::File::create(esp).unwrap().set_len(64 << 20).unwrap();
            sh("mkfs.vfat", &["-F", "32", "-n", "ESP", &esp.display().to_string()]);
        }
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount).unwrap();
        // A port for the origin's server: the guest serves it on its own loopback, the host on its.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut machine = Machine {
            fstype,
            image,
            esp,
            mount,
            device: None,
            port,
            guest: Rc::clone(guest),
            took: BTreeMap::new(),
            user_data: String::new(),
            _dir: dir,
        };
        machine.attach();
        machine
    }

    /// A machine whose node has release 1 deployed and booted, user data and a container image
    /// beside it.
    fn with_release_1(guest: &Rc<Guest>, (fstype, with_esp): (&'static str, bool)) -> Machine {
        let mut machine = Machine::new(guest, fstype, with_esp);
        ok(machine.origin().args(["init", "--mode", "archive"]));
        fs::create_dir_all(machine.path("config/health.d")).unwrap();
        if with_esp {
            fs::write(machine.path("config/config.toml"), "kernel_cmdline = \"root=LABEL=sysroot rw\"\n").unwrap();
            // The ESP's mount point.
            fs::create_dir_all(machine.path("sysroot/boot")).unwrap();
            machine.run_in_guest_to_end("init", 1);
        } else {
            ok(machine.node().args(["init-sysroot", "--bootloader", "file"]));
        }
        let url = format!("http://127.0.0.1:{}", machine.port);
        ok(machine.node().args(["remote", "add", "origin", &url, "--insecure"]));
        fs::create_dir_all(machine.path("sysroot/home/user")).unwrap();
        write_random(&machine.path("sysroot/home/user/notes"), 3 << 20, 1);
        write_random(&machine.path("sysroot/var/lib/containerd/image.blob"), 5 << 20, 2);
        machine.make_release_tree(1);
        machine.rerun("commit", 1);
        {
            let _server = machine.serve();
            ok(machine.node().args(["pull", "origin", "stable"]));
        }
        for step in ["switch", "boot"] {
            machine.rerun(step, 1);
        }
        machine.user_data = machine.seen().user_data;
        machine
    }

    /// The machine as failure messages name it.
    fn name(&self) -> String {
        match self.esp {
            Some(_) => format!("{} with a vfat ESP", self.fstype),
            None => self.fstype.to_owned(),
        }
    }

    /// Mounts the image on the host (ext4 replays its journal, btrfs its log tree).
    fn attach(&mut self) {
        let device = shell(&format!("losetup -f --show {}", q(&self.image))).trim().to_owned();
        shell(&format!("mount {device} {}", q(&self.mount)));
        self.device = Some(device);
    }

    /// Unmounts it; with `check`, `e2fsck -fn` or `btrfs check --readonly` must find the filesystem
    /// clean.
    fn detach(&mut self, check: bool, context: &str) {
        let device = self.device.take().expect("attached");
        shell(&format!("umount {}", q(&self.mount)));
        if check {
            let (checker, args) = match self.fstype {
                "ext4" => ("e2fsck", ["-fn"].as_slice()),
                "btrfs" => ("btrfs", ["check", "--readonly"].as_slice()),
                other => unreachable!("{other}"),
            };
            let fsck = Command::new(checker)
                .args(args)
                .arg(&device)
                .output()
                .unwrap_or_else(|e| panic!("{checker} is required (.ci/run installs it): {e}"));
            assert!(
                fsck.status.success(),
                "{context}: {checker} {args:?} found damage:\n{}{}",
                String::from_utf8_lossy(&fsck.stdout),
                String::from_utf8_lossy(&fsck.stderr)
            );
        }
        shell(&format!("losetup -d {device}"));
    }

    /// What `fsck.vfat -n` finds on the ESP: the headlines of its findings (none when it is clean)
    /// and its whole report.
    fn esp_findings(&self) -> (Vec<String>, String) {
        let esp = self.esp.as_ref().expect("an ESP");
        let fsck = Command::new("fsck.vfat")
            .arg("-n")
            .arg(esp)
            .output()
            .unwrap_or_else(|e| panic!("fsck.vfat is required (Debian: dosfstools): {e}"));
        let report = String::from_utf8_lossy(&fsck.stdout).into_owned() + &String::from_utf8_lossy(&fsck.stderr);
        let headlines = match fsck.status.code() {
            Some(0) => Vec::new(),
            Some(1) => report
                .lines()
                .filter(|line| !line.is_empty() && !line.starts_with([' ', '\t']))
                .filter(|line| !line.starts_with("fsck.fat ") && !line.starts_with(&format!("{}:", esp.display())))
                .filter(|line| {
                    !["Leaving filesystem unchanged.", "This is mostly harmless."].iter().any(|l| line.starts_with(l))
                })
                .map(str::to_owned)
                .collect(),
            _ => panic!("fsck.vfat -n {}: {report}", esp.display()),
        };
        (headlines, report)
    }

    /// Repairs the ESP as a booting machine does (systemd-fsck runs `fsck.vfat -a` on it).
    fn repair_esp(&self) {
        let esp = self.esp.as_ref().expect("an ESP");
        let status = Command::new("fsck.vfat").arg("-a").arg(esp).stdout(Stdio::null()).status().unwrap();
        assert!(matches!(status.code(), Some(0 | 1)), "fsck.vfat -a {}: {status}", esp.display());
    }

    /// Plays systemd-boot: picks the entry it boots and, if it counts boots, renames it as the
    /// firmware does (`+LEFT-DONE` → `+(LEFT-1)-(DONE+1)`). Returns the kernel arguments that tell
    /// the booted slot: none for the `file` backend, whose `boot-check` plays the firmware itself.
    fn firmware_boot(&self) -> String {
        let Some(esp) = &self.esp else { return String::new() };
        let seen = self.seen().esp.expect("an ESP");
        let (slot, entry) = seen.choice();
        if let Some((left, done)) = entry.counter() {
            let to = format!("osdeploy-{slot}+{}-{}.conf", left.saturating_sub(1), done + 1);
            mtools("mren", esp, &[&format!("::/loader/entries/{}", entry.file), &to]);
        }
        format!(" osdeploy.slot={slot}")
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
    /// on the PATH; `prepare` runs first, unrecorded), with `kernel_args` added to the kernel's
    /// command line. With `cut_after`, the power is cut that long after the command started.
    /// Returns the command's exit status, if it ended, and how long it ran (until it ended or the
    /// cut).
    fn run_in_guest(
        &mut self,
        prepare: &str,
        command: &str,
        kernel_args: &str,
        cut_after: Option<Duration>,
    ) -> (Option<i32>, Duration) {
        fs::create_dir_all(self.path("ctl")).unwrap();
        fs::write(self.path("ctl/prepare"), prepare).unwrap();
        fs::write(self.path("ctl/command"), command).unwrap();
        self.detach(false, "");
        let serial = self.image.with_file_name("serial.log");
        let _ = fs::remove_file(&serial);
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-m", "1024", "-smp", "2", "-nic", "none"])
            .args(["-display", "none", "-no-reboot", "-kernel"])
            .arg(&self.guest.kernel)
            .arg("-initrd")
            .arg(&self.guest.initramfs)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 fstype={}{}{kernel_args}",
                self.fstype,
                if self.esp.is_some() { " esp=vfat" } else { "" }
            ))
            .arg("-drive")
            .arg(format!("file={},if=none,id=disk,format=raw,cache=none", self.image.display()))
            .args(["-device", "nvme,id=nvme,serial=osdeploy", "-device", "nvme-ns,bus=nvme,drive=disk,nsid=1"]);
        if let Some(esp) = &self.esp {
            qemu.arg("-drive")
                .arg(format!("file={},if=none,id=esp,format=raw,cache=none", esp.display()))
                .args(["-device", "nvme-ns,bus=nvme,drive=esp,nsid=2"]);
        }
        let mut qemu = qemu
            .arg("-serial")
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

    /// Runs `step` of round `n` in the guest to its end; it must succeed and leave the ESP clean.
    fn run_in_guest_to_end(&mut self, step: &str, n: u64) {
        let kernel_args = if step == "boot" { self.firmware_boot() } else { String::new() };
        let (prepare, command) = self.script(step, n);
        let (status, _) = self.run_in_guest(&prepare, &command, &kernel_args, None);
        let output = fs::read_to_string(self.path("ctl/command.out")).unwrap_or_default();
        let name = self.name();
        assert_eq!(status, Some(0), "{name} round {n}, {step}: the command failed in the guest:\n{output}");
        if self.esp.is_some() {
            let (headlines, report) = self.esp_findings();
            assert!(headlines.is_empty(), "{name} round {n}, {step}, uncut: fsck.vfat -n on the ESP:\n{report}");
        }
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

/// Runs an mtools command on the FAT image `image`. A failure says what `fsck.vfat -n` finds on
/// the image and where a copy of it is kept, for the post-mortem.
#[track_caller]
fn mtools(program: &str, image: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(image)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required (Debian: mtools): {e}"));
    if !out.status.success() {
        let fsck = Command::new("fsck.vfat").arg("-n").arg("-v").arg(image).output().expect("fsck.vfat");
        let kept = cache_dir().join(format!("esp-{}.img", std::process::id()));
        let copied =
            fs::copy(image, &kept).map_or_else(|e| format!("not kept: {e}"), |_| format!("kept as {}", kept.display()));
        panic!(
            "{program} {args:?}: {}\nthe image ({copied}), fsck.vfat -n -v:\n{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What fsck.vfat may find on the ESP after a cut, by the start of its line: the dirty bit, which
/// Linux sets while vfat is mounted (the backup boot sector keeps it clear, hence the difference),
/// and clusters that no file holds (a copy cut before its file's entry was written).
const ESP_FINDINGS_OF_A_CUT: [&str; 4] = [
    "Dirty bit is set.",
    "There are differences between boot sector and its backup.",
    "Free cluster summary wrong",
    "Reclaimed ",
];

/// The kernel version of release `n`.
fn kernel_version(n: u64) -> String {
    format!("6.1.0-{n}-osdeploy")
}

impl Machine {
    /// Release `n`'s tree: the sample tree, 16 MiB of random files (a quarter of them new each
    /// release) and a file naming the release; for systemd-boot also a kernel and an initramfs of
    /// 3 MiB each, new in each release.
    fn make_release_tree(&self, n: u64) {
        let dir = self.path(&format!("trees/{n}"));
        make_sample_tree(&dir);
        fs::create_dir_all(dir.join("usr/lib/data")).unwrap();
        for i in 0..16u64 {
            let seed = if i % 4 == 0 { n * 100 + i } else { i };
            write_random(&dir.join(format!("usr/lib/data/blob-{i:02}")), 1 << 20, seed);
        }
        fs::write(dir.join("etc/release"), format!("{n}\n")).unwrap();
        if self.esp.is_some() {
            let kernel = dir.join("usr/lib/modules").join(kernel_version(n));
            fs::create_dir_all(&kernel).unwrap();
            write_random(&kernel.join("vmlinuz"), 3 << 20, n * 100 + 90);
            write_random(&kernel.join("initrd.img"), 3 << 20, n * 100 + 91);
        }
    }
}

/// The commands of one round, in order.
const STEPS: [&str; 5] = ["commit", "pull", "switch", "boot", "prune"];

/// What the host sees on the machine: refs, the node's status, a digest of the user data, and the
/// ESP.
#[derive(Debug)]
struct Seen {
    origin_ref: Option<String>,
    node_ref: Option<String>,
    status: Value,
    user_data: String,
    esp: Option<Esp>,
}

/// A systemd-boot entry of the ESP.
#[derive(Debug, Clone, PartialEq)]
struct BootEntry {
    file: String,
    text: String,
}

impl BootEntry {
    fn field(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
    }

    /// The text but its `sort-key`, which changes with the slot's role.
    fn without_sort_key(&self) -> Vec<&str> {
        self.text.lines().filter(|line| !line.starts_with("sort-key ")).collect()
    }

    /// The boot counter in the file name: tries left and done.
    fn counter(&self) -> Option<(u32, u32)> {
        let counter = self.file.strip_suffix(".conf")?.split_once('+')?.1;
        let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
        Some((left.parse().ok()?, done.parse().ok()?))
    }

    /// The directory below `osdeploy/` that holds the kernel the entry boots.
    fn kernel_dir(&self) -> &str {
        let linux = self.field("linux").unwrap_or_else(|| panic!("{} has no linux line", self.file));
        linux.trim_start_matches("/osdeploy/").trim_end_matches("/vmlinuz")
    }
}

/// What the ESP holds, read with mtools: the osdeploy entries by slot, loader.conf, and a digest
/// of each file below `osdeploy/` by directory.
#[derive(Debug)]
struct Esp {
    entries: BTreeMap<String, BootEntry>,
    loader_conf: String,
    kernels: BTreeMap<String, BTreeMap<String, u64>>,
}

/// A digest of a file's bytes.
fn digest(path: &Path) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    fs::read(path).unwrap().hash(&mut hasher);
    hasher.finish()
}

impl Esp {
    /// Reads a copy of the ESP at `root`.
    fn read(root: &Path) -> Esp {
        let entries_dir = root.join("loader/entries");
        let entries = names(&entries_dir)
            .into_iter()
            .filter(|name| name.starts_with("osdeploy-") && name.ends_with(".conf"))
            .map(|file| {
                let slot = file["osdeploy-".len()..][..1].to_owned();
                let text = fs::read_to_string(entries_dir.join(&file)).unwrap();
                (slot, BootEntry { file, text })
            })
            .collect();
        let kernels_dir = root.join("osdeploy");
        let kernels = names(&kernels_dir)
            .into_iter()
            .map(|dir| {
                let files = names(&kernels_dir.join(&dir))
                    .into_iter()
                    .map(|file| {
                        let sum = digest(&kernels_dir.join(&dir).join(&file));
                        (file, sum)
                    })
                    .collect();
                (dir, files)
            })
            .collect();
        Esp { entries, loader_conf: fs::read_to_string(root.join("loader/loader.conf")).unwrap_or_default(), kernels }
    }

    /// The slot and entry systemd-boot boots: entries out of tries last, then by sort key.
    fn choice(&self) -> (&str, &BootEntry) {
        let (slot, entry) = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| (entry.counter().is_some_and(|(left, _)| left == 0), entry.field("sort-key")))
            .expect("the ESP has osdeploy entries");
        (slot.as_str(), entry)
    }

    /// The kernel files `entry` boots, if its directory exists.
    fn kernel_of(&self, entry: &BootEntry) -> Option<&BTreeMap<String, u64>> {
        self.kernels.get(entry.kernel_dir())
    }
}

fn branch_ref(repo: &Path, branch: &str) -> Option<String> {
    let refs = json(&ok(osdeploy(repo).args(["refs", "--json"])));
    refs.get(branch).and_then(Value::as_str).map(str::to_owned)
}

impl Machine {
    /// What a machine coming back finds: the refs, the node's status, the user data and the ESP's
    /// entries. An unreadable ESP panics naming the caller's line (which of a step's looks it was).
    #[track_caller]
    fn seen(&self) -> Seen {
        let user_data = shell(&format!(
            "cd {} && sha256sum home/user/notes var/lib/containerd/image.blob",
            q(&self.path("sysroot"))
        ));
        // The node's status reads the ESP's entries: a copy of the ESP stands in for it.
        let boot = self.path("sysroot/boot");
        let mut esp = None;
        if let Some(image) = &self.esp {
            shell(&format!("mount -t tmpfs esp-copy {}", q(&boot)));
            esp = Some(UnmountOnDrop(boot.clone()));
            mtools("mcopy", image, &["-s", "-p", "-n", "-m", "::/*", &boot.display().to_string()]);
        }
        let status = json(&ok(self.node().args(["status", "--json"])));
        let esp = esp.map(|_copy| Esp::read(&boot));
        Seen {
            origin_ref: branch_ref(&self.path("origin"), "stable"),
            node_ref: branch_ref(&self.path("sysroot/osdeploy/repo"), "origin/stable"),
            status,
            user_data,
            esp,
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

    /// The kernel files of the release an entry names by its version, as digests; none for an
    /// entry that names no release (init-sysroot's, for a slot with nothing deployed).
    fn release_kernel(&self, entry: &BootEntry) -> Option<BTreeMap<String, u64>> {
        let version = entry.field("version")?;
        let n = version.split('-').nth(1).unwrap();
        let dir = self.path(&format!("trees/{n}/usr/lib/modules/{version}"));
        Some(["initrd.img", "vmlinuz"].map(|file| (file.to_owned(), digest(&dir.join(file)))).into())
    }

    /// Checks the ESP after `step` (`done`: it reported success before the cut, if any): the slots
    /// it must not touch (every slot but a switch's standby) kept their entries and kernels; every
    /// entry boots the complete kernel of the release it names, or names a kernel directory that is
    /// not there (the entry of an emptied slot, which sorts after the booted one); loader.conf is
    /// unchanged; what the firmware boots is what it booted before or, once a switch armed its
    /// trial, the standby slot.
    fn check_esp(&self, step: &str, context: &str, before: &Seen, after: &Seen, done: bool) {
        let (old, new) = (before.esp.as_ref().unwrap(), after.esp.as_ref().unwrap());
        let booted = before.status["booted"].as_str().expect("a booted slot");
        let standby = if booted == "a" { "b" } else { "a" };
        for slot in ["a", "b"].into_iter().filter(|slot| step != "switch" || *slot == booted) {
            let (was, is) = (old.entries.get(slot), new.entries.get(slot));
            if step == "boot" {
                // mark-good changes the counter in the name and the sort keys, nothing else.
                let lines = |entry: Option<&BootEntry>| entry.map(|entry| entry.without_sort_key().join("\n"));
                assert_eq!(lines(is), lines(was), "{context}: slot {slot}'s entry changed");
            } else {
                assert_eq!(is, was, "{context}: slot {slot}'s entry changed");
            }
            let kernel = |esp: &Esp, entry: Option<&BootEntry>| entry.and_then(|e| esp.kernel_of(e).cloned());
            assert_eq!(kernel(new, is), kernel(old, was), "{context}: slot {slot}'s kernel or initramfs changed");
        }
        for (slot, entry) in &new.entries {
            if let Some(files) = new.kernel_of(entry) {
                assert_eq!(
                    Some(files),
                    self.release_kernel(entry).as_ref(),
                    "{context}: slot {slot}'s entry {} boots an incomplete kernel:\n{}",
                    entry.file,
                    entry.text
                );
            }
        }
        assert_eq!(new.loader_conf, old.loader_conf, "{context}: loader.conf changed");
        let (slot, entry) = new.choice();
        let armed = slot == standby && entry.counter().is_some() && new.kernel_of(entry).is_some();
        let kept = (slot, entry.kernel_dir()) == (old.choice().0, old.choice().1.kernel_dir());
        assert!(
            if step == "switch" && done { armed } else { kept || (step == "switch" && armed) },
            "{context}: the firmware boots slot {slot} ({}), before slot {} ({})",
            entry.file,
            old.choice().0,
            old.choice().1.file
        );
    }

    /// After a switch of round `n` (rerun if cut): the standby slot boots release `n`'s kernel, on
    /// trial, and the ESP holds the two slots' kernels and nothing else.
    fn check_esp_installed(&self, n: u64, context: &str) {
        let seen = self.seen();
        let esp = seen.esp.unwrap();
        let booted = seen.status["booted"].as_str().unwrap();
        let (slot, entry) = esp.choice();
        assert!(slot != booted && entry.counter().is_some(), "{context}: the standby slot is not on trial: {esp:#?}");
        assert_eq!(entry.field("version"), Some(kernel_version(n).as_str()), "{context}: {esp:#?}");
        assert_eq!(esp.kernel_of(entry), self.release_kernel(entry).as_ref(), "{context}: {esp:#?}");
        let mut named: Vec<&str> = esp.entries.values().map(BootEntry::kernel_dir).collect();
        named.sort();
        assert_eq!(esp.kernels.keys().map(String::as_str).collect::<Vec<_>>(), named, "{context}: {esp:#?}");
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
            "init" => (String::new(), format!("{node} init-sysroot --bootloader systemd-boot\n")),
            "commit" => (
                String::new(),
                format!(
                    "osdeploy --repo /mnt/origin commit -b stable --version {n} --timestamp {} trees/{n}\n",
                    1_700_000_000 + n * 600
                ),
            ),
            "pull" => (serve, format!("{node} pull\n")),
            "switch" => (String::new(), format!("{node} switch\n")),
            // boot-check reads the booted slot from the kernel command line (systemd-boot) or plays
            // the firmware itself (the `file` backend).
            "boot" => (String::new(), format!("{node} boot-check && {node} mark-good\n")),
            "prune" => (String::new(), format!("{node} prune\n")),
            other => unreachable!("{other}"),
        }
    }

    /// Runs `step` of round `n` to its end (a rerun after a cut): on the host, or in the guest
    /// when it writes the ESP.
    fn rerun(&mut self, step: &str, n: u64) {
        if self.esp.is_some() && matches!(step, "switch" | "boot") {
            return self.run_in_guest_to_end(step, n);
        }
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
    let mut found = format!(
        "origin ref {}, node ref {}, booted {} (default {}), standby {} {}",
        moved(&before.origin_ref, &after.origin_ref),
        moved(&before.node_ref, &after.node_ref),
        slot(&after.status, "booted"),
        slot(&after.status, "default"),
        standby,
        after.status["slots"][standby]["state"].as_str().unwrap_or("-")
    );
    if let Some(esp) = &after.esp {
        let entry = &esp.entries[standby];
        let kernel = if esp.kernels.contains_key(&format!(".{standby}-new")) {
            "a partial copy"
        } else if esp.kernel_of(entry).is_some() {
            "its kernel"
        } else {
            "no kernel"
        };
        found += &format!("; ESP: standby entry {} boots {kernel}, firmware boots {}", entry.file, esp.choice().0);
    }
    found
}

/// The commit the node's booted slot holds.
fn booted_commit(status: &Value) -> Option<String> {
    let booted = status["booted"].as_str()?;
    status["slots"][booted]["commit"].as_str().map(str::to_owned)
}

#[test]
fn power_cuts_leave_repositories_slots_and_user_data_consistent_and_a_rerun_completes() {
    let cuts: usize = std::env::var("OSDEPLOY_POWER_CUTS").ok().and_then(|n| n.parse().ok()).unwrap_or(15);
    let guest = Rc::new(Guest::build());
    let mut machines = MACHINES.map(|machine| Machine::with_release_1(&guest, machine));
    // Per machine and command: the cuts made while it ran, and after it had ended.
    let mut tally: BTreeMap<(String, &str), [usize; 2]> = BTreeMap::new();
    // What fsck.vfat found on the ESP after the cuts (digits left out), and how often.
    let mut esp_findings: BTreeMap<String, usize> = BTreeMap::new();
    let mut seed = 0x5eed_u64;
    let mut made = 0;
    let mut turns = 0;
    while made < cuts {
        // The machines take turns, each publishing its own releases from 2 on.
        let machine = &mut machines[turns % MACHINES.len()];
        let round = (turns / MACHINES.len()) as u64 + 2;
        turns += 1;
        machine.make_release_tree(round);
        for step in STEPS {
            let cut = machine.took.get(step).map(|whole| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Within the command, or up to a quarter of its time after it ended.
                whole.mul_f64((seed % 1250) as f64 / 1000.0)
            });
            if cut.is_some() && made >= cuts {
                machine.rerun(step, round);
                continue;
            }
            let name = machine.name();
            let context = match cut {
                None => format!("{name} round {round}, {step}, uncut"),
                Some(at) => format!("{name} round {round}, {step}, cut {:.2} s in", at.as_secs_f64()),
            };
            let kernel_args = if step == "boot" { machine.firmware_boot() } else { String::new() };
            let before = machine.seen();
            let (prepare, command) = machine.script(step, round);
            let (status, ran) = machine.run_in_guest(&prepare, &command, &kernel_args, cut);
            let output = fs::read_to_string(machine.path("ctl/command.out")).unwrap_or_default();
            let how = match (cut, status) {
                (None, _) => {
                    assert_eq!(status, Some(0), "{context}: the command failed in the guest:\n{output}");
                    machine.took.insert(step, ran);
                    format!("ran to its end in {:.2} s", ran.as_secs_f64())
                }
                (Some(_), Some(code)) => format!("had ended ({code}) in {:.2} s", ran.as_secs_f64()),
                (Some(_), None) => "cut while it ran".to_owned(),
            };
            if cut.is_some() {
                made += 1;
                tally.entry((name.clone(), step)).or_default()[usize::from(status.is_some())] += 1;
            }
            // What the machine finds when it comes back.
            machine.detach(true, &context);
            machine.attach();
            machine.assert_fsck_clean(&context);
            let (findings, report) = if machine.esp.is_some() { machine.esp_findings() } else { Default::default() };
            let after = machine.seen();
            // Printed now, so that a failure below follows the line naming the cut.
            eprintln!("  {context}: {how}; found {}", found(&before, &after));
            for finding in &findings {
                eprintln!("    fsck.vfat -n on the ESP: {finding}");
                *esp_findings.entry(finding.replace(|c: char| c.is_ascii_digit(), "#")).or_default() += 1;
                assert!(
                    cut.is_some() && ESP_FINDINGS_OF_A_CUT.iter().any(|tolerated| finding.starts_with(tolerated)),
                    "{context}: fsck.vfat -n found damage on the ESP:\n{report}"
                );
            }
            assert_eq!(after.user_data, machine.user_data, "{context}: user data changed");
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
            if machine.esp.is_some() {
                machine.check_esp(step, &context, &before, &after, status == Some(0));
                if !findings.is_empty() {
                    machine.repair_esp();
                }
            }
            // The rerun completes (for a step the guest finished, it is a no-op or a repeat).
            if status != Some(0) {
                machine.rerun(step, round);
            }
            machine.assert_fsck_clean(&format!("{context}, rerun"));
            if machine.esp.is_some() && step == "switch" {
                machine.check_esp_installed(round, &format!("{context}, rerun"));
            }
        }
        // The round ends on the new release, marked good (a cut in the trial boot may have sent
        // the node back to the old one: then it switches again).
        let status = machine.seen().status;
        let newest = branch_ref(&machine.path("sysroot/osdeploy/repo"), "origin/stable");
        if booted_commit(&status) != newest {
            for step in ["switch", "boot"] {
                machine.rerun(step, round);
            }
        }
        let status = machine.seen().status;
        let name = machine.name();
        assert_eq!(booted_commit(&status), newest, "{name} round {round} ends on its release: {status:#}");
        assert_eq!(
            newest,
            branch_ref(&machine.path("origin"), "stable"),
            "{name} round {round}: the node has the origin's release"
        );
        assert_eq!(
            fs::read_to_string(
                machine.path(&format!("sysroot/osdeploy/slots/{}/etc/release", status["booted"].as_str().unwrap()))
            )
            .unwrap(),
            format!("{round}\n")
        );
    }
    eprintln!("power cuts: {made} cuts in {turns} rounds, the first on each machine uncut");
    for ((name, step), [during, after]) in &tally {
        eprintln!("  {name} {step}: cut {during} times while it ran, {after} after it ended");
    }
    for (finding, times) in &esp_findings {
        eprintln!("  fsck.vfat -n on the ESP, {times} times: {finding}");
    }
}
