//! Booting from slots, on real parts: kernels installed per slot onto a loop-mounted boot
//! partition of its own (systemd-boot; ext4 stands in for the ESP's FAT, which the kernels these
//! tests run on may lack) or into the sysroot's /boot (GRUB, whose menu the real
//! `grub-script-check` reads), and `prepare-root` making a slot the root filesystem inside a private mount namespace,
//! with the sysroot on btrfs and a container-image partition on ext4 found by its label.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;
use serde_json::Value;

/// A release tree with one kernel (and its initrd) under boot/, as Debian installs them.
fn kernel_tree(dir: &Path, version: &str, kernel_bytes: usize, seed: u64) {
    fs::create_dir_all(dir.join("usr/lib")).unwrap();
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::create_dir_all(dir.join("boot")).unwrap();
    write_random(&dir.join("usr/lib/libc.so.6"), 200_000, 7);
    fs::write(dir.join("etc/os-release"), format!("KERNEL={version}\n")).unwrap();
    write_random(&dir.join(format!("boot/vmlinuz-{version}")), kernel_bytes, seed);
    write_random(&dir.join(format!("boot/initrd.img-{version}")), 300_000, seed + 1);
    // Debian's convenience links are never followed.
    symlink(format!("boot/vmlinuz-{version}"), dir.join("vmlinuz")).unwrap();
}

/// A node's sysroot with its config dir.
struct Node {
    sysroot: PathBuf,
    config: PathBuf,
    tmp: PathBuf,
}

impl Node {
    fn osd(&self) -> Command {
        osd_at(&self.sysroot, &self.config)
    }

    /// Commits `tree` as branch `release` and returns the commit id.
    fn commit(&self, tree: &Path, version: &str) -> String {
        let out = json(&ok(self.osd().args(["commit", "--json", "-b", "release", "--version", version]).arg(tree)));
        out["commit"].as_str().unwrap().to_owned()
    }

    /// Boots `slot` (as the kernel command line tells boot-check) and marks it good.
    fn boot_and_mark_good(&self, slot: &str) {
        let cmdline = self.tmp.join("cmdline");
        fs::write(&cmdline, format!("root=LABEL=sysroot rw osdeploy.slot={slot}\n")).unwrap();
        ok(self.osd().args(["boot-check", "--cmdline"]).arg(&cmdline));
        ok(self.osd().arg("mark-good"));
    }

    fn status(&self) -> Value {
        json(&ok(self.osd().args(["status", "--json"])))
    }
}

/// A node on a btrfs sysroot whose `boot/` is a small ext4 boot partition, initialised for
/// systemd-boot; unmounted in order on drop.
struct SystemdBootNode {
    node: Node,
    _esp_at_boot: BindMount,
    _esp: LoopFs,
    _sysroot: LoopFs,
}

impl SystemdBootNode {
    fn new(tmp: &Path) -> SystemdBootNode {
        let sysroot = LoopFs::new("btrfs", 300);
        let esp = LoopFs::new("ext4", 40);
        let node = Node { sysroot: sysroot.mount.clone(), config: tmp.join("config"), tmp: tmp.to_owned() };
        fs::create_dir_all(node.config.join("health.d")).unwrap();
        fs::create_dir_all(node.sysroot.join("boot")).unwrap();
        let esp_at_boot = BindMount::new(&esp.mount, &node.sysroot.join("boot"));
        ok(node.osd().args(["init-sysroot", "--bootloader", "systemd-boot"]));
        SystemdBootNode { node, _esp_at_boot: esp_at_boot, _esp: esp, _sysroot: sysroot }
    }
}

#[test]
fn systemd_boot_nodes_get_one_kernel_per_slot_on_their_boot_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let machine = SystemdBootNode::new(tmp.path());
    let node = &machine.node;

    // Without a kernel command line the node could not boot what it deploys: switch says so first.
    let r1 = tmp.path().join("r1");
    kernel_tree(&r1, "6.1.0-50-amd64", 2 << 20, 1);
    let c1 = node.commit(&r1, "1");
    let err = fails(node.osd().args(["switch", "release"]));
    assert!(err.contains("kernel_cmdline is not set"), "{err}");
    fs::write(node.config.join("config.toml"), "kernel_cmdline = \"root=LABEL=sysroot rw quiet\"\n").unwrap();

    let plan = json(&ok(node.osd().args(["switch", "--dry-run", "--json", "release"])));
    let kernel = &plan["kernel"];
    assert_eq!(kernel["version"], "6.1.0-50-amd64", "{plan}");
    assert_eq!(kernel["kernel"], "boot/vmlinuz-6.1.0-50-amd64", "{plan}");
    assert_eq!(kernel["initrd"], "boot/initrd.img-6.1.0-50-amd64", "{plan}");
    // The boot partition is a filesystem of its own: the boot loader names files from its root.
    let b1 = format!("b-{}", &c1[..12]);
    assert_eq!(kernel["linux"], format!("/osdeploy/{b1}/vmlinuz"), "{plan}");
    assert_eq!(kernel["options"], "root=LABEL=sysroot rw quiet osdeploy.slot=b", "{plan}");
    assert!(!node.sysroot.join("boot/osdeploy").exists(), "a dry run writes nothing");

    let human = ok(node.osd().args(["switch", "release"]));
    assert!(human.contains("kernel 6.1.0-50-amd64 installed"), "{human}");
    let kernels = node.sysroot.join("boot/osdeploy");
    assert_eq!(names(&kernels), [b1.as_str()]);
    assert_eq!(
        fs::read(kernels.join(&b1).join("vmlinuz")).unwrap(),
        fs::read(r1.join("boot/vmlinuz-6.1.0-50-amd64")).unwrap()
    );
    assert_eq!(
        fs::read(kernels.join(&b1).join("initrd.img")).unwrap(),
        fs::read(r1.join("boot/initrd.img-6.1.0-50-amd64")).unwrap()
    );
    let entries = node.sysroot.join("boot/loader/entries");
    let entry = fs::read_to_string(entries.join("osdeploy-b+3.conf")).unwrap();
    for line in [
        format!("linux /osdeploy/{b1}/vmlinuz"),
        format!("initrd /osdeploy/{b1}/initrd.img"),
        "options root=LABEL=sysroot rw quiet osdeploy.slot=b".to_owned(),
        "version 6.1.0-50-amd64".to_owned(),
        "title osdeploy 1 (slot b)".to_owned(),
    ] {
        assert!(entry.lines().any(|l| l == line), "missing {line:?} in:\n{entry}");
    }
    // The mount points prepare-root needs exist in the slot.
    assert!(node.sysroot.join("osdeploy/slots/b/sysroot").is_dir());
    node.boot_and_mark_good("b");

    // Each slot keeps one kernel: the next release goes to slot a, the one after replaces slot b's.
    let r2 = tmp.path().join("r2");
    kernel_tree(&r2, "6.1.0-56-amd64", 2 << 20, 2);
    let c2 = node.commit(&r2, "2");
    ok(node.osd().args(["switch", "release"]));
    let a2 = format!("a-{}", &c2[..12]);
    assert_eq!(names(&kernels), [a2.as_str(), b1.as_str()]);
    node.boot_and_mark_good("a");
    let r3 = tmp.path().join("r3");
    kernel_tree(&r3, "6.1.0-57-amd64", 2 << 20, 3);
    let c3 = node.commit(&r3, "3");
    ok(node.osd().args(["switch", "release"]));
    let b3 = format!("b-{}", &c3[..12]);
    assert_eq!(names(&kernels), [a2.as_str(), b3.as_str()]);
    assert!(fs::read_to_string(entries.join("osdeploy-b+3.conf")).unwrap().contains(&format!("/osdeploy/{b3}/")));

    // A kernel larger than the ESP's free space: the switch fails, keeps nothing of the attempt,
    // marks the slot bad, and the booted slot's kernel and entry are untouched.
    let r4 = tmp.path().join("r4");
    kernel_tree(&r4, "6.1.0-58-amd64", 48 << 20, 4);
    node.commit(&r4, "4");
    let a_entry = fs::read_to_string(entries.join("osdeploy-a.conf")).unwrap();
    let err = fails(node.osd().args(["switch", "release"]));
    assert!(err.contains("No space left") && err.contains("boot/osdeploy"), "{err}");
    assert_eq!(names(&kernels), [a2.as_str()]);
    assert_eq!(fs::read_to_string(entries.join("osdeploy-a.conf")).unwrap(), a_entry);
    let st = node.status();
    assert_eq!((st["slots"]["b"]["state"].as_str(), st["next_boot"].as_str()), (Some("bad"), Some("a")), "{st}");

    // A release without a kernel is refused before anything is written.
    let r5 = tmp.path().join("r5");
    kernel_tree(&r5, "6.1.0-59-amd64", 1000, 5);
    fs::remove_dir_all(r5.join("boot")).unwrap();
    fs::remove_file(r5.join("vmlinuz")).unwrap();
    node.commit(&r5, "5");
    let err = fails(node.osd().args(["switch", "release"]));
    assert!(err.contains("has no kernel") && err.contains("systemd-boot"), "{err}");
    assert_eq!(names(&kernels), [a2.as_str()]);
}

#[test]
fn a_kernel_install_aborted_at_each_step_leaves_the_booted_slots_kernel_and_a_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let machine = SystemdBootNode::new(tmp.path());
    let node = &machine.node;
    fs::write(node.config.join("config.toml"), "kernel_cmdline = \"root=LABEL=sysroot rw\"\n").unwrap();
    let r1 = tmp.path().join("r1");
    kernel_tree(&r1, "6.1.0-50-amd64", 2 << 20, 1);
    let c1 = node.commit(&r1, "1");
    ok(node.osd().args(["switch", "release"]));
    node.boot_and_mark_good("b");
    let (kernels, entries) = (node.sysroot.join("boot/osdeploy"), node.sysroot.join("boot/loader/entries"));
    // (booted slot, its kernel directory), then each round installs into the other slot.
    let mut booted = ("b", format!("b-{}", &c1[..12]));
    for (n, point) in KERNEL_CRASH_POINTS.iter().enumerate() {
        let (slot, standby) = (booted.0, if booted.0 == "a" { "b" } else { "a" });
        let booted_entry = fs::read_to_string(entries.join(format!("osdeploy-{slot}.conf"))).unwrap();
        let booted_kernel = fs::read(kernels.join(&booted.1).join("vmlinuz")).unwrap();
        let tree = tmp.path().join(format!("r{}", n + 2));
        kernel_tree(&tree, &format!("6.1.0-5{}-amd64", n + 1), 2 << 20, n as u64 + 2);
        let commit = node.commit(&tree, &(n + 2).to_string());
        let out = node.osd().env("OSDEPLOY_CRASH_AT", point).args(["switch", "release"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(point), "{point}: {stderr}");
        // The booted slot's kernel and entry are untouched; the next boot is the booted slot.
        assert_eq!(fs::read_to_string(entries.join(format!("osdeploy-{slot}.conf"))).unwrap(), booted_entry);
        assert_eq!(fs::read(kernels.join(&booted.1).join("vmlinuz")).unwrap(), booted_kernel, "{point}");
        let st = node.status();
        assert_eq!(st["next_boot"], slot, "{point}: {st}");
        // The standby slot has no trial entry; its entry, if any, sorts after the booted slot's.
        let trial = format!("osdeploy-{standby}+");
        assert_eq!(names(&entries).iter().filter(|e| e.starts_with(&trial)).count(), 0, "{point}");
        if let Ok(entry) = fs::read_to_string(entries.join(format!("osdeploy-{standby}.conf"))) {
            assert!(entry.lines().any(|l| l == "sort-key osdeploy-3-other"), "{point}: {entry}");
        }
        // The rerun completes: the standby slot's kernel, and nothing half-written beside it.
        ok(node.osd().args(["switch", "release"]));
        let installed = format!("{standby}-{}", &commit[..12]);
        let mut expected = [installed.clone(), booted.1.clone()];
        expected.sort();
        assert_eq!(names(&kernels), expected, "{point}");
        let entry = fs::read_to_string(entries.join(format!("osdeploy-{standby}+3.conf"))).unwrap();
        assert!(entry.contains(&format!("linux /osdeploy/{installed}/vmlinuz")), "{point}: {entry}");
        node.boot_and_mark_good(standby);
        booted = (standby, installed);
    }
}

#[test]
fn grub_nodes_get_menu_entries_that_grub_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let node =
        Node { sysroot: tmp.path().join("sysroot"), config: tmp.path().join("config"), tmp: tmp.path().to_owned() };
    fs::create_dir_all(node.config.join("health.d")).unwrap();
    fs::write(node.config.join("config.toml"), "kernel_cmdline = \"root=UUID=0d3c-77 rw console=ttyS0,115200\"\n")
        .unwrap();
    ok(node.osd().args(["init-sysroot", "--bootloader", "grub"]));
    let grub = node.sysroot.join("boot/grub");
    let menu = fs::read_to_string(grub.join("osdeploy.cfg")).unwrap();
    assert!(menu.contains("osdeploy-a.cfg") && menu.contains("load_env"), "{menu}");

    // A kernel under usr/lib/modules/VERSION/ (the systemd layout) is found too; a version with a quote is quoted.
    let tree = tmp.path().join("tree");
    kernel_tree(&tree, "6.1.0-50-amd64", 100_000, 1);
    fs::create_dir_all(tree.join("usr/lib/modules/6.2.0-1-amd64")).unwrap();
    write_random(&tree.join("usr/lib/modules/6.2.0-1-amd64/vmlinuz"), 100_000, 9);
    let commit = node.commit(&tree, "2026.11 'lts'");
    ok(node.osd().args(["switch", "release"]));
    let slot = format!("b-{}", &commit[..12]);
    let entry = fs::read_to_string(grub.join("osdeploy-b.cfg")).unwrap();
    // /boot is a directory of the sysroot's filesystem here, so GRUB names the files from its root.
    let expected = format!(
        "menuentry 'osdeploy 2026.11 '\\''lts'\\'' (slot b)' --id osdeploy-b {{\n  linux '/boot/osdeploy/{slot}/vmlinuz' \
         'root=UUID=0d3c-77' 'rw' 'console=ttyS0,115200' 'osdeploy.slot=b'\n}}\n"
    );
    assert_eq!(entry, expected, "the newest kernel, 6.2.0-1, has no initrd");
    assert_eq!(
        fs::read(node.sysroot.join("boot/osdeploy").join(&slot).join("vmlinuz")).unwrap(),
        fs::read(tree.join("usr/lib/modules/6.2.0-1-amd64/vmlinuz")).unwrap()
    );
    // What GRUB runs: the slot selection, then the entries it sources; the real parser accepts it.
    let script = tmp.path().join("grub.cfg");
    fs::write(&script, [menu, entry].concat()).unwrap();
    sh("grub-script-check", &[&script.display().to_string()]);
}

/// Runs `script` with arguments in a new private mount namespace (its mounts vanish with it);
/// returns stdout, asserting success.
fn in_mount_namespace(script: &str, args: &[&str]) -> String {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec", script, "sh"])
        .args(args)
        .output()
        .expect("unshare (util-linux) is required");
    assert!(
        out.status.success(),
        "namespace script failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn prepare_root_makes_the_booted_slot_the_root_filesystem() {
    let sysroot_fs = LoopFs::new("btrfs", 300);
    // Labels are global on a machine: this one is the test process's own.
    let label = format!("osdimg{:x}", std::process::id());
    let images = LoopFs::labelled("ext4", 64, Some(&label));
    fs::write(images.mount.join("image-blob"), "a cached container image layer\n").unwrap();
    images.unmount();
    // A user-data partition named by its UUID.
    let user_data = LoopFs::new("ext4", 64);
    fs::write(user_data.mount.join("owned-by-the-user"), "user data partition\n").unwrap();
    let uuid = String::from_utf8(sh("findmnt", &["-n", "-o", "UUID", &user_data.mount.display().to_string()]).stdout)
        .unwrap()
        .trim()
        .to_owned();
    assert!(!uuid.is_empty(), "the user-data partition has a UUID");
    user_data.unmount();
    let tmp = tempfile::tempdir().unwrap();
    let node =
        Node { sysroot: sysroot_fs.mount.clone(), config: tmp.path().join("config"), tmp: tmp.path().to_owned() };
    fs::create_dir_all(node.config.join("health.d")).unwrap();
    fs::write(node.config.join("config.toml"), "boot_tries = 1\n").unwrap();
    ok(node.osd().args(["init-sysroot", "--bootloader", "file"]));
    let tree = tmp.path().join("tree");
    kernel_tree(&tree, "6.1.0-50-amd64", 1000, 1);
    fs::create_dir_all(tree.join("etc/osdeploy")).unwrap();
    fs::write(tree.join("etc/marker"), "release 1\n").unwrap();
    fs::write(
        tree.join("etc/osdeploy/config.toml"),
        format!(
            "[[data_partition]]\nsource = \"LABEL={label}\"\ntarget = \"/var/lib/containerd\"\nfstype = \"ext4\"\n\
             options = \"noatime,nodev\"\n\
             [[data_partition]]\nsource = \"UUID={uuid}\"\ntarget = \"/srv/data\"\nfstype = \"ext4\"\n\
             [[data_partition]]\nsource = \"/dev/osdeploy-test-absent\"\ntarget = \"/srv/scratch\"\nfstype = \"ext4\"\n\
             options = \"nofail\"\n"
        ),
    )
    .unwrap();
    node.commit(&tree, "1");
    ok(node.osd().args(["switch", "release"]));
    fs::create_dir_all(node.sysroot.join("var/log")).unwrap();
    fs::write(node.sysroot.join("var/log/app.log"), "kept across releases\n").unwrap();
    fs::write(node.sysroot.join("home/notes"), "user data\n").unwrap();

    let root = sysroot_fs.mount.display().to_string();
    let cmdline = tmp.path().join("cmdline");
    let scratch = tmp.path().join("scratch").display().to_string();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let run = |slot: &str| {
        fs::write(&cmdline, format!("BOOT_IMAGE=/vmlinuz root=LABEL=sysroot rw osdeploy.slot={slot}\n")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_osdeploy"));
        cmd.args(["prepare-root", "--root", &root, "--scratch", &scratch, "--cmdline"]).arg(&cmdline);
        cmd
    };

    // The plan, printed without mounting anything.
    // (Other tests of this process mount filesystems meanwhile: only this test's paths count.)
    let ours = || -> Vec<String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        mountinfo.lines().filter(|l| l.contains(&root) || l.contains(&scratch)).map(str::to_owned).collect()
    };
    let mounts_before = ours();
    assert_eq!(mounts_before.len(), 1, "{mounts_before:?}");
    let plan = json(&ok(run("b").args(["--dry-run", "--json"])));
    assert_eq!(ours(), mounts_before, "a dry run mounts nothing");
    let kinds: Vec<&str> = plan["steps"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["private", "move", "bind", "bind", "bind", "bind", "partition", "partition", "partition", "move"],
        "{plan}"
    );
    assert_eq!((plan["slot"].as_str(), plan["state"].as_str()), (Some("b"), Some("trial")), "{plan}");
    assert_eq!(plan["steps"][3]["read_only"], true, "/usr: {plan}");

    // The boot: in a private namespace, as the initramfs would, then look around the new root.
    fs::write(&cmdline, "BOOT_IMAGE=/vmlinuz root=LABEL=sysroot rw osdeploy.slot=b\n").unwrap();
    let script = r#"
        osd=$1 root=$2 cmdline=$3 scratch=$4 out=$5
        # As in a systemd initramfs, the mounts are shared (among this namespace's own).
        mount --make-rshared /
        "$osd" prepare-root --root "$root" --cmdline "$cmdline" --scratch "$scratch" > "$out/report" 2> "$out/stderr"
        findmnt -rn -o TARGET,FSTYPE,OPTIONS -R "$root" > "$out/mounts"
        cat "$root/etc/marker" "$root/var/log/app.log" "$root/home/notes" "$root/var/lib/containerd/image-blob" \
            "$root/srv/data/owned-by-the-user" > "$out/seen"
        if touch "$root/usr/new-file" 2> "$out/usr-error"; then echo writable; else echo read-only; fi > "$out/usr"
        echo "written at boot" > "$root/etc/boot-note"
        test -f "$root/sysroot/osdeploy/state" && echo present > "$out/sysroot"
    "#;
    in_mount_namespace(
        script,
        &[env!("CARGO_BIN_EXE_osdeploy"), &root, &cmdline.display().to_string(), &scratch, &out.display().to_string()],
    );
    let read = |name: &str| fs::read_to_string(out.join(name)).unwrap();
    assert!(read("report").contains("slot b (trial, version 1) is the root filesystem"), "{}", read("report"));
    assert_eq!(
        read("seen"),
        "release 1\nkept across releases\nuser data\na cached container image layer\nuser data partition\n",
        "the slot's /etc, the sysroot's var and home, the image partition (by label), the user-data partition (by UUID)"
    );
    assert_eq!(read("usr"), "read-only\n", "{}", read("usr-error"));
    assert!(read("usr-error").contains("Read-only file system"), "{}", read("usr-error"));
    assert_eq!(read("sysroot"), "present\n");
    // A partition marked nofail that is not there: the boot goes on and says so.
    assert!(
        read("stderr").contains("data partition /dev/osdeploy-test-absent not mounted (nofail)"),
        "{}",
        read("stderr")
    );
    let mounts = read("mounts");
    let mount_of = |target: &str| {
        mounts
            .lines()
            .find(|l| l.split(' ').next() == Some(target))
            .unwrap_or_else(|| panic!("{target} is not a mount point:\n{mounts}"))
            .to_owned()
    };
    assert!(mount_of(&format!("{root}/usr")).contains(" btrfs ro,"), "{mounts}");
    assert!(mount_of(&format!("{root}/var/lib/containerd")).contains(" ext4 rw,nodev,noatime"), "{mounts}");
    for target in ["var", "home", "sysroot"] {
        mount_of(&format!("{root}/{target}"));
    }
    // Back on the host nothing moved; what the booted system wrote to /etc is in the slot.
    assert!(node.sysroot.join("osdeploy/state").is_file());
    assert_eq!(fs::read_to_string(node.sysroot.join("osdeploy/slots/b/etc/boot-note")).unwrap(), "written at boot\n");
    assert!(!node.sysroot.join("osdeploy/slots/b/usr/new-file").exists());

    // Slots that cannot be a root are refused before any mount, naming why.
    let err = fails(&mut run("a"));
    assert!(err.contains("slot a is empty"), "{err}");
    // A slot whose tree lost its /usr (an interrupted copy by hand, say) is no root either.
    let usr = node.sysroot.join("osdeploy/slots/b/usr");
    fs::rename(&usr, usr.with_file_name("usr.moved")).unwrap();
    let err = fails(&mut run("b"));
    assert!(err.contains("holds no usr/ directory"), "{err}");
    fs::rename(usr.with_file_name("usr.moved"), &usr).unwrap();
    // The trial of b fails (boot_tries = 1: one boot, no mark-good), so boot-check marks it bad.
    ok(node.osd().arg("boot-check"));
    ok(node.osd().arg("boot-check"));
    let st = node.status();
    assert_eq!(st["slots"]["b"]["state"], "bad", "{st}");
    let err = fails(&mut run("b"));
    assert!(err.contains("slot b is bad") && err.contains("fall back"), "{err}");
    // In the initramfs, initramfs-tools' script says so on the console and reboots, so that the
    // bootloader falls back. Here its /usr/bin/osdeploy and `reboot` are stand-ins overlaid on
    // /usr/bin, and the console and the sysrq trigger are files: nothing can reboot this machine.
    let stand_ins = tmp.path().join("stand-ins");
    fs::create_dir_all(&stand_ins).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_osdeploy"), stand_ins.join("osdeploy")).unwrap();
    let rebooted = out.join("rebooted");
    write_script(&stand_ins.join("reboot"), &format!("# stand-in\necho \"reboot $*\" >> '{}'", rebooted.display()));
    let (console, sysrq) = (out.join("console"), out.join("sysrq"));
    fs::write(&console, "").unwrap();
    fs::write(&sysrq, "").unwrap();
    let local_bottom = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/initramfs-tools/scripts/local-bottom/osdeploy");
    let script = r#"
        stand_ins=$1 script=$2 cmdline=$3 console=$4 sysrq=$5 root=$6
        if [ -e /proc/sysrq-trigger ]; then mount --bind "$sysrq" /proc/sysrq-trigger; fi
        mount -t overlay overlay -o lowerdir="$stand_ins":/usr/bin /usr/bin
        grep -q stand-in /usr/bin/reboot
        mount --bind "$cmdline" /proc/cmdline
        mount --bind "$console" /dev/console
        [ "$(PATH=/usr/bin command -v reboot)" = /usr/bin/reboot ]
        PATH=/usr/bin rootmnt="$root" sh "$script"
    "#;
    let paths = [&stand_ins, &local_bottom, &cmdline, &console, &sysrq].map(|p| p.display().to_string());
    in_mount_namespace(script, &[&paths[0], &paths[1], &paths[2], &paths[3], &paths[4], &root]);
    let said = fs::read_to_string(&console).unwrap();
    assert!(said.contains("osdeploy: this slot cannot be the root filesystem; rebooting"), "console: {said}");
    assert_eq!(fs::read_to_string(&rebooted).unwrap(), "reboot -f\n");
    fs::write(&cmdline, "quiet\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osdeploy"));
    let err = fails(cmd.args(["prepare-root", "--root", &root, "--scratch", &scratch, "--cmdline"]).arg(&cmdline));
    assert!(err.contains("no osdeploy.slot= parameter"), "{err}");
}

#[test]
fn the_package_ships_binary_units_initramfs_hook_man_pages_and_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = tmp.path().join("osdeploy");
    sh("strip", &["-o", &binary.display().to_string(), env!("CARGO_BIN_EXE_osdeploy")]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/build-deb.sh");
    let out = sh(&script.display().to_string(), &[&binary.display().to_string(), &tmp.path().display().to_string()]);
    let deb = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let field = |name: &str| String::from_utf8(sh("dpkg-deb", &["-f", &deb, name]).stdout).unwrap().trim().to_owned();
    assert_eq!(field("Package"), "osdeploy");
    assert!(field("Depends").starts_with("libc6 (>= 2."), "{}", field("Depends"));
    let root = tmp.path().join("root");
    sh("dpkg-deb", &["-x", &deb, &root.display().to_string()]);
    for path in [
        "usr/bin/osdeploy",
        "usr/lib/systemd/system/osdeploy-boot-check.service",
        "usr/lib/systemd/system/osdeploy-mark-good.service",
        "usr/share/initramfs-tools/hooks/osdeploy",
        "usr/share/initramfs-tools/scripts/local-bottom/osdeploy",
        "usr/lib/dracut/modules.d/90osdeploy/module-setup.sh",
        "usr/lib/dracut/modules.d/90osdeploy/osdeploy-prepare-root.sh",
        "usr/lib/dracut/modules.d/90osdeploy/osdeploy-prepare-root.service",
        "usr/share/man/man1/osdeploy.1.gz",
        "usr/share/man/man1/osdeploy-prepare-root.1.gz",
        "usr/share/zsh/vendor-completions/_osdeploy",
        "usr/share/fish/vendor_completions.d/osdeploy.fish",
        "usr/share/doc/osdeploy/deployments.md",
        "etc/osdeploy/health.d",
    ] {
        assert!(root.join(path).exists(), "the package lacks {path}");
    }
    let page = sh("sh", &["-c", &format!("zcat {}", root.join("usr/share/man/man1/osdeploy-switch.1.gz").display())]);
    let page = String::from_utf8(page.stdout).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH osdeploy-switch"), "{page}");
    assert!(page.contains("dry"), "the page documents switch's options: {page}");
    let completion = root.join("usr/share/bash-completion/completions/osdeploy");
    sh("bash", &["-n", &completion.display().to_string()]);
    assert!(fs::read_to_string(&completion).unwrap().contains("prepare-root"));
    // The maintainer scripts enable the boot-time units; initramfs-tools rebuilds the initramfs.
    let control = tmp.path().join("control");
    sh("dpkg-deb", &["-e", &deb, &control.display().to_string()]);
    assert!(fs::read_to_string(control.join("postinst")).unwrap().contains("systemctl enable osdeploy-boot-check"));
    assert_eq!(fs::read_to_string(control.join("triggers")).unwrap(), "activate-noawait update-initramfs\n");
}

#[test]
fn the_initramfs_scripts_are_valid_shell() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    for script in ["hooks/osdeploy", "scripts/local-bottom/osdeploy"] {
        let path = dist.join("initramfs-tools").join(script);
        sh("sh", &["-n", &path.display().to_string()]);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("prereqs)"), "{script} answers initramfs-tools' prereqs call");
    }
    // dracut sources module-setup.sh with bash and its hooks with sh.
    let dracut = dist.join("dracut/90osdeploy");
    sh("bash", &["-n", &dracut.join("module-setup.sh").display().to_string()]);
    sh("sh", &["-n", &dracut.join("osdeploy-prepare-root.sh").display().to_string()]);
    let hook = fs::read_to_string(dracut.join("osdeploy-prepare-root.sh")).unwrap();
    assert!(!hook.lines().any(|l| l.trim_start().starts_with("exit")), "a sourced hook must not exit dracut's init");
    let unit = dracut.join("osdeploy-prepare-root.service");
    let verify =
        Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit).output().expect("systemd-analyze");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    // Only what an initramfs has and this host lacks may be missing.
    let expected = ["sysroot.mount not found", "/usr/bin/osdeploy is not executable"];
    assert!(complaints.lines().all(|l| expected.iter().any(|e| l.contains(e))), "{complaints}");
}
