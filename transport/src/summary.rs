//! A remote's summary (its refs and packs) and the signatures that make it trustworthy.

use osdeploy_store::layout;
use osdeploy_store::summary::Summary;
use osdeploy_store::{CommitId, ObjectId, RefName};

use crate::client::Client;
use crate::error::TransportError;
use crate::plan::WholeFile;
use crate::remote::Remote;
use crate::sign::{Freshness, MAX_SIGNATURES, now, summary_freshness};

/// A summary as fetched and verified, with its exact bytes (a mirror passes them on).
pub struct VerifiedSummary {
    /// The decoded summary.
    pub summary: Summary,
    /// Its bytes as served.
    pub bytes: Vec<u8>,
    /// Its signature file as served (None for an `--insecure` remote).
    pub signatures: Option<Vec<u8>>,
    /// When its trusted signature expires (None for an `--insecure` remote).
    pub expires: Option<i64>,
}

impl VerifiedSummary {
    /// The files a pull of `commit` fetches whole: this summary, its signature and the commit's
    /// signature (`commit_signature`, when the remote is signed).
    pub fn whole_files(&self, commit: &CommitId, commit_signature: Option<&[u8]>) -> Vec<WholeFile> {
        let file = |name: String, bytes: &[u8]| WholeFile { name, bytes: bytes.len() as u64 };
        let mut files = vec![file(layout::SUMMARY.into(), &self.bytes)];
        files.extend(self.signatures.as_deref().map(|s| file(layout::SUMMARY_SIGNATURE.into(), s)));
        files.extend(commit_signature.map(|s| file(layout::commit_signature(commit), s)));
        files
    }
}

/// Each pack's id and its index's hash.
pub fn packs(summary: &Summary) -> Vec<(ObjectId, ObjectId)> {
    summary.packs.iter().map(|p| (p.id, p.index)).collect()
}

/// The summary's packs: (pack id, size).
pub fn pack_sizes(summary: &Summary) -> Vec<(ObjectId, u64)> {
    summary.packs.iter().map(|p| (p.id, p.size)).collect()
}

/// The commit `branch` names and its timestamp, or an error listing the branches there are.
pub fn branch(summary: &Summary, remote: &Remote, branch: &RefName) -> Result<(CommitId, i64), TransportError> {
    let offered = summary.refs.get(branch).ok_or_else(|| TransportError::NoSuchBranch {
        remote: remote.name.clone(),
        branch: branch.to_string(),
        available: available(summary),
    })?;
    Ok((offered.commit, offered.timestamp))
}

/// The summary's branches, for an error that lists them: "a, b, c".
pub fn available(summary: &Summary) -> String {
    summary.refs.keys().map(RefName::as_str).collect::<Vec<_>>().join(", ")
}

/// The public keys `remote` trusts, parsed.
pub fn trusted_keys(remote: &Remote) -> Result<Vec<ed25519_dalek::VerifyingKey>, TransportError> {
    remote
        .keys
        .iter()
        .map(|hex| {
            crate::sign::public_from_hex(hex)
                .ok_or_else(|| TransportError::Remote(format!("remote {}: {hex:?} is not a public key", remote.name)))
        })
        .collect()
}

fn signature_error(remote: &Remote, what: &str, problem: &str) -> TransportError {
    TransportError::Signature {
        remote: remote.name.clone(),
        what: what.into(),
        problem: problem.into(),
        keys: if remote.keys.is_empty() { "none".into() } else { remote.keys.join(", ") },
    }
}

/// Fetches the remote's summary and, unless the remote is insecure, checks its signature.
///
/// The summary and its signature are two files replaced one after the other on the server, so a
/// client may catch a new summary with the old signature: a mismatch is retried once after a
/// pause before it is reported.
pub async fn fetch_summary(client: &Client, remote: &Remote) -> Result<VerifiedSummary, TransportError> {
    let trusted = trusted_keys(remote)?;
    let mut attempt = 0;
    loop {
        // A summary that does not parse, or has a format this osdeploy does not read, rejects
        // that URL's data.
        let (bytes, summary) = client
            .get_parsed(layout::SUMMARY, client.options().max_metadata, |bytes| {
                // "the summary from URL is invalid: it is corrupt: …"
                Summary::parse(bytes, "it").map_err(|e| TransportError::Invalid {
                    what: "the summary".into(),
                    url: String::new(),
                    reason: e.to_string(),
                })
            })
            .await?;
        if remote.insecure {
            return Ok(VerifiedSummary { summary, bytes, signatures: None, expires: None });
        }
        let signatures = client
            .get(layout::SUMMARY_SIGNATURE, MAX_SIGNATURES)
            .await
            .map_err(|e| if e.is_absent() { signature_error(remote, "its summary", "is not signed") } else { e })?;
        match summary_freshness(&bytes, &signatures, &trusted, now()) {
            Freshness::Fresh { expires } => {
                return Ok(VerifiedSummary { summary, bytes, signatures: Some(signatures), expires: Some(expires) });
            }
            Freshness::Expired { expired } => {
                let problem = format!(
                    "expired {} s ago (at {expired}, seconds since the epoch): the server is stale or replays an \
                     old summary, which could hide newer releases; its publisher signs again with `osdeploy sign`",
                    now() - expired
                );
                return Err(signature_error(remote, "its summary", &problem));
            }
            Freshness::NoExpiry => {
                let problem = "is signed without an expiry (by an older osdeploy): its publisher signs again with \
                               `osdeploy sign`";
                return Err(signature_error(remote, "its summary", problem));
            }
            // The summary may have been replaced between the two requests: one more try.
            Freshness::Untrusted => {}
        }
        attempt += 1;
        if attempt == 2 {
            return Err(signature_error(remote, "its summary", "is not signed by a trusted key"));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Fetches `signatures/<commit>.sig` and checks it, unless the remote is insecure; returns the
/// signature file (a mirror passes it on).
pub async fn verify_commit(
    client: &Client,
    remote: &Remote,
    commit: &CommitId,
) -> Result<Option<Vec<u8>>, TransportError> {
    if remote.insecure {
        return Ok(None);
    }
    let trusted = trusted_keys(remote)?;
    let what = format!("commit {commit}");
    let signatures = client
        .get(&layout::commit_signature(commit), MAX_SIGNATURES)
        .await
        .map_err(|e| if e.is_absent() { signature_error(remote, &what, "is not signed") } else { e })?;
    if !crate::sign::verify(commit.to_string().as_bytes(), &signatures, &trusted) {
        return Err(signature_error(remote, &what, "is not signed by a trusted key"));
    }
    Ok(Some(signatures))
}
