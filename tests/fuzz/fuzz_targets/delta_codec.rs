//! Applying a delta payload of every codec to an old content: never more than the target size,
//! never an allocation beyond it, never a panic, whatever the payload declares.
//!
//! The gzip codecs run only with OSDEPLOY_FUZZ_PREFLATE set: hostile deflate corrections make
//! preflate-rs 0.7.6 rebuild blocks without end. `osdeploy` bounds that in a child process
//! (store/src/delta/deflate.rs, docs/reliability.md), but here the decoder runs in-process, so the
//! short CI runs would time out on it at random. Their header, size and reference checks before
//! preflate are fuzzed with the variable set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osdeploy_store::FileId;
use osdeploy_store::delta::codec::{DeltaCodec, decode};

/// gzip.rs runs preflate (a dependency) under `catch_unwind` and falls back when it panics, as it
/// does on hostile corrections (an overflowing shift, with debug assertions on): such panics are
/// expected, every other one is a crash. libFuzzer's hook aborts on any panic, so it is wrapped.
fn let_preflate_panics_be_caught() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let crash = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.location().is_some_and(|at| at.file().contains("/preflate-rs-")) {
                crash(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    let_preflate_panics_be_caught();
    // A codec byte, the target size (3 bytes: below 16 MiB), the old content's length (2 bytes),
    // the old content, then the payload.
    let Some((header, rest)) = data.split_first_chunk::<6>() else { return };
    let codecs: &[u8] = if std::env::var_os("OSDEPLOY_FUZZ_PREFLATE").is_some() { &[1, 2, 3, 4] } else { &[1, 2] };
    let Some(codec) = DeltaCodec::from_u8(codecs[usize::from(header[0]) % codecs.len()]) else { return };
    let target_size = u64::from(u32::from_le_bytes([header[1], header[2], header[3], 0]));
    let old_len = usize::from(u16::from_le_bytes([header[4], header[5]])).min(rest.len());
    let (old, payload) = rest.split_at(old_len);
    // A gzip-tree payload names release files: small ones exist, large ones are missing.
    let files = |_: &FileId, size: u64| -> Result<Vec<u8>, String> {
        if size <= 4096 { Ok(vec![b'r'; size as usize]) } else { Err("not in the repository".into()) }
    };
    if let Ok(new) = decode(codec, old, payload, target_size, &files) {
        assert_eq!(new.len() as u64, target_size);
    }
});
