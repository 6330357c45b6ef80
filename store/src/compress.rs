//! zstd compression of stored objects, with a hard cap on decoded sizes (bomb guard).

use std::cell::RefCell;

use crate::error::{Result, StoreError};

/// How an entry's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// As they are (used when zstd would not make them smaller).
    Raw = 0,
    /// One zstd frame.
    Zstd = 1,
}

impl Codec {
    /// The codec for a codec byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `raw` at `level`; returns the raw bytes instead when zstd does not shrink them.
pub fn compress(raw: &[u8], level: i32) -> (Codec, Vec<u8>) {
    let packed = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        slot.as_mut().and_then(|(_, c)| c.compress(raw).ok())
    });
    match packed {
        Some(p) if p.len() < raw.len() => (Codec::Zstd, p),
        _ => (Codec::Raw, raw.to_vec()),
    }
}

/// Decodes `stored` that declares `raw_len` bytes; `what` names the object in errors. Never
/// allocates or produces more than `raw_len` bytes, which the caller has checked against its limit.
pub fn decompress(codec: Codec, stored: &[u8], raw_len: u32, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
    let out = match codec {
        Codec::Raw => stored.to_vec(),
        Codec::Zstd => DECOMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = zstd::bulk::Decompressor::new().ok();
            }
            let d = slot.as_mut().ok_or_else(|| StoreError::Corrupt {
                what: what(),
                reason: "cannot create a zstd decompressor".into(),
            })?;
            d.decompress(stored, raw_len as usize).map_err(|e| StoreError::Corrupt {
                what: what(),
                reason: format!("zstd data does not decode to at most the declared {raw_len} bytes: {e}"),
            })
        })?,
    };
    if out.len() != raw_len as usize {
        return Err(StoreError::Corrupt {
            what: what(),
            reason: format!("decodes to {} bytes, but declares {raw_len}", out.len()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_raw_fallback() {
        let text = b"osdeploy ".repeat(1000);
        let (codec, packed) = compress(&text, 3);
        assert_eq!(codec, Codec::Zstd);
        assert_eq!(decompress(codec, &packed, text.len() as u32, &|| "x".into()).unwrap(), text);
        let (codec, packed) = compress(b"ab", 3);
        assert_eq!((codec, packed.as_slice()), (Codec::Raw, &b"ab"[..]));
    }

    #[test]
    fn bomb_is_refused_without_inflating() {
        let zeros = vec![0u8; 8 << 20];
        let (_, bomb) = compress(&zeros, 19);
        assert!(bomb.len() < 4096);
        let err = decompress(Codec::Zstd, &bomb, 64 << 10, &|| "chunk X".into()).unwrap_err();
        assert!(err.to_string().contains("chunk X"), "{err}");
    }
}
