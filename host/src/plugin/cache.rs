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
//!
//! Entries are authenticated too: each ends in an HMAC-SHA256 of the
//! component's sha256, the engine hash and the code, keyed by a secret kept
//! beside the cache directory (`.<name>.key` in its parent, mode 0600), where
//! no directory grant can reach ([`check_grants`] refuses any grant that
//! overlaps the cache, which a grant of the parent does). An entry that
//! fails is removed and compiled again, with a warning: code that zkrun did
//! not write itself never runs.
//!
//! The cache is bounded: after each store, the least recently used entries
//! (a load touches an entry's mtime) are removed until the entries together
//! take at most the limit (`--cache-max-size`, [`DEFAULT_MAX_SIZE`]).
//! `zkrun cache list` and `zkrun cache prune` show and trim it by hand.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::sandbox::DirGrant;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The default bound on the entries' total size: about fourteen compiled
/// Python components (35 MB each), hundreds of Rust ones.
pub const DEFAULT_MAX_SIZE: u64 = 512 << 20;

/// One compiled entry of the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last stored or loaded.
    pub used: SystemTime,
}

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

/// Refuses grants through which a plugin could plant compiled code: any
/// directory grant that contains, or lies inside, the cache directory (the
/// code there runs natively, outside the sandbox), and any read-write grant
/// that contains the plugin file (a reload would run what the plugin wrote).
/// The error is one line naming the grant.
pub fn check_grants(cache: Option<&Path>, plugin: Option<&Path>, dirs: &[DirGrant]) -> Result<(), String> {
    for grant in dirs {
        let granted = resolved(&grant.host);
        if let Some(cache) = cache {
            let cache = resolved(cache);
            if granted.starts_with(&cache) || cache.starts_with(&granted) {
                return Err(format!(
                    "the directory grant {} overlaps the compiled-code cache {}: a plugin could plant native code there; grant another directory or move the cache (--cache-dir)",
                    grant.host.display(),
                    cache.display()
                ));
            }
        }
        if let Some(plugin) = plugin
            && !grant.read_only
            && resolved(plugin).starts_with(&granted)
        {
            return Err(format!(
                "the read-write directory grant {} contains the plugin file {}: the plugin could replace its own code; grant it read-only (:ro) or move the plugin",
                grant.host.display(),
                plugin.display()
            ));
        }
    }
    Ok(())
}

/// `path` made absolute with symbolic links resolved as far as it exists
/// (a cache directory may not exist yet).
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |path, part| path.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// A usable cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
    /// The secret entries are authenticated with.
    key: [u8; 32],
    /// The most the entries may take together, in bytes.
    max_size: u64,
}

/// The length of an entry's authentication tag.
const TAG: usize = 32;

/// HMAC-SHA256 of `parts` under `key` (RFC 2104).
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; TAG] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Reads the cache's key, creating it (0600, from the kernel's random
/// source) if there is none; refuses one that others could read or write.
fn key_for(dir: &Path) -> Result<[u8; 32], String> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "zkrun".into());
    let path = dir.parent().unwrap_or(dir).join(format!(".{name}.key"));
    if !path.exists() {
        let mut key = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
            .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
        let created = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()));
        // Another zkrun may have created it first: read what is there.
        if let Err(e) = created
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(format!("cannot create the cache key {}: {e}", path.display()));
        }
    }
    let meta = fs::symlink_metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(format!("the cache key {} is not a private file of this user's", path.display()));
    }
    let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    bytes.try_into().map_err(|_| format!("the cache key {} is not 32 bytes", path.display()))
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
        let key = key_for(dir)?;
        Ok(Cache { dir: dir.to_path_buf(), key, max_size: DEFAULT_MAX_SIZE })
    }

    /// The same cache, bounded to `max_size` bytes of entries.
    pub fn with_max_size(mut self, max_size: u64) -> Cache {
        self.max_size = max_size;
        self
    }

    /// Every compiled entry, least recently used first.
    pub fn entries(&self) -> Vec<Entry> {
        let Ok(dir) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut entries: Vec<Entry> = dir
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some(Entry { path: e.path(), size: meta.len(), used: meta.modified().ok()? })
            })
            .collect();
        entries.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.path.cmp(&b.path)));
        entries
    }

    /// Removes the least recently used entries until the rest take at most
    /// `max_size` bytes; `keep` goes last (only if it alone is too large).
    /// Returns what was removed.
    pub fn prune(&self, max_size: u64, keep: Option<&Path>) -> Vec<Entry> {
        let mut entries = self.entries();
        // The kept entry is the last to go.
        entries.sort_by_key(|e| Some(e.path.as_path()) == keep);
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let mut removed = Vec::new();
        for entry in entries {
            if total <= max_size {
                break;
            }
            if fs::remove_file(&entry.path).is_ok() {
                total -= entry.size;
                tracing::info!(event = "cache_evicted", path = %entry.path.display(), size = entry.size, max_size, "removed the least recently used compiled-code cache entry");
                removed.push(entry);
            }
        }
        removed
    }

    /// Where the entry for a component with `sha256` compiled by `engine` lives.
    fn entry(&self, engine: &Engine, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", engine_hash(engine)))
    }

    /// The tag that authenticates `code` as the compilation of `sha256`.
    fn tag(&self, engine: &Engine, sha256: &str, code: &[u8]) -> [u8; TAG] {
        hmac(&self.key, &[sha256.as_bytes(), engine_hash(engine).as_bytes(), code])
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
        let mut bytes = fs::read(&path).ok()?;
        let genuine = bytes.len() > TAG && {
            let tag = bytes.split_off(bytes.len() - TAG);
            // Compared in constant time: a timing difference must not tell
            // how much of a forged tag is right.
            tag.iter().zip(self.tag(engine, sha256, &bytes)).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
        };
        if !genuine {
            tracing::warn!(event = "cache_entry_tampered", path = %path.display(), "a compiled-code cache entry failed authentication (zkrun did not write it); removing it and compiling again");
            let _ = fs::remove_file(&path);
            return None;
        }
        // SAFETY: the file is this user's own, in a directory only this user
        // can write, and was written by `store` from wasmtime's own output
        // for an engine with the same settings (its name says so); wasmtime
        // checks the version and settings again before using it.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => {
                // Used now: the least recently used entries are evicted first.
                let _ = fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                Some(component)
            }
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
            .and_then(|mut f| {
                f.write_all(compiled)
                    .and_then(|()| f.write_all(&self.tag(engine, sha256, compiled)))
                    .and_then(|()| f.sync_all())
            })
            .and_then(|()| fs::set_permissions(&temp, fs::Permissions::from_mode(0o600)))
            .and_then(|()| fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            tracing::warn!(event = "cache_write_failed", path = %path.display(), error = %e, "could not store compiled code; the next start compiles again");
            return;
        }
        if self.prune(self.max_size, Some(&path)).iter().any(|e| e.path == path) {
            tracing::warn!(event = "cache_entry_too_large", path = %path.display(), size = compiled.len(), max_size = self.max_size, "the compiled code alone is larger than the cache's limit (--cache-max-size): not kept");
        }
    }
}

fn engine_hash(engine: &Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Checked against Python's hmac module for the same key and message.
        let key = [0x0bu8; 32];
        let tag = hmac(&key, &[b"Hi ", b"There"]);
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7");
    }

    #[test]
    fn sha256_is_hex_of_the_bytes() {
        assert_eq!(sha256(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn no_grant_may_overlap_the_cache_nor_write_the_plugin() {
        let base = std::env::temp_dir().join(format!("zkrun-cache-grants-{}", std::process::id()));
        let cache = base.join("cache/zkrun");
        let plugins = base.join("plugins");
        fs::create_dir_all(&plugins).unwrap();
        let plugin = plugins.join("job.wasm");
        let grant =
            |host: &Path, read_only| DirGrant { host: host.to_path_buf(), guest: "/d".into(), read_only };
        let check = |g: DirGrant| check_grants(Some(&cache), Some(&plugin), &[g]);
        // The cache's parent, the cache itself, and a directory inside it.
        assert!(check(grant(&base.join("cache"), true)).unwrap_err().contains("compiled-code cache"));
        assert!(check(grant(&cache, false)).unwrap_err().contains("compiled-code cache"));
        assert!(check(grant(&cache.join("sub"), false)).is_err());
        // The plugin's directory: read-only is fine, read-write is not.
        assert_eq!(check(grant(&plugins, true)), Ok(()));
        assert!(check(grant(&plugins, false)).unwrap_err().contains("replace its own code"));
        // Elsewhere, and a name that only starts like the cache's.
        assert_eq!(check(grant(&base.join("data"), false)), Ok(()));
        assert_eq!(check(grant(&base.join("cache/zkrun-data"), false)), Ok(()));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn prune_removes_the_least_recently_used_first_and_keeps_the_new_entry() {
        let root = std::env::temp_dir().join(format!("zkrun-cache-lru-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        let cache = Cache::open(&root.join("c")).unwrap().with_max_size(250);
        let base = SystemTime::now() - std::time::Duration::from_secs(100);
        for (i, name) in ["old", "mid", "new"].iter().enumerate() {
            let path = root.join("c").join(format!("{name}.cwasm"));
            fs::write(&path, [0u8; 100]).unwrap();
            let f = fs::OpenOptions::new().append(true).open(&path).unwrap();
            f.set_modified(base + std::time::Duration::from_secs(10 * i as u64)).unwrap();
        }
        let names = |entries: Vec<Entry>| -> Vec<String> {
            entries.iter().map(|e| e.path.file_name().unwrap().to_string_lossy().into_owned()).collect()
        };
        assert_eq!(names(cache.entries()), ["old.cwasm", "mid.cwasm", "new.cwasm"]);
        // Kept: "old" was just stored; "mid" is the least recently used other.
        let keep = root.join("c/old.cwasm");
        assert_eq!(names(cache.prune(250, Some(&keep))), ["mid.cwasm"]);
        assert_eq!(names(cache.prune(0, Some(&keep))), ["new.cwasm", "old.cwasm"]);
        assert!(cache.entries().is_empty());
        fs::remove_dir_all(&root).unwrap();
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
        let key = base.join(".private.key");
        assert_eq!(fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        // The same key on every open: entries survive a restart.
        assert_eq!(Cache::open(&private).unwrap().key, Cache::open(&private).unwrap().key);
        fs::remove_dir_all(&base).unwrap();
    }
}
