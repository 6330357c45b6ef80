//! Health checks: the executables in `CONFIG_DIR/health.d/`, run one after the other in name order, each in its own
//! process group with a timeout. A check passes when it exits 0 within the timeout; one that runs longer is killed
//! (the whole process group, so a script's children go too) and counts as failed. Files that are not executable
//! and names starting with `.` are ignored, as `run-parts` does. The checks' output goes to standard error.
//! A check that cannot start because a file is open for writing ("Text file busy": a configuration tool rewriting
//! it, or another process's fork still holding a descriptor until its exec) is tried again for a while.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{WaitId, WaitIdOptions, waitid};
use serde::Serialize;

use super::{DeployError, IoContext, Result};

/// How long a check that is open for writing elsewhere is tried again.
const BUSY_RETRY_FOR: Duration = Duration::from_secs(2);
/// The pause between those tries.
const BUSY_RETRY_PAUSE: Duration = Duration::from_millis(25);

/// How one check ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "detail")]
pub enum Outcome {
    /// Exit status 0 within the timeout.
    Passed,
    /// Another exit status, or killed by a signal (described).
    Failed(String),
    /// Still running at the timeout: killed.
    TimedOut,
}

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    /// The check's file name.
    pub name: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// How long it ran.
    pub seconds: f64,
}

impl CheckResult {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }
}

/// The executables in `dir`, sorted by name (none if `dir` does not exist).
pub fn list_checks(dir: &Path) -> Result<Vec<PathBuf>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(dir),
    };
    let mut checks = Vec::new();
    for entry in listing {
        let path = entry.at(dir)?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        let meta = std::fs::metadata(&path).at(&path)?;
        if meta.is_file() && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0 {
            checks.push(path);
        }
    }
    checks.sort();
    Ok(checks)
}

/// Runs every check of `dir` with `timeout` each and the environment variables `env`; never stops early, so that
/// every failure is reported.
pub fn run_checks(dir: &Path, timeout: Duration, env: &[(&str, String)]) -> Result<Vec<CheckResult>> {
    list_checks(dir)?.iter().map(|check| run_one(check, timeout, env)).collect()
}

/// Runs one check.
fn run_one(path: &Path, timeout: Duration, env: &[(&str, String)]) -> Result<CheckResult> {
    let stderr = std::io::stderr().as_fd().try_clone_to_owned().at(Path::new("/dev/stderr"))?;
    let started = Instant::now();
    let mut command = Command::new(path);
    command.envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(Stdio::from(stderr)).process_group(0);
    let mut child =
        spawn_unless_busy(&mut command).map_err(|error| DeployError::HealthCheck { path: path.to_owned(), error })?;
    let group = rustix::process::Pid::from_child(&child);
    let health_error = |error: std::io::Error| DeployError::HealthCheck { path: path.to_owned(), error };
    // The check is seen to end without being reaped: until it is, its id names its group alone.
    let ended = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    let finished = loop {
        if waitid(WaitId::Pid(group), ended).map_err(|e| health_error(e.into()))?.is_some() {
            break true;
        }
        if started.elapsed() >= timeout {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever the check left running in its group goes too (a timed-out check entirely); then the
    // check is reaped.
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    let status = child.wait().map_err(health_error)?;
    let outcome = match finished {
        false => Outcome::TimedOut,
        true if status.success() => Outcome::Passed,
        true => Outcome::Failed(status.to_string()),
    };
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(CheckResult { name, outcome, seconds: started.elapsed().as_secs_f64() })
}

/// Starts `command`, trying again for [`BUSY_RETRY_FOR`] while its file is open for writing.
fn spawn_unless_busy(command: &mut Command) -> std::io::Result<Child> {
    let started = Instant::now();
    loop {
        match command.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && started.elapsed() < BUSY_RETRY_FOR => {
                std::thread::sleep(BUSY_RETRY_PAUSE);
            }
            spawned => return spawned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str, mode: u32) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn checks_run_in_order_with_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(run_checks(&dir.path().join("missing"), Duration::from_secs(1), &[]).unwrap().is_empty());
        script(dir.path(), "10-ok", "test \"$OSDEPLOY_SLOT\" = b", 0o755);
        script(dir.path(), "20-fails", "exit 3", 0o755);
        script(dir.path(), "30-hangs", "sleep 30 & sleep 30", 0o755);
        script(dir.path(), "40-not-executable", "exit 1", 0o644);
        script(dir.path(), ".hidden", "exit 1", 0o755);
        let started = Instant::now();
        let results = run_checks(dir.path(), Duration::from_millis(500), &[("OSDEPLOY_SLOT", "b".into())]).unwrap();
        assert!(started.elapsed() < Duration::from_secs(10), "the hanging check was not killed in time");
        let outcomes: Vec<(&str, &Outcome)> = results.iter().map(|r| (r.name.as_str(), &r.outcome)).collect();
        assert_eq!(
            outcomes,
            [
                ("10-ok", &Outcome::Passed),
                ("20-fails", &Outcome::Failed("exit status: 3".into())),
                ("30-hangs", &Outcome::TimedOut)
            ]
        );
    }

    #[test]
    fn a_check_held_open_for_writing_a_moment_runs_once_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "10-rewritten", "exit 0", 0o755);
        let writer = std::fs::OpenOptions::new().append(true).open(dir.path().join("10-rewritten")).unwrap();
        let held = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(writer);
        });
        let results = run_checks(dir.path(), Duration::from_secs(5), &[]).unwrap();
        held.join().unwrap();
        assert_eq!(results[0].outcome, Outcome::Passed, "{results:?}");

        let _writer = std::fs::OpenOptions::new().append(true).open(dir.path().join("10-rewritten")).unwrap();
        let error = run_checks(dir.path(), Duration::from_secs(5), &[]).unwrap_err().to_string();
        assert!(error.contains("10-rewritten") && error.contains("busy"), "{error}");
    }
}
