//! `zkrun cache`: list the compiled-code cache's entries, or prune it.
//!
//! `zkrun run` keeps the cache under `--cache-max-size` by itself; this is
//! for an operator who wants to see what it holds, or to empty it.

use std::path::PathBuf;

use super::{exit, output, settings};
use crate::plugin::{Cache, DEFAULT_CACHE_MAX_SIZE};

/// What `zkrun cache` does.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Action {
    /// One line per entry, least recently used first, and the total.
    #[default]
    List,
    /// Remove least recently used entries until the rest fit `--max-size`.
    Prune,
}

/// `zkrun cache` arguments.
#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    /// list (the default) or prune
    #[arg(value_enum, default_value_t)]
    action: Action,
    /// The cache directory [default: as `zkrun run`'s: $CACHE_DIRECTORY, else $XDG_CACHE_HOME/zkrun, else ~/.cache/zkrun]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// prune: what may stay, e.g. 100MiB; 0 empties the cache [default: 512MiB]
    #[arg(long, value_name = "SIZE", value_parser = settings::parse_bytes)]
    max_size: Option<usize>,
}

/// Runs `zkrun cache`; returns the exit code.
pub fn command(args: CacheArgs) -> u8 {
    let Some(dir) = args.cache_dir.or_else(crate::plugin::default_cache_dir) else {
        eprintln!("zkrun: no cache directory: give --cache-dir (HOME is not set)");
        return exit::USAGE;
    };
    if !dir.exists() {
        let _ = output::print(&format!("{}: no cache (nothing compiled yet)\n", dir.display()));
        return exit::OK;
    }
    let cache = match Cache::open(&dir) {
        Ok(cache) => cache,
        Err(why) => {
            eprintln!("zkrun: cannot use the cache: {why}");
            return exit::USAGE;
        }
    };
    let mut text = String::new();
    match args.action {
        Action::List => {
            let entries = cache.entries();
            for e in &entries {
                let name = e.path.file_name().unwrap_or_default().to_string_lossy();
                let used = humantime::format_rfc3339_seconds(e.used);
                text.push_str(&format!("{:>12}  {used}  {name}\n", e.size));
            }
            let total: u64 = entries.iter().map(|e| e.size).sum();
            text.push_str(&format!(
                "{total} bytes in {} entries in {} (zkrun run keeps it under --cache-max-size, default {} bytes)\n",
                entries.len(),
                dir.display(),
                DEFAULT_CACHE_MAX_SIZE
            ));
        }
        Action::Prune => {
            let max = args.max_size.map_or(DEFAULT_CACHE_MAX_SIZE, |n| n as u64);
            let removed = cache.prune(max, None);
            let freed: u64 = removed.iter().map(|e| e.size).sum();
            let left = cache.entries();
            text.push_str(&format!(
                "removed {} entries ({freed} bytes); {} bytes in {} entries left (limit {max})\n",
                removed.len(),
                left.iter().map(|e| e.size).sum::<u64>(),
                left.len()
            ));
        }
    }
    match output::print(&text) {
        Ok(_) => exit::OK,
        Err(e) => {
            eprintln!("zkrun: {e}");
            exit::FAILURE
        }
    }
}
