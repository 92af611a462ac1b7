//! Fenced state in ZooKeeper: each key is a persistent node
//! `<election>/state/<key>`, and every write is one `multi` transaction that
//! first checks that the leader's election node still exists.
//!
//! The check and the write commit together or not at all, in the ensemble's
//! single order of transactions. A leader's node disappears before anyone
//! else can be elected (its session expires, it resigns, it is deleted), so
//! once a successor leads, every write of the old leader fails the check:
//! a paused or deposed leader cannot overwrite its successor's work, no
//! matter how late its write arrives.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::warn;
use zookeeper_client as zk;

use super::{
    Entry, StateError, StateFuture, StateQuota, StateStore, Usage, WriteRate, check_key, check_value,
};
use crate::election::Fence;

/// Test-only fault injection: a pause between deciding to write and sending
/// the write, as a GC pause or a frozen VM would cause. Unset in production.
pub const WRITE_DELAY_FAILPOINT: &str = "ZKRUN_FAILPOINT_FENCED_WRITE_DELAY";

/// The state of one election, writable while `fence` leads.
pub struct FencedStore {
    fence: Fence,
    dir: String,
    dir_exists: AtomicBool,
    write_delay: Option<Duration>,
    quota: StateQuota,
    /// The election's rate buckets, shared by every term of this process.
    rate: WriteRate,
    /// What the state uses of its quota, read at the term's first write.
    usage: tokio::sync::Mutex<Option<Usage>>,
    /// The quota is logged once per term, not once per refused write.
    quota_logged: AtomicBool,
}

/// One write to make after the fence check.
enum Write<'a> {
    Create(&'a [u8]),
    Set(&'a [u8], Option<i32>),
    Delete,
}

impl Write<'_> {
    fn to_owned(&self) -> OwnedWrite {
        match self {
            Write::Create(value) => OwnedWrite::Create(value.to_vec()),
            Write::Set(value, version) => OwnedWrite::Set(value.to_vec(), *version),
            Write::Delete => OwnedWrite::Delete,
        }
    }
}

/// A [`Write`] that a task of its own can send.
enum OwnedWrite {
    Create(Vec<u8>),
    Set(Vec<u8>, Option<i32>),
    Delete,
}

impl FencedStore {
    /// The state under `election`, fenced by the leader's `fence`, within
    /// the default quota.
    pub fn new(fence: Fence, election: &str) -> FencedStore {
        FencedStore::with_quota(fence, election, StateQuota::default())
    }

    /// The state under `election`, fenced by the leader's `fence`, within
    /// `quota`, with rate buckets of its own.
    pub fn with_quota(fence: Fence, election: &str, quota: StateQuota) -> FencedStore {
        FencedStore::with_rate(fence, election, quota, WriteRate::new(quota))
    }

    /// The state under `election`, fenced by the leader's `fence`, within
    /// `quota`, writing within the election's `rate` (shared across terms).
    pub fn with_rate(fence: Fence, election: &str, quota: StateQuota, rate: WriteRate) -> FencedStore {
        let write_delay =
            std::env::var(WRITE_DELAY_FAILPOINT).ok().and_then(|d| humantime::parse_duration(&d).ok());
        if let Some(delay) = write_delay {
            warn!(
                failpoint = WRITE_DELAY_FAILPOINT,
                ?delay,
                "test failpoint active: fenced writes are delayed"
            );
        }
        FencedStore {
            fence,
            dir: format!("{election}/state"),
            dir_exists: AtomicBool::new(false),
            write_delay,
            quota,
            rate,
            usage: tokio::sync::Mutex::new(None),
            quota_logged: AtomicBool::new(false),
        }
    }

    /// Runs `write`, which leaves `key` with a value of `len` bytes (`None`:
    /// deleted), if the quota admits it, and accounts for it.
    async fn within_quota<T>(
        &self,
        key: &str,
        len: Option<usize>,
        write: impl Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let mut guard = self.usage.lock().await;
        if guard.is_none() {
            *guard = Some(Usage::new(self.quota, self.sizes().await?, self.rate.clone()));
        }
        let usage = guard.as_mut().expect("just set");
        if let Err(refused) = usage.admit(key, len, Instant::now()) {
            if !self.quota_logged.swap(true, Ordering::Relaxed) {
                warn!(
                    event = "state_quota_exceeded",
                    term = self.fence.term.0,
                    key,
                    error = %refused,
                    max_keys = self.quota.max_keys,
                    max_bytes = self.quota.max_bytes,
                    max_writes_per_second = self.quota.max_writes_per_second,
                    max_bytes_per_second = self.quota.max_bytes_per_second,
                    "a state write was refused by the quota (logged once per term)"
                );
            }
            return Err(refused);
        }
        let result = write.await;
        match &result {
            // Applied, or maybe applied: counting it errs toward the quota.
            Ok(_) | Err(StateError::Unavailable(_)) => usage.applied(key, len),
            Err(_) => {}
        }
        result
    }

    /// The size of every value in the state, read once per term: requests
    /// are pipelined, one round trip in all.
    async fn sizes(&self) -> Result<Vec<(String, usize)>, StateError> {
        let keys = match self.fence.client.list_children(&self.dir).await {
            Ok(keys) => keys,
            Err(zk::Error::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(request_failed(&e)),
        };
        let stats: Vec<_> = keys.iter().map(|key| self.fence.client.check_stat(&self.path(key))).collect();
        let mut sizes = Vec::with_capacity(keys.len());
        for (key, stat) in keys.into_iter().zip(stats) {
            match stat.await {
                Ok(Some(stat)) => sizes.push((key, stat.data_length.max(0) as usize)),
                Ok(None) => {}
                Err(e) => return Err(request_failed(&e)),
            }
        }
        Ok(sizes)
    }

    fn path(&self, key: &str) -> String {
        format!("{}/{key}", self.dir)
    }

    async fn ensure_dir(&self) -> Result<(), StateError> {
        if self.dir_exists.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.fence
            .client
            .mkdir(&self.dir, &self.fence.acl.persistent())
            .await
            .map_err(|e| request_failed(&e))?;
        self.dir_exists.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Commits `write` together with the fence check. `Ok(Err(error))` is the
    /// write's own failure (the fence held).
    ///
    /// The write is sent from a task of its own: once decided (inside the
    /// lease), it goes out and its fate is logged even if the hook that made
    /// it is abandoned meanwhile (its lease lapsed, its deadline passed).
    /// Whether it lands is then the fence's decision alone.
    async fn fenced(
        &self,
        key: &str,
        write: Write<'_>,
    ) -> Result<Result<zk::MultiWriteResult, zk::Error>, StateError> {
        if let Some(delay) = self.write_delay {
            warn!(event = "failpoint_delay", key, ?delay, "test failpoint: pausing before a fenced write");
            // The writing thread stops, as in a GC pause: the hook cannot be
            // abandoned half-way, so the write goes out after the pause. The
            // rest of the host runs on (`block_in_place` hands this worker's
            // queued tasks to another thread); a plain sleep would starve a
            // task left in this worker's LIFO slot, the election's
            // included, which the test faults this stands for never do.
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                    tokio::task::block_in_place(|| std::thread::sleep(delay))
                }
                _ => std::thread::sleep(delay),
            }
        }
        let (client, acl) = (self.fence.client.clone(), self.fence.acl.clone());
        let (fence_path, term) = (self.fence.node_path.clone(), self.fence.term);
        let (key, path, write) = (key.to_string(), self.path(key), write.to_owned());
        let sent = tokio::spawn(async move {
            let mut multi = client.new_multi_writer();
            // -1: any version; the check is that the node exists.
            let built = multi.add_check_version(&fence_path, -1).and_then(|()| match &write {
                OwnedWrite::Create(value) => multi.add_create(&path, value, &acl.persistent()),
                OwnedWrite::Set(value, version) => multi.add_set_data(&path, value, *version),
                OwnedWrite::Delete => multi.add_delete(&path, None),
            });
            built.map_err(|e| StateError::Unavailable(e.to_string()))?;
            let outcome = match multi.commit().await {
                Ok(mut results) => Ok(Ok(results.pop().expect("two operations, two results"))),
                Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => Err(StateError::NotLeader),
                Err(zk::MultiWriteError::OperationFailed { source, .. }) => Ok(Err(source)),
                Err(zk::MultiWriteError::RequestFailed { source }) => Err(request_failed(&source)),
            };
            match &outcome {
                Err(StateError::NotLeader) => warn!(
                    event = "write_fenced",
                    term = term.0,
                    key,
                    mono_ns = crate::clock::monotonic_ns(),
                    "ZooKeeper refused a state write: this host's election node is gone, so it no longer leads"
                ),
                Err(StateError::Unavailable(why)) => warn!(
                    event = "write_outcome_unknown",
                    term = term.0,
                    key,
                    why,
                    mono_ns = crate::clock::monotonic_ns(),
                    "a state write's outcome is unknown; it landed only if this host still led when it arrived"
                ),
                _ => {}
            }
            outcome
        });
        sent.await.unwrap_or_else(|e| Err(StateError::Unavailable(format!("the write's task failed: {e}"))))
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<Result<u32, zk::Error>, StateError> {
        for _ in 0..3 {
            match self.fenced(key, Write::Create(value)).await? {
                Ok(_) => return Ok(Ok(0)),
                // The state directory is missing (first write, or deleted by
                // an operator): create it and retry.
                Err(zk::Error::NoNode) => {
                    self.dir_exists.store(false, Ordering::Relaxed);
                    self.ensure_dir().await?;
                }
                Err(other) => return Ok(Err(other)),
            }
        }
        Err(StateError::Unavailable(format!("{} keeps disappearing", self.dir)))
    }
}

/// Maps a failed request (not a failed operation) to what the plugin sees.
fn request_failed(error: &zk::Error) -> StateError {
    match error {
        // The session is over, so is the leadership: nothing was applied.
        zk::Error::SessionExpired | zk::Error::ClientClosed => StateError::NotLeader,
        zk::Error::ConnectionLoss => {
            StateError::Unavailable("connection lost: the write may or may not have been applied".into())
        }
        other => StateError::Unavailable(other.to_string()),
    }
}

fn version(stat: &zk::Stat) -> u32 {
    stat.version.max(0) as u32
}

impl StateStore for FencedStore {
    fn get<'a>(&'a self, key: &'a str) -> StateFuture<'a, Option<Entry>> {
        Box::pin(async move {
            check_key(key)?;
            match self.fence.client.get_data(&self.path(key)).await {
                Ok((value, stat)) => Ok(Some(Entry { value, version: version(&stat) })),
                Err(zk::Error::NoNode) => Ok(None),
                Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => {
                    Err(StateError::Unavailable("the session ended".into()))
                }
                Err(e) => Err(request_failed(&e)),
            }
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>) -> StateFuture<'a, u32> {
        Box::pin(async move {
            check_key(key)?;
            check_value(&value)?;
            self.within_quota(key, Some(value.len()), self.put_unchecked(key, &value)).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StateFuture<'a, bool> {
        Box::pin(async move {
            check_key(key)?;
            self.within_quota(key, None, async {
                match self.fenced(key, Write::Delete).await? {
                    Ok(_) => Ok(true),
                    Err(zk::Error::NoNode) => Ok(false),
                    Err(e) => Err(StateError::Unavailable(e.to_string())),
                }
            })
            .await
        })
    }

    fn compare_and_set<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u32>,
        value: Vec<u8>,
    ) -> StateFuture<'a, u32> {
        Box::pin(async move {
            check_key(key)?;
            check_value(&value)?;
            self.within_quota(key, Some(value.len()), self.compare_and_set_unchecked(key, expected, &value))
                .await
        })
    }
}

impl FencedStore {
    async fn put_unchecked(&self, key: &str, value: &[u8]) -> Result<u32, StateError> {
        loop {
            match self.fenced(key, Write::Set(value, None)).await? {
                Ok(zk::MultiWriteResult::SetData { stat }) => return Ok(version(&stat)),
                Ok(_) => return Err(StateError::Unavailable("unexpected reply to a write".into())),
                Err(zk::Error::NoNode) => match self.create(key, value).await? {
                    Ok(version) => return Ok(version),
                    // Created concurrently: set it instead.
                    Err(zk::Error::NodeExists) => continue,
                    Err(e) => return Err(StateError::Unavailable(e.to_string())),
                },
                Err(e) => return Err(StateError::Unavailable(e.to_string())),
            }
        }
    }

    async fn compare_and_set_unchecked(
        &self,
        key: &str,
        expected: Option<u32>,
        value: &[u8],
    ) -> Result<u32, StateError> {
        let Some(expected) = expected else {
            return match self.create(key, value).await? {
                Ok(version) => Ok(version),
                Err(zk::Error::NodeExists) => Err(StateError::Conflict),
                Err(e) => Err(StateError::Unavailable(e.to_string())),
            };
        };
        let expected = i32::try_from(expected).map_err(|_| StateError::Conflict)?;
        match self.fenced(key, Write::Set(value, Some(expected))).await? {
            Ok(zk::MultiWriteResult::SetData { stat }) => Ok(version(&stat)),
            Ok(_) => Err(StateError::Unavailable("unexpected reply to a write".into())),
            Err(zk::Error::BadVersion | zk::Error::NoNode) => Err(StateError::Conflict),
            Err(e) => Err(StateError::Unavailable(e.to_string())),
        }
    }
}
