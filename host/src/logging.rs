//! Log output: human-readable text, or one JSON object per line.
//!
//! Every leadership transition is one event with an `event` field
//! (`joined`, `elected`, `suspended`, `resumed`, `demoted`, `plugin_failed`,
//! `reloaded`, ...), the participant `id`, the `term` where known, the
//! `reason` where there is one, and `mono_ns`, the machine's monotonic clock,
//! so that events of different processes on one machine can be ordered.
//! Plugin output comes out as `event = "plugin_log"`.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-11-25T01:02:03.456Z  INFO elected term=42 id=edge-1`
    #[default]
    Text,
    /// `{"timestamp":"…","level":"INFO","event":"elected","term":42,…}`
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

/// Installs the global subscriber, writing to stderr. `level` is an
/// `EnvFilter` directive such as `info` or `zkrun=debug`; `ZKRUN_LOG`
/// overrides it.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let directive = std::env::var("ZKRUN_LOG").unwrap_or_else(|_| level.to_string());
    // The ZooKeeper client logs every reconnection at info; zkrun reports
    // what matters about them itself.
    let filter = EnvFilter::try_new(format!("zookeeper_client=warn,{directive}"))
        .map_err(|e| format!("bad log level {directive:?}: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.with_target(false).with_ansi(colour()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(false)
            .try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

/// Colour only on a terminal, and never with `NO_COLOR` set (to anything
/// but the empty string, as <https://no-color.org> asks).
fn colour() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal() && !no_color
}
