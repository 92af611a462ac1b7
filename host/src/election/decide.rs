//! Whether this participant may lead now: the one rule, for every path.
//!
//! Every way to the lead (a full look behind a `sync`, a plain read after a
//! notification, the warm-proof shortcut after the leader's departure was
//! notified, a takeover of a silent leader) asks [`decide`] over what the
//! participant knows, and does what it answers. A path may skip a read only
//! when the fact the read would give is already known; in particular, any
//! lease node of another participant in the view forbids leading, whoever
//! asks. The model check (`tests/suite/model.rs`) drives the same function.
//!
//! What the view is made of:
//! - the children of the election path from one look: participant nodes
//!   (`…latch-<seq>`), leader lease nodes (`zkrun-lease-<seq>`) and standby
//!   lease nodes (`zkrun-standby-<seq>`, kept by the next in line);
//! - for the shortcut, what notifications said since that look: the node
//!   ahead and its lease node are gone ([`Basis::Warm`]).
//!
//! A lease node of either kind is the mark of a participant that may be
//! working: a zkrun participant never leads without one, and removes it
//! only after it stopped. So every lease node but our own stands in our
//! way, with two exceptions: the departed leader's lease node whose
//! deletion was notified, and a *standby* lease node of a participant
//! present in the view behind us, which never leads while our node exists.

use super::node;

/// What the participant's view of the election rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis<'a> {
    /// The children were read just now (behind a `sync`, or after the
    /// notification that made us look).
    Fresh,
    /// The children are those of the last look; since then, notifications
    /// on the proof's connection said that `departed` (the node just ahead)
    /// and its lease node are gone.
    Warm(Warm<'a>),
}

/// What the shortcut rests on besides the last look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Warm<'a> {
    /// The node ahead whose departure, and its lease node's, was notified
    /// (or which we deleted ourselves, taking over).
    pub departed: &'a str,
    /// The connection generation the warm proof was taken on.
    pub proof_generation: u64,
    /// The connection generation now: notifications may have been lost or
    /// reordered across a change of connection.
    pub generation: u64,
    /// Whether the warm proof leaves more than a refresh period of lease.
    pub proof_fresh: bool,
    /// Whether no notification about our own node has arrived: the
    /// ensemble notifies one connection in the order it applied changes,
    /// so our node outlived the departed one.
    pub own_quiet: bool,
}

/// What the participant knows when it asks whether it may lead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knowledge<'a> {
    /// Our election node's name.
    pub own: &'a str,
    /// The children of the election path in the view.
    pub children: &'a [String],
    /// What the view rests on.
    pub basis: Basis<'a>,
}

/// What to do, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Lead now: first in line, and no other leader may still be working.
    Lead,
    /// First in line, but the lease node `lease` of another participant
    /// stands: wait until it goes or its holder's deadline has passed.
    AwaitStandDown {
        /// The standing lease node's name.
        lease: String,
    },
    /// In line behind `ahead`.
    Follow {
        /// The node just ahead.
        ahead: String,
        /// Our place in line (1 is next in line).
        position: usize,
    },
    /// Our node is not in a fresh view: it is gone, join again.
    Rejoin,
    /// The remembered view cannot decide: look again (sync and read).
    Look {
        /// Why the shortcut was refused, for the log.
        why: &'static str,
    },
}

impl Decision {
    /// A short name for the log (`lead`, `await-stand-down`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Lead => "lead",
            Decision::AwaitStandDown { .. } => "await-stand-down",
            Decision::Follow { .. } => "follow",
            Decision::Rejoin => "rejoin",
            Decision::Look { .. } => "look",
        }
    }
}

/// The one rule: may the participant that knows `k` lead now?
pub fn decide(k: &Knowledge<'_>) -> Decision {
    let departed = match k.basis {
        Basis::Fresh => None,
        Basis::Warm(warm) => {
            if warm.proof_generation != warm.generation {
                return Decision::Look { why: "the connection changed since the warm proof" };
            }
            if !warm.proof_fresh {
                return Decision::Look { why: "the warm proof is nearly spent" };
            }
            if !warm.own_quiet {
                return Decision::Look { why: "our own node changed" };
            }
            Some(warm.departed)
        }
    };
    let participants: Vec<(i64, &str)> =
        node::in_order(k.children).into_iter().filter(|(_, name)| Some(*name) != departed).collect();
    let Some(position) = participants.iter().position(|(_, name)| *name == k.own) else {
        return match departed {
            None => Decision::Rejoin,
            Some(_) => Decision::Look { why: "our node is not in the last look" },
        };
    };
    if position > 0 {
        return match departed {
            None => Decision::Follow { ahead: participants[position - 1].1.to_string(), position },
            Some(_) => Decision::Look { why: "another participant was ahead in the last look" },
        };
    }
    let own_sequence = participants[0].0;
    let departed_lease = departed.and_then(node::lease_name);
    let own_marks = [node::lease_name(k.own), node::standby_name(k.own)];
    let standing = k.children.iter().find(|child| match node::holder(child) {
        None => false,
        Some(_) if own_marks.iter().any(|own| own.as_deref() == Some(child.as_str())) => false,
        Some(_) if departed_lease.as_deref() == Some(child.as_str()) => false,
        Some((node::LeaseKind::Standby, sequence)) => !is_behind(sequence, own_sequence, &participants),
        Some((node::LeaseKind::Lease, _)) => true,
    });
    match (standing, departed) {
        (None, _) => Decision::Lead,
        (Some(lease), None) => Decision::AwaitStandDown { lease: lease.clone() },
        (Some(_), Some(_)) => {
            Decision::Look { why: "another participant's lease node stood in the last look" }
        }
    }
}

/// Whether the participant with `sequence` is in the view, behind us.
fn is_behind(sequence: i64, own_sequence: i64, participants: &[(i64, &str)]) -> bool {
    sequence > own_sequence && participants.iter().any(|(s, _)| *s == sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const A: &str = "_c_a-latch-0000000001";
    const B: &str = "_c_b-latch-0000000002";
    const C: &str = "_c_c-latch-0000000003";
    const LEASE_A: &str = "zkrun-lease-0000000001";
    const LEASE_C: &str = "zkrun-lease-0000000003";
    const STANDBY_A: &str = "zkrun-standby-0000000001";
    const STANDBY_B: &str = "zkrun-standby-0000000002";
    const STANDBY_C: &str = "zkrun-standby-0000000003";

    fn warm(departed: &str) -> Basis<'_> {
        Basis::Warm(Warm { departed, proof_generation: 3, generation: 3, proof_fresh: true, own_quiet: true })
    }

    #[test]
    fn first_in_line_with_no_other_lease_leads() {
        let children = names(&[C, "state", LEASE_C]);
        assert_eq!(decide(&Knowledge { own: C, children: &children, basis: Basis::Fresh }), Decision::Lead);
    }

    #[test]
    fn a_lease_node_without_its_participant_stands() {
        let children = names(&[B, C, LEASE_A]);
        let d = decide(&Knowledge { own: B, children: &children, basis: Basis::Fresh });
        assert_eq!(d, Decision::AwaitStandDown { lease: LEASE_A.into() });
    }

    #[test]
    fn followers_follow_the_node_just_ahead() {
        let children = names(&[A, B, C, LEASE_A]);
        let d = decide(&Knowledge { own: C, children: &children, basis: Basis::Fresh });
        assert_eq!(d, Decision::Follow { ahead: B.into(), position: 2 });
        let d = decide(&Knowledge { own: "_c_d-latch-0000000009", children: &children, basis: Basis::Fresh });
        assert_eq!(d, Decision::Rejoin);
    }

    #[test]
    fn a_standby_lease_behind_us_does_not_stand() {
        // B leads-to-be; C, next in line, keeps a standby lease.
        let children = names(&[B, C, STANDBY_B, STANDBY_C]);
        assert_eq!(decide(&Knowledge { own: B, children: &children, basis: Basis::Fresh }), Decision::Lead);
        // A standby whose participant is gone stands: it may have led on it.
        let children = names(&[B, STANDBY_C]);
        let d = decide(&Knowledge { own: B, children: &children, basis: Basis::Fresh });
        assert_eq!(d, Decision::AwaitStandDown { lease: STANDBY_C.into() });
        // So does a standby ahead of us, and a leader's lease anywhere.
        let children = names(&[B, C, STANDBY_A]);
        let d = decide(&Knowledge { own: B, children: &children, basis: Basis::Fresh });
        assert_eq!(d, Decision::AwaitStandDown { lease: STANDBY_A.into() });
        let children = names(&[B, C, LEASE_C]);
        let d = decide(&Knowledge { own: B, children: &children, basis: Basis::Fresh });
        assert_eq!(d, Decision::AwaitStandDown { lease: LEASE_C.into() });
    }

    #[test]
    fn the_departed_leaders_standby_is_not_known_gone() {
        // The notification said A's lease node went, not its standby: A may
        // have led on the standby before turning it into a lease.
        let children = names(&[A, B, STANDBY_A, STANDBY_B]);
        let d = decide(&Knowledge { own: B, children: &children, basis: warm(A) });
        assert!(matches!(d, Decision::Look { .. }), "{d:?}");
    }

    #[test]
    fn the_shortcut_leads_when_only_the_departed_leader_was_ahead() {
        let children = names(&[A, B, LEASE_A, STANDBY_B]);
        assert_eq!(decide(&Knowledge { own: B, children: &children, basis: warm(A) }), Decision::Lead);
    }

    /// The hole found in round 3: A's node was deleted by an operator while
    /// A still worked; B waited on A's lease node; C joined and looked
    /// (`[B, C, zkrun-lease-A]`); B left. C must not lead on its warm proof.
    #[test]
    fn the_shortcut_is_refused_while_another_lease_stood_in_the_last_look() {
        let children = names(&[B, C, LEASE_A]);
        let d = decide(&Knowledge { own: C, children: &children, basis: warm(B) });
        assert!(matches!(d, Decision::Look { .. }), "{d:?}");
        // The full read that follows finds the lease and waits on it.
        let now = names(&[C, LEASE_A]);
        let d = decide(&Knowledge { own: C, children: &now, basis: Basis::Fresh });
        assert_eq!(d, Decision::AwaitStandDown { lease: LEASE_A.into() });
    }

    #[test]
    fn the_shortcut_needs_its_connection_a_fresh_proof_and_a_quiet_own_node() {
        let children = names(&[A, B, LEASE_A]);
        let base =
            Warm { departed: A, proof_generation: 3, generation: 3, proof_fresh: true, own_quiet: true };
        for warm in [
            Warm { generation: 4, ..base },
            Warm { proof_fresh: false, ..base },
            Warm { own_quiet: false, ..base },
        ] {
            let d = decide(&Knowledge { own: B, children: &children, basis: Basis::Warm(warm) });
            assert!(matches!(d, Decision::Look { .. }), "{warm:?}: {d:?}");
        }
    }

    #[test]
    fn the_shortcut_is_refused_when_more_than_the_departed_was_ahead() {
        let children = names(&[A, B, C, LEASE_A]);
        let d = decide(&Knowledge { own: C, children: &children, basis: warm(B) });
        assert!(matches!(d, Decision::Look { .. }), "{d:?}");
    }
}
