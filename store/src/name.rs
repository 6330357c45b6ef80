//! Validated names: one path component of a tree, and ref (branch) names.

use crate::error::StoreError;

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

/// Checks a ref name such as `stable/x86_64`: components of `[A-Za-z0-9._+-]`, separated by single
/// `/`, none empty, none starting with `.`, at most 200 bytes in all.
pub fn check_ref_name(name: &str) -> Result<(), StoreError> {
    let bad = |reason| StoreError::InvalidRef { name: name.to_string(), reason };
    if name.is_empty() || name.len() > 200 {
        return Err(bad("must be 1 to 200 bytes long"));
    }
    for part in name.split('/') {
        if part.is_empty() {
            return Err(bad("empty path component"));
        }
        if part.starts_with('.') {
            return Err(bad("a component starts with '.'"));
        }
        if !part.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)) {
            return Err(bad("only letters, digits, '.', '_', '+', '-' and '/' are allowed"));
        }
    }
    Ok(())
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
        for bad in ["", "a//b", "/a", "a/", "../x", "a/.git", "a b", "a:b"] {
            assert!(check_ref_name(bad).is_err(), "{bad}");
        }
        for good in ["stable", "stable/x86_64", "v1.2+build-3"] {
            assert!(check_ref_name(good).is_ok(), "{good}");
        }
    }
}
