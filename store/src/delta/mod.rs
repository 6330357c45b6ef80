//! Per-file binary deltas: a new file's content encoded against the content of an old file it
//! most likely evolved from ([`pairing`]), with the codec that gives the smallest payload
//! ([`codec`]), so that a node holding the old tree fetches only what changed.

pub mod codec;
pub mod pairing;
