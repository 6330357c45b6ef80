//! The systemd-boot backend: one Boot Loader Specification type #1 entry per slot, with systemd-boot's automatic
//! boot assessment (boot counting in the file name).
//!
//! # Entries
//!
//! `$BOOT/loader/entries/osdeploy-a.conf` and `osdeploy-b.conf` (written by [`SystemdBoot::write_entry`]; the options
//! carry `osdeploy.slot=a|b`). A slot on trial has a counter in its file name, `osdeploy-b+3.conf`: `+LEFT-DONE`, with
//! `-DONE` optional. At every boot of a counted entry systemd-boot renames it before starting the kernel,
//! `+3` → `+2-1` → `+1-2` → `+0-3`; an entry with `+0` is "bad" and sorts after all others. `mark-good` renames the
//! entry to drop the counter (what `systemd-bless-boot` does; if that service is enabled it may bless the entry first,
//! which this backend reads as the slot being good).
//!
//! # Which entry boots: the sort order, not `loader.conf`
//!
//! The default is chosen by **sort order**, not by a `default` line naming one entry: systemd-boot's `default`
//! (and the `LoaderEntryDefault` EFI variable) select an entry even when it is "bad", so the trial could never fall
//! back. Instead `loader.conf` says `default osdeploy-*` (see [`SystemdBoot::install_loader_default`]), which picks
//! the first osdeploy entry in systemd-boot's order: bad entries last, then by `sort-key` (ascending), then
//! `machine-id`, then `version` and id (descending). This backend gives the entries sort keys by role:
//!
//! | role                        | `sort-key`            |
//! |-----------------------------|-----------------------|
//! | the trial slot              | `osdeploy-1-trial`    |
//! | the default (known-good)    | `osdeploy-2-default`  |
//! | the other slot              | `osdeploy-3-other`    |
//!
//! so the trial boots first while it has tries left, and the default once it is bad. Do not set `LoaderEntryDefault`
//! (`bootctl set-default`) or a one-shot entry: they override the order.
//!
//! Each change renames and rewrites at most the two entry files, each step atomic, the entry that boots next last, so
//! that an interruption leaves a bootable, if not yet final, order. [`Bootloader::boot`] plays systemd-boot: it picks
//! the first entry in that order and bumps its counter.

use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};

use super::{
    BootState, Bootloader, BootloaderError, Core, IoContext, Result, Slot, Trial, check_tries, read_optional,
    sync_renamed, write_atomic,
};

/// The entry file name prefix.
const PREFIX: &str = "osdeploy-";

/// The sort key of the trial slot's entry.
pub const SORT_KEY_TRIAL: &str = "osdeploy-1-trial";
/// The sort key of the default slot's entry.
pub const SORT_KEY_DEFAULT: &str = "osdeploy-2-default";
/// The sort key of the other slot's entry.
pub const SORT_KEY_OTHER: &str = "osdeploy-3-other";

/// The `loader.conf` line that makes systemd-boot boot the first osdeploy entry in sort order.
pub const LOADER_DEFAULT_LINE: &str = "default osdeploy-*";

/// What a slot's entry boots (the parts of a type #1 entry osdeploy writes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlsEntry {
    /// The menu title.
    pub title: String,
    /// The version shown (and used for ordering only between equal sort keys).
    pub version: Option<String>,
    /// The kernel, relative to the partition root (`/osdeploy/b/vmlinuz`).
    pub linux: String,
    /// The initrds, relative to the partition root.
    pub initrd: Vec<String>,
    /// The kernel command line; `osdeploy.slot=SLOT` is appended unless present.
    pub options: String,
}

/// One osdeploy entry file as found.
#[derive(Clone, Debug)]
struct Entry {
    slot: Slot,
    file_name: String,
    /// `(tries left, tries done)` from the file name.
    counter: Option<(u32, u32)>,
    content: String,
    sort_key: Option<String>,
    machine_id: Option<String>,
    version: Option<String>,
}

impl Entry {
    /// The entry id systemd-boot uses: the file name without the counter, lower case.
    fn id(&self) -> String {
        format!("{PREFIX}{}.conf", self.slot)
    }

    /// Whether systemd-boot considers the entry bad (no tries left).
    fn bad(&self) -> bool {
        self.counter.is_some_and(|(left, _)| left == 0)
    }
}

/// Splits an entry file name into slot and counter; `None` if it is not an osdeploy entry name.
fn parse_file_name(name: &str) -> Option<(Slot, Option<(u32, u32)>)> {
    let stem = name.strip_prefix(PREFIX)?.strip_suffix(".conf")?;
    let (slot, counter) = match stem.split_once('+') {
        None => (stem, None),
        Some((slot, counter)) => {
            let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
            let number = |s: &str| s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse::<u32>().ok()).flatten();
            (slot, Some((number(left)?, number(done)?)))
        }
    };
    Some((slot.parse().ok()?, counter))
}

/// The file name of a slot's entry with a counter.
fn file_name(slot: Slot, counter: Option<(u32, u32)>) -> String {
    match counter {
        None => format!("{PREFIX}{slot}.conf"),
        Some((left, 0)) => format!("{PREFIX}{slot}+{left}.conf"),
        Some((left, done)) => format!("{PREFIX}{slot}+{left}-{done}.conf"),
    }
}

/// The `key value` lines of an entry, without comments and blank lines.
fn fields(content: &str) -> impl Iterator<Item = (&str, &str)> {
    content.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (key, value) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        Some((key, value.trim()))
    })
}

/// The last value of a field (as systemd-boot, the last occurrence wins).
fn field(content: &str, key: &str) -> Option<String> {
    fields(content).filter(|(k, _)| *k == key).last().map(|(_, v)| v.to_owned())
}

/// Replaces the entry's `sort-key` lines with one for `key` (after `title`, or first).
fn with_sort_key(content: &str, key: &str) -> String {
    let is_sort_key = |line: &str| line.trim().split([' ', '\t']).next() == Some("sort-key");
    let mut lines: Vec<String> = content.lines().filter(|l| !is_sort_key(l)).map(str::to_owned).collect();
    let at = lines.iter().position(|l| l.trim().split([' ', '\t']).next() == Some("title")).map_or(0, |i| i + 1);
    lines.insert(at, format!("sort-key {key}"));
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Version comparison in the spirit of systemd's `strverscmp_improved`: runs of digits compare numerically, other
/// characters by byte; an absent version sorts first.
pub(crate) fn verscmp(a: Option<&str>, b: Option<&str>) -> Ordering {
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a.as_bytes(), b.as_bytes()),
        (a, b) => return a.is_some().cmp(&b.is_some()),
    };
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let (si, sj) = (i, j);
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let x = std::str::from_utf8(&a[si..i]).unwrap_or("0").trim_start_matches('0');
            let y = std::str::from_utf8(&b[sj..j]).unwrap_or("0").trim_start_matches('0');
            let ord = x.len().cmp(&y.len()).then_with(|| x.cmp(y));
            if ord != Ordering::Equal {
                return ord;
            }
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

/// systemd-boot's entry order (`boot_entry_compare`), restricted to what osdeploy entries use.
fn boot_order(a: &Entry, b: &Entry) -> Ordering {
    a.bad()
        .cmp(&b.bad())
        .then_with(|| a.sort_key.is_none().cmp(&b.sort_key.is_none()))
        .then_with(|| match (&a.sort_key, &b.sort_key) {
            (Some(x), Some(y)) => x
                .cmp(y)
                .then_with(|| a.machine_id.cmp(&b.machine_id))
                .then_with(|| verscmp(a.version.as_deref(), b.version.as_deref()).reverse()),
            _ => Ordering::Equal,
        })
        .then_with(|| verscmp(Some(&a.id()), Some(&b.id())).reverse())
        .then_with(|| match (a.counter, b.counter) {
            (Some((left_a, done_a)), Some((left_b, done_b))) => left_b.cmp(&left_a).then(done_a.cmp(&done_b)),
            _ => Ordering::Equal,
        })
}

/// systemd-boot entries with boot counting under an ESP or XBOOTLDR partition.
#[derive(Clone, Debug)]
pub struct SystemdBoot {
    root: PathBuf,
    entries: PathBuf,
}

impl SystemdBoot {
    /// A backend for the partition mounted at `root` (the directory holding `loader/`, e.g. `/boot` or `/efi`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let entries = root.join("loader/entries");
        SystemdBoot { root, entries }
    }

    /// The entries directory, `ROOT/loader/entries`.
    pub fn entries_dir(&self) -> &Path {
        &self.entries
    }

    /// Reads the osdeploy entries, one per slot at most.
    fn read_entries(&self) -> Result<[Option<Entry>; 2]> {
        let dir = &self.entries;
        let mut found: [Option<Entry>; 2] = [None, None];
        let listing = match fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(error) => return Err(BootloaderError::Io { path: dir.clone(), error }),
        };
        for item in listing {
            let item = item.at(dir)?;
            let name = item.file_name();
            let Some(name) = name.to_str().filter(|n| n.starts_with(PREFIX)) else { continue };
            let path = dir.join(name);
            let Some((slot, counter)) = parse_file_name(name) else {
                return Err(BootloaderError::Corrupt {
                    path,
                    reason: "not an osdeploy entry name (osdeploy-a.conf, osdeploy-b+LEFT[-DONE].conf)".to_owned(),
                });
            };
            let bytes = fs::read(&path).at(&path)?;
            let content = String::from_utf8(bytes).map_err(|_| BootloaderError::Corrupt {
                path: path.clone(),
                reason: "the boot entry is not UTF-8 text".to_owned(),
            })?;
            let index = slot as usize;
            if let Some(other) = &found[index] {
                return Err(BootloaderError::Corrupt {
                    path: dir.clone(),
                    reason: format!("two entries for slot {slot}: {} and {name}", other.file_name),
                });
            }
            found[index] = Some(Entry {
                slot,
                file_name: name.to_owned(),
                counter,
                sort_key: field(&content, "sort-key"),
                machine_id: field(&content, "machine-id"),
                version: field(&content, "version"),
                content,
            });
        }
        Ok(found)
    }

    /// The entries in systemd-boot's order (first boots); [`BootloaderError::NoEntries`] if there are none.
    fn ordered<'a>(&self, entries: &'a [Option<Entry>; 2]) -> Result<Vec<&'a Entry>> {
        let mut ordered: Vec<&Entry> = entries.iter().flatten().collect();
        if ordered.is_empty() {
            return Err(BootloaderError::NoEntries { path: self.entries.clone() });
        }
        ordered.sort_by(|a, b| boot_order(a, b));
        Ok(ordered)
    }

    /// The model the entries encode, and the slot systemd-boot boots next.
    fn core(&self, entries: &[Option<Entry>; 2]) -> Result<(Core, Slot)> {
        let ordered = self.ordered(entries)?;
        let next = ordered[0].slot;
        let mut counted = entries.iter().flatten().filter(|e| e.counter.is_some());
        let trial = counted.next();
        if let Some(second) = counted.next() {
            return Err(BootloaderError::Corrupt {
                path: self.entries.clone(),
                reason: format!(
                    "both slots' entries carry boot counters ({} and {}); only a trial slot has one",
                    trial.map_or("", |e| e.file_name.as_str()),
                    second.file_name
                ),
            });
        }
        let core = match trial {
            Some(entry) => {
                let (tries_left, _) = entry.counter.expect("counted");
                Core { default: entry.slot.other(), trial: Some(Trial { slot: entry.slot, tries_left }) }
            }
            None => Core { default: next, trial: None },
        };
        Ok((core, next))
    }

    /// The sort key of `slot`'s entry in `core`.
    fn role_key(core: &Core, slot: Slot) -> &'static str {
        if core.trial.is_some_and(|t| t.slot == slot) {
            SORT_KEY_TRIAL
        } else if core.default == slot {
            SORT_KEY_DEFAULT
        } else {
            SORT_KEY_OTHER
        }
    }

    /// Renames one entry, durably.
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.entries.join(from), self.entries.join(to));
        fs::rename(&from, &to).at(&to)?;
        sync_renamed(&to)
    }

    /// Brings the entries in line with `core`: counters in the names and sort keys by role; the entry that boots next
    /// is changed last.
    fn apply(&self, entries: &[Option<Entry>; 2], core: &Core) -> Result<()> {
        for slot in [core.next().other(), core.next()] {
            let Some(entry) = &entries[slot as usize] else { continue };
            let counter = match core.trial {
                Some(t) if t.slot == slot => match entry.counter {
                    Some((left, done)) if left == t.tries_left => Some((left, done)),
                    _ => Some((t.tries_left, 0)),
                },
                _ => None,
            };
            let name = file_name(slot, counter);
            if name != entry.file_name {
                self.rename(&entry.file_name, &name)?;
            }
            let key = Self::role_key(core, slot);
            if entry.sort_key.as_deref() != Some(key) {
                write_atomic(&self.entries.join(&name), with_sort_key(&entry.content, key).as_bytes())?;
            }
        }
        Ok(())
    }

    /// Reads, changes the model, checks that the slots it names have entries, applies.
    fn update(&self, slots_needed: &[Slot], change: impl FnOnce(Core) -> Core) -> Result<()> {
        let entries = self.read_entries()?;
        for &slot in slots_needed {
            if entries[slot as usize].is_none() {
                return Err(BootloaderError::MissingEntry { path: self.entries.clone(), slot });
            }
        }
        let (core, _) = self.core(&entries)?;
        self.apply(&entries, &change(core))
    }

    /// Writes the entry of `slot` (keeping its current file name and counter, or creating `osdeploy-SLOT.conf`), with
    /// the sort key of its current role; the first entry written becomes the default.
    pub fn write_entry(&self, slot: Slot, entry: &BlsEntry) -> Result<()> {
        let entries = self.read_entries()?;
        let key = match self.core(&entries) {
            Ok((core, _)) => Self::role_key(&core, slot),
            Err(BootloaderError::NoEntries { .. }) => SORT_KEY_DEFAULT,
            Err(e) => return Err(e),
        };
        let name = entries[slot as usize].as_ref().map_or_else(|| file_name(slot, None), |e| e.file_name.clone());
        let path = self.entries.join(&name);
        let single_line = |what: &str, value: &str| {
            if value.contains(['\n', '\r']) {
                Err(BootloaderError::Unrepresentable {
                    path: path.clone(),
                    what: what.to_owned(),
                    reason: "a boot entry field is one line".to_owned(),
                })
            } else {
                Ok(())
            }
        };
        let mut options = entry.options.trim().to_owned();
        let slot_option = format!("osdeploy.slot={slot}");
        if !options.split_whitespace().any(|o| o == slot_option) {
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&slot_option);
        }
        let mut content = String::new();
        let mut line = |key: &str, value: &str| -> Result<()> {
            single_line(key, value)?;
            content.push_str(&format!("{key} {value}\n"));
            Ok(())
        };
        line("title", &entry.title)?;
        line("sort-key", key)?;
        if let Some(version) = &entry.version {
            line("version", version)?;
        }
        line("linux", &entry.linux)?;
        for initrd in &entry.initrd {
            line("initrd", initrd)?;
        }
        line("options", &options)?;
        write_atomic(&path, content.as_bytes())
    }

    /// Sets `default osdeploy-*` in `ROOT/loader/loader.conf`, keeping its other lines (and creating it if needed).
    pub fn install_loader_default(&self) -> Result<()> {
        let path = self.root.join("loader/loader.conf");
        let old = match read_optional(&path)? {
            Some(bytes) => String::from_utf8(bytes).map_err(|_| BootloaderError::Corrupt {
                path: path.clone(),
                reason: "loader.conf is not UTF-8 text".to_owned(),
            })?,
            None => String::new(),
        };
        let mut lines: Vec<&str> =
            old.lines().filter(|l| l.trim().split([' ', '\t']).next() != Some("default")).collect();
        lines.push(LOADER_DEFAULT_LINE);
        let mut new = lines.join("\n");
        new.push('\n');
        if new != old { write_atomic(&path, new.as_bytes()) } else { Ok(()) }
    }
}

impl Bootloader for SystemdBoot {
    fn name(&self) -> &'static str {
        "systemd-boot"
    }

    fn location(&self) -> &Path {
        &self.entries
    }

    fn state(&self) -> Result<BootState> {
        let entries = self.read_entries()?;
        let (core, next) = self.core(&entries)?;
        Ok(BootState { next, ..core.state(None) })
    }

    fn arm_trial(&self, slot: Slot, tries: u32) -> Result<()> {
        check_tries(tries, &self.entries)?;
        self.update(&[slot], |core| core.arm(slot, tries))
    }

    fn mark_good(&self, slot: Slot) -> Result<()> {
        self.update(&[slot], |core| core.good(slot))
    }

    fn set_next(&self, slot: Slot) -> Result<()> {
        self.update(&[slot], |core| core.rollback(slot))
    }

    /// Plays systemd-boot: boots the first entry in its order and, if it has a counter, renames it
    /// `+LEFT-DONE` → `+(LEFT-1)-(DONE+1)` (LEFT stays at 0).
    fn boot(&self) -> Result<Slot> {
        let entries = self.read_entries()?;
        let first = self.ordered(&entries)?[0];
        if let Some((left, done)) = first.counter {
            self.rename(&first.file_name, &file_name(first.slot, Some((left.saturating_sub(1), done + 1))))?;
        }
        Ok(first.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (tempfile::TempDir, SystemdBoot) {
        let dir = tempfile::tempdir().unwrap();
        let sd = SystemdBoot::new(dir.path());
        for slot in Slot::ALL {
            let entry = BlsEntry {
                title: format!("osdeploy {slot}"),
                version: Some("1.0".to_owned()),
                linux: format!("/osdeploy/{slot}/vmlinuz"),
                initrd: vec![format!("/osdeploy/{slot}/initrd.img")],
                options: "root=LABEL=sysroot quiet".to_owned(),
            };
            sd.write_entry(slot, &entry).unwrap();
        }
        (dir, sd)
    }

    fn names(sd: &SystemdBoot) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(sd.entries_dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn file_names_parse() {
        assert_eq!(parse_file_name("osdeploy-a.conf"), Some((Slot::A, None)));
        assert_eq!(parse_file_name("osdeploy-b+3.conf"), Some((Slot::B, Some((3, 0)))));
        assert_eq!(parse_file_name("osdeploy-b+0-3.conf"), Some((Slot::B, Some((0, 3)))));
        assert_eq!(parse_file_name("osdeploy-c.conf"), None);
        assert_eq!(parse_file_name("osdeploy-b+x.conf"), None);
        assert_eq!(parse_file_name("osdeploy-b+-1.conf"), None);
        assert_eq!(file_name(Slot::B, Some((2, 1))), "osdeploy-b+2-1.conf");
    }

    #[test]
    fn first_entry_is_default_and_entries_carry_the_slot() {
        let (_dir, sd) = backend();
        let state = sd.state().unwrap();
        assert_eq!((state.default, state.trial, state.next), (Slot::A, None, Slot::A));
        let a = fs::read_to_string(sd.entries_dir().join("osdeploy-a.conf")).unwrap();
        assert_eq!(
            a,
            "title osdeploy a\nsort-key osdeploy-2-default\nversion 1.0\nlinux /osdeploy/a/vmlinuz\n\
             initrd /osdeploy/a/initrd.img\noptions root=LABEL=sysroot quiet osdeploy.slot=a\n"
        );
        assert_eq!(
            field(&fs::read_to_string(sd.entries_dir().join("osdeploy-b.conf")).unwrap(), "sort-key").unwrap(),
            SORT_KEY_OTHER
        );
    }

    #[test]
    fn trial_counts_down_in_the_file_name_and_falls_back() {
        let (_dir, sd) = backend();
        sd.arm_trial(Slot::B, 3).unwrap();
        assert_eq!(names(&sd), ["osdeploy-a.conf", "osdeploy-b+3.conf"]);
        let state = sd.state().unwrap();
        assert_eq!((state.default, state.next, state.tries_left()), (Slot::A, Slot::B, 3));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(sd.boot().unwrap());
        }
        assert_eq!(seen, [Slot::B, Slot::B, Slot::B, Slot::A]);
        assert_eq!(names(&sd), ["osdeploy-a.conf", "osdeploy-b+0-3.conf"]);
        let state = sd.state().unwrap();
        assert_eq!(state.trial, Some(Trial { slot: Slot::B, tries_left: 0 }));
        assert_eq!((state.default, state.next), (Slot::A, Slot::A));
    }

    #[test]
    fn mark_good_drops_the_counter_and_reorders() {
        let (_dir, sd) = backend();
        sd.arm_trial(Slot::B, 3).unwrap();
        assert_eq!(sd.boot().unwrap(), Slot::B);
        assert_eq!(names(&sd), ["osdeploy-a.conf", "osdeploy-b+2-1.conf"]);
        sd.mark_good(Slot::B).unwrap();
        assert_eq!(names(&sd), ["osdeploy-a.conf", "osdeploy-b.conf"]);
        let state = sd.state().unwrap();
        assert_eq!((state.default, state.trial, state.next), (Slot::B, None, Slot::B));
        assert_eq!(sd.boot().unwrap(), Slot::B);
        sd.set_next(Slot::A).unwrap();
        assert_eq!(sd.boot().unwrap(), Slot::A);
        let b = fs::read_to_string(sd.entries_dir().join("osdeploy-b.conf")).unwrap();
        assert_eq!(field(&b, "sort-key").as_deref(), Some(SORT_KEY_OTHER));
        assert_eq!(b.matches("sort-key").count(), 1);
    }

    #[test]
    fn missing_and_duplicate_entries_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let sd = SystemdBoot::new(dir.path());
        let err = sd.state().unwrap_err();
        assert!(matches!(err, BootloaderError::NoEntries { .. }), "{err}");
        assert!(err.to_string().contains("loader/entries"), "{err}");
        let (_dir, sd) = backend();
        fs::remove_file(sd.entries_dir().join("osdeploy-b.conf")).unwrap();
        let err = sd.arm_trial(Slot::B, 3).unwrap_err();
        assert!(matches!(err, BootloaderError::MissingEntry { slot: Slot::B, .. }), "{err}");
        fs::write(sd.entries_dir().join("osdeploy-a+2.conf"), "title x\n").unwrap();
        let err = sd.state().unwrap_err().to_string();
        assert!(err.contains("two entries for slot a"), "{err}");
        fs::remove_file(sd.entries_dir().join("osdeploy-a+2.conf")).unwrap();
        fs::write(sd.entries_dir().join("osdeploy-x.conf"), "title x\n").unwrap();
        let err = sd.state().unwrap_err().to_string();
        assert!(err.contains("osdeploy-x.conf"), "{err}");
    }

    #[test]
    fn loader_conf_default_is_set_and_other_lines_kept() {
        let (dir, sd) = backend();
        let conf = dir.path().join("loader/loader.conf");
        fs::write(&conf, "timeout 3\ndefault debian-*\nconsole-mode max\n").unwrap();
        sd.install_loader_default().unwrap();
        assert_eq!(fs::read_to_string(&conf).unwrap(), "timeout 3\nconsole-mode max\ndefault osdeploy-*\n");
    }

    #[test]
    fn versions_compare_like_systemd() {
        assert_eq!(verscmp(Some("1.10"), Some("1.9")), Ordering::Greater);
        assert_eq!(verscmp(Some("osdeploy-b.conf"), Some("osdeploy-a.conf")), Ordering::Greater);
        assert_eq!(verscmp(None, Some("1")), Ordering::Less);
        assert_eq!(verscmp(Some("1.0"), Some("1.0")), Ordering::Equal);
    }
}
