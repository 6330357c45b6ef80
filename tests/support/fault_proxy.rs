//! A small HTTP/1.1 proxy that injects faults between `osdeploy pull` and a real server.
//!
//! It listens on `127.0.0.1:0`, reads one request head per connection, forwards it to the
//! upstream server (nginx or `osdeploy serve`) and answers with the upstream's status, headers
//! and body, with `Connection: close`, then closes the connection. Scripted [`Rule`]s, matched
//! by a substring of the request path, replace that answer with a fault: another status, a
//! stall, a truncated or corrupted body, or a throttled one. Every request is recorded
//! ([`Record`]) for the test's assertions. Plain std: one thread per connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the proxy does instead of forwarding the upstream's answer faithfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status (404, 500, 503, …) with a short text body; upstream is not asked.
    Status(u16),
    /// Read the request, then send nothing at all until the client gives up.
    Stall,
    /// Send the upstream's headers and this many body bytes, then send nothing more until the
    /// client gives up.
    StallAfter(usize),
    /// Send the upstream's headers (with the full Content-Length) and only this many body bytes,
    /// then close the connection.
    Truncate(usize),
    /// Flip one bit of the body byte in the middle of the response.
    FlipByte,
    /// Flip one bit of the body byte at this offset (if the body is that long).
    FlipByteAt(usize),
    /// Send the body at this many bytes per second.
    Throttle(u64),
    /// Send `bytes` bytes of the body every `every_ms` milliseconds: alive, but hardly moving.
    Trickle {
        /// Bytes per piece.
        bytes: usize,
        /// Milliseconds between pieces.
        every_ms: u64,
    },
    /// Send the body without a Content-Length, then zero bytes without end, as fast as the
    /// client reads, until it closes the connection.
    Endless,
    /// Announce this Content-Length, then send the body and zero bytes without end.
    Announce(u64),
}

/// A scripted fault: applies to requests whose path contains `path_contains`, for the first
/// `times` of them (None: always). The first rule that matches and has uses left applies.
#[derive(Clone, Debug)]
pub struct Rule {
    /// A substring of the request path (".pack", ".idx", "summary", a pack id, …).
    pub path_contains: String,
    /// What to do.
    pub fault: Fault,
    /// How many more matching requests get the fault; None: every one.
    pub times: Option<usize>,
}

impl Rule {
    /// `fault` on every request whose path contains `path_contains`.
    pub fn always(path_contains: &str, fault: Fault) -> Rule {
        Rule { path_contains: path_contains.into(), fault, times: None }
    }

    /// `fault` on the first `n` requests whose path contains `path_contains`, then forwarding.
    pub fn first(n: usize, path_contains: &str, fault: Fault) -> Rule {
        Rule { path_contains: path_contains.into(), fault, times: Some(n) }
    }
}

/// One request the proxy received, and what it answered.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// The request path (`/packs/<id>.pack`).
    pub path: String,
    /// The Range header's value, if any (`bytes=0-99`).
    pub range: Option<String>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
    /// The status sent (0 while nothing has been sent, and for a stall).
    pub status: u16,
    /// Body bytes the response promised (its Content-Length).
    pub body_len: u64,
    /// Body bytes written to the client so far.
    pub body_sent: u64,
    /// True once the whole body was written.
    pub complete: bool,
}

impl Record {
    /// The number of bytes the Range header asks for (`bytes=A-B` → B − A + 1).
    pub fn range_len(&self) -> Option<u64> {
        let (a, b) = self.range.as_deref()?.strip_prefix("bytes=")?.split_once('-')?;
        Some(b.trim().parse::<u64>().ok()? - a.trim().parse::<u64>().ok()? + 1)
    }
}

struct State {
    upstream: String,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Record>>,
    active: AtomicUsize,
    shutdown: AtomicBool,
}

/// Counts a connection out of `State::active` when dropped.
struct Active<'a>(&'a State);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The proxy; stops accepting on drop.
pub struct FaultProxy {
    /// Its base URL (`http://127.0.0.1:PORT`), to give to `osdeploy remote add`.
    pub url: String,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy in front of `upstream` (a base URL `http://HOST:PORT`), with no rules yet.
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            upstream,
            rules: Mutex::default(),
            log: Mutex::default(),
            active: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let shared = state.clone();
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.shutdown.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                shared.active.fetch_add(1, Ordering::SeqCst);
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _active = Active(&state); // counted out even if handling panics
                    handle(&state, stream);
                });
            }
        });
        FaultProxy { url, state, accept: Some(accept) }
    }

    /// Replaces the rules.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        *self.state.rules.lock().unwrap() = rules;
    }

    /// Removes every rule: the proxy forwards faithfully from now on.
    pub fn clear_rules(&self) {
        self.set_rules(Vec::new());
    }

    /// Every request so far, in the order they arrived.
    pub fn log(&self) -> Vec<Record> {
        self.state.log.lock().unwrap().clone()
    }

    /// The requests so far whose path contains `path_contains`.
    pub fn requests(&self, path_contains: &str) -> Vec<Record> {
        self.log().into_iter().filter(|r| r.path.contains(path_contains)).collect()
    }

    /// Waits until no connection is being served (after the client exited or was killed, so
    /// that the log is final); panics after 30 s.
    pub fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.state.active.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "the fault proxy still serves a connection after 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.shutdown.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://")); // wakes the accept loop
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Reads up to the end of a request or response head (`\r\n\r\n`); returns the head and
/// whatever body bytes followed it, or None when the peer closed first.
fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Some((head, buf[end + 4..].to_vec()));
        }
        assert!(buf.len() < 64 << 10, "a request or response head above 64 KiB");
        match stream.read(&mut piece) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&piece[..n]),
        }
    }
}

/// The value of header `name` in `head` (case-insensitive).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .skip(1)
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)))
        .map(|(_, v)| v.trim())
}

/// Sends nothing more and waits until the client closes the connection (or the proxy stops).
fn hang(state: &State, stream: &mut TcpStream) {
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut sink = [0u8; 4096];
    while !state.shutdown.load(Ordering::SeqCst) {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Fetches `path` from the upstream with the client's Range header: (status line, headers
/// to pass on, body).
fn fetch_upstream(upstream: &str, path: &str, range: Option<&str>) -> (String, Vec<String>, Vec<u8>) {
    let mut up = TcpStream::connect(upstream).unwrap_or_else(|e| panic!("fault proxy: upstream {upstream}: {e}"));
    // HTTP/1.0 and Connection: close: the body is Content-Length or close delimited, never chunked.
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {upstream}\r\nConnection: close\r\n");
    if let Some(range) = range {
        request.push_str(&format!("Range: {range}\r\n"));
    }
    request.push_str("\r\n");
    up.write_all(request.as_bytes()).unwrap();
    let (head, mut body) = read_head(&mut up).expect("the upstream closed without answering");
    up.read_to_end(&mut body).unwrap();
    if let Some(len) = header(&head, "content-length") {
        body.truncate(len.parse().unwrap());
    }
    let mut lines = head.lines();
    let status_line = lines.next().unwrap().replacen("HTTP/1.0", "HTTP/1.1", 1);
    let keep = |l: &&str| {
        let name = l.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        !matches!(name.as_str(), "connection" | "content-length" | "transfer-encoding" | "keep-alive")
    };
    (status_line, lines.filter(keep).map(str::to_string).collect(), body)
}

/// Serves one connection: one request, one (possibly faulty) answer, close.
fn handle(state: &State, mut client: TcpStream) {
    let Some((head, _)) = read_head(&mut client) else { return };
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let range = header(&head, "range").map(str::to_string);
    let fault = {
        let mut rules = state.rules.lock().unwrap();
        let rule = rules.iter_mut().find(|r| path.contains(&r.path_contains) && r.times != Some(0));
        rule.map(|r| {
            if let Some(n) = &mut r.times {
                *n -= 1;
            }
            r.fault
        })
    };
    let index = {
        let mut log = state.log.lock().unwrap();
        log.push(Record { path: path.clone(), range: range.clone(), fault, ..Default::default() });
        log.len() - 1
    };
    let update = |f: &dyn Fn(&mut Record)| f(&mut state.log.lock().unwrap()[index]);

    if fault == Some(Fault::Stall) {
        hang(state, &mut client);
        return;
    }
    let (status_line, headers, mut body) = match fault {
        Some(Fault::Status(code)) => {
            let reason = match code {
                404 => "Not Found",
                500 => "Internal Server Error",
                503 => "Service Unavailable",
                _ => "Injected Fault",
            };
            (format!("HTTP/1.1 {code} {reason}"), vec!["Content-Type: text/plain".into()], b"injected fault\n".to_vec())
        }
        _ => fetch_upstream(&state.upstream, &path, range.as_deref()),
    };
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let flip = match fault {
        Some(Fault::FlipByte) => Some(body.len() / 2),
        Some(Fault::FlipByteAt(at)) => Some(at),
        _ => None,
    };
    if let Some(byte) = flip.and_then(|at| body.get_mut(at)) {
        *byte ^= 0x01;
    }
    let mut response = format!("{status_line}\r\n");
    for h in &headers {
        response.push_str(&format!("{h}\r\n"));
    }
    match fault {
        Some(Fault::Endless) => {}
        Some(Fault::Announce(len)) => response.push_str(&format!("Content-Length: {len}\r\n")),
        _ => response.push_str(&format!("Content-Length: {}\r\n", body.len())),
    }
    response.push_str("Connection: close\r\n\r\n");
    update(&|r| {
        r.status = status;
        r.body_len = body.len() as u64;
    });
    if client.write_all(response.as_bytes()).is_err() {
        return;
    }
    let (send, then_hang) = match fault {
        Some(Fault::Truncate(k)) => (k.min(body.len()), false),
        Some(Fault::StallAfter(k)) => (k.min(body.len()), true),
        _ => (body.len(), false),
    };
    let rate = match fault {
        Some(Fault::Throttle(bytes_per_second)) => Some(bytes_per_second.max(1)),
        _ => None,
    };
    if matches!(fault, Some(Fault::Endless | Fault::Announce(_))) {
        let mut sent = 0u64;
        let zeros = vec![0u8; 64 << 10];
        for piece in std::iter::once(&body[..]).chain(std::iter::repeat(&zeros[..])) {
            if state.shutdown.load(Ordering::SeqCst) || client.write_all(piece).is_err() {
                return;
            }
            sent += piece.len() as u64;
            update(&|r| r.body_sent = sent);
        }
    }
    let piece_len = match fault {
        Some(Fault::Trickle { bytes, .. }) => bytes.max(1),
        _ => 16 << 10,
    };
    let started = Instant::now();
    let mut sent = 0usize;
    for piece in body[..send].chunks(piece_len) {
        if client.write_all(piece).is_err() {
            return;
        }
        sent += piece.len();
        update(&|r| r.body_sent = sent as u64);
        if let Some(Fault::Trickle { every_ms, .. }) = fault {
            if state.shutdown.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(every_ms));
        }
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    if sent == body.len() {
        update(&|r| r.complete = true);
    }
    if then_hang {
        hang(state, &mut client);
    } else {
        let _ = client.flush();
        let _ = client.shutdown(Shutdown::Write);
        // Let the client read everything before the socket goes away (a close with unread
        // input would reset the connection).
        hang(state, &mut client);
    }
}
