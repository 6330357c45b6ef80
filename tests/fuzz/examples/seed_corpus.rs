//! Writes seed corpora for the fuzz targets from real files: an archive repository (its packs and
//! indexes, objects, delta objects with their base content, summary, delta indexes, signatures) and
//! node files (`state=PATH`, `config=PATH`, `grub=PATH`, `uboot=PATH`). Run by make-corpus.sh.

use std::fs;
use std::path::{Path, PathBuf};

use osdeploy_store::delta::object::DeltaObject;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::pack::{decode_entry, decode_index};
use osdeploy_store::{Access, Repo};

/// Seeds larger than this are skipped: libFuzzer mutates small inputs best.
const MAX_SEED: usize = 64 * 1024;

fn seed(out: &Path, target: &str, bytes: &[u8]) {
    if bytes.len() > MAX_SEED {
        return;
    }
    let dir = out.join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(blake3::hash(bytes).to_hex().as_str()), bytes).unwrap();
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.map(|e| e.unwrap().path()).filter(|p| p.to_string_lossy().ends_with(suffix)).collect();
    files.sort();
    files
}

fn seed_repository(out: &Path, repo_dir: &Path) {
    let repo = Repo::open(repo_dir, Access::Read).expect("an archive repository");
    let summary = fs::read(repo_dir.join("summary")).unwrap();
    seed(out, "summary", &[&[0][..], &summary].concat());
    for delta_index in files_ending(&repo_dir.join("deltas"), ".dix") {
        seed(out, "summary", &[&[1][..], &fs::read(delta_index).unwrap()].concat());
    }
    if let Ok(signatures) = fs::read(repo_dir.join("summary.sig")) {
        seed(out, "signatures", &[&summary[..], &[0], &signatures].concat());
    }
    let indexes = [files_ending(&repo_dir.join("packs"), ".idx"), files_ending(&repo_dir.join("deltas"), ".idx")];
    for index_path in indexes.concat() {
        let index_bytes = fs::read(&index_path).unwrap();
        let pack = fs::read(index_path.with_extension("pack")).unwrap();
        if let Ok(length) = u16::try_from(index_bytes.len()) {
            seed(out, "pack_index", &[&length.to_le_bytes()[..], &index_bytes, &pack].concat());
        }
        let index = decode_index(&index_bytes, "seed").unwrap();
        for entry in &index.entries {
            let start = entry.offset as usize;
            let object = decode_entry(&pack[start..start + entry.span() as usize], entry, "seed").unwrap();
            let selector = match entry.kind {
                ObjectKind::Chunk => continue,
                ObjectKind::File => 0,
                ObjectKind::DirTree => 1,
                ObjectKind::Commit => 2,
                ObjectKind::Delta => 3,
                ObjectKind::MetadataDelta => 4,
            };
            seed(out, "objects", &[&[selector][..], &object].concat());
            if entry.kind == ObjectKind::Delta {
                seed_delta(out, &repo, &DeltaObject::decode(entry.id, &object).unwrap());
            }
        }
    }
}

/// A delta_codec seed: codec, target size, base length, base content, payload.
fn seed_delta(out: &Path, repo: &Repo, delta: &DeltaObject) {
    let base = repo.file_content(&delta.base).unwrap();
    let (Ok(base_len), Ok(size)) = (u16::try_from(base.len()), u32::try_from(delta.target_size)) else { return };
    if size >= 1 << 24 {
        return;
    }
    let header = [[delta.codec as u8 - 1].as_slice(), &size.to_le_bytes()[..3], &base_len.to_le_bytes()].concat();
    seed(out, "delta_codec", &[&header[..], &base, &delta.payload].concat());
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let out = PathBuf::from(args.next().expect("usage: seed_corpus OUT REPO [state|config|grub|uboot=PATH ...]"));
    seed_repository(&out, Path::new(&args.next().expect("an archive repository")));
    for node_file in args {
        let text = node_file.to_string_lossy().into_owned();
        let (kind, path) = text.split_once('=').expect("KIND=PATH");
        let selector = ["state", "config", "grub", "uboot"].iter().position(|k| *k == kind).expect("a node file kind");
        seed(out.as_path(), "node_files", &[&[selector as u8][..], &fs::read(path).unwrap()].concat());
    }
}
