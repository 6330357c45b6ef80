//! Pull over real HTTP servers: `osdeploy serve` and nginx on loopback. A node pulls release 1
//! whole, then release 2 moving only what changed in a handful of requests; a crashed pull
//! resumes without refetching; a bit flipped on the server is refused by name.

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::*;
use serde_json::Value;

struct Origin {
    _tmp: tempfile::TempDir,
    repo: PathBuf,
    v1: PathBuf,
    v2: PathBuf,
    root: PathBuf,
}

/// An origin archive repository with release 1 on `stable`, and the release 2 tree ready.
fn origin() -> Origin {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (repo, v1, v2) = (root.join("origin"), root.join("v1"), root.join("v2"));
    make_sample_tree(&v1);
    fs::create_dir_all(v1.join("usr/lib")).unwrap();
    for i in 0..12 {
        write_random(&v1.join(format!("usr/lib/lib{i}.so")), 700_000, 100 + i);
    }
    sh("cp", &["-a", &v1.display().to_string(), &v2.display().to_string()]);
    write_random(&v2.join("usr/lib/lib3.so"), 700_000, 999);
    fs::write(v2.join("etc/os-release"), "NAME=osdeploy-sample\nVERSION=2\n").unwrap();
    ok(osdeploy(&repo).args(["init", "--mode", "archive"]));
    ok(osdeploy(&repo).args(["commit", "-b", "stable", "--version", "1"]).arg(&v1));
    Origin { _tmp: tmp, repo, v1, v2, root }
}

fn pull(node: &Path) -> Value {
    json(&ok(osdeploy(node).args(["pull", "--json", "origin", "stable"])))
}

fn node_with_remote(root: &Path, mode: &str, url: &str) -> PathBuf {
    let node = root.join(format!("node-{mode}"));
    ok(osdeploy(&node).args(["init", "--mode", mode]));
    ok(osdeploy(&node).args(["remote", "add", "origin", url, "--insecure"]));
    node
}

fn check_update_cycle(server_for: impl Fn(&Path, &Path) -> Server) {
    let o = origin();
    let server = server_for(&o.repo, &o.root);
    let nodes: Vec<(&str, PathBuf)> =
        ["bare", "archive"].into_iter().map(|mode| (mode, node_with_remote(&o.root, mode, &server.url))).collect();
    for (mode, node) in &nodes {
        let first = pull(node);
        let out = o.root.join(format!("co1-{mode}"));
        ok(osdeploy(node).args(["checkout", "origin/stable"]).arg(&out));
        assert_same_tree(&o.v1, &out);
        assert!(first["requests"].as_u64().unwrap() < 40, "{mode}: {first}");
    }
    let v1 = json(&ok(osdeploy(&o.repo).args(["show", "--json", "stable"])))["commit"].as_str().unwrap().to_string();
    ok(osdeploy(&o.repo).args(["commit", "-b", "stable", "--version", "2"]).arg(&o.v2));
    // The plan computed over HTTP (indexes and metadata only) is the origin's own plan.
    let local = json(&ok(osdeploy(&o.repo).args(["delta", "--json", &v1, "stable"])));
    let remote = json(&ok(osdeploy(&nodes[0].1).args(["delta", "--remote", "origin", "--json", &v1, "stable"])));
    for key in ["from", "to", "transfer_bytes", "requests", "reads", "chunks", "metadata_objects", "chunks_reused"] {
        assert_eq!(local[key], remote[key], "{key}: local {local} remote {remote}");
    }
    assert!(remote["survey_requests"].as_u64().unwrap() >= 3, "{remote}");
    // A node's `pull --dry-run` prints that same plan, and writes nothing.
    for (mode, node) in &nodes {
        let before = listing_below(node);
        let planned = json(&ok(osdeploy(node).args(["pull", "--dry-run", "--json", "origin", "stable"])));
        assert_eq!(listing_below(node), before, "{mode}: a dry run wrote to the repository");
        for key in ["from", "to", "transfer_bytes", "requests", "reads", "whole_files", "chunks", "files_new"] {
            assert_eq!(planned[key], remote[key], "{mode} {key}: dry run {planned} remote {remote}");
        }
        let text = ok(osdeploy(node).args(["pull", "--dry-run", "origin", "stable"]));
        assert!(text.contains("pack ranges") && text.contains("from chunks"), "{text}");
    }
    let full = json(&ok(osdeploy(&nodes[0].1).args(["delta", "--remote", "origin", "--json", "none", "stable"])));
    let full_local = json(&ok(osdeploy(&o.repo).args(["delta", "--json", "none", "stable"])));
    assert_eq!(full["transfer_bytes"], full_local["transfer_bytes"], "{full}");
    let err = fails(osdeploy(&nodes[0].1).args(["delta", "--remote", "origin", "none", "nightly"]));
    assert!(err.contains("no branch \"nightly\"") && err.contains("stable"), "{err}");
    for (mode, node) in &nodes {
        let second = pull(node);
        // The update pull is the plan executed: the same bytes in the same requests.
        assert_eq!(second["bytes_fetched"], local["transfer_bytes"], "{mode}: {second} vs {local}");
        assert_eq!(second["requests"], local["requests"], "{mode}: {second} vs {local}");
        let out = o.root.join(format!("co2-{mode}"));
        ok(osdeploy(node).args(["checkout", "origin/stable"]).arg(&out));
        assert_same_tree(&o.v2, &out);
        // One 700 kB library changed: the update moves about that, in a few requests (summary,
        // two new pack indexes, the new metadata, the new chunks).
        let bytes = second["bytes_fetched"].as_u64().unwrap();
        assert!((700_000..1_000_000).contains(&bytes), "{mode}: {second}");
        assert!(second["requests"].as_u64().unwrap() <= 6, "{mode}: {second}");
        let fsck = json(&ok(osdeploy(node).args(["fsck", "--json"])));
        assert_eq!(fsck["errors"].as_array().unwrap().len(), 0, "{mode}: {fsck}");
        // Nothing new: a third pull fetches only the summary and changes nothing.
        let third = pull(node);
        assert_eq!(third["requests"], 1, "{mode}: {third}");
        assert_eq!(third["commit"], second["commit"]);
    }
}

#[test]
fn pull_from_osdeploy_serve() {
    check_update_cycle(|repo, _| osdeploy_serve(repo));
}

#[test]
fn pull_from_nginx() {
    check_update_cycle(|repo, root| {
        let work = root.join("nginx");
        fs::create_dir_all(&work).unwrap();
        nginx(repo, &work)
    });
}

#[test]
fn a_crashed_pull_resumes_without_fetching_twice() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    // Each run crashes at its point; every later run resumes from what the earlier left: staged
    // chunks (before-store), content written but not recorded, staged chunks gone
    // (after-assembly: the rerun adopts the content), everything stored but the ref (before-ref).
    let steps = [&["pull:before-store", "pull:after-assembly"][..], &["pull:before-ref"][..]];
    for (n, steps) in steps.iter().enumerate() {
        let node = node_with_remote(&o.root.join(format!("node-{n}")), "bare", &server.url);
        for step in *steps {
            let out =
                osdeploy(&node).env("OSDEPLOY_CRASH_AT", step).args(["pull", "origin", "stable"]).output().unwrap();
            assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(step));
            let refs = json(&ok(osdeploy(&node).args(["refs", "--json"])));
            assert!(refs.get("origin/stable").is_none(), "{step}: the ref moved before the pull completed: {refs}");
            let fsck = json(&ok(osdeploy(&node).args(["fsck", "--json"])));
            assert_eq!(fsck["errors"].as_array().unwrap().len(), 0, "{step}: {fsck}");
        }
        let resumed = pull(&node);
        assert_eq!(resumed["chunks_fetched"], 0, "everything was staged or stored before the crash: {resumed}");
        let out = o.root.join(format!("co-{n}"));
        ok(osdeploy(&node).args(["checkout", "origin/stable"]).arg(&out));
        assert_same_tree(&o.v1, &out);
    }
}

#[test]
fn a_flipped_byte_on_the_server_is_refused_and_the_ref_stays() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let node = node_with_remote(&o.root, "bare", &server.url);
    // flip one byte in the middle of the largest pack (chunk data)
    let pack = fs::read_dir(o.repo.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(&pack, &bytes).unwrap();
    let err = fails(osdeploy(&node).args(["pull", "origin", "stable"]));
    assert!(err.contains("chunk object") && (err.contains("hashes to") || err.contains("zstd")), "{err}");
    let refs = json(&ok(osdeploy(&node).args(["refs", "--json"])));
    assert!(refs.get("origin/stable").is_none(), "{refs}");
}

#[test]
fn a_node_without_ca_certificates_pulls_over_http_and_says_why_https_fails() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let node = node_with_remote(&o.root, "bare", &server.url);
    ok(osdeploy(&node).args(["remote", "add", "tls", "https://127.0.0.1:1", "--insecure"]));
    // A minimal image without ca-certificates: no CA file, an empty CA directory.
    let no_cas = o.root.join("no-cas");
    fs::create_dir(&no_cas).unwrap();
    let without_cas = |cmd: &mut std::process::Command| {
        cmd.env("SSL_CERT_FILE", o.root.join("missing.pem")).env("SSL_CERT_DIR", &no_cas);
    };
    let mut pull = osdeploy(&node);
    without_cas(pull.args(["pull", "--json", "origin", "stable"]));
    assert!(json(&ok(&mut pull))["requests"].as_u64().unwrap() > 0);
    let out = o.root.join("co");
    ok(osdeploy(&node).args(["checkout", "origin/stable"]).arg(&out));
    assert_same_tree(&o.v1, &out);
    let mut pull = osdeploy(&node);
    without_cas(pull.args(["pull", "tls", "stable"]));
    let err = fails(&mut pull);
    assert!(err.contains("No CA certificates") && err.contains("ca-certificates"), "{err}");
}

#[test]
fn unknown_branch_and_dead_server_give_clear_errors() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let node = node_with_remote(&o.root, "bare", &server.url);
    let err = fails(osdeploy(&node).args(["pull", "origin", "nope"]));
    assert!(err.contains("has no branch \"nope\"") && err.contains("stable"), "{err}");
    drop(server);
    let err = fails(osdeploy(&node).args(["pull", "origin", "stable"]));
    assert!(err.contains("every URL failed") && err.contains("127.0.0.1"), "{err}");
    let err = fails(osdeploy(&node).args(["remote", "add", "x", "http://127.0.0.1:1"]));
    assert!(err.contains("--insecure"), "{err}");
}

#[test]
fn signed_remotes_refuse_unsigned_foreign_stale_and_replayed_data() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let (key, other) = (o.root.join("release.key"), o.root.join("other.key"));
    ok(osdeploy(&o.repo).args(["key", "generate"]).arg(&key));
    ok(osdeploy(&o.repo).args(["key", "generate"]).arg(&other));
    let node = o.root.join("node");
    ok(osdeploy(&node).args(["init", "--mode", "bare"]));
    let err = fails(osdeploy(&node).args(["remote", "add", "origin", &server.url]));
    assert!(err.contains("--key") && err.contains("--insecure"), "{err}");
    ok(osdeploy(&node).args(["remote", "add", "origin", &server.url, "--key"]).arg(key.with_extension("pub")));

    // not signed at all
    let err = fails(osdeploy(&node).args(["pull", "origin", "stable"]));
    assert!(err.contains("summary from remote origin is not signed;"), "{err}");
    // signed by a key the node does not trust
    ok(osdeploy(&o.repo).args(["sign", "--key"]).arg(&other));
    let err = fails(osdeploy(&node).args(["pull", "origin", "stable"]));
    assert!(err.contains("is not signed by a trusted key"), "{err}");
    // signed by the release key: accepted
    ok(osdeploy(&o.repo).args(["sign", "--key"]).arg(&key));
    let v1_summary = (fs::read(o.repo.join("summary")).unwrap(), fs::read(o.repo.join("summary.sig")).unwrap());
    let first = pull(&node);
    // a tampered summary (one byte) no longer verifies
    let mut tampered = v1_summary.0.clone();
    tampered.push(b'\n');
    fs::write(o.repo.join("summary"), &tampered).unwrap();
    let err = fails(osdeploy(&node).args(["pull", "origin", "stable"]));
    assert!(err.contains("not signed by a trusted key"), "{err}");
    // a new release committed but not yet signed: refused until signed
    ok(osdeploy(&o.repo).args(["commit", "-b", "stable", "--version", "2"]).arg(&o.v2));
    let err = fails(osdeploy(&node).args(["pull", "origin", "stable"]));
    assert!(err.contains("not signed by a trusted key"), "{err}");
    ok(osdeploy(&o.repo).args(["sign", "--key"]).arg(&key));
    // The plan of a signed update counts the signature files the pull fetches, locally and over
    // HTTP (where the commit's signature is verified as the pull would).
    let v1 = first["commit"].as_str().unwrap();
    let local = json(&ok(osdeploy(&o.repo).args(["delta", "--json", v1, "stable"])));
    let remote = json(&ok(osdeploy(&node).args(["delta", "--remote", "origin", "--json", v1, "stable"])));
    assert_eq!(local["requests"], remote["requests"], "{local} {remote}");
    assert_eq!(local["transfer_bytes"], remote["transfer_bytes"], "{local} {remote}");
    let second = pull(&node);
    assert_ne!(second["commit"], first["commit"]);
    assert_eq!(second["requests"], local["requests"], "{second} {local}");
    assert_eq!(second["bytes_fetched"], local["transfer_bytes"], "{second} {local}");
    // a replayed, validly signed older summary must not downgrade the node silently
    fs::write(o.repo.join("summary"), &v1_summary.0).unwrap();
    fs::write(o.repo.join("summary.sig"), &v1_summary.1).unwrap();
    let err = fails(osdeploy(&node).args(["pull", "origin", "stable"]));
    assert!(err.contains("older than commit") && err.contains("--allow-downgrade"), "{err}");
    let refs = json(&ok(osdeploy(&node).args(["refs", "--json"])));
    assert_eq!(refs["origin/stable"], second["commit"], "the ref stays at the newer commit");
    // asked for explicitly, the downgrade is done
    let downgraded = json(&ok(osdeploy(&node).args(["pull", "--json", "--allow-downgrade", "origin", "stable"])));
    assert_eq!(downgraded["commit"], first["commit"]);
}

/// A raw HTTP/1.0 GET on loopback: (status, headers as sent, body).
fn http_get(url: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, response[split + 4..].to_vec())
}

#[test]
fn serve_answers_ranges_conditionals_and_cache_headers() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let pack = fs::read_dir(o.repo.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "pack"))
        .unwrap();
    let name = format!("/packs/{}", pack.file_name().unwrap().to_string_lossy());
    let (status, head, body) = http_get(&server.url, &name, &[("Range", "bytes=8-49")]);
    assert_eq!(status, 206, "{head}");
    assert_eq!(body, fs::read(&pack).unwrap()[8..50]);
    assert!(head.to_lowercase().contains("cache-control: public, max-age=31536000, immutable"), "{head}");
    // Delta packs and indexes are named by their content too.
    ok(osdeploy(&o.repo).args(["commit", "-b", "stable", "--version", "2", "--deltas", "1"]).arg(&o.v2));
    let delta_file = fs::read_dir(o.repo.join("deltas")).unwrap().next().expect("a delta file").unwrap().path();
    let name = format!("/deltas/{}", delta_file.file_name().unwrap().to_string_lossy());
    let (status, head, _) = http_get(&server.url, &name, &[]);
    assert_eq!(status, 200, "{head}");
    assert!(head.to_lowercase().contains("cache-control: public, max-age=31536000, immutable"), "{head}");
    // A miss is no content: a cache must ask again (the pack may be published later).
    let missing = format!("/packs/{}.pack", "0".repeat(64));
    let (status, head, _) = http_get(&server.url, &missing, &[]);
    assert_eq!(status, 404, "{head}");
    assert!(head.to_lowercase().contains("cache-control: no-cache"), "{head}");
    let (status, head, _) = http_get(&server.url, "/summary", &[]);
    assert_eq!(status, 200);
    assert!(head.to_lowercase().contains("cache-control: no-cache"), "{head}");
    let modified = head
        .lines()
        .find_map(|l| l.split_once(": ").filter(|(k, _)| k.eq_ignore_ascii_case("last-modified")).map(|(_, v)| v))
        .expect("a Last-Modified header")
        .to_string();
    let (status, _, _) = http_get(&server.url, "/summary", &[("If-Modified-Since", &modified)]);
    assert_eq!(status, 304, "a conditional request for an unchanged summary");
    let (status, _, _) = http_get(&server.url, "/packs/nonexistent.pack", &[]);
    assert_eq!(status, 404);
}

#[test]
fn a_dead_first_url_fails_over_to_the_next() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let node = o.root.join("node");
    ok(osdeploy(&node).args(["init", "--mode", "bare"]));
    let dead = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    ok(osdeploy(&node).args(["remote", "add", "origin", &dead, &server.url, "--insecure"]));
    let stats = pull(&node);
    let out = o.root.join("co");
    ok(osdeploy(&node).args(["checkout", "origin/stable"]).arg(&out));
    assert_same_tree(&o.v1, &out);
    assert!(stats["requests"].as_u64().unwrap() > 0);
}

#[test]
fn a_summary_of_an_unknown_format_is_refused_naming_its_version() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let node = node_with_remote(&o.root, "bare", &server.url);
    let summary = fs::read_to_string(o.repo.join("summary")).unwrap();
    assert!(summary.contains("\"format_version\": 1"), "{summary}");
    fs::write(o.repo.join("summary"), summary.replace("\"format_version\": 1", "\"format_version\": 7")).unwrap();
    for args in [&["pull", "origin", "stable"][..], &["delta", "--remote", "origin", "none", "stable"]] {
        let err = fails(osdeploy(&node).args(args));
        assert!(err.contains("has format version 7, but this osdeploy reads only version 1"), "{err}");
        assert!(err.contains(&server.url), "the error names the URL: {err}");
    }
    let refs = json(&ok(osdeploy(&node).args(["refs", "--json"])));
    assert_eq!(refs, serde_json::json!({}), "nothing was pulled");
}

#[test]
fn limit_rate_bounds_the_transfer_rate() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let node = node_with_remote(&o.root, "bare", &server.url);
    let rate: u64 = 4 << 20;
    let started = std::time::Instant::now();
    let stats = json(&ok(osdeploy(&node).args(["pull", "--json", "--limit-rate", "4M", "origin", "stable"])));
    let elapsed = started.elapsed().as_secs_f64();
    // A lower bound set by the limiter itself (not a speed measurement): the body bytes cannot
    // have arrived faster than the rate allows.
    let bytes = stats["bytes_fetched"].as_u64().unwrap();
    assert!(bytes > 8_000_000, "{stats}");
    assert!(elapsed >= bytes as f64 / rate as f64 * 0.95, "{bytes} bytes in {elapsed:.2}s at 4 MiB/s");
    let err = fails(osdeploy(&node).args(["pull", "--limit-rate", "fast", "origin", "stable"]));
    assert!(err.contains("not a positive byte rate"), "{err}");
    // A node's configuration sets the limit for its pulls (the command line would override it).
    let conf = o.root.join("etc-osdeploy");
    fs::create_dir_all(&conf).unwrap();
    fs::write(conf.join("config.toml"), format!("pull_limit_rate = {rate}\npull_timeout = 10\n")).unwrap();
    let configured = node_with_remote(&o.root.join("configured"), "bare", &server.url);
    let started = std::time::Instant::now();
    let stats =
        json(&ok(osdeploy(&configured).arg("--config-dir").arg(&conf).args(["pull", "--json", "origin", "stable"])));
    let elapsed = started.elapsed().as_secs_f64();
    let bytes = stats["bytes_fetched"].as_u64().unwrap();
    assert!(elapsed >= bytes as f64 / rate as f64 * 0.95, "{bytes} bytes in {elapsed:.2}s with pull_limit_rate");
    fs::write(conf.join("config.toml"), "pull_limit_rate = 0\n").unwrap();
    let err = fails(osdeploy(&configured).arg("--config-dir").arg(&conf).args(["pull", "origin", "stable"]));
    assert!(err.contains("config.toml") && err.contains("pull_limit_rate"), "{err}");
}

#[test]
fn a_pull_on_a_terminal_draws_a_progress_bar() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let node = node_with_remote(&o.root, "bare", &server.url);
    // script(1) (util-linux) runs the pull on a pseudo-terminal; the rate limit makes it last
    // long enough for the bar to be drawn a few times.
    let bin = env!("CARGO_BIN_EXE_osdeploy");
    let command = format!("{bin} --repo {} pull --limit-rate 4M origin stable", node.display());
    let out = std::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .output()
        .unwrap_or_else(|e| panic!("script (util-linux) is required: {e}"));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("ETA") && shown.contains("objects, ") && shown.contains("MiB"), "{shown}");
    // Without a terminal (the tests' pipes) nothing but the result is printed.
    let second = o.root.join("second");
    let plain = node_with_remote(&second, "bare", &server.url);
    let out = osdeploy(&plain).args(["pull", "--limit-rate", "4M", "origin", "stable"]).output().unwrap();
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("ETA"), "{out:?}");
}

#[test]
fn remotes_are_checked_their_passwords_hidden_and_the_pins_name_reserved() {
    let o = origin();
    let server = osdeploy_serve(&o.repo);
    let node = node_with_remote(&o.root, "bare", &server.url);
    // The name of the deployments' pins (refs osdeploy/slot-…) is not a remote's.
    let err = fails(osdeploy(&node).args(["remote", "add", "osdeploy", &server.url, "--insecure"]));
    assert!(err.contains("reserved"), "{err}");
    for (url, expected) in [("http://[::1", "is not a valid URL"), ("https://host/repo?x=1", "without ?query")] {
        let err = fails(osdeploy(&node).args(["remote", "add", "bad", url, "--insecure"]));
        assert!(err.contains(expected), "{url}: {err}");
    }
    let err = fails(osdeploy(&o.root.join("m")).args(["mirror", "http://[::1", "--insecure"]).arg(o.root.join("m")));
    assert!(err.contains("is not a valid URL"), "{err}");
    // A password in a URL is sent (HTTP basic auth) but never shown: not by remote list, not in
    // an error.
    let with_password = server.url.replacen("http://", "http://fleet:s3cret@", 1);
    ok(osdeploy(&node).args(["remote", "add", "origin", &with_password, "--insecure"]));
    pull(&node);
    let listed = ok(osdeploy(&node).args(["remote", "list"])) + &ok(osdeploy(&node).args(["remote", "list", "--json"]));
    assert!(listed.contains("fleet:***@") && !listed.contains("s3cret"), "{listed}");
    let dead = "http://fleet:s3cret@127.0.0.1:9/";
    ok(osdeploy(&node).args(["remote", "add", "dead", dead, "--insecure"]));
    let err = fails(osdeploy(&node).args(["pull", "--timeout", "1", "dead", "stable"]));
    assert!(err.contains("fleet:***@127.0.0.1:9") && !err.contains("s3cret"), "{err}");
}

#[test]
fn an_expired_summary_is_refused_and_a_partial_mirror_signs_no_longer_than_its_upstream() {
    use osdeploy_transport::sign::{expiring_signature_line, load_secret, now, signature_line};
    let o = origin();
    let key = o.root.join("release.key");
    ok(osdeploy(&o.repo).args(["key", "generate"]).arg(&key));
    let signed = ok(osdeploy(&o.repo).args(["sign", "--key"]).arg(&key).args(["--expires", "2d"]));
    assert!(signed.contains("valid until") && signed.contains("2 days"), "{signed}");
    let err = fails(osdeploy(&o.repo).args(["sign", "--key"]).arg(&key).args(["--expires", "400d"]));
    assert!(err.contains("from 1m to 366d"), "{err}");
    let server = osdeploy_serve(&o.repo);
    let node = o.root.join("node");
    ok(osdeploy(&node).args(["init", "--mode", "bare"]));
    ok(osdeploy(&node).args(["remote", "add", "origin", &server.url, "--key"]).arg(key.with_extension("pub")));
    let pulled = pull(&node)["commit"].as_str().unwrap().to_owned();

    // A partial mirror's own signature ends when the origin's does (2 days), not in its 7.
    let (mirror, mirror_key) = (o.root.join("mirror"), o.root.join("mirror.key"));
    ok(osdeploy(&o.repo).args(["key", "generate"]).arg(&mirror_key));
    ok(osdeploy(&mirror)
        .args(["mirror", &server.url])
        .arg(&mirror)
        .args(["--branch", "stable", "--key"])
        .arg(key.with_extension("pub"))
        .arg("--sign-key")
        .arg(&mirror_key));
    let expiry = |sig: &Path| -> i64 {
        let text = fs::read_to_string(sig).unwrap();
        text.split_whitespace().find_map(|f| f.strip_prefix("expires=")).unwrap().parse().unwrap()
    };
    assert_eq!(expiry(&mirror.join("summary.sig")), expiry(&o.repo.join("summary.sig")));

    // A stale server (or a man in the middle) serves the summary with its signature of last week,
    // expired an hour ago: refused, the ref stays. So is a signature without an expiry.
    let secret = load_secret(&key).unwrap();
    let summary = fs::read(o.repo.join("summary")).unwrap();
    for (line, expected) in [
        (expiring_signature_line(&secret, &summary, now() - 3600), "expired 36"),
        (signature_line(&secret, &summary), "signed without an expiry"),
    ] {
        fs::write(o.repo.join("summary.sig"), line + "\n").unwrap();
        let err = fails(osdeploy(&node).args(["pull", "origin", "stable"]));
        assert!(err.contains("summary from remote origin") && err.contains(expected), "{err}");
        assert!(err.contains("osdeploy sign"), "{err}");
        let refs = json(&ok(osdeploy(&node).args(["refs", "--json"])));
        assert_eq!(refs["origin/stable"], pulled.as_str());
    }
    ok(osdeploy(&o.repo).args(["sign", "--key"]).arg(&key));
    pull(&node);

    // Its server warns the publisher a day ahead.
    ok(osdeploy(&o.repo).args(["sign", "--key"]).arg(&key).args(["--expires", "1h"]));
    let log = o.root.join("serve.log");
    let mut soon = std::process::Command::new(env!("CARGO_BIN_EXE_osdeploy"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg(&o.repo)
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !fs::read_to_string(&log).unwrap().contains("sign it again") && started.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    soon.kill().unwrap();
    soon.wait().unwrap();
    let logged = fs::read_to_string(&log).unwrap();
    let warned = ["59 min: sign it again", "60 min: sign it again"].iter().any(|w| logged.contains(w));
    assert!(warned && logged.contains("the summary's signature expires in"), "{logged}");
}
