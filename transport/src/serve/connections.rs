//! The connections of `osdeploy serve`, bounded so that clients holding them cannot lock others
//! out: a client has `header_timeout` to send each request head (counted from the connection's
//! start or from its previous response), a connection that moves no byte for `idle_timeout` is
//! closed, and at most `max_connections` are open. When that many are open, a new client takes
//! the place of the one that has waited longest for a request head (a half-sent head or an idle
//! keep-alive connection), as nginx reuses its idle connections; only when every connection is
//! sending a response does the server stop accepting until one ends. Accept errors (out of file
//! descriptors, of memory) back off instead of spinning.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Bytes, HttpBody};
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// Largest request head a client may send: a static file server needs a path and a few headers.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// File descriptors kept back from the connections for the listener, the runtime and the log.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Most connections the default allows, however many descriptors the process may open.
const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// How long clients may take and how many may be connected.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a client has to send a whole request head.
    pub header_timeout: Duration,
    /// Time a connection may move no byte in either direction.
    pub idle_timeout: Duration,
}

impl ServeLimits {
    /// The limits `serve` uses when given none: 10 s for a request head, 60 s without progress,
    /// and as many connections as this process's file descriptors allow (two each: the socket
    /// and the file being sent), at most 16,384.
    pub fn default_for_this_process() -> ServeLimits {
        ServeLimits {
            max_connections: descriptor_bound().min(DEFAULT_MAX_CONNECTIONS),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    /// What is wrong with these limits in this process, if anything.
    pub fn problem(&self) -> Option<String> {
        let bound = descriptor_bound();
        if self.max_connections == 0 {
            Some("the connection limit must be at least 1".into())
        } else if self.max_connections > bound {
            Some(format!(
                "{} connections need {} file descriptors, and this process may open {} (raise `ulimit -n` or LimitNOFILE=)",
                self.max_connections,
                self.max_connections as u64 * 2 + RESERVED_DESCRIPTORS,
                open_files_limit()
            ))
        } else if self.header_timeout.is_zero() || self.idle_timeout.is_zero() {
            Some("the header and idle timeouts must be longer than zero".into())
        } else {
            None
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit, as servers do at start.
pub fn raise_open_files_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised) {
            tracing::debug!("cannot raise the open files limit: {e}");
        }
    }
}

fn open_files_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Connections this process's open files limit leaves room for.
fn descriptor_bound() -> usize {
    let spare = open_files_limit().saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(spare).unwrap_or(usize::MAX)
}

/// Accepts connections on `listener` and serves `app` on each, within `limits`, for ever.
pub(super) async fn accept_loop(listener: TcpListener, app: Router, limits: ServeLimits) {
    let table = Arc::new(Table::new(limits.max_connections));
    let mut backoff = Duration::ZERO;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                tracing::warn!("accept error: {e}; accepting again in {} ms", backoff.as_millis());
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let slot = table.clone().admit().await;
        tokio::spawn(serve_connection(stream, app.clone(), slot, limits));
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(stream: TcpStream, app: Router, slot: Slot, limits: ServeLimits) {
    // A response's last segment goes out at once instead of waiting for the client's delayed ACK.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
    let connection = slot.connection.clone();
    let service = hyper::service::service_fn(move |request| {
        let busy = Busy::start(connection.clone());
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap_or_else(|never: Infallible| match never {});
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let io = TokioIo::new(Progress { stream, connection: slot.connection.clone() });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(io, service);
    tokio::select! {
        result = served => {
            if let Err(e) = result {
                tracing::debug!("connection ended: {e}");
            }
        }
        () = slot.connection.close.notified() => tracing::debug!("connection closed for a new client"),
        () = idle(&slot.connection, limits.idle_timeout) => tracing::debug!("connection closed: idle"),
    }
}

/// Returns once `connection` has moved no byte for `timeout`.
async fn idle(connection: &Connection, timeout: Duration) {
    loop {
        let quiet_until = connection.last_progress() + timeout;
        if Instant::now() >= quiet_until {
            return;
        }
        tokio::time::sleep_until(quiet_until).await;
    }
}

/// The open connections and the places left.
struct Table {
    places: Arc<Semaphore>,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    started: Instant,
    last_warning: Mutex<Option<Instant>>,
}

impl Table {
    fn new(max_connections: usize) -> Table {
        Table {
            places: Arc::new(Semaphore::new(max_connections)),
            open: Mutex::default(),
            next_id: AtomicU64::new(0),
            started: Instant::now(),
            last_warning: Mutex::default(),
        }
    }

    /// A place for a new connection: a free one, the place of the connection that has waited
    /// longest for a request head, or the first to end when every connection is busy.
    async fn admit(self: Arc<Self>) -> Slot {
        let place = match self.places.clone().try_acquire_owned() {
            Ok(place) => place,
            Err(_) => {
                self.close_longest_waiting();
                self.places.clone().acquire_owned().await.expect("the semaphore is never closed")
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection::new(self.started));
        self.open.lock().expect("table lock").insert(id, connection.clone());
        Slot { id, connection, table: self, _place: place }
    }

    fn close_longest_waiting(&self) {
        let mut open = self.open.lock().expect("table lock");
        let waiting = open
            .iter()
            .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, c)| c.waiting_since.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        let Some(connection) = waiting.and_then(|id| open.remove(&id)) else {
            self.warn_at_limit(open.len(), "every connection is sending a response; new clients wait");
            return;
        };
        connection.close.notify_one();
        self.warn_at_limit(open.len() + 1, "a new client takes the place of one waiting for a request");
    }

    /// Warns, at most once a minute, that the connection limit is reached.
    fn warn_at_limit(&self, open: usize, what: &str) {
        let mut last = self.last_warning.lock().expect("warning lock");
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!("{open} connections open, the limit: {what} (--max-connections)");
        }
    }
}

/// A connection's place in the table, given back when the connection ends.
struct Slot {
    id: u64,
    connection: Arc<Connection>,
    table: Arc<Table>,
    _place: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.open.lock().expect("table lock").remove(&self.id);
    }
}

/// What the table knows of one connection; times in milliseconds since the server started.
struct Connection {
    started: Instant,
    /// Responses being sent.
    busy: AtomicUsize,
    /// When the connection last began waiting for a request head.
    waiting_since: AtomicU64,
    /// When a byte last moved.
    last_progress: AtomicU64,
    close: Notify,
}

impl Connection {
    fn new(started: Instant) -> Connection {
        let now = millis_since(started);
        Connection {
            started,
            busy: AtomicUsize::new(0),
            waiting_since: AtomicU64::new(now),
            last_progress: AtomicU64::new(now),
            close: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        millis_since(self.started)
    }

    fn moved(&self) {
        self.last_progress.store(self.now(), Ordering::Release);
    }

    fn last_progress(&self) -> Instant {
        self.started + Duration::from_millis(self.last_progress.load(Ordering::Acquire))
    }
}

fn millis_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Marks its connection busy from a request head until the response's last byte is handed over.
struct Busy(Arc<Connection>);

impl Busy {
    fn start(connection: Arc<Connection>) -> Busy {
        connection.busy.fetch_add(1, Ordering::AcqRel);
        Busy(connection)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.waiting_since.store(self.0.now(), Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection busy while it is being sent.
struct Tracked {
    body: axum::body::Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client's socket that notes when bytes move, for the idle timeout.
struct Progress {
    stream: TcpStream,
    connection: Arc<Connection>,
}

impl AsyncRead for Progress {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.connection.moved();
        }
        polled
    }
}

impl AsyncWrite for Progress {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.connection.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.connection.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_new_client_takes_the_place_of_the_connection_waiting_longest_never_of_a_busy_one() {
        let table = Arc::new(Table::new(2));
        let oldest = table.clone().admit().await;
        tokio::time::advance(Duration::from_secs(1)).await;
        let younger = table.clone().admit().await;
        let sending = Busy::start(oldest.connection.clone());

        let third = tokio::spawn(table.clone().admit());
        younger.connection.close.notified().await;
        drop(younger);
        let third = third.await.unwrap();

        // Both connections are busy now: a fourth client waits for one to end.
        let _also_sending = Busy::start(third.connection.clone());
        let fourth = tokio::spawn(table.clone().admit());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!fourth.is_finished());
        drop(sending);
        drop(oldest);
        fourth.await.unwrap();
    }
}
