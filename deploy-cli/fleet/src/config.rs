//! The `[fleet]` section of `CONFIG_DIR/config.toml`: the update agent's settings.
//!
//! ```toml
//! [fleet]
//! etcd = ["https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"]
//! etcd_ca = "/etc/osdeploy/etcd/ca.pem"      # https:// only: the CA of the members' certificates
//! etcd_cert = "/etc/osdeploy/etcd/node.pem"  # with etcd_key: a client certificate (--client-cert-auth)
//! etcd_key = "/etc/osdeploy/etcd/node-key.pem"
//! etcd_user = "osdeploy"                     # https:// only: an etcd user (RBAC) ...
//! etcd_password_file = "/etc/osdeploy/etcd/password"  # ... and its password
//! prefix = "/osdeploy"          # etcd key prefix (one per fleet sharing an etcd)
//! node_id = "worker-17"         # default: /etc/machine-id
//! group = "workers"             # reboot group: its reboot slots are counted apart
//! poll_seconds = 300            # how often the origin is asked for a new release...
//! poll_jitter_seconds = 60      # ...plus a random delay up to this, so nodes spread out
//! node_ttl_seconds = 30         # a dead agent's registration disappears after this
//! reboot_ttl_seconds = 900      # a dead node's reboot slot is freed after this (covers a reboot)
//! reboot_command = ["systemctl", "reboot"]
//! reboot_timeout_seconds = 600  # the reboot command returned but the node did not go down
//! hook_timeout_seconds = 900    # each drain/undrain hook
//! metrics_listen = "127.0.0.1:9733"  # Prometheus metrics at /metrics (none when absent)
//!
//! [[fleet.maintenance_window]]  # reboots only inside a window (UTC); none: any time
//! days = ["sat", "sun"]
//! start = "02:00"
//! end = "05:00"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::access::EtcdAccess;
use crate::policy::valid_node_id;
use crate::{FleetError, Result};

/// The agent's settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// etcd client URLs.
    pub etcd: Vec<String>,
    /// The CA certificate of the etcd members (PEM; `https://` endpoints).
    #[serde(default)]
    pub etcd_ca: Option<PathBuf>,
    /// The client certificate (PEM), with `etcd_key`.
    #[serde(default)]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub etcd_key: Option<PathBuf>,
    /// The etcd user, with `etcd_password_file`.
    #[serde(default)]
    pub etcd_user: Option<String>,
    /// The file holding the etcd user's password.
    #[serde(default)]
    pub etcd_password_file: Option<PathBuf>,
    /// Key prefix in etcd.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// This node's id (default: /etc/machine-id).
    #[serde(default)]
    pub node_id: Option<String>,
    /// The reboot group.
    #[serde(default = "default_group")]
    pub group: String,
    /// Seconds between polls of the origin.
    #[serde(default = "default_poll")]
    pub poll_seconds: u64,
    /// Up to this many seconds are added to each poll interval at random.
    #[serde(default = "default_jitter")]
    pub poll_jitter_seconds: u64,
    /// TTL of the agent's registration lease.
    #[serde(default = "default_node_ttl")]
    pub node_ttl_seconds: u64,
    /// TTL of the reboot-slot lease; it must cover a reboot.
    #[serde(default = "default_reboot_ttl")]
    pub reboot_ttl_seconds: u64,
    /// The command that reboots the node.
    #[serde(default = "default_reboot_command")]
    pub reboot_command: Vec<String>,
    /// Seconds to wait for the node to go down after the reboot command returned.
    #[serde(default = "default_reboot_timeout")]
    pub reboot_timeout_seconds: u64,
    /// Seconds each drain or undrain hook may run.
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_seconds: u64,
    /// Where the agent serves its Prometheus metrics (`HOST:PORT`; none when absent).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// When reboots may happen (none: any time).
    #[serde(default, rename = "maintenance_window")]
    pub maintenance_windows: Vec<Window>,
}

fn default_prefix() -> String {
    "/osdeploy".into()
}
fn default_group() -> String {
    "default".into()
}
fn default_poll() -> u64 {
    300
}
fn default_jitter() -> u64 {
    60
}
fn default_node_ttl() -> u64 {
    30
}
fn default_reboot_ttl() -> u64 {
    900
}
fn default_reboot_command() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}
fn default_reboot_timeout() -> u64 {
    600
}
fn default_hook_timeout() -> u64 {
    900
}

/// A weekly maintenance window, in UTC; `end` before `start` runs past midnight.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Days it starts on (`mon` … `sun`); all days when empty.
    #[serde(default)]
    pub days: Vec<String>,
    /// `HH:MM`.
    pub start: String,
    /// `HH:MM`.
    pub end: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn minutes(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && text.len() == 5).then_some(h * 60 + m)
}

impl Window {
    fn problem(&self) -> Option<String> {
        if let Some(day) = self.days.iter().find(|d| !DAYS.contains(&d.as_str())) {
            return Some(format!("maintenance_window day {day:?} is not one of {}", DAYS.join(", ")));
        }
        for t in [&self.start, &self.end] {
            if minutes(t).is_none() {
                return Some(format!("maintenance_window time {t:?} is not HH:MM"));
            }
        }
        if self.start == self.end {
            return Some("maintenance_window start and end are equal".into());
        }
        None
    }

    /// Whether the window is open at `unix` seconds (UTC).
    pub fn contains(&self, unix: i64) -> bool {
        let (start, end) = (minutes(&self.start).unwrap_or(0), minutes(&self.end).unwrap_or(0));
        let day = unix.div_euclid(86_400);
        let minute = (unix.rem_euclid(86_400) / 60) as u32;
        // 1970-01-01 was a Thursday (index 3).
        let weekday = |d: i64| DAYS[(d + 3).rem_euclid(7) as usize];
        let starts_on = |d: i64| self.days.is_empty() || self.days.iter().any(|x| x == weekday(d));
        if start < end {
            starts_on(day) && (start..end).contains(&minute)
        } else {
            (starts_on(day) && minute >= start) || (starts_on(day - 1) && minute < end)
        }
    }
}

impl FleetConfig {
    /// The `[fleet]` section of `config` (read from `path`), checked; `None` when there is none.
    pub fn from_node_config(config: &osdeploy_deploy::deploy::Config, path: &Path) -> Result<Option<FleetConfig>> {
        let Some(table) = &config.fleet else { return Ok(None) };
        let bad = |reason: String| FleetError::Config { path: path.to_owned(), reason };
        let fleet: FleetConfig = table.clone().try_into().map_err(|e: toml::de::Error| bad(e.message().to_owned()))?;
        if let Some(problem) = fleet.etcd_access().problem() {
            return Err(bad(problem));
        }
        if !fleet.prefix.starts_with('/') || fleet.prefix.len() < 2 {
            return Err(bad(format!("prefix {:?} must start with / and name something", fleet.prefix)));
        }
        if let Some(id) = fleet.node_id.as_ref().filter(|id| !valid_node_id(id)) {
            return Err(bad(format!("node_id {id:?} is not 1-128 letters, digits, '.', '_' or '-'")));
        }
        if !valid_node_id(&fleet.group) {
            return Err(bad(format!("group {:?} is not 1-128 letters, digits, '.', '_' or '-'", fleet.group)));
        }
        if fleet.poll_seconds == 0 || fleet.node_ttl_seconds < 2 || fleet.reboot_ttl_seconds < 10 {
            return Err(bad(
                "poll_seconds >= 1, node_ttl_seconds >= 2 and reboot_ttl_seconds >= 10 are required".into()
            ));
        }
        if let Some(addr) = fleet.metrics_listen.as_ref().filter(|a| a.parse::<std::net::SocketAddr>().is_err()) {
            return Err(bad(format!("metrics_listen {addr:?} is not HOST:PORT (an IP address and a port)")));
        }
        if fleet.reboot_command.is_empty() {
            return Err(bad("reboot_command is empty".into()));
        }
        if let Some(problem) = fleet.maintenance_windows.iter().find_map(Window::problem) {
            return Err(bad(problem));
        }
        Ok(Some(fleet))
    }

    /// How to reach etcd.
    pub fn etcd_access(&self) -> EtcdAccess {
        EtcdAccess {
            endpoints: self.etcd.clone(),
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            user: self.etcd_user.clone(),
            password_file: self.etcd_password_file.clone(),
        }
    }

    /// The node id: the configured one, or /etc/machine-id.
    pub fn node_id(&self, machine_id: &Path) -> Result<String> {
        if let Some(id) = &self.node_id {
            return Ok(id.clone());
        }
        let text = std::fs::read_to_string(machine_id)
            .map_err(|error| FleetError::Io { path: PathBuf::from(machine_id), error })?;
        let id = text.trim().to_owned();
        if !valid_node_id(&id) {
            return Err(FleetError::Config {
                path: machine_id.to_owned(),
                reason: format!("{id:?} is not a usable node id; set [fleet] node_id"),
            });
        }
        Ok(id)
    }

    /// Whether a reboot may start at `unix` seconds.
    pub fn may_reboot_at(&self, unix: i64) -> bool {
        self.maintenance_windows.is_empty() || self.maintenance_windows.iter().any(|w| w.contains(unix))
    }

    /// A hook's time limit.
    pub fn hook_timeout(&self) -> Duration {
        Duration::from_secs(self.hook_timeout_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use osdeploy_deploy::deploy::Config;

    fn parse(text: &str) -> Result<Option<FleetConfig>> {
        let path = Path::new("/etc/osdeploy/config.toml");
        FleetConfig::from_node_config(&Config::parse(text, path).unwrap(), path)
    }

    #[test]
    fn defaults_and_errors() {
        assert_eq!(parse("boot_tries = 2").unwrap(), None);
        let fleet = parse("[fleet]\netcd = [\"http://127.0.0.1:2379\"]\n").unwrap().unwrap();
        assert_eq!((fleet.prefix.as_str(), fleet.group.as_str(), fleet.poll_seconds), ("/osdeploy", "default", 300));
        assert_eq!(fleet.reboot_command, ["systemctl", "reboot"]);
        for (text, expected) in [
            ("[fleet]\netcd = []", "no endpoint"),
            ("[fleet]\netcd = [\"127.0.0.1:2379\"]", "not http"),
            ("[fleet]\netcd = [\"https://e:2379\"]", "need etcd_ca"),
            ("[fleet]\netcd = [\"http://e\"]\nnode_id = \"a b\"", "node_id"),
            ("[fleet]\netcd = [\"http://e\"]\npoll_seconds = 0", "poll_seconds"),
            ("[fleet]\netcd = [\"http://e\"]\nreboot_command = []", "reboot_command"),
            ("[fleet]\netcd = [\"http://e\"]\nmetrics_listen = \"localhost\"", "metrics_listen"),
            ("[fleet]\netcd = [\"http://e\"]\nbogus = 1", "unknown field"),
            (
                "[fleet]\netcd = [\"http://e\"]\n[[fleet.maintenance_window]]\nstart = \"25:00\"\nend = \"01:00\"",
                "HH:MM",
            ),
            (
                "[fleet]\netcd = [\"http://e\"]\n[[fleet.maintenance_window]]\ndays = [\"mo\"]\nstart = \"01:00\"\nend = \"02:00\"",
                "\"mo\"",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("config.toml") && err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn maintenance_windows() {
        let window = |days: &[&str], start: &str, end: &str| Window {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            end: end.into(),
        };
        // 2025-12-06 03:00 UTC, a Saturday.
        let saturday_3am = 1_764_990_000;
        assert_eq!((saturday_3am / 86_400 + 3) % 7, 5, "a Saturday");
        let at = |h: i64| saturday_3am - 3 * 3600 + h * 3600;
        let weekend = window(&["sat", "sun"], "02:00", "05:00");
        assert!(weekend.contains(at(3)) && !weekend.contains(at(5)) && !weekend.contains(at(1)));
        assert!(!weekend.contains(at(3) - 86_400), "Friday");
        // Past midnight: Friday 23:00 to Saturday 01:00 belongs to Friday's window.
        let late = window(&["fri"], "23:00", "01:00");
        assert!(late.contains(at(0)) && late.contains(at(-1)) && !late.contains(at(1)) && !late.contains(at(23)));
        let fleet = FleetConfig {
            maintenance_windows: vec![weekend],
            ..parse("[fleet]\netcd = [\"http://e\"]").unwrap().unwrap()
        };
        assert!(fleet.may_reboot_at(at(4)) && !fleet.may_reboot_at(at(6)));
    }
}
