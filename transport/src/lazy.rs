//! Reads from a remote on demand, for a mount of a remote commit: at connection, the summary
//! (signature checked), the commit's signature, the pack indexes and the commit's metadata —
//! nothing else; afterwards, chunks when they are asked for. Both go through the verified,
//! coalesced Range requests of a pull ([`crate::survey::walk`], [`crate::fetch::fetch`]): every
//! object is decompressed within its limit and checked against its id before it is returned.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use osdeploy_store::fsutil::{remove_orphaned_tmp, unique_tmp_name};
use osdeploy_store::object::ObjectKind;
use osdeploy_store::{ChunkId, CommitId, ObjectId, RefName, StoreError};

use crate::client::{Client, HttpOptions, Progress};
use crate::error::TransportError;
use crate::index::RemoteIndex;
use crate::plan::{CoalesceOptions, plan_reads};
use crate::remote::Remote;
use crate::staging::Staging;
use crate::summary::{self, fetch_summary, verify_commit};
use crate::survey;

/// A remote, connected for reads on demand.
pub struct LazyRemote {
    runtime: &'static tokio::runtime::Runtime,
    client: Client,
    index: RemoteIndex,
    /// Where fetches stage their objects for a moment.
    scratch: PathBuf,
}

/// What [`LazyRemote::connect`] brings.
pub struct Connected {
    /// The remote, for chunk reads.
    pub remote: LazyRemote,
    /// The commit the branch names.
    pub commit: CommitId,
    /// The commit's metadata (commit, dirtree and file objects), staged under the scratch
    /// directory; [`Staging::clear`] removes it.
    pub metadata: Staging,
}

impl LazyRemote {
    /// Connects to `remote` and fetches what `branch`'s commit consists of except its chunks;
    /// `scratch` (created) holds staged objects meanwhile.
    pub fn connect(
        remote: &Remote,
        branch: &RefName,
        http: HttpOptions,
        scratch: &Path,
    ) -> Result<Connected, TransportError> {
        // What mounts killed in the middle of a fetch left behind.
        remove_orphaned_tmp(scratch, "mount-")?;
        let runtime = crate::runtime()?;
        let client = Client::new(remote, http, Arc::new(Progress::default()))?;
        let metadata_dir = scratch.join(unique_tmp_name("mount-metadata"));
        let (commit, index, metadata) = runtime.block_on(async {
            let fetched = fetch_summary(&client, remote).await?;
            let (commit, _) = summary::branch(&fetched.summary, remote, branch)?;
            verify_commit(&client, remote, &commit).await?;
            let index = crate::index::fetch(&client, &summary::packs(&fetched.summary)).await?;
            let mut staged = Staging::open(metadata_dir)?;
            let nothing_held: HashSet<(ObjectId, ObjectKind)> = HashSet::new();
            let source = survey::Remote { client: &client, index: &index, staged: &mut staged, in_flight: 4 };
            survey::walk(source, &nothing_held, commit, CoalesceOptions::default()).await?;
            Ok::<_, TransportError>((commit, index, staged))
        })?;
        let remote = LazyRemote { runtime, client, index, scratch: scratch.to_owned() };
        Ok(Connected { remote, commit, metadata })
    }

    /// Fetches `chunks` (verified), in as few Range requests as their places in the packs allow;
    /// returns their bytes in the same order. Nothing is written to disk: the objects are taken
    /// from the staging area's memory as they arrive.
    pub fn fetch_chunks(&self, chunks: &[ChunkId]) -> Result<Vec<Vec<u8>>, TransportError> {
        let wanted: Vec<(ObjectId, ObjectKind)> = chunks.iter().map(|c| (c.0, ObjectKind::Chunk)).collect();
        let reads = plan_reads(&self.index, &wanted, CoalesceOptions::default())?;
        let mut staged = Staging::open(self.scratch.join(unique_tmp_name("mount-chunks")))?;
        let mut arrived: HashMap<ObjectId, Vec<u8>> = HashMap::new();
        let fetched = self.runtime.block_on(crate::fetch::fetch(
            &self.client,
            &self.index,
            &reads,
            wanted.iter().copied().collect(),
            &mut staged,
            4,
            |staged, objects| {
                for (id, kind) in objects {
                    arrived.insert(id, staged.get(kind, &id)?);
                }
                Ok(staged.settle(|_, _| false)?)
            },
        ));
        staged.clear()?;
        fetched?;
        chunks
            .iter()
            .map(|c| {
                let missing = StoreError::ObjectMissing { kind: ObjectKind::Chunk, id: c.0 };
                arrived.get(&c.0).cloned().ok_or(TransportError::Store(missing))
            })
            .collect()
    }

    /// Requests made and bytes received so far.
    pub fn traffic(&self) -> (u64, u64) {
        let progress = &self.client.progress;
        (progress.requests.load(Ordering::Relaxed), progress.bytes.load(Ordering::Relaxed))
    }
}
