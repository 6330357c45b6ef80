//! Remotes a repository pulls from: names and URLs, kept in `REPO/remotes.json`.

use std::collections::BTreeMap;

use osdeploy_store::fsutil::atomic_write;
use osdeploy_store::{Repo, layout};
use serde::{Deserialize, Serialize};

use crate::error::TransportError;

/// One remote: a name and the URLs of the same repository, tried in order (an edge mirror
/// first, the origin as fallback).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// The remote's name.
    pub name: String,
    /// Base URLs of the archive repository (http:// or https://).
    pub urls: Vec<String>,
    /// Public keys (hex) trusted to sign this remote's summary and commits.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Accept unsigned data from this remote (only when explicitly asked for).
    pub insecure: bool,
}

fn path(repo: &Repo) -> std::path::PathBuf {
    repo.path().join(layout::REMOTES)
}

/// Every configured remote, by name.
pub fn list(repo: &Repo) -> Result<BTreeMap<String, Remote>, TransportError> {
    let p = path(repo);
    match std::fs::read_to_string(&p) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| TransportError::LocalFile { path: p.clone(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(osdeploy_store::StoreError::Io { path: p, error: e }.into()),
    }
}

/// The remote called `name`.
pub fn get(repo: &Repo, name: &str) -> Result<Remote, TransportError> {
    list(repo)?.remove(name).ok_or_else(|| {
        TransportError::Remote(format!(
            "no remote {name:?} in {} (add it with `osdeploy remote add`)",
            repo.path().display()
        ))
    })
}

/// Adds or replaces a remote.
pub fn add(repo: &Repo, remote: Remote) -> Result<(), TransportError> {
    osdeploy_store::name::check_ref_name(&remote.name)?;
    for url in &remote.urls {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(TransportError::Remote(format!("remote URL {url:?} must start with http:// or https://")));
        }
    }
    if !remote.insecure && remote.keys.is_empty() {
        return Err(TransportError::Remote(format!(
            "remote {}: give the public key its data is signed with (--key FILE), or --insecure to accept unsigned data",
            remote.name
        )));
    }
    let mut all = list(repo)?;
    all.insert(remote.name.clone(), remote);
    let text = serde_json::to_string_pretty(&all).expect("remotes serialize") + "\n";
    Ok(atomic_write(&path(repo), &repo.path().join(layout::TMP), text.as_bytes())?)
}

/// Where this repository keeps remote pack indexes (immutable, named by pack id).
pub fn index_cache(repo: &Repo) -> std::path::PathBuf {
    repo.path().join(layout::INDEX_CACHE)
}

/// Where a pull keeps verified objects until its commit is complete (survives a crash).
pub fn staging(repo: &Repo) -> std::path::PathBuf {
    repo.path().join(layout::STAGING)
}
