//! Fleet rollout: a component published once into the election's own
//! ZooKeeper subtree, followed by every participant started with
//! `--plugin published`, verified, swapped in (followers first, the leader
//! at a tick boundary, keeping its term) and reverted when it fails on the
//! leader. See `docs/rollout.md`.
//!
//! Layout under the election path `E`:
//!
//! | node                       | what it holds                                         |
//! |----------------------------|-------------------------------------------------------|
//! | `E/plugin/current`         | the [`Manifest`] (JSON): current and previous version |
//! | `E/plugin/v<N>/chunk-NNNN` | the component's bytes, [`CHUNK_SIZE`] per node        |
//! | `E/plugin/bad/<sha256>`    | a version the leader reverted, and why                |
//! | `E/plugin/ready/<id>`      | what a participant has compiled and ready (ephemeral) |
//!
//! - [`publish`]: `zkrun publish` (the only writer of the manifest, with the
//!   leader's fenced revert).
//! - [`follow`]: the participant side (fetch, verify, stage, swap, revert).
//! - [`sign`]: minisign signatures.

pub mod follow;
pub mod publish;
pub mod sign;

use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

/// Bytes per chunk node: well under ZooKeeper's 1 MB request limit
/// (`jute.maxbuffer`), with room for the request's own framing.
pub const CHUNK_SIZE: usize = 512 << 10;

/// The largest component `zkrun publish` accepts by default.
pub const DEFAULT_MAX_PUBLISHED: u64 = 64 << 20;

/// Where the published plugin lives under `election`.
pub fn root(election: &str) -> String {
    format!("{election}/plugin")
}

/// The manifest node.
pub fn manifest_path(election: &str) -> String {
    format!("{election}/plugin/current")
}

/// The directory of a version's chunks.
pub fn version_path(election: &str, version: &str) -> String {
    format!("{election}/plugin/{version}")
}

/// Chunk `index` of `version`.
pub fn chunk_path(election: &str, version: &str, index: u32) -> String {
    format!("{election}/plugin/{version}/chunk-{index:04}")
}

/// Where reverted versions are marked bad.
pub fn bad_dir(election: &str) -> String {
    format!("{election}/plugin/bad")
}

/// The bad mark of the version with `sha256`.
pub fn bad_path(election: &str, sha256: &str) -> String {
    format!("{election}/plugin/bad/{sha256}")
}

/// Where participants say what they have ready.
pub fn ready_dir(election: &str) -> String {
    format!("{election}/plugin/ready")
}

/// One published version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Its node name under `E/plugin`, e.g. `v7`.
    pub version: String,
    /// Its number (the `7` of `v7`), one more than the last published.
    pub number: u64,
    /// SHA-256 of the component, lowercase hex.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// How many chunk nodes hold it.
    pub chunks: u32,
    /// The operator's label, e.g. `nightly-2.3`.
    #[serde(default)]
    pub label: Option<String>,
    /// When it was published (RFC 3339, UTC).
    pub published_at: String,
    /// Who published it: `user@host`.
    pub published_by: String,
    /// A minisign signature of the component (the `.minisig` text).
    #[serde(default)]
    pub signature: Option<String>,
}

/// Why the fleet went back to the previous version without an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revert {
    /// The version that failed.
    pub version: String,
    /// Its SHA-256.
    pub sha256: String,
    /// What failed, one line.
    pub reason: String,
    /// The participant that led when it failed.
    pub by: String,
    /// The term it failed in.
    pub term: u64,
    /// When (RFC 3339, UTC).
    pub at: String,
}

/// The content of `E/plugin/current`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// What every participant should run.
    pub current: Version,
    /// What ran before: the target of `--rollback` and of a revert.
    #[serde(default)]
    pub previous: Option<Version>,
    /// Set when `current` is there because the version after it was reverted.
    #[serde(default)]
    pub reverted: Option<Revert>,
}

impl Manifest {
    /// Parses a manifest node's data.
    pub fn parse(data: &[u8]) -> Result<Manifest, String> {
        serde_json::from_slice(data).map_err(|e| format!("the published manifest is not valid: {e}"))
    }

    /// The manifest as node data.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest serializes")
    }
}

/// Now, as RFC 3339 in UTC to the second.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Why fetching a published version failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A chunk is missing, or ZooKeeper could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The node.
        path: String,
        /// What ZooKeeper said.
        error: zk::Error,
    },
    /// Over the participant's size limit.
    #[error("{version} is {size} bytes, over this host's --max-component-size of {limit} bytes")]
    TooLarge {
        /// The version.
        version: String,
        /// Its size, as the manifest says.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The bytes are not the ones the manifest names.
    #[error(
        "{version} refused: its chunks do not match the manifest ({found} bytes with sha256 {found_sha256}, the manifest says {size} bytes with sha256 {sha256})"
    )]
    Mismatch {
        /// The version.
        version: String,
        /// Size the manifest says.
        size: u64,
        /// SHA-256 the manifest says.
        sha256: String,
        /// Size found.
        found: u64,
        /// SHA-256 found.
        found_sha256: String,
    },
    /// The signature does not check out against the trust keys.
    #[error("{version} refused: {reason}")]
    Signature {
        /// The version.
        version: String,
        /// Why, one line.
        reason: String,
    },
}

/// Reads a version's chunks (pipelined: one round trip) and checks them
/// against the manifest: size and SHA-256; the caller checks signatures.
pub async fn fetch(
    client: &zk::Client,
    election: &str,
    version: &Version,
    limit: u64,
) -> Result<Vec<u8>, FetchError> {
    if version.size > limit {
        return Err(FetchError::TooLarge { version: version.version.clone(), size: version.size, limit });
    }
    let paths: Vec<String> = (0..version.chunks).map(|i| chunk_path(election, &version.version, i)).collect();
    let reads: Vec<_> = paths.iter().map(|p| client.get_data(p)).collect();
    let mut bytes = Vec::with_capacity(version.size as usize);
    for (path, read) in paths.iter().zip(reads) {
        let (data, _) = read.await.map_err(|error| FetchError::Read { path: path.clone(), error })?;
        bytes.extend_from_slice(&data);
        // A tampered chunk may be larger than announced: stop at the limit.
        if bytes.len() as u64 > limit {
            break;
        }
    }
    let found_sha256 = sha256_hex(&bytes);
    if bytes.len() as u64 != version.size || found_sha256 != version.sha256 {
        return Err(FetchError::Mismatch {
            version: version.version.clone(),
            size: version.size,
            sha256: version.sha256.clone(),
            found: bytes.len() as u64,
            found_sha256,
        });
    }
    Ok(bytes)
}

/// The lowercase hex SHA-256 of `bytes`, as the plugin cache names them.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `user@host`, for the manifest's `published_by`.
pub fn who() -> String {
    let user =
        std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", crate::election::node::hostname())
}
