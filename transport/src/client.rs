//! HTTP(S) client over a remote's URLs: failover in order, bounded retries with backoff, an
//! optional rate limit shared by all requests, and live byte and request counters for progress
//! displays.
//!
//! Bodies are streamed to a [`BodySink`] piece by piece, so memory does not grow with the size
//! of a response, and a sink that rejects the data (it does not verify) makes the client try the
//! next URL: a corrupt edge mirror falls back to the origin like a dead one.
//!
//! Nothing a server sends may grow without bound: every request says how many bytes its answer
//! may hold ([`Span`]: a Range's length, a size the summary declares, or a fixed limit for files
//! nothing declares), and a [`Watch`] ends a response that stalls (nothing for `timeout`),
//! trickles (less than `speed_limit` bytes/s over `speed_time`) or outlasts `deadline`. Only time
//! spent waiting for the server counts: the rate limiter's pauses are the client's own.

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
use crate::remote::{Remote, redacted};

/// How many rounds over all URLs before giving up.
const ROUNDS: u32 = 3;

/// How the client talks to servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// A connection that delivers nothing for this long is abandoned (and the next URL tried).
    pub timeout: Duration,
    /// At most this many body bytes per second over all requests together.
    pub limit_rate: Option<u64>,
    /// A response slower than this many bytes per second over `speed_time` is abandoned (0: none).
    pub speed_limit: u64,
    /// The window `speed_limit` is measured over.
    pub speed_time: Duration,
    /// A response that has kept the client waiting this long in all is abandoned.
    pub deadline: Duration,
    /// The most bytes a file whose size nothing declares may have (the summary, pack indexes).
    pub max_metadata: u64,
    /// The pause before the second round of attempts at a file; it doubles for the third.
    pub backoff: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout: Duration::from_secs(30),
            limit_rate: None,
            speed_limit: 1024,
            speed_time: Duration::from_secs(30),
            deadline: Duration::from_secs(3600),
            max_metadata: 64 << 20,
            backoff: Duration::from_millis(500),
        }
    }
}

/// What part of a file a request asks for, and so how many bytes its answer may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// The whole file, of at most `max` bytes.
    Whole {
        /// The most bytes the file may have.
        max: u64,
    },
    /// `len` bytes from `offset` (a Range request), exactly.
    Range {
        /// The first byte.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
}

impl Span {
    /// The most bytes the answer may hold.
    fn max(self) -> u64 {
        match self {
            Span::Whole { max } => max,
            Span::Range { len, .. } => len,
        }
    }
}

/// The time one response keeps the client waiting, against the options' stall, speed and
/// deadline limits (the rate limiter's pauses are not waiting for the server).
struct Watch {
    options: HttpOptions,
    waited: Duration,
    window_waited: Duration,
    window_bytes: u64,
}

impl Watch {
    fn new(options: HttpOptions) -> Self {
        Watch { options, waited: Duration::ZERO, window_waited: Duration::ZERO, window_bytes: 0 }
    }

    /// Awaits `step` (a request or the next piece of a body) within the stall timeout and what
    /// is left of the deadline.
    async fn wait<T>(&mut self, url: &str, step: impl Future<Output = T>) -> Result<T, TransportError> {
        let left = self.options.deadline.saturating_sub(self.waited);
        let limit = self.options.timeout.min(left);
        let started = Instant::now();
        let outcome = tokio::time::timeout(limit, step).await;
        let spent = started.elapsed();
        self.waited += spent;
        self.window_waited += spent;
        outcome.map_err(|_| {
            let reason = if limit < self.options.timeout {
                format!("abandoned after the deadline of {} s for one response", self.options.deadline.as_secs())
            } else {
                format!("nothing received for {} s (the timeout)", self.options.timeout.as_secs())
            };
            TransportError::TooSlow { url: url.into(), reason }
        })
    }

    /// Counts `bytes` received; a window of `speed_time` spent waiting that brought fewer than
    /// `speed_limit` bytes a second ends the response.
    fn arrived(&mut self, url: &str, bytes: usize) -> Result<(), TransportError> {
        self.window_bytes += bytes as u64;
        let window = self.options.speed_time;
        if self.options.speed_limit == 0 || self.window_waited < window {
            return Ok(());
        }
        let rate = self.window_bytes as f64 / self.window_waited.as_secs_f64();
        if rate < self.options.speed_limit as f64 {
            return Err(TransportError::TooSlow {
                url: url.into(),
                reason: format!(
                    "{} bytes in {:.0} s is below the low-speed limit of {} bytes/s",
                    self.window_bytes,
                    self.window_waited.as_secs_f64(),
                    self.options.speed_limit
                ),
            });
        }
        (self.window_waited, self.window_bytes) = (Duration::ZERO, 0);
        Ok(())
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
    /// Called after each piece (`end` false) and once after the whole body (`end` true) to hand on
    /// what [`Self::data`] produced; a sink may wait here, which slows the transfer down to the pace
    /// of its consumer, and may hold back what it has until it is worth handing on.
    fn deliver(&mut self, end: bool) -> impl Future<Output = Result<(), TransportError>> + Send {
        let _ = end;
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

/// How far the rate limiter's schedule may lag behind the clock: the time a wait oversleeps (the
/// timer counts whole milliseconds, while a piece of a fast transfer takes a fraction of one) is
/// made up by the pieces after it, and after a pause at most this much is sent at once.
const RATE_SLACK: Duration = Duration::from_millis(20);

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
            let now = Instant::now();
            let start = (*next).max(now.checked_sub(RATE_SLACK).unwrap_or(now));
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            *next
        };
        if until > Instant::now() {
            tokio::time::sleep_until(until).await;
        }
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
    options: HttpOptions,
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
        if let Some(problem) = options.problem() {
            return Err(TransportError::Options(problem));
        }
        // No read timeout of reqwest's: it would count the rate limiter's pauses (a [`Watch`] does not).
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(options.timeout)
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
        Ok(Client { http, remote: Arc::new(remote.clone()), options, limit, progress })
    }

    /// The remote's name.
    pub fn remote_name(&self) -> &str {
        &self.remote.name
    }

    /// The options the client was made with.
    pub fn options(&self) -> &HttpOptions {
        &self.options
    }

    /// Fetches `path` (relative to the repository root) whole, into memory: at most `max` bytes.
    pub async fn get(&self, path: &str, max: u64) -> Result<Vec<u8>, TransportError> {
        Ok(self.get_parsed(path, max, |_| Ok(())).await?.0)
    }

    /// Fetches `path` whole (at most `max` bytes) and parses it with `parse`; data that does not
    /// parse (an error other than [`TransportError::Store`]) counts as this URL's failure and the
    /// next URL is tried. Returns the bytes and what `parse` made of them.
    pub async fn get_parsed<T: Send>(
        &self,
        path: &str,
        max: u64,
        parse: impl FnMut(&[u8]) -> Result<T, TransportError> + Send,
    ) -> Result<(Vec<u8>, T), TransportError> {
        let mut sink = VecSink { bytes: Vec::new(), parse, parsed: None };
        self.stream(path, Span::Whole { max }, &mut sink).await?;
        let parsed = sink.parsed.expect("a body that was streamed was parsed");
        Ok((sink.bytes, parsed))
    }

    /// Streams `span` of `path` into `sink`, trying the remote's URLs in order, for [`ROUNDS`]
    /// rounds, until one delivers data the sink accepts.
    pub async fn stream(&self, path: &str, span: Span, sink: &mut impl BodySink) -> Result<(), TransportError> {
        let mut urls = Failover::new(&self.remote, path, self.options.backoff);
        while let Some(url) = urls.next().await {
            sink.reset()?;
            match self.try_stream(&url, span, sink).await {
                Ok(()) => return Ok(()),
                Err(e) => urls.failed(e)?,
            }
        }
        Err(urls.give_up())
    }

    /// One attempt at `raw` (messages show it with its password hidden).
    async fn try_stream(&self, raw: &str, span: Span, sink: &mut impl BodySink) -> Result<(), TransportError> {
        let shown = redacted(raw);
        let url = shown.as_str();
        let range = match span {
            Span::Range { offset, len } => Some((offset, len)),
            Span::Whole { .. } => None,
        };
        let header = range.map(|(offset, len)| format!("bytes={offset}-{}", offset + len - 1));
        let mut watch = Watch::new(self.options);
        let response = self.send(raw, url, header, &mut watch).await?;
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
        let received = self.read_body(url, response, span.max(), &mut watch, sink).await?;
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

    /// Downloads `path`, of `size` bytes, to `dest`, appending to what `dest` already holds (a
    /// Range request from its length: an interrupted download resumes); `dest` never grows past
    /// `size`. Returns the final length of `dest`. The caller verifies the content.
    pub async fn download(&self, path: &str, dest: &Path, size: u64) -> Result<u64, TransportError> {
        let io = |error| TransportError::Store(StoreError::Io { path: dest.into(), error });
        let mut file = OpenOptions::new().create(true).append(true).open(dest).map_err(io)?;
        let mut urls = Failover::new(&self.remote, path, self.options.backoff);
        while let Some(url) = urls.next().await {
            match self.try_download(&url, &mut file, dest, size).await {
                Ok(len) => return Ok(len),
                Err(e) => urls.failed(e)?,
            }
        }
        Err(urls.give_up())
    }

    async fn try_download(&self, raw: &str, file: &mut File, dest: &Path, size: u64) -> Result<u64, TransportError> {
        let shown = redacted(raw);
        let url = shown.as_str();
        let io = |error| TransportError::Store(StoreError::Io { path: dest.into(), error });
        let mut have = file.metadata().map_err(io)?.len();
        let mut watch = Watch::new(self.options);
        let response = self.send(raw, url, (have > 0).then(|| format!("bytes={have}-")), &mut watch).await?;
        match response.status().as_u16() {
            206 => {}
            200 => {
                file.set_len(0).map_err(io)?;
                have = 0;
            }
            // Nothing left past what we hold: the caller's verification decides.
            416 if have > 0 => return Ok(have),
            status => return Err(TransportError::Status { url: url.into(), status }),
        }
        let max = size.saturating_sub(have);
        self.read_body(url, response, max, &mut watch, &mut FileSink { file, path: dest }).await?;
        file.metadata().map(|m| m.len()).map_err(io)
    }

    /// Sends a GET of `raw`; `url` is how messages show it.
    async fn send(
        &self,
        raw: &str,
        url: &str,
        range: Option<String>,
        watch: &mut Watch,
    ) -> Result<reqwest::Response, TransportError> {
        let mut request = self.http.get(raw);
        if let Some(range) = range {
            request = request.header(reqwest::header::RANGE, range);
        }
        self.progress.requests.fetch_add(1, Ordering::Relaxed);
        watch.wait(url, request.send()).await?.map_err(|e| request_error(url, e))
    }

    /// Feeds the body, of at most `max` bytes, to `sink` under `watch`, honouring the rate
    /// limit; returns the bytes received.
    async fn read_body(
        &self,
        url: &str,
        mut response: reqwest::Response,
        max: u64,
        watch: &mut Watch,
        sink: &mut impl BodySink,
    ) -> Result<u64, TransportError> {
        let too_large = |announced: Option<u64>| TransportError::TooLarge { url: url.into(), max, announced };
        if let Some(announced) = response.content_length().filter(|&len| len > max) {
            return Err(too_large(Some(announced)));
        }
        let mut received = 0u64;
        while let Some(bytes) = watch.wait(url, response.chunk()).await?.map_err(|e| request_error(url, e))? {
            watch.arrived(url, bytes.len())?;
            received += bytes.len() as u64;
            if received > max {
                return Err(too_large(None));
            }
            if let Some(limit) = &self.limit {
                limit.take(bytes.len()).await;
            }
            self.progress.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            sink.data(&bytes).map_err(|e| within(url, e))?;
            sink.deliver(false).await.map_err(|e| within(url, e))?;
        }
        sink.deliver(true).await.map_err(|e| within(url, e))?;
        Ok(received)
    }
}

impl HttpOptions {
    /// What makes these options unusable, in words for an error message.
    pub fn problem(&self) -> Option<String> {
        if self.limit_rate == Some(0) {
            return Some("a rate limit of 0 bytes/s would never finish".into());
        }
        if self.timeout.is_zero() || self.speed_time.is_zero() || self.deadline.is_zero() {
            return Some("the timeout, the low-speed time and the deadline must be at least 1 second".into());
        }
        if self.max_metadata == 0 {
            return Some("a metadata limit of 0 bytes would refuse every summary".into());
        }
        None
    }
}

/// The URLs to try for one file: the remote's URLs in order, for [`ROUNDS`] rounds with backoff.
/// Local trouble ([`TransportError::Store`]) ends the attempts at once; so does a round in which
/// every server said the file does not exist.
struct Failover<'r> {
    remote: &'r Remote,
    path: &'r str,
    backoff: Duration,
    round: u32,
    next_url: usize,
    all_absent: bool,
    last: Option<TransportError>,
}

impl<'r> Failover<'r> {
    fn new(remote: &'r Remote, path: &'r str, backoff: Duration) -> Self {
        Failover { remote, path, backoff, round: 0, next_url: 0, all_absent: true, last: None }
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
            tokio::time::sleep(self.backoff * (1 << (self.round - 1))).await;
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
    // reqwest's Display omits the cause ("error decoding response body"); give the whole chain,
    // without reqwest's copy of the URL (`url` is the one with its password hidden).
    let e = e.without_url();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn new_watch(timeout: u64, deadline: u64) -> Watch {
        let seconds = Duration::from_secs;
        let options = HttpOptions {
            timeout: seconds(timeout),
            speed_time: seconds(2),
            deadline: seconds(deadline),
            ..HttpOptions::default()
        };
        Watch::new(options)
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_holds_the_rate_though_each_piece_takes_less_than_a_timer_tick() {
        // 100 MiB/s in 16 KiB pieces: 0.16 ms a piece, where each wait lasts a whole millisecond.
        let limit = RateLimit { bytes_per_sec: 100 << 20, next_free: Mutex::new(Instant::now()) };
        let started = Instant::now();
        for _ in 0..640 {
            limit.take(16 << 10).await;
        }
        // 10 MiB: 100 ms at the rate; the first 20 ms of slack may go at once.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(80) && took <= Duration::from_millis(105), "{took:?}");
        // After a pause, no more than the slack goes at once.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let resumed = Instant::now();
        for _ in 0..640 {
            limit.take(16 << 10).await;
        }
        assert!(resumed.elapsed() >= Duration::from_millis(80), "{:?}", resumed.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_is_left_at_its_deadline_though_each_piece_comes_in_time() {
        let mut watch = new_watch(10, 25);
        for _ in 0..4 {
            watch.wait("u", tokio::time::sleep(Duration::from_secs(6))).await.unwrap();
        }
        let err = watch.wait("u", tokio::time::sleep(Duration::from_secs(6))).await.unwrap_err();
        assert!(err.to_string().contains("deadline of 25 s"), "{err}");
        let mut stalled = new_watch(5, 3600);
        let err = stalled.wait("u", tokio::time::sleep(Duration::from_secs(6))).await.unwrap_err();
        assert!(err.to_string().contains("nothing received for 5 s"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_below_the_low_speed_limit_ends_the_response() {
        let mut watch = new_watch(30, 3600);
        // 4 KiB a second: above the default 1024 bytes/s, for two windows of 2 s.
        for _ in 0..4 {
            watch.wait("u", tokio::time::sleep(Duration::from_secs(1))).await.unwrap();
            watch.arrived("u", 4096).unwrap();
        }
        // Then 100 bytes a second: refused once a whole window of it has passed.
        watch.wait("u", tokio::time::sleep(Duration::from_secs(1))).await.unwrap();
        watch.arrived("u", 100).unwrap();
        watch.wait("u", tokio::time::sleep(Duration::from_secs(1))).await.unwrap();
        let err = watch.arrived("u", 100).unwrap_err();
        assert!(err.to_string().contains("below the low-speed limit of 1024 bytes/s"), "{err}");
    }
}
