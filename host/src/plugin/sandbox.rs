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
use crate::text::{escape_controls, truncate};

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

/// The output of one instance: every `log()` message and every line of
/// stdout and stderr goes through here, so the caps and rates hold across
/// all three.
#[derive(Clone)]
pub struct Output {
    context: LogContext,
    limits: OutputLimits,
    budget: Arc<Mutex<Budget>>,
    /// The last lines the running hook wrote to stderr: where a guest's
    /// panic message or traceback is, when it traps.
    stderr_tail: Arc<Mutex<std::collections::VecDeque<String>>>,
}

/// How many of the last stderr lines are kept for [`Output::last_words`].
const STDERR_TAIL: usize = 8;

/// How much of a guest's text is kept once its output budget is spent.
const SPENT_BUDGET_CUT: usize = 256;

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
        Output { context, limits, budget: Arc::new(Mutex::new(budget)), stderr_tail: Arc::default() }
    }

    /// Guest text that zkrun prints on the plugin's behalf (a hook's error,
    /// a resign reason, a trap message), through the one door
    /// ([`crate::text::guest`]): cut at the line cap, escaped, and charged
    /// to the output budget. Once the budget is spent it is cut much
    /// shorter instead of dropped, since the event it belongs to must be told.
    pub fn charge(&self, text: &str) -> String {
        let line = crate::text::guest(text, self.limits.max_line);
        if self.take(line.len()) {
            line
        } else {
            crate::text::guest(text, SPENT_BUDGET_CUT.min(self.limits.max_line))
        }
    }

    /// A new hook starts: what earlier hooks wrote to stderr is not its own.
    pub fn hook_started(&self) {
        self.stderr_tail.lock().unwrap().clear();
    }

    /// What the guest last said on stderr, as one line (unescaped: pass it
    /// through [`Output::charge`]): a Rust panic's location and message, or
    /// the last line of a Python traceback (the exception), else the last
    /// line written.
    pub fn last_words(&self) -> Option<String> {
        let tail = self.stderr_tail.lock().unwrap();
        let lines: Vec<&str> =
            tail.iter().map(|l| l.trim()).filter(|l| !l.is_empty() && !l.starts_with("note: ")).collect();
        // A Rust panic: "thread '…' panicked at src/lib.rs:13:9:", then the message.
        if let Some(at) = lines.iter().rposition(|l| l.contains("panicked at")) {
            return Some(lines[at..].join(" "));
        }
        lines.last().map(|l| l.to_string())
    }

    /// Takes `len` bytes and one line from the budget, if it holds them.
    fn take(&self, len: usize) -> bool {
        let mut budget = self.budget.lock().unwrap();
        budget.refill(self.limits);
        if budget.lines >= 1.0 && budget.bytes >= len as f64 {
            budget.lines -= 1.0;
            budget.bytes -= len as f64;
            return true;
        }
        false
    }

    /// A `log()` call.
    pub fn log(&self, level: Level, message: &str) {
        self.line("log", level, message, 0);
    }

    /// One line of `stream`, of which `already_cut` bytes were cut off before
    /// it got here; dropped if over the rate.
    fn line(&self, stream: &'static str, level: Level, text: &str, already_cut: usize) {
        let text = truncate(text, self.limits.max_line, already_cut);
        if stream == "stderr" {
            let mut tail = self.stderr_tail.lock().unwrap();
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(text.to_string());
        }
        if !self.admit(text.len()) {
            return;
        }
        emit(&self.context, stream, level, &text);
    }

    /// Takes one line of `len` bytes from the budget, or counts it dropped.
    fn admit(&self, len: usize) -> bool {
        let mut budget = self.budget.lock().unwrap();
        let now = budget.refill(self.limits);
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
    /// Adds what the rates gave since the last refill; returns now.
    fn refill(&mut self, limits: OutputLimits) -> Instant {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let (max_lines, max_bytes) = (f64::from(limits.lines_per_second), limits.bytes_per_second as f64);
        self.lines = (self.lines + elapsed * max_lines).min(max_lines);
        self.bytes = (self.bytes + elapsed * max_bytes).min(max_bytes);
        now
    }

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

    #[test]
    fn guest_text_told_for_the_plugin_is_charged_to_its_budget() {
        let context = LogContext { plugin: "p".into(), participant: "me".into(), term: Some(1) };
        let limits = OutputLimits { max_line: 8 * 1024, lines_per_second: 200, bytes_per_second: 64 * 1024 };
        let output = Output::new(context, limits);
        let giant = format!("a\nb{}", "e".repeat(20_000_000));
        // Within the budget: cut at the line cap, escaped.
        let first = output.charge(&giant);
        assert!(first.len() < 8 * 1024 + 64 && first.starts_with("a\\nb"), "{}", first.len());
        // Eight lines use the second's 64 KiB; after that, short ones.
        let lengths: Vec<usize> = (0..20).map(|_| output.charge(&giant).len()).collect();
        assert!(lengths.iter().filter(|&&n| n > 1024).count() <= 8, "{lengths:?}");
        assert!(lengths.iter().rev().take(8).all(|&n| n < 400), "{lengths:?}");
    }

    #[test]
    fn last_words_are_the_panic_or_the_last_line() {
        let context = LogContext { plugin: "p".into(), participant: "me".into(), term: Some(1) };
        let output = Output::new(context, OutputLimits::default());
        assert_eq!(output.last_words(), None);
        for line in [
            "starting",
            "thread '<unnamed>' panicked at src/lib.rs:13:9:",
            "refusing term 5 on purpose",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        ] {
            output.line("stderr", Level::Warn, line, 0);
        }
        assert_eq!(
            output.last_words().as_deref(),
            Some("thread '<unnamed>' panicked at src/lib.rs:13:9: refusing term 5 on purpose")
        );
        output.hook_started();
        for line in ["Traceback (most recent call last):", "  File \"app.py\", line 3", "ValueError: boom"] {
            output.line("stderr", Level::Warn, line, 0);
        }
        assert_eq!(output.last_words().as_deref(), Some("ValueError: boom"));
    }
}
