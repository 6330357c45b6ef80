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

#[cfg(test)]
mod tests {
    use super::*;

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
