//! Object identities: blake3-256 digests, written as 64 lowercase hex digits.

use std::fmt;

/// A blake3-256 digest naming an object by its bytes (the uncompressed bytes of a chunk, or the
/// canonical encoding of a file, dirtree or commit object).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ObjectId(*blake3::hash(bytes).as_bytes())
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let bytes = data_encoding::HEXLOWER_PERMISSIVE.decode(text.as_bytes()).ok()?;
        Some(ObjectId(bytes.try_into().ok()?))
    }

    /// The 64-digit lowercase hex form.
    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }
}

impl From<blake3::Hash> for ObjectId {
    fn from(hash: blake3::Hash) -> Self {
        ObjectId(*hash.as_bytes())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for ObjectId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for ObjectId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ObjectId::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not an object id (64 hex digits)")))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Defines a typed id over [`ObjectId`] so that ids of different object kinds cannot be swapped.
macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub ObjectId);

        impl $name {
            /// The kind of object this id names.
            pub const KIND: crate::object::ObjectKind = $kind;
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

typed_id!(
    /// Id of a chunk: blake3 of its uncompressed bytes.
    ChunkId,
    crate::object::ObjectKind::Chunk
);
typed_id!(
    /// Id of a file object: blake3 of its canonical encoding (size + chunk list).
    FileId,
    crate::object::ObjectKind::File
);
typed_id!(
    /// Id of a dirtree object: blake3 of its canonical encoding.
    TreeId,
    crate::object::ObjectKind::DirTree
);
typed_id!(
    /// Id of a commit object: blake3 of its canonical encoding.
    CommitId,
    crate::object::ObjectKind::Commit
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_bad_input() {
        let id = ObjectId::of(b"osdeploy");
        assert_eq!(ObjectId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ObjectId::from_hex(&id.to_hex().to_uppercase()), Some(id));
        assert_eq!(ObjectId::from_hex("abc"), None);
        assert_eq!(ObjectId::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn ids_serialize_as_hex_strings_and_reject_bad_ones() {
        let id = crate::CommitId(ObjectId::of(b"osdeploy"));
        let text = serde_json::to_string(&id).unwrap();
        assert_eq!(text, format!("\"{}\"", id.0.to_hex()));
        assert_eq!(serde_json::from_str::<crate::CommitId>(&text).unwrap(), id);
        let err = serde_json::from_str::<crate::CommitId>("\"abc\"").unwrap_err().to_string();
        assert!(err.contains("\"abc\" is not an object id"), "{err}");
    }

    #[test]
    fn blake3_golden_value() {
        // Pins the hash function: a change of algorithm changes every id in every repository.
        assert_eq!(ObjectId::of(b"").to_hex(), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
    }
}
