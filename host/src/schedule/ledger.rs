//! The slot ledger in ZooKeeper: one persistent node per slot,
//! `<election>/slots/<slot id>`, holding a JSON [`Record`].
//!
//! Every write is one `multi` that first checks the writer's own election
//! node, as fenced state writes are (`crate::state::zookeeper`): a leader
//! that has been deposed (its node is gone) can neither claim a slot nor
//! record an outcome, however late its request arrives. A claim is a create
//! (first attempt) or a set at the version the claimer read (a retry), so
//! two claims of the same attempt cannot both commit.
//!
//! The ledger is bounded by pruning ([`Ledger::prune`]): it keeps the newest
//! [`KEEP`] records and the newest record of each outcome, and it does not
//! count against the state quota.

use serde::{Deserialize, Serialize};
use tracing::warn;
use zookeeper_client as zk;

use crate::election::Fence;

/// Records kept by pruning (besides the newest of each outcome).
pub const KEEP: usize = 200;

/// Where a slot stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Claimed; the run has started (or is about to). Seen by anyone but
    /// the claimer's running term, it means the run was interrupted.
    Running,
    /// The run returned `ok`.
    Ok,
    /// The run failed (returned `err`, trapped, or ran past --run-timeout).
    Error,
    /// The run was cut off and will not be retried.
    Interrupted,
    /// No leader ran it within its catch-up window.
    Missed,
    /// Not run by policy (a later slot was due: --catch-up-policy latest).
    Skipped,
}

impl Outcome {
    /// All outcomes, for metrics.
    pub const ALL: [Outcome; 6] = [
        Outcome::Running,
        Outcome::Ok,
        Outcome::Error,
        Outcome::Interrupted,
        Outcome::Missed,
        Outcome::Skipped,
    ];

    /// The name used in the ledger, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Interrupted => "interrupted",
            Outcome::Missed => "missed",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One slot's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The slot id.
    pub slot: String,
    /// The scheduled instant (RFC 3339, UTC).
    pub at: String,
    /// Where it stands.
    pub outcome: Outcome,
    /// The attempt this record is about (0: never started).
    pub attempt: u32,
    /// The term of the leader that wrote it.
    pub term: u64,
    /// The participant that wrote it.
    pub participant: String,
    /// The ensemble's clock when the claim (or record) committed, in ms
    /// since the epoch: the node's mtime, alike for every reader.
    #[serde(default)]
    pub claimed_ms: i64,
    /// How long the run took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it failed, or why it was not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a ledger operation did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// This host no longer leads: nothing was written.
    #[error("not the leader: nothing was written")]
    NotLeader,
    /// Someone else wrote the slot first: nothing was written.
    #[error("the slot was claimed or recorded meanwhile")]
    Conflict,
    /// ZooKeeper could not be asked, or the outcome is unknown.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
}

/// A write that committed: the node's version and mtime after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The node's version.
    pub version: i32,
    /// The ensemble's clock at the commit, ms since the epoch.
    pub mtime_ms: i64,
}

/// The ledger of one election, written under one leader's fence.
pub struct Ledger {
    fence: Fence,
    dir: String,
}

impl Ledger {
    /// The ledger under `election`, writable while `fence` leads.
    pub fn new(fence: Fence, election: &str) -> Ledger {
        Ledger { fence, dir: dir(election) }
    }

    /// The fence's term.
    pub fn term(&self) -> u64 {
        self.fence.term.0
    }

    /// Every record, by slot id, with its node version. Unreadable records
    /// are skipped with a warning (an operator may have written one).
    pub async fn read(&self) -> Result<Vec<(Record, i32)>, LedgerError> {
        read(&self.fence.client, &self.dir).await
    }

    /// Creates the record of a slot that has none (`version: None`), or
    /// replaces it at `version`; fenced.
    pub async fn write(&self, record: &Record, version: Option<i32>) -> Result<Written, LedgerError> {
        let data = serde_json::to_vec(record).map_err(|e| LedgerError::Unavailable(e.to_string()))?;
        let path = format!("{}/{}", self.dir, record.slot);
        for _ in 0..2 {
            let mut multi = self.fence.client.new_multi_writer();
            let built = multi.add_check_version(&self.fence.node_path, -1).and_then(|()| match version {
                None => multi.add_create(&path, &data, &self.fence.acl.persistent()),
                Some(version) => multi.add_set_data(&path, &data, Some(version)),
            });
            built.map_err(|e| LedgerError::Unavailable(e.to_string()))?;
            match multi.commit().await {
                Ok(mut results) => {
                    return match results.pop() {
                        Some(zk::MultiWriteResult::SetData { stat }) => {
                            Ok(Written { version: stat.version, mtime_ms: stat.mtime })
                        }
                        // A create's stat may be invalid (ZOOKEEPER-4026):
                        // read it back.
                        _ => match self.fence.client.check_stat(&path).await {
                            Ok(Some(stat)) => Ok(Written { version: stat.version, mtime_ms: stat.mtime }),
                            Ok(None) => Err(LedgerError::Conflict),
                            Err(e) => Err(unavailable(&e)),
                        },
                    };
                }
                Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => {
                    warn!(
                        event = "slot_write_fenced",
                        term = self.term(),
                        slot = record.slot,
                        "ZooKeeper refused a slot record: this host no longer leads"
                    );
                    return Err(LedgerError::NotLeader);
                }
                Err(zk::MultiWriteError::OperationFailed { source: zk::Error::NoNode, .. })
                    if version.is_none() =>
                {
                    // First slot of this election: make the directory.
                    self.fence
                        .client
                        .mkdir(&self.dir, &self.fence.acl.persistent())
                        .await
                        .map_err(|e| unavailable(&e))?;
                }
                Err(zk::MultiWriteError::OperationFailed { .. }) => return Err(LedgerError::Conflict),
                Err(zk::MultiWriteError::RequestFailed { source }) => return Err(unavailable(&source)),
            }
        }
        Err(LedgerError::Unavailable(format!("{} keeps disappearing", self.dir)))
    }

    /// Deletes old records: keeps the newest [`KEEP`] of this schedule
    /// (ids sort by instant within a schedule) and the newest record of each
    /// outcome; records of other schedules go once they are older than all
    /// kept ones. Fenced; returns how many were deleted.
    pub async fn prune(&self, records: &[(Record, i32)]) -> Result<usize, LedgerError> {
        let doomed = prunable(records, KEEP);
        for slot in &doomed {
            let path = format!("{}/{slot}", self.dir);
            let mut multi = self.fence.client.new_multi_writer();
            multi
                .add_check_version(&self.fence.node_path, -1)
                .and_then(|()| multi.add_delete(&path, None))
                .map_err(|e| LedgerError::Unavailable(e.to_string()))?;
            match multi.commit().await {
                Ok(_) | Err(zk::MultiWriteError::OperationFailed { index: 1, .. }) => {}
                Err(zk::MultiWriteError::OperationFailed { .. }) => return Err(LedgerError::NotLeader),
                Err(zk::MultiWriteError::RequestFailed { source }) => return Err(unavailable(&source)),
            }
        }
        Ok(doomed.len())
    }
}

/// The ledger's directory under `election`.
pub fn dir(election: &str) -> String {
    format!("{election}/slots")
}

/// Reads every record under `dir`, pipelined (one round trip in all).
pub async fn read(client: &zk::Client, dir: &str) -> Result<Vec<(Record, i32)>, LedgerError> {
    let ids = match client.list_children(dir).await {
        Ok(ids) => ids,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(e) => return Err(unavailable(&e)),
    };
    let reads: Vec<_> = ids.iter().map(|id| client.get_data(&format!("{dir}/{id}"))).collect();
    let mut records = Vec::with_capacity(ids.len());
    for (id, read) in ids.iter().zip(reads) {
        match read.await {
            Ok((data, stat)) => match serde_json::from_slice::<Record>(&data) {
                Ok(record) => records.push((record, stat.version)),
                Err(e) => {
                    warn!(event = "slot_record_unreadable", slot = id, error = %e, "skipping an unreadable slot record")
                }
            },
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(unavailable(&e)),
        }
    }
    Ok(records)
}

/// The slot ids pruning deletes from `records`, keeping `keep`.
fn prunable(records: &[(Record, i32)], keep: usize) -> Vec<String> {
    if records.len() <= keep {
        return Vec::new();
    }
    let mut by_time: Vec<&Record> = records.iter().map(|(r, _)| r).collect();
    by_time.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| b.slot.cmp(&a.slot)));
    let mut kept_outcomes = std::collections::HashSet::new();
    let mut doomed = Vec::new();
    for (i, record) in by_time.into_iter().enumerate() {
        let newest_of_kind = kept_outcomes.insert(record.outcome);
        // A running record is an unfinished claim: never pruned.
        if i >= keep && !newest_of_kind && record.outcome != Outcome::Running {
            doomed.push(record.slot.clone());
        }
    }
    doomed
}

fn unavailable(error: &zk::Error) -> LedgerError {
    match error {
        zk::Error::SessionExpired | zk::Error::ClientClosed => LedgerError::NotLeader,
        other => LedgerError::Unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at: &str, outcome: Outcome) -> (Record, i32) {
        let record = Record {
            slot: format!("abcd1234-{at}"),
            at: at.into(),
            outcome,
            attempt: 1,
            term: 1,
            participant: "a".into(),
            claimed_ms: 0,
            duration_ms: None,
            error: None,
        };
        (record, 0)
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_last_of_each_outcome() {
        let mut records = vec![record("2026-01-01T00:00:00Z", Outcome::Missed)];
        records.push(record("2026-01-01T00:00:01Z", Outcome::Running));
        for s in 10..20 {
            records.push(record(&format!("2026-01-01T00:00:{s}Z"), Outcome::Ok));
        }
        let doomed = prunable(&records, 3);
        // 12 records, 3 kept by age, the missed one (newest of its kind)
        // and the running one (unfinished) stay: 7 go.
        assert_eq!(doomed.len(), 7, "{doomed:?}");
        assert!(!doomed.iter().any(|d| d.ends_with("00:00:00Z") || d.ends_with("00:00:01Z")));
        assert!(doomed.iter().all(|d| d.as_str() < "abcd1234-2026-01-01T00:00:17Z"));
        assert!(prunable(&records, 100).is_empty());
    }

    #[test]
    fn records_read_back_as_written() {
        let (record, _) = record("2026-01-01T00:00:00Z", Outcome::Error);
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"outcome\":\"error\""), "{json}");
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), record);
    }
}
