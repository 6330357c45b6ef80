//! HTTP(S) client over a remote's URLs: failover in order, bounded retries with backoff,
//! abandoning connections that make no progress, an optional rate limit shared by all requests,
//! and live byte and request counters for progress displays.
//!
//! Bodies are streamed to a [`BodySink`] piece by piece, so memory does not grow with the size
//! of a response, and a sink that rejects the data (it does not verify) makes the client try the
//! next URL: a corrupt edge mirror falls back to the origin like a dead one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use osdeploy_store::StoreError;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::TransportError;
use crate::remote::Remote;

/// How many rounds over all URLs before giving up.
const ROUNDS: u32 = 3;

/// How the client talks to servers.
#[derive(Clone, Copy, Debug)]
pub struct HttpOptions {
    /// A connection that delivers nothing for this long is abandoned (and the next URL tried).
    pub timeout: Duration,
    /// At most this many body bytes per second over all requests together.
    pub limit_rate: Option<u64>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions { timeout: Duration::from_secs(30), limit_rate: None }
    }
}

/// Live counters of a transfer, shared with whoever displays its progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests sent (successful or not).
    pub requests: AtomicU64,
    /// Body bytes received.
    pub bytes: AtomicU64,
    /// Body bytes the current plan expects in all (0 while unknown).
    pub bytes_expected: AtomicU64,
    /// Objects verified.
    pub objects: AtomicU64,
    /// Objects the current plan expects in all.
    pub objects_expected: AtomicU64,
}

/// Receives a response body piece by piece.
pub trait BodySink: Send {
    /// Called before every attempt: forget what an earlier, failed attempt delivered.
    fn reset(&mut self) -> Result<(), TransportError>;
    /// Takes the next piece of the body. A [`TransportError::Store`] error (local trouble, such
    /// as a full disk) ends the request; any other error rejects this URL's data and the next
    /// URL is tried.
    fn data(&mut self, piece: &[u8]) -> Result<(), TransportError>;
    /// Called after each piece to hand on what [`Self::data`] produced; a sink may wait here,
    /// which slows the transfer down to the pace of its consumer.
    fn deliver(&mut self) -> impl Future<Output = Result<(), TransportError>> + Send {
        std::future::ready(Ok(()))
    }
    /// Called once the whole body has arrived; an error rejects this URL's data.
    fn finish(&mut self) -> Result<(), TransportError> {
        Ok(())
    }
}

/// Appends a body to a file (a download).
struct FileSink<'f> {
    file: &'f mut File,
    path: &'f Path,
}

impl BodySink for FileSink<'_> {
    fn reset(&mut self) -> Result<(), TransportError> {
        Ok(())
    }
    fn data(&mut self, piece: &[u8]) -> Result<(), TransportError> {
        self.file.write_all(piece).map_err(|error| StoreError::Io { path: self.path.into(), error }.into())
    }
}

/// Collects a body in memory (small files: summaries, signatures, indexes) and, once it is
/// complete, parses it: a body that does not parse rejects this URL's data.
struct VecSink<P, T> {
    bytes: Vec<u8>,
    parse: P,
    parsed: Option<T>,
}

impl<P: FnMut(&[u8]) -> Result<T, TransportError> + Send, T: Send> BodySink for VecSink<P, T> {
    fn reset(&mut self) -> Result<(), TransportError> {
        self.bytes.clear();
        Ok(())
    }

    fn data(&mut self, piece: &[u8]) -> Result<(), TransportError> {
        self.bytes.extend_from_slice(piece);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), TransportError> {
        self.parsed = Some((self.parse)(&self.bytes)?);
        Ok(())
    }
}

/// Shares a byte rate among all requests: each piece is given the next free slot of the
/// schedule and its reader waits until the slot has passed.
#[derive(Debug)]
struct RateLimit {
    bytes_per_sec: u64,
    next_free: Mutex<Instant>,
}

impl RateLimit {
    async fn take(&self, bytes: usize) {
        let until = {
            let mut next = self.next_free.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            *next
        };
        tokio::time::sleep_until(until).await;
    }
}

/// The client could not be built: the message carries every cause (reqwest's own says only
/// "builder error").
fn setup_error(error: &reqwest::Error) -> TransportError {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if reason.contains("certificate") {
        reason.push_str(" (are the system's CA certificates installed? Debian: ca-certificates)");
    }
    TransportError::Setup { what: "the HTTP client", reason }
}

/// A client for one remote; cheap to clone (shared connection pool, counters and rate limit).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    remote: Arc<Remote>,
    limit: Option<Arc<RateLimit>>,
    /// The transfer's live counters.
    pub progress: Arc<Progress>,
}

impl Client {
    /// A client for `remote`, counting into `progress`.
    pub fn new(remote: &Remote, options: HttpOptions, progress: Arc<Progress>) -> Result<Self, TransportError> {
        if remote.urls.is_empty() {
            return Err(TransportError::Remote(format!("remote {} has no URL", remote.name)));
        }
        if options.limit_rate == Some(0) {
            return Err(TransportError::Options("a rate limit of 0 bytes/s would never finish".into()));
        }
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(options.timeout)
                .read_timeout(options.timeout)
                .user_agent(concat!("osdeploy/", env!("CARGO_PKG_VERSION")))
        };
        let http = match builder().build() {
            Ok(http) => http,
            // The system's CA certificates cannot be loaded (a minimal image without
            // ca-certificates): plain HTTP remotes, whose content the signed summary vouches for,
            // need none.
            Err(_) if remote.urls.iter().all(|url| url.starts_with("http://")) => {
                builder().tls_certs_only([]).build().map_err(|e| setup_error(&e))?
            }
            Err(e) => return Err(setup_error(&e)),
        };
        let limit = options
            .limit_rate
            .map(|bytes_per_sec| Arc::new(RateLimit { bytes_per_sec, next_free: Mutex::new(Instant::now()) }));
        Ok(Client { http, remote: Arc::new(remote.clone()), limit, progress })
    }

    /// The remote's name.
    pub fn remote_name(&self) -> &str {
        &self.remote.name
    }

    /// Fetches `path` (relative to the repository root) whole, into memory.
    pub async fn get(&self, path: &str) -> Result<Vec<u8>, TransportError> {
        Ok(self.get_parsed(path, |_| Ok(())).await?.0)
    }

    /// Fetches `path` whole and parses it with `parse`; data that does not parse (an error other
    /// than [`TransportError::Store`]) counts as this URL's failure and the next URL is tried.
    /// Returns the bytes and what `parse` made of them.
    pub async fn get_parsed<T: Send>(
        &self,
        path: &str,
        parse: impl FnMut(&[u8]) -> Result<T, TransportError> + Send,
    ) -> Result<(Vec<u8>, T), TransportError> {
        let mut sink = VecSink { bytes: Vec::new(), parse, parsed: None };
        self.stream(path, None, &mut sink).await?;
        let parsed = sink.parsed.expect("a body that was streamed was parsed");
        Ok((sink.bytes, parsed))
    }

    /// Streams `len` bytes of `path` from `offset` (a Range request) into `sink`, trying the
    /// remote's URLs in order, for [`ROUNDS`] rounds, until one delivers data the sink accepts.
    pub async fn stream(
        &self,
        path: &str,
        range: Option<(u64, u64)>,
        sink: &mut impl BodySink,
    ) -> Result<(), TransportError> {
        let mut urls = Failover::new(&self.remote, path);
        while let Some(url) = urls.next().await {
            sink.reset()?;
            match self.try_stream(&url, range, sink).await {
                Ok(()) => return Ok(()),
                Err(e) => urls.failed(e)?,
            }
        }
        Err(urls.give_up())
    }

    async fn try_stream(
        &self,
        url: &str,
        range: Option<(u64, u64)>,
        sink: &mut impl BodySink,
    ) -> Result<(), TransportError> {
        let header = range.map(|(offset, len)| format!("bytes={offset}-{}", offset + len - 1));
        let response = self.send(url, header).await?;
        let status = response.status().as_u16();
        if range.is_some() && status == 200 {
            return Err(TransportError::Invalid {
                what: "a Range request".into(),
                url: url.into(),
                reason: "the server ignored the Range header (answered 200, not 206); serve the repository with a server that supports Range requests".into(),
            });
        }
        if status != if range.is_some() { 206 } else { 200 } {
            return Err(TransportError::Status { url: url.into(), status });
        }
        let received = self.read_body(url, response, sink).await?;
        if let Some((_, len)) = range
            && received != len
        {
            return Err(TransportError::Invalid {
                what: "a Range response".into(),
                url: url.into(),
                reason: format!("{received} bytes instead of {len} (truncated)"),
            });
        }
        sink.finish().map_err(|e| within(url, e))
    }

    /// Downloads `path` to `dest`, appending to what `dest` already holds (a Range request from
    /// its length: an interrupted download resumes). Returns the final length of `dest`. The
    /// caller verifies the content.
    pub async fn download(&self, path: &str, dest: &Path) -> Result<u64, TransportError> {
        let io = |error| TransportError::Store(StoreError::Io { path: dest.into(), error });
        let mut file = OpenOptions::new().create(true).append(true).open(dest).map_err(io)?;
        let mut urls = Failover::new(&self.remote, path);
        while let Some(url) = urls.next().await {
            match self.try_download(&url, &mut file, dest).await {
                Ok(len) => return Ok(len),
                Err(e) => urls.failed(e)?,
            }
        }
        Err(urls.give_up())
    }

    async fn try_download(&self, url: &str, file: &mut File, dest: &Path) -> Result<u64, TransportError> {
        let io = |error| TransportError::Store(StoreError::Io { path: dest.into(), error });
        let have = file.metadata().map_err(io)?.len();
        let response = self.send(url, (have > 0).then(|| format!("bytes={have}-"))).await?;
        match response.status().as_u16() {
            206 => {}
            200 => file.set_len(0).map_err(io)?,
            // Nothing left past what we hold: the caller's verification decides.
            416 if have > 0 => return Ok(have),
            status => return Err(TransportError::Status { url: url.into(), status }),
        }
        self.read_body(url, response, &mut FileSink { file, path: dest }).await?;
        file.metadata().map(|m| m.len()).map_err(io)
    }

    async fn send(&self, url: &str, range: Option<String>) -> Result<reqwest::Response, TransportError> {
        let mut request = self.http.get(url);
        if let Some(range) = range {
            request = request.header(reqwest::header::RANGE, range);
        }
        self.progress.requests.fetch_add(1, Ordering::Relaxed);
        request.send().await.map_err(|e| request_error(url, e))
    }

    /// Feeds the body to `sink`, honouring the rate limit; returns the bytes received.
    async fn read_body(
        &self,
        url: &str,
        mut response: reqwest::Response,
        sink: &mut impl BodySink,
    ) -> Result<u64, TransportError> {
        let mut received = 0u64;
        while let Some(bytes) = response.chunk().await.map_err(|e| request_error(url, e))? {
            if let Some(limit) = &self.limit {
                limit.take(bytes.len()).await;
            }
            self.progress.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            received += bytes.len() as u64;
            sink.data(&bytes).map_err(|e| within(url, e))?;
            sink.deliver().await?;
        }
        Ok(received)
    }
}

/// The URLs to try for one file: the remote's URLs in order, for [`ROUNDS`] rounds with backoff.
/// Local trouble ([`TransportError::Store`]) ends the attempts at once; so does a round in which
/// every server said the file does not exist.
struct Failover<'r> {
    remote: &'r Remote,
    path: &'r str,
    round: u32,
    next_url: usize,
    all_absent: bool,
    last: Option<TransportError>,
}

impl<'r> Failover<'r> {
    fn new(remote: &'r Remote, path: &'r str) -> Self {
        Failover { remote, path, round: 0, next_url: 0, all_absent: true, last: None }
    }

    /// The next URL to try (after a pause when a new round starts), or None when all is tried.
    async fn next(&mut self) -> Option<String> {
        if self.next_url == self.remote.urls.len() {
            self.round += 1;
            if self.round == ROUNDS || self.all_absent {
                return None;
            }
            self.next_url = 0;
            self.all_absent = true;
            tokio::time::sleep(Duration::from_millis(250 << self.round)).await;
        }
        let base = &self.remote.urls[self.next_url];
        self.next_url += 1;
        Some(format!("{}/{}", base.trim_end_matches('/'), self.path))
    }

    /// Notes a failed attempt; local trouble is returned at once.
    fn failed(&mut self, e: TransportError) -> Result<(), TransportError> {
        if let TransportError::Store(_) = e {
            return Err(e);
        }
        // An absent file is reported by the caller if it matters (an optional file may be absent).
        if e.is_absent() {
            tracing::debug!("{e}");
        } else {
            tracing::warn!("{e}");
        }
        self.all_absent &= e.is_absent();
        self.last = Some(e);
        Ok(())
    }

    /// The error after every attempt failed.
    fn give_up(self) -> TransportError {
        TransportError::AllUrlsFailed {
            remote: self.remote.name.clone(),
            last: Box::new(self.last.expect("a remote has at least one URL")),
        }
    }
}

fn request_error(url: &str, e: reqwest::Error) -> TransportError {
    // reqwest's Display omits the cause ("error decoding response body"); give the whole chain.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    TransportError::Request { url: url.to_string(), message }
}

/// Names the URL in a sink's complaint about the data it was given.
fn within(url: &str, e: TransportError) -> TransportError {
    match e {
        TransportError::Invalid { what, reason, .. } => TransportError::Invalid { what, url: url.into(), reason },
        other => other,
    }
}
