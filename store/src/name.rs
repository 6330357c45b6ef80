//! Validated names: one path component of a tree, and ref (branch) names.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::layout::RESERVED_REF_PREFIX;

/// Longest name accepted for one directory entry, as on Linux filesystems.
pub const MAX_NAME_LEN: usize = 255;

/// Checks that `name` is a single, safe path component: not empty, not `.` or `..`, no `/`,
/// no NUL, at most [`MAX_NAME_LEN`] bytes. Returns the reason it is not.
pub fn check_entry_name(name: &[u8]) -> Result<(), &'static str> {
    match name {
        [] => Err("empty name"),
        b"." | b".." => Err("'.' and '..' are not entry names"),
        _ if name.len() > MAX_NAME_LEN => Err("name longer than 255 bytes"),
        _ if name.contains(&b'/') => Err("name contains '/'"),
        _ if name.contains(&0) => Err("name contains a NUL byte"),
        _ => Ok(()),
    }
}

/// A validated ref (branch) name such as `stable/x86_64`: components of `[A-Za-z0-9._+-]`,
/// separated by single `/`, none empty, none starting with `.`, at most 200 bytes in all. Safe to
/// join below `refs/heads/`; serialized as the plain string, and checked again when deserialized.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct RefName(String);

impl RefName {
    /// Checks `name`; the error names it and says what is wrong.
    pub fn new(name: impl Into<String>) -> Result<RefName, StoreError> {
        let name = name.into();
        match ref_name_problem(&name) {
            None => Ok(RefName(name)),
            Some(reason) => Err(StoreError::InvalidRef { name, reason }),
        }
    }

    /// `REMOTE/BRANCH`: where a pull of `branch` from the remote called `remote` lands.
    pub fn remote(remote: &str, branch: &RefName) -> Result<RefName, StoreError> {
        RefName::new(format!("{remote}/{branch}"))
    }

    /// `osdeploy/NAME`: a ref osdeploy keeps for itself (a deployment's pin), below
    /// [`RESERVED_REF_PREFIX`], which no remote may take as its name.
    pub fn reserved(name: &str) -> Result<RefName, StoreError> {
        RefName::new(format!("{RESERVED_REF_PREFIX}/{name}"))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why `name` is not a ref name, or `None` when it is one.
fn ref_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 200 {
        return Some("must be 1 to 200 bytes long");
    }
    name.split('/').find_map(|part| {
        if part.is_empty() {
            Some("empty path component")
        } else if part.starts_with('.') {
            Some("a component starts with '.'")
        } else if !part.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)) {
            Some("only letters, digits, '.', '_', '+', '-' and '/' are allowed")
        } else {
            None
        }
    })
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RefName {
    type Err = StoreError;

    fn from_str(name: &str) -> Result<RefName, StoreError> {
        RefName::new(name)
    }
}

impl TryFrom<String> for RefName {
    type Error = StoreError;

    fn try_from(name: String) -> Result<RefName, StoreError> {
        RefName::new(name)
    }
}

/// Lets a map keyed by ref names be searched with a plain string.
impl Borrow<str> for RefName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for RefName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A tree's path or name as text, losslessly and unambiguously: UTF-8 prints as itself, but a
/// backslash is doubled, control characters are `\n`, `\t`, `\r`, `\xNN` or `\uNNNN`, and a byte
/// that is not UTF-8 is `\xNN` — the escapes of bash's `$'...'`, so that a printed name can be given
/// back to the shell, and two different names never print alike.
pub fn escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for piece in bytes.utf8_chunks() {
        for c in piece.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in piece.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// [`escaped`] of a path.
pub fn escaped_path(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    escaped(path.as_os_str().as_bytes())
}

/// The bytes [`escaped`] printed as `text`; `None` when `text` holds a backslash that is not one of
/// its escapes.
pub fn unescape(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let (&kind, tail) = rest.split_first()?;
        rest = tail;
        let hex = |digits: usize, rest: &mut &[u8]| -> Option<u32> {
            let text = std::str::from_utf8(rest.get(..digits)?).ok()?;
            *rest = &rest[digits..];
            u32::from_str_radix(text, 16).ok()
        };
        match kind {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'x' => out.push(u8::try_from(hex(2, &mut rest)?).ok()?),
            b'u' => out.extend_from_slice(char::from_u32(hex(4, &mut rest)?)?.to_string().as_bytes()),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_print_escaped_and_come_back() {
        let cases: [(&[u8], &str); 6] = [
            (b"plain-\xc3\xa9t\xc3\xa9", "plain-\u{e9}t\u{e9}"),
            (b"a\xffb", "a\\xffb"),
            (b"a\\xffb", "a\\\\xffb"),
            (b"line\nbreak\ttab\x1b", "line\\nbreak\\ttab\\x1b"),
            (b"\xc2\x85next-line", "\\u0085next-line"),
            (b"\xe9t\xe9", "\\xe9t\\xe9"),
        ];
        for (name, shown) in cases {
            assert_eq!(escaped(name), shown);
            assert_eq!(unescape(shown.as_bytes()).as_deref(), Some(name), "{shown}");
        }
        // Two names that lossy UTF-8 would print alike print differently.
        assert_ne!(escaped(b"\xff"), escaped(b"\xfe"));
        for bad in [&b"a\\"[..], b"\\q", b"\\x4", b"\\xzz", b"\\ud800"] {
            assert_eq!(unescape(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn entry_names() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
            assert!(check_entry_name(bad).is_err(), "{bad:?}");
        }
        for good in [&b"a"[..], b"...", b".hidden", b"\xff\xfe", &[b'x'; 255]] {
            assert!(check_entry_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn ref_names() {
        for (bad, reason) in [
            ("", "must be 1 to 200 bytes long"),
            (&"x".repeat(201), "must be 1 to 200 bytes long"),
            ("a//b", "empty path component"),
            ("/a", "empty path component"),
            ("/etc/passwd", "empty path component"),
            ("a/", "empty path component"),
            (".", "a component starts with '.'"),
            ("..", "a component starts with '.'"),
            ("../x", "a component starts with '.'"),
            ("a/./b", "a component starts with '.'"),
            ("a/../b", "a component starts with '.'"),
            ("a/.git", "a component starts with '.'"),
            ("a b", "only letters"),
            ("a:b", "only letters"),
            ("a\0b", "only letters"),
        ] {
            let err = RefName::new(bad).unwrap_err();
            assert!(matches!(&err, StoreError::InvalidRef { name, .. } if name == bad), "{bad}: {err:?}");
            let text = err.to_string();
            assert!(text.starts_with(&format!("invalid ref name {bad:?}: {reason}")), "{text}");
        }
        for good in ["stable", "stable/x86_64", "v1.2+build-3", "a..b", &"x".repeat(200)] {
            let name: RefName = good.parse().unwrap();
            assert_eq!((name.as_str(), name.to_string()), (good, good.to_string()));
            assert_eq!(RefName::try_from(good.to_string()).unwrap(), name);
        }
    }

    #[test]
    fn ref_names_compose() {
        let branch = RefName::new("stable/x86_64").unwrap();
        assert_eq!(RefName::remote("origin", &branch).unwrap().as_str(), "origin/stable/x86_64");
        assert!(RefName::remote(".hidden", &branch).is_err());
        assert!(RefName::remote(&"r".repeat(190), &branch).is_err(), "the whole name is at most 200 bytes");
        assert_eq!(RefName::reserved("slot-a").unwrap().as_str(), "osdeploy/slot-a");
        assert!(RefName::reserved("../slot-a").is_err());
    }

    #[test]
    fn ref_names_serialize_as_strings_and_are_checked_when_read() {
        let map = std::collections::BTreeMap::from([(RefName::new("a/b").unwrap(), RefName::new("c").unwrap())]);
        let text = serde_json::to_string(&map).unwrap();
        assert_eq!(text, r#"{"a/b":"c"}"#);
        assert_eq!(serde_json::from_str::<std::collections::BTreeMap<RefName, RefName>>(&text).unwrap(), map);
        for bad in [r#""../evil""#, r#""""#, r#""a//b""#] {
            let err = serde_json::from_str::<RefName>(bad).unwrap_err().to_string();
            assert!(err.contains("invalid ref name"), "{bad}: {err}");
        }
        let err = serde_json::from_str::<std::collections::BTreeMap<RefName, u32>>(r#"{"/abs": 1}"#).unwrap_err();
        assert!(err.to_string().contains("invalid ref name \"/abs\""), "{err}");
    }
}
