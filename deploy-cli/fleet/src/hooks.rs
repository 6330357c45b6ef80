//! The agent's hooks: `CONFIG_DIR/drain.d/` before a reboot (e.g. `kubectl cordon` and `kubectl
//! drain`), `CONFIG_DIR/undrain.d/` once the node is back and judged (`kubectl uncordon`), and the
//! reboot command. Hook directories run like the health checks (name order, executables only,
//! each in its own process group with a timeout). Hooks and the reboot command get `OSDEPLOY_NODE`,
//! `OSDEPLOY_COMMIT`, `OSDEPLOY_SYSROOT` and `OSDEPLOY_PHASE` (`drain`, `undrain`, `reboot`) in
//! their environment.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use osdeploy_deploy::deploy::health;

use crate::{FleetError, Result};

/// Runs every hook of `dir`; an error names each hook that failed.
pub fn run_dir(dir: &Path, timeout: Duration, env: &[(&str, String)]) -> Result<usize> {
    let results = health::run_checks(dir, timeout, env)?;
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| match &r.outcome {
            health::Outcome::Failed(how) => format!("{} ({how})", r.name),
            _ => format!("{} (timed out after {} s)", r.name, timeout.as_secs()),
        })
        .collect();
    if !failed.is_empty() {
        return Err(FleetError::Hook { path: dir.to_owned(), reason: format!("failed: {}", failed.join(", ")) });
    }
    Ok(results.len())
}

/// Runs the reboot command and waits for it (a reboot command returns once the reboot is queued).
pub fn reboot(command: &[String], env: &[(&str, String)]) -> Result<()> {
    let program = Path::new(&command[0]);
    let status = Command::new(program)
        .args(&command[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .status()
        .map_err(|e| FleetError::Hook { path: program.to_owned(), reason: format!("cannot run it: {e}") })?;
    if !status.success() {
        return Err(FleetError::Hook {
            path: program.to_owned(),
            reason: format!("the reboot command failed: {status}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn failing_hooks_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let hook = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        let env = [("OSDEPLOY_PHASE", "drain".to_owned())];
        hook("10-ok", "test \"$OSDEPLOY_PHASE\" = drain");
        assert_eq!(run_dir(dir.path(), Duration::from_secs(5), &env).unwrap(), 1);
        hook("20-pdb-blocks", "exit 4");
        let err = run_dir(dir.path(), Duration::from_secs(5), &env).unwrap_err().to_string();
        assert!(
            err.contains("20-pdb-blocks (exit status: 4)") && err.contains(&dir.path().display().to_string()),
            "{err}"
        );
        let err = reboot(&["false".into()], &[]).unwrap_err().to_string();
        assert!(err.contains("reboot command failed"), "{err}");
        reboot(&["true".into()], &[]).unwrap();
    }
}
