//! Leading: creating the lease node before the term starts, renewing the
//! lease, suspending and demoting on time, and standing down when the
//! election node is lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::sleep_until;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::{Exit, Machine, OwnNode, Rejoin, Session, own_node_gone, watch_own};
use crate::clock::{Clock, Stamp};
use crate::election::node::LeaseRecord;
use crate::election::timing::Timing;
use crate::election::{Command, DemoteReason};
use crate::zkconnect::NodeAcl;

impl Machine {
    /// First in line, and every earlier leader has stood down: create our
    /// lease node, then lead.
    ///
    /// The lease node comes first because it is how the next in line tells
    /// "the leader stood down" (no lease node) from "the leader's node was
    /// deleted under it" (a lease node left): a zkrun leader never leads
    /// without one. The create is checked against our own node, and as a
    /// quorum write answered it is a proof of its own.
    pub(super) async fn take_lead(&mut self, session: &mut Session, node: &OwnNode) -> Result<Rejoin, Exit> {
        if self.retime(session) {
            self.publish_timing(session.timing);
        }
        let record = lease_record(node, &session.timing);
        let mut create = true;
        // When the write that created our lease node was sent, once one came
        // back: from then on the next in line counts down to a takeover, and
        // every renewal restarts its count. Past our own deadline after it,
        // give up rather than stall the line (see `give_up_lead`).
        let mut created: Option<Stamp> = None;
        let clock = self.shared.clock.clone();
        let proof = loop {
            let give_up_at = created.map(|at| session.timing.demote_at(at));
            if give_up_at.is_some_and(|at| at.reached(clock.now())) {
                return self.give_up_lead(session, node).await;
            }
            let renewal =
                start_renewal(&session.client, &self.config.access.acl, clock.clone(), node, &record, create);
            // Answer commands while a write is out: a slow link must not
            // make a shutdown wait for it.
            let result = tokio::select! {
                result = renewal => result,
                command = self.commands.recv() => return self.leave_before_leading(session, node, command).await,
                _ = sleep_until(give_up_at.map_or_else(Instant::now, |at| at.instant(&*clock)).into()), if give_up_at.is_some() => {
                    return self.give_up_lead(session, node).await;
                }
            };
            match result {
                // A write stamped before it sat out a reconnect can come back
                // with its lease (nearly) spent: leading on it would mean
                // demoting at once and rejoining at the back, a needless
                // handover. Renew again instead (up to the limit above).
                Ok(Renewal::Renewed(at)) if self.nearly_spent(session, at) => {
                    debug!("the lease node's write came back too late to lead on; renewing again");
                    created.get_or_insert(at);
                    create = false;
                }
                Ok(Renewal::Renewed(at)) => break at,
                // Created by an attempt whose answer was lost: write it.
                Ok(Renewal::Retry { create: again }) => create = again,
                Ok(Renewal::NodeGone) => {
                    self.delete_lease(session, node).await?;
                    return Ok(own_node_gone(node));
                }
                Err(err) => self.recover(session, err).await?,
            }
        };
        self.lead_backoff.reset();
        if let Some((rejoin_after, done)) = self.resign_pending.take() {
            self.delete_own(session, node, true).await?;
            let _ = done.send(());
            return Ok(Rejoin::After(rejoin_after));
        }
        self.lead(session, node, proof, record).await
    }

    /// Our writes come back too late to lead on for longer than our own
    /// deadline after the lease node was created: leading is not possible
    /// from here now, and every renewal restarts the next in line's
    /// takeover timer. Delete our election node and lease node in one
    /// transaction (the next in line is told at once that we stood down),
    /// and join again at the back of the line after a jittered backoff
    /// that grows while this repeats.
    async fn give_up_lead(&mut self, session: &mut Session, node: &OwnNode) -> Result<Rejoin, Exit> {
        let delay = self.lead_backoff.next_delay();
        warn!(
            event = "lead_abandoned",
            node = %node.name,
            limit_ms = session.timing.deadline.as_millis() as u64,
            rejoin_in_ms = delay.as_millis() as u64,
            mono_ns = crate::clock::monotonic_ns(),
            "our writes come back too late to lead on; leaving the head of the line to the next participant"
        );
        self.delete_own(session, node, true).await?;
        Ok(Rejoin::After(delay))
    }

    /// A command came while we were about to lead: we never did, so there
    /// is nothing to demote; remove our nodes (the lease node may exist)
    /// and do what was asked.
    async fn leave_before_leading(
        &mut self,
        session: &mut Session,
        node: &OwnNode,
        command: Option<Command>,
    ) -> Result<Rejoin, Exit> {
        match command {
            Some(Command::Resign { rejoin_after, done }) => {
                self.delete_own(session, node, true).await?;
                let _ = done.send(());
                Ok(Rejoin::After(rejoin_after))
            }
            Some(Command::Shutdown { done }) => {
                let _ = self.delete_own(session, node, true).await;
                Err(Exit::Shutdown(Some(done)))
            }
            None => Err(Exit::Shutdown(None)),
        }
    }

    /// Whether a lease counted from `proof` would end within a refresh
    /// period: too soon to start leader work on.
    fn nearly_spent(&self, session: &Session, proof: Stamp) -> bool {
        let timing = session.timing;
        timing.lease_end(proof).reached(self.shared.clock.now().after(timing.refresh))
    }

    /// Leads until the term ends; keeps the lease fresh and enforces the
    /// deadline. Returns how to rejoin, or why the session must go.
    async fn lead(
        &mut self,
        session: &mut Session,
        node: &OwnNode,
        proof: Stamp,
        mut record: Vec<u8>,
    ) -> Result<Rejoin, Exit> {
        let term = node.term;
        let mut timing = session.timing;
        let mut proof = proof;
        self.elect(session, node, proof);
        info!(
            event = "leading",
            term = term.0,
            lease_ms = timing.lease.as_millis() as u64,
            deadline_ms = timing.deadline.as_millis() as u64,
            "leading"
        );

        // Our lease node exists (take_lead created it): the one behind us
        // follows our renewals from now on.
        let mut create_lease = false;
        let mut refresh: Option<RenewalFuture> = None;
        // A watch on our own node; `None` while it could not be set (armed
        // again at the next reconnection; renewals check the node meanwhile).
        let mut own_watch = match watch_own(&session.client, &node.path).await {
            Ok(Some(watch)) => Some(watch),
            Ok(None) => return self.lost_node(session, node).await,
            Err(_) => None,
        };
        let mut suspended = false;
        let clock = self.shared.clock.clone();
        let mut next_refresh = proof.after(timing.refresh).instant(&*clock);
        // Timers sleep on CLOCK_MONOTONIC, which stops while the machine is
        // suspended; this wakes the loop often enough to notice, on
        // BOOTTIME and the wall clock, a lease or deadline passed meanwhile.
        let mut clock_check = timing.refresh.min(Duration::from_millis(100));

        loop {
            if self.retime(session) {
                // A shorter session timeout may already have outrun the
                // lease we hold: stop, and resume only on a renewal sent
                // under the new timing (its record carries the new deadline).
                timing = session.timing;
                record = lease_record(node, &timing);
                clock_check = timing.refresh.min(Duration::from_millis(100));
                if !suspended {
                    suspended = true;
                    self.suspend(term, "session timeout renegotiated");
                }
                self.publish_timing(timing);
                refresh = Some(start_renewal(
                    &session.client,
                    &self.config.access.acl,
                    clock.clone(),
                    node,
                    &record,
                    create_lease,
                ));
            }
            let lease_end = timing.lease_end(proof).instant(&*clock);
            let demote_at = timing.demote_at(proof).instant(&*clock);
            tokio::select! {
                biased;
                _ = sleep_until(demote_at.into()) => {
                    warn!(term = term.0, since_proof_ms = clock.now().boot_ns.saturating_sub(proof.boot_ns) / 1_000_000, "no proof of leadership before the deadline; demoting before the session can expire");
                    self.demote(term, DemoteReason::ConnectionLost);
                    return Err(Exit::SessionLost);
                }
                command = self.commands.recv() => {
                    drop(refresh);
                    return match command {
                        Some(Command::Resign { rejoin_after, done }) => {
                            self.demote(term, DemoteReason::Resigned);
                            self.delete_own(session, node, true).await?;
                            let _ = done.send(());
                            Ok(Rejoin::After(rejoin_after))
                        }
                        // Delete the node first: the successor waits on that
                        // write only. (Closing the session would delete it
                        // too, but a close is a slower transaction.)
                        Some(Command::Shutdown { done }) => {
                            self.demote(term, DemoteReason::Shutdown);
                            let _ = self.delete_own(session, node, true).await;
                            Err(Exit::Shutdown(Some(done)))
                        }
                        None => {
                            self.demote(term, DemoteReason::Shutdown);
                            Err(Exit::Shutdown(None))
                        }
                    };
                }
                state = session.link.changed() => match state {
                    zk::SessionState::Disconnected => {
                        refresh = None;
                        if !suspended {
                            suspended = true;
                            self.suspend(term, "connection lost");
                        }
                    }
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        if own_watch.is_none() {
                            own_watch = match watch_own(&session.client, &node.path).await {
                                Ok(Some(watch)) => Some(watch),
                                Ok(None) => return self.lost_node(session, node).await,
                                Err(_) => None,
                            };
                        }
                        // Same session, maybe another server: renew right away.
                        if refresh.is_none() {
                            refresh = Some(start_renewal(&session.client, &self.config.access.acl, self.shared.clock.clone(), node, &record, create_lease));
                        }
                    }
                    zk::SessionState::Expired => {
                        self.demote(term, DemoteReason::SessionExpired);
                        return Err(Exit::SessionLost);
                    }
                    _ => {
                        self.demote(term, DemoteReason::ConnectionLost);
                        return Err(Exit::SessionLost);
                    }
                },
                event = async { own_watch.as_mut().unwrap().await }, if own_watch.is_some() => match event.event_type {
                    zk::EventType::NodeDeleted => return self.lost_node(session, node).await,
                    // Session events are handled by the state watcher above.
                    zk::EventType::Session => own_watch = Some(Box::pin(std::future::pending())),
                    _ => {
                        own_watch = match watch_own(&session.client, &node.path).await {
                            Ok(Some(watch)) => Some(watch),
                            Ok(None) => return self.lost_node(session, node).await,
                            Err(_) => None,
                        };
                    }
                },
                result = async { refresh.as_mut().unwrap().await }, if refresh.is_some() => {
                    refresh = None;
                    match result {
                        Ok(Renewal::Renewed(at)) => {
                            create_lease = false;
                            proof = at;
                            next_refresh = proof.after(timing.refresh).instant(&*clock);
                            if suspended {
                                suspended = false;
                                self.resume(session, node, proof);
                            } else {
                                self.grant(session, node, proof);
                            }
                        }
                        Ok(Renewal::Retry { create }) => {
                            create_lease = create;
                            refresh = Some(start_renewal(&session.client, &self.config.access.acl, self.shared.clock.clone(), node, &record, create_lease));
                        }
                        Ok(Renewal::NodeGone) => return self.lost_node(session, node).await,
                        Err(zk::Error::SessionExpired) => {
                            self.demote(term, DemoteReason::SessionExpired);
                            return Err(Exit::SessionLost);
                        }
                        Err(err) => {
                            // Connection loss: the state watcher starts the
                            // next renewal on reconnect; otherwise retry soon.
                            debug!(error = %err, "lease renewal failed");
                            if !suspended && err == zk::Error::ConnectionLoss {
                                suspended = true;
                                self.suspend(term, "connection lost");
                            }
                            next_refresh = Instant::now() + timing.refresh.min(Duration::from_millis(100));
                        }
                    }
                }
                _ = sleep_until(lease_end.into()), if !suspended => {
                    suspended = true;
                    self.suspend(term, "lease ran out without a fresh proof");
                }
                _ = tokio::time::sleep(clock_check) => {}
                _ = sleep_until(next_refresh.into()), if refresh.is_none() => {
                    refresh = Some(start_renewal(&session.client, &self.config.access.acl, self.shared.clock.clone(), node, &record, create_lease));
                }
            }
        }
    }

    /// Our node was deleted under us while we led (an operator, or a
    /// takeover): stand down, and only then remove our lease node. Until it
    /// is gone the next in line holds back, since a lease node without its
    /// election node means a leader that may still be working.
    async fn lost_node(&mut self, session: &mut Session, node: &OwnNode) -> Result<Rejoin, Exit> {
        self.demote(node.term, DemoteReason::NodeDeleted);
        self.delete_lease(session, node).await?;
        Ok(own_node_gone(node))
    }

    /// Deletes our lease node (if any), riding out connection loss for as
    /// long as the session could still be alive.
    pub(super) async fn delete_lease(&mut self, session: &mut Session, node: &OwnNode) -> Result<(), Exit> {
        let give_up = Instant::now() + session.timing.session_deadline();
        loop {
            match session.client.delete(&node.lease_path(), None).await {
                Ok(()) | Err(zk::Error::NoNode) => return Ok(()),
                Err(zk::Error::ConnectionLoss) if Instant::now() < give_up => {
                    match tokio::time::timeout_at(give_up.into(), self.await_connected(session)).await {
                        Ok(result) => result?,
                        Err(_) => return Err(Exit::SessionLost),
                    }
                }
                // The session is gone (or must go), and the lease node with it.
                Err(_) => return Err(Exit::SessionLost),
            }
        }
    }
}

/// How a lease renewal went.
enum Renewal {
    /// Renewed: the proof is when it was sent.
    Renewed(Stamp),
    /// Our election node is gone.
    NodeGone,
    /// The lease node was missing (renew by creating it) or already there
    /// (renew by writing it): try again the other way.
    Retry { create: bool },
}

type RenewalFuture = Pin<Box<dyn Future<Output = Result<Renewal, zk::Error>> + Send>>;

/// Renews the lease: one transaction that checks our election node exists
/// and writes our lease node (creating it at the first renewal). The
/// ensemble accepts it only from a live session; it bumps the lease node's
/// version, which tells the next in line.
fn start_renewal(
    client: &zk::Client,
    acl: &NodeAcl,
    clock: Arc<dyn Clock>,
    node: &OwnNode,
    record: &[u8],
    create: bool,
) -> RenewalFuture {
    let (client, acl) = (client.clone(), acl.clone());
    let (own, lease, record) = (node.path.clone(), node.lease_path(), record.to_vec());
    Box::pin(async move {
        let at = clock.now();
        let mut multi = client.new_multi_writer();
        multi.add_check_version(&own, -1)?;
        if create {
            multi.add_create(&lease, &record, &acl.ephemeral())?;
        } else {
            multi.add_set_data(&lease, &record, None)?;
        }
        match multi.commit().await {
            Ok(_) => Ok(Renewal::Renewed(at)),
            Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => Ok(Renewal::NodeGone),
            Err(zk::MultiWriteError::OperationFailed { source: zk::Error::NoNode, .. }) => {
                Ok(Renewal::Retry { create: true })
            }
            Err(zk::MultiWriteError::OperationFailed { source: zk::Error::NodeExists, .. }) => {
                Ok(Renewal::Retry { create: false })
            }
            Err(zk::MultiWriteError::OperationFailed { source, .. }) => Err(source),
            Err(zk::MultiWriteError::RequestFailed { source }) => Err(source),
        }
    })
}

/// What our lease node holds while we lead under `timing`.
fn lease_record(node: &OwnNode, timing: &Timing) -> Vec<u8> {
    LeaseRecord {
        node: node.name.clone(),
        deadline_ms: timing.deadline.as_millis() as u64,
        refresh_ms: timing.refresh.as_millis() as u64,
    }
    .to_bytes()
}
