//! ed25519 signatures over a repository's summary (and so, transitively, over everything it
//! names: refs → commit ids → objects, each verified by its blake3 id) and over commits.
//!
//! Key files are text: `osdeploy-ed25519-secret <64 hex>` (seed, mode 0600) and
//! `osdeploy-ed25519-public <64 hex>`. A signature file (`summary.sig`, `signatures/<commit>.sig`)
//! holds one line per signature, `ed25519 <public key hex> <signature hex>`, so that keys can be
//! rotated: a client accepts the data when any line verifies with any key it trusts.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use data_encoding::HEXLOWER_PERMISSIVE as HEX;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use osdeploy_store::fsutil::atomic_write;
use osdeploy_store::{CommitId, Repo, StoreError, layout};

use crate::error::TransportError;

/// The most bytes a signature file may have (one line of about 200 bytes per signing key).
pub const MAX_SIGNATURES: u64 = 64 << 10;

const SECRET_TAG: &str = "osdeploy-ed25519-secret";
const PUBLIC_TAG: &str = "osdeploy-ed25519-public";

fn io(path: &Path, error: std::io::Error) -> TransportError {
    StoreError::Io { path: path.into(), error }.into()
}

fn bad_key(path: &Path, why: &str) -> TransportError {
    TransportError::Key { path: path.into(), reason: format!("not an osdeploy key file ({why})") }
}

/// Creates a new key pair: the secret at `secret` (mode 0600) and the public key at `secret.pub`.
pub fn generate(secret: &Path) -> Result<VerifyingKey, TransportError> {
    let mut seed = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| io(Path::new("/dev/urandom"), e))?;
    let key = SigningKey::from_bytes(&seed);
    if secret.exists() {
        return Err(TransportError::Key { path: secret.into(), reason: "exists; refusing to overwrite a key".into() });
    }
    fs::write(secret, format!("{SECRET_TAG} {}\n", HEX.encode(&seed))).map_err(|e| io(secret, e))?;
    fs::set_permissions(secret, fs::Permissions::from_mode(0o600)).map_err(|e| io(secret, e))?;
    let public = secret.with_extension("pub");
    fs::write(&public, format!("{PUBLIC_TAG} {}\n", HEX.encode(key.verifying_key().as_bytes())))
        .map_err(|e| io(&public, e))?;
    Ok(key.verifying_key())
}

fn read_tagged(path: &Path, tag: &str) -> Result<[u8; 32], TransportError> {
    let text = fs::read_to_string(path).map_err(|e| io(path, e))?;
    let hex = text.trim().strip_prefix(tag).ok_or_else(|| bad_key(path, &format!("expected {tag}")))?.trim();
    HEX.decode(hex.as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad_key(path, "expected 64 hex digits"))
}

/// Loads a secret key file.
pub fn load_secret(path: &Path) -> Result<SigningKey, TransportError> {
    Ok(SigningKey::from_bytes(&read_tagged(path, SECRET_TAG)?))
}

/// Loads a public key file.
pub fn load_public(path: &Path) -> Result<VerifyingKey, TransportError> {
    VerifyingKey::from_bytes(&read_tagged(path, PUBLIC_TAG)?).map_err(|e| bad_key(path, &e.to_string()))
}

/// The hex form of a public key (as stored in remotes.json).
pub fn public_hex(key: &VerifyingKey) -> String {
    HEX.encode(key.as_bytes())
}

/// Parses a public key in hex.
pub fn public_from_hex(hex: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = HEX.decode(hex.as_bytes()).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Adds `key`'s signature of `message` to the signature file at `sig_path` (replacing an older
/// signature by the same key).
pub fn sign_file(key: &SigningKey, message: &[u8], sig_path: &Path, tmp: &Path) -> Result<(), TransportError> {
    let public = public_hex(&key.verifying_key());
    let mut lines: Vec<String> = fs::read_to_string(sig_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) != Some(public.as_str()))
        .map(str::to_string)
        .collect();
    lines.push(signature_line(key, message));
    Ok(atomic_write(sig_path, tmp, (lines.join("\n") + "\n").as_bytes())?)
}

/// What [`sign_repository`] signed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SignedRepository {
    /// Every branch and its commit, each commit now signed.
    pub commits: Vec<(String, CommitId)>,
    /// The public key that signed (hex).
    pub key: String,
}

/// Signs an archive repository as served: every branch's commit (`signatures/<commit>.sig`),
/// then the summary (`summary.sig`), so that a client never finds the summary signed before
/// the commits it names. Run after every commit.
pub fn sign_repository(repo: &Repo, key: &SigningKey) -> Result<SignedRepository, TransportError> {
    if repo.archive().is_none() {
        return Err(TransportError::WrongRepository {
            path: repo.path().into(),
            reason: "is not an archive repository: only served repositories are signed".into(),
        });
    }
    let tmp = repo.path().join(layout::TMP);
    let signatures = repo.path().join(layout::SIGNATURES);
    fs::create_dir_all(&signatures).map_err(|e| io(&signatures, e))?;
    let mut commits = Vec::new();
    for (name, commit) in repo.refs()? {
        sign_file(key, commit.to_string().as_bytes(), &repo.path().join(layout::commit_signature(&commit)), &tmp)?;
        commits.push((name, commit));
    }
    let summary_path = repo.path().join(layout::SUMMARY);
    let summary = fs::read(&summary_path).map_err(|e| io(&summary_path, e))?;
    sign_file(key, &summary, &repo.path().join(layout::SUMMARY_SIGNATURE), &tmp)?;
    Ok(SignedRepository { commits, key: public_hex(&key.verifying_key()) })
}

/// One line of a signature file: `key`'s signature of `message`, without the newline.
pub fn signature_line(key: &SigningKey, message: &[u8]) -> String {
    format!("ed25519 {} {}", public_hex(&key.verifying_key()), HEX.encode(&key.sign(message).to_bytes()))
}

/// True when some line of `signatures` is a valid signature of `message` by one of `trusted`.
pub fn verify(message: &[u8], signatures: &[u8], trusted: &[VerifyingKey]) -> bool {
    String::from_utf8_lossy(signatures).lines().any(|line| {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (Some(key), Some(sig)) = (parts.get(1).and_then(|h| public_from_hex(h)), parts.get(2)) else {
            return false;
        };
        let Some(sig) = HEX.decode(sig.as_bytes()).ok().and_then(|b| Signature::from_slice(&b).ok()) else {
            return false;
        };
        parts[0] == "ed25519" && trusted.contains(&key) && key.verify_strict(message, &sig).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_rotate_and_reject() {
        let tmp = tempfile::tempdir().unwrap();
        let (k1, k2) = (tmp.path().join("k1"), tmp.path().join("k2"));
        let p1 = generate(&k1).unwrap();
        let p2 = generate(&k2).unwrap();
        assert_eq!(load_public(&k1.with_extension("pub")).unwrap(), p1);
        let sig = tmp.path().join("summary.sig");
        sign_file(&load_secret(&k1).unwrap(), b"summary", &sig, tmp.path()).unwrap();
        let bytes = fs::read(&sig).unwrap();
        assert!(verify(b"summary", &bytes, &[p1]));
        assert!(!verify(b"summary!", &bytes, &[p1]), "another message");
        assert!(!verify(b"summary", &bytes, &[p2]), "an untrusted key");
        sign_file(&load_secret(&k2).unwrap(), b"summary", &sig, tmp.path()).unwrap();
        let bytes = fs::read(&sig).unwrap();
        assert!(verify(b"summary", &bytes, &[p2]) && verify(b"summary", &bytes, &[p1]), "both keys during rotation");
        assert!(generate(&k1).is_err(), "never overwrites a key");
        assert!(load_public(&k1).is_err(), "a secret is not a public key");
    }
}
