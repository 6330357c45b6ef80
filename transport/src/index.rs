//! Where a remote's objects lie: its pack indexes, fetched once and cached by pack id (they are
//! immutable), kept as compact sorted arrays and searched by binary search, so memory grows by
//! one index entry per remote object and nothing more.

use std::fs;
use std::sync::Arc;

use osdeploy_store::fsutil::atomic_write;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::pack::{self, IndexEntry};
use osdeploy_store::{ObjectId, Repo, StoreError};

use crate::client::{BodySink, Client};
use crate::error::TransportError;
use crate::remote::index_cache;

/// The entries of one remote pack, sorted by (id, kind).
#[derive(Debug)]
pub struct PackEntries {
    /// The pack's id.
    pub pack: ObjectId,
    /// The size of its index file.
    pub index_bytes: u64,
    /// Its entries, as the index lists them.
    pub entries: Vec<IndexEntry>,
}

impl PackEntries {
    /// The entry for an object, if this pack holds it.
    pub fn find(&self, kind: ObjectKind, id: &ObjectId) -> Option<&IndexEntry> {
        self.entries.binary_search_by(|e| (e.id, e.kind).cmp(&(*id, kind))).ok().map(|i| &self.entries[i])
    }
}

/// Every pack index of a remote.
#[derive(Debug, Default)]
pub struct RemoteIndex {
    /// One per pack, in the summary's order.
    pub packs: Vec<Arc<PackEntries>>,
}

impl RemoteIndex {
    /// The pack holding an object and its entry.
    pub fn locate(&self, kind: ObjectKind, id: &ObjectId) -> Option<(&Arc<PackEntries>, &IndexEntry)> {
        self.packs.iter().find_map(|p| p.find(kind, id).map(|e| (p, e)))
    }
}

/// Loads the indexes of `packs` (pack id, index hash from the summary), from the repository's
/// cache or the remote; each is verified against its hash before it is used or cached.
pub async fn load(repo: &Repo, client: &Client, packs: &[(ObjectId, ObjectId)]) -> Result<RemoteIndex, TransportError> {
    let cache = index_cache(repo);
    fs::create_dir_all(&cache).map_err(|e| StoreError::Io { path: cache.clone(), error: e })?;
    let mut index = RemoteIndex::default();
    for (pack_id, index_hash) in packs {
        let path = cache.join(format!("{pack_id}.idx"));
        let name = format!("packs/{pack_id}.idx");
        let bytes = match fs::read(&path) {
            Ok(b) if ObjectId::of(&b) == *index_hash => b,
            _ => {
                let bytes = download(client, &name, index_hash).await?;
                atomic_write(&path, &repo.path().join("tmp"), &bytes)?;
                bytes
            }
        };
        index.packs.push(Arc::new(decode(client, pack_id, &name, bytes)?));
    }
    Ok(index)
}

/// Fetches the indexes of `packs` into memory only (a survey that must not write).
pub async fn fetch(client: &Client, packs: &[(ObjectId, ObjectId)]) -> Result<RemoteIndex, TransportError> {
    let mut index = RemoteIndex::default();
    for (pack_id, index_hash) in packs {
        let name = format!("packs/{pack_id}.idx");
        let bytes = download(client, &name, index_hash).await?;
        index.packs.push(Arc::new(decode(client, pack_id, &name, bytes)?));
    }
    Ok(index)
}

async fn download(client: &Client, name: &str, hash: &ObjectId) -> Result<Vec<u8>, TransportError> {
    let mut sink = IndexSink { hash: *hash, name: name.into(), bytes: Vec::new() };
    client.stream(name, None, &mut sink).await?;
    Ok(sink.bytes)
}

fn decode(client: &Client, pack_id: &ObjectId, name: &str, bytes: Vec<u8>) -> Result<PackEntries, TransportError> {
    let decoded = pack::decode_index(&bytes, name).and_then(|d| {
        if d.pack == *pack_id {
            Ok(d)
        } else {
            Err(StoreError::Corrupt { what: name.into(), reason: format!("it describes pack {}", d.pack) })
        }
    });
    // The index matches the signed summary, so a bad one is the publisher's fault.
    let decoded = decoded.map_err(|e| TransportError::Invalid {
        what: name.into(),
        url: client.remote_name().into(),
        reason: format!("{e} (although it matches the summary's hash)"),
    })?;
    Ok(PackEntries { pack: *pack_id, index_bytes: bytes.len() as u64, entries: decoded.entries })
}

/// Collects an index file and checks it against the summary's hash.
struct IndexSink {
    hash: ObjectId,
    name: String,
    bytes: Vec<u8>,
}

impl BodySink for IndexSink {
    fn reset(&mut self) -> Result<(), TransportError> {
        self.bytes.clear();
        Ok(())
    }

    fn data(&mut self, piece: &[u8]) -> Result<(), TransportError> {
        self.bytes.extend_from_slice(piece);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), TransportError> {
        let actual = ObjectId::of(&self.bytes);
        if actual == self.hash {
            return Ok(());
        }
        Err(TransportError::Invalid {
            what: self.name.clone(),
            url: String::new(),
            reason: format!("it hashes to {actual}, the summary says {}: corrupt data", self.hash),
        })
    }
}
