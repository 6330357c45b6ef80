//! ed25519 signatures over a repository's summary (and so, transitively, over everything it
//! names: refs → commit ids → objects, each verified by its blake3 id) and over commits.
//!
//! Key files are text: `osdeploy-ed25519-secret <64 hex>` (seed, mode 0600) and
//! `osdeploy-ed25519-public <64 hex>`. A signature file (`summary.sig`, `signatures/<commit>.sig`)
//! holds one line per signature, `ed25519 <public key hex> <signature hex>`, so that keys can be
//! rotated: a client accepts the data when any line verifies with any key it trusts.
//!
//! A summary's signature also expires: its line ends in `expires=<unix seconds>`, and what is
//! signed is the summary followed by `\nosdeploy-expires <unix seconds>`, so the date cannot be
//! changed without the key. A node refuses a summary whose every trusted signature has expired
//! (with [`CLOCK_SKEW`] of grace): a mirror or a man in the middle that keeps serving an old,
//! validly signed summary cannot hide newer releases from it for longer than the lifetime the
//! publisher chose (TUF's freeze attack). Commits need no expiry: the summary names them.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use data_encoding::HEXLOWER_PERMISSIVE as HEX;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use osdeploy_store::fsutil::atomic_write;
use osdeploy_store::{CommitId, RefName, Repo, StoreError, layout};

use crate::error::TransportError;

/// The most bytes a signature file may have (one line of about 200 bytes per signing key).
pub const MAX_SIGNATURES: u64 = 64 << 10;

/// How long a summary signature lasts unless `sign --expires` says otherwise.
pub const DEFAULT_SUMMARY_LIFETIME: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Seconds a node's clock may run ahead of the publisher's before a summary counts as expired.
pub const CLOCK_SKEW: i64 = 300;

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

/// Adds `key`'s signature of `message` (valid until `expires`, if given) to the signature file at
/// `sig_path`, replacing an older signature by the same key.
pub fn sign_file(
    key: &SigningKey,
    message: &[u8],
    expires: Option<i64>,
    sig_path: &Path,
    tmp: &Path,
) -> Result<(), TransportError> {
    let public = public_hex(&key.verifying_key());
    let mut lines: Vec<String> = fs::read_to_string(sig_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) != Some(public.as_str()))
        .map(str::to_string)
        .collect();
    lines.push(match expires {
        Some(expires) => expiring_signature_line(key, message, expires),
        None => signature_line(key, message),
    });
    Ok(atomic_write(sig_path, tmp, (lines.join("\n") + "\n").as_bytes())?)
}

/// What [`sign_repository`] signed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SignedRepository {
    /// Every branch and its commit, each commit now signed.
    pub commits: Vec<(RefName, CommitId)>,
    /// The public key that signed (hex).
    pub key: String,
    /// When the summary's signature expires (seconds since the epoch).
    pub expires: i64,
}

/// Signs an archive repository as served: every branch's commit (`signatures/<commit>.sig`),
/// then the summary (`summary.sig`, valid for `lifetime`), so that a client never finds the
/// summary signed before the commits it names. Run after every commit, and before the summary's
/// signature expires.
pub fn sign_repository(
    repo: &Repo,
    key: &SigningKey,
    lifetime: std::time::Duration,
) -> Result<SignedRepository, TransportError> {
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
        let path = repo.path().join(layout::commit_signature(&commit));
        sign_file(key, commit.to_string().as_bytes(), None, &path, &tmp)?;
        commits.push((name, commit));
    }
    let summary_path = repo.path().join(layout::SUMMARY);
    let summary = fs::read(&summary_path).map_err(|e| io(&summary_path, e))?;
    let expires = now() + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    sign_file(key, &summary, Some(expires), &repo.path().join(layout::SUMMARY_SIGNATURE), &tmp)?;
    Ok(SignedRepository { commits, key: public_hex(&key.verifying_key()), expires })
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// What an expiring signature signs: the message, then its expiry.
fn with_expiry(message: &[u8], expires: i64) -> Vec<u8> {
    let mut signed = message.to_vec();
    signed.extend_from_slice(format!("\nosdeploy-expires {expires}").as_bytes());
    signed
}

/// One line of a signature file: `key`'s signature of `message`, valid until `expires`.
pub fn expiring_signature_line(key: &SigningKey, message: &[u8], expires: i64) -> String {
    let signature = key.sign(&with_expiry(message, expires));
    format!("ed25519 {} {} expires={expires}", public_hex(&key.verifying_key()), HEX.encode(&signature.to_bytes()))
}

/// A valid line of a signature file: its key and, for an expiring signature, its expiry.
struct ValidLine {
    key: VerifyingKey,
    expires: Option<i64>,
}

/// The lines of `signatures` that are valid signatures of `message` by the key they name.
fn valid_lines(message: &[u8], signatures: &[u8]) -> Vec<ValidLine> {
    let text = String::from_utf8_lossy(signatures);
    text.lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let key = parts.get(1).and_then(|h| public_from_hex(h))?;
            let signature = HEX.decode(parts.get(2)?.as_bytes()).ok().and_then(|b| Signature::from_slice(&b).ok())?;
            let expires = match parts.get(3) {
                Some(field) => Some(field.strip_prefix("expires=")?.parse::<i64>().ok()?),
                None => None,
            };
            let signed = match expires {
                Some(expires) => with_expiry(message, expires),
                None => message.to_vec(),
            };
            (parts[0] == "ed25519" && parts.len() <= 4 && key.verify_strict(&signed, &signature).is_ok())
                .then_some(ValidLine { key, expires })
        })
        .collect()
}

/// How a summary's signatures stand for a node that trusts some keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Signed by a trusted key, valid until `expires`.
    Fresh {
        /// The latest expiry among the trusted signatures.
        expires: i64,
    },
    /// Signed by a trusted key, but every such signature expired, the last at `expired`.
    Expired {
        /// When the last trusted signature expired.
        expired: i64,
    },
    /// Signed by a trusted key without an expiry (by an osdeploy older than expiring summaries).
    NoExpiry,
    /// No trusted key signed it.
    Untrusted,
}

/// Whether `signatures` make `summary` trustworthy at `now` for a node trusting `trusted`.
pub fn summary_freshness(summary: &[u8], signatures: &[u8], trusted: &[VerifyingKey], now: i64) -> Freshness {
    let lines: Vec<ValidLine> =
        valid_lines(summary, signatures).into_iter().filter(|l| trusted.contains(&l.key)).collect();
    match lines.iter().filter_map(|l| l.expires).max() {
        Some(expires) if now <= expires + CLOCK_SKEW => Freshness::Fresh { expires },
        Some(expired) => Freshness::Expired { expired },
        None if lines.is_empty() => Freshness::Untrusted,
        None => Freshness::NoExpiry,
    }
}

/// Until when `summary` is signed, by any key that signs it validly (for its publisher's
/// warnings, not for trust).
pub fn signed_until(summary: &[u8], signatures: &[u8]) -> Option<i64> {
    valid_lines(summary, signatures).iter().filter_map(|l| l.expires).max()
}

/// One line of a signature file: `key`'s signature of `message`, without the newline.
pub fn signature_line(key: &SigningKey, message: &[u8]) -> String {
    format!("ed25519 {} {}", public_hex(&key.verifying_key()), HEX.encode(&key.sign(message).to_bytes()))
}

/// True when some line of `signatures` is a valid signature of `message` by one of `trusted`
/// (expired or not: [`summary_freshness`] judges the summary's expiry).
pub fn verify(message: &[u8], signatures: &[u8], trusted: &[VerifyingKey]) -> bool {
    valid_lines(message, signatures).iter().any(|l| trusted.contains(&l.key))
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
        sign_file(&load_secret(&k1).unwrap(), b"summary", None, &sig, tmp.path()).unwrap();
        let bytes = fs::read(&sig).unwrap();
        assert!(verify(b"summary", &bytes, &[p1]));
        assert!(!verify(b"summary!", &bytes, &[p1]), "another message");
        assert!(!verify(b"summary", &bytes, &[p2]), "an untrusted key");
        sign_file(&load_secret(&k2).unwrap(), b"summary", None, &sig, tmp.path()).unwrap();
        let bytes = fs::read(&sig).unwrap();
        assert!(verify(b"summary", &bytes, &[p2]) && verify(b"summary", &bytes, &[p1]), "both keys during rotation");
        assert!(generate(&k1).is_err(), "never overwrites a key");
        assert!(load_public(&k1).is_err(), "a secret is not a public key");
    }

    #[test]
    fn summary_signatures_expire_and_their_date_is_signed() {
        let tmp = tempfile::tempdir().unwrap();
        let (k1, k2) = (tmp.path().join("k1"), tmp.path().join("k2"));
        let (p1, p2) = (generate(&k1).unwrap(), generate(&k2).unwrap());
        let (s1, s2) = (load_secret(&k1).unwrap(), load_secret(&k2).unwrap());
        let line = expiring_signature_line(&s1, b"summary", 1000);
        assert!(line.ends_with(" expires=1000"), "{line}");
        let fresh = |sigs: &str, now| summary_freshness(b"summary", sigs.as_bytes(), &[p1], now);
        assert_eq!(fresh(&line, 900), Freshness::Fresh { expires: 1000 });
        assert_eq!(fresh(&line, 1000 + CLOCK_SKEW), Freshness::Fresh { expires: 1000 }, "the clock-skew grace");
        assert_eq!(fresh(&line, 1001 + CLOCK_SKEW), Freshness::Expired { expired: 1000 });
        // A later date written over the line does not verify.
        assert_eq!(fresh(&line.replace("expires=1000", "expires=9999"), 900), Freshness::Untrusted);
        assert_eq!(fresh(&signature_line(&s1, b"summary"), 900), Freshness::NoExpiry);
        assert_eq!(fresh(&expiring_signature_line(&s2, b"summary", 5000), 900), Freshness::Untrusted);
        // The latest trusted signature counts; an untrusted key's later one does not.
        let both = format!("{line}\n{}\n", expiring_signature_line(&s2, b"summary", 5000));
        assert_eq!(summary_freshness(b"summary", both.as_bytes(), &[p1, p2], 2000), Freshness::Fresh { expires: 5000 });
        assert_eq!(fresh(&both, 2000), Freshness::Expired { expired: 1000 });
        assert_eq!(signed_until(b"summary", both.as_bytes()), Some(5000));
        assert!(verify(b"summary", line.as_bytes(), &[p1]), "an expired signature still verifies the bytes");
    }
}
