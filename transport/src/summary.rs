//! A remote's summary (its refs and packs) and the signatures that make it trustworthy.

use std::collections::BTreeMap;

use osdeploy_store::{CommitId, ObjectId};
use serde::Deserialize;

use crate::client::Client;
use crate::error::TransportError;
use crate::remote::Remote;

/// One branch as the summary offers it.
#[derive(Clone, Debug, Deserialize)]
pub struct SummaryRef {
    /// The branch's commit (hex).
    pub commit: String,
    /// The commit's timestamp (seconds since the epoch).
    pub timestamp: i64,
}

/// One pack as the summary lists it.
#[derive(Clone, Debug, Deserialize)]
pub struct SummaryPack {
    /// The pack's id (hex): the blake3 of the pack file.
    pub id: String,
    /// The blake3 of the pack's index file (hex).
    pub index: String,
}

/// The parts of a remote's `summary` a client uses.
#[derive(Clone, Debug, Deserialize)]
pub struct Summary {
    /// Branch → commit.
    pub refs: BTreeMap<String, SummaryRef>,
    /// Every pack of the repository.
    pub packs: Vec<SummaryPack>,
}

/// A summary as fetched and verified, with its exact bytes (a mirror passes them on).
pub struct VerifiedSummary {
    /// The decoded summary.
    pub summary: Summary,
    /// Its bytes as served.
    pub bytes: Vec<u8>,
    /// Its signature file as served (None for an `--insecure` remote).
    pub signatures: Option<Vec<u8>>,
}

impl Summary {
    /// Each pack's id and its index's hash, parsed.
    pub fn packs(&self) -> Result<Vec<(ObjectId, ObjectId)>, TransportError> {
        let parse = |hex: &str| {
            ObjectId::from_hex(hex).ok_or_else(|| TransportError::Invalid {
                what: "the summary".into(),
                url: "summary".into(),
                reason: format!("{hex:?} is not an object id"),
            })
        };
        self.packs.iter().map(|p| Ok((parse(&p.id)?, parse(&p.index)?))).collect()
    }

    /// The commit `branch` names, or an error listing the branches there are.
    pub fn branch(&self, remote: &Remote, branch: &str) -> Result<(CommitId, i64), TransportError> {
        let offered = self.refs.get(branch).ok_or_else(|| TransportError::NoSuchBranch {
            remote: remote.name.clone(),
            branch: branch.into(),
            available: self.refs.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        let id = ObjectId::from_hex(&offered.commit).ok_or_else(|| TransportError::Invalid {
            what: "the summary".into(),
            url: remote.urls[0].clone(),
            reason: format!("branch {branch} names {:?}, not a commit id", offered.commit),
        })?;
        Ok((CommitId(id), offered.timestamp))
    }
}

fn trusted_keys(remote: &Remote) -> Result<Vec<ed25519_dalek::VerifyingKey>, TransportError> {
    remote
        .keys
        .iter()
        .map(|hex| {
            crate::sign::public_from_hex(hex)
                .ok_or_else(|| TransportError::Config(format!("remote {}: {hex:?} is not a public key", remote.name)))
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
        let bytes = client.get("summary").await?;
        let summary: Summary = serde_json::from_slice(&bytes).map_err(|e| TransportError::Invalid {
            what: "the summary".into(),
            url: remote.urls[0].clone(),
            reason: e.to_string(),
        })?;
        if remote.insecure {
            return Ok(VerifiedSummary { summary, bytes, signatures: None });
        }
        let signatures =
            client.get("summary.sig").await.map_err(|_| signature_error(remote, "its summary", "is not signed"))?;
        if crate::sign::verify(&bytes, &signatures, &trusted) {
            return Ok(VerifiedSummary { summary, bytes, signatures: Some(signatures) });
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
        .get(&format!("signatures/{commit}.sig"))
        .await
        .map_err(|_| signature_error(remote, &what, "is not signed"))?;
    if !crate::sign::verify(commit.to_string().as_bytes(), &signatures, &trusted) {
        return Err(signature_error(remote, &what, "is not signed by a trusted key"));
    }
    Ok(Some(signatures))
}
