//! Fetching objects by the pack ranges a plan lists: stream several Range requests at once and
//! split each body into entries as it arrives — every wanted object is decompressed within its
//! limit, verified against its id and staged; memory per request stays at one entry.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use osdeploy_store::object::ObjectKind;
use osdeploy_store::pack::{self, ENTRY_HEADER_LEN, IndexEntry};
use osdeploy_store::{ObjectId, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::client::{BodySink, Client, Span};
use crate::error::TransportError;
use crate::index::{PackEntries, RemoteIndex};
use crate::plan::PackRead;
use crate::staging::Staging;

/// Raw bytes staged between two calls of `on_staged`.
const SETTLE_EVERY: usize = 8 << 20;

/// Compressed bytes of whole entries a Range task gathers before it has them decoded: a hand-off
/// per piece of a body (16 KiB or so) cost a full pull 15 % of its speed, 1 MiB batches 15 MiB of
/// memory (docs/benchmarks.md §4).
const DECODE_BATCH: usize = 256 << 10;

/// A verified object on its way from a request to the staging area.
type Verified = (ObjectId, ObjectKind, Vec<u8>);

/// Fetches `wanted` objects into `staged` by `reads` (which cover them: see
/// [`crate::plan::plan_reads`]), `in_flight` requests at a time. Verified objects flow to this
/// task through a short channel (so a slow consumer slows the transfer down instead of filling
/// memory) and are staged in memory; every [`SETTLE_EVERY`] bytes, and at the end, `on_staged` is
/// told which objects arrived and settles them (see [`Staging::settle`]).
pub async fn fetch(
    client: &Client,
    index: &RemoteIndex,
    reads: &[PackRead],
    wanted: HashSet<(ObjectId, ObjectKind)>,
    staged: &mut Staging,
    in_flight: usize,
    mut on_staged: impl FnMut(&mut Staging, Vec<(ObjectId, ObjectKind)>) -> Result<(), TransportError>,
) -> Result<(), TransportError> {
    let reads = reads
        .iter()
        .map(|read| {
            let entries = index.pack(&read.pack).ok_or_else(|| TransportError::Invalid {
                what: format!("pack {}", read.pack),
                url: client.remote_name().into(),
                reason: "the plan reads a pack the remote's summary does not list".into(),
            })?;
            Ok((entries.clone(), read.clone()))
        })
        .collect::<Result<Vec<_>, TransportError>>()?;
    let progress = &client.progress;
    progress.bytes_expected.fetch_add(reads.iter().map(|(_, r)| r.len).sum(), Ordering::Relaxed);
    progress.objects_expected.fetch_add(wanted.len() as u64, Ordering::Relaxed);
    let wanted = Arc::new(wanted);
    let (sender, mut receiver) = mpsc::channel::<Verified>(64);
    let mut pending = reads.into_iter();
    let mut tasks = JoinSet::new();
    let (mut arrived, mut arrived_bytes) = (Vec::new(), 0);
    loop {
        while tasks.len() < in_flight.max(1) {
            let Some((entries, read)) = pending.next() else { break };
            let client = client.clone();
            let mut sink = RangeSink::new(read, entries, wanted.clone(), sender.clone());
            tasks.spawn(async move {
                let path = sink.entries.path.clone();
                client.stream(&path, Span::Range { offset: sink.read.offset, len: sink.read.len }, &mut sink).await
            });
        }
        if tasks.is_empty() {
            // Every task delivered all it had before it ended: what is left is in the channel.
            while let Ok((id, kind, raw)) = receiver.try_recv() {
                progress.objects.fetch_add(1, Ordering::Relaxed);
                staged.put(kind, id, &raw);
                arrived.push((id, kind));
            }
            return tokio::task::block_in_place(|| on_staged(staged, arrived));
        }
        tokio::select! {
            biased;
            Some((id, kind, raw)) = receiver.recv() => {
                progress.objects.fetch_add(1, Ordering::Relaxed);
                arrived_bytes += raw.len();
                staged.put(kind, id, &raw);
                arrived.push((id, kind));
                if arrived_bytes >= SETTLE_EVERY {
                    // Writing files (and rebuilding them from deltas) leaves this worker to the
                    // other tasks meanwhile.
                    tokio::task::block_in_place(|| on_staged(staged, std::mem::take(&mut arrived)))?;
                    arrived_bytes = 0;
                }
            }
            Some(done) = tasks.join_next() => {
                done.map_err(|e| TransportError::Task { what: "a Range request", reason: e.to_string() })??;
            }
        }
    }
}

/// Splits one range's body into pack entries as it streams in, and sends the wanted ones on once
/// they verify. Decompressing and hashing run on rayon's pool, not on the runtime's workers.
struct RangeSink {
    read: PackRead,
    entries: Arc<PackEntries>,
    wanted: Arc<HashSet<(ObjectId, ObjectKind)>>,
    sender: mpsc::Sender<Verified>,
    /// Wanted entries, whole, not yet decoded and sent.
    complete: Vec<(IndexEntry, Vec<u8>)>,
    /// Their compressed bytes.
    complete_bytes: usize,
    /// Bytes received but not yet consumed (at most one entry).
    pending: Vec<u8>,
    /// The pack offset of `pending[0]`.
    offset: u64,
}

impl RangeSink {
    fn new(
        read: PackRead,
        entries: Arc<PackEntries>,
        wanted: Arc<HashSet<(ObjectId, ObjectKind)>>,
        sender: mpsc::Sender<Verified>,
    ) -> Self {
        let offset = read.offset;
        RangeSink {
            read,
            entries,
            wanted,
            sender,
            complete: Vec::new(),
            complete_bytes: 0,
            pending: Vec::new(),
            offset,
        }
    }

    fn invalid(&self, reason: String) -> TransportError {
        invalid(&self.read, reason)
    }
}

/// An error in the range `read` of a pack.
fn invalid(read: &PackRead, reason: String) -> TransportError {
    TransportError::Invalid {
        what: format!("pack {} bytes {}+{}", read.pack, read.offset, read.len),
        url: String::new(),
        reason,
    }
}

/// Decompresses and verifies whole entries of the range `read`.
fn decode(read: &PackRead, complete: Vec<(IndexEntry, Vec<u8>)>) -> Result<Vec<Verified>, TransportError> {
    let pack = read.pack.to_hex();
    complete
        .into_iter()
        .map(|(entry, bytes)| match pack::decode_entry(&bytes, &entry, &pack) {
            Ok(raw) => Ok((entry.id, entry.kind, raw)),
            Err(StoreError::HashMismatch { actual, .. }) => {
                Err(invalid(read, format!("{} object {} hashes to {actual}: corrupt data", entry.kind, entry.id)))
            }
            Err(e) => Err(invalid(read, e.to_string())),
        })
        .collect()
}

impl BodySink for RangeSink {
    /// What an earlier attempt delivered was verified and is kept; the staging area ignores
    /// the objects it sends again.
    fn reset(&mut self) -> Result<(), TransportError> {
        self.pending.clear();
        self.complete.clear();
        self.complete_bytes = 0;
        self.offset = self.read.offset;
        Ok(())
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
                self.complete.push((*entry, bytes.to_vec()));
                self.complete_bytes += bytes.len();
            }
            start += span;
            self.offset += span as u64;
        }
        self.pending.drain(..start);
        Ok(())
    }

    fn deliver(&mut self, end: bool) -> impl Future<Output = Result<(), TransportError>> + Send {
        let complete = if end || self.complete_bytes >= DECODE_BATCH {
            self.complete_bytes = 0;
            std::mem::take(&mut self.complete)
        } else {
            Vec::new()
        };
        let (read, sender) = (self.read.clone(), self.sender.clone());
        async move {
            if complete.is_empty() {
                return Ok(());
            }
            // On rayon's pool: its few threads keep the decoded buffers in few malloc arenas
            // (tokio's blocking pool, a thread per waiting call, cost a full pull 20–30 MiB more).
            let (decoded, receive) = tokio::sync::oneshot::channel();
            rayon::spawn(move || {
                let _ = decoded.send(decode(&read, complete));
            });
            let verified = receive
                .await
                .map_err(|_| TransportError::Task { what: "decoding a range", reason: "it panicked".into() })??;
            for object in verified {
                // The receiver is gone only when the fetch has already failed.
                sender.send(object).await.map_err(|_| TransportError::Abandoned)?;
            }
            Ok(())
        }
    }

    fn finish(&mut self) -> Result<(), TransportError> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(self.invalid(format!("the entry at pack offset {} is cut off", self.offset)))
        }
    }
}
