//! The plugin's sandbox: WASI with nothing ambient, built up from explicit
//! grants, and output that goes to zkrun's log, capped, rate limited and
//! escaped so that a plugin can neither flood the log nor forge its lines.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{FsPerms, HostMonotonicClock, WasiCtx};

use super::bindings::Level;
use super::limits::Gate;

/// How much output one instance may produce, over `log()`, stdout and
/// stderr together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputLimits {
    /// Longest message or line kept, in bytes; the rest is cut off with a
    /// visible mark.
    pub max_line: usize,
    /// Lines per second, sustained (bursts up to one second's worth).
    pub lines_per_second: u32,
    /// Bytes per second, sustained (bursts up to one second's worth).
    pub bytes_per_second: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits { max_line: 8 * 1024, lines_per_second: 200, bytes_per_second: 256 * 1024 }
    }
}

/// How often at most a `plugin_output_dropped` event is logged.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(1);

/// What an operator explicitly lets a plugin reach. Nothing by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Host directories made visible to the plugin.
    pub dirs: Vec<DirGrant>,
    /// Environment variables the plugin sees.
    pub env: Vec<(String, String)>,
    /// Where the plugin may send HTTP requests (`--allow-http`); none when empty.
    pub http: Vec<super::egress::HttpPrefix>,
}

/// One host directory, visible to the plugin at `guest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it, e.g. `/data`.
    pub guest: String,
    /// Whether the plugin may only read it.
    pub read_only: bool,
}

/// Who is speaking, for the log lines a plugin produces.
#[derive(Clone, Debug)]
pub struct LogContext {
    /// The plugin's name (its file name without `.wasm`).
    pub plugin: Arc<str>,
    /// This participant's id.
    pub participant: Arc<str>,
    /// The term of the instance, if it serves one.
    pub term: Option<u64>,
}

/// Writes one line of plugin output to zkrun's log, control characters
/// escaped (a `\n` in a message must not start a line of its own).
pub fn emit(context: &LogContext, stream: &'static str, level: Level, message: &str) {
    let term = context.term;
    let (plugin, id) = (&*context.plugin, &*context.participant);
    let mono_ns = crate::clock::monotonic_ns();
    let message = escape_controls(message);
    macro_rules! at {
        ($level:ident) => {
            tracing::$level!(event = "plugin_log", plugin, id, term, stream, mono_ns, "{message}")
        };
    }
    match level {
        Level::Trace => at!(trace),
        Level::Debug => at!(debug),
        Level::Info => at!(info),
        Level::Warn => at!(warn),
        Level::Error => at!(error),
    }
}

/// `text` with every control character but tab escaped (`\n`, `\u{1b}`).
fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// Cuts `text` to at most `max` bytes (on a character boundary), marking the
/// cut with how much was left out.
fn truncate(text: &str, max: usize, also_cut: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max && also_cut == 0 {
        return text.into();
    }
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end + also_cut;
    format!("{}… [truncated {cut} bytes]", &text[..end]).into()
}

/// The output of one instance: every `log()` message and every line of
/// stdout and stderr goes through here, so the caps and rates hold across
/// all three.
#[derive(Clone)]
pub struct Output {
    context: LogContext,
    limits: OutputLimits,
    budget: Arc<Mutex<Budget>>,
}

/// Token buckets for lines and bytes, and what was dropped since the last
/// report (which names the instance, so the budget keeps its context).
struct Budget {
    context: LogContext,
    limits: OutputLimits,
    lines: f64,
    bytes: f64,
    refilled: Instant,
    dropped_lines: u64,
    dropped_bytes: u64,
    reported: Option<Instant>,
}

impl Output {
    /// The output of an instance speaking as `context`.
    pub fn new(context: LogContext, limits: OutputLimits) -> Output {
        let budget = Budget {
            context: context.clone(),
            limits,
            lines: f64::from(limits.lines_per_second),
            bytes: limits.bytes_per_second as f64,
            refilled: Instant::now(),
            dropped_lines: 0,
            dropped_bytes: 0,
            reported: None,
        };
        Output { context, limits, budget: Arc::new(Mutex::new(budget)) }
    }

    /// A `log()` call.
    pub fn log(&self, level: Level, message: &str) {
        self.line("log", level, message, 0);
    }

    /// One line of `stream`, of which `already_cut` bytes were cut off before
    /// it got here; dropped if over the rate.
    fn line(&self, stream: &'static str, level: Level, text: &str, already_cut: usize) {
        let text = truncate(text, self.limits.max_line, already_cut);
        if !self.admit(text.len()) {
            return;
        }
        emit(&self.context, stream, level, &text);
    }

    /// Takes one line of `len` bytes from the budget, or counts it dropped.
    fn admit(&self, len: usize) -> bool {
        let mut budget = self.budget.lock().unwrap();
        let now = Instant::now();
        let elapsed = now.duration_since(budget.refilled).as_secs_f64();
        budget.refilled = now;
        let (max_lines, max_bytes) =
            (f64::from(self.limits.lines_per_second), self.limits.bytes_per_second as f64);
        budget.lines = (budget.lines + elapsed * max_lines).min(max_lines);
        budget.bytes = (budget.bytes + elapsed * max_bytes).min(max_bytes);
        if budget.lines >= 1.0 && budget.bytes >= len as f64 {
            budget.lines -= 1.0;
            budget.bytes -= len as f64;
            return true;
        }
        budget.dropped_lines += 1;
        budget.dropped_bytes += len as u64;
        if budget.reported.is_none_or(|at| now.duration_since(at) >= DROP_REPORT_EVERY) {
            budget.reported = Some(now);
            budget.report();
        }
        false
    }
}

impl Budget {
    /// Logs what was dropped since the last report, if anything.
    fn report(&mut self) {
        if self.dropped_lines == 0 {
            return;
        }
        tracing::warn!(
            event = "plugin_output_dropped",
            plugin = &*self.context.plugin,
            id = &*self.context.participant,
            term = self.context.term,
            lines = self.dropped_lines,
            bytes = self.dropped_bytes,
            lines_per_second = self.limits.lines_per_second,
            bytes_per_second = self.limits.bytes_per_second,
            "plugin output over its rate limit was dropped"
        );
        self.dropped_lines = 0;
        self.dropped_bytes = 0;
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        // What was dropped since the last report is still worth saying.
        self.report();
    }
}

/// Builds the WASI context of one instance: no arguments, files, network,
/// environment or stdin unless granted; stdout and stderr go to the log.
pub fn wasi_context(grants: &Grants, gate: &Arc<Gate>, output: &Output) -> wasmtime::Result<WasiCtx> {
    let mut builder = WasiCtx::builder();
    builder
        .stdout(LineSink::new(gate.clone(), output.clone(), "stdout", Level::Info))
        .stderr(LineSink::new(gate.clone(), output.clone(), "stderr", Level::Warn))
        .monotonic_clock(MachineClock)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for (key, value) in &grants.env {
        builder.env(key, value);
    }
    for dir in &grants.dirs {
        let perms = if dir.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        builder.preopened_dir(&dir.host, &dir.guest, perms)?;
    }
    Ok(builder.build())
}

/// `wasi:clocks/monotonic-clock` backed by the machine's CLOCK_MONOTONIC, so
/// that times taken by plugins in different processes compare.
struct MachineClock;

impl HostMonotonicClock for MachineClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        crate::clock::monotonic_ns()
    }
}

/// Plugin stdout or stderr: complete lines become log events. Every handle
/// the guest opens shares one buffer. Writes made outside a running hook,
/// or after its deadline or permit, trap.
#[derive(Clone)]
struct LineSink {
    gate: Arc<Gate>,
    output: Output,
    stream: &'static str,
    level: Level,
    pending: Arc<Mutex<Pending>>,
}

/// The line being written, up to the line cap, and how much of it was cut.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    cut: usize,
}

impl LineSink {
    fn new(gate: Arc<Gate>, output: Output, stream: &'static str, level: Level) -> LineSink {
        LineSink { gate, output, stream, level, pending: Arc::default() }
    }

    fn accept(&self, bytes: &[u8]) -> Result<(), super::limits::Stop> {
        self.gate.check()?;
        let max = self.output.limits.max_line;
        let mut pending = self.pending.lock().unwrap();
        for &b in bytes {
            if b == b'\n' {
                self.flush_line(&mut pending);
            } else if pending.bytes.len() < max {
                pending.bytes.push(b);
            } else {
                pending.cut += 1;
            }
        }
        Ok(())
    }

    fn flush_line(&self, pending: &mut Pending) {
        let line = String::from_utf8_lossy(&pending.bytes);
        self.output.line(self.stream, self.level, line.trim_end_matches('\r'), pending.cut);
        pending.bytes.clear();
        pending.cut = 0;
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        // The last handle of an instance flushes a final unterminated line.
        if Arc::strong_count(&self.pending) == 1 {
            let mut pending = self.pending.lock().unwrap();
            if !pending.bytes.is_empty() {
                self.flush_line(&mut pending);
            }
        }
    }
}

impl IsTerminal for LineSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LineSink {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineSink {
    async fn ready(&mut self) {}
}

impl OutputStream for LineSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.accept(&bytes).map_err(|stop| StreamError::Trap(wasmtime::Error::new(stop)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LineSink {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(self.accept(buf).map(|()| buf.len()).map_err(io::Error::other))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_a_line() {
        assert_eq!(escape_controls("plain\ttab"), "plain\ttab");
        assert_eq!(escape_controls("a\nINFO elected id=\"victim\""), "a\\nINFO elected id=\"victim\"");
        assert_eq!(escape_controls("\u{1b}[31mred\r"), "\\u{1b}[31mred\\r");
    }

    #[test]
    fn long_text_is_cut_with_a_visible_mark() {
        assert_eq!(truncate("short", 8, 0), "short");
        assert_eq!(truncate("0123456789", 4, 0), "0123… [truncated 6 bytes]");
        // Never inside a character.
        assert_eq!(truncate("ééé", 3, 0), "é… [truncated 4 bytes]");
        assert_eq!(truncate("kept", 8, 100), "kept… [truncated 100 bytes]");
    }

    #[test]
    fn output_over_the_rate_is_dropped_and_counted() {
        let context = LogContext { plugin: "p".into(), participant: "me".into(), term: Some(1) };
        let limits = OutputLimits { max_line: 100, lines_per_second: 10, bytes_per_second: 1 << 20 };
        let output = Output::new(context, limits);
        let admitted = (0..1000).filter(|_| output.admit(10)).count();
        // One second's burst, plus what refilled while the loop ran.
        assert!((10..=12).contains(&admitted), "{admitted}");
        // The first drop is reported at once; the rest wait for the next report.
        assert_eq!(output.budget.lock().unwrap().dropped_lines as usize, 1000 - admitted - 1);
    }
}
