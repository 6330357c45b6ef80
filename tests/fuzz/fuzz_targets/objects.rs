//! Object decoders (file, dirtree, commit, delta, metadata delta, and the record stream a metadata
//! delta rebuilds): never a panic or an unbounded allocation, and what decodes encodes back to the
//! same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osdeploy_store::ObjectId;
use osdeploy_store::delta::metadata::{MetadataDelta, RebuiltMetadata};
use osdeploy_store::delta::object::DeltaObject;
use osdeploy_store::object::{Commit, DirTree, FileObject};

macro_rules! round_trip {
    ($type:ty, $bytes:expr) => {{
        let id = ObjectId::of($bytes);
        if let Ok(value) = <$type>::decode(id, $bytes) {
            let again = <$type>::decode(id, &value.encode()).expect("an encoded object decodes");
            assert_eq!(again, value);
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 6 {
        0 => round_trip!(FileObject, bytes),
        1 => round_trip!(DirTree, bytes),
        2 => round_trip!(Commit, bytes),
        3 => round_trip!(DeltaObject, bytes),
        4 => round_trip!(MetadataDelta, bytes),
        _ => {
            if let Ok(rebuilt) = RebuiltMetadata::parse(bytes, "fuzzed stream") {
                let records = rebuilt.objects.len() + rebuilt.chunks.len() + rebuilt.chunk_locations.len();
                assert!(records * 5 <= bytes.len(), "{records} records from {} bytes", bytes.len());
            }
        }
    }
});
