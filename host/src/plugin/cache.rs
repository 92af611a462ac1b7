//! The compiled-code cache: a component compiled once is loaded from disk
//! at the next start or reload, in milliseconds instead of seconds.
//!
//! Entries are named by the component's sha256 and a hash of the engine's
//! settings and version, so a changed component or a new zkrun never loads
//! stale code. Loading compiled code is trusting it (it runs natively), so
//! the cache is used only in a directory of the running user's own, that
//! nobody else can write (mode 0700, created so); entries must be the user's
//! and not writable by others. An entry that does not load is removed and
//! compiled again.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The hex sha256 of a component's bytes: its identity in logs and the cache.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The default cache directory: `$CACHE_DIRECTORY` (systemd's
/// `CacheDirectory=`), else `$XDG_CACHE_HOME/zkrun`, else `~/.cache/zkrun`.
pub fn default_dir() -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("CACHE_DIRECTORY")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("zkrun")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/zkrun")))
}

/// A usable cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Opens (creating it 0700 if needed) `dir`, if it is safe to trust:
    /// owned by this user and not writable by anyone else.
    pub fn open(dir: &Path) -> Result<Cache, String> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let meta = fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != me {
            return Err(format!("{} is not a directory of this user's", dir.display()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is writable by other users (mode {:o})",
                dir.display(),
                meta.mode() & 0o777
            ));
        }
        Ok(Cache { dir: dir.to_path_buf() })
    }

    /// Where the entry for a component with `sha256` compiled by `engine` lives.
    fn entry(&self, engine: &Engine, sha256: &str) -> PathBuf {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
    }

    /// The cached compilation of `sha256`, if there is a trustworthy one
    /// that loads; a broken one is removed.
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.entry(engine, sha256);
        let meta = fs::symlink_metadata(&path).ok()?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !meta.is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 {
            tracing::warn!(event = "cache_entry_ignored", path = %path.display(), "a compiled-code cache entry that is not this user's own file was ignored");
            return None;
        }
        // Read, not mapped: a mapped file truncated under us (by anything
        // running as this user) would kill the process with SIGBUS.
        let bytes = fs::read(&path).ok()?;
        // SAFETY: the file is this user's own, in a directory only this user
        // can write, and was written by `store` from wasmtime's own output
        // for an engine with the same settings (its name says so); wasmtime
        // checks the version and settings again before using it.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(event = "cache_entry_replaced", path = %path.display(), error = %format!("{e:#}").lines().next().unwrap_or_default(), "a compiled-code cache entry did not load; compiling again");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores compiled code for `sha256`, atomically (a reader never sees
    /// half a file); a failure only costs the next start a compile.
    pub fn store(&self, engine: &Engine, sha256: &str, compiled: &[u8]) {
        let path = self.entry(engine, sha256);
        let temp = self.dir.join(format!(".{sha256}.{}.tmp", std::process::id()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut f| f.write_all(compiled).and_then(|()| f.sync_all()))
            .and_then(|()| fs::set_permissions(&temp, fs::Permissions::from_mode(0o600)))
            .and_then(|()| fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            tracing::warn!(event = "cache_write_failed", path = %path.display(), error = %e, "could not store compiled code; the next start compiles again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_hex_of_the_bytes() {
        assert_eq!(sha256(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn only_a_private_directory_is_trusted() {
        let base = std::env::temp_dir().join(format!("zkrun-cache-test-{}", std::process::id()));
        let private = base.join("private");
        Cache::open(&private).unwrap();
        assert_eq!(fs::metadata(&private).unwrap().mode() & 0o777, 0o700);
        let shared = base.join("shared");
        fs::create_dir_all(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Cache::open(&shared).unwrap_err().contains("writable by other users"));
        fs::remove_dir_all(&base).unwrap();
    }
}
