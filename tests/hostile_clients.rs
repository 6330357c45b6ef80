//! `osdeploy serve` against clients that hold connections: half-sent request heads, idle
//! keep-alive connections, clients that stop reading, and a crowd of them at once next to real
//! pulls, against a server allowed few file descriptors.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::*;

/// The first half of a request head: the blank line that ends it never comes.
const HALF_A_HEAD: &[u8] = b"GET /summary HTTP/1.1\r\nHost: osdeploy\r\n";

/// An origin archive repository with one release on `stable`.
fn origin(root: &Path) -> PathBuf {
    let (repo, tree) = (root.join("origin"), root.join("tree"));
    make_sample_tree(&tree);
    for i in 0..8 {
        write_random(&tree.join(format!("usr/lib{i}.so")), 500_000, 40 + i);
    }
    ok(osdeploy(&repo).args(["init", "--mode", "archive"]));
    ok(osdeploy(&repo).args(["commit", "-b", "stable"]).arg(&tree));
    repo
}

/// `osdeploy serve REPO` with `args`, allowed `descriptors` open files.
fn serve_with(repo: &Path, descriptors: u32, args: &[&str]) -> Server {
    let mut serve = Command::new("prlimit");
    serve
        .arg(format!("--nofile={descriptors}:{descriptors}"))
        .arg(env!("CARGO_BIN_EXE_osdeploy"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg(repo);
    start_serve(serve)
}

fn address(server: &Server) -> SocketAddr {
    server.url.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the server closes the connection; `None` when it is still open after 30 s.
fn read_until_closed(stream: &mut TcpStream) -> Option<usize> {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (mut total, mut buf) = (0, vec![0; 1 << 16]);
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(total),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
            Err(e) => panic!("reading from the server: {e}"),
        }
    }
}

/// The peak resident memory of a process, in KiB.
fn peak_memory_kib(child: &Child) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_half_sent_request_head_and_an_idle_connection_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path());
    let server = serve_with(&repo, 1024, &["--header-timeout", "2", "--idle-timeout", "3"]);
    let addr = address(&server);

    // Half a head: closed once the header timeout passes, without an answer.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(HALF_A_HEAD).unwrap();
    assert_eq!(read_until_closed(&mut half), Some(0), "a half-sent head kept its connection");

    // A keep-alive connection after its answer: closed when no next request comes.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /summary HTTP/1.1\r\nHost: osdeploy\r\n\r\n").unwrap();
    let answered = read_until_closed(&mut idle).expect("an idle keep-alive connection stayed open");
    assert!(answered > fs::metadata(repo.join("summary")).unwrap().len() as usize, "no answer came");

    // A client that stops reading a large file: closed once nothing moved for the idle timeout,
    // long before the file is sent (loopback buffers hold a few MiB, the file is 64 MiB).
    write_random(&repo.join("large"), 64 << 20, 7);
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(b"GET /large HTTP/1.1\r\nHost: osdeploy\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let received = read_until_closed(&mut stalled).expect("a client that stopped reading kept its connection");
    assert!(received < 64 << 20, "the whole file was sent to a client that did not read");

    // The server still answers.
    let mut fresh = TcpStream::connect(addr).unwrap();
    fresh.write_all(b"GET /summary HTTP/1.1\r\nHost: osdeploy\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    fresh.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Connections holding half a request head, each opened again as soon as the server closes it,
/// until stopped; the thread returns how many times the server closed one.
struct HalfOpenCrowd {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<usize>,
}

impl HalfOpenCrowd {
    fn start(addr: SocketAddr, size: usize) -> HalfOpenCrowd {
        let open = move || {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            stream.write_all(HALF_A_HEAD).ok()?;
            stream.set_nonblocking(true).unwrap();
            Some(stream)
        };
        let mut crowd: Vec<Option<TcpStream>> = (0..size).map(|_| open()).collect();
        let connected = crowd.iter().filter(|member| member.is_some()).count();
        assert!(connected > size / 2, "only {connected} of the crowd of {size} could connect");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut closed_by_server = 0;
            while !stopped.load(Ordering::Relaxed) {
                for member in &mut crowd {
                    let gone = match member {
                        Some(stream) => {
                            !matches!(stream.read(&mut [0; 512]), Err(e) if e.kind() == ErrorKind::WouldBlock)
                        }
                        None => true,
                    };
                    if gone {
                        closed_by_server += usize::from(member.is_some());
                        *member = open();
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            closed_by_server
        });
        HalfOpenCrowd { stop, thread }
    }

    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The load test of issue 13: 64 concurrent full pulls while 500 connections hold half a request
/// head, against a server allowed 256 file descriptors (so at most 96 connections). Without a
/// connection limit that gives waiting clients' places to new ones, the crowd locks every pull
/// out; here every pull completes and the server's memory stays small.
#[test]
fn sixty_four_pulls_complete_while_five_hundred_connections_hold_half_a_request() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path());
    let mut server = serve_with(&repo, 256, &[]);
    let crowd = HalfOpenCrowd::start(address(&server), 500);

    let nodes: Vec<PathBuf> = (0..64)
        .map(|i| {
            let node = tmp.path().join(format!("node{i}"));
            ok(osdeploy(&node).args(["init", "--mode", "archive"]));
            ok(osdeploy(&node).args(["remote", "add", "origin", &server.url, "--insecure"]));
            node
        })
        .collect();
    let started = Instant::now();
    let pulls: Vec<Child> = nodes
        .iter()
        .map(|node| {
            osdeploy(node)
                .args(["pull", "origin", "stable"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let failed: Vec<String> = pulls
        .into_iter()
        .map(|pull| pull.wait_with_output().unwrap())
        .filter(|out| !out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
        .collect();
    let took = started.elapsed();
    let closed_by_server = crowd.stop();
    let peak_kib = peak_memory_kib(&server.child);
    server.child.kill().unwrap();
    let mut log = String::new();
    server.child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    eprintln!(
        "64 pulls in {:.1} s, 0 of 64 failed; the server closed {closed_by_server} waiting connections; peak memory {} KiB",
        took.as_secs_f64(),
        peak_kib
    );

    assert!(failed.is_empty(), "{} of 64 pulls failed, the first: {}", failed.len(), failed[0]);
    let origin_commit = json(&ok(osdeploy(&repo).args(["refs", "--json"])))["stable"].clone();
    for node in &nodes {
        assert_eq!(json(&ok(osdeploy(node).args(["refs", "--json"])))["origin/stable"], origin_commit);
    }
    ok(osdeploy(&nodes[63]).arg("fsck"));
    assert!(closed_by_server >= 400, "the crowd was not pushed out: {closed_by_server} closed");
    assert!(peak_kib < 256 * 1024, "serve grew to {peak_kib} KiB");
    assert!(log.contains("the limit: a new client takes the place of one waiting"), "{log}");
    assert!(!log.contains("Too many open files"), "serve ran out of descriptors: {log}");
}
