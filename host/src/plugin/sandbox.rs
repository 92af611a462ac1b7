//! The plugin's sandbox: WASI with nothing ambient, built up from explicit
//! grants, and output that goes to zkrun's log.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{FsPerms, HostMonotonicClock, WasiCtx};

use super::bindings::Level;
use super::limits::Gate;

/// Longest line of plugin output kept in one log event.
const MAX_LINE: usize = 8 * 1024;

/// What an operator explicitly lets a plugin reach. Nothing by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Host directories made visible to the plugin.
    pub dirs: Vec<DirGrant>,
    /// Environment variables the plugin sees.
    pub env: Vec<(String, String)>,
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

/// Writes one line of plugin output to zkrun's log.
pub fn emit(context: &LogContext, stream: &'static str, level: Level, message: &str) {
    let term = context.term;
    let (plugin, id) = (&*context.plugin, &*context.participant);
    let mono_ns = crate::clock::monotonic_ns();
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

/// Builds the WASI context of one instance: no arguments, files, network,
/// environment or stdin unless granted; stdout and stderr go to the log.
pub fn wasi_context(grants: &Grants, gate: &Arc<Gate>, context: &LogContext) -> wasmtime::Result<WasiCtx> {
    let mut builder = WasiCtx::builder();
    builder
        .stdout(LineSink::new(gate.clone(), context.clone(), "stdout", Level::Info))
        .stderr(LineSink::new(gate.clone(), context.clone(), "stderr", Level::Warn))
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
    context: LogContext,
    stream: &'static str,
    level: Level,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl LineSink {
    fn new(gate: Arc<Gate>, context: LogContext, stream: &'static str, level: Level) -> LineSink {
        LineSink { gate, context, stream, level, pending: Arc::default() }
    }

    fn accept(&self, bytes: &[u8]) -> Result<(), super::limits::Stop> {
        self.gate.check()?;
        let mut pending = self.pending.lock().unwrap();
        for &b in bytes {
            if b == b'\n' {
                self.flush_line(&mut pending);
            } else if pending.len() < MAX_LINE {
                pending.push(b);
            }
        }
        Ok(())
    }

    fn flush_line(&self, pending: &mut Vec<u8>) {
        let line = String::from_utf8_lossy(pending);
        emit(&self.context, self.stream, self.level, line.trim_end_matches('\r'));
        pending.clear();
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        // The last handle of an instance flushes a final unterminated line.
        if Arc::strong_count(&self.pending) == 1 {
            let mut pending = self.pending.lock().unwrap();
            if !pending.is_empty() {
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
