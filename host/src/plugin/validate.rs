//! Loading a plugin file and checking it against the `job` world, with one
//! clear line for every way it can be wrong.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmtime::Engine;

use super::cache::{self, Cache};
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

/// The WIT package version this host serves (any 0.1.x).
pub const PACKAGE: &str = "zkrun:plugin";
/// The major and minor version of [`PACKAGE`] this host serves.
pub const SERVED: (u64, u64) = (0, 1);
/// What every plugin must export.
pub const EXPORTS: [&str; 3] = ["on-elected", "tick", "on-demoted"];

/// Why a plugin cannot be used. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No file at the path.
    #[error("plugin {0} does not exist")]
    NotFound(PathBuf),
    /// The file could not be read.
    #[error("cannot read plugin {0}: {1}")]
    Unreadable(PathBuf, std::io::Error),
    /// Not WebAssembly at all.
    #[error("{0} is not a WebAssembly file (it does not start with \\0asm)")]
    NotWasm(PathBuf),
    /// A core module, not a component.
    #[error(
        "{0} is a core WebAssembly module, not a component: build the plugin for wasm32-wasip2 (see plugins/README.md)"
    )]
    CoreModule(PathBuf),
    /// Malformed, or uses features the host does not enable.
    #[error("{0} is not a valid WebAssembly component: {1}")]
    Invalid(PathBuf, String),
    /// Built against a zkrun:plugin version this host does not serve.
    #[error(
        "{path} was built against zkrun:plugin@{found}, but this zkrun serves zkrun:plugin@{}.{}.x: rebuild it against the wit/ of this release",
        SERVED.0,
        SERVED.1
    )]
    WrongVersion {
        /// The plugin file.
        path: PathBuf,
        /// The version it imports.
        found: String,
    },
    /// Imports something the host does not grant.
    #[error(
        "{path} imports {import}, which zkrun does not grant (it grants zkrun:plugin/* {}.{}.x and wasi:* 0.2.x)",
        SERVED.0,
        SERVED.1
    )]
    NotGranted {
        /// The plugin file.
        path: PathBuf,
        /// The import the host lacks.
        import: String,
    },
    /// Lacks some of the hooks.
    #[error("{path} does not export {}: it is not a zkrun job (world zkrun:plugin/job)", missing.join(", "))]
    MissingExports {
        /// The plugin file.
        path: PathBuf,
        /// The hooks it lacks.
        missing: Vec<String>,
    },
    /// Exports the hooks with other types.
    #[error("{0} does not match the zkrun:plugin/job world: {1}")]
    Incompatible(PathBuf, String),
    /// Larger than the component size limit.
    #[error(
        "{path} is {size} bytes, larger than the {limit}-byte component size limit (--max-component-size)"
    )]
    TooBig {
        /// The plugin file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Compiling took longer than the compile time limit.
    #[error("{path} did not compile within the {} compile time limit (--compile-timeout); the compiler was stopped", humantime::format_duration(*limit))]
    CompileTimeout {
        /// The plugin file.
        path: PathBuf,
        /// The limit.
        limit: Duration,
    },
    /// The compiler child used more memory than the compile memory limit.
    #[error("{path} needed more than the {} MiB compile memory limit to compile (--compile-memory-limit); the compiler was stopped", limit >> 20)]
    CompileMemory {
        /// The plugin file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The compiler child process could not be run.
    #[error("cannot compile {0}: {1}")]
    Compiler(PathBuf, String),
    /// Precompiled code, not allowed.
    #[error(
        "{0} is precompiled code (from `zkrun compile`), which runs natively unchecked: pass --trust-precompiled if it comes from a build you trust"
    )]
    Precompiled(PathBuf),
    /// Precompiled code this zkrun cannot load.
    #[error(
        "{0} was precompiled by another zkrun or for other settings ({1}): compile it again with this zkrun's `zkrun compile`"
    )]
    PrecompiledMismatch(PathBuf, String),
}

/// Default cap on a component's size: room for an 18 MB componentize-py
/// component and more.
pub const DEFAULT_MAX_COMPONENT_SIZE: u64 = 64 << 20;
/// Default compile time limit: a componentize-py component compiles in
/// about 5 s on a 2-core machine; leave room for slower edge hosts.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default cap on the compiler child's resident memory: compiling the 18 MB
/// componentize-py heartbeat peaks at about 380 MiB (measured with `zkrun
/// check`, which reports the peak); twice that leaves room for larger
/// components, and still stops a compile bomb long before a small host's
/// OOM killer would.
pub const DEFAULT_COMPILE_MEMORY_LIMIT: u64 = 768 << 20;
/// How often the compiler child's time and memory are looked at.
const COMPILER_POLL: Duration = Duration::from_millis(5);

/// Where components are compiled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Compiler {
    /// In this process: cannot be stopped once started (tests, tools).
    #[default]
    InProcess,
    /// In a child process running this binary as `<exe> compile - -o -`, at a
    /// lower CPU priority, killed at the compile time limit or when this
    /// process dies.
    Subprocess(PathBuf),
}

/// What a component may cost to load, and where compiled code is cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileLimits {
    /// The compiled-code cache directory, if any.
    pub cache: Option<PathBuf>,
    /// The most the cache's entries may take together, in bytes.
    pub cache_max_size: u64,
    /// Largest component file accepted, in bytes.
    pub max_size: u64,
    /// Longest a compile may take (enforced with [`Compiler::Subprocess`]).
    pub timeout: Duration,
    /// Most resident memory the compile may use, in bytes (enforced with
    /// [`Compiler::Subprocess`]).
    pub memory: u64,
    /// Where to compile.
    pub compiler: Compiler,
    /// Whether precompiled code (`zkrun compile` output) may be loaded.
    pub trust_precompiled: bool,
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            cache: None,
            cache_max_size: super::cache::DEFAULT_MAX_SIZE,
            max_size: DEFAULT_MAX_COMPONENT_SIZE,
            timeout: DEFAULT_COMPILE_TIMEOUT,
            memory: DEFAULT_COMPILE_MEMORY_LIMIT,
            compiler: Compiler::InProcess,
            trust_precompiled: false,
        }
    }
}

/// What a plugin imports and exports, for `zkrun check` and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// Import names with their kind, e.g. `zkrun:plugin/host@0.1.0 (instance)`.
    pub imports: Vec<String>,
    /// Export names with their kind, e.g. `tick (func)`.
    pub exports: Vec<String>,
}

impl Interface {
    /// Whether the plugin can send HTTP requests: it imports
    /// `wasi:http/outgoing-handler` (granted only by `--allow-http`).
    pub fn sends_http(&self) -> bool {
        self.imports.iter().any(|import| import.starts_with("wasi:http/outgoing-handler"))
    }
}

/// A compiled component and where it came from.
pub struct Compiled {
    /// The component, ready to link.
    pub component: Component,
    /// The hex sha256 of the file's bytes.
    pub sha256: String,
    /// Whether it came from the compiled-code cache.
    pub cached: bool,
    /// The compiler child's peak resident memory, in bytes, if one ran.
    pub compile_peak: Option<u64>,
}

/// Reads and compiles `path` within `limits` (or loads it from the cache),
/// checking everything that can be checked before linking.
pub fn compile(engine: &Engine, path: &Path, limits: &CompileLimits) -> Result<Compiled, LoadError> {
    let size = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LoadError::NotFound(path.into())),
        Err(e) => return Err(LoadError::Unreadable(path.into(), e)),
    };
    if size > limits.max_size {
        return Err(LoadError::TooBig { path: path.into(), size, limit: limits.max_size });
    }
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(limits.max_size + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        return Err(LoadError::Unreadable(path.into(), e));
    }
    if bytes.len() as u64 > limits.max_size {
        // It grew after the size check.
        return Err(LoadError::TooBig {
            path: path.into(),
            size: bytes.len() as u64,
            limit: limits.max_size,
        });
    }
    let sha256 = cache::sha256(&bytes);
    if bytes.starts_with(b"\x7fELF") {
        // What `zkrun compile` writes: native code, loaded only when trusted.
        if !limits.trust_precompiled {
            return Err(LoadError::Precompiled(path.into()));
        }
        // SAFETY: the operator vouched for this file with
        // --trust-precompiled; wasmtime checks that it was made by this
        // version with these settings before using it.
        let component = unsafe { Component::deserialize(engine, &bytes) }
            .map_err(|e| LoadError::PrecompiledMismatch(path.into(), first_line(&e)))?;
        return Ok(Compiled { component, sha256, cached: false, compile_peak: None });
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm(path.into()));
    }
    // Bytes 4..8 are the version and layer: 1,0,0,0 for a core module.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule(path.into()));
    }
    let cache = limits.cache.as_deref().and_then(|dir| match Cache::open(dir) {
        Ok(cache) => Some(cache.with_max_size(limits.cache_max_size)),
        Err(why) => {
            tracing::warn!(event = "cache_unusable", why, "not using the compiled-code cache");
            None
        }
    });
    if let Some(component) = cache.as_ref().and_then(|c| c.load(engine, &sha256)) {
        return Ok(Compiled { component, sha256, cached: true, compile_peak: None });
    }
    tracing::info!(
        event = "compiling",
        plugin = %path.display(),
        size,
        cached = false,
        "compiling {} ({size} bytes, not in the compiled-code cache)",
        path.display()
    );
    let mut compile_peak = None;
    let (component, serialized) = match &limits.compiler {
        Compiler::InProcess => {
            let component = Component::new(engine, &bytes)
                .map_err(|e| LoadError::Invalid(path.into(), first_line(&e)))?;
            let serialized = cache.as_ref().and_then(|_| component.serialize().ok());
            (component, serialized)
        }
        Compiler::Subprocess(exe) => {
            let (compiled, peak) = compile_in_child(exe, path, &bytes, limits)?;
            compile_peak = Some(peak);
            // SAFETY: these bytes come from our own binary's `compile`, which
            // serialized them for an engine configured as ours is
            // (`plugin::engine`); wasmtime also checks the engine's version
            // and settings before using them.
            let component = unsafe { Component::deserialize(engine, &compiled) }
                .map_err(|e| LoadError::Compiler(path.into(), first_line(&e)))?;
            (component, Some(compiled))
        }
    };
    if let (Some(cache), Some(serialized)) = (&cache, serialized) {
        cache.store(engine, &sha256, &serialized);
    }
    Ok(Compiled { component, sha256, cached: false, compile_peak })
}

/// Runs `<exe> compile - -o -` on `wasm`; kills it at the time limit or
/// once its resident memory passes the memory limit. Returns the compiled
/// code and the child's peak resident memory.
fn compile_in_child(
    exe: &Path,
    path: &Path,
    wasm: &[u8],
    limits: &CompileLimits,
) -> Result<(Vec<u8>, u64), LoadError> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let timeout = limits.timeout;
    let fail =
        |what: &str, e: &dyn std::fmt::Display| LoadError::Compiler(path.into(), format!("{what}: {e}"));
    let mut command = Command::new(exe);
    command
        .args(["compile", "-", "-o", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // Die with us (a SIGTERM must not leave a compiler behind), and
            // leave the CPU to the running job first.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| fail("cannot start the compiler", &e))?;
    let started = Instant::now();
    let mut stdin = child.stdin.take().expect("piped");
    let input = wasm.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_string(&mut out);
        out
    });
    let pid = child.id() as libc::pid_t;
    // The child's memory is watched from here (resident, as /proc reports
    // it) rather than capped with RLIMIT_AS inside it: the compiler reserves
    // far more address space than it touches, so an address-space cap that
    // stops a bomb also fails honest compiles.
    let mut peak = 0u64;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: an empty rusage for wait4 to fill; the pid is our child's.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; WNOHANG returns at once.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            break (std::process::ExitStatus::from_raw(status), usage);
        }
        if reaped < 0 {
            return Err(fail("cannot wait for the compiler", &std::io::Error::last_os_error()));
        }
        peak = peak.max(resident(pid).unwrap_or(0));
        if peak > limits.memory {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LoadError::CompileMemory { path: path.into(), limit: limits.memory });
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LoadError::CompileTimeout { path: path.into(), limit: timeout });
        }
        std::thread::sleep(COMPILER_POLL);
    };
    // The kernel's own high-water mark catches a peak between two looks.
    peak = peak.max(usage.ru_maxrss as u64 * 1024);
    if peak > limits.memory {
        return Err(LoadError::CompileMemory { path: path.into(), limit: limits.memory });
    }
    let _ = writer.join();
    let output =
        reader.join().expect("reader thread").map_err(|e| fail("cannot read the compiler's output", &e))?;
    let message = errors.join().unwrap_or_default();
    if !status.success() {
        let line = message.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no message");
        let line = line.trim().trim_start_matches("zkrun: ");
        return Err(LoadError::Invalid(path.into(), line.to_string()));
    }
    Ok((output, peak))
}

/// The resident memory of process `pid` in bytes, from /proc.
fn resident(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Checks the imports and exports of a compiled component.
pub fn check_interface(engine: &Engine, path: &Path, component: &Component) -> Result<Interface, LoadError> {
    let ty = component.component_type();
    let mut interface = Interface::default();
    for (name, item) in ty.imports(engine) {
        interface.imports.push(format!("{name} ({})", kind(&item.ty)));
        if let Some((package, version)) = split_version(name)
            && package.starts_with(&format!("{PACKAGE}/"))
            && !served(version)
        {
            return Err(LoadError::WrongVersion { path: path.into(), found: version.to_string() });
        }
    }
    let exports: Vec<(String, ComponentItem)> =
        ty.exports(engine).map(|(n, e)| (n.to_string(), e.ty)).collect();
    for (name, item) in &exports {
        interface.exports.push(format!("{name} ({})", kind(item)));
    }
    let missing: Vec<String> = EXPORTS
        .iter()
        .filter(|hook| {
            !exports
                .iter()
                .any(|(name, item)| name == *hook && matches!(item, ComponentItem::ComponentFunc(_)))
        })
        .map(|hook| hook.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(LoadError::MissingExports { path: path.into(), missing });
    }
    Ok(interface)
}

/// Finds the first import `linker` cannot satisfy, for a precise error.
pub fn unsatisfied_import(
    engine: &Engine,
    path: &Path,
    component: &Component,
    error: &wasmtime::Error,
) -> LoadError {
    let text = format!("{error:#}");
    for (name, _) in component.component_type().imports(engine) {
        if text.contains(name) {
            return LoadError::NotGranted { path: path.into(), import: name.to_string() };
        }
    }
    LoadError::Incompatible(path.into(), first_line(error))
}

fn served(version: &str) -> bool {
    let mut parts = version.split(['.', '-', '+']).map(|p| p.parse::<u64>().ok());
    matches!((parts.next(), parts.next()), (Some(Some(major)), Some(Some(minor))) if (major, minor) == SERVED)
}

fn split_version(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('@')
}

fn kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => "func",
        ComponentItem::CoreFunc(_) => "core func",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

/// The first line of an error chain, with its causes, on one line.
pub fn first_line(error: &wasmtime::Error) -> String {
    format!("{error:#}").lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_every_0_1_release_only() {
        assert!(served("0.1.0"));
        assert!(served("0.1.7"));
        assert!(served("0.1.0-rc1"));
        assert!(!served("0.2.0"));
        assert!(!served("1.0.0"));
        assert!(!served("x"));
    }
}
