//! What an election's nodes let others do: a warning, once per process,
//! when the election zkrun joins lets clients without credentials change
//! it (its nodes may predate zkrun's ACLs, or be open by choice).

use tracing::warn;
use zookeeper_client as zk;

use crate::zkconnect::{self, ZkAccess};

/// Warns if clients without credentials may change the election path or
/// its state directory (delete the leader's node, add participants,
/// rewrite fenced state). Returns whether it could look: if not, the
/// caller asks again at the next join.
pub(super) async fn warn_if_world_writable(client: &zk::Client, election: &str, access: &ZkAccess) -> bool {
    for path in [election.to_string(), format!("{election}/state")] {
        match client.get_acl(&path).await {
            Ok((acl, _)) if zkconnect::world_writable(&acl) => {
                warn!(
                    event = "election_world_writable",
                    path,
                    acl = %describe(&acl),
                    zk_access = %access.describe(),
                    "any client of the ensemble may change this election: delete the leader's node, join ahead of everyone, rewrite fenced state (use --zk-auth, and setAcl on nodes created without it)"
                );
                return true;
            }
            Ok(_) | Err(zk::Error::NoNode) => {}
            Err(_) => return false,
        }
    }
    true
}

/// `world:anyone:cdrwa`, as zkCli shows ACLs.
fn describe(acl: &[zk::Acl]) -> String {
    let letters = |p: zk::Permission| {
        [
            (zk::Permission::CREATE, 'c'),
            (zk::Permission::DELETE, 'd'),
            (zk::Permission::READ, 'r'),
            (zk::Permission::WRITE, 'w'),
            (zk::Permission::ADMIN, 'a'),
        ]
        .into_iter()
        .filter(|(one, _)| p.has(*one))
        .map(|(_, c)| c)
        .collect::<String>()
    };
    acl.iter()
        .map(|a| format!("{}:{}:{}", a.scheme(), a.id(), letters(a.permission())))
        .collect::<Vec<_>>()
        .join(",")
}
