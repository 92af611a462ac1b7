//! `zkrun status`: who is in an election, in line order, who leads, and
//! whether the leader's lease is fresh.
//!
//! The leader's lease is read from its lease node (see `docs/election.md`):
//! a zkrun leader rewrites it at every renewal, so its `mtime` is when the
//! ZooKeeper server that applied the last renewal stamped it, its version
//! counts renewals, and its record holds the leader's deadline. The age of
//! the last renewal by this host's wall clock minus that `mtime` compares
//! two machines' clocks, so it never decides alone: a clock behind the
//! ensemble's makes a dead leader's last renewal look recent. Status watches
//! the lease node instead, on this host's monotonic clock: a renewal seen
//! proves the lease fresh (a working leader renews every refresh period, a
//! quarter of its deadline); none for a whole deadline proves it lapsed,
//! whatever the clocks say. The clocks only describe (the renewal's age).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use serde::Serialize;
use zookeeper_client as zk;

use crate::election::node::{self, LeaseRecord, Participant};
use crate::schedule::Schedule;
use crate::schedule::ledger::{self, Record};
use crate::zkconnect::ZkAccess;
use crate::zkpath::ConnectString;

/// A renewal stamped this far in the future means the clocks disagree.
const FUTURE_SLACK_MS: i64 = 1000;

/// How many of the newest slot records `status` shows.
const RECENT_SLOTS: usize = 5;

/// What kind of participant holds a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A zkrun process: its node holds zkrun's JSON.
    Zkrun,
    /// Another recipe that names its nodes like Curator's `LeaderLatch`
    /// (`[_c_<uuid>-]latch-<sequence>`); its data is its id, as text.
    CuratorLeaderLatch,
}

/// One participant of an election, as ZooKeeper holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Place in line; 0 is first.
    pub position: usize,
    /// `leader`, `follower`, or `waiting` (first in line, but a zkrun
    /// participant that holds no lease yet does not lead).
    pub role: &'static str,
    /// Which recipe the participant runs.
    pub kind: Kind,
    /// The participant id (for Curator participants: their node data).
    pub id: String,
    /// The host it runs on (zkrun participants only).
    pub host: Option<String>,
    /// Its process id (zkrun participants only).
    pub pid: Option<u32>,
    /// The plugin it joined with (zkrun participants only).
    pub plugin: Option<String>,
    /// The SHA-256 of that plugin file (zkrun participants only).
    pub sha256: Option<String>,
    /// The zkrun version (zkrun participants only).
    pub version: Option<String>,
    /// The schedule it runs the job on ([`Schedule::spec`]), if any.
    pub schedule: Option<String>,
    /// The node's sequence number.
    pub sequence: i64,
    /// The node's czxid: the term it leads (or will lead) with (zkrun
    /// participants only: other recipes have no fencing token).
    pub term: Option<u64>,
    /// The election node's name.
    pub node: String,
    /// The session that owns the node, in hex.
    pub session: String,
    /// The lease of a zkrun participant first in line, if it holds one.
    pub lease: Option<LeaseStatus>,
}

/// Whether a lease was renewed recently enough for its leader to work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Freshness {
    /// Renewed within the lease: the leader may run its job.
    Fresh,
    /// Past the lease but not the deadline: the leader has paused its job.
    Suspended,
    /// Past the deadline: the leader has demoted itself (or died); the next
    /// in line takes over.
    Lapsed,
}

/// A leader's lease, as its lease node shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseStatus {
    /// The verdict.
    pub state: Freshness,
    /// How long ago the last renewal was stamped by the ensemble, by this
    /// host's wall clock (`None` when the clocks disagree).
    pub renewed_ms_ago: Option<u64>,
    /// Time left until the leader's deadline (negative: past it), when the
    /// age is known.
    pub deadline_in_ms: Option<i64>,
    /// The leader's deadline, counted from each renewal.
    pub deadline_ms: u64,
    /// Renewals so far (the lease node's version).
    pub renewals: i32,
    /// The verdict came from watching for a renewal, because this host's
    /// clock and the ensemble's disagree by more than the lease allows.
    pub observed: bool,
}

/// An election's participants, in line order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ElectionStatus {
    /// The election path.
    pub election: String,
    /// Whether the election path exists at all.
    pub exists: bool,
    /// Everyone in line, the first in line first.
    pub participants: Vec<Member>,
    /// A lease node left by a leader that is no longer in line (it died or
    /// was taken over): while it is there, the first in line waits for its
    /// deadline before it leads.
    pub stale_lease: Option<StaleLease>,
    /// The schedule the participants run the job on (the first in line's),
    /// and its slots as the ledger holds them; `None` in tick mode.
    pub schedule: Option<ScheduleStatus>,
}

/// A schedule and its slot ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScheduleStatus {
    /// The schedule, for people.
    pub schedule: String,
    /// The next slot due after now.
    pub next_due: Option<DueSlot>,
    /// This schedule's records in the ledger (pruning keeps the newest).
    pub recorded: usize,
    /// Those records by outcome.
    pub counts: BTreeMap<&'static str, usize>,
    /// The newest of them, newest first.
    pub recent: Vec<Record>,
}

/// A slot not yet due.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DueSlot {
    /// Its id.
    pub slot: String,
    /// When it is due (RFC 3339, UTC).
    pub at: String,
    /// The same in the schedule's zone.
    pub local: String,
}

/// The lease node of a leader whose election node is gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StaleLease {
    /// The lease node's name.
    pub node: String,
    /// The lease, judged by this host's clock.
    pub lease: LeaseStatus,
}

impl ElectionStatus {
    /// The leader, if anyone leads: the first in line, unless it is a zkrun
    /// participant without a lease node (not leading yet).
    pub fn leader(&self) -> Option<&Member> {
        self.participants.first().filter(|m| m.role == "leader")
    }

    /// Whether someone leads with a fresh lease (a Curator leader has no
    /// lease: its node, kept by its live session, is all there is to see).
    pub fn healthy(&self) -> bool {
        self.leader().is_some_and(|m| m.lease.as_ref().is_none_or(|l| l.state == Freshness::Fresh))
    }
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No server answered.
    #[error("cannot reach the ZooKeeper ensemble {zk}: {error}")]
    Unreachable {
        /// The ensemble.
        zk: String,
        /// What the client said.
        error: String,
    },
    /// The ensemble refused the session's credentials.
    #[error("the ZooKeeper ensemble {zk} refused the credentials: {error}")]
    NotAuthorized {
        /// The ensemble.
        zk: String,
        /// What the client said.
        error: String,
    },
    /// A request failed.
    #[error("reading election {election} failed: {error}")]
    Failed {
        /// The election.
        election: String,
        /// What the client said.
        error: zk::Error,
    },
    /// The slot ledger could not be read.
    #[error("reading the slot ledger of election {election} failed: {error}")]
    Ledger {
        /// The election.
        election: String,
        /// What went wrong.
        error: String,
    },
}

impl StatusError {
    /// Whether the ensemble refused these credentials, or their ACL denies
    /// reading the election: a configuration problem, not a missing leader.
    pub fn not_authorized(&self) -> bool {
        matches!(self, StatusError::NotAuthorized { .. })
            || matches!(self, StatusError::Failed { error: zk::Error::NoAuth, .. })
    }

    /// A short machine-readable name for `status --json`.
    pub fn kind(&self) -> &'static str {
        match self {
            StatusError::Unreachable { .. } => "unreachable",
            _ if self.not_authorized() => "not-authorized",
            StatusError::NotAuthorized { .. } | StatusError::Failed { .. } | StatusError::Ledger { .. } => {
                "failed"
            }
        }
    }
}

/// A connected session for reading elections.
pub struct Reader {
    client: zk::Client,
    timeout: Duration,
}

impl Reader {
    /// Connects once (no retries beyond `timeout`).
    pub async fn connect(
        connect: &ConnectString,
        access: &ZkAccess,
        timeout: Duration,
    ) -> Result<Reader, StatusError> {
        let unreachable = |error: String| StatusError::Unreachable { zk: connect.to_string(), error };
        let servers = connect.servers_string();
        let connector = zk::Client::connector().with_session_timeout(timeout).with_fail_eagerly();
        let client = match tokio::time::timeout(timeout, access.connect(connector, &servers)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e @ zk::Error::AuthFailed)) => {
                return Err(StatusError::NotAuthorized { zk: connect.to_string(), error: e.to_string() });
            }
            Ok(Err(e)) => {
                // A TLS failure looks like an unreachable ensemble to the
                // client library: say which it is; else what the sockets say.
                if let Some(tls) = access.diagnose(connect).await {
                    return Err(unreachable(tls));
                }
                let cause = connect.probe(Duration::from_secs(1).min(timeout)).await;
                return Err(unreachable(format!("{e} ({cause})")));
            }
            Err(_) => {
                return Err(unreachable(format!("no answer within {}", humantime::format_duration(timeout))));
            }
        };
        let client = match &connect.chroot {
            None => client,
            Some(chroot) => client.chroot(chroot.as_str()).map_err(|_| unreachable("bad chroot".into()))?,
        };
        Ok(Reader { client, timeout })
    }

    /// The session, for readers of other parts of the election (rollout).
    pub fn client(&self) -> &zk::Client {
        &self.client
    }

    /// Reads the election, as of a `sync` through the ensemble's leader.
    pub async fn read(&self, election: &str) -> Result<ElectionStatus, StatusError> {
        let failed = |error| StatusError::Failed { election: election.to_string(), error };
        let absent = ElectionStatus {
            election: election.to_string(),
            exists: false,
            participants: Vec::new(),
            stale_lease: None,
            schedule: None,
        };
        match self.client.sync(election).await {
            Ok(()) => {}
            Err(zk::Error::NoNode) => return Ok(absent),
            Err(e) => return Err(failed(e)),
        }
        let children = match self.client.list_children(election).await {
            Ok(children) => children,
            Err(zk::Error::NoNode) => return Ok(absent),
            Err(e) => return Err(failed(e)),
        };
        let mut participants = Vec::new();
        for (sequence, name) in node::in_order(&children) {
            let (data, stat) = match self.client.get_data(&format!("{election}/{name}")).await {
                Ok(found) => found,
                // Left while we looked.
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(failed(e)),
            };
            let mut member = member(participants.len(), sequence, name, &data, &stat);
            if member.position == 0 && member.kind == Kind::Zkrun {
                let lease = node::lease_name(name).expect("participant nodes have a sequence");
                member.lease = self.lease(&format!("{election}/{lease}")).await.map_err(failed)?;
                member.role = if member.lease.is_some() { "leader" } else { "waiting" };
            }
            participants.push(member);
        }
        let stale_lease = match participants.first() {
            Some(first) if first.role == "leader" => None,
            first => {
                let first_sequence = first.map(|m| m.sequence);
                let stale = children.iter().find(|c| {
                    node::holder(c).is_some_and(|(kind, sequence)| {
                        kind == node::LeaseKind::Lease && Some(sequence) != first_sequence
                    })
                });
                match stale {
                    Some(name) => self.stale(&format!("{election}/{name}"), name).await.map_err(failed)?,
                    None => None,
                }
            }
        };
        let schedule = match participants.iter().find_map(|m| m.schedule.clone()) {
            Some(spec) => {
                let records = ledger::read(&self.client, &ledger::dir(election)).await.map_err(|e| {
                    StatusError::Ledger { election: election.to_string(), error: e.to_string() }
                })?;
                Some(schedule_status(&spec, records.into_iter().map(|(r, _)| r).collect(), Timestamp::now()))
            }
            None => None,
        };
        Ok(ElectionStatus {
            election: election.to_string(),
            exists: true,
            participants,
            stale_lease,
            schedule,
        })
    }

    /// A departed leader's lease node, judged by the clocks alone (its
    /// leader no longer renews it, so there is no renewal to wait for).
    async fn stale(&self, path: &str, name: &str) -> Result<Option<StaleLease>, zk::Error> {
        let (data, stat) = match self.client.get_data(path).await {
            Ok(found) => found,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(e),
        };
        let deadline_ms = LeaseRecord::from_bytes(&data).map_or(0, |r| r.deadline_ms);
        let lease = judge(wall_ms() - stat.mtime, deadline_ms, stat.version);
        Ok(Some(StaleLease { node: name.to_string(), lease }))
    }

    /// The lease in `path`, or `None` if the leader holds none.
    async fn lease(&self, path: &str) -> Result<Option<LeaseStatus>, zk::Error> {
        let (data, stat) = match self.client.get_data(path).await {
            Ok(found) => found,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(e),
        };
        let deadline_ms = LeaseRecord::from_bytes(&data).map_or(0, |r| r.deadline_ms);
        let age_ms = wall_ms() - stat.mtime;
        let judged = judge(age_ms, deadline_ms, stat.version);
        let plausible = age_ms >= -FUTURE_SLACK_MS;
        // Never "fresh" from the clocks: watch for a renewal for up to a
        // whole deadline (a live leader renews within a quarter of it).
        let period = Duration::from_millis(deadline_ms).min(self.timeout);
        let observed = match self.await_renewal(path, stat.version, period).await? {
            // The lease node went while we watched: its session expired or
            // its leader stood down. Either way the lease is over; saying
            // "no lease yet" would hide that a leader just lapsed.
            None => LeaseStatus { state: Freshness::Lapsed, ..judged },
            Some(true) => LeaseStatus {
                state: Freshness::Fresh,
                renewed_ms_ago: Some(0),
                deadline_in_ms: Some(deadline_ms as i64),
                ..judged
            },
            // No renewal for a deadline: lapsed, however recent the
            // clocks make the last one look. A shorter watch (--timeout)
            // proves only that renewals were missed.
            Some(false) => {
                let state = if period.as_millis() >= u128::from(deadline_ms) {
                    Freshness::Lapsed
                } else {
                    Freshness::Suspended
                };
                let mut deadline_in_ms = deadline_ms as i64 - age_ms.max(0);
                if state == Freshness::Lapsed {
                    deadline_in_ms = deadline_in_ms.min(0);
                }
                match plausible {
                    true => LeaseStatus { state, deadline_in_ms: Some(deadline_in_ms), ..judged },
                    false => LeaseStatus { state, renewed_ms_ago: None, deadline_in_ms: None, ..judged },
                }
            }
        };
        Ok(Some(LeaseStatus { observed: true, ..observed }))
    }

    /// Watches the lease node for a renewal after `version`, for at most
    /// `period`: `Some(true)` renewed, `Some(false)` not, `None` gone.
    async fn await_renewal(
        &self,
        path: &str,
        version: i32,
        period: Duration,
    ) -> Result<Option<bool>, zk::Error> {
        let until = Instant::now() + period;
        loop {
            let (_, stat, watcher) = match self.client.get_and_watch_data(path).await {
                Ok(found) => found,
                Err(zk::Error::NoNode) => return Ok(None),
                Err(e) => return Err(e),
            };
            if stat.version != version {
                return Ok(Some(true));
            }
            if tokio::time::timeout_at(until.into(), watcher.changed()).await.is_err() {
                return Ok(Some(false));
            }
        }
    }
}

/// The lease's state from its age by the clocks, `age_ms` after its last
/// renewal (the lease is three quarters of the deadline: `T/2` of `2T/3`).
fn judge(age_ms: i64, deadline_ms: u64, renewals: i32) -> LeaseStatus {
    let deadline = deadline_ms as i64;
    let state = if age_ms <= deadline * 3 / 4 {
        Freshness::Fresh
    } else if age_ms <= deadline {
        Freshness::Suspended
    } else {
        Freshness::Lapsed
    };
    let age = age_ms.max(0);
    LeaseStatus {
        state,
        renewed_ms_ago: Some(age as u64),
        deadline_in_ms: Some(deadline - age),
        deadline_ms,
        renewals,
        observed: false,
    }
}

/// A schedule's standing from its spec and the ledger's records, as of `now`.
fn schedule_status(spec: &str, records: Vec<Record>, now: Timestamp) -> ScheduleStatus {
    let parsed = Schedule::from_spec(spec).ok();
    let mut mine: Vec<Record> =
        records.into_iter().filter(|r| parsed.as_ref().is_none_or(|s| s.owns(&r.slot))).collect();
    // RFC 3339 instants in UTC sort as text.
    mine.sort_by(|a, b| b.at.cmp(&a.at));
    let mut counts = BTreeMap::new();
    for record in &mine {
        *counts.entry(record.outcome.as_str()).or_insert(0) += 1;
    }
    let recorded = mine.len();
    mine.truncate(RECENT_SLOTS);
    let (schedule, next_due) = match &parsed {
        Some(s) => (
            s.describe(),
            s.next_after(now).map(|slot| DueSlot {
                at: slot.at.to_string(),
                local: s.local(slot.at),
                slot: slot.id,
            }),
        ),
        None => (spec.to_string(), None),
    };
    ScheduleStatus { schedule, next_due, recorded, counts, recent: mine }
}

fn member(position: usize, sequence: i64, name: &str, data: &[u8], stat: &zk::Stat) -> Member {
    let base = Member {
        position,
        role: if position == 0 { "leader" } else { "follower" },
        kind: Kind::CuratorLeaderLatch,
        id: String::from_utf8_lossy(data).into_owned(),
        host: None,
        pid: None,
        plugin: None,
        sha256: None,
        version: None,
        schedule: None,
        sequence,
        term: None,
        node: name.to_string(),
        session: format!("{:#x}", stat.ephemeral_owner),
        lease: None,
    };
    let Some(who) = Participant::parse(data) else { return base };
    let known = |s: String| (!s.is_empty()).then_some(s);
    Member {
        kind: Kind::Zkrun,
        id: who.id,
        host: Some(who.host),
        pid: Some(who.pid),
        plugin: known(who.plugin),
        sha256: known(who.sha256),
        version: known(who.version),
        schedule: known(who.schedule),
        term: Some(stat.czxid as u64),
        ..base
    }
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Connects once (no retries beyond `timeout`) and reads the election.
pub async fn read(
    connect: &ConnectString,
    access: &ZkAccess,
    election: &str,
    timeout: Duration,
) -> Result<ElectionStatus, StatusError> {
    Reader::connect(connect, access, timeout).await?.read(election).await
}

/// Whether the status changed in a way worth printing again (not merely
/// the age of the last renewal).
pub fn changed(before: &ElectionStatus, after: &ElectionStatus) -> bool {
    let shape = |s: &ElectionStatus| {
        s.participants
            .iter()
            .map(|m| (m.node.clone(), m.role, m.id.clone(), m.lease.as_ref().map(|l| l.state)))
            .collect::<Vec<_>>()
    };
    // A slot that starts or ends is a change too.
    let newest_slot = |s: &ElectionStatus| {
        s.schedule.as_ref().and_then(|s| s.recent.first()).map(|r| (r.slot.clone(), r.outcome))
    };
    before.exists != after.exists
        || shape(before) != shape(after)
        || newest_slot(before) != newest_slot(after)
}

/// Once this participant is in line, looks for another live zkrun
/// participant with the same id, and warns: ids name hosts in logs, metrics
/// and `zkrun status`, and two alike make them ambiguous. In the background,
/// on a session of its own; a failure to look is only logged at debug.
pub fn warn_same_id(
    connect: ConnectString,
    access: ZkAccess,
    election: String,
    id: String,
    handle: crate::election::Election,
) {
    use crate::election::ElectionState;
    tokio::spawn(async move {
        let mut states = handle.watch_state();
        let in_line = states
            .wait_for(|s| matches!(s, ElectionState::Follower { .. } | ElectionState::Leader { .. }))
            .await
            .is_ok();
        if !in_line {
            return;
        }
        let found = match read(&connect, &access, &election, Duration::from_secs(10)).await {
            Ok(found) => found,
            Err(e) => return tracing::debug!(error = %e, "cannot look for duplicate ids"),
        };
        let me = Participant::this_process(id.clone());
        let twins: Vec<&Member> = found
            .participants
            .iter()
            .filter(|m| m.kind == Kind::Zkrun && m.id == id)
            .filter(|m| m.host.as_deref() != Some(me.host.as_str()) || m.pid != Some(me.pid))
            .collect();
        for twin in twins {
            tracing::warn!(
                event = "duplicate_id",
                id,
                other_host = twin.host.as_deref().unwrap_or_default(),
                other_pid = twin.pid.unwrap_or_default(),
                other_node = twin.node,
                "another live participant of this election has the same id; give each host its own --id"
            );
        }
    });
}

/// Renders the status as a table for people. Every text from node data
/// (which any ZooKeeper client with access may have written) has its
/// control characters escaped first: it cannot forge a row or drive the
/// operator's terminal.
pub fn render(status: &ElectionStatus) -> String {
    render_escaped(&escaped(status))
}

/// `status` with every text taken from ZooKeeper passed through
/// [`crate::text::escape_controls`].
fn escaped(status: &ElectionStatus) -> ElectionStatus {
    let clean = |s: &str| crate::text::escape_controls(s).into_owned();
    let clean_opt = |s: &Option<String>| s.as_deref().map(clean);
    ElectionStatus {
        election: clean(&status.election),
        exists: status.exists,
        participants: status
            .participants
            .iter()
            .map(|m| Member {
                id: clean(&m.id),
                host: clean_opt(&m.host),
                plugin: clean_opt(&m.plugin),
                sha256: clean_opt(&m.sha256),
                version: clean_opt(&m.version),
                schedule: clean_opt(&m.schedule),
                node: clean(&m.node),
                session: clean(&m.session),
                ..m.clone()
            })
            .collect(),
        stale_lease: status
            .stale_lease
            .as_ref()
            .map(|stale| StaleLease { node: clean(&stale.node), ..stale.clone() }),
        schedule: status.schedule.as_ref().map(|s| ScheduleStatus {
            schedule: clean(&s.schedule),
            recent: s
                .recent
                .iter()
                .map(|r| Record {
                    slot: clean(&r.slot),
                    at: clean(&r.at),
                    participant: clean(&r.participant),
                    error: r.error.as_deref().map(clean),
                    ..r.clone()
                })
                .collect(),
            ..s.clone()
        }),
    }
}

fn render_escaped(status: &ElectionStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if !status.exists {
        let _ = writeln!(out, "election {}: does not exist (nobody has joined it)", status.election);
        return out;
    }
    let leader = match (status.leader(), status.participants.first()) {
        (Some(m), _) => match (&m.lease, m.term) {
            (Some(lease), Some(term)) if lease.state == Freshness::Lapsed => {
                format!("nobody leads: {}'s lease of term {term} lapsed, {}", m.id, describe(lease))
            }
            (Some(lease), Some(term)) => format!("{} leads with term {term}, {}", m.id, describe(lease)),
            _ => format!("{} leads (a {} participant: no lease)", m.id, kind_name(m.kind)),
        },
        (None, first) => {
            let next = first.map_or_else(String::new, |m| format!("; {} is first in line", m.id));
            match &status.stale_lease {
                Some(stale) if stale.lease.state == Freshness::Lapsed => format!(
                    "nobody leads: the last leader's lease lapsed ({}, {}){next} and takes over",
                    stale.node,
                    describe(&stale.lease)
                ),
                Some(stale) => format!(
                    "nobody leads: the last leader left, its lease not yet lapsed ({}, {}){next} and waits for it",
                    stale.node,
                    describe(&stale.lease)
                ),
                None if first.is_some() => format!("nobody leads{next}, without a lease yet"),
                None => "nobody leads".into(),
            }
        }
    };
    let _ =
        writeln!(out, "election {}: {} participant(s), {leader}", status.election, status.participants.len());
    if status.participants.is_empty() {
        return out;
    }
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let short = |s: &Option<String>| {
        s.as_ref().map_or_else(|| "-".to_string(), |s| s.chars().take(12).collect::<String>())
    };
    let id_width = status.participants.iter().map(|m| m.id.len()).max().unwrap_or(2).max(2);
    let host_width = status.participants.iter().map(|m| dash(&m.host).len()).max().unwrap_or(4).max(4);
    let plugin_width = status.participants.iter().map(|m| dash(&m.plugin).len()).max().unwrap_or(6).max(6);
    let _ = writeln!(
        out,
        "{:>3}  {:<8}  {:<7}  {:<id_width$}  {:<host_width$}  {:>7}  {:<plugin_width$}  {:<12}  {:<8}  {:>20}  node",
        "#", "role", "kind", "id", "host", "pid", "plugin", "sha256", "version", "term"
    );
    for m in &status.participants {
        let _ = writeln!(
            out,
            "{:>3}  {:<8}  {:<7}  {:<id_width$}  {:<host_width$}  {:>7}  {:<plugin_width$}  {:<12}  {:<8}  {:>20}  {}",
            m.position,
            m.role,
            if m.kind == Kind::Zkrun { "zkrun" } else { "curator" },
            m.id,
            dash(&m.host),
            m.pid.map_or("-".into(), |p| p.to_string()),
            dash(&m.plugin),
            short(&m.sha256),
            dash(&m.version),
            m.term.map_or("-".into(), |t| t.to_string()),
            m.node
        );
    }
    if let Some(schedule) = &status.schedule {
        render_schedule(&mut out, schedule);
    }
    out
}

fn render_schedule(out: &mut String, schedule: &ScheduleStatus) {
    use std::fmt::Write;
    let next = schedule.next_due.as_ref().map_or_else(
        || "no slot is due again".to_string(),
        |due| format!("next due {} (slot {})", due.local, due.slot),
    );
    let _ = writeln!(out, "schedule: {}; {next}", schedule.schedule);
    let counts: Vec<String> = schedule.counts.iter().map(|(outcome, n)| format!("{outcome} {n}")).collect();
    if schedule.recorded == 0 {
        let _ = writeln!(out, "slots: none recorded yet");
        return;
    }
    let _ = writeln!(out, "slots: {} recorded ({}); the newest:", schedule.recorded, counts.join(", "));
    let slot_width = schedule.recent.iter().map(|r| r.slot.len()).max().unwrap_or(4).max(4);
    let by_width = schedule.recent.iter().map(|r| r.participant.len()).max().unwrap_or(2).max(2);
    let _ = writeln!(
        out,
        "  {:<slot_width$}  {:<11}  {:>7}  {:>20}  {:<by_width$}  {:>9}  error",
        "slot", "outcome", "attempt", "term", "by", "took"
    );
    for r in &schedule.recent {
        let _ = writeln!(
            out,
            "  {:<slot_width$}  {:<11}  {:>7}  {:>20}  {:<by_width$}  {:>9}  {}",
            r.slot,
            r.outcome.as_str(),
            r.attempt,
            r.term,
            r.participant,
            r.duration_ms.map_or("-".into(), |ms| format!("{ms}ms")),
            r.error.as_deref().unwrap_or("-")
        );
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Zkrun => "zkrun",
        Kind::CuratorLeaderLatch => "Curator LeaderLatch",
    }
}

/// One line about a lease: its state, the renewal age and the deadline.
fn describe(lease: &LeaseStatus) -> String {
    let state = match lease.state {
        Freshness::Fresh => "lease fresh",
        Freshness::Suspended => "suspended (lease lapsed, deadline not yet)",
        Freshness::Lapsed => "lease lapsed (past its deadline)",
    };
    let timing = match (lease.renewed_ms_ago, lease.deadline_in_ms) {
        (Some(age), Some(left)) if left >= 0 => format!("renewed {age} ms ago, deadline in {left} ms"),
        (Some(age), Some(left)) => format!("renewed {age} ms ago, deadline passed {} ms ago", -left),
        _ => "renewal age unknown (this host's clock disagrees with the ensemble's)".into(),
    };
    let seen = if lease.observed { ", seen renewing" } else { "" };
    format!("{state}: {timing}{seen}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stat of an ephemeral node, as the tests' participants have.
    fn ephemeral_stat() -> zk::Stat {
        zk::Stat {
            czxid: 42,
            mzxid: 42,
            pzxid: 42,
            ctime: 0,
            mtime: 0,
            version: 0,
            cversion: 0,
            aversion: 0,
            ephemeral_owner: 7,
            data_length: 0,
            num_children: 0,
        }
    }

    #[test]
    fn status_shows_a_schedules_next_slot_and_its_newest_records() {
        let schedule = crate::schedule::Schedule::from_spec("every 2000ms").unwrap();
        let record = |at: &str, outcome, attempt, error: Option<&str>| Record {
            slot: schedule.slot(at.parse().unwrap()).id,
            at: at.into(),
            outcome,
            attempt,
            term: 7,
            participant: "edge\u{1b}[2J".into(),
            claimed_ms: 0,
            duration_ms: Some(12),
            error: error.map(Into::into),
        };
        use crate::schedule::ledger::Outcome;
        let mut records: Vec<Record> = (0..7)
            .map(|i| record(&format!("2026-12-03T10:00:{:02}Z", i * 2), Outcome::Ok, 1, None))
            .collect();
        records.push(record("2026-12-03T10:00:14Z", Outcome::Interrupted, 2, Some("lease lapsed")));
        // Another schedule's record (an earlier configuration) is not counted.
        let mut foreign = record("2026-12-03T10:00:16Z", Outcome::Missed, 0, None);
        foreign.slot = "ffffffff-20261203T100016Z".into();
        records.push(foreign);
        let status = schedule_status("every 2000ms", records, "2026-12-03T10:00:15Z".parse().unwrap());
        assert_eq!(status.recorded, 8);
        assert_eq!(status.counts.get("ok"), Some(&7));
        assert_eq!(status.counts.get("interrupted"), Some(&1));
        assert_eq!(status.counts.get("missed"), None);
        assert_eq!(status.recent.len(), RECENT_SLOTS);
        assert_eq!(status.recent[0].at, "2026-12-03T10:00:14Z", "newest first");
        let due = status.next_due.as_ref().unwrap();
        assert_eq!(due.at, "2026-12-03T10:00:16Z");

        let election = ElectionStatus {
            election: "/e".into(),
            exists: true,
            participants: vec![member(
                0,
                1,
                "n_0000000001",
                &Participant::this_process("edge").to_bytes(),
                &ephemeral_stat(),
            )],
            stale_lease: None,
            schedule: Some(status),
        };
        let text = render(&election);
        assert!(text.contains("schedule: every 2s; next due 2026-12-03 10:00:16"), "{text}");
        assert!(text.contains("slots: 8 recorded (interrupted 1, ok 7); the newest:"), "{text}");
        assert!(text.contains("interrupted") && text.contains("lease lapsed"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn node_data_cannot_forge_a_row_or_reach_the_terminal() {
        let stat = ephemeral_stat();
        let forged = b"evil\x1b[2K\r  0  leader    zkrun  victim\x07\n";
        let status = ElectionStatus {
            election: "/e".into(),
            exists: true,
            participants: vec![member(0, 1, "latch-0000000001", forged, &stat)],
            stale_lease: None,
            schedule: None,
        };
        let text = render(&status);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains("evil\\u{1b}[2K\\r"), "{text}");
    }

    #[test]
    fn a_lease_is_fresh_within_its_lease_then_suspended_then_lapsed() {
        assert_eq!(judge(500, 2666, 3).state, Freshness::Fresh);
        assert_eq!(judge(1999, 2666, 3).state, Freshness::Fresh);
        assert_eq!(judge(2100, 2666, 3).state, Freshness::Suspended);
        let lapsed = judge(3000, 2666, 3);
        assert_eq!(lapsed.state, Freshness::Lapsed);
        assert_eq!(lapsed.deadline_in_ms, Some(-334));
        // A renewal slightly in the future (clock offset) reads as just now.
        assert_eq!(judge(-300, 2666, 3).renewed_ms_ago, Some(0));
    }

    #[test]
    fn curator_nodes_are_told_apart_from_zkrun_nodes() {
        let stat = ephemeral_stat();
        let curator = member(0, 1, "_c_x-latch-0000000001", b"curator-1", &stat);
        assert_eq!(
            (curator.kind, curator.id.as_str(), curator.term, curator.pid),
            (Kind::CuratorLeaderLatch, "curator-1", None, None)
        );
        let zkrun = Participant::this_process("edge").with_plugin("heartbeat", "ab");
        let member = member(1, 2, "_c_y-latch-0000000002", &zkrun.to_bytes(), &stat);
        assert_eq!(member.kind, Kind::Zkrun);
        assert_eq!((member.term, member.sha256.as_deref(), member.role), (Some(42), Some("ab"), "follower"));
    }
}
