//! Per-file binary deltas (docs/deltas.md): a changed file's new content encoded against an old
//! content the node holds, keyed by the two contents, not by commits.

pub mod codec;
pub mod deflate;
pub mod deflate_blocks;
pub mod deflate_segments;
pub mod generate;
pub mod gzip;
pub mod index;
pub mod metadata;
pub mod object;
pub mod pairing;
pub mod published;
pub mod tree_refs;
