//! Fenced state: what a job keeps across failovers, and the rules for it.
//!
//! [`StateStore`] is what the plugin runtime calls for the `state` interface
//! of `wit/plugin.wit`; it knows nothing of WebAssembly. [`zookeeper`]
//! implements it in ZooKeeper, fenced by the leader's election node.

pub mod zookeeper;

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

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
    /// The write would take the election's state past its quota, or comes
    /// faster than its write rate: nothing was written.
    #[error("quota exceeded: {0}; nothing was written")]
    QuotaExceeded(String),
}

/// What one election's fenced state may hold and how fast it may change, so
/// that no job, whatever its plugin does, can push the ensemble over: every
/// server keeps every byte in memory and every write in its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateQuota {
    /// Most keys.
    pub max_keys: usize,
    /// Most bytes of values, all keys together.
    pub max_bytes: usize,
    /// Most writes (put, delete, compare-and-set) per second, sustained;
    /// bursts of up to one second's worth.
    pub max_writes_per_second: u32,
}

impl Default for StateQuota {
    fn default() -> Self {
        StateQuota { max_keys: 1000, max_bytes: 8 << 20, max_writes_per_second: 100 }
    }
}

/// How much of its quota an election's state uses, kept by the one store
/// that may write it (the leader's), and its write-rate bucket.
#[derive(Clone, Debug)]
pub struct Usage {
    quota: StateQuota,
    /// Value sizes by key.
    sizes: std::collections::HashMap<String, usize>,
    bytes: usize,
    tokens: f64,
    refilled: Instant,
}

impl Usage {
    /// Usage of a state that holds `sizes` (key, value length).
    pub fn new(quota: StateQuota, sizes: impl IntoIterator<Item = (String, usize)>) -> Usage {
        let sizes: std::collections::HashMap<String, usize> = sizes.into_iter().collect();
        let bytes = sizes.values().sum();
        Usage {
            quota,
            sizes,
            bytes,
            tokens: f64::from(quota.max_writes_per_second),
            refilled: Instant::now(),
        }
    }

    /// Admits a write that leaves `key` with a value of `len` bytes (`None`:
    /// deleted), before it is sent. A write that grows nothing is refused
    /// only by the rate, so a state over its quota can always shrink.
    pub fn admit(&mut self, key: &str, len: Option<usize>, now: Instant) -> Result<(), StateError> {
        let rate = f64::from(self.quota.max_writes_per_second);
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate);
        self.refilled = now;
        if self.tokens < 1.0 {
            return Err(StateError::QuotaExceeded(format!(
                "more than {} writes per second",
                self.quota.max_writes_per_second
            )));
        }
        let old = self.sizes.get(key).copied();
        if let Some(len) = len {
            if old.is_none() && self.sizes.len() >= self.quota.max_keys {
                return Err(StateError::QuotaExceeded(format!(
                    "the state holds {} keys already",
                    self.quota.max_keys
                )));
            }
            let bytes = self.bytes - old.unwrap_or(0) + len;
            if len > old.unwrap_or(0) && bytes > self.quota.max_bytes {
                return Err(StateError::QuotaExceeded(format!(
                    "the state would hold {bytes} bytes, over its {}-byte quota",
                    self.quota.max_bytes
                )));
            }
        }
        self.tokens -= 1.0;
        Ok(())
    }

    /// Records a write that was applied (or may have been: counting it errs
    /// toward the quota).
    pub fn applied(&mut self, key: &str, len: Option<usize>) {
        let old = match len {
            Some(len) => self.sizes.insert(key.to_string(), len),
            None => self.sizes.remove(key),
        };
        self.bytes = self.bytes - old.unwrap_or(0) + len.unwrap_or(0);
    }
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
    fn the_quota_caps_keys_bytes_and_rate() {
        let quota = StateQuota { max_keys: 2, max_bytes: 100, max_writes_per_second: 5 };
        let start = Instant::now();
        let mut usage = Usage::new(quota, [("a".to_string(), 60)]);
        // Bytes: growing past 100 is refused, shrinking is not.
        assert!(matches!(usage.admit("b", Some(50), start), Err(StateError::QuotaExceeded(_))));
        usage.admit("b", Some(40), start).unwrap();
        usage.applied("b", Some(40));
        // Keys: a third is refused, rewriting one is fine.
        assert!(matches!(usage.admit("c", Some(0), start), Err(StateError::QuotaExceeded(_))));
        usage.admit("a", Some(10), start).unwrap();
        usage.applied("a", Some(10));
        // Rate: two of the five tokens are gone (refusals take none); three
        // more, then none.
        for _ in 0..3 {
            usage.admit("a", None, start).unwrap();
        }
        assert!(matches!(usage.admit("a", None, start), Err(StateError::QuotaExceeded(_))));
        // A second later the bucket is full again.
        usage.admit("a", None, start + std::time::Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn values_have_a_limit() {
        assert_eq!(check_value(&vec![0; MAX_VALUE]), Ok(()));
        assert_eq!(check_value(&vec![0; MAX_VALUE + 1]), Err(StateError::TooLarge(MAX_VALUE + 1)));
    }
}
