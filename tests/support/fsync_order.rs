//! Checks a command's durability order from an strace log (`strace -f -y`): before a name that
//! makes data reachable is published — a ref, the deployment state, the bootloader's choice, a
//! committed SQLite transaction — every byte written and every directory entry created must
//! already be on disk (synced by fsync/fdatasync of that file or directory, or by a syncfs
//! issued after it); and every published name must itself be synced before the command ends.
//!
//! Scratch space whose loss a rerun repairs is not held to this: `tmp/` and `staging/`
//! (resumable downloads, verified on use), `cache/`, lock files, SQLite's `-shm` and the WAL file's
//! content (SQLite orders its own writes; its commit is the WAL's fsync, checked as a
//! publication).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A durability violation: what was published, and what was not yet on disk.
#[derive(Debug)]
pub struct Violation {
    /// The strace line of the publication (or "end of the command").
    pub at: String,
    /// What was not synced.
    pub unsynced: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {}: not on disk: {}", self.at, self.unsynced.join(", "))
    }
}

/// What the check saw, for the report.
#[derive(Debug, Default)]
pub struct Summary {
    /// Publications checked.
    pub publications: usize,
    /// fsync/fdatasync calls.
    pub fsyncs: usize,
    /// syncfs calls.
    pub syncfs: usize,
    /// Renames and links.
    pub renames: usize,
}

/// True for what a rerun repairs (see the module's doc), and for paths outside `root`.
fn is_scratch(root: &str, path: &str) -> bool {
    let Some(relative) = path.strip_prefix(root) else { return true };
    relative.split('/').any(|c| matches!(c, "tmp" | "staging" | "cache"))
        || path.ends_with("lock")
        || path.ends_with("-shm")
        || path.ends_with("-wal")
        || path.contains("(deleted)")
}

/// True when renaming or linking onto `path` publishes something that makes data reachable.
fn publishes(path: &str) -> bool {
    path.contains("/refs/")
        || path.ends_with("/osdeploy/state")
        || path.ends_with("/bootloader.json")
        || path.ends_with("/grubenv")
        || path.ends_with("/summary")
}

/// The quoted strings of an strace line, in order (escapes left as they are).
fn quoted(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            let mut s = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => s.extend(chars.next()),
                    '"' => break,
                    c => s.push(c),
                }
            }
            out.push(s);
        }
    }
    out
}

/// The paths strace -y shows for descriptors (`3</a/b>`), in order.
fn fd_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('>') else { break };
        if start > 0 && rest.as_bytes()[start - 1].is_ascii_digit() && after.starts_with('/') {
            out.push(after[..end].to_string());
        }
        rest = &after[end + 1..];
    }
    out
}

fn parent(path: &str) -> String {
    Path::new(path).parent().map_or_else(|| "/".into(), |p| p.display().to_string())
}

/// Resolves a path argument against the descriptor path before it (`AT_FDCWD</cwd>` or `3</dir>`).
fn resolve(dir: Option<&String>, name: &str) -> String {
    if name.starts_with('/') {
        name.to_string()
    } else {
        dir.map_or_else(|| name.to_string(), |d| PathBuf::from(d).join(name).display().to_string())
    }
}

/// Checks the strace log `log` for what lies below `root`, where `existing` were the paths before
/// the command (opening one of them with O_CREAT creates nothing); returns what it saw and the
/// violations.
pub fn check(log: &str, root: &Path, mut existing: HashSet<String>) -> (Summary, Vec<Violation>) {
    let root = root.display().to_string();
    let mut summary = Summary::default();
    let mut violations = Vec::new();
    // Files whose data is not yet synced; directory entries (dir, name) not yet synced.
    let mut dirty: HashSet<String> = HashSet::new();
    let mut entries: HashSet<(String, String)> = HashSet::new();
    // The last path seen for each descriptor number (for linkat of /proc/self/fd/N).
    let mut fds: HashMap<String, String> = HashMap::new();
    let mut published: Vec<String> = Vec::new();
    let mut wal_written = false;

    let add_entry = |entries: &mut HashSet<(String, String)>, path: &str| {
        entries.insert((parent(path), path.to_string()));
    };
    let check_now = |at: &str,
                     dirty: &HashSet<String>,
                     entries: &HashSet<(String, String)>,
                     skip: &str,
                     violations: &mut Vec<Violation>| {
        let mut unsynced: Vec<String> = dirty
            .iter()
            .filter(|p| !is_scratch(&root, p) && p.as_str() != skip)
            .map(|p| format!("data of {p}"))
            .chain(
                entries
                    .iter()
                    .filter(|(_, p)| !is_scratch(&root, p) && p.as_str() != skip)
                    .map(|(d, p)| format!("entry {p} in {d}")),
            )
            .collect();
        if !unsynced.is_empty() {
            unsynced.sort();
            violations.push(Violation { at: at.to_string(), unsynced });
        }
    };

    // A call another thread interrupts is split in two lines: its arguments ("<unfinished ...>"),
    // later its result ("<... NAME resumed>"); it is joined and takes effect when it returns.
    let mut interrupted: HashMap<String, String> = HashMap::new();
    for raw in log.lines() {
        let pid = raw.split_whitespace().next().unwrap_or_default().to_string();
        let joined;
        let line = if let Some(head) = raw.strip_suffix(" <unfinished ...>") {
            interrupted.insert(pid, head.to_string());
            continue;
        } else if let Some((_, result)) = raw.split_once(" resumed>") {
            let Some(head) = interrupted.remove(&pid) else { continue };
            joined = format!("{head}{result}");
            joined.as_str()
        } else {
            raw
        };
        let call = line.split_whitespace().nth(1).unwrap_or_default();
        let name = call.split('(').next().unwrap_or_default();
        if line.contains("= -1 ") {
            continue;
        }
        let paths = fd_paths(line);
        let strings = quoted(line);
        match name {
            "openat" => {
                if let Some((fd, path)) = line.rsplit_once("= ").and_then(|(_, r)| {
                    let (fd, rest) = r.split_once('<')?;
                    Some((fd.to_string(), rest.trim_end_matches('>').to_string()))
                }) {
                    fds.insert(fd, path.clone());
                    let created = line.contains("O_CREAT") && !line.contains("O_TMPFILE");
                    if created && existing.insert(path.clone()) {
                        add_entry(&mut entries, &path);
                    }
                }
            }
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" | "ftruncate" | "fallocate" => {
                if let Some(path) = paths.first() {
                    wal_written |= path.ends_with("-wal");
                    dirty.insert(path.clone());
                }
            }
            "copy_file_range" => {
                if let Some(path) = paths.get(1) {
                    dirty.insert(path.clone());
                }
            }
            "ioctl" if line.contains("FICLONE") => {
                if let Some(path) = paths.first() {
                    dirty.insert(path.clone());
                }
            }
            "fsync" | "fdatasync" => {
                summary.fsyncs += 1;
                if let Some(path) = paths.first() {
                    // A transaction commits with the fsync of what it wrote to the WAL; an
                    // fsync of the WAL with nothing new (a checkpoint) publishes nothing.
                    if path.ends_with("-wal") && std::mem::take(&mut wal_written) {
                        summary.publications += 1;
                        check_now(line, &dirty, &entries, "", &mut violations);
                    }
                    dirty.remove(path);
                    if name == "fsync" {
                        entries.retain(|(d, _)| d != path);
                    }
                }
            }
            "syncfs" | "sync" => {
                summary.syncfs += 1;
                dirty.clear();
                entries.clear();
            }
            // Only new names matter: a removal that a power cut undoes leaves garbage, never a
            // name that reaches missing data.
            "mkdir" | "mkdirat" | "symlinkat" => {
                if let Some(target) = strings.last() {
                    add_entry(&mut entries, &resolve(paths.first(), target));
                }
            }
            "unlinkat" | "unlink" | "rmdir" => {
                if let Some(target) = strings.last() {
                    dirty.remove(&resolve(paths.first(), target));
                }
            }
            "rename" | "renameat" | "renameat2" | "linkat" => {
                summary.renames += 1;
                let (Some(from), Some(to)) = (strings.first(), strings.get(1)) else { continue };
                let from = match from.strip_prefix("/proc/self/fd/") {
                    Some(fd) => fds.get(fd).cloned().unwrap_or_default(),
                    None => resolve(paths.first(), from),
                };
                let to = resolve(paths.get(1).or(paths.first()), to);
                if publishes(&to) {
                    summary.publications += 1;
                    if dirty.contains(&from) {
                        violations.push(Violation { at: line.to_string(), unsynced: vec![format!("data of {from}")] });
                    }
                    check_now(line, &dirty, &entries, &from, &mut violations);
                    published.push(to.clone());
                }
                if dirty.remove(&from) {
                    dirty.insert(to.clone());
                }
                add_entry(&mut entries, &to);
            }
            _ => {}
        }
    }
    let unsynced: Vec<String> = published
        .iter()
        .filter(|p| dirty.contains(*p) || entries.iter().any(|(_, e)| e == *p))
        .map(|p| format!("{p} itself"))
        .collect();
    if !unsynced.is_empty() {
        violations.push(Violation { at: "end of the command".into(), unsynced });
    }
    (summary, violations)
}

/// Runs `command` under strace and checks its log for what lies below `root`; panics with the
/// violations.
pub fn assert_durable_order(command: &mut std::process::Command, what: &str, root: &Path, log_path: &Path) -> Summary {
    let mut traced = std::process::Command::new("strace");
    traced
        .args(["-f", "-y", "-qq", "-o"])
        .arg(log_path)
        .arg("-e")
        .arg("trace=openat,write,pwrite64,writev,pwritev,pwritev2,ftruncate,fallocate,copy_file_range,ioctl,fsync,fdatasync,syncfs,sync,rename,renameat,renameat2,linkat,mkdir,mkdirat,symlinkat,unlink,unlinkat,rmdir")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => traced.env(key, value),
            None => traced.env_remove(key),
        };
    }
    let existing: HashSet<String> = walk(root).into_iter().collect();
    let out = traced.output().expect("strace (installed by .ci/run)");
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(log_path).unwrap();
    let (summary, violations) = check(&log, root, existing);
    let listed: Vec<String> = violations.iter().map(Violation::to_string).collect();
    assert!(violations.is_empty(), "{what}: names published before their data was on disk:\n{}", listed.join("\n"));
    assert!(summary.publications > 0, "{what}: no publication seen in {}", log_path.display());
    summary
}

/// Every path below `root`, `root` included.
fn walk(root: &Path) -> Vec<String> {
    let mut out = vec![root.display().to_string()];
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&path));
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    out
}
