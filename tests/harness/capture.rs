//! Captures tracing events, to assert on what zkrun logs in-process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One captured event: its level and fields (the text under `message`).
#[derive(Clone, Debug)]
pub struct Record {
    /// The event's level.
    pub level: tracing::Level,
    /// Field values, as text.
    pub fields: BTreeMap<String, String>,
}

impl Record {
    /// A field's value, or "".
    pub fn get(&self, name: &str) -> &str {
        self.fields.get(name).map(String::as_str).unwrap_or("")
    }
}

/// The events captured so far.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<Record>>>);

impl Captured {
    /// Every event, in order.
    pub fn events(&self) -> Vec<Record> {
        self.0.lock().unwrap().clone()
    }

    /// The messages of `plugin_log` events, in order.
    pub fn plugin_lines(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|r| r.get("event") == "plugin_log")
            .map(|r| r.get("message").to_string())
            .collect()
    }

    /// Forgets what was captured.
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

struct Layer(Captured);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        (self.0).0.lock().unwrap().push(Record { level: *event.metadata().level(), fields });
    }
}

/// Captures the events of this thread until the guard is dropped. Use a
/// current-thread runtime so that everything logs on this thread.
pub fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(Layer(captured.clone()));
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, guard)
}
