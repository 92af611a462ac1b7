//! Election node names and the data each participant stores in its node.
//!
//! Nodes are named the way Apache Curator's `LeaderLatch` names them,
//! `_c_<uuid>-latch-<sequence>`, so zkrun and Curator participants can share
//! one election: both order nodes by the sequence after `latch-`. The
//! `_c_<uuid>-` prefix is fresh for every join (kept across the retries of
//! its one create), which is what lets a create that was interrupted by a
//! lost connection be found again instead of being retried blindly (Curator
//! calls this "protection"), and what keeps a node name, and so a fencing
//! path, from ever being used twice, even where sequence numbers restart.

use serde::{Deserialize, Serialize};

/// The lock name Curator's `LeaderLatch` uses; the sequence follows it.
const LATCH: &str = "latch-";

/// The prefix of lease node names; the leader's sequence follows it.
const LEASE: &str = "zkrun-lease-";

/// The prefix of standby lease node names: the next in line keeps one, so
/// that it holds a lease node before it leads without writing one then.
/// zkrun versions before standby leases do not know the name and ignore it.
const STANDBY: &str = "zkrun-standby-";

/// The protected prefix of the node one join creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protection {
    prefix: String,
}

impl Protection {
    /// A fresh random prefix, for one join.
    pub fn new() -> Protection {
        Protection { prefix: format!("_c_{}-", uuid::Uuid::new_v4()) }
    }

    /// The name to pass to a sequential create: `_c_<uuid>-latch-`.
    pub fn create_name(&self) -> String {
        format!("{}{LATCH}", self.prefix)
    }

    /// Whether `node` was created with this prefix.
    pub fn owns(&self, node: &str) -> bool {
        node.starts_with(&self.prefix)
    }
}

impl Default for Protection {
    fn default() -> Self {
        Protection::new()
    }
}

/// The sequence number of an election node, or `None` for children of the
/// election path that are not participants (such as `state`).
pub fn sequence(node: &str) -> Option<i64> {
    let at = node.rfind(LATCH)?;
    let digits = &node[at + LATCH.len()..];
    if digits.len() < 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The participant nodes among `children`, lowest sequence (the leader) first.
pub fn in_order(children: &[String]) -> Vec<(i64, &str)> {
    let mut nodes: Vec<(i64, &str)> =
        children.iter().filter_map(|c| sequence(c).map(|s| (s, c.as_str()))).collect();
    nodes.sort_unstable();
    nodes
}

/// The name of the lease node that goes with a participant node:
/// `zkrun-lease-<sequence>`. A zkrun leader keeps its lease there, never in
/// its election node, whose data Curator participants must see unchanged
/// (a `LeaderLatch` follower drops its watch on any change but a deletion).
/// It has no `latch-`, so both zkrun and Curator sort it after every
/// participant node and never take it for one.
pub fn lease_name(node: &str) -> Option<String> {
    let at = node.rfind(LATCH)?;
    Some(format!("{LEASE}{}", &node[at + LATCH.len()..]))
}

/// The name of the standby lease node that goes with a participant node:
/// `zkrun-standby-<sequence>`.
pub fn standby_name(node: &str) -> Option<String> {
    let at = node.rfind(LATCH)?;
    Some(format!("{STANDBY}{}", &node[at + LATCH.len()..]))
}

/// Whether `name` is a lease node's name (`zkrun-lease-<sequence>`).
pub fn is_lease_name(name: &str) -> bool {
    holder(name).is_some_and(|(kind, _)| kind == LeaseKind::Lease)
}

/// The two kinds of lease node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseKind {
    /// A leader's lease (`zkrun-lease-<sequence>`).
    Lease,
    /// The next in line's standby lease (`zkrun-standby-<sequence>`).
    Standby,
}

/// The kind of lease node `name` is and the sequence of the participant
/// holding it, or `None` if `name` is neither kind of lease node.
pub fn holder(name: &str) -> Option<(LeaseKind, i64)> {
    let (kind, digits) = match name.strip_prefix(LEASE) {
        Some(digits) => (LeaseKind::Lease, digits),
        None => (LeaseKind::Standby, name.strip_prefix(STANDBY)?),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((kind, digits.parse().ok()?))
}

/// What a zkrun leader keeps in its lease node, renewed every refresh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The leader's election node.
    pub node: String,
    /// How long after its last renewal the leader has certainly stopped its
    /// job and demoted itself (its deadline, in milliseconds).
    pub deadline_ms: u64,
    /// How often the leader renews, by its own clock, in milliseconds: the
    /// next in line compares it with the renewals it sees (`clock_rate.rs`).
    /// 0 in records of zkrun versions that did not write it.
    #[serde(default)]
    pub refresh_ms: u64,
}

impl LeaseRecord {
    /// The bytes stored in the lease node.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("lease record serializes")
    }

    /// Reads a lease node's data; `None` if it is not a lease record.
    pub fn from_bytes(data: &[u8]) -> Option<LeaseRecord> {
        serde_json::from_slice(data).ok()
    }
}

/// What a zkrun participant writes into its election node.
///
/// The plugin fields say which code the participant joined with (its
/// provenance). They are written once, with the node: zkrun never changes
/// an election node (Curator followers watch its data), so after a SIGHUP
/// reload they name the plugin of the join, and the `reloaded` event and
/// the metrics name the running one. Nodes of older zkrun versions lack
/// them and read as empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// The participant id (`--id`).
    pub id: String,
    /// The host name the participant runs on.
    pub host: String,
    /// The process id of the zkrun process.
    pub pid: u32,
    /// The plugin's name (its file stem).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plugin: String,
    /// The SHA-256 of the plugin file, in hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// The zkrun version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The schedule it runs the job on, as opaque text for `status`
    /// (empty: every tick).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub schedule: String,
}

impl Participant {
    /// Describes this process, with the given id.
    pub fn this_process(id: impl Into<String>) -> Participant {
        Participant {
            id: id.into(),
            host: hostname(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Participant::default()
        }
    }

    /// The same participant, running the plugin `name` with digest `sha256`.
    pub fn with_plugin(self, name: impl Into<String>, sha256: impl Into<String>) -> Participant {
        Participant { plugin: name.into(), sha256: sha256.into(), ..self }
    }

    /// The same participant, running its job on the schedule `spec`.
    pub fn with_schedule(self, spec: impl Into<String>) -> Participant {
        Participant { schedule: spec.into(), ..self }
    }

    /// The bytes stored in the election node.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("participant data serializes")
    }

    /// Reads a zkrun participant's node data; `None` if it is not zkrun's
    /// (such as a Curator `LeaderLatch` participant's, which holds its id as
    /// plain text, often empty).
    pub fn parse(data: &[u8]) -> Option<Participant> {
        serde_json::from_slice(data).ok()
    }
}

/// This machine's host name, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_sequence_and_ignores_non_participants() {
        let children: Vec<String> =
            ["_c_b-latch-0000000012", "state", "_c_a-latch-0000000003", "latch-0000000007", "_c_c-latch-12"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let order = in_order(&children);
        assert_eq!(
            order,
            vec![(3, "_c_a-latch-0000000003"), (7, "latch-0000000007"), (12, "_c_b-latch-0000000012")]
        );
    }

    #[test]
    fn protection_recognises_only_its_own_nodes() {
        let p = Protection::new();
        let mine = format!("{}0000000001", p.create_name());
        assert!(p.owns(&mine));
        assert!(!Protection::new().owns(&mine));
        assert_eq!(sequence(&mine), Some(1));
    }

    #[test]
    fn lease_nodes_are_named_after_their_participant_and_sort_last() {
        let node = "_c_1234-latch-0000000042";
        let lease = lease_name(node).unwrap();
        assert_eq!(lease, "zkrun-lease-0000000042");
        assert!(is_lease_name(&lease));
        assert!(!is_lease_name(node) && !is_lease_name("zkrun-lease-") && !is_lease_name("state"));
        assert_eq!(holder(&lease), Some((LeaseKind::Lease, 42)));
        let standby = standby_name(node).unwrap();
        assert_eq!(standby, "zkrun-standby-0000000042");
        assert_eq!(holder(&standby), Some((LeaseKind::Standby, 42)));
        assert!(!is_lease_name(&standby) && sequence(&standby).is_none());
        assert!(standby.as_str() > "9999999999");
        assert_eq!(sequence(&lease), None);
        // Curator compares names without `latch-` whole: after any digits.
        assert!(lease.as_str() > "9999999999");
        let record = LeaseRecord { node: node.into(), deadline_ms: 2666, refresh_ms: 666 };
        assert_eq!(LeaseRecord::from_bytes(&record.to_bytes()), Some(record));
        // Records of older versions have no refresh period.
        let old = LeaseRecord::from_bytes(br#"{"node":"n","deadline_ms":2666}"#).unwrap();
        assert_eq!(old.refresh_ms, 0);
        assert_eq!(LeaseRecord::from_bytes(b"curator"), None);
    }

    #[test]
    fn participant_data_round_trips_and_tells_curator_ids_apart() {
        let p = Participant::this_process("edge-1").with_plugin("heartbeat", "ab12");
        assert_eq!(Participant::parse(&p.to_bytes()), Some(p));
        // What zkrun 0.1 wrote: no plugin fields.
        let old = Participant::parse(br#"{"id":"old","host":"h","pid":7}"#).unwrap();
        assert_eq!((old.id.as_str(), old.sha256.as_str()), ("old", ""));
        assert_eq!(Participant::parse(b"curator-3"), None);
        assert_eq!(Participant::parse(b""), None);
    }
}
