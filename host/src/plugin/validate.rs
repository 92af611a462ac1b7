//! Loading a plugin file and checking it against the `job` world, with one
//! clear line for every way it can be wrong.

use std::path::{Path, PathBuf};

use wasmtime::Engine;
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
}

/// What a plugin imports and exports, for `zkrun check` and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// Import names with their kind, e.g. `zkrun:plugin/host@0.1.0 (instance)`.
    pub imports: Vec<String>,
    /// Export names with their kind, e.g. `tick (func)`.
    pub exports: Vec<String>,
}

/// Reads and compiles `path`, checking everything that can be checked
/// before linking.
pub fn compile(engine: &Engine, path: &Path) -> Result<Component, LoadError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LoadError::NotFound(path.into())),
        Err(e) => return Err(LoadError::Unreadable(path.into(), e)),
    };
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm(path.into()));
    }
    // Bytes 4..8 are the version and layer: 1,0,0,0 for a core module.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule(path.into()));
    }
    Component::new(engine, &bytes).map_err(|e| LoadError::Invalid(path.into(), first_line(&e)))
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
