//! Signature files (`summary.sig`, commit signatures) against a summary, with a trusted key: their
//! parsing, expiry dates and verification.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use osdeploy_transport::sign::{Freshness, signed_until, summary_freshness, verify};

/// 2027-01-15, a fixed "now".
const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    // The summary, a NUL, then the signature file.
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (summary, signatures) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let trusted = [SigningKey::from_bytes(&[7; 32]).verifying_key()];
    // Nobody holds the key's secret but this file: no input may verify.
    let freshness = summary_freshness(summary, signatures, &trusted, NOW);
    assert!(matches!(freshness, Freshness::Untrusted), "a forged signature verified: {freshness:?}");
    let _ = signed_until(summary, signatures);
    assert!(!verify(summary, signatures, &trusted), "a forged signature verified");
});
