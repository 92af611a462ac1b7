//! `zkrun status`: who is in an election, in line order, and who leads.

use std::time::Duration;

use serde::Serialize;
use zookeeper_client as zk;

use crate::election::node::{self, Participant};
use crate::zkconnect::ZkAccess;
use crate::zkpath::ConnectString;

/// One participant of an election, as ZooKeeper holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Place in line; 0 leads.
    pub position: usize,
    /// `leader` or `follower`.
    pub role: &'static str,
    /// The participant id (for Curator participants: their node data).
    pub id: String,
    /// The host it runs on ("" for non-zkrun participants).
    pub host: String,
    /// Its process id (0 for non-zkrun participants).
    pub pid: u32,
    /// The node's sequence number.
    pub sequence: i64,
    /// The node's czxid: the term it leads (or will lead) with.
    pub term: u64,
    /// The election node's name.
    pub node: String,
    /// The session that owns the node, in hex.
    pub session: String,
}

/// An election's participants, in line order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ElectionStatus {
    /// The election path.
    pub election: String,
    /// Whether the election path exists at all.
    pub exists: bool,
    /// Everyone in line, the leader first.
    pub participants: Vec<Member>,
}

impl ElectionStatus {
    /// The leader, if anyone leads.
    pub fn leader(&self) -> Option<&Member> {
        self.participants.first()
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
    /// A request failed.
    #[error("reading election {election} failed: {error}")]
    Failed {
        /// The election.
        election: String,
        /// What the client said.
        error: zk::Error,
    },
}

/// Connects once (no retries beyond `timeout`) and reads the election.
pub async fn read(
    connect: &ConnectString,
    access: &ZkAccess,
    election: &str,
    timeout: Duration,
) -> Result<ElectionStatus, StatusError> {
    let unreachable = |error: String| StatusError::Unreachable { zk: connect.to_string(), error };
    let servers = connect.servers_string();
    let connector = zk::Client::connector().with_session_timeout(timeout).with_fail_eagerly();
    let attempt = tokio::time::timeout(timeout, access.connect(connector, &servers)).await;
    let failure = match attempt {
        Ok(Ok(client)) => Ok(client),
        Err(_) => Err(format!("no answer within {}", humantime::format_duration(timeout))),
        Ok(Err(e)) => Err(e.to_string()),
    };
    let client = match failure {
        Ok(client) => client,
        // A TLS failure looks like an unreachable ensemble to the client
        // library: say which it is.
        Err(error) => return Err(unreachable(access.diagnose(connect).await.unwrap_or(error))),
    };
    let client = match &connect.chroot {
        None => client,
        Some(chroot) => client.chroot(chroot.as_str()).map_err(|_| unreachable("bad chroot".into()))?,
    };
    let failed = |error| StatusError::Failed { election: election.to_string(), error };
    let children = match client.list_children(election).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => {
            return Ok(ElectionStatus {
                election: election.to_string(),
                exists: false,
                participants: Vec::new(),
            });
        }
        Err(e) => return Err(failed(e)),
    };
    let mut participants = Vec::new();
    for (sequence, name) in node::in_order(&children) {
        let (data, stat) = match client.get_data(&format!("{election}/{name}")).await {
            Ok(found) => found,
            // Left while we looked.
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(failed(e)),
        };
        let who = Participant::from_bytes(&data);
        participants.push(Member {
            position: participants.len(),
            role: if participants.is_empty() { "leader" } else { "follower" },
            id: who.id,
            host: who.host,
            pid: who.pid,
            sequence,
            term: stat.czxid as u64,
            node: name.to_string(),
            session: format!("{:#x}", stat.ephemeral_owner),
        });
    }
    Ok(ElectionStatus { election: election.to_string(), exists: true, participants })
}

/// Renders the status as a table for people.
pub fn render(status: &ElectionStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if !status.exists {
        let _ = writeln!(out, "election {}: does not exist (nobody has joined it)", status.election);
        return out;
    }
    let leader = status
        .leader()
        .map(|m| format!("{} leads with term {}", m.id, m.term))
        .unwrap_or("nobody leads".into());
    let _ =
        writeln!(out, "election {}: {} participant(s), {leader}", status.election, status.participants.len());
    if status.participants.is_empty() {
        return out;
    }
    let id_width = status.participants.iter().map(|m| m.id.len()).max().unwrap_or(2).max(2);
    let host_width = status.participants.iter().map(|m| m.host.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        out,
        "{:>3}  {:<8}  {:<id_width$}  {:<host_width$}  {:>7}  {:>10}  {:>20}  node",
        "#", "role", "id", "host", "pid", "sequence", "term"
    );
    for m in &status.participants {
        let _ = writeln!(
            out,
            "{:>3}  {:<8}  {:<id_width$}  {:<host_width$}  {:>7}  {:>10}  {:>20}  {}",
            m.position, m.role, m.id, m.host, m.pid, m.sequence, m.term, m.node
        );
    }
    out
}
