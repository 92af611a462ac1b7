//! In-process election participants for tests of the election core.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use zkrun::election::{Election, ElectionConfig, LeadershipEvent, Participant, Term};
use zkrun::zkpath::ConnectString;

/// One participant: the election handle plus every event it emitted.
pub struct Peer {
    /// The participant's id.
    pub id: String,
    /// The election handle.
    pub election: Election,
    events: mpsc::UnboundedReceiver<LeadershipEvent>,
    /// Every event seen so far, with the time it was read.
    pub history: Vec<(Instant, LeadershipEvent)>,
}

impl Peer {
    /// Joins `path` on the ensemble at `connect` with the given session timeout.
    pub fn join(connect: &str, path: &str, id: &str, session_timeout: Duration) -> Peer {
        let config = ElectionConfig {
            connect: ConnectString::parse(connect).expect("connect string"),
            path: path.to_string(),
            participant: Participant::this_process(id),
            session_timeout,
            access: Default::default(),
        };
        let (election, events) = Election::start(config);
        Peer { id: id.to_string(), election, events, history: Vec::new() }
    }

    /// Reads events that have already arrived.
    pub fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.history.push((Instant::now(), event));
        }
    }

    /// Waits for the next event matching `pred` (recording all events on the way).
    pub async fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&LeadershipEvent) -> bool,
    ) -> LeadershipEvent {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    self.history.push((Instant::now(), event.clone()));
                    if pred(&event) {
                        return event;
                    }
                }
                Ok(None) => panic!("{}: event channel closed while waiting for {what}", self.id),
                Err(_) => panic!(
                    "{}: timed out after {timeout:?} waiting for {what}; saw {:?}",
                    self.id,
                    self.events_seen()
                ),
            }
        }
    }

    /// Waits until elected; returns the term.
    pub async fn wait_elected(&mut self, timeout: Duration) -> Term {
        match self.wait_event("Elected", timeout, |e| matches!(e, LeadershipEvent::Elected { .. })).await {
            LeadershipEvent::Elected { term } => term,
            _ => unreachable!(),
        }
    }

    /// The session id of the latest join.
    pub fn session(&self) -> Option<i64> {
        self.history.iter().rev().find_map(|(_, e)| match e {
            LeadershipEvent::Joined { session, .. } => Some(*session),
            _ => None,
        })
    }

    /// The election node of the latest join.
    pub fn node(&self) -> Option<String> {
        self.history.iter().rev().find_map(|(_, e)| match e {
            LeadershipEvent::Joined { node, .. } => Some(node.clone()),
            _ => None,
        })
    }

    /// Every event seen so far.
    pub fn events_seen(&self) -> Vec<LeadershipEvent> {
        self.history.iter().map(|(_, e)| e.clone()).collect()
    }

    /// Whether an `Elected` event was seen.
    pub fn was_elected(&self) -> bool {
        self.history.iter().any(|(_, e)| matches!(e, LeadershipEvent::Elected { .. }))
    }
}
