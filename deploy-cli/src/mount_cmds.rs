//! `mount` and `umount`: a commit as a read-only filesystem (the osdeploy-fuse crate).
//!
//! By default `mount` starts a copy of itself with `--daemon`, which mounts, says so on its first
//! line of output and serves the filesystem from its own session; the first process waits for that
//! line (or for the copy's error) and returns. `--foreground` serves from the process itself.
//! The copy's later output goes to `--log-file` (or nowhere): nobody reads its pipes any more.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use osdeploy_fuse::{MountOptions, Mounted};

/// How `mount` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountMode {
    /// Start a background copy, wait until it has mounted, return.
    Background,
    /// Serve from this process until unmounted or signalled.
    Foreground,
    /// The background copy itself, writing what it logs after mounting to `log_file`.
    Daemon { log_file: Option<PathBuf> },
}

/// `mount`.
pub fn mount(repo: &Path, commit: &str, mountpoint: &Path, options: &MountOptions, mode: MountMode) -> Result<()> {
    if mode == MountMode::Background {
        return start_daemon(mountpoint);
    }
    let log = match &mode {
        MountMode::Daemon { log_file } => {
            // Its own session: the terminal's hangup and Ctrl-C do not reach it.
            let _ = rustix::process::setsid();
            // Opened before mounting, so that a log that cannot be written is the mount's error.
            let log = match log_file {
                Some(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening the log file {}", path.display()))?,
                None => std::fs::OpenOptions::new().write(true).open("/dev/null")?,
            };
            Some(log)
        }
        _ => None,
    };
    let mounted = osdeploy_fuse::mount(repo, commit, mountpoint, options)?;
    println!("mounted commit {} at {} ({} inodes)", mounted.commit, mountpoint.display(), mounted.inodes);
    std::io::stdout().flush()?;
    if let Some(log) = log {
        // Nobody reads our pipes from now on.
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
        rustix::stdio::dup2_stdout(&null)?;
        rustix::stdio::dup2_stderr(&log)?;
    }
    serve_until_unmounted(mounted)
}

/// Starts `osdeploy … mount … --daemon` and waits until it has mounted or failed.
fn start_daemon(mountpoint: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("finding the osdeploy binary")?;
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the process that serves the mount")?;
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut first)?;
    if first.is_empty() {
        let mut error = String::new();
        child.stderr.take().expect("piped").read_to_string(&mut error)?;
        child.wait()?;
        bail!("{}", error.trim().trim_start_matches("osdeploy: error: "));
    }
    print!("{first}");
    println!("served by process {}; `osdeploy umount {}` unmounts it", child.id(), mountpoint.display());
    Ok(())
}

/// Serves until the filesystem is unmounted; SIGINT or SIGTERM unmount it first.
fn serve_until_unmounted(mounted: Mounted) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mountpoint = mounted.mountpoint.clone();
    osdeploy_transport::runtime()?.block_on(async move {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut served = tokio::task::spawn_blocking(move || mounted.wait());
        tokio::select! {
            result = &mut served => return Ok(result??),
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        // Detached at once; files still open under it are served until they are closed.
        rustix::mount::unmount(&mountpoint, rustix::mount::UnmountFlags::DETACH)
            .with_context(|| format!("unmounting {}", mountpoint.display()))?;
        served.await??;
        eprintln!("unmounted {}", mountpoint.display());
        Ok(())
    })
}

/// `umount`.
pub fn umount(mountpoint: &Path) -> Result<()> {
    osdeploy_fuse::unmount(mountpoint)?;
    println!("unmounted {}", mountpoint.display());
    Ok(())
}
