//! HTTP(S) client over a remote's URLs: failover in order, bounded retries with backoff,
//! timeouts for stalled connections, byte and request accounting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::TransportError;
use crate::remote::Remote;

/// How many rounds over all URLs before giving up.
const ROUNDS: u32 = 3;
/// A connection that delivers nothing for this long is abandoned.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for one remote; cheap to clone (shared connection pool and counters).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    remote: Arc<Remote>,
    /// Requests sent (successful or not).
    pub requests: Arc<AtomicU64>,
    /// Body bytes received.
    pub bytes: Arc<AtomicU64>,
}

impl Client {
    /// A client for `remote`.
    pub fn new(remote: &Remote) -> Result<Self, TransportError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("osdeploy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransportError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { http, remote: Arc::new(remote.clone()), requests: Arc::default(), bytes: Arc::default() })
    }

    /// Fetches `path` (relative to the repository root) whole.
    pub async fn get(&self, path: &str) -> Result<Vec<u8>, TransportError> {
        self.fetch(path, None).await
    }

    /// Fetches `len` bytes of `path` from `offset` with a Range request.
    pub async fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, TransportError> {
        self.fetch(path, Some((offset, len))).await
    }

    async fn fetch(&self, path: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>, TransportError> {
        let mut last = None;
        for round in 0..ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(250 << round)).await;
            }
            for base in &self.remote.urls {
                let url = format!("{}/{path}", base.trim_end_matches('/'));
                match self.try_once(&url, range).await {
                    Ok(body) => return Ok(body),
                    Err(e) => {
                        tracing::warn!("{e}");
                        last = Some(e);
                    }
                }
            }
        }
        Err(TransportError::AllUrlsFailed {
            remote: self.remote.name.clone(),
            last: Box::new(last.expect("at least one URL was tried")),
        })
    }

    async fn try_once(&self, url: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>, TransportError> {
        let request_error =
            |e: reqwest::Error| TransportError::Request { url: url.to_string(), message: e.to_string() };
        let mut request = self.http.get(url);
        if let Some((offset, len)) = range {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-{}", offset + len - 1));
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let response = request.send().await.map_err(request_error)?;
        let status = response.status().as_u16();
        let expected = if range.is_some() { 206 } else { 200 };
        if status != expected {
            if range.is_some() && status == 200 {
                return Err(TransportError::Invalid {
                    what: "a Range request".into(),
                    url: url.into(),
                    reason: "the server ignored the Range header (answered 200, not 206); serve the repository with a server that supports Range requests".into(),
                });
            }
            return Err(TransportError::Status { url: url.into(), status });
        }
        let body = response.bytes().await.map_err(request_error)?;
        self.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        if let Some((_, len)) = range
            && body.len() as u64 != len
        {
            return Err(TransportError::Invalid {
                what: "a Range response".into(),
                url: url.into(),
                reason: format!("{} bytes instead of {len} (truncated)", body.len()),
            });
        }
        Ok(body.to_vec())
    }
}
