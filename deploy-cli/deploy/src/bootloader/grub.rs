//! The GRUB backend: three variables in GRUB's environment block (`/boot/grub/grubenv`), read at every boot by a
//! snippet in `grub.cfg`.
//!
//! # The environment block
//!
//! Exactly [`ENV_BLOCK_SIZE`] (1024) bytes: the header line `# GRUB Environment Block\n`, then `name=value\n` lines
//! (a backslash escapes a backslash or a newline inside a value), then `#` padding to the full size. Lines starting
//! with `#` are comments. `grub-editenv FILE list` prints what this module writes and this module reads what
//! `grub-editenv FILE set name=value` writes; variables of others (`saved_entry`, `next_entry`, …) are kept.
//!
//! # Variables
//!
//! | variable           | meaning                                                        |
//! |--------------------|----------------------------------------------------------------|
//! | `osdeploy_default` | the known-good slot, `a` or `b` (like GRUB's `saved_entry`)     |
//! | `osdeploy_trial`   | the slot on trial, absent without trial                        |
//! | `osdeploy_tries`   | boots the trial has left, `0`–`9`, absent without trial        |
//!
//! `osdeploy_trial` + `osdeploy_tries` generalise GRUB's one-shot `next_entry` to N shots: the snippet boots the trial
//! while `osdeploy_tries` is above zero and saves it decremented **before** booting, so a boot that never reaches
//! `mark-good` still uses up a try; at zero the default boots again.
//!
//! # grub.cfg
//!
//! [`GRUB_CFG_SNIPPET`] (checked by `grub-script-check` in the tests) selects the slot and sets `default` to the
//! menu entry id `osdeploy-a` or `osdeploy-b`. `init-sysroot` writes it into `osdeploy.cfg` beside the environment
//! block ([`GrubEnv::install_menu`]), followed by `source` lines for `osdeploy-a.cfg` and `osdeploy-b.cfg`, the
//! slots' menu entries that `switch` writes when it installs a slot's kernel ([`GrubEnv::write_menu_entry`]):
//!
//! ```text
//! menuentry 'osdeploy 2 (slot b)' --id osdeploy-b {
//!   linux '/osdeploy/b-0123456789ab/vmlinuz' 'root=UUID=…' 'rw' 'osdeploy.slot=b'
//!   initrd '/osdeploy/b-0123456789ab/initrd.img'
//! }
//! ```
//!
//! The node's `grub.cfg` needs one line: `source ${prefix}/osdeploy.cfg`.
//!
//! GRUB script has no arithmetic, so the snippet counts down through the list `1 … 9` (hence
//! [`MAX_TRIES`](super::MAX_TRIES)). `save_env` only works where GRUB can write: keep `grubenv` on a plain filesystem
//! (ext4, the FAT ESP; not btrfs, LVM, RAID or an encrypted volume) and point `load_env`/`save_env` at it with
//! `-f` if it is not `$prefix/grubenv`. If GRUB cannot save, the tries never go down: boot-check reports it.
//!
//! [`Bootloader::boot`] runs the same logic on the file, for tests.

use std::path::{Path, PathBuf};

use super::{BlsEntry, BootloaderError, Result, Slot, VarEnv, read_optional, write_atomic};

/// The size of a GRUB environment block.
pub const ENV_BLOCK_SIZE: usize = 1024;

/// The first line of a GRUB environment block.
pub const ENV_BLOCK_HEADER: &str = "# GRUB Environment Block\n";

/// The grub.cfg fragment that consumes the variables: boots the trial while it has tries (saving the decremented
/// counter first), else the default, by setting `default` to the menu entry id `osdeploy-a` or `osdeploy-b`.
pub const GRUB_CFG_SNIPPET: &str = r#"# osdeploy: pick the slot to boot (see osdeploy::bootloader::grub).
load_env osdeploy_default osdeploy_trial osdeploy_tries
set osdeploy_slot="${osdeploy_default}"
set osdeploy_armed=0
if [ "${osdeploy_trial}" = a ]; then
  set osdeploy_armed=1
elif [ "${osdeploy_trial}" = b ]; then
  set osdeploy_armed=1
fi
if [ "${osdeploy_armed}" = 1 ]; then
  set osdeploy_left=""
  set osdeploy_prev=0
  for osdeploy_n in 1 2 3 4 5 6 7 8 9; do
    if [ "${osdeploy_tries}" = "${osdeploy_n}" ]; then
      set osdeploy_left="${osdeploy_prev}"
    fi
    set osdeploy_prev="${osdeploy_n}"
  done
  if [ -n "${osdeploy_left}" ]; then
    set osdeploy_tries="${osdeploy_left}"
    save_env osdeploy_tries
    set osdeploy_slot="${osdeploy_trial}"
  fi
fi
if [ "${osdeploy_slot}" != b ]; then
  set osdeploy_slot=a
fi
set default="osdeploy-${osdeploy_slot}"
"#;

/// Parses a GRUB environment block into its variables, in order.
pub fn parse_env_block(bytes: &[u8], path: &Path) -> Result<Vec<(String, String)>> {
    let corrupt = |reason: String| BootloaderError::Corrupt { path: path.to_owned(), reason };
    if bytes.len() != ENV_BLOCK_SIZE {
        return Err(corrupt(format!(
            "it is {} bytes, but a GRUB environment block is exactly {ENV_BLOCK_SIZE}",
            bytes.len()
        )));
    }
    if !bytes.starts_with(ENV_BLOCK_HEADER.as_bytes()) {
        return Err(corrupt("it does not start with the header line `# GRUB Environment Block`".to_owned()));
    }
    let mut vars = Vec::new();
    let mut i = ENV_BLOCK_HEADER.len();
    while i < bytes.len() {
        match bytes[i] {
            // A comment or the padding: skip to the next line.
            b'#' => i = bytes[i..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |n| i + n + 1),
            b'\n' => i += 1,
            _ => {
                let start = i;
                while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b'\n' {
                    i += 1;
                }
                if i == bytes.len() || bytes[i] == b'\n' {
                    return Err(corrupt(format!("the line at byte {start} is neither `name=value` nor a comment")));
                }
                let name = String::from_utf8(bytes[start..i].to_vec())
                    .map_err(|_| corrupt(format!("the variable name at byte {start} is not UTF-8")))?;
                i += 1;
                let mut value = Vec::new();
                loop {
                    match bytes.get(i) {
                        None => return Err(corrupt(format!("the value of {name} runs into the end of the block"))),
                        Some(b'\\') => {
                            let Some(&escaped) = bytes.get(i + 1) else {
                                return Err(corrupt(format!("the value of {name} ends in a lone backslash")));
                            };
                            value.push(escaped);
                            i += 2;
                        }
                        Some(b'\n') => {
                            i += 1;
                            break;
                        }
                        Some(&b) => {
                            value.push(b);
                            i += 1;
                        }
                    }
                }
                let value =
                    String::from_utf8(value).map_err(|_| corrupt(format!("the value of {name} is not UTF-8")))?;
                vars.push((name, value));
            }
        }
    }
    Ok(vars)
}

/// Renders variables as a GRUB environment block of exactly [`ENV_BLOCK_SIZE`] bytes.
pub fn render_env_block(vars: &[(String, String)], path: &Path) -> Result<Vec<u8>> {
    let mut out = ENV_BLOCK_HEADER.as_bytes().to_vec();
    for (name, value) in vars {
        if name.is_empty() || name.starts_with('#') || name.contains(['=', '\n', '\\']) {
            return Err(BootloaderError::Unrepresentable {
                path: path.to_owned(),
                what: format!("variable name {name:?}"),
                reason: "a GRUB variable name is not empty and holds no `=`, newline or backslash".to_owned(),
            });
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        for &b in value.as_bytes() {
            if b == b'\\' || b == b'\n' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'\n');
    }
    if out.len() > ENV_BLOCK_SIZE {
        return Err(BootloaderError::TooLarge { path: path.to_owned(), needed: out.len(), capacity: ENV_BLOCK_SIZE });
    }
    out.resize(ENV_BLOCK_SIZE, b'#');
    Ok(out)
}

/// A GRUB environment block holding the boot state.
#[derive(Clone, Debug)]
pub struct GrubEnv {
    path: PathBuf,
}

impl GrubEnv {
    /// A backend using the environment block at `path`. A missing file counts as an empty block (slot `a`, no trial)
    /// and is created at the first change.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        GrubEnv { path: path.into() }
    }

    /// The directory of the environment block (GRUB's `$prefix`), which holds the menu files.
    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Writes `osdeploy-SLOT.cfg` beside the environment block: the slot's menu entry, id `osdeploy-SLOT`, booting
    /// `entry` with `osdeploy.slot=SLOT` on the kernel command line.
    pub fn write_menu_entry(&self, slot: Slot, entry: &BlsEntry) -> Result<()> {
        let path = self.dir().join(format!("osdeploy-{slot}.cfg"));
        let slot_option = format!("osdeploy.slot={slot}");
        let mut args: Vec<&str> = entry.options.split_whitespace().filter(|o| *o != slot_option).collect();
        args.push(&slot_option);
        let mut text = format!("menuentry {} --id osdeploy-{slot} {{\n", quote(&entry.title));
        text.push_str(&format!("  linux {}", quote(&entry.linux)));
        for arg in args {
            text.push(' ');
            text.push_str(&quote(arg));
        }
        text.push('\n');
        if !entry.initrd.is_empty() {
            let initrds: Vec<String> = entry.initrd.iter().map(|i| quote(i)).collect();
            text.push_str(&format!("  initrd {}\n", initrds.join(" ")));
        }
        text.push_str("}\n");
        write_atomic(&path, text.as_bytes())
    }

    /// Writes `osdeploy.cfg` beside the environment block: [`GRUB_CFG_SNIPPET`], then the two slots' menu entries
    /// (those written yet). The node's `grub.cfg` runs it with `source ${prefix}/osdeploy.cfg`.
    pub fn install_menu(&self) -> Result<()> {
        let mut text = String::from(GRUB_CFG_SNIPPET);
        for slot in Slot::ALL {
            text.push_str(&format!(
                "if [ -f \"${{prefix}}/osdeploy-{slot}.cfg\" ]; then\n  source \"${{prefix}}/osdeploy-{slot}.cfg\"\nfi\n"
            ));
        }
        write_atomic(&self.dir().join("osdeploy.cfg"), text.as_bytes())
    }
}

/// Quotes a word for GRUB script: single quotes, a quote inside as `'\''`.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

impl VarEnv for GrubEnv {
    const NAME: &'static str = "grub";

    fn path(&self) -> &Path {
        &self.path
    }

    /// All variables of the block, in order (empty if the file does not exist).
    fn read_vars(&self) -> Result<Vec<(String, String)>> {
        match read_optional(&self.path)? {
            Some(bytes) => parse_env_block(&bytes, &self.path),
            None => Ok(Vec::new()),
        }
    }

    /// Writes the variables as the whole block, atomically.
    fn write_vars(&self, vars: &[(String, String)]) -> Result<()> {
        let bytes = render_env_block(vars, &self.path)?;
        write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootloader::*;

    fn backend() -> (tempfile::TempDir, GrubEnv) {
        let dir = tempfile::tempdir().unwrap();
        let env = GrubEnv::new(dir.path().join("grubenv"));
        (dir, env)
    }

    #[test]
    fn block_round_trip_and_layout() {
        let vars =
            vec![("saved_entry".to_owned(), "x".to_owned()), ("odd".to_owned(), "back\\slash\nnewline".to_owned())];
        let block = render_env_block(&vars, Path::new("g")).unwrap();
        assert_eq!(block.len(), ENV_BLOCK_SIZE);
        assert!(block.starts_with(b"# GRUB Environment Block\nsaved_entry=x\nodd=back\\\\slash\\\nnewline\n#"));
        assert!(block.ends_with(b"####"));
        assert_eq!(parse_env_block(&block, Path::new("g")).unwrap(), vars);
    }

    #[test]
    fn cycle_with_fallback_mark_good_and_rollback() {
        let (_dir, grub) = backend();
        grub.arm_trial(Slot::B, 3).unwrap();
        let state = grub.state().unwrap();
        assert_eq!((state.default, state.next, state.tries_left()), (Slot::A, Slot::B, 3));
        let booted: Vec<Slot> = (0..4).map(|_| grub.boot().unwrap()).collect();
        assert_eq!(booted, [Slot::B, Slot::B, Slot::B, Slot::A]);
        assert_eq!(grub.state().unwrap().trial, Some(Trial { slot: Slot::B, tries_left: 0 }));

        grub.arm_trial(Slot::B, 2).unwrap();
        assert_eq!(grub.boot().unwrap(), Slot::B);
        grub.mark_good(Slot::B).unwrap();
        let state = grub.state().unwrap();
        assert_eq!((state.default, state.trial, state.next), (Slot::B, None, Slot::B));
        assert_eq!(grub.boot().unwrap(), Slot::B);

        grub.set_next(Slot::A).unwrap();
        assert_eq!(grub.boot().unwrap(), Slot::A);
        let vars = grub.read_vars().unwrap();
        assert_eq!(vars, [("osdeploy_default".to_owned(), "a".to_owned())]);
    }

    #[test]
    fn other_variables_survive() {
        let (_dir, grub) = backend();
        let block = render_env_block(&[("saved_entry".to_owned(), "gnulinux".to_owned())], grub.location()).unwrap();
        std::fs::write(grub.location(), block).unwrap();
        grub.arm_trial(Slot::B, 1).unwrap();
        assert_eq!(get_var(&grub.read_vars().unwrap(), "saved_entry"), Some("gnulinux"));
    }

    #[test]
    fn bad_blocks_name_the_file() {
        let (_dir, grub) = backend();
        let good = render_env_block(&[], grub.location()).unwrap();
        let mut bad_header = good.clone();
        bad_header[2] = b'X';
        let mut no_equals = good.clone();
        no_equals[ENV_BLOCK_HEADER.len()..ENV_BLOCK_HEADER.len() + 4].copy_from_slice(b"abc\n");
        let mut garbage_value = good.clone();
        garbage_value[ENV_BLOCK_HEADER.len()..ENV_BLOCK_HEADER.len() + 17].copy_from_slice(b"osdeploy_trial=c\n");
        let cases: [(&[u8], &str); 5] = [
            (&good[..1000], "exactly 1024"),
            (&[good.clone(), vec![b'#'; 10]].concat(), "exactly 1024"),
            (&bad_header, "header"),
            (&no_equals, "neither"),
            (&garbage_value, "invalid slot"),
        ];
        for (bytes, what) in cases {
            std::fs::write(grub.location(), bytes).unwrap();
            let err = grub.state().unwrap_err().to_string();
            assert!(err.contains(&grub.location().display().to_string()), "{err}");
            assert!(err.contains(what), "{err}");
        }
    }

    #[test]
    fn oversized_variables_are_refused() {
        let (_dir, grub) = backend();
        let err = render_env_block(&[("big".to_owned(), "x".repeat(2000))], grub.location()).unwrap_err();
        assert!(matches!(err, BootloaderError::TooLarge { capacity: ENV_BLOCK_SIZE, .. }), "{err}");
        assert!(err.to_string().contains("grubenv"), "{err}");
    }
}
