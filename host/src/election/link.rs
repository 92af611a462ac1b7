//! The one owner of a session's connection-state changes.
//!
//! Every change of connection (lost, re-established, maybe to another
//! server) starts a new *generation*. A proof taken in one generation says
//! nothing about the next: notifications may have been lost or reordered
//! across the reconnect. So proofs carry the generation they were taken in,
//! and the no-read fast path is allowed only within it. Whoever waits for
//! state changes waits through [`Link::changed`], and whoever asks for the
//! generation first counts the changes nobody waited for yet, so no code
//! path can consume a change without the generation moving.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use zookeeper_client as zk;

use super::Shared;

/// A session's connection state, and how many times it changed.
pub(super) struct Link {
    states: zk::StateWatcher,
    state: zk::SessionState,
    /// Changes counted so far (awaited or not).
    generation: u64,
    /// Changes already handed out by [`Link::changed`].
    delivered: u64,
    /// Where the connection state is shown to the election's handles.
    shared: Arc<Shared>,
}

impl Link {
    /// Starts counting from the watcher's current state.
    pub(super) fn new(mut states: zk::StateWatcher, shared: Arc<Shared>) -> Link {
        let state = states.state();
        shared.connected.store(is_connected(state), Ordering::Relaxed);
        Link { states, state, generation: 0, delivered: 0, shared }
    }

    /// The current generation, including changes nobody awaited yet.
    pub(super) fn generation(&mut self) -> u64 {
        self.catch_up();
        self.generation
    }

    /// The current state.
    pub(super) fn state(&mut self) -> zk::SessionState {
        self.catch_up();
        self.state
    }

    /// Waits for the next change of state and returns the state. A change
    /// counted (by [`Link::generation`]) but not handed out yet returns at
    /// once. Cancel-safe: nothing is consumed unless it returns.
    pub(super) async fn changed(&mut self) -> zk::SessionState {
        self.catch_up();
        if self.delivered == self.generation {
            let state = self.states.changed().await;
            self.record(state);
        }
        self.delivered = self.generation;
        self.state
    }

    /// Counts the changes that happened without anyone awaiting them.
    fn catch_up(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let polled = pin!(self.states.changed()).poll(&mut cx);
            let Poll::Ready(state) = polled else { return };
            self.record(state);
        }
    }

    /// Counts one change, and shows it to the election's handles.
    fn record(&mut self, state: zk::SessionState) {
        let was = is_connected(self.state);
        self.state = state;
        self.generation += 1;
        let now = is_connected(state);
        self.shared.connected.store(now, Ordering::Relaxed);
        if now && !was {
            self.shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands the watcher back, to follow the session to its end.
    pub(super) fn into_watcher(self) -> zk::StateWatcher {
        self.shared.connected.store(false, Ordering::Relaxed);
        self.states
    }
}

fn is_connected(state: zk::SessionState) -> bool {
    matches!(state, zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly)
}
