//! A pack index and the pack it describes: the index decoder, then every entry it lists decoded
//! from the pack's bytes (header check, bounded decompression, hash check).
#![no_main]

use libfuzzer_sys::fuzz_target;
use osdeploy_store::pack::{decode_entry, decode_index};

fuzz_target!(|data: &[u8]| {
    // Two bytes give the index's length; the index, then the pack.
    let Some((length, rest)) = data.split_first_chunk::<2>() else { return };
    let (index, pack) = rest.split_at(usize::from(u16::from_le_bytes(*length)).min(rest.len()));
    let Ok(index) = decode_index(index, "fuzz.idx") else { return };
    for entry in &index.entries {
        let start = usize::try_from(entry.offset).unwrap_or(usize::MAX);
        let span = usize::try_from(entry.span()).unwrap_or(usize::MAX);
        if let Some(bytes) = pack.get(start..start.saturating_add(span)) {
            let _ = decode_entry(bytes, entry, "fuzz.pack");
        }
    }
});
