//! Real boots, A → B → automatic fallback, with systemd-boot and with GRUB on UEFI (QEMU, OVMF).
//!
//! A Debian 12 root filesystem (`tests/vm/make-vm-rootfs.sh`: systemd, udev, the cloud kernel)
//! gets the osdeploy package under test (binary, systemd units, initramfs-tools hook, dracut
//! module) and becomes three releases on an origin: 1 and 2 healthy, 3 with a failing health
//! check; each in two variants, with initramfs-tools' initramfs (branches r1–r3, booted by GRUB)
//! and with dracut's, systemd inside (d1–d3, booted by systemd-boot). The host installs
//! a node as an installer would: a GPT disk with a FAT ESP, a btrfs sysroot and an ext4
//! container-image partition; init-sysroot, release 1 pulled and switched into slot b, on trial.
//! Then the VM boots, and nothing outside the guest touches the disk; each update is the guest's
//! own, from a second disk (the origin, served by `osdeploy serve` on its loopback):
//!
//! 1. release 1 on trial from slot b: prepare-root makes the slot the root filesystem, mark-good
//!    passes, slot b becomes the default; the guest pulls release 2 and switches it into slot a,
//!    installing its kernel on the ESP itself;
//! 2. release 2 on trial from slot a, marked good; the guest pulls release 3 into slot b;
//! 3. release 3 on trial from slot b: its health check fails, it is not marked good;
//! 4. the bootloader's own counting brings slot a back; boot-check marks slot b bad;
//! 5. and slot a boots again.
//!
//! Each boot reports on the serial console (`tests/vm/osdeploy-vmtest`): the user-data file on
//! /var and the image on the container partition read the same at every boot, /usr is
//! read-only, `osdeploy status` names the booted slot, and the container partition's bytes are
//! the same before and after each pull and switch. The test prints the boot timeline.
//!
//! Acceleration: nested KVM on the machines this project is built on stops in the firmware's
//! first FPU instruction (a KVM emulation failure), so QEMU emulates (TCG) unless
//! `OSDEPLOY_VM_ACCEL=kvm`. A boot takes about a minute that way.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

/// Where the root filesystem and the releases are kept between runs (large, rebuilt as needed).
fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vm")
}

/// The repository's own files the image needs.
fn source(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The node configuration every release carries (and the installer uses).
const NODE_CONFIG: &str = r#"boot_tries = 1
kernel_cmdline = "root=PARTLABEL=osd-sysroot rw console=ttyS0 panic=5 loglevel=1 systemd.show_status=0"

[[data_partition]]
source = "LABEL=osd-images"
target = "/var/lib/containerd"
fstype = "ext4"
options = "noatime"
"#;

/// The drivers the VM's initramfs images carry (virtio disks, the sysroot's, data partition's and
/// ESP's filesystems).
const DRIVERS: &str = "virtio_pci virtio_blk btrfs ext4 vfat nls_cp437 nls_ascii";

/// Which tool built the releases' initramfs.
#[derive(Clone, Copy, Debug)]
enum Initramfs {
    /// Debian's initramfs-tools, with osdeploy's hook and local-bottom script.
    Tools,
    /// dracut with systemd in the initramfs, with osdeploy's module.
    Dracut,
}

impl Initramfs {
    /// The origin's branch of release `n` built with this initramfs.
    fn branch(self, n: u32) -> String {
        match self {
            Initramfs::Tools => format!("r{n}"),
            Initramfs::Dracut => format!("d{n}"),
        }
    }
}

/// The origin with releases 1, 2 and 3 in both initramfs variants, built once per test run.
struct Releases {
    origin: PathBuf,
    /// The kernel version the releases carry.
    kernel: String,
}

fn releases() -> &'static Releases {
    static RELEASES: OnceLock<Releases> = OnceLock::new();
    RELEASES.get_or_init(|| {
        require_root();
        let work = work_dir();
        shell(&format!("{} {}", q(&source("tests/vm/make-vm-rootfs.sh")), q(&work)));
        let run = work.join("releases");
        if run.exists() {
            fs::remove_dir_all(&run).unwrap();
        }
        fs::create_dir_all(&run).unwrap();
        // Release 1: the image with osdeploy's package installed, the node's configuration and a
        // passing health check.
        let tree = run.join("tree");
        let binary = run.join("osdeploy");
        sh("strip", &["-o", &binary.display().to_string(), env!("CARGO_BIN_EXE_osdeploy")]);
        let masked = "serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
                      e2scrub_reap.service dpkg-db-backup.timer";
        let deb = shell(&format!("{} {} {}", q(&source("deploy-cli/dist/build-deb.sh")), q(&binary), q(&run)));
        shell(&format!(
            "cp -a {rootfs} {tree}
             # osdeploy as a node gets it: its package, which enables the units and rebuilds the
             # initramfs with the hook (initramfs-tools' trigger).
             cp {deb} {tree}/tmp/osdeploy.deb
             chroot {tree} dpkg -i /tmp/osdeploy.deb > /dev/null
             rm {tree}/tmp/osdeploy.deb
             install -D -m755 {vm}/osdeploy-vmtest {tree}/usr/local/sbin/osdeploy-vmtest
             install -D -m644 {vm}/osdeploy-vmtest.service {tree}/usr/lib/systemd/system/osdeploy-vmtest.service
             cd {tree}/etc/systemd/system
             mkdir -p multi-user.target.wants
             ln -s /usr/lib/systemd/system/osdeploy-vmtest.service multi-user.target.wants/
             # getty's vhangup of ttyS0 would cut the report off; the rest only slows the boot.
             for unit in {masked}; do ln -s /dev/null $unit; done
             printf '#!/bin/sh\\nexit 0\\n' > {tree}/etc/osdeploy/health.d/10-ok
             chmod 755 {tree}/etc/osdeploy/health.d/10-ok
             echo 'PARTLABEL=osd-esp /sysroot/boot vfat umask=0077 0 0' > {tree}/etc/fstab",
            rootfs = q(&work.join("rootfs")),
            tree = q(&tree),
            deb = q(Path::new(deb.trim())),
            vm = q(&source("tests/vm")),
        ));
        let initramfs = shell(&format!("chroot {} sh -c 'lsinitramfs /boot/initrd.img-*'", q(&tree)));
        assert!(
            initramfs.lines().any(|l| l == "usr/bin/osdeploy")
                && initramfs.lines().any(|l| l == "scripts/local-bottom/osdeploy"),
            "the package's trigger rebuilt the initramfs with osdeploy in it"
        );
        fs::write(tree.join("etc/osdeploy/config.toml"), NODE_CONFIG).unwrap();
        let kernel = fs::read_dir(tree.join("boot"))
            .unwrap()
            .find_map(|e| e.unwrap().file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_owned))
            .expect("the image has a kernel");
        // Releases 2 and 3 differ from 1 in their release file, and release 3 fails its health
        // check: one tree, changed between commits, so the disk holds one copy of the image.
        let origin = run.join("origin");
        ok(osdeploy(&origin).args(["init", "--mode", "archive"]));
        let fail_check = tree.join("etc/osdeploy/health.d/20-fail");
        let commit_releases = |initramfs: Initramfs| {
            for n in 1..=3 {
                fs::write(tree.join("etc/osdeploy-release"), format!("{n}\n")).unwrap();
                if n == 3 {
                    fs::write(&fail_check, "#!/bin/sh\necho release 3 is broken >&2\nexit 1\n").unwrap();
                    fs::set_permissions(&fail_check, fs::Permissions::from_mode(0o755)).unwrap();
                }
                let branch = initramfs.branch(n);
                ok(osdeploy(&origin).args(["commit", "-b", &branch, "--version", &n.to_string()]).arg(&tree));
            }
            fs::remove_file(&fail_check).unwrap();
        };
        commit_releases(Initramfs::Tools);
        // The same releases with an initramfs that dracut builds, osdeploy's dracut module (from
        // the package) in it; only the drivers the VM boots with, as the image's own has.
        shell(&format!(
            "chroot {tree} dracut --quiet --force --no-hostonly --drivers '{DRIVERS}' /boot/initrd.img-{kernel} {kernel}",
            tree = q(&tree)
        ));
        let initramfs = shell(&format!("chroot {} lsinitrd /boot/initrd.img-{kernel}", q(&tree)));
        assert!(
            initramfs.contains("initrd-root-fs.target.wants/osdeploy-prepare-root.service") && initramfs.contains(" usr/bin/osdeploy\n"),
            "dracut put osdeploy's module into the initramfs (with systemd):\n{initramfs}"
        );
        commit_releases(Initramfs::Dracut);
        fs::remove_dir_all(&tree).unwrap();
        Releases { origin, kernel }
    })
}

/// A loop device over a byte range of an image; detached on drop.
struct Loop(String);

impl Loop {
    fn new(image: &Path, offset: u64, size: u64) -> Loop {
        let out = sh(
            "losetup",
            &[
                "-f",
                "--show",
                "-o",
                &offset.to_string(),
                "--sizelimit",
                &size.to_string(),
                &image.display().to_string(),
            ],
        );
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mount; unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn new(args: &[&str], at: &Path) -> Mounted {
        fs::create_dir_all(at).unwrap();
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.push(at.display().to_string());
        sh("mount", &all.iter().map(String::as_str).collect::<Vec<_>>());
        Mounted(at.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The partitions of the node's disk, by GPT name: (offset, size) in bytes.
fn partitions(disk: &Path) -> Vec<(String, u64, u64)> {
    let table: Value = serde_json::from_slice(&sh("sfdisk", &["-J", &disk.display().to_string()]).stdout).unwrap();
    table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap().to_owned();
            (name, p["start"].as_u64().unwrap() * 512, p["size"].as_u64().unwrap() * 512)
        })
        .collect()
}

/// A node's disks, made by the host as an installer would.
struct Node {
    disk: PathBuf,
    ctl: PathBuf,
    vars: PathBuf,
    dir: tempfile::TempDir,
    /// The port the origin is served on, in the guest as on the host.
    port: String,
}

/// The user data the installer leaves on /var; every boot must read it back.
const USER_DATA: &str = "user data written once by the installer";
/// The container image on its own partition; every boot must read it back.
const IMAGE: &str = "a cached container image layer";

fn install_node(bootloader: &str, initramfs: Initramfs, releases: &Releases) -> Node {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = dir.path().join("disk.img");
    fs::File::create(&disk).unwrap().set_len(3 << 30).unwrap();
    let mut sfdisk = Command::new("sfdisk").args(["-q"]).arg(&disk).stdin(Stdio::piped()).spawn().expect("sfdisk");
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"label: gpt\nsize=200MiB, type=U, name=osd-esp\nsize=2400MiB, type=L, name=osd-sysroot\n\
              type=L, name=osd-images\n",
        )
        .unwrap();
    assert!(sfdisk.wait().unwrap().success(), "sfdisk");
    let parts = partitions(&disk);
    let part = |name: &str| {
        let (_, offset, size) = parts.iter().find(|p| p.0 == name).unwrap();
        Loop::new(&disk, *offset, *size)
    };
    let (esp, sysroot, images) = (part("osd-esp"), part("osd-sysroot"), part("osd-images"));

    // The sysroot, installed with the host's osdeploy; the ESP content is staged on a tmpfs of
    // its own (so that it is a partition of its own, as the ESP will be) and copied in with
    // mtools, FAT being a filesystem the host's kernel may lack.
    sh("mkfs.btrfs", &["-q", "-L", "osd-sysroot", &sysroot.0]);
    let root = dir.path().join("sysroot");
    let root_mount = Mounted::new(&[&sysroot.0], &root);
    let boot_mount = Mounted::new(&["-t", "tmpfs", "tmpfs"], &root.join("boot"));
    let config = dir.path().join("config");
    fs::create_dir_all(config.join("health.d")).unwrap();
    fs::write(config.join("config.toml"), NODE_CONFIG).unwrap();
    let server = osdeploy_serve(&releases.origin);
    let node = || osd_at(&root, &config);
    ok(node().args(["init-sysroot", "--bootloader", bootloader]));
    ok(node().args(["remote", "add", "origin", &server.url, "--insecure"]));
    let (r1, r2) = (initramfs.branch(1), initramfs.branch(2));
    ok(node().args(["pull", "origin", &r1]));
    // Release 1 goes into slot b, on trial: its first boot is the VM's.
    let switched = json(&ok(node().args(["switch", "--json", &format!("origin/{r1}")])));
    assert_eq!((switched["slot"].as_str(), switched["kernel"].as_str()), (Some("b"), Some(releases.kernel.as_str())));
    fs::create_dir_all(root.join("var/lib")).unwrap();
    fs::write(root.join("var/lib/osd-data"), USER_DATA).unwrap();
    let staged = dir.path().join("esp");
    shell(&format!("cp -a {}/. {}", q(&root.join("boot")), q(&staged)));
    drop(boot_mount);
    drop(root_mount);

    // Inode tables and journal written in full now: ext4's lazy initialisation would otherwise
    // go on writing in the guest, in the background, and the partition's bytes would change
    // while the test compares them.
    sh("mkfs.ext4", &["-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-L", "osd-images", &images.0]);
    let images_mount = Mounted::new(&[&images.0], &dir.path().join("images"));
    fs::write(images_mount.0.join("blob"), IMAGE).unwrap();
    drop(images_mount);

    fs::create_dir_all(staged.join("EFI/BOOT")).unwrap();
    let loader = staged.join("EFI/BOOT/BOOTX64.EFI");
    match bootloader {
        "systemd-boot" => {
            fs::copy("/usr/lib/systemd/boot/efi/systemd-bootx64.efi", &loader).expect("systemd-boot-efi is installed");
        }
        _ => {
            let modules = "part_gpt fat normal linux loadenv test echo configfile gzio efi_gop all_video";
            let mut args = vec!["-O", "x86_64-efi", "-p", "(hd0,gpt1)/grub", "-o"];
            let loader = loader.display().to_string();
            args.push(&loader);
            args.extend(modules.split(' '));
            sh("grub-mkimage", &args);
            fs::write(staged.join("grub/grub.cfg"), "set timeout=0\nsource ${prefix}/osdeploy.cfg\n").unwrap();
        }
    }
    sh("mkfs.vfat", &["-F", "32", "-n", "OSDESP", &esp.0]);
    shell(&format!("cd {} && MTOOLS_SKIP_CHECK=1 mcopy -s -i {} * ::/", q(&staged), esp.0));

    // The second disk: the origin, and the step the next boot runs (set by `Node::set_step`).
    let ctl = dir.path().join("ctl.img");
    fs::File::create(&ctl).unwrap().set_len(1 << 30).unwrap();
    sh("mkfs.ext4", &["-q", "-L", "osd-ctl", &ctl.display().to_string()]);
    let port = server.url.rsplit(':').next().unwrap().trim_end_matches('/').to_owned();
    let ctl_mount = Mounted::new(&[&ctl.display().to_string()], &dir.path().join("ctl"));
    shell(&format!("cp -a {} {}", q(&releases.origin), q(&ctl_mount.0.join("origin"))));
    drop(ctl_mount);
    let vars = dir.path().join("vars.fd");
    fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).expect("ovmf is installed");
    let node = Node { disk, ctl, vars, dir, port };
    node.set_step(Some(&r2));
    node
}

impl Node {
    /// What the next boot runs once it has reported: pull `branch` from the origin on the second
    /// disk and switch to it, with the container partition's sha256 and sectors-written counter
    /// before and after; nothing with `None`.
    fn set_step(&self, branch: Option<&str>) {
        let ctl = Mounted::new(&[&self.ctl.display().to_string()], &self.dir.path().join("ctl"));
        let step = ctl.0.join("step.sh");
        let Some(branch) = branch else {
            let _ = fs::remove_file(&step);
            return;
        };
        fs::write(
            step,
            format!(
                "set -e
osdeploy serve /run/ctl/origin --listen 127.0.0.1:{port} > /dev/null 2>&1 &
server=$!
sleep 2
images=/dev/disk/by-label/osd-images
state() {{ sync; set -- $(sha256sum < $images); echo $1/$(awk '{{print $7}}' /sys/class/block/$(basename $(readlink -f $images))/stat); }}
before=$(state)
osdeploy --sysroot /sysroot pull origin {branch}
osdeploy --sysroot /sysroot switch origin/{branch}
after=$(state)
echo \"images-partition before=$before after=$after\"
kill $server
",
                port = self.port
            ),
        )
        .unwrap();
    }
}

/// What one boot reported.
struct Boot {
    /// `slot=… release=… mark-good=…` fields.
    fields: Vec<(String, String)>,
    status: Value,
    lines: Vec<String>,
    /// Seconds from starting QEMU to the report.
    seconds: f64,
    /// What `prepare-root` said its mounts took, from the console.
    prepare_root_ms: u64,
}

impl Boot {
    fn field(&self, key: &str) -> &str {
        self.fields.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v.as_str())
    }

    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }
}

/// Boots the node once, until it powers off; returns its report.
fn boot(node: &Node, n: usize) -> Boot {
    let log = node.dir.path().join(format!("serial-{n}.log"));
    let accel = std::env::var("OSDEPLOY_VM_ACCEL").unwrap_or_else(|_| "tcg,thread=multi".to_owned());
    let code = "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".to_owned();
    let vars = format!("if=pflash,format=raw,file={}", node.vars.display());
    let disk = format!("file={},format=raw,if=virtio", node.disk.display());
    let ctl = format!("file={},format=raw,if=virtio", node.ctl.display());
    let serial = format!("file:{}", log.display());
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", &accel, "-machine", "q35", "-m", "1024", "-smp", "2", "-nic", "none", "-display", "none"])
        .args(["-no-reboot", "-drive", &code, "-drive", &vars, "-drive", &disk, "-drive", &ctl, "-serial", &serial])
        .args(if accel.starts_with("tcg") { vec!["-cpu", "max"] } else { vec!["-cpu", "host"] })
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 is required (Debian: qemu-system-x86)");
    let mut reported = None;
    let exit = loop {
        if let Some(status) = qemu.try_wait().unwrap() {
            break format!("QEMU exited: {status}");
        }
        if reported.is_none() && fs::read(&log).is_ok_and(|b| String::from_utf8_lossy(&b).contains("VMTEST boot ")) {
            reported = Some(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(900) {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break "no power-off within 900 s: QEMU killed".to_owned();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = String::from_utf8_lossy(&fs::read(&log).unwrap_or_default()).into_owned();
    let lines: Vec<String> =
        text.lines().filter_map(|l| l.strip_prefix("VMTEST ")).map(|l| l.trim_end().to_owned()).collect();
    if !lines.iter().any(|l| l == "done") {
        // Kept for a look: the node's temporary directory goes with the test.
        let kept = work_dir().join(format!("failed-boot-{n}-{}.log", std::process::id()));
        let _ = fs::copy(&log, &kept);
        let console: Vec<&str> = text.lines().filter(|l| !l.contains("Job ") && !l.trim().is_empty()).collect();
        let tail = console[console.len().saturating_sub(60)..].join("\n");
        panic!(
            "boot {n} did not report ({exit}); its report so far: {lines:#?}\nconsole (all of it in {}):\n{tail}",
            kept.display()
        );
    }
    let fields = lines
        .iter()
        .find_map(|l| l.strip_prefix("boot "))
        .unwrap()
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let status_line = lines.iter().find_map(|l| l.strip_prefix("status ")).unwrap_or_default();
    let status = serde_json::from_str(status_line).unwrap_or_else(|e| {
        let kept = work_dir().join(format!("bad-report-{n}-{}.log", std::process::id()));
        let _ = fs::copy(&log, &kept);
        panic!("boot {n}: the status line is not JSON ({e}; console in {}): {status_line}", kept.display())
    });
    let prepare_root_ms = text
        .split("; mounts made in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("boot {n}: prepare-root's report is not on the console"));
    Boot { fields, status, lines, seconds: reported.unwrap_or(0.0), prepare_root_ms }
}

/// Installs a node, boots it three times and checks each boot (see the module documentation).
fn a_to_b_and_back(bootloader: &str, initramfs: Initramfs) {
    let releases = releases();
    let node = install_node(bootloader, initramfs, releases);
    let mut timeline = Vec::new();
    let mut check = |n: usize, slot: &str, release: &str, mark_good: &str| -> Boot {
        let boot = boot(&node, n);
        let context = format!("{bootloader} with {initramfs:?}, boot {n}: {:?}", boot.lines);
        assert_eq!(
            (boot.field("slot"), boot.field("release"), boot.field("mark-good")),
            (slot, release, mark_good),
            "{context}"
        );
        assert_eq!(boot.status["booted"], slot, "status names the booted slot: {context}");
        assert!(boot.has("usr read-only"), "{context}");
        assert!(boot.has(&format!("data {USER_DATA} | images {IMAGE}")), "{context}");
        let marked = boot.field("mark-good-at-us").parse::<f64>().unwrap_or(0.0) / 1e6;
        timeline.push(format!(
            "{bootloader} ({initramfs:?}) boot {n}: slot {slot}, release {release}, prepare-root's mounts {} ms, mark-good \
             {mark_good} {marked:.1} s after the kernel started, report {:.1} s after power-on",
            boot.prepare_root_ms, boot.seconds
        ));
        boot
    };

    // Each update (the guest's pull and switch) installs the release's kernel and leaves the
    // container partition's bytes alone.
    let updated = |boot: &Boot| {
        let step: Vec<&String> = boot.lines.iter().filter(|l| l.starts_with("step: ")).collect();
        let installed = format!("kernel {} installed", releases.kernel);
        assert!(step.iter().any(|l| l.contains(&installed)), "{step:?}");
        let images = step
            .iter()
            .find_map(|l| l.strip_prefix("step: images-partition before="))
            .unwrap_or_else(|| panic!("the step did not finish: {step:?}"));
        let (before, after) = images.split_once(" after=").unwrap();
        assert_eq!(before, after, "the pull and switch left the container partition's bytes alone (sha256/sectors)");
    };
    let first = check(1, "b", "1", "active");
    assert_eq!(first.status["default"], "b", "{:?}", first.lines);
    updated(&first);
    node.set_step(Some(&initramfs.branch(3)));
    let second = check(2, "a", "2", "active");
    assert_eq!(second.status["default"], "a", "{:?}", second.lines);
    updated(&second);
    node.set_step(None);
    let third = check(3, "b", "3", "failed");
    assert_eq!((third.status["default"].as_str(), third.status["next_boot"].as_str()), (Some("a"), Some("a")));
    // The bootloader's own counting brings slot a back, and keeps it.
    for n in [4, 5] {
        let back = check(n, "a", "2", "active");
        assert_eq!(back.status["slots"]["b"]["state"], "bad", "{:?}", back.lines);
    }
    println!("{}", timeline.join("\n"));
}

#[test]
fn systemd_boot_with_dracut_boots_a_slot_and_falls_back_by_itself() {
    a_to_b_and_back("systemd-boot", Initramfs::Dracut);
}

#[test]
fn grub_with_initramfs_tools_boots_a_slot_and_falls_back_by_itself() {
    a_to_b_and_back("grub", Initramfs::Tools);
}
