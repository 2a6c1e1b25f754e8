//! What verification reports: one [`Finding`] per problem, naming the key
//! path, the blob and the kind of damage.
//!
//! Paths: a value's key (`apps/web/cfg`); for damage in a directory's own
//! nodes, the directory's path (`apps/web`), and `/` for the root directory;
//! `(store)` for what opening the store found outside the tree.

use keel_store::Hash;
use serde::{Deserialize, Serialize};

/// The path used for the root directory.
pub const ROOT_PATH: &str = "/";
/// The path used for findings about the store's files rather than the tree.
pub const STORE_PATH: &str = "(store)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Data is missing, damaged or inconsistent: fsck exits 1.
    Error,
    /// Worth knowing, nothing is lost (e.g. a directory not in canonical shape).
    Warning,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The blob is not in the pack (or could not be read at all).
    MissingBlob,
    /// The blob's bytes do not hash to its name: bit rot or tampering.
    CorruptBlob,
    /// A directory node that hashes correctly but does not decode.
    UndecodableDirectory,
    /// A chunk list that hashes correctly but does not decode.
    UndecodableChunkList,
    /// An object of one type where another is referenced (a chunk list
    /// where a directory node belongs, or the reverse).
    WrongType,
    /// Decodable objects that disagree: a child count or last name that does
    /// not match the child, a value size that does not match its chunks, a
    /// node at the wrong level, names out of order across nodes.
    Structure,
    /// A directory whose shape is not the canonical one for its entries.
    NonCanonical,
    /// Damage that recovery found in the store's files (reported by opening).
    StoreFile,
}

impl FindingKind {
    /// The words used in a finding's line.
    pub fn describe(self) -> &'static str {
        match self {
            FindingKind::MissingBlob => "missing blob",
            FindingKind::CorruptBlob => "corrupt blob",
            FindingKind::UndecodableDirectory => "undecodable directory",
            FindingKind::UndecodableChunkList => "undecodable chunk list",
            FindingKind::WrongType => "wrong object type",
            FindingKind::Structure => "structure error",
            FindingKind::NonCanonical => "non-canonical directory",
            FindingKind::StoreFile => "store file damage",
        }
    }
}

/// What the damaged object is to the key it was reached from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectRole {
    /// A data chunk of a value.
    Chunk,
    /// A chunk list of a value.
    ChunkList,
    /// The value entry itself (its size disagrees with its chunks).
    Value,
    /// The root node of a directory: when unreadable, the whole directory is.
    DirectoryRoot,
    /// A node below a directory's root: some of its entries are unreadable.
    DirectoryNode,
    /// A directory as a whole (its entry count or its shape).
    Directory,
    /// A file of the store, not an object of the tree.
    StoreFile,
}

impl ObjectRole {
    pub fn describe(self) -> &'static str {
        match self {
            ObjectRole::Chunk => "value chunk",
            ObjectRole::ChunkList => "chunk list",
            ObjectRole::Value => "value",
            ObjectRole::DirectoryRoot => "directory root node",
            ObjectRole::DirectoryNode => "directory node",
            ObjectRole::Directory => "directory",
            ObjectRole::StoreFile => "store file",
        }
    }

    /// Whether damage in this role makes the value at the finding's path unreadable.
    pub fn is_value(self) -> bool {
        matches!(
            self,
            ObjectRole::Chunk | ObjectRole::ChunkList | ObjectRole::Value
        )
    }
}

/// One problem found by verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Key path (see the module docs).
    pub path: String,
    pub kind: FindingKind,
    pub severity: Severity,
    pub role: ObjectRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<Hash>,
    /// More about what is wrong (empty when the kind says it all).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Direct entries of the directory at `path` that this damage makes
    /// unreadable, when known (from the parent's entry or branch counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_entries: Option<u64>,
}

impl Finding {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The one-line form: `apps/web/cfg: missing blob blake3-… (value chunk)`.
    pub fn line(&self) -> String {
        let mut line = format!("{}: {}", self.path, self.kind.describe());
        if let Some(blob) = &self.blob {
            line.push(' ');
            line.push_str(&blob.to_string());
        }
        let mut notes = vec![self.role.describe().to_string()];
        if !self.detail.is_empty() {
            notes.push(self.detail.clone());
        }
        if let Some(lost) = self.lost_entries {
            notes.push(format!("{lost} entries unreadable"));
        }
        line.push_str(&format!(" ({})", notes.join("; ")));
        if self.severity == Severity::Warning {
            line.insert_str(0, "warning: ");
        }
        line
    }
}

/// Joins a directory path and an entry name into the entry's key path.
pub fn child_path(dir: &str, name: &str) -> String {
    if dir == ROOT_PATH || dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether `path` (a key or directory path) is at or below `prefix`, or is a
/// directory above it (damage there reaches keys under the prefix).
pub fn touches_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return true;
    }
    if path == ROOT_PATH {
        return true;
    }
    let below = path == prefix || path.starts_with(&format!("{prefix}/"));
    let above = prefix.starts_with(&format!("{path}/"));
    below || above
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_keys_below_and_directories_above() {
        assert!(touches_prefix("apps/web/cfg", "apps/web"));
        assert!(touches_prefix("apps/web", "apps/web/"));
        assert!(
            touches_prefix("apps", "apps/web"),
            "a damaged parent reaches the prefix"
        );
        assert!(touches_prefix("/", "apps"));
        assert!(!touches_prefix("apps/webby", "apps/web"));
        assert!(!touches_prefix("db/x", "apps"));
    }

    #[test]
    fn line_names_path_kind_and_blob() {
        let blob = Hash::of(b"x");
        let finding = Finding {
            path: "apps/web/cfg".into(),
            kind: FindingKind::MissingBlob,
            severity: Severity::Error,
            role: ObjectRole::Chunk,
            blob: Some(blob),
            detail: String::new(),
            lost_entries: None,
        };
        assert_eq!(
            finding.line(),
            format!("apps/web/cfg: missing blob {blob} (value chunk)")
        );
    }
}
