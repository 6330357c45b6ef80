//! Fetching objects by their pack ranges: group the wanted objects by pack, coalesce
//! neighbouring ranges, stream several Range requests at once, and split each body into entries
//! as it arrives — every wanted object is decompressed within its limit, verified against its
//! id and staged; memory per request stays at one entry.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use osdeploy_store::object::ObjectKind;
use osdeploy_store::pack::{self, ENTRY_HEADER_LEN};
use osdeploy_store::{ObjectId, StoreError};
use tokio::task::JoinSet;

use crate::client::{BodySink, Client};
use crate::error::TransportError;
use crate::index::{PackEntries, RemoteIndex};
use crate::plan::{CoalesceOptions, PackRead, coalesce};
use crate::staging::{RangeWriter, Staging};

/// The coalesced reads that fetch `wanted`, each with its pack's entries.
pub fn reads(
    index: &RemoteIndex,
    wanted: &[(ObjectId, ObjectKind)],
    options: CoalesceOptions,
) -> Result<Vec<(Arc<PackEntries>, PackRead)>, TransportError> {
    type Spans = (Arc<PackEntries>, Vec<(u64, u64)>);
    let mut by_pack: BTreeMap<ObjectId, Spans> = BTreeMap::new();
    for (id, kind) in wanted {
        let (pack, entry) = index.locate(*kind, id).ok_or_else(|| TransportError::Invalid {
            what: "the remote's pack indexes".into(),
            url: "summary".into(),
            reason: format!("no pack holds {kind} object {id}"),
        })?;
        by_pack.entry(pack.pack).or_insert_with(|| (pack.clone(), Vec::new())).1.push((entry.offset, entry.span()));
    }
    let mut reads = Vec::new();
    for (pack, (entries, mut spans)) in by_pack {
        spans.sort_unstable();
        reads.extend(coalesce(&pack.to_hex(), &spans, options).into_iter().map(|r| (entries.clone(), r)));
    }
    Ok(reads)
}

/// Fetches `wanted` objects into `staged`, `in_flight` requests at a time; `on_staged` is told
/// about the objects of each range once they are staged (the fetch goes on meanwhile).
pub async fn fetch(
    client: &Client,
    index: &RemoteIndex,
    wanted: &[(ObjectId, ObjectKind)],
    staged: &mut Staging,
    in_flight: usize,
    coalesce: CoalesceOptions,
    mut on_staged: impl FnMut(&Staging, Vec<(ObjectId, ObjectKind)>) -> Result<(), TransportError>,
) -> Result<(), TransportError> {
    let reads = reads(index, wanted, coalesce)?;
    let progress = &client.progress;
    progress.bytes_expected.fetch_add(reads.iter().map(|(_, r)| r.len).sum(), Ordering::Relaxed);
    progress.objects_expected.fetch_add(wanted.len() as u64, Ordering::Relaxed);
    let wanted: Arc<HashSet<(ObjectId, ObjectKind)>> = Arc::new(wanted.iter().copied().collect());
    let mut pending = reads.into_iter();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < in_flight.max(1) {
            let Some((entries, read)) = pending.next() else { break };
            let client = client.clone();
            let mut sink = RangeSink::new(read, entries, wanted.clone(), staged.range_writer()?);
            tasks.spawn(async move {
                let path = format!("packs/{}.pack", sink.read.pack);
                client.stream(&path, Some((sink.read.offset, sink.read.len)), &mut sink).await?;
                client.progress.objects.fetch_add(sink.verified, Ordering::Relaxed);
                Ok::<_, TransportError>(sink.writer)
            });
        }
        let Some(done) = tasks.join_next().await else { break };
        let writer = done.map_err(|e| TransportError::Config(format!("fetch task failed: {e}")))??;
        let committed = staged.commit(writer)?;
        on_staged(staged, committed)?;
    }
    Ok(())
}

/// Fetches the metadata objects of one level of a tree walk that `absent` says are missing, and
/// returns how many objects were fetched. A release's metadata lies together in a pack of its
/// own: the first time the walk needs an object of a pack, every absent metadata object of that
/// pack comes along in one range, so a tree costs a request per release it reuses, not one per
/// level. `prefetched` remembers those packs.
pub async fn fetch_metadata(
    client: &Client,
    index: &RemoteIndex,
    level: &[(ObjectId, ObjectKind)],
    staged: &mut Staging,
    prefetched: &mut HashSet<ObjectId>,
    absent: impl Fn(&Staging, ObjectKind, &ObjectId) -> Result<bool, TransportError>,
    options: crate::pull::PullOptions,
) -> Result<u64, TransportError> {
    let mut lacking = HashSet::new();
    for (id, kind) in level {
        if !absent(staged, *kind, id)? {
            continue;
        }
        lacking.insert((*id, *kind));
        if let Some((pack, _)) = index.locate(*kind, id)
            && prefetched.insert(pack.pack)
        {
            for e in pack.entries.iter().filter(|e| e.kind != ObjectKind::Chunk) {
                if absent(staged, e.kind, &e.id)? {
                    lacking.insert((e.id, e.kind));
                }
            }
        }
    }
    let lacking: Vec<_> = lacking.into_iter().collect();
    fetch(client, index, &lacking, staged, options.in_flight, options.coalesce, |_, _| Ok(())).await?;
    Ok(lacking.len() as u64)
}

/// Splits one range's body into pack entries as it streams in.
struct RangeSink {
    read: PackRead,
    entries: Arc<PackEntries>,
    wanted: Arc<HashSet<(ObjectId, ObjectKind)>>,
    writer: RangeWriter,
    /// Bytes received but not yet consumed (at most one entry).
    pending: Vec<u8>,
    /// The pack offset of `pending[0]`.
    offset: u64,
    /// Wanted objects verified and staged.
    verified: u64,
}

impl RangeSink {
    fn new(
        read: PackRead,
        entries: Arc<PackEntries>,
        wanted: Arc<HashSet<(ObjectId, ObjectKind)>>,
        writer: RangeWriter,
    ) -> Self {
        let offset = read.offset;
        RangeSink { read, entries, wanted, writer, pending: Vec::new(), offset, verified: 0 }
    }

    fn invalid(&self, reason: String) -> TransportError {
        TransportError::Invalid {
            what: format!("pack {} bytes {}+{}", self.read.pack, self.read.offset, self.read.len),
            url: String::new(),
            reason,
        }
    }
}

impl BodySink for RangeSink {
    fn reset(&mut self) -> Result<(), TransportError> {
        self.pending.clear();
        self.offset = self.read.offset;
        self.verified = 0;
        Ok(self.writer.reset()?)
    }

    fn data(&mut self, piece: &[u8]) -> Result<(), TransportError> {
        self.pending.extend_from_slice(piece);
        let mut start = 0usize;
        while let Some(header) = self.pending.get(start..start + ENTRY_HEADER_LEN as usize) {
            let at = self.offset - self.read.offset;
            let Some(kind) = ObjectKind::from_u8(header[0]) else {
                return Err(self.invalid(format!("unknown object kind {} at {at}", header[0])));
            };
            let id = ObjectId(header[10..42].try_into().expect("32 bytes"));
            let Some(entry) = self.entries.find(kind, &id).filter(|e| e.offset == self.offset) else {
                return Err(self.invalid(format!("{kind} {id} at {at} is not where the pack index says")));
            };
            let span = entry.span() as usize;
            let Some(bytes) = self.pending.get(start..start + span) else { break };
            if self.wanted.contains(&(id, kind)) {
                let raw = match pack::decode_entry(bytes, entry, &self.read.pack) {
                    Ok(raw) => raw,
                    Err(StoreError::HashMismatch { actual, .. }) => {
                        return Err(self.invalid(format!("{kind} object {id} hashes to {actual}: corrupt data")));
                    }
                    Err(e) => return Err(self.invalid(e.to_string())),
                };
                self.writer.put(kind, id, &raw)?;
                self.verified += 1;
            }
            start += span;
            self.offset += span as u64;
        }
        self.pending.drain(..start);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), TransportError> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(self.invalid(format!("the entry at pack offset {} is cut off", self.offset)))
        }
    }
}
