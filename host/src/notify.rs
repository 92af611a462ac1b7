//! systemd's notify protocol (`Type=notify`): `READY=1` once this
//! participant has joined the election, `WATCHDOG=1` each time the
//! supervisor loop goes round (so systemd restarts a stuck loop), and a
//! `STATUS=` line for `systemctl status`. Outside systemd (no
//! `$NOTIFY_SOCKET`) every call does nothing.

use sd_notify::NotifyState;
use tracing::debug;

use crate::election::ElectionState;

/// Talks to the service manager, if there is one.
pub struct Notifier {
    /// Whether systemd asked for watchdog pings (`WatchdogSec=`).
    watchdog: bool,
    ready: bool,
    status: String,
}

impl Notifier {
    /// Reads what the service manager asked for from the environment.
    pub fn from_env() -> Notifier {
        let mut usec = 0;
        Notifier {
            watchdog: sd_notify::watchdog_enabled(false, &mut usec),
            ready: false,
            status: String::new(),
        }
    }

    /// `READY=1`, the first time only.
    pub fn ready(&mut self) {
        if !std::mem::replace(&mut self.ready, true) {
            send(&[NotifyState::Ready]);
        }
    }

    /// `WATCHDOG=1`, if systemd watches.
    pub fn alive(&self) {
        if self.watchdog {
            send(&[NotifyState::Watchdog]);
        }
    }

    /// `STATUS=` for `state`, when it changed.
    pub fn state(&mut self, state: &ElectionState) {
        let status = status_line(state);
        if status != self.status {
            send(&[NotifyState::Status(&status)]);
            self.status = status;
        }
    }

    /// `STOPPING=1`: shutting down (handing over).
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("shutting down: handing over")]);
    }
}

/// The `STATUS=` line of a state, as `systemctl status` shows it.
pub fn status_line(state: &ElectionState) -> String {
    match state {
        ElectionState::Joining => "joining the election".into(),
        ElectionState::Follower { ahead, position } => format!("following {ahead} (position {position})"),
        ElectionState::Leader { term } => format!("leading term {term}"),
        ElectionState::Suspended { term } => {
            format!("suspended (term {term}): leadership in doubt, job paused")
        }
        ElectionState::Stopped => "out of the election".into(),
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::Term;

    #[test]
    fn status_lines_name_the_state() {
        assert_eq!(status_line(&ElectionState::Leader { term: Term(42) }), "leading term 42");
        assert!(status_line(&ElectionState::Suspended { term: Term(42) }).starts_with("suspended"));
        let following = ElectionState::Follower { ahead: "_c_a-latch-0000000001".into(), position: 1 };
        assert_eq!(status_line(&following), "following _c_a-latch-0000000001 (position 1)");
    }
}
