//! `CONFIG_DIR/config.toml`: node settings for deployments. A missing file means the defaults.
//!
//! ```toml
//! # boots a new deployment gets on trial before the bootloader falls back (1-9)
//! boot_tries = 3
//! # seconds each health check in health.d/ may run before it is killed and counts as failed
//! health_check_timeout = 60
//! # bytes per second `osdeploy pull` may use (unlimited when absent; --limit-rate overrides it)
//! pull_limit_rate = 10485760
//! # seconds without progress before a pull abandons a connection (--timeout overrides it)
//! pull_timeout = 30
//! # a response slower than pull_speed_limit bytes/s over pull_speed_time seconds is abandoned
//! # (0: no low-speed limit); one that kept a pull waiting pull_deadline seconds in all, too
//! pull_speed_limit = 1024
//! pull_speed_time = 30
//! pull_deadline = 3600
//! # the most bytes of a file whose size nothing declares (the summary, pack indexes)
//! pull_max_metadata = 67108864
//! # kernel command line of the boot entries `switch` writes (GRUB, systemd-boot); osdeploy.slot= is added
//! kernel_cmdline = "root=UUID=0d3c... rw quiet"
//!
//! # partitions `prepare-root` mounts into the booted system at boot; osdeploy never writes them
//! [[data_partition]]
//! source = "LABEL=images"            # LABEL=, UUID=, PARTLABEL=, PARTUUID= or a /dev path
//! target = "/var/lib/containerd"     # absolute, not / nor under /usr
//! fstype = "ext4"
//! options = "noatime"                # optional
//!
//! # the update agent (`osdeploy agent`), see osdeploy-fleet's config module
//! [fleet]
//! etcd = ["http://10.0.0.1:2379"]
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use osdeploy_transport::client::HttpOptions;

use super::{DeployError, IoContext, Result};
use crate::bootloader::{DEFAULT_TRIES, MAX_TRIES};

/// The default time a health check may take, in seconds.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: u64 = 60;

/// The default time a pull waits for a stalled connection, in seconds.
pub const DEFAULT_PULL_TIMEOUT: u64 = 30;

/// The settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Boots a new deployment gets on trial (1 to [`MAX_TRIES`]).
    pub boot_tries: u32,
    /// Seconds each health check may run.
    pub health_check_timeout: u64,
    /// Re-hash the new release's content while switching (reads every byte; off by default because
    /// content is verified when it is pulled and `osdeploy fsck` re-hashes the repository).
    pub verify_on_switch: bool,
    /// Bytes per second a pull may use (none: unlimited); `--limit-rate` overrides it.
    pub pull_limit_rate: Option<u64>,
    /// Seconds without progress before a pull abandons a connection; `--timeout` overrides it.
    pub pull_timeout: u64,
    /// Bytes per second below which a response is abandoned (0: none); `--speed-limit` overrides it.
    pub pull_speed_limit: u64,
    /// Seconds `pull_speed_limit` is measured over; `--speed-time` overrides it.
    pub pull_speed_time: u64,
    /// Seconds one response may keep a pull waiting in all; `--deadline` overrides it.
    pub pull_deadline: u64,
    /// The most bytes of a file whose size nothing declares (the summary, pack indexes).
    pub pull_max_metadata: u64,
    /// The kernel command line of the boot entries `switch` writes for GRUB and systemd-boot
    /// (`osdeploy.slot=SLOT` is added); required by those backends.
    pub kernel_cmdline: Option<String>,
    /// Partitions `prepare-root` mounts into the booted system (a container-image store, user data).
    #[serde(rename = "data_partition")]
    pub data_partitions: Vec<DataPartition>,
    /// The `[fleet]` section: the update agent's settings, read and checked by osdeploy-fleet.
    pub fleet: Option<toml::Table>,
}

/// A partition mounted into the booted system by `prepare-root`, which osdeploy never writes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataPartition {
    /// The device: `LABEL=`, `UUID=`, `PARTLABEL=`, `PARTUUID=` or a path under /dev.
    pub source: String,
    /// Where it is mounted in the booted system (absolute).
    pub target: String,
    /// Its filesystem type.
    pub fstype: String,
    /// Mount options, comma-separated (optional).
    #[serde(default)]
    pub options: String,
}

impl DataPartition {
    /// Why the entry cannot be used, if it cannot.
    fn problem(&self) -> Option<String> {
        let tags = ["LABEL=", "UUID=", "PARTLABEL=", "PARTUUID="];
        let tagged =
            tags.iter().any(|t| self.source.strip_prefix(t).is_some_and(|v| !v.is_empty() && !v.contains('/')));
        if !tagged && !self.source.starts_with("/dev/") {
            return Some(format!(
                "source {:?} is not LABEL=, UUID=, PARTLABEL=, PARTUUID= or a /dev path",
                self.source
            ));
        }
        let parts: Vec<&str> = self.target.split('/').filter(|c| !c.is_empty()).collect();
        if !self.target.starts_with('/') || parts.is_empty() || parts.iter().any(|c| *c == "." || *c == "..") {
            return Some(format!("target {:?} must be an absolute path below / without . or ..", self.target));
        }
        if matches!(parts[0], "usr" | "sysroot" | "proc" | "sys" | "dev") {
            return Some(format!(
                "target {:?} is inside /{}, which the release or the system owns",
                self.target, parts[0]
            ));
        }
        if self.fstype.is_empty() || self.fstype.contains([',', ' ']) {
            return Some(format!("fstype {:?} is not a filesystem type", self.fstype));
        }
        None
    }
}

impl Default for Config {
    fn default() -> Self {
        let http = HttpOptions::default();
        Config {
            boot_tries: DEFAULT_TRIES,
            health_check_timeout: DEFAULT_HEALTH_CHECK_TIMEOUT,
            verify_on_switch: false,
            pull_limit_rate: None,
            pull_timeout: DEFAULT_PULL_TIMEOUT,
            pull_speed_limit: http.speed_limit,
            pull_speed_time: http.speed_time.as_secs(),
            pull_deadline: http.deadline.as_secs(),
            pull_max_metadata: http.max_metadata,
            kernel_cmdline: None,
            data_partitions: Vec::new(),
            fleet: None,
        }
    }
}

impl Config {
    /// Reads `CONFIG_DIR/config.toml` (the defaults if it does not exist) and checks the values.
    pub fn load(config_dir: &Path) -> Result<Config> {
        let path = config_dir.join("config.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).at(&path),
        };
        Config::parse(&text, &path)
    }

    /// Parses and checks the text of a configuration file (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let bad = |reason: String| DeployError::Config { path: PathBuf::from(path), reason };
        let config: Config = toml::from_str(text).map_err(|e| bad(e.to_string().trim().to_owned()))?;
        if !(1..=MAX_TRIES).contains(&config.boot_tries) {
            return Err(bad(format!("boot_tries = {} is outside 1..={MAX_TRIES}", config.boot_tries)));
        }
        if config.health_check_timeout == 0 {
            return Err(bad("health_check_timeout must be at least 1 second".into()));
        }
        if config.pull_timeout == 0 {
            return Err(bad("pull_timeout must be at least 1 second".into()));
        }
        if let Some(cmdline) = &config.kernel_cmdline {
            if cmdline.contains(['\n', '\r']) {
                return Err(bad("kernel_cmdline must be one line".into()));
            }
            if cmdline.split_whitespace().any(|o| o.starts_with("osdeploy.slot=")) {
                return Err(bad("kernel_cmdline must not set osdeploy.slot=: switch adds it per slot".into()));
            }
        }
        if let Some(problem) = config.data_partitions.iter().find_map(DataPartition::problem) {
            return Err(bad(format!("data_partition: {problem}")));
        }
        if config.pull_limit_rate == Some(0) {
            return Err(bad("pull_limit_rate = 0 would never finish; leave it out for no limit".into()));
        }
        if config.pull_speed_time == 0 || config.pull_deadline == 0 {
            return Err(bad("pull_speed_time and pull_deadline must be at least 1 second".into()));
        }
        if config.pull_max_metadata == 0 {
            return Err(bad("pull_max_metadata = 0 would refuse every summary".into()));
        }
        Ok(config)
    }

    /// The health check timeout as a duration.
    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.health_check_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_values_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(dir.path()).unwrap(), Config::default());
        std::fs::write(dir.path().join("config.toml"), "boot_tries = 5\nhealth_check_timeout = 2\n").unwrap();
        let config = Config::load(dir.path()).unwrap();
        assert_eq!((config.boot_tries, config.health_timeout()), (5, Duration::from_secs(2)));
        let p = Path::new("/c/config.toml");
        assert_eq!(Config::parse("boot_tries = 2", p).unwrap().health_check_timeout, DEFAULT_HEALTH_CHECK_TIMEOUT);
        let pull = Config::parse("pull_limit_rate = 1048576\npull_timeout = 5", p).unwrap();
        assert_eq!((pull.pull_limit_rate, pull.pull_timeout), (Some(1 << 20), 5));
        let node = Config::parse(
            "kernel_cmdline = \"root=LABEL=sysroot rw\"\n[[data_partition]]\nsource = \"LABEL=images\"\n\
             target = \"/var/lib/containerd\"\nfstype = \"ext4\"\noptions = \"noatime\"\n",
            p,
        )
        .unwrap();
        assert_eq!(node.kernel_cmdline.as_deref(), Some("root=LABEL=sysroot rw"));
        assert_eq!(node.data_partitions[0].target, "/var/lib/containerd");
        assert_eq!(node.data_partitions[0].options, "noatime");
        for (text, expected) in [
            ("boot_tries = 0", "outside"),
            ("boot_tries = 10", "outside"),
            ("health_check_timeout = 0", "at least"),
            ("pull_timeout = 0", "at least"),
            ("pull_limit_rate = 0", "never finish"),
            ("pull_deadline = 0", "at least 1 second"),
            ("pull_max_metadata = 0", "refuse every summary"),
            ("kernel_cmdline = \"root=/dev/vda2 osdeploy.slot=a\"", "adds it per slot"),
            ("kernel_cmdline = \"root=/dev/vda2\\nquiet\"", "one line"),
            ("[[data_partition]]\nsource = \"sda3\"\ntarget = \"/srv\"\nfstype = \"ext4\"", "is not LABEL="),
            ("[[data_partition]]\nsource = \"LABEL=x\"\ntarget = \"/usr/x\"\nfstype = \"ext4\"", "inside /usr"),
            ("[[data_partition]]\nsource = \"UUID=x\"\ntarget = \"/a/../b\"\nfstype = \"ext4\"", "without . or .."),
            ("[[data_partition]]\nsource = \"LABEL=x\"\ntarget = \"/srv\"", "missing field"),
            ("boot_trys = 3", "unknown field"),
            ("boot_tries = \"x\"", "invalid type"),
        ] {
            let err = Config::parse(text, p).unwrap_err().to_string();
            assert!(err.contains("/c/config.toml") && err.contains(expected), "{text}: {err}");
        }
    }
}
