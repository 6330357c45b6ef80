//! preflate for gzip deltas: analysing a stream as the generator does (`predict`: how deep its
//! matches are predicted), and deflating a delta's plain text again within a budget of CPU time and
//! memory (`recreate`).
//!
//! preflate-rs rebuilds deflate blocks without end on some hostile corrections (the reproducer is
//! `tests/fuzz/known/delta_codec-preflate-endless-blocks`) and takes no bound from its caller. So
//! a delta received from a server is rebuilt in a child process: the program named by
//! [`isolate_in`] (the `osdeploy` binary runs itself), which calls [`serve_child`]. Before the child
//! reads a request, the parent caps its CPU time and address space from then on (`prlimit`), in
//! proportion to the plain text; past them the kernel ends it, the rebuild fails naming the budget,
//! and the caller fetches the file as chunks. A child that answered is kept for the next request.
//! The generator proves its own deltas in-process, and so does a library user that names no
//! program.

use std::borrow::Cow;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use preflate_rs::{
    ExitCode, PlainText, PreflateConfig, PreflateStreamChunkResult, preflate_whole_deflate_stream,
    recreate_whole_deflate_stream_with,
};
use rustix::process::{Pid, Resource, Rlimit, Signal, getrlimit, prlimit};

use crate::delta::gzip::MAX_INFLATED;

/// The program that rebuilds received deltas, and its arguments.
static CHILD: OnceLock<(PathBuf, Vec<OsString>)> = OnceLock::new();

/// CPU seconds a rebuild may take whatever its size; preflate rebuilds about 10 MB a second here.
const BASE_CPU_SECONDS: u64 = 10;

/// Address space a child may use besides its inputs and output: the program and preflate's model.
const BASE_MEMORY: u64 = 256 << 20;

/// Largest corrections a request may carry: preflate's are a small fraction of the stream.
const MAX_CORRECTIONS: u64 = MAX_INFLATED;

/// Deepest hash-chain search preflate predicts the matches of a gzip delta's stream with (each
/// segment's, or a short stream's whole). `gzip -6` searches up to 128 deep (`-9`: 4096). On the
/// kernel pair's initramfs (130 MB of plain text from `gzip -6`), predicted greedily (`predict`),
/// one core rebuilds the whole stream in 2.37 s with 2.71 MB of corrections at 16, 2.45 s with
/// 2.39 MB at 24 and 2.54 s with 2.14 MB at 32 (predicted lazily, as gzip matched: 2.70 s with
/// 2.23 MB at 16). At 16 a node applies the kernel update in 2.53 s, 1.93 × its chunk pull, against
/// 2.62 s and 2.00 × at 24: the target of 2 × with a margin, for 360 KB more.
pub const PREDICTED_CHAIN_DEPTH: u32 = 16;

/// What preflate needs to deflate a stream's plain text again: see [`predict`].
pub(crate) struct Prediction {
    /// Its [`bounded`] corrections.
    pub corrections: Vec<u8>,
    /// The stream's length in bytes.
    pub stream_len: usize,
    /// The plain text.
    pub plain: PlainText,
}

/// Analyses the deflate stream at the front of `stream` (its plain text at most `plain_limit`
/// bytes), predicting its matches at most [`PREDICTED_CHAIN_DEPTH`] deep. `None` when preflate
/// cannot rebuild it.
///
/// The search after a mispredicted literal is bounded too, by the compressor's own depth (4096
/// otherwise): on the kernel pair's initramfs that takes 0.18 s off the 2.8 s of a rebuild on one
/// core, and the corrections are 9 KB smaller. A stream whose bounded search finds no match
/// (preflate's prediction failure) is analysed again with that search unbounded; a stream that
/// fails otherwise is not analysed twice.
///
/// Every match is predicted greedily: `gzip -6` and `-9` look one byte further for a longer match
/// before taking one (lazy matching), and predicting that costs a second search per match; the
/// literals it would have predicted travel as corrections instead. One core rebuilds the kernel
/// pair's initramfs in 2.37 s instead of 2.70 s for 486 KB more corrections (2.71 MB), its 351
/// changelogs in 0.23 s instead of 0.26 s for 22 KB more. The choice is among the parameters
/// stored with the corrections: recreation takes no option for it, and nodes built before it
/// rebuild such streams.
pub(crate) fn predict(stream: &[u8], plain_limit: usize) -> Option<Prediction> {
    let mut config = PreflateConfig {
        plain_text_limit: plain_limit,
        verify_compression: false,
        predicted_chain_limit: Some(PREDICTED_CHAIN_DEPTH),
        bounded_research: true,
        greedy_prediction: true,
        ..Default::default()
    };
    let analyse = |config: &PreflateConfig| std::panic::catch_unwind(|| preflate_whole_deflate_stream(stream, config));
    let analysed = match analyse(&config) {
        Ok(Err(e)) if e.exit_code() == ExitCode::PredictionFailure => {
            config.bounded_research = false;
            analyse(&config)
        }
        analysed => analysed,
    };
    let Ok(Ok((analysis, plain))) = analysed else { return None };
    // The parsed blocks (hundreds of MB for a large image) are not needed past the analysis.
    let PreflateStreamChunkResult { corrections, compressed_size, research_chain, .. } = analysis;
    Some(Prediction { corrections: bounded(research_chain, &corrections), stream_len: compressed_size, plain })
}

/// Where the corrections came from: a delta this process generated is rebuilt in-process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Corrections {
    /// Made by this process's generator, to prove its delta.
    Own,
    /// Read from a delta object that arrived from elsewhere.
    Received,
}

/// Runs every later rebuild of a received delta in `program args`, a process that calls
/// [`serve_child`] on its standard input and output. Later calls change nothing.
pub fn isolate_in(program: impl Into<PathBuf>, args: &[&str]) {
    let _ = CHILD.set((program.into(), args.iter().map(OsString::from).collect()));
}

/// The CPU seconds and bytes of address space a rebuild of `plain_len` bytes of plain text into
/// `deflated_len` bytes may use.
fn budget(plain_len: u64, corrections_len: u64, deflated_len: u64) -> (u64, u64) {
    let cpu = BASE_CPU_SECONDS + plain_len.div_ceil(1 << 20);
    let memory = BASE_MEMORY + 8 * (plain_len + corrections_len + deflated_len);
    (cpu, memory)
}

/// Bytes before preflate's own in [`bounded`] corrections.
const BOUND_LEN: usize = 4;

/// preflate's `corrections` as [`recreate`] takes them: led by the bound of preflate's search after
/// a mispredicted literal they were made with (u32, 0 for none: `PreflateConfig::bounded_research`).
pub(crate) fn bounded(research_chain: Option<u32>, corrections: &[u8]) -> Vec<u8> {
    [&research_chain.unwrap_or(0).to_le_bytes()[..], corrections].concat()
}

/// A payload's `corrections` as [`recreate`] takes them: as they are if the payload says they are
/// [`bounded`] (`led`), else led by no bound (a payload made before bounds were written).
pub(crate) fn led_by_bound(corrections: &[u8], led: bool) -> Cow<'_, [u8]> {
    if led { Cow::Borrowed(corrections) } else { Cow::Owned(bounded(None, corrections)) }
}

/// Deflates `plain` again as the [`bounded`] `corrections` say, into exactly `deflated_len` bytes.
pub(crate) fn recreate(
    plain: &[u8],
    corrections: &[u8],
    deflated_len: u64,
    source: Corrections,
) -> Result<Vec<u8>, String> {
    match (source, CHILD.get()) {
        (Corrections::Received, Some((program, args))) => {
            recreate_in_child(program, args, plain, corrections, deflated_len)
        }
        _ => recreate_here(plain, corrections, deflated_len),
    }
}

/// [`recreate`] in this process.
fn recreate_here(plain: &[u8], corrections: &[u8], deflated_len: u64) -> Result<Vec<u8>, String> {
    let (bound, corrections) = corrections.split_first_chunk::<BOUND_LEN>().ok_or("the corrections end early")?;
    let research_chain = Some(u32::from_le_bytes(*bound)).filter(|&chain| chain != 0);
    let deflated = std::panic::catch_unwind(|| recreate_whole_deflate_stream_with(plain, corrections, research_chain))
        .map_err(|panic| {
            let said = panic.downcast_ref::<&str>().copied().or(panic.downcast_ref::<String>().map(String::as_str));
            format!("deflating again failed (preflate panicked: {})", said.unwrap_or("no message"))
        })?
        .map_err(|e| format!("deflating again failed: {e}"))?;
    if deflated.len() as u64 != deflated_len {
        return Err(format!("deflating again gives {} bytes instead of {deflated_len}", deflated.len()));
    }
    Ok(deflated)
}

/// The request's header: the plain text's, the corrections' and the output's lengths.
const HEADER_LEN: usize = 24;

/// A reply's first byte: the stream follows.
const REPLY_STREAM: u8 = 0;
/// A reply's first byte: a u32-length-prefixed message follows.
const REPLY_ERROR: u8 = 1;

/// Longest error message a child sends or is read from its stderr.
const MAX_MESSAGE: u64 = 4096;

/// A child waiting for requests, and its pipes.
struct Worker {
    child: Child,
    input: ChildStdin,
    output: ChildStdout,
}

/// Idle children, reused: starting one costs about 2 ms, and a pull may rebuild hundreds of gzip
/// files. They exit when their input closes, with this process.
static IDLE: Mutex<Vec<Worker>> = Mutex::new(Vec::new());

/// [`recreate`] in a child: an idle one, or a new one.
fn recreate_in_child(
    program: &Path,
    args: &[OsString],
    plain: &[u8],
    corrections: &[u8],
    deflated_len: u64,
) -> Result<Vec<u8>, String> {
    let failed = |what: &str, e: io::Error| format!("deflating again in {}: {what}: {e}", program.display());
    // An idle child that has ended meanwhile (killed by someone else) is reaped and replaced.
    let idle = IDLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
    let idle = idle.and_then(|mut worker| matches!(worker.child.try_wait(), Ok(None)).then_some(worker));
    let mut worker = match idle {
        Some(worker) => worker,
        None => {
            let mut child = Command::new(program)
                .arg0("osdeploy")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // Its message when it ends past a budget is one line, with no backtrace.
                .env("RUST_BACKTRACE", "0")
                .spawn()
                .map_err(|e| failed("starting it", e))?;
            let (input, output) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"));
            Worker { child, input, output }
        }
    };
    // The child reads the request only after its limits for it are in place.
    let (cpu, memory) = budget(plain.len() as u64, corrections.len() as u64, deflated_len);
    if let Err(e) = limit(&worker.child, cpu, memory) {
        let _ = worker.child.kill();
        let _ = worker.child.wait();
        return Err(failed("limiting it", e));
    }
    let mut header = [0u8; HEADER_LEN];
    for (at, len) in [plain.len() as u64, corrections.len() as u64, deflated_len].into_iter().enumerate() {
        header[at * 8..at * 8 + 8].copy_from_slice(&len.to_le_bytes());
    }
    // A child that ends early closes its input: its end, not the broken pipe, tells why.
    let sent = [&header[..], plain, corrections].iter().try_for_each(|part| worker.input.write_all(part));
    match sent.and_then(|()| read_reply(&mut worker.output, deflated_len)) {
        Ok(reply) => {
            IDLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(worker);
            reply
        }
        Err(_) => Err(ended(worker, cpu, memory, &failed)),
    }
}

/// Caps the CPU time `child` may use from now on to `cpu` seconds, and its address space to what it
/// maps now plus `memory` bytes.
fn limit(child: &Child, cpu: u64, memory: u64) -> io::Result<()> {
    let proc = PathBuf::from(format!("/proc/{}", child.id()));
    let stat = std::fs::read_to_string(proc.join("stat"))?;
    // utime and stime are the 14th and 15th fields, counted after the parenthesised command name.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).into_iter().flatten().filter_map(|f| f.parse::<u64>().ok()).sum();
    let used = ticks.div_ceil(rustix::param::clock_ticks_per_second());
    let pages: u64 = std::fs::read_to_string(proc.join("statm"))?
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("unreadable statm"))?;
    let mapped = pages * rustix::param::page_size() as u64;
    let pid = Pid::from_raw(child.id() as i32);
    // Only soft limits move: raising a hard one again for the next request would need
    // CAP_SYS_RESOURCE. The child keeps the hard limits it inherited from this process.
    [(Resource::Cpu, used + cpu), (Resource::As, mapped + memory)].into_iter().try_for_each(|(resource, soft)| {
        let maximum = getrlimit(resource).maximum;
        let current = Some(maximum.map_or(soft, |hard| soft.min(hard)));
        prlimit(pid, resource, Rlimit { current, maximum }).map(drop)
    })?;
    Ok(())
}

/// Reads a child's reply: the stream of `deflated_len` bytes, or the error it reports.
fn read_reply(output: &mut impl Read, deflated_len: u64) -> io::Result<Result<Vec<u8>, String>> {
    let mut kind = [0u8];
    output.read_exact(&mut kind)?;
    match kind[0] {
        REPLY_STREAM => {
            let mut stream = Vec::new();
            output.take(deflated_len).read_to_end(&mut stream)?;
            if stream.len() as u64 != deflated_len {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(Ok(stream))
        }
        REPLY_ERROR => {
            let mut len = [0u8; 4];
            output.read_exact(&mut len)?;
            let len = u64::from(u32::from_le_bytes(len)).min(MAX_MESSAGE);
            let mut message = Vec::new();
            output.take(len).read_to_end(&mut message)?;
            Ok(Err(String::from_utf8_lossy(&message).into_owned()))
        }
        other => Err(io::Error::other(format!("unknown reply {other}"))),
    }
}

/// Why a child stopped answering: it is waited for, and its end (past a budget, by a signal, by
/// an exit) described.
fn ended(mut worker: Worker, cpu: u64, memory: u64, failed: &dyn Fn(&str, io::Error) -> String) -> String {
    drop(worker.input);
    let mut message = Vec::new();
    if let Some(stderr) = worker.child.stderr.take() {
        let _ = stderr.take(MAX_MESSAGE).read_to_end(&mut message);
    }
    let message = String::from_utf8_lossy(&message).lines().next().unwrap_or_default().trim().to_owned();
    let said = if message.is_empty() { String::new() } else { format!(": {message}") };
    let status = match worker.child.wait() {
        Ok(status) => status,
        Err(e) => return failed("waiting for it", e),
    };
    match status.signal() {
        Some(signal) if signal == Signal::XCPU.as_raw() => {
            format!("deflating again took more than its budget of {cpu} CPU seconds{said}")
        }
        Some(signal) if signal == Signal::ABORT.as_raw() && message.contains("memory allocation") => {
            format!("deflating again needed more than its budget of {} MiB of memory{said}", memory >> 20)
        }
        Some(signal) => format!("deflating again was ended by signal {signal}{said}"),
        None => format!("deflating again failed: the child ended ({status}){said}"),
    }
}

/// The child's side: answers requests of `recreate` read from `input` until it closes. Its
/// limits for each request are set by the parent before the child reads it.
pub fn serve_child(input: &mut impl Read, output: &mut impl Write) -> io::Result<()> {
    // A panic of preflate's is caught and answered as an error; its message on stderr, which the
    // parent reads only once the child has ended, would fill the pipe after a few hundred.
    std::panic::set_hook(Box::new(|_| {}));
    loop {
        let mut header = [0u8; HEADER_LEN];
        match input.read_exact(&mut header) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            read => read?,
        }
        let len = |at: usize| u64::from_le_bytes(header[at * 8..at * 8 + 8].try_into().expect("8 bytes"));
        let (plain_len, corrections_len, deflated_len) = (len(0), len(1), len(2));
        if plain_len > MAX_INFLATED || corrections_len > MAX_CORRECTIONS {
            return Err(io::Error::other(format!(
                "a request of {plain_len} bytes of plain text and {corrections_len} of corrections is too large"
            )));
        }
        let plain = read_exactly(input, plain_len)?;
        let corrections = read_exactly(input, corrections_len)?;
        let deflated = recreate_here(&plain, &corrections, deflated_len);
        match deflated {
            Ok(stream) => {
                output.write_all(&[REPLY_STREAM])?;
                output.write_all(&stream)?;
            }
            Err(message) => {
                let message = &message.as_bytes()[..message.len().min(MAX_MESSAGE as usize)];
                output.write_all(&[REPLY_ERROR])?;
                output.write_all(&(message.len() as u32).to_le_bytes())?;
                output.write_all(message)?;
            }
        }
        output.flush()?;
    }
}

/// Reads exactly `len` bytes of a request.
fn read_exactly(input: &mut impl Read, len: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    input.take(len).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the request ends early"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_grows_with_the_plain_text() {
        assert_eq!(budget(0, 0, 0), (BASE_CPU_SECONDS, BASE_MEMORY));
        let (cpu, memory) = budget(130 << 20, 200 << 10, 36 << 20);
        assert_eq!(cpu, BASE_CPU_SECONDS + 130);
        assert!(memory > 8 * (166 << 20) && memory < 2 << 30, "{memory}");
    }

    #[test]
    fn the_child_answers_requests_until_its_input_closes() {
        let plain = b"hello hello hello hello, deflate me again".repeat(50);
        let mut deflated = Vec::new();
        let mut encoder = flate2::write::DeflateEncoder::new(&mut deflated, flate2::Compression::best());
        encoder.write_all(&plain).unwrap();
        encoder.finish().unwrap();
        let config = preflate_rs::PreflateConfig::default();
        let (analysis, _) = preflate_rs::preflate_whole_deflate_stream(&deflated, &config).unwrap();
        let corrections = bounded(analysis.research_chain, &analysis.corrections);
        let request = |plain: &[u8], deflated_len: u64| {
            let mut request = Vec::new();
            for len in [plain.len() as u64, corrections.len() as u64, deflated_len] {
                request.extend_from_slice(&len.to_le_bytes());
            }
            [request, plain.to_vec(), corrections.clone()].concat()
        };
        // A good request, one whose declared length is wrong, then the end of input.
        let input = [request(&plain, deflated.len() as u64), request(&plain, 7)].concat();
        let mut output = Vec::new();
        serve_child(&mut &input[..], &mut output).unwrap();
        let mut replies = &output[..];
        assert_eq!(read_reply_from(&mut replies, deflated.len() as u64).unwrap(), deflated);
        let err = read_reply_from(&mut replies, 7).unwrap_err();
        assert!(err.contains("instead of 7"), "{err}");
        assert!(replies.is_empty());
    }

    fn read_reply_from(replies: &mut &[u8], deflated_len: u64) -> Result<Vec<u8>, String> {
        read_reply(replies, deflated_len).unwrap()
    }

    #[test]
    fn a_child_past_its_cpu_budget_is_ended_and_named() {
        let mut child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        limit(&child, 1, 1 << 30).unwrap();
        let (input, output) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let failed = |what: &str, e: io::Error| format!("{what}: {e}");
        let err = ended(Worker { child, input, output }, 1, 1 << 30, &failed);
        assert_eq!(err, "deflating again took more than its budget of 1 CPU seconds");
    }

    #[test]
    fn the_child_side_refuses_short_and_oversized_requests() {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&(MAX_INFLATED + 1).to_le_bytes());
        assert!(serve_child(&mut &header[..], &mut Vec::new()).unwrap_err().to_string().contains("too large"));
        header[..8].copy_from_slice(&10u64.to_le_bytes());
        let truncated = [&header[..], b"abc"].concat();
        let err = serve_child(&mut &truncated[..], &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("ends early"), "{err}");
        let mut partial_header = &[1u8, 0, 0][..];
        assert!(serve_child(&mut partial_header, &mut Vec::new()).is_ok(), "a closed input ends the child");
    }
}
