//! Remotes a repository pulls from: names and URLs, kept in `REPO/remotes.json`.

use std::collections::BTreeMap;

use osdeploy_store::fsutil::atomic_write;
use osdeploy_store::{RefName, Repo, layout};
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

/// Checks a repository's base URL: `http://` or `https://`, a host, no query or fragment.
pub fn check_url(url: &str) -> Result<(), TransportError> {
    let bad = |reason: String| TransportError::Remote(format!("URL {:?} {reason}", redacted(url)));
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(format!("is not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("must start with http:// or https://".into()));
    }
    if parsed.host().is_none() {
        return Err(bad("names no host".into()));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("must be a repository's base URL, without ?query or #fragment".into()));
    }
    Ok(())
}

/// `url` with the password it may embed (`https://user:secret@host/`) replaced by `***`, for
/// messages, logs and listings; read as text, so that a URL that does not parse is hidden too.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else { return url.to_owned() };
    match authority[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// Adds or replaces a remote.
pub fn add(repo: &Repo, remote: Remote) -> Result<(), TransportError> {
    // Its name is the first component of the refs its branches are pulled to.
    RefName::new(remote.name.as_str())?;
    if remote.name == layout::RESERVED_REF_PREFIX {
        return Err(TransportError::Remote(format!(
            "the remote name {:?} is reserved: osdeploy keeps its deployments' pins under refs {}/…",
            remote.name,
            layout::RESERVED_REF_PREFIX
        )));
    }
    for url in &remote.urls {
        check_url(url)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_hidden() {
        assert!(check_url("https://mirror.example:8443/repo").is_ok());
        assert!(check_url("http://[::1]:8080/").is_ok());
        for (url, expected) in [
            ("http://[::1", "is not a valid URL"),
            ("ftp://host/repo", "http:// or https://"),
            ("https://host/repo?branch=x", "without ?query"),
            ("https://user:secret@[bad", "is not a valid URL"),
        ] {
            let err = check_url(url).unwrap_err().to_string();
            assert!(err.contains(expected) && !err.contains("secret"), "{url}: {err}");
        }
        assert_eq!(redacted("https://user:secret@host/repo"), "https://user:***@host/repo");
        assert_eq!(redacted("https://host/repo"), "https://host/repo");
    }
}
