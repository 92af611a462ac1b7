//! Fenced state: what a job keeps across failovers, and the rules for it.
//!
//! [`StateStore`] is what the plugin runtime calls for the `state` interface
//! of `wit/plugin.wit`; it knows nothing of WebAssembly. [`zookeeper`]
//! implements it in ZooKeeper, fenced by the leader's election node.

pub mod zookeeper;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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
    /// Most bytes of values written per second, sustained; bursts of up to
    /// one second's worth (and never less than one largest value). Every
    /// byte lands in every server's transaction log, which ZooKeeper does
    /// not purge by default.
    pub max_bytes_per_second: usize,
}

/// Default [`StateQuota::max_bytes_per_second`]: 128 KiB/s, about 11 GB a
/// day into each server's transaction log at the most, which the default
/// snapshot and log rotation of a 3-server ensemble on ordinary disks absorb.
pub const DEFAULT_STATE_BYTES_PER_SECOND: usize = 128 * 1024;

impl Default for StateQuota {
    fn default() -> Self {
        StateQuota {
            max_keys: 1000,
            max_bytes: 8 << 20,
            max_writes_per_second: 100,
            max_bytes_per_second: DEFAULT_STATE_BYTES_PER_SECOND,
        }
    }
}

/// The write-rate and byte-rate buckets of one election's state. They
/// belong to the election, not to a term: the supervisor keeps one for the
/// life of the process and hands it to every term's store, so resigning,
/// reloading or failing over does not refill them. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct WriteRate {
    buckets: Arc<Mutex<Buckets>>,
}

#[derive(Debug)]
struct Buckets {
    writes: f64,
    bytes: f64,
    refilled: Instant,
}

impl WriteRate {
    /// Full buckets for `quota`'s rates.
    pub fn new(quota: StateQuota) -> WriteRate {
        let buckets = Buckets {
            writes: f64::from(quota.max_writes_per_second),
            bytes: byte_burst(quota),
            refilled: Instant::now(),
        };
        WriteRate { buckets: Arc::new(Mutex::new(buckets)) }
    }

    /// Takes one write of `len` value bytes at `now`, or says which rate it
    /// would exceed (taking nothing).
    fn take(
        &self,
        quota: StateQuota,
        len: usize,
        now: Instant,
        also: impl FnOnce() -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let mut b = self.buckets.lock().unwrap();
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        let writes = f64::from(quota.max_writes_per_second);
        b.writes = (b.writes + elapsed * writes).min(writes);
        b.bytes = (b.bytes + elapsed * quota.max_bytes_per_second as f64).min(byte_burst(quota));
        b.refilled = b.refilled.max(now);
        if b.writes < 1.0 {
            return Err(StateError::QuotaExceeded(format!(
                "more than {} writes per second",
                quota.max_writes_per_second
            )));
        }
        if b.bytes < len as f64 {
            return Err(StateError::QuotaExceeded(format!(
                "more than {} bytes written per second",
                quota.max_bytes_per_second
            )));
        }
        also()?;
        b.writes -= 1.0;
        b.bytes -= len as f64;
        Ok(())
    }
}

/// The byte bucket's size: one second's worth, but at least one value of
/// the largest size, so that every legal write can pass eventually.
fn byte_burst(quota: StateQuota) -> f64 {
    quota.max_bytes_per_second.max(MAX_VALUE) as f64
}

/// How much of its quota an election's state uses, kept by the one store
/// that may write it (the leader's), with the election's rate buckets.
#[derive(Clone, Debug)]
pub struct Usage {
    quota: StateQuota,
    /// Value sizes by key.
    sizes: std::collections::HashMap<String, usize>,
    bytes: usize,
    rate: WriteRate,
}

impl Usage {
    /// Usage of a state that holds `sizes` (key, value length), writing
    /// within the election's `rate`.
    pub fn new(
        quota: StateQuota,
        sizes: impl IntoIterator<Item = (String, usize)>,
        rate: WriteRate,
    ) -> Usage {
        let sizes: std::collections::HashMap<String, usize> = sizes.into_iter().collect();
        let bytes = sizes.values().sum();
        Usage { quota, sizes, bytes, rate }
    }

    /// Admits a write that leaves `key` with a value of `len` bytes (`None`:
    /// deleted), before it is sent. A write that grows nothing is refused
    /// only by the rates, so a state over its quota can always shrink.
    pub fn admit(&mut self, key: &str, len: Option<usize>, now: Instant) -> Result<(), StateError> {
        let old = self.sizes.get(key).copied();
        let (quota, sizes, held) = (self.quota, &self.sizes, self.bytes);
        let within_quota = || {
            let Some(len) = len else { return Ok(()) };
            if old.is_none() && sizes.len() >= quota.max_keys {
                return Err(StateError::QuotaExceeded(format!(
                    "the state holds {} keys already",
                    quota.max_keys
                )));
            }
            let bytes = held - old.unwrap_or(0) + len;
            if len > old.unwrap_or(0) && bytes > quota.max_bytes {
                return Err(StateError::QuotaExceeded(format!(
                    "the state would hold {bytes} bytes, over its {}-byte quota",
                    quota.max_bytes
                )));
            }
            Ok(())
        };
        self.rate.take(quota, len.unwrap_or(0), now, within_quota)
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
        let quota =
            StateQuota { max_keys: 2, max_bytes: 100, max_writes_per_second: 5, ..StateQuota::default() };
        let start = Instant::now();
        let mut usage = Usage::new(quota, [("a".to_string(), 60)], WriteRate::new(quota));
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
    fn the_rates_belong_to_the_election_not_the_term() {
        let quota =
            StateQuota { max_writes_per_second: 10, max_bytes_per_second: 100_000, ..StateQuota::default() };
        let rate = WriteRate::new(quota);
        let start = Instant::now();
        let value = MAX_VALUE;
        // The byte bucket holds one second's worth: one 64 KiB value, then none.
        let mut term = Usage::new(quota, [], rate.clone());
        term.admit("a", Some(value), start).unwrap();
        let refused = term.admit("b", Some(value), start).unwrap_err();
        assert!(refused.to_string().contains("bytes written per second"), "{refused}");
        // A new term (a resign, a reload, a failover back) gets the same
        // buckets, not full ones.
        let mut next = Usage::new(quota, [("a".to_string(), value)], rate.clone());
        assert!(next.admit("b", Some(value), start).is_err());
        // Small writes still pass, until the write rate says no.
        for _ in 0..9 {
            next.admit("c", Some(1), start).unwrap();
        }
        let refused = next.admit("c", Some(1), start).unwrap_err();
        assert!(refused.to_string().contains("writes per second"), "{refused}");
        // The rates refill with time.
        next.admit("b", Some(value), start + std::time::Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn values_have_a_limit() {
        assert_eq!(check_value(&vec![0; MAX_VALUE]), Ok(()));
        assert_eq!(check_value(&vec![0; MAX_VALUE + 1]), Err(StateError::TooLarge(MAX_VALUE + 1)));
    }
}
