//! What zkrun tells Prometheus: one registry, fed by the supervisor (the
//! events it acts on, the hooks it runs, the plugin it loads) and, when
//! scraped, read from the election (state, lease, connection).
//!
//! Values that the election already keeps (whether the lease is confirmed,
//! its term, the connection) are read at scrape time rather than copied on
//! every change, so a scrape can never show a leader whose lease has lapsed
//! but whose `Suspended` event is still on its way.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::clock::{Clock, SystemClock};
use crate::election::{Election, ElectionState, LeadershipEvent};
use crate::plugin::Hook;
use crate::state::{Entry, StateError, StateFuture, StateStore};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabel {
    hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    name: String,
    sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The states of [`ElectionState`], as `zkrun_state{state=...}` names them.
const STATES: [&str; 5] = ["joining", "follower", "leader", "suspended", "stopped"];

/// The metrics of one zkrun process.
pub struct Metrics {
    registry: Registry,
    is_leader: Gauge,
    term: Gauge,
    lease_remaining: Gauge<f64, AtomicU64>,
    lease_length: Gauge<f64, AtomicU64>,
    state: Family<StateLabel, Gauge>,
    transitions: Family<EventLabel, Counter>,
    hook_duration: Family<HookLabel, Histogram>,
    plugin_failures: Family<KindLabel, Counter>,
    zk_connected: Gauge,
    clock_rate: Gauge<f64, AtomicU64>,
    zk_reconnects: Counter,
    plugin_info: Family<PluginLabel, Gauge>,
    state_writes: Family<OutcomeLabel, Counter>,
    slot_runs: Family<OutcomeLabel, Counter>,
    slot_lag: Gauge<f64, AtomicU64>,
    slot_next_due: Gauge,
    rollout_reverts: Counter,
    /// Serialises scrapes: the reconnect counter follows the election's by
    /// the difference since the last scrape.
    scrape: Mutex<u64>,
    /// When the supervisor loop last went round (see [`Metrics::beat`]).
    beat: Mutex<Instant>,
    /// How long the loop may be busy before it counts as stuck.
    liveness: Duration,
}

impl Metrics {
    /// An empty registry; the supervisor loop counts as stuck once it has
    /// not gone round for `liveness`.
    pub fn new(liveness: Duration) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("zkrun");
        let is_leader = Gauge::default();
        registry.register(
            "is_leader",
            "1 while this participant leads with a confirmed lease",
            is_leader.clone(),
        );
        let term = Gauge::default();
        registry.register(
            "term",
            "The term (fencing token) this participant holds, 0 while none",
            term.clone(),
        );
        let lease_remaining = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "lease_remaining_seconds",
            "Time left on the leader's lease, 0 when not leading",
            lease_remaining.clone(),
        );
        let lease_length = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "lease_seconds",
            "How long one renewal lets a leader work (half the lease period), 0 before a session",
            lease_length.clone(),
        );
        let state = Family::<StateLabel, Gauge>::default();
        registry.register("state", "1 for the participant's current election state", state.clone());
        let transitions = Family::<EventLabel, Counter>::default();
        registry.register("leadership_transitions", "Leadership events, by event", transitions.clone());
        let hook_duration = Family::<HookLabel, Histogram>::new_with_constructor(hook_histogram as fn() -> _);
        registry.register(
            "hook_duration_seconds",
            "How long plugin hooks ran, by hook",
            hook_duration.clone(),
        );
        let plugin_failures = Family::<KindLabel, Counter>::default();
        registry.register("plugin_failures", "Plugin failures, by kind", plugin_failures.clone());
        let zk_connected = Gauge::default();
        registry.register(
            "zk_connected",
            "1 while the session is connected to a server",
            zk_connected.clone(),
        );
        let clock_rate = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "clock_rate_ratio",
            "How many of our seconds one second of the leader's clock takes, as measured by the next in line (0 until measured)",
            clock_rate.clone(),
        );
        let zk_reconnects = Counter::default();
        registry.register(
            "zk_reconnects",
            "Connections re-established after a loss (same session or a new one)",
            zk_reconnects.clone(),
        );
        let plugin_info = Family::<PluginLabel, Gauge>::default();
        registry.register("plugin_info", "The plugin running on this host (always 1)", plugin_info.clone());
        let state_writes = Family::<OutcomeLabel, Counter>::default();
        registry.register("state_writes", "Fenced state writes, by outcome", state_writes.clone());
        let slot_runs = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "slot_runs",
            "Schedule slots this host ran or recorded, by outcome (ok, error, interrupted, missed, skipped)",
            slot_runs.clone(),
        );
        let slot_lag = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "slot_lag_seconds",
            "How late the last slot run started after its scheduled instant",
            slot_lag.clone(),
        );
        let slot_next_due = Gauge::default();
        registry.register(
            "slot_next_due_timestamp_seconds",
            "When the next slot of the schedule is due (Unix time), while leading",
            slot_next_due.clone(),
        );
        let rollout_reverts = Counter::default();
        registry.register(
            "rollout_reverts",
            "Published plugin versions this host reverted after they failed on it as leader",
            rollout_reverts.clone(),
        );
        Arc::new(Metrics {
            rollout_reverts,
            registry,
            is_leader,
            term,
            lease_remaining,
            lease_length,
            state,
            transitions,
            hook_duration,
            plugin_failures,
            zk_connected,
            clock_rate,
            zk_reconnects,
            plugin_info,
            state_writes,
            slot_runs,
            slot_lag,
            slot_next_due,
            scrape: Mutex::new(0),
            beat: Mutex::new(Instant::now()),
            liveness,
        })
    }

    /// Counts a leadership event the supervisor acts on.
    pub fn leadership(&self, event: &LeadershipEvent) {
        let event = match event {
            LeadershipEvent::Joined { .. } => "joined",
            LeadershipEvent::Elected { .. } => "elected",
            LeadershipEvent::Suspended { .. } => "suspended",
            LeadershipEvent::Resumed { .. } => "resumed",
            LeadershipEvent::Demoted { .. } => "demoted",
        };
        self.transitions.get_or_create(&EventLabel { event }).inc();
    }

    /// Records a hook that finished (however it ended) after `took`.
    pub fn hook_finished(&self, hook: Hook, took: Duration) {
        self.hook_duration.get_or_create(&HookLabel { hook: hook.to_string() }).observe(took.as_secs_f64());
    }

    /// Counts a plugin failure of `kind` (`trap`, `timeout`, ...).
    pub fn plugin_failed(&self, kind: &'static str) {
        self.plugin_failures.get_or_create(&KindLabel { kind }).inc();
    }

    /// Shows which plugin runs now (at start and after every reload). The
    /// name comes from the plugin's file: its label value is escaped, as
    /// the encoder writes label values as they are.
    pub fn plugin_loaded(&self, name: &str, sha256: &str) {
        self.plugin_info.clear();
        let label =
            PluginLabel { name: crate::text::label_value(name), sha256: crate::text::label_value(sha256) };
        self.plugin_info.get_or_create(&label).set(1);
    }

    /// Counts a slot this host ran or recorded, by its outcome.
    pub fn slot_outcome(&self, outcome: &'static str) {
        self.slot_runs.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// How late the last slot run started, and when the next is due.
    pub fn slot_times(&self, lag: Option<Duration>, next_due_unix: Option<i64>) {
        if let Some(lag) = lag {
            self.slot_lag.set(lag.as_secs_f64());
        }
        if let Some(next) = next_due_unix {
            self.slot_next_due.set(next);
        }
    }

    /// This host reverted a published version (see `rollout`).
    pub fn rollout_reverted(&self) {
        self.rollout_reverts.inc();
    }

    /// The supervisor loop went round: it is responsive.
    pub fn beat(&self) {
        *self.beat.lock().unwrap() = Instant::now();
    }

    /// Whether the supervisor loop went round within the liveness bound.
    pub fn healthy(&self) -> bool {
        self.beat.lock().unwrap().elapsed() < self.liveness
    }

    /// The registry as OpenMetrics text, with what the election holds
    /// right now ([`crate::exposition`] turns it into Prometheus text).
    pub fn render(&self, election: &Election) -> String {
        let mut reconnects_seen = self.scrape.lock().unwrap();
        let current = election.state();
        let (leading, term) = match current {
            ElectionState::Leader { term } | ElectionState::Suspended { term } => {
                (election.confirmed().is_some_and(|lease| lease.term == term), term.0)
            }
            _ => (false, 0),
        };
        let remaining =
            election.confirmed().map_or(Duration::ZERO, |lease| lease.expires.remaining(SystemClock.now()));
        self.is_leader.set(leading as i64);
        self.term.set(term as i64);
        self.lease_remaining.set(remaining.as_secs_f64());
        // Alerts compare the time left with this: a healthy leader renews
        // with at least two thirds of it left (docs/election.md).
        self.lease_length.set(election.timing().map_or(0.0, |t| t.lease.as_secs_f64()));
        let name = state_name(&current);
        for state in STATES {
            self.state.get_or_create(&StateLabel { state }).set((state == name) as i64);
        }
        self.zk_connected.set(election.connected() as i64);
        self.clock_rate.set(election.clock_rate_ratio().unwrap_or(0.0));
        let stats = election.stats();
        let reconnects = stats.reconnects + stats.sessions.saturating_sub(1);
        self.zk_reconnects.inc_by(reconnects.saturating_sub(*reconnects_seen));
        *reconnects_seen = reconnects.max(*reconnects_seen);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }

    fn write_outcome(&self, outcome: &'static str) {
        self.state_writes.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

fn hook_histogram() -> Histogram {
    // 1 ms to about 4.4 min: ticks are short, on-elected may run for seconds.
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

/// The `state` label of an election state.
pub fn state_name(state: &ElectionState) -> &'static str {
    match state {
        ElectionState::Joining => "joining",
        ElectionState::Follower { .. } => "follower",
        ElectionState::Leader { .. } => "leader",
        ElectionState::Suspended { .. } => "suspended",
        ElectionState::Stopped => "stopped",
    }
}

/// A term's state store that counts its writes by outcome.
pub struct CountedStore {
    inner: Arc<dyn StateStore>,
    metrics: Arc<Metrics>,
}

impl CountedStore {
    /// Counts the writes made through `inner`.
    pub fn wrap(inner: Arc<dyn StateStore>, metrics: Arc<Metrics>) -> Arc<dyn StateStore> {
        Arc::new(CountedStore { inner, metrics })
    }

    fn counted<'a, T: Send + 'a>(&'a self, write: StateFuture<'a, T>) -> StateFuture<'a, T> {
        Box::pin(async move {
            let result = write.await;
            self.metrics.write_outcome(match &result {
                Ok(_) => "ok",
                Err(StateError::NotLeader) => "not-leader",
                Err(StateError::Conflict) => "conflict",
                Err(StateError::QuotaExceeded(_)) => "quota-exceeded",
                Err(StateError::Unavailable(_)) => "unavailable",
                Err(StateError::TooLarge(_) | StateError::BadKey(_)) => "rejected",
            });
            result
        })
    }
}

impl StateStore for CountedStore {
    fn get<'a>(&'a self, key: &'a str) -> StateFuture<'a, Option<Entry>> {
        self.inner.get(key)
    }

    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>) -> StateFuture<'a, u32> {
        self.counted(self.inner.put(key, value))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StateFuture<'a, bool> {
        self.counted(self.inner.delete(key))
    }

    fn compare_and_set<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u32>,
        value: Vec<u8>,
    ) -> StateFuture<'a, u32> {
        self.counted(self.inner.compare_and_set(key, expected, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_what_operators_alert_on() {
        let metrics = Metrics::new(Duration::from_secs(10));
        metrics.plugin_loaded("heartbeat", "ab12");
        metrics.hook_finished(Hook::Tick, Duration::from_millis(3));
        metrics.plugin_failed("trap");
        metrics.write_outcome("ok");
        metrics.leadership(&LeadershipEvent::Joined { node: "n".into(), sequence: 1, session: 2 });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        for line in [
            "zkrun_plugin_info{name=\"heartbeat\",sha256=\"ab12\"} 1",
            "zkrun_plugin_failures_total{kind=\"trap\"} 1",
            "zkrun_state_writes_total{outcome=\"ok\"} 1",
            "zkrun_leadership_transitions_total{event=\"joined\"} 1",
            "zkrun_hook_duration_seconds_count{hook=\"tick\"} 1",
            "zkrun_is_leader 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(metrics.healthy());
    }
}
