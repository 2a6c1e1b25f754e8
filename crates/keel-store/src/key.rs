//! Keys are `/`-separated paths of UTF-8 names.
//!
//! A name is 1..=[`NAME_BYTES_MAX`] bytes, contains no `/` or NUL, and is not
//! `.` or `..`. A key has at most [`KEY_SEGMENTS_MAX`] names and
//! [`KEY_BYTES_MAX`] bytes. One leading `/` is accepted and ignored, so
//! `/apps/web` and `apps/web` are the same key.

use crate::error::{Result, StoreError};

/// Longest name (one path segment) in bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// Longest key in bytes.
pub const KEY_BYTES_MAX: usize = 4096;
/// Deepest key, in names.
pub const KEY_SEGMENTS_MAX: usize = 64;

/// Checks one name.
pub fn validate_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty name (two '/' in a row, or a trailing '/')".into());
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(format!(
            "name of {} bytes exceeds {NAME_BYTES_MAX}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not allowed as a name"));
    }
    if name.contains('\0') {
        return Err("names cannot contain NUL".into());
    }
    if name.contains('/') {
        return Err("names cannot contain '/'".into());
    }
    Ok(())
}

/// Splits a key into its names, validating each.
pub fn split_key(key: &str) -> Result<Vec<&str>> {
    let invalid = |reason: String| StoreError::InvalidKey {
        key: key.to_string(),
        reason,
    };
    let trimmed = key.strip_prefix('/').unwrap_or(key);
    if trimmed.is_empty() {
        return Err(invalid("empty key".into()));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(invalid(format!(
            "key of {} bytes exceeds {KEY_BYTES_MAX}",
            key.len()
        )));
    }
    let names: Vec<&str> = trimmed.split('/').collect();
    if names.len() > KEY_SEGMENTS_MAX {
        return Err(invalid(format!(
            "{} names exceed the depth limit of {KEY_SEGMENTS_MAX}",
            names.len()
        )));
    }
    for name in &names {
        validate_name(name).map_err(invalid)?;
    }
    Ok(names)
}

/// Splits a directory path; the empty path, `/` and a trailing `/` are allowed.
pub fn split_dir(path: &str) -> Result<Vec<&str>> {
    let trimmed = path.trim_start_matches('/');
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    split_key(trimmed)
}

/// Joins names back into a key.
pub fn join(names: &[&str]) -> String {
    names.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_paths() {
        assert_eq!(split_key("a/b/c").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(split_key("/a").unwrap(), vec!["a"]);
        assert_eq!(split_dir("").unwrap(), Vec::<&str>::new());
        assert_eq!(split_dir("/apps/").unwrap(), vec!["apps"]);
    }

    #[test]
    fn rejects_bad_keys_with_reasons() {
        for bad in ["", "/", "a//b", "a/", "a/./b", "..", "a\0b"] {
            let error = split_key(bad).unwrap_err();
            assert!(
                matches!(error, StoreError::InvalidKey { .. }),
                "{bad:?}: {error}"
            );
        }
        assert!(split_key(&"x".repeat(256)).is_err());
        assert!(split_key(&vec!["a"; 65].join("/")).is_err());
    }
}
