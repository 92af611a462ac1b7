//! Fenced state: what a job keeps across failovers, and the rules for it.
//!
//! [`StateStore`] is what the plugin runtime calls for the `state` interface
//! of `wit/plugin.wit`; it knows nothing of WebAssembly. [`zookeeper`]
//! implements it in ZooKeeper, fenced by the leader's election node.

pub mod zookeeper;

use std::future::Future;
use std::pin::Pin;

/// Largest value accepted, in bytes: well under ZooKeeper's 1 MiB request
/// limit (`jute.maxbuffer`), leaving room for the fencing check and path.
pub const MAX_VALUE: usize = 64 * 1024;
/// Longest key accepted.
pub const MAX_KEY: usize = 128;

/// A stored value and the number of writes since the key was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The bytes last written.
    pub value: Vec<u8>,
    /// The key's version (0 after the first write).
    pub version: u32,
}

/// Why a state operation did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// This host does not lead: nothing was written.
    #[error("not the leader: nothing was written")]
    NotLeader,
    /// A compare-and-set found another version: nothing was written.
    #[error("version conflict: nothing was written")]
    Conflict,
    /// The value is longer than [`MAX_VALUE`].
    #[error("value of {0} bytes is larger than the {MAX_VALUE}-byte limit")]
    TooLarge(usize),
    /// The key is not a plain name.
    #[error("bad key: {0}")]
    BadKey(String),
    /// The outcome is unknown, or ZooKeeper could not be asked.
    #[error("state unavailable: {0}")]
    Unavailable(String),
}

/// A boxed future, so the trait stays object safe.
pub type StateFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'a>>;

/// Where a term's state lives. Implementations fence every write.
pub trait StateStore: Send + Sync {
    /// Reads a key.
    fn get<'a>(&'a self, key: &'a str) -> StateFuture<'a, Option<Entry>>;
    /// Writes a key, creating it if needed; returns the new version.
    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>) -> StateFuture<'a, u32>;
    /// Deletes a key; returns whether it existed.
    fn delete<'a>(&'a self, key: &'a str) -> StateFuture<'a, bool>;
    /// Writes a key only at version `expected` (`None`: only if absent).
    fn compare_and_set<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u32>,
        value: Vec<u8>,
    ) -> StateFuture<'a, u32>;
}

/// Checks a key: 1 to [`MAX_KEY`] characters of `A-Za-z0-9._-`, no leading dot.
pub fn check_key(key: &str) -> Result<(), StateError> {
    if key.is_empty() {
        return Err(StateError::BadKey("the key is empty".into()));
    }
    if key.len() > MAX_KEY {
        return Err(StateError::BadKey(format!("the key is longer than {MAX_KEY} characters")));
    }
    if key.starts_with('.') {
        return Err(StateError::BadKey(format!("{key:?} starts with a dot")));
    }
    if let Some(c) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(StateError::BadKey(format!("{key:?} contains {c:?}; use A-Z a-z 0-9 . _ -")));
    }
    Ok(())
}

/// Checks a value's size.
pub fn check_value(value: &[u8]) -> Result<(), StateError> {
    if value.len() > MAX_VALUE {
        return Err(StateError::TooLarge(value.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_names() {
        for good in ["counter", "a.b", "job-1_state", &"k".repeat(MAX_KEY)] {
            assert_eq!(check_key(good), Ok(()), "{good}");
        }
        for bad in ["", ".hidden", "..", "a/b", "a b", "ключ", &"k".repeat(MAX_KEY + 1)] {
            assert!(matches!(check_key(bad), Err(StateError::BadKey(_))), "{bad}");
        }
    }

    #[test]
    fn values_have_a_limit() {
        assert_eq!(check_value(&vec![0; MAX_VALUE]), Ok(()));
        assert_eq!(check_value(&vec![0; MAX_VALUE + 1]), Err(StateError::TooLarge(MAX_VALUE + 1)));
    }
}
