//! The U-Boot backend: the same three variables as the GRUB backend (`osdeploy_default`, `osdeploy_trial`,
//! `osdeploy_tries`, see [`super::grub`]) in a U-Boot environment, read at every boot by a boot script.
//!
//! # The environment
//!
//! The layout `fw_printenv`/`fw_setenv` (libubootenv, Debian package `libubootenv-tool`) and U-Boot use for a single
//! (non-redundant) environment of `size` bytes (`CONFIG_ENV_SIZE`):
//!
//! ```text
//! offset 0   CRC32 (IEEE, as zlib) of bytes 4..size, little-endian
//! offset 4   name=value\0name=value\0 … \0   (an empty string ends the list)
//!            zero padding up to size
//! ```
//!
//! This backend keeps the environment in a **regular file** holding exactly `size` bytes (an environment file on a
//! FAT or ext4 partition that U-Boot reads with `env import`/`CONFIG_ENV_IS_IN_FAT`/`EXT4`, or a copy for tests),
//! so that it can replace it atomically. `fw_printenv -c CONFIG` reads it with the `fw_env.config` line
//! `/path/to/file 0x0 SIZE`. Not supported: environments at an offset inside a block device or MTD partition and
//! redundant environments (two copies with a flags byte); those need in-place writes.
//!
//! # Boot script
//!
//! [`UBOOT_SCRIPT_SNIPPET`] (for `boot.cmd`, compiled with `mkimage -T script`) picks the slot like the GRUB snippet:
//! U-Boot's `setexpr` computes in hexadecimal, so the counter goes down by string comparison through `1 … 9`. It
//! uses hush local variables (`name=value`), which `saveenv` does not store. It has not been run on real U-Boot by
//! the tests; [`Bootloader::boot`] runs its logic on the file.

use std::path::{Path, PathBuf};

use super::{BootloaderError, Result, VarEnv, read_optional, write_atomic};

/// A common environment size (`CONFIG_ENV_SIZE` of many boards: 0x4000).
pub const DEFAULT_ENV_SIZE: usize = 0x4000;

/// The boot script fragment that consumes the variables and passes `osdeploy.slot=` to the kernel.
pub const UBOOT_SCRIPT_SNIPPET: &str = r#"# osdeploy: pick the slot to boot (see osdeploy::bootloader::uboot).
osdeploy_slot="${osdeploy_default}"
osdeploy_left=""
if test "${osdeploy_trial}" = a || test "${osdeploy_trial}" = b; then
  osdeploy_prev=0
  for osdeploy_n in 1 2 3 4 5 6 7 8 9; do
    if test "${osdeploy_tries}" = "${osdeploy_n}"; then
      osdeploy_left="${osdeploy_prev}"
    fi
    osdeploy_prev="${osdeploy_n}"
  done
fi
if test -n "${osdeploy_left}"; then
  setenv osdeploy_tries "${osdeploy_left}"
  saveenv
  osdeploy_slot="${osdeploy_trial}"
fi
if test "${osdeploy_slot}" != b; then
  osdeploy_slot=a
fi
setenv bootargs "${bootargs} osdeploy.slot=${osdeploy_slot}"
# then load the kernel, e.g.: load ${devtype} ${devnum}:2 ${kernel_addr_r} /osdeploy/slots/${osdeploy_slot}/boot/Image
"#;

/// The CRC32 (IEEE 802.3, reflected, as zlib and U-Boot compute it) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Parses a U-Boot environment image of exactly `size` bytes into its variables, in order.
pub fn parse_env(bytes: &[u8], size: usize, path: &Path) -> Result<Vec<(String, String)>> {
    let corrupt = |reason: String| BootloaderError::Corrupt { path: path.to_owned(), reason };
    if bytes.len() != size {
        return Err(corrupt(format!(
            "it is {} bytes, but the U-Boot environment is configured as {size} (0x{size:x}) bytes",
            bytes.len()
        )));
    }
    let Some((header, data)) = bytes.split_first_chunk::<4>() else {
        return Err(corrupt(format!("{} bytes cannot hold the 4-byte CRC32 header", bytes.len())));
    };
    let stored = u32::from_le_bytes(*header);
    let computed = crc32(data);
    if stored != computed {
        return Err(corrupt(format!(
            "bad CRC32: the header says {stored:08x}, the data has {computed:08x} (not a U-Boot environment of \
             {size} bytes, or damaged)"
        )));
    }
    let mut vars = Vec::new();
    let mut rest = data;
    loop {
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(corrupt("the variable list is not terminated by an empty string".to_owned()));
        };
        if end == 0 {
            return Ok(vars);
        }
        let offset = 4 + (data.len() - rest.len());
        let text = std::str::from_utf8(&rest[..end])
            .map_err(|_| corrupt(format!("the variable at byte {offset} is not UTF-8")))?;
        let Some((name, value)) = text.split_once('=').filter(|(name, _)| !name.is_empty()) else {
            return Err(corrupt(format!("the entry at byte {offset} is not `name=value`: {text:?}")));
        };
        vars.push((name.to_owned(), value.to_owned()));
        rest = &rest[end + 1..];
    }
}

/// Renders variables as a U-Boot environment image of exactly `size` bytes.
pub fn render_env(vars: &[(String, String)], size: usize, path: &Path) -> Result<Vec<u8>> {
    let mut out = vec![0u8; 4];
    for (name, value) in vars {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(BootloaderError::Unrepresentable {
                path: path.to_owned(),
                what: format!("variable {name:?}"),
                reason: "U-Boot variable names are not empty and hold no `=` or NUL; values hold no NUL".to_owned(),
            });
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out.push(0);
    if out.len() > size {
        return Err(BootloaderError::TooLarge { path: path.to_owned(), needed: out.len(), capacity: size });
    }
    out.resize(size, 0);
    let crc = crc32(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// The smallest environment: a 4-byte CRC and the empty variable list's terminating NUL.
const MIN_ENV_SIZE: usize = 5;

/// A U-Boot environment file holding the boot state.
#[derive(Clone, Debug)]
pub struct UBootEnv {
    path: PathBuf,
    size: usize,
}

impl UBootEnv {
    /// A backend using the environment file `path` of `size` bytes ([`DEFAULT_ENV_SIZE`] is common; it must match
    /// U-Boot's `CONFIG_ENV_SIZE`). A missing file counts as an empty environment (slot `a`, no trial) and is created
    /// at the first change. A size too small for the CRC and an empty variable list is refused.
    pub fn new(path: impl Into<PathBuf>, size: usize) -> Result<Self> {
        let path = path.into();
        if size < MIN_ENV_SIZE {
            return Err(BootloaderError::Corrupt {
                reason: format!(
                    "the configured environment size {size} is too small (at least {MIN_ENV_SIZE} bytes: a CRC and an empty variable list)"
                ),
                path,
            });
        }
        Ok(UBootEnv { path, size })
    }
}

impl VarEnv for UBootEnv {
    const NAME: &'static str = "u-boot";

    fn path(&self) -> &Path {
        &self.path
    }

    /// All variables of the environment, in order (empty if the file does not exist).
    fn read_vars(&self) -> Result<Vec<(String, String)>> {
        match read_optional(&self.path)? {
            Some(bytes) => parse_env(&bytes, self.size, &self.path),
            None => Ok(Vec::new()),
        }
    }

    /// Writes the variables as the whole environment, atomically.
    fn write_vars(&self, vars: &[(String, String)]) -> Result<()> {
        let bytes = render_env(vars, self.size, &self.path)?;
        write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootloader::*;

    const SIZE: usize = 0x2000;

    fn backend() -> (tempfile::TempDir, UBootEnv) {
        let dir = tempfile::tempdir().unwrap();
        let env = UBootEnv::new(dir.path().join("uboot.env"), SIZE).unwrap();
        (dir, env)
    }

    #[test]
    fn environments_too_small_for_a_crc_are_refused() {
        for size in 0..MIN_ENV_SIZE {
            let err = UBootEnv::new("/boot/uboot.env", size).unwrap_err().to_string();
            assert!(err.contains("/boot/uboot.env") && err.contains(&format!("size {size} is too small")), "{err}");
        }
        let env = UBootEnv::new(tempfile::tempdir().unwrap().path().join("e"), MIN_ENV_SIZE).unwrap();
        assert_eq!(env.read_vars().unwrap(), Vec::new());
    }

    #[test]
    fn crc32_matches_known_vectors() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        // zlib.crc32 of `foo=bar` in an 8 KiB environment.
        let mut image = vec![0u8; SIZE];
        image[4..12].copy_from_slice(b"foo=bar\0");
        assert_eq!(crc32(&image[4..]), 0xFDA2_E4CF);
    }

    #[test]
    fn env_round_trip_and_layout() {
        let vars = vec![("bootdelay".to_owned(), "2".to_owned()), ("empty".to_owned(), String::new())];
        let image = render_env(&vars, SIZE, Path::new("e")).unwrap();
        assert_eq!(image.len(), SIZE);
        assert_eq!(&image[4..25], b"bootdelay=2\0empty=\0\0\0");
        assert_eq!(u32::from_le_bytes(image[..4].try_into().unwrap()), crc32(&image[4..]));
        assert_eq!(parse_env(&image, SIZE, Path::new("e")).unwrap(), vars);
    }

    #[test]
    fn cycle_with_fallback_mark_good_and_rollback() {
        let (_dir, uboot) = backend();
        uboot.arm_trial(Slot::B, 2).unwrap();
        let booted: Vec<Slot> = (0..3).map(|_| uboot.boot().unwrap()).collect();
        assert_eq!(booted, [Slot::B, Slot::B, Slot::A]);
        assert_eq!(uboot.state().unwrap().trial, Some(Trial { slot: Slot::B, tries_left: 0 }));

        uboot.arm_trial(Slot::B, 3).unwrap();
        assert_eq!(uboot.boot().unwrap(), Slot::B);
        uboot.mark_good(Slot::B).unwrap();
        let state = uboot.state().unwrap();
        assert_eq!((state.default, state.trial, state.next), (Slot::B, None, Slot::B));
        uboot.set_next(Slot::A).unwrap();
        assert_eq!(uboot.boot().unwrap(), Slot::A);
        assert_eq!(std::fs::metadata(uboot.location()).unwrap().len(), SIZE as u64);
    }

    #[test]
    fn bad_images_name_the_file() {
        let (_dir, uboot) = backend();
        let good = render_env(&[("a".to_owned(), "1".to_owned())], SIZE, uboot.location()).unwrap();
        let mut bad_crc = good.clone();
        bad_crc[5] ^= 1;
        let mut no_equals = vec![0u8; SIZE];
        no_equals[4..9].copy_from_slice(b"abc\0\0");
        let crc = crc32(&no_equals[4..]);
        no_equals[..4].copy_from_slice(&crc.to_le_bytes());
        let mut unterminated = vec![b'x'; SIZE];
        let crc = crc32(&unterminated[4..]);
        unterminated[..4].copy_from_slice(&crc.to_le_bytes());
        let cases: [(&[u8], &str); 4] = [
            (&good[..SIZE - 1], "configured as 8192"),
            (&bad_crc, "bad CRC32"),
            (&no_equals, "not `name=value`"),
            (&unterminated, "not terminated"),
        ];
        for (bytes, what) in cases {
            std::fs::write(uboot.location(), bytes).unwrap();
            let err = uboot.state().unwrap_err().to_string();
            assert!(err.contains(&uboot.location().display().to_string()), "{err}");
            assert!(err.contains(what), "{err}");
        }
    }

    /// Found by the node_files fuzz target: an image shorter than its CRC header panicked.
    #[test]
    fn an_image_shorter_than_its_header_is_refused() {
        for size in 0..4 {
            let err = parse_env(&vec![0xef; size], size, Path::new("uboot.env")).unwrap_err().to_string();
            assert!(err.contains("cannot hold the 4-byte CRC32 header"), "{err}");
        }
    }

    #[test]
    fn oversized_variables_are_refused() {
        let (_dir, uboot) = backend();
        let err = render_env(&[("big".to_owned(), "x".repeat(SIZE))], SIZE, uboot.location()).unwrap_err();
        assert!(matches!(err, BootloaderError::TooLarge { capacity: SIZE, .. }), "{err}");
    }
}
