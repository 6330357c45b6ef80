//! Bootloader backends end to end: boot-once cycles for every backend through the `Bootloader` trait, and the file
//! formats checked against the real tools (`grub-editenv` and `grub-script-check` from Debian's `grub2-common` /
//! `grub-common`, `fw_printenv`/`fw_setenv` from `libubootenv-tool`). A missing tool fails the test: install the
//! packages with `scripts/install-deps.sh`.

use std::path::Path;
use std::process::{Command, Output};

use osdeploy_deploy::bootloader::{
    BackendConfig, BlsEntry, BootState, Bootloader, BootloaderError, GrubEnv, Slot, SystemdBoot, Trial, UBootEnv,
    VarEnv, grub, uboot,
};

const UBOOT_ENV_SIZE: usize = 0x2000;

/// Runs a tool, failing loudly (never skipping) when it is not installed, and returns its output.
fn run(program: &str, package: &str, args: &[&str]) -> Output {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("{program} is required by this test (Debian package {package}, see scripts/install-deps.sh): {e}")
    });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a tool and returns its standard output.
fn stdout(program: &str, package: &str, args: &[&str]) -> String {
    String::from_utf8(run(program, package, args).stdout).unwrap()
}

/// Writes the two BLS entries a systemd-boot backend needs.
fn systemd_boot(root: &Path) -> SystemdBoot {
    let sd = SystemdBoot::new(root);
    for slot in Slot::ALL {
        let entry = BlsEntry {
            title: format!("osdeploy slot {slot}"),
            version: None,
            linux: format!("/osdeploy/{slot}/vmlinuz"),
            initrd: vec![],
            options: "root=LABEL=sysroot".to_owned(),
        };
        sd.write_entry(slot, &entry).unwrap();
    }
    sd
}

/// One instance of every backend, each in its own directory of `dir`.
fn all_backends(dir: &Path) -> Vec<Box<dyn Bootloader>> {
    let sd_root = dir.join("esp");
    systemd_boot(&sd_root);
    [
        BackendConfig::File(dir.join("file/boot.json")),
        BackendConfig::Grub(dir.join("grub/grubenv")),
        BackendConfig::SystemdBoot(sd_root),
        BackendConfig::UBoot { path: dir.join("uboot/uboot.env"), size: UBOOT_ENV_SIZE },
    ]
    .iter()
    .map(|config| config.open().unwrap())
    .collect()
}

fn summary(state: &BootState) -> (Slot, Option<Trial>, Slot) {
    (state.default, state.trial, state.next)
}

#[test]
fn every_backend_falls_back_after_the_failed_tries() {
    let dir = tempfile::tempdir().unwrap();
    for bl in all_backends(dir.path()) {
        let name = bl.name();
        assert_eq!(summary(&bl.state().unwrap()), (Slot::A, None, Slot::A), "{name}");
        bl.arm_trial(Slot::B, 3).unwrap();
        assert_eq!(
            summary(&bl.state().unwrap()),
            (Slot::A, Some(Trial { slot: Slot::B, tries_left: 3 }), Slot::B),
            "{name}"
        );
        // Three boots of b that never reach mark-good, then the bootloader goes back to a by itself.
        for left in [2, 1, 0] {
            assert_eq!(bl.boot().unwrap(), Slot::B, "{name}");
            assert_eq!(bl.state().unwrap().tries_left(), left, "{name}");
        }
        for _ in 0..2 {
            assert_eq!(bl.boot().unwrap(), Slot::A, "{name}");
        }
        let state = bl.state().unwrap();
        assert_eq!(summary(&state), (Slot::A, Some(Trial { slot: Slot::B, tries_left: 0 }), Slot::A), "{name}");
        assert!(!state.trial_pending(), "{name}");
        // boot-check on a marks a good again: the failed trial is forgotten.
        bl.mark_good(Slot::A).unwrap();
        assert_eq!(summary(&bl.state().unwrap()), (Slot::A, None, Slot::A), "{name}");
        assert_eq!(bl.boot().unwrap(), Slot::A, "{name}");
    }
}

#[test]
fn every_backend_switches_default_on_mark_good_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    for bl in all_backends(dir.path()) {
        let name = bl.name();
        bl.arm_trial(Slot::B, 2).unwrap();
        assert_eq!(bl.boot().unwrap(), Slot::B, "{name}");
        let state = bl.state().unwrap();
        assert!(state.trial_pending(), "{name}");
        bl.mark_good(Slot::B).unwrap();
        assert_eq!(summary(&bl.state().unwrap()), (Slot::B, None, Slot::B), "{name}");
        for _ in 0..3 {
            assert_eq!(bl.boot().unwrap(), Slot::B, "{name}: b is the default now");
        }

        // A second switch, to a, is rolled back before it is tried.
        bl.arm_trial(Slot::A, 3).unwrap();
        assert_eq!(bl.state().unwrap().next, Slot::A, "{name}");
        bl.set_next(Slot::B).unwrap();
        assert_eq!(summary(&bl.state().unwrap()), (Slot::B, None, Slot::B), "{name}");
        assert_eq!(bl.boot().unwrap(), Slot::B, "{name}");

        // rollback from b to a.
        bl.set_next(Slot::A).unwrap();
        assert_eq!(summary(&bl.state().unwrap()), (Slot::A, None, Slot::A), "{name}");
        assert_eq!(bl.boot().unwrap(), Slot::A, "{name}");

        // Arming the default is no trial; bad try counts are refused.
        bl.arm_trial(Slot::A, 3).unwrap();
        assert_eq!(summary(&bl.state().unwrap()), (Slot::A, None, Slot::A), "{name}");
        for tries in [0, 10] {
            let err = bl.arm_trial(Slot::B, tries).unwrap_err();
            assert!(matches!(err, BootloaderError::InvalidTries { .. }), "{name}: {err}");
        }
    }
}

#[test]
fn mark_good_keeps_a_switch_staged_after_the_boot() {
    let dir = tempfile::tempdir().unwrap();
    for bl in all_backends(dir.path()) {
        bl.arm_trial(Slot::B, 3).unwrap();
        bl.mark_good(Slot::A).unwrap();
        let state = bl.state().unwrap();
        assert_eq!(summary(&state), (Slot::A, Some(Trial { slot: Slot::B, tries_left: 3 }), Slot::B), "{}", bl.name());
    }
}

#[test]
fn grub_editenv_reads_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grubenv");
    let grub = GrubEnv::new(&path);
    grub.arm_trial(Slot::B, 3).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024);
    let list = stdout("grub-editenv", "grub2-common", &[path.to_str().unwrap(), "list"]);
    assert_eq!(list, "osdeploy_default=a\nosdeploy_trial=b\nosdeploy_tries=3\n");

    assert_eq!(grub.boot().unwrap(), Slot::B);
    grub.mark_good(Slot::B).unwrap();
    let list = stdout("grub-editenv", "grub2-common", &[path.to_str().unwrap(), "list"]);
    assert_eq!(list, "osdeploy_default=b\n");
}

#[test]
fn we_read_what_grub_editenv_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grubenv");
    let p = path.to_str().unwrap();
    run("grub-editenv", "grub2-common", &[p, "create"]);
    run(
        "grub-editenv",
        "grub2-common",
        &[p, "set", "saved_entry=gnulinux-advanced", "osdeploy_default=b", "odd=back\\slash\nnewline"],
    );
    let grub = GrubEnv::new(&path);
    let vars = grub.read_vars().unwrap();
    assert!(vars.contains(&("saved_entry".to_owned(), "gnulinux-advanced".to_owned())), "{vars:?}");
    assert!(vars.contains(&("odd".to_owned(), "back\\slash\nnewline".to_owned())), "{vars:?}");
    assert_eq!(summary(&grub.state().unwrap()), (Slot::B, None, Slot::B));

    // Our change keeps their variables, and grub-editenv still reads the block, then changes it, and we follow.
    grub.arm_trial(Slot::A, 2).unwrap();
    let list = stdout("grub-editenv", "grub2-common", &[p, "list"]);
    assert!(list.contains("saved_entry=gnulinux-advanced\n"), "{list}");
    assert!(list.contains("odd=back\\slash\nnewline\n"), "{list}");
    assert!(list.contains("osdeploy_trial=a\nosdeploy_tries=2\n"), "{list}");
    run("grub-editenv", "grub2-common", &[p, "set", "osdeploy_tries=1"]);
    run("grub-editenv", "grub2-common", &[p, "unset", "saved_entry"]);
    assert_eq!(grub.state().unwrap().tries_left(), 1);
    assert_eq!(grub.boot().unwrap(), Slot::A);
    assert_eq!(grub.boot().unwrap(), Slot::B);
    assert!(grub.read_vars().unwrap().iter().all(|(name, _)| name != "saved_entry"));
}

#[test]
fn grub_cfg_snippet_passes_grub_script_check() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("grub.cfg");
    let menu =
        "menuentry \"osdeploy slot a\" --id osdeploy-a {\n  linux /osdeploy/slots/a/boot/vmlinuz osdeploy.slot=a\n}\n";
    std::fs::write(&cfg, format!("{}{menu}", grub::GRUB_CFG_SNIPPET)).unwrap();
    run("grub-script-check", "grub-common", &[cfg.to_str().unwrap()]);
}

#[test]
fn corrupt_grub_blocks_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grubenv");
    let grub = GrubEnv::new(&path);
    for (bytes, what) in [
        (vec![b'#'; 2048], "exactly 1024"),
        (vec![b'#'; 1024], "header"),
        (b"# GRUB Environment Block\nno equals sign\n".iter().copied().chain([b'#'; 984]).collect(), "neither"),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        for result in [grub.state().map(drop), grub.arm_trial(Slot::B, 3), grub.boot().map(drop)] {
            let err = result.unwrap_err().to_string();
            assert!(err.contains(path.to_str().unwrap()) && err.contains(what), "{err}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "a corrupt block is left alone");
    }
}

/// A libubootenv configuration for an environment in a regular file, and a defaults file for `fw_setenv`.
fn fw_config(dir: &Path, env: &Path) -> (String, String) {
    let config = dir.join("fw_env.config");
    std::fs::write(&config, format!("{} 0x0 {UBOOT_ENV_SIZE:#x}\n", env.display())).unwrap();
    let defaults = dir.join("defaults.txt");
    std::fs::write(&defaults, "").unwrap();
    (config.to_str().unwrap().to_owned(), defaults.to_str().unwrap().to_owned())
}

#[test]
fn fw_printenv_reads_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uboot.env");
    let (config, _) = fw_config(dir.path(), &path);
    let uboot = UBootEnv::new(&path, UBOOT_ENV_SIZE).unwrap();
    uboot.arm_trial(Slot::B, 3).unwrap();
    let printed = stdout("fw_printenv", "libubootenv-tool", &["-c", &config]);
    let mut lines: Vec<&str> = printed.lines().collect();
    lines.sort();
    assert_eq!(lines, ["osdeploy_default=a", "osdeploy_trial=b", "osdeploy_tries=3"]);
    let tries = stdout("fw_printenv", "libubootenv-tool", &["-c", &config, "-n", "osdeploy_tries"]);
    assert_eq!(tries.trim(), "3");
}

#[test]
fn we_read_what_fw_setenv_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uboot.env");
    std::fs::write(&path, vec![0u8; UBOOT_ENV_SIZE]).unwrap();
    let (config, defaults) = fw_config(dir.path(), &path);
    // A blank environment has no valid CRC yet: fw_setenv starts from the (empty) defaults file.
    run("fw_setenv", "libubootenv-tool", &["-c", &config, "-f", &defaults, "bootdelay", "2"]);
    run("fw_setenv", "libubootenv-tool", &["-c", &config, "osdeploy_default", "b"]);
    let uboot = UBootEnv::new(&path, UBOOT_ENV_SIZE).unwrap();
    let vars = uboot.read_vars().unwrap();
    assert!(vars.contains(&("bootdelay".to_owned(), "2".to_owned())), "{vars:?}");
    assert_eq!(summary(&uboot.state().unwrap()), (Slot::B, None, Slot::B));

    uboot.arm_trial(Slot::A, 2).unwrap();
    run("fw_setenv", "libubootenv-tool", &["-c", &config, "osdeploy_tries", "1"]);
    assert_eq!(uboot.state().unwrap().tries_left(), 1);
    assert_eq!(uboot.boot().unwrap(), Slot::A);
    assert_eq!(uboot.boot().unwrap(), Slot::B);
    let printed = stdout("fw_printenv", "libubootenv-tool", &["-c", &config]);
    assert!(printed.contains("bootdelay=2\n") && printed.contains("osdeploy_tries=0\n"), "{printed}");
}

#[test]
fn corrupt_uboot_envs_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uboot.env");
    let uboot = UBootEnv::new(&path, UBOOT_ENV_SIZE).unwrap();
    let mut bad_crc = uboot::render_env(&[("x".to_owned(), "1".to_owned())], UBOOT_ENV_SIZE, &path).unwrap();
    bad_crc[0] ^= 0xff;
    for (bytes, what) in [(bad_crc, "bad CRC32"), (vec![0u8; UBOOT_ENV_SIZE * 2], "configured as 8192")] {
        std::fs::write(&path, &bytes).unwrap();
        for result in [uboot.state().map(drop), uboot.mark_good(Slot::B), uboot.boot().map(drop)] {
            let err = result.unwrap_err().to_string();
            assert!(err.contains(path.to_str().unwrap()) && err.contains(what), "{err}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "a corrupt environment is left alone");
    }
}

#[test]
fn garbage_state_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("boot.json");
    std::fs::write(&path, "not json at all").unwrap();
    let bl = BackendConfig::File(path.clone()).open().unwrap();
    let err = bl.state().unwrap_err();
    assert!(matches!(err, BootloaderError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    assert!(bl.boot().is_err());
}

#[test]
fn systemd_boot_counting_follows_the_boot_loader_specification() {
    let dir = tempfile::tempdir().unwrap();
    let sd = systemd_boot(dir.path());
    sd.install_loader_default().unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("loader/loader.conf")).unwrap(), "default osdeploy-*\n");
    sd.arm_trial(Slot::B, 2).unwrap();
    let names = |sd: &SystemdBoot| {
        let mut names: Vec<String> = std::fs::read_dir(sd.entries_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&sd), ["osdeploy-a.conf", "osdeploy-b+2.conf"]);
    sd.boot().unwrap();
    assert_eq!(names(&sd), ["osdeploy-a.conf", "osdeploy-b+1-1.conf"]);
    sd.boot().unwrap();
    assert_eq!(names(&sd), ["osdeploy-a.conf", "osdeploy-b+0-2.conf"]);
    assert_eq!(sd.boot().unwrap(), Slot::A);
    // Re-arming a failed slot restarts its counter.
    sd.arm_trial(Slot::B, 1).unwrap();
    assert_eq!(names(&sd), ["osdeploy-a.conf", "osdeploy-b+1.conf"]);
}
