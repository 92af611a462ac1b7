//! Joining: creating this join's election node, or finding it again after
//! an interrupted create, and clearing our leftovers of earlier joins.

use tracing::{debug, info};
use zookeeper_client as zk;

use super::{Exit, Machine, OwnNode, Session};
use crate::election::node::{self};
use crate::election::{Term, security};

/// How many earlier joins' prefixes are remembered. Their nodes outlive a
/// join by at most a session timeout, a few joins at most.
const EARLIER_JOINS: usize = 16;

impl Machine {
    /// Creates the election path and its parents if absent.
    async fn ensure_parent(&mut self, session: &mut Session) -> Result<(), Exit> {
        loop {
            match session.client.mkdir(&self.config.path, &self.config.access.acl.persistent()).await {
                Ok(()) => return Ok(()),
                Err(err) => self.recover(session, err).await?,
            }
        }
    }

    /// Creates this join's node, or finds it again after an interrupted
    /// create.
    ///
    /// Every join has a fresh protected prefix. A node with an earlier
    /// join's prefix (or this join's, but another session's `ephemeralOwner`)
    /// is a leftover of ours: it would vanish under us, so it is deleted
    /// rather than adopted. Only one node of ours ever survives.
    pub(super) async fn join(&mut self, session: &mut Session) -> Result<OwnNode, Exit> {
        let parent = self.config.path.clone();
        let data = session.data.clone();
        // The default is a fresh random prefix.
        let earlier = std::mem::take(&mut self.protection);
        self.earlier.push_back(earlier);
        if self.earlier.len() > EARLIER_JOINS {
            self.earlier.pop_front();
        }
        'attempt: loop {
            let children = match session.client.list_children(&parent).await {
                Ok(children) => {
                    if !self.acl_checked {
                        self.acl_checked =
                            security::warn_if_world_writable(&session.client, &parent, &self.config.access)
                                .await;
                    }
                    children
                }
                Err(zk::Error::NoNode) => {
                    self.ensure_parent(session).await?;
                    continue;
                }
                Err(err) => {
                    self.recover(session, err).await?;
                    continue;
                }
            };
            let mut kept: Option<OwnNode> = None;
            let ours = node::in_order(&children)
                .into_iter()
                .filter(|(_, name)| self.protection.owns(name) || self.earlier.iter().any(|p| p.owns(name)));
            let ours: Vec<(i64, String)> = ours.map(|(seq, name)| (seq, name.to_string())).collect();
            for (sequence, name) in ours {
                let path = format!("{parent}/{name}");
                match session.client.check_stat(&path).await {
                    Ok(Some(stat))
                        if stat.ephemeral_owner == session.id
                            && kept.is_none()
                            && self.protection.owns(&name) =>
                    {
                        debug!(node = %name, "found our node from an interrupted create");
                        kept = Some(OwnNode { name, path, sequence, term: Term(stat.czxid as u64) });
                    }
                    Ok(Some(stat)) => {
                        info!(node = %name, owner = format_args!("{:#x}", stat.ephemeral_owner), "deleting an election node left by an earlier session of ours, and its lease node");
                        // Its lease node goes too (after it): a lease node
                        // without its election node holds the next in line
                        // back until its deadline, and we do not lead on it.
                        let lease = format!(
                            "{parent}/{}",
                            node::lease_name(&name).expect("participant nodes have a sequence")
                        );
                        for doomed in [&path, &lease] {
                            match session.client.delete(doomed, None).await {
                                Ok(()) | Err(zk::Error::NoNode) => {}
                                Err(err) => {
                                    self.recover(session, err).await?;
                                    continue 'attempt;
                                }
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(err) => {
                        self.recover(session, err).await?;
                        continue 'attempt;
                    }
                }
            }
            if let Some(node) = kept {
                return Ok(node);
            }
            let prefix = format!("{parent}/{}", self.protection.create_name());
            match session.client.create(&prefix, &data, &self.config.access.acl.ephemeral_sequential()).await
            {
                Ok((stat, sequence)) => {
                    let name = format!("{}{sequence}", self.protection.create_name());
                    return Ok(OwnNode {
                        path: format!("{parent}/{name}"),
                        name,
                        sequence: sequence.into_i64(),
                        term: Term(stat.czxid as u64),
                    });
                }
                Err(zk::Error::NoNode) => self.ensure_parent(session).await?,
                // The create may have happened: the next attempt looks for it.
                Err(err) => self.recover(session, err).await?,
            }
        }
    }
}
