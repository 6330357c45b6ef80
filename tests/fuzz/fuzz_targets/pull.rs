//! A pull against a remote whose files the fuzzer rewrites: a served archive repository (the
//! committed fixture `tests/fuzz/remote`, signed at start with a key the node trusts) has some of
//! its files overwritten, truncated, extended or replaced, and a node that holds the previous
//! release pulls the new one from it over real HTTP on loopback. Whatever the server sends, the
//! pull either fails or yields exactly the release the publisher made; the node's repository is
//! fsck-clean either way; nothing panics or hangs.
#![no_main]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::serve::ListenerExt;
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use osdeploy_store::chunker::ChunkerParams;
use osdeploy_store::{Access, Repo, RepoMode};
use osdeploy_transport::client::{HttpOptions, Progress};
use osdeploy_transport::pull::{PullOptions, pull};
use osdeploy_transport::remote::Remote;
use osdeploy_transport::runtime;
use osdeploy_transport::sign::{public_hex, sign_repository};

/// What every input starts from.
struct World {
    _scratch: tempfile::TempDir,
    /// The served directory, restored after each input.
    served: PathBuf,
    /// Its files as the publisher made them, by path relative to `served`.
    originals: BTreeMap<PathBuf, Vec<u8>>,
    url: String,
    key: String,
    /// The new release's commit, which a successful pull must yield.
    release: String,
    /// Nodes (bare, archive) holding the previous release, copied for each input.
    nodes: [PathBuf; 2],
    scratch: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn files(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(root, &path, out);
        } else {
            out.insert(path.strip_prefix(root).unwrap().to_owned(), fs::read(&path).unwrap());
        }
    }
}

fn options() -> PullOptions {
    // Short pauses between attempts: every refused answer is retried, and the fuzzer makes many.
    let http = HttpOptions {
        timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(10),
        backoff: Duration::from_millis(1),
        ..Default::default()
    };
    PullOptions { http, ..Default::default() }
}

fn remote(world: &World, signed: bool) -> Remote {
    Remote {
        name: "origin".into(),
        urls: vec![world.url.clone()],
        keys: if signed { vec![world.key.clone()] } else { Vec::new() },
        insecure: !signed,
    }
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // On tmpfs where there is one: pulls end with syncfs, which on a disk waits for whatever
        // else the machine has written.
        let shm = Path::new("/dev/shm");
        let scratch = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
        let served = scratch.path().join("served");
        copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("remote"), &served);
        fs::create_dir_all(served.join("tmp")).unwrap();
        let signing = SigningKey::from_bytes(&[9; 32]);
        let origin = Repo::open(&served, Access::Write).unwrap();
        sign_repository(&origin, &signing, Duration::from_secs(7 * 86_400)).unwrap();
        let release =
            origin.read_ref(&"stable".parse().unwrap()).unwrap().expect("the fixture has a stable branch").to_string();
        drop(origin);
        let mut originals = BTreeMap::new();
        files(&served, &served, &mut originals);

        let (ready, address) = std::sync::mpsc::channel();
        let dir = served.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                ready.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir));
                let listener = listener.tap_io(|tcp| tcp.set_nodelay(true).unwrap());
                axum::serve(listener, app).await.unwrap();
            });
        });
        let url = format!("http://{}", address.recv().unwrap());
        let world = World {
            served,
            originals,
            url,
            key: public_hex(&signing.verifying_key()),
            release,
            nodes: [scratch.path().join("node-bare"), scratch.path().join("node-archive")],
            scratch: scratch.path().join("run"),
            _scratch: scratch,
        };
        for (node, mode) in world.nodes.iter().zip([RepoMode::Bare, RepoMode::Archive]) {
            let mut repo = Repo::init(node, mode, 3, ChunkerParams::default()).unwrap();
            let (remote, branch) = (remote(&world, true), "base".parse().unwrap());
            let first = pull(&mut repo, &remote, &branch, options(), Arc::new(Progress::default()));
            runtime().unwrap().block_on(first).unwrap();
        }
        world
    })
}

/// Applies the input's edits to the served files: each is a file (by index), an operation, an
/// offset, and bytes.
fn edit(world: &World, mut data: &[u8]) {
    let names: Vec<&PathBuf> = world.originals.keys().collect();
    while let Some((header, rest)) = data.split_first_chunk::<7>() {
        let length = usize::from(header[6]).min(rest.len());
        let (bytes, rest) = rest.split_at(length);
        data = rest;
        let name = names[usize::from(header[0]) % names.len()];
        let path = world.served.join(name);
        let mut content = fs::read(&path).unwrap();
        let offset = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as usize % (content.len() + 1);
        match header[1] % 4 {
            0 => {
                for (i, b) in bytes.iter().enumerate() {
                    if let Some(at) = content.get_mut(offset + i) {
                        *at = *b;
                    }
                }
            }
            1 => content.truncate(offset),
            2 => content.splice(offset..offset, bytes.iter().copied()).for_each(drop),
            _ => content = bytes.to_vec(),
        }
        fs::write(&path, content).unwrap();
    }
}

fn restore(world: &World) {
    for (name, bytes) in &world.originals {
        let path = world.served.join(name);
        if fs::read(&path).ok().as_deref() != Some(bytes) {
            fs::write(&path, bytes).unwrap();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let Some((&flags, edits)) = data.split_first() else { return };
    let _ = fs::remove_dir_all(&world.scratch);
    let node = &world.scratch;
    copy_dir(&world.nodes[usize::from(flags & 1)], node);
    edit(world, edits);
    let mut repo = Repo::open(node, Access::Write).unwrap();
    let outcome = runtime().unwrap().block_on(pull(
        &mut repo,
        &remote(world, flags & 2 == 0),
        &"stable".parse().unwrap(),
        options(),
        Arc::new(Progress::default()),
    ));
    restore(world);
    if let Ok(stats) = &outcome {
        assert_eq!(stats.commit.to_string(), world.release, "a pull accepted a release the publisher did not make");
    }
    drop(repo);
    let repo = Repo::open(node, Access::Read).unwrap();
    let report = osdeploy_store::fsck::fsck(&repo).unwrap();
    assert!(report.errors.is_empty(), "after {outcome:?} the node is damaged: {:?}", report.errors);
});
