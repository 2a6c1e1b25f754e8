//! Content hashes: every blob is named by the BLAKE3 hash of its bytes.
//!
//! Printed as `blake3-<64 hex digits>` so a hash in a log line, a report or a
//! command line is self-describing and cannot be confused with another digest.

use std::fmt;
use std::str::FromStr;

/// Length of a BLAKE3 digest in bytes.
pub const HASH_BYTES: usize = 32;

/// Prefix of the printed form of a [`Hash`].
pub const HASH_PREFIX: &str = "blake3-";

/// The BLAKE3 hash of a blob, which is also its name in the store.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash(pub [u8; HASH_BYTES]);

impl Hash {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; HASH_BYTES] {
        &self.0
    }

    /// Reads a hash from the first [`HASH_BYTES`] of `bytes`, if there are enough.
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        let raw: [u8; HASH_BYTES] = bytes.get(..HASH_BYTES)?.try_into().ok()?;
        Some(Hash(raw))
    }

    /// A short form (first 12 hex digits) for human output where the full
    /// hash would drown the line; never used as an identifier.
    pub fn short(&self) -> String {
        format!("{HASH_PREFIX}{}", &hex::encode(&self.0[..6]))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{HASH_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.short())
    }
}

/// Why a string is not a valid printed [`Hash`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a blob hash: {input:?} (expected {HASH_PREFIX} followed by 64 hex digits)")]
pub struct ParseHashError {
    input: String,
}

impl FromStr for Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Hash, ParseHashError> {
        let error = || ParseHashError {
            input: s.to_string(),
        };
        let digits = s.strip_prefix(HASH_PREFIX).ok_or_else(error)?;
        let mut raw = [0u8; HASH_BYTES];
        hex::decode_to_slice(digits, &mut raw).map_err(|_| error())?;
        Ok(Hash(raw))
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips() {
        let hash = Hash::of(b"keel");
        let printed = hash.to_string();
        assert!(printed.starts_with("blake3-"));
        assert_eq!(printed.len(), HASH_PREFIX.len() + 64);
        assert_eq!(printed.parse::<Hash>().unwrap(), hash);
    }

    #[test]
    fn rejects_malformed() {
        assert!("sha1-abcd".parse::<Hash>().is_err());
        assert!("blake3-zz".parse::<Hash>().is_err());
        assert!("blake3-".parse::<Hash>().is_err());
    }
}
