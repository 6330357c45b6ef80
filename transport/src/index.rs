//! Where a remote's objects lie: its pack indexes, fetched once and cached by pack id (they are
//! immutable), kept as compact sorted arrays and searched by binary search, so memory grows by
//! one index entry per remote object and nothing more.

use std::fs;
use std::sync::Arc;

use osdeploy_store::fsutil::atomic_write;
use osdeploy_store::layout;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::pack::{self, IndexEntry};
use osdeploy_store::{ObjectId, Repo, StoreError};

use tokio::task::JoinSet;

use crate::client::Client;
use crate::error::TransportError;
use crate::plan::{IndexFetches, ObjectLocations};
use crate::remote::index_cache;

/// The entries of one remote pack, sorted by (id, kind).
#[derive(Debug)]
pub struct PackEntries {
    /// The pack's id.
    pub pack: ObjectId,
    /// The pack's path in the repository (and URL relative to the remote's).
    pub path: String,
    /// The size of its index file (0 for a delta pack, whose index a node never fetches).
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
    /// A pack's entries.
    pub fn pack(&self, id: &ObjectId) -> Option<&Arc<PackEntries>> {
        self.packs.iter().find(|p| p.pack == *id)
    }

    /// The pack holding an object and its entry.
    pub fn locate(&self, kind: ObjectKind, id: &ObjectId) -> Option<(&Arc<PackEntries>, &IndexEntry)> {
        self.packs.iter().find_map(|p| p.find(kind, id).map(|e| (p, e)))
    }
}

impl ObjectLocations for RemoteIndex {
    fn locate(&self, kind: ObjectKind, id: &ObjectId) -> Option<(ObjectId, IndexEntry)> {
        RemoteIndex::locate(self, kind, id).map(|(pack, entry)| (pack.pack, *entry))
    }

    fn index_bytes(&self, pack: &ObjectId) -> Result<u64, StoreError> {
        Ok(self.pack(pack).map_or(0, |p| p.index_bytes))
    }

    fn metadata_of_pack(&self, pack: &ObjectId) -> Vec<(ObjectId, ObjectKind)> {
        let entries = self.pack(pack).map(|p| p.entries.as_slice()).unwrap_or_default();
        entries.iter().filter(|e| e.kind != ObjectKind::Chunk).map(|e| (e.id, e.kind)).collect()
    }
}

/// Whether the index cache may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheWrites {
    /// Indexes downloaded are cached for the next pull.
    Allowed,
    /// Nothing is written (a dry run): cached indexes are read, the others kept in memory.
    Forbidden,
}

/// Loads the indexes of `packs` (pack id, index hash from the summary), from the repository's
/// cache or the remote; each is verified against its hash before it is used or cached. Returns
/// them with what was downloaded.
pub async fn load(
    repo: &Repo,
    client: &Client,
    packs: &[(ObjectId, ObjectId)],
    writes: CacheWrites,
) -> Result<(RemoteIndex, IndexFetches), TransportError> {
    let cache = index_cache(repo);
    if writes == CacheWrites::Allowed {
        fs::create_dir_all(&cache).map_err(|e| StoreError::Io { path: cache.clone(), error: e })?;
    }
    // Cached indexes that still match the summary are used; the others are downloaded.
    let mut files: Vec<Option<Vec<u8>>> = packs
        .iter()
        .map(|(pack, hash)| fs::read(cache.join(layout::index_name(pack))).ok().filter(|b| ObjectId::of(b) == *hash))
        .collect();
    let missing: Vec<usize> = (0..packs.len()).filter(|i| files[*i].is_none()).collect();
    let downloaded = download_all(client, &missing.iter().map(|i| packs[*i]).collect::<Vec<_>>()).await?;
    let mut fetches = IndexFetches::default();
    for (i, bytes) in missing.into_iter().zip(downloaded) {
        fetches.files += 1;
        fetches.bytes += bytes.len() as u64;
        if writes == CacheWrites::Allowed {
            atomic_write(&cache.join(layout::index_name(&packs[i].0)), &repo.path().join(layout::TMP), &bytes)?;
        }
        files[i] = Some(bytes);
    }
    let mut index = RemoteIndex::default();
    for ((pack, _), bytes) in packs.iter().zip(files) {
        let bytes = bytes.expect("every index is cached or downloaded");
        index.packs.push(Arc::new(decode(client, pack, &layout::index_file(pack), bytes)?));
    }
    Ok((index, fetches))
}

/// Fetches the indexes of `packs` into memory only (a survey that must not write).
pub async fn fetch(client: &Client, packs: &[(ObjectId, ObjectId)]) -> Result<RemoteIndex, TransportError> {
    let mut index = RemoteIndex::default();
    for ((pack, _), bytes) in packs.iter().zip(download_all(client, packs).await?) {
        index.packs.push(Arc::new(decode(client, pack, &layout::index_file(pack), bytes)?));
    }
    Ok(index)
}

/// Index downloads in flight at once: a full pull needs one index per release it reuses, and on a
/// real link each costs a round trip.
const INDEXES_IN_FLIGHT: usize = 4;

/// Downloads the index files of `packs` (pack id, index hash), several at a time; returns them in
/// the order given.
async fn download_all(client: &Client, packs: &[(ObjectId, ObjectId)]) -> Result<Vec<Vec<u8>>, TransportError> {
    let mut files = vec![Vec::new(); packs.len()];
    let mut pending = packs.iter().copied().enumerate();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < INDEXES_IN_FLIGHT {
            let Some((i, (pack, hash))) = pending.next() else { break };
            let client = client.clone();
            tasks.spawn(async move {
                (i, download(&client, &layout::index_file(&pack), &hash, client.options().max_metadata).await)
            });
        }
        let Some(done) = tasks.join_next().await else { return Ok(files) };
        let (i, bytes) = done.map_err(|e| TransportError::Task { what: "an index download", reason: e.to_string() })?;
        files[i] = bytes?;
    }
}

/// Fetches an index file of at most `max` bytes and checks it against the summary's hash (an
/// index that does not match is this URL's failure: the next URL is tried).
pub(crate) async fn download(
    client: &Client,
    name: &str,
    hash: &ObjectId,
    max: u64,
) -> Result<Vec<u8>, TransportError> {
    let check = |bytes: &[u8]| {
        let actual = ObjectId::of(bytes);
        if actual == *hash {
            return Ok(());
        }
        Err(TransportError::Invalid {
            what: name.into(),
            url: String::new(),
            reason: format!("it hashes to {actual}, the summary says {hash}: corrupt data"),
        })
    };
    Ok(client.get_parsed(name, max, check).await?.0)
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
    Ok(PackEntries {
        pack: *pack_id,
        path: layout::pack_file(pack_id),
        index_bytes: bytes.len() as u64,
        entries: decoded.entries,
    })
}
