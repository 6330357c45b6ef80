//! What a remote publishes before any object: the summary and a release's delta index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osdeploy_store::delta::index::DeltaIndex;
use osdeploy_store::summary::Summary;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    if which % 2 == 0 {
        let _ = Summary::parse(bytes, "the fuzzed summary");
    } else {
        let _ = DeltaIndex::decode(bytes, "fuzz");
    }
});
