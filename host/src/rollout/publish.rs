//! `zkrun publish`: store a component in the election's subtree (chunks
//! first, the manifest last, so no reader ever sees half a version),
//! `--list` what is published, `--rollback` to the previous version.
//!
//! The manifest is only ever replaced with a version check on what was
//! read, so two publishers racing cannot lose a version silently: the
//! second one is told to try again. Only the current and the previous
//! version are kept; older chunk directories (and those a killed publisher
//! left half-written) are pruned after the manifest is written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zookeeper_client as zk;

use super::{
    CHUNK_SIZE, DEFAULT_MAX_PUBLISHED, Manifest, Version, bad_dir, bad_path, chunk_path, manifest_path, root,
    version_path,
};
use crate::zkconnect::{NodeAcl, ZkAccess};
use crate::zkpath::ConnectString;

/// What `zkrun publish` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Publish this component.
    Publish {
        /// The component file.
        file: PathBuf,
        /// The operator's label.
        label: Option<String>,
        /// A minisign secret key to sign with.
        sign_key: Option<PathBuf>,
        /// A ready `.minisig` to attach instead.
        signature: Option<PathBuf>,
        /// The size limit.
        max_size: u64,
    },
    /// Print the manifest.
    List,
    /// Make the previous version current again.
    Rollback,
}

/// Connects one session (for `publish` and the followers), within `timeout`.
pub async fn connect(
    connect: &ConnectString,
    access: &ZkAccess,
    session_timeout: Duration,
    timeout: Duration,
) -> Result<zk::Client, String> {
    let connector = zk::Client::connector().with_session_timeout(session_timeout);
    let client =
        match tokio::time::timeout(timeout, access.connect(connector, &connect.servers_string())).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(format!("cannot reach ZooKeeper at {connect}: {e}")),
            Err(_) => {
                return Err(format!(
                    "cannot reach ZooKeeper at {connect}: no answer within {}",
                    humantime::format_duration(timeout)
                ));
            }
        };
    match &connect.chroot {
        None => Ok(client),
        Some(chroot) => client.chroot(chroot.as_str()).map_err(|_| format!("bad chroot {chroot}")),
    }
}

/// Runs `action` against `election`; `Ok` is what to print.
pub async fn run(
    client: &zk::Client,
    acl: &NodeAcl,
    election: &str,
    action: Action,
) -> Result<String, String> {
    match action {
        Action::Publish { file, label, sign_key, signature, max_size } => {
            publish(client, acl, election, &file, label, sign_key.as_deref(), signature.as_deref(), max_size)
                .await
        }
        Action::List => list(client, election).await,
        Action::Rollback => rollback(client, election).await,
    }
}

/// Reads the manifest and its version (for the compare-and-set).
pub async fn read_manifest(client: &zk::Client, election: &str) -> Result<Option<(Manifest, i32)>, String> {
    match client.get_data(&manifest_path(election)).await {
        Ok((data, stat)) => Ok(Some((Manifest::parse(&data)?, stat.version))),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", manifest_path(election))),
    }
}

fn denied(path: &str, e: zk::Error) -> String {
    match e {
        zk::Error::NoAuth => {
            format!(
                "not allowed to write {path}: publishing needs write access to the election's subtree (see --zk-auth)"
            )
        }
        e => format!("cannot write {path}: {e}"),
    }
}

#[allow(clippy::too_many_arguments, reason = "one call site, the flags as given")]
async fn publish(
    client: &zk::Client,
    acl: &NodeAcl,
    election: &str,
    file: &Path,
    label: Option<String>,
    sign_key: Option<&Path>,
    signature_file: Option<&Path>,
    max_size: u64,
) -> Result<String, String> {
    let size = std::fs::metadata(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?.len();
    if size > max_size {
        return Err(format!(
            "{} is {size} bytes, over the {max_size}-byte limit of published components (--max-component-size)",
            file.display()
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if !bytes.starts_with(b"\0asm") {
        return Err(format!("{} is not a WebAssembly file", file.display()));
    }
    let sha256 = super::sha256_hex(&bytes);
    let label_text = label.clone().unwrap_or_else(|| file.display().to_string());
    let signature = match (sign_key, signature_file) {
        (Some(key), _) => Some(super::sign::sign(&bytes, key, &label_text)?),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read signature {}: {e}", path.display()))?,
        ),
        (None, None) => None,
    };

    let found = read_manifest(client, election).await?;
    let number = found
        .as_ref()
        .map_or(1, |(m, _)| m.current.number.max(m.previous.as_ref().map_or(0, |p| p.number)) + 1);
    let name = format!("v{number}");
    let dir = version_path(election, &name);
    client.mkdir(&dir, &acl.persistent()).await.map_err(|e| denied(&dir, e))?;
    // Left over by a publisher killed half-way: never referenced, replace it.
    clear_children(client, &dir).await?;
    let chunks = bytes.chunks(CHUNK_SIZE).collect::<Vec<_>>();
    let writes: Vec<_> =
        chunks.iter().enumerate().map(|(i, chunk)| (chunk_path(election, &name, i as u32), chunk)).collect();
    let pending: Vec<_> =
        writes.iter().map(|(path, chunk)| client.create(path, chunk, &acl.persistent())).collect();
    for ((path, _), write) in writes.iter().zip(pending) {
        write.await.map_err(|e| denied(path, e))?;
    }
    // Re-published: a version marked bad may be loaded again.
    match client.delete(&bad_path(election, &sha256), None).await {
        Ok(()) | Err(zk::Error::NoNode) => {}
        Err(e) => return Err(denied(&bad_path(election, &sha256), e)),
    }
    let version = Version {
        version: name.clone(),
        number,
        sha256: sha256.clone(),
        size,
        chunks: chunks.len() as u32,
        label,
        published_at: super::now_rfc3339(),
        published_by: super::who(),
        signature,
    };
    let manifest = Manifest {
        current: version,
        previous: found.as_ref().map(|(m, _)| m.current.clone()),
        reverted: None,
    };
    // The manifest last: before this, no reader knows the version exists.
    let path = manifest_path(election);
    let written = match &found {
        Some((_, stat_version)) => {
            client.set_data(&path, &manifest.to_bytes(), Some(*stat_version)).await.map(|_| ())
        }
        None => client.create(&path, &manifest.to_bytes(), &acl.persistent()).await.map(|_| ()),
    };
    match written {
        Ok(()) => {}
        Err(zk::Error::BadVersion | zk::Error::NodeExists) => {
            return Err("another publish or a revert changed the manifest meanwhile; nothing was published, try again".into());
        }
        Err(e) => return Err(denied(&path, e)),
    }
    prune(client, election, &manifest).await;
    Ok(format!(
        "published {name} ({size} bytes, sha256 {sha256}, {} chunks{}) to {election}",
        chunks.len(),
        if manifest.current.signature.is_some() { ", signed" } else { "" }
    ))
}

async fn clear_children(client: &zk::Client, dir: &str) -> Result<(), String> {
    let children = client.list_children(dir).await.map_err(|e| format!("cannot read {dir}: {e}"))?;
    for child in children {
        let path = format!("{dir}/{child}");
        match client.delete(&path, None).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => return Err(denied(&path, e)),
        }
    }
    Ok(())
}

/// Deletes every version directory the manifest no longer names. Best
/// effort: a failure leaves garbage, never a broken version.
async fn prune(client: &zk::Client, election: &str, manifest: &Manifest) {
    let keep: Vec<&str> = std::iter::once(&manifest.current)
        .chain(manifest.previous.as_ref())
        .map(|v| v.version.as_str())
        .collect();
    let Ok(children) = client.list_children(&root(election)).await else { return };
    for child in children {
        let is_version =
            child.strip_prefix('v').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_version || keep.contains(&child.as_str()) {
            continue;
        }
        let dir = version_path(election, &child);
        if clear_children(client, &dir).await.is_ok() {
            let _ = client.delete(&dir, None).await;
        }
    }
}

async fn list(client: &zk::Client, election: &str) -> Result<String, String> {
    let Some((manifest, _)) = read_manifest(client, election).await? else {
        return Ok(format!("nothing is published under {election}\n"));
    };
    let mut out = String::new();
    let row = |role: &str, v: &Version| {
        format!(
            "{role:<9} {:<6} {:>10} {}  {}  {} by {}{}\n",
            v.version,
            v.size,
            &v.sha256[..v.sha256.len().min(16)],
            v.label.as_deref().unwrap_or("-"),
            v.published_at,
            v.published_by,
            if v.signature.is_some() { "  signed" } else { "" }
        )
    };
    out.push_str(&row("current", &manifest.current));
    if let Some(previous) = &manifest.previous {
        out.push_str(&row("previous", previous));
    }
    if let Some(r) = &manifest.reverted {
        out.push_str(&format!(
            "reverted  {} (sha256 {}) by {} in term {} at {}: {}\n",
            r.version, r.sha256, r.by, r.term, r.at, r.reason
        ));
    }
    if let Ok(bad) = client.list_children(&bad_dir(election)).await {
        for sha in bad {
            out.push_str(&format!("bad       {sha}\n"));
        }
    }
    Ok(out)
}

async fn rollback(client: &zk::Client, election: &str) -> Result<String, String> {
    let Some((manifest, stat_version)) = read_manifest(client, election).await? else {
        return Err(format!("nothing is published under {election}: nothing to roll back"));
    };
    let Some(previous) = manifest.previous.clone() else {
        return Err(format!(
            "{} is the only published version: nothing to roll back to",
            manifest.current.version
        ));
    };
    if let Ok(Some(_)) = client.check_stat(&bad_path(election, &previous.sha256)).await {
        return Err(format!(
            "the previous version {} is marked bad; publish it again to use it",
            previous.version
        ));
    }
    let rolled =
        Manifest { current: previous.clone(), previous: Some(manifest.current.clone()), reverted: None };
    let path = manifest_path(election);
    match client.set_data(&path, &rolled.to_bytes(), Some(stat_version)).await {
        Ok(_) => Ok(format!(
            "rolled back {election} from {} to {} (sha256 {})",
            manifest.current.version, previous.version, previous.sha256
        )),
        Err(zk::Error::BadVersion) => {
            Err("the manifest changed meanwhile; nothing was rolled back, try again".into())
        }
        Err(e) => Err(denied(&path, e)),
    }
}

/// The default size limit, for the flag's help.
pub const DEFAULT_LIMIT: u64 = DEFAULT_MAX_PUBLISHED;

/// `zkrun publish` flags.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The component to publish (not with --list or --rollback)
    #[arg(value_name = "PATH", required_unless_present_any = ["list", "rollback"])]
    pub file: Option<PathBuf>,
    /// ZooKeeper servers [default: $ZOOKEEPER_SERVERS, else 127.0.0.1:2181]
    #[arg(long, value_name = "HOSTS")]
    pub zk: Option<String>,
    /// Election path of the participants that follow [default: /zkrun/election]
    #[arg(long, value_name = "PATH")]
    pub election: Option<String>,
    /// A label shown by --list and in the participants' logs, e.g. v2.3
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Sign with this minisign secret key ($ZKRUN_SIGN_PASSWORD opens an encrypted one)
    #[arg(long, value_name = "FILE", conflicts_with = "signature")]
    pub sign_key: Option<PathBuf>,
    /// Attach this minisign signature (`minisign -Sm job.wasm` writes job.wasm.minisig)
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    /// Largest component accepted, e.g. 64MiB [default: 64MiB]
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::settings::parse_size)]
    pub max_component_size: Option<usize>,
    /// Show what is published: current, previous, reverted and bad versions
    #[arg(long, conflicts_with_all = ["file", "rollback"])]
    pub list: bool,
    /// Make the previous version current again
    #[arg(long, conflicts_with = "file")]
    pub rollback: bool,
    /// How long to try to reach the ensemble
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::settings::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    #[command(flatten)]
    pub security: crate::cli::security::SecurityArgs,
}

/// Runs `zkrun publish`; returns the exit code.
pub fn command(args: PublishArgs) -> u8 {
    use crate::cli::{exit, settings};
    let fail = |code: u8, message: &str| {
        eprintln!("zkrun: {message}");
        code
    };
    let zk_text = args
        .zk
        .clone()
        .or_else(|| std::env::var("ZOOKEEPER_SERVERS").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| settings::DEFAULT_ZK.to_string());
    let connect = match ConnectString::parse(&zk_text) {
        Ok(connect) => connect,
        Err(e) => return fail(exit::USAGE, &e.to_string()),
    };
    let election = args.election.clone().unwrap_or_else(|| settings::DEFAULT_ELECTION.to_string());
    if let Err(e) = crate::zkpath::check_election_path(&election) {
        return fail(exit::USAGE, &e.to_string());
    }
    let access = match args.security.clone().resolve(Default::default(), Path::new(".")) {
        Ok(access) => access,
        Err(e) => return fail(exit::USAGE, &e),
    };
    let action = if args.list {
        Action::List
    } else if args.rollback {
        Action::Rollback
    } else {
        Action::Publish {
            file: args.file.clone().expect("clap requires a file"),
            label: args.label.clone(),
            sign_key: args.sign_key.clone(),
            signature: args.signature.clone(),
            max_size: args.max_component_size.map_or(DEFAULT_LIMIT, |n| n as u64),
        }
    };
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = tokio.block_on(async {
        let client = connect_for_publish(&connect, &access, args.timeout).await?;
        run(&client, &access.acl, &election, action).await
    });
    match result {
        Ok(out) => {
            print!("{out}");
            if !out.ends_with('\n') {
                println!();
            }
            exit::OK
        }
        Err(e) if e.starts_with("cannot reach ZooKeeper") => fail(exit::UNREACHABLE, &e),
        Err(e) => fail(exit::FAILURE, &e),
    }
}

async fn connect_for_publish(
    connect: &ConnectString,
    access: &ZkAccess,
    timeout: Duration,
) -> Result<zk::Client, String> {
    super::publish::connect(connect, access, timeout.max(Duration::from_secs(4)), timeout).await
}

/// What `zkrun status` adds about the published plugin (empty if nothing is
/// published): the current version, who has it ready, and the last revert.
pub async fn status_lines(client: &zk::Client, election: &str) -> String {
    let Ok(Some((manifest, _))) = read_manifest(client, election).await else { return String::new() };
    let v = &manifest.current;
    let mut out = format!(
        "published: {} ({}, sha256 {})\n",
        v.version,
        v.label.as_deref().unwrap_or("no label"),
        &v.sha256[..v.sha256.len().min(16)]
    );
    if let Ok(ready) = client.list_children(&super::ready_dir(election)).await {
        for id in ready {
            if let Ok((data, _)) = client.get_data(&format!("{}/{id}", super::ready_dir(election))).await
                && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&data)
            {
                out.push_str(&format!("  {id} has {} ready\n", value["version"].as_str().unwrap_or("?")));
            }
        }
    }
    if let Some(r) = &manifest.reverted {
        out.push_str(&format!(
            "reverted: {} by {} in term {} at {}: {}\n",
            r.version, r.by, r.term, r.at, r.reason
        ));
    }
    out
}
