//! Mounting a commit and unmounting it.

use std::path::{Path, PathBuf};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use osdeploy_store::object::{Commit, ObjectKind};
use osdeploy_store::{Access, CommitId, RefName, Repo, layout};
use osdeploy_transport::client::HttpOptions;
use osdeploy_transport::lazy::LazyRemote;

use crate::content::Content;
use crate::error::{FuseError, Result};
use crate::fs::CommitFs;
use crate::inodes::Inodes;

/// What the source of an osdeploy mount starts with (then the commit id's first 12 digits).
const SOURCE_PREFIX: &str = "osdeploy:";

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Bytes of chunks the mount keeps: decoded in memory for an archive repository, fetched on
    /// disk for a remote.
    pub cache_bytes: u64,
    /// Threads answering the kernel.
    pub threads: usize,
    /// Read the commit from this remote of the repository (the commit is then a branch of the
    /// remote's), fetching chunks when they are first read.
    pub remote: Option<String>,
    /// Where a remote mount caches chunks [default: REPO/cache/mount].
    pub cache_dir: Option<PathBuf>,
    /// How a remote mount talks to its servers.
    pub http: HttpOptions,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions { cache_bytes: 256 << 20, threads: 4, remote: None, cache_dir: None, http: HttpOptions::default() }
    }
}

/// A mounted commit, served by a thread of this process until it is unmounted.
pub struct Mounted {
    session: BackgroundSession,
    /// The commit shown.
    pub commit: CommitId,
    /// Where.
    pub mountpoint: PathBuf,
    /// How many inodes its tree has.
    pub inodes: usize,
}

impl Mounted {
    /// Waits until the filesystem is unmounted (by [`unmount`], `umount` or `osdeploy umount`).
    pub fn wait(self) -> Result<()> {
        let mountpoint = self.mountpoint;
        self.session
            .guard
            .join()
            .map_err(|_| FuseError::Mount {
                path: mountpoint.clone(),
                error: std::io::Error::other("the FUSE session thread panicked"),
            })?
            .map_err(|error| FuseError::Mount { path: mountpoint, error })
    }
}

/// Whether an osdeploy mount is at `path`.
fn is_osdeploy_mount(path: &Path) -> bool {
    mount_at(path).is_some_and(|(fstype, source)| fstype.starts_with("fuse") && source.starts_with(SOURCE_PREFIX))
}

/// The filesystem type and source mounted at `path`, if a mount is there (from
/// /proc/self/mountinfo).
fn mount_at(path: &Path) -> Option<(String, String)> {
    let path = std::fs::canonicalize(path).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mountpoint options [optional...] - fstype source super.
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let point = unescape(fields.get(4)?);
        let dash = fields.iter().position(|f| *f == "-")?;
        let (fstype, source) = (fields.get(dash + 1)?, fields.get(dash + 2)?);
        (Path::new(&point) == path).then(|| (fstype.to_string(), unescape(source)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = bytes[i + 1..i + 4].iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts the commit `spec` (a ref, `remote/branch`, a commit id or a unique prefix of one) of the
/// repository at `repo_path` on `mountpoint`, read-only.
pub fn mount(repo_path: &Path, spec: &str, mountpoint: &Path, options: &MountOptions) -> Result<Mounted> {
    if !mountpoint.is_dir() {
        return Err(FuseError::NotADirectory { path: mountpoint.to_owned() });
    }
    if mount_at(mountpoint).is_some() {
        return Err(FuseError::Busy { path: mountpoint.to_owned() });
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(FuseError::NoFuseDevice);
    }
    let repo = Repo::open(repo_path, Access::Read)?;
    let (commit_id, inodes, content) = match &options.remote {
        None => {
            let commit_id = repo.resolve(spec)?;
            let inodes = Inodes::build(&repo, &repo.commit_object(&commit_id)?)?;
            (commit_id, inodes, Content::new(&repo, options.cache_bytes)?)
        }
        Some(name) => {
            let remote = osdeploy_transport::remote::get(&repo, name)?;
            let cache_dir = options.cache_dir.clone().unwrap_or_else(|| repo.path().join(layout::MOUNT_CACHE));
            let branch = RefName::new(spec)?;
            let connected = LazyRemote::connect(&remote, &branch, options.http, &cache_dir.join("staging"))?;
            let commit_id = connected.commit;
            let commit = Commit::decode(commit_id.0, &connected.metadata.get(ObjectKind::Commit, &commit_id.0)?)?;
            let inodes = Inodes::build(&connected.metadata, &commit)?;
            connected.metadata.clear()?;
            (commit_id, inodes, Content::remote(connected.remote, &cache_dir.join("chunks"), options.cache_bytes)?)
        }
    };
    let count = inodes.count();
    let filesystem = CommitFs::new(repo, commit_id, inodes, content);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
        MountOption::FSName(format!("{SOURCE_PREFIX}{}", &commit_id.to_string()[..12])),
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(options.threads.max(1));
    let session = fuser::spawn_mount(filesystem, mountpoint, &config)
        .map_err(|error| FuseError::Mount { path: mountpoint.to_owned(), error })?;
    Ok(Mounted { session, commit: commit_id, mountpoint: mountpoint.to_owned(), inodes: count })
}

/// Unmounts the osdeploy mount at `mountpoint`; the process serving it then ends. Refuses any
/// other mount.
pub fn unmount(mountpoint: &Path) -> Result<()> {
    if !is_osdeploy_mount(mountpoint) {
        return Err(FuseError::NotOurMount { path: mountpoint.to_owned() });
    }
    rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::empty())
        .map_err(|e| FuseError::Unmount { path: mountpoint.to_owned(), error: e.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/mnt/a\040b\011c\134d"), "/mnt/a b\tc\\d");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }
}
