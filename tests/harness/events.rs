//! zkrun's JSON log lines, as a test reads them.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One log line of a zkrun process.
#[derive(Clone, Debug)]
pub struct Event {
    /// The parsed line (`Value::Null` if it was not JSON).
    pub json: Value,
    /// The line as written.
    pub raw: String,
    /// When the test read it.
    pub seen: Instant,
}

impl Event {
    /// The `event` field: `elected`, `plugin_log`, ...
    pub fn kind(&self) -> &str {
        self.json["event"].as_str().unwrap_or("")
    }

    /// The `term` field, if any.
    pub fn term(&self) -> Option<u64> {
        self.json["term"].as_u64()
    }

    /// The `message` field.
    pub fn message(&self) -> &str {
        self.json["message"].as_str().unwrap_or("")
    }

    /// The `reason` field.
    pub fn reason(&self) -> &str {
        self.json["reason"].as_str().unwrap_or("")
    }

    /// The `mono_ns` field: CLOCK_MONOTONIC when zkrun logged it.
    pub fn mono_ns(&self) -> Option<u64> {
        self.json["mono_ns"].as_u64()
    }

    /// A string field.
    pub fn str(&self, field: &str) -> &str {
        self.json[field].as_str().unwrap_or("")
    }

    /// Whether this is a heartbeat tick (`I am Leader: term T ...`).
    pub fn is_heartbeat_tick(&self) -> bool {
        self.kind() == "plugin_log" && self.message().starts_with("I am Leader")
    }
}

/// Every line a process wrote so far; readers can wait for new ones.
#[derive(Clone, Default)]
pub struct EventLog {
    inner: Arc<(Mutex<Vec<Event>>, Condvar)>,
}

impl EventLog {
    /// Adds a line.
    pub fn push(&self, line: String) {
        let json = serde_json::from_str(&line).unwrap_or(Value::Null);
        let (events, added) = &*self.inner;
        events.lock().unwrap().push(Event { json, raw: line, seen: Instant::now() });
        added.notify_all();
    }

    /// A copy of every event so far.
    pub fn all(&self) -> Vec<Event> {
        self.inner.0.lock().unwrap().clone()
    }

    /// Waits for an event matching `pred` (also among the earlier ones).
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        self.wait_from(0, timeout, pred)
    }

    /// Waits for an event matching `pred` at index `from` or later.
    pub fn wait_from(&self, from: usize, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let (events, added) = &*self.inner;
        let mut guard = events.lock().unwrap();
        loop {
            if let Some(found) = guard.iter().skip(from).find(|e| pred(e)) {
                return Some(found.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            guard = added.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    /// How many events there are.
    pub fn len(&self) -> usize {
        self.inner.0.lock().unwrap().len()
    }

    /// Whether nothing was logged yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
