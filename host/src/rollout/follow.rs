//! The participant side of a rollout (`--plugin published`).
//!
//! A [`Follower`] holds a ZooKeeper session of its own (it must not slow
//! the election's) and watches the manifest. On a new current version it
//! fetches the chunks, checks size, SHA-256, the bad marks and, with
//! `--trust-key`, the signature; writes the component to a staging file;
//! compiles it in the background (the compiled cache applies, so the swap
//! itself is quick); says so in `E/plugin/ready/<id>`; then asks the
//! supervisor to reload, the same path as SIGHUP: a follower swaps at once,
//! the leader first waits (bounded) for every follower to be ready, then
//! swaps at a tick boundary keeping its term.
//!
//! A [`Guard`] watches the leader's plugin failures: too many for the
//! published version within the health window and the leader, before it
//! resigns, puts the previous version back into the manifest and marks the
//! failed one bad, in one transaction fenced by its election node.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{error, info, warn};
use zookeeper_client as zk;

use super::sign::TrustKeys;
use super::{FetchError, Manifest, Revert, Version, bad_dir, bad_path, manifest_path, ready_dir};
use crate::cli::settings::parse_duration;
use crate::election::{Election, Fence, Term, node};
use crate::plugin::Runtime;
use crate::supervisor::Signal;
use crate::zkconnect::ZkAccess;
use crate::zkpath::ConnectString;

/// `--plugin published`: the spelling that makes a participant follow.
pub const PUBLISHED: &str = "published";

/// Defaults of the rollout flags.
pub const DEFAULT_REVERT_AFTER: u32 = 1;
/// How long plugin failures count towards a revert.
pub const DEFAULT_HEALTH_WINDOW: Duration = Duration::from_secs(300);
/// How long a leader waits for its followers before it swaps anyway.
pub const DEFAULT_ROLLOUT_WAIT: Duration = Duration::from_secs(30);

/// The `run` flags of a participant that follows the published plugin.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct FollowArgs {
    /// Refuse a published plugin not signed (minisign) by a key in this file (repeatable)
    #[arg(long = "trust-key", value_name = "FILE")]
    pub trust_key: Vec<PathBuf>,
    /// With --plugin published: revert a new version after this many plugin failures on the leader within --health-window [default: 1]
    #[arg(long, value_name = "N")]
    pub revert_after: Option<u32>,
    /// With --plugin published: how long plugin failures count towards --revert-after [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_window: Option<Duration>,
    /// With --plugin published: how long the leader waits for its followers to have a new version ready before it swaps anyway [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub rollout_wait: Option<Duration>,
}

/// How a participant follows, resolved.
#[derive(Clone, Debug)]
pub struct FollowSettings {
    /// Keys a version must be signed by (none: not checked).
    pub trust: TrustKeys,
    /// Failures that revert a version.
    pub revert_after: u32,
    /// The window they count in.
    pub health_window: Duration,
    /// The leader's wait for its followers.
    pub rollout_wait: Duration,
}

impl FollowArgs {
    /// Checks the flags; `Err` is a one-line usage error.
    pub fn resolve(&self) -> Result<FollowSettings, String> {
        let revert_after = self.revert_after.unwrap_or(DEFAULT_REVERT_AFTER);
        if revert_after == 0 {
            return Err("--revert-after must be at least 1".into());
        }
        Ok(FollowSettings {
            trust: TrustKeys::load(&self.trust_key)?,
            revert_after,
            health_window: self.health_window.unwrap_or(DEFAULT_HEALTH_WINDOW),
            rollout_wait: self.rollout_wait.unwrap_or(DEFAULT_ROLLOUT_WAIT),
        })
    }
}

/// Follows the published plugin of one election.
pub struct Follower {
    client: zk::Client,
    connect: ConnectString,
    access: ZkAccess,
    session_timeout: Duration,
    election: String,
    id: String,
    settings: FollowSettings,
    limit: u64,
    staged: PathBuf,
    runtime: Arc<Runtime>,
    /// The SHA-256 of what was last handed to the supervisor.
    applied: Option<String>,
    /// A version refused once is not fetched again until the manifest changes.
    refused: Option<String>,
}

impl Follower {
    /// Connects, then waits until a version is published that passes every
    /// check, and stages it: the returned path is the plugin to start with.
    #[allow(clippy::too_many_arguments, reason = "one call site")]
    pub async fn start(
        connect: ConnectString,
        access: ZkAccess,
        session_timeout: Duration,
        election: String,
        id: String,
        settings: FollowSettings,
        limit: u64,
        runtime: Arc<Runtime>,
    ) -> Result<(Follower, PathBuf), String> {
        let client =
            super::publish::connect(&connect, &access, session_timeout, Duration::from_secs(30)).await?;
        let dir = std::env::temp_dir().join(format!("zkrun-published-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let staged = dir.join("job.wasm");
        let mut follower = Follower {
            client,
            connect,
            access,
            session_timeout,
            election,
            id,
            settings,
            limit,
            staged,
            runtime,
            applied: None,
            refused: None,
        };
        let mut waiting_logged = false;
        loop {
            let changed = match follower.client.get_and_watch_data(&manifest_path(&follower.election)).await {
                Ok((data, _, watcher)) => {
                    if let Some(version) = follower.stage(&data).await {
                        follower.applied = Some(version.sha256);
                        let staged = follower.staged.clone();
                        return Ok((follower, staged));
                    }
                    watcher
                }
                Err(zk::Error::NoNode) => {
                    match follower.client.check_and_watch_stat(&manifest_path(&follower.election)).await {
                        Ok((Some(_), _)) => continue,
                        Ok((None, watcher)) => {
                            if !std::mem::replace(&mut waiting_logged, true) {
                                info!(
                                    event = "rollout_waiting",
                                    election = follower.election,
                                    "no plugin is published yet: waiting for `zkrun publish`"
                                );
                            }
                            watcher
                        }
                        Err(e) => {
                            return Err(format!("cannot watch {}: {e}", manifest_path(&follower.election)));
                        }
                    }
                }
                Err(e) => return Err(format!("cannot read {}: {e}", manifest_path(&follower.election))),
            };
            changed.changed().await;
        }
    }

    /// Follows the manifest for as long as the process runs: every new
    /// version that passes is staged and `Reload` sent to the supervisor.
    pub fn spawn(mut self, election: Election, reload: mpsc::UnboundedSender<Signal>) {
        tokio::spawn(async move {
            loop {
                let changed = match self.client.get_and_watch_data(&manifest_path(&self.election)).await {
                    Ok((data, _, watcher)) => {
                        if let Some(version) = self.stage(&data).await {
                            self.swap(&version, &election, &reload).await;
                        }
                        Some(watcher)
                    }
                    Err(zk::Error::NoNode) => {
                        match self.client.check_and_watch_stat(&manifest_path(&self.election)).await {
                            Ok((None, watcher)) => Some(watcher),
                            _ => None,
                        }
                    }
                    Err(e) => {
                        warn!(event = "rollout_watch_failed", error = %e, "cannot read the published manifest; retrying");
                        None
                    }
                };
                match changed {
                    Some(watcher) => {
                        watcher.changed().await;
                    }
                    None => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        self.reconnect_if_lost().await;
                    }
                }
                if reload.is_closed() {
                    return;
                }
            }
        });
    }

    async fn reconnect_if_lost(&mut self) {
        if !self.client.state().is_terminated() {
            return;
        }
        match super::publish::connect(
            &self.connect,
            &self.access,
            self.session_timeout,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(client) => self.client = client,
            Err(e) => warn!(
                event = "rollout_watch_failed",
                error = e,
                "cannot reconnect to follow the published plugin"
            ),
        }
    }

    /// Checks and stages the manifest's current version if it is new;
    /// `Some` when it is staged and compiled, ready to swap in.
    async fn stage(&mut self, data: &[u8]) -> Option<Version> {
        let manifest = match Manifest::parse(data) {
            Ok(manifest) => manifest,
            Err(e) => {
                error!(event = "rollout_refused", id = self.id, error = e, "{e}");
                return None;
            }
        };
        let version = manifest.current;
        if self.applied.as_deref() == Some(version.sha256.as_str())
            || self.refused.as_deref() == Some(version.sha256.as_str())
        {
            return None;
        }
        if let Err(reason) = self.check(&version).await {
            self.refused = Some(version.sha256.clone());
            error!(
                event = "rollout_refused",
                id = self.id,
                version = version.version,
                sha256 = version.sha256,
                reason,
                "published plugin refused: {reason}; the running plugin carries on"
            );
            return None;
        }
        self.refused = None;
        info!(
            event = "rollout_ready",
            id = self.id,
            version = version.version,
            sha256 = version.sha256,
            label = version.label.as_deref().unwrap_or(""),
            "published plugin fetched, verified and compiled"
        );
        self.report_ready(&version).await;
        Some(version)
    }

    /// Every check a version must pass before it may run here; `Err` is
    /// one line.
    async fn check(&self, version: &Version) -> Result<(), String> {
        match self.client.check_stat(&bad_path(&self.election, &version.sha256)).await {
            Ok(Some(_)) => {
                return Err(format!(
                    "{} is marked bad (reverted); publish it again to use it",
                    version.version
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot read the bad marks: {e}")),
        }
        let bytes = super::fetch(&self.client, &self.election, version, self.limit)
            .await
            .map_err(|e: FetchError| e.to_string())?;
        if !self.settings.trust.is_empty() {
            self.settings
                .trust
                .verify(&bytes, version.signature.as_deref())
                .map_err(|reason| format!("{} refused: {reason}", version.version))?;
        }
        write_atomically(&self.staged, &bytes)?;
        // Compile now, off the async threads: the supervisor's reload then
        // finds it in the cache, and a version that does not compile is
        // refused here, before anything swaps.
        let (runtime, path) = (self.runtime.clone(), self.staged.clone());
        let (done, compiled) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("zkrun-rollout-compile".into())
            .spawn(move || {
                let _ = done.send(runtime.load(&path).map(|_| ()).map_err(|e| e.to_string()));
            })
            .map_err(|e| format!("cannot start the compile thread: {e}"))?;
        match compiled.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{} does not load: {e}", version.version)),
            Err(_) => Err("the compile thread ended without an answer".into()),
        }
    }

    async fn report_ready(&self, version: &Version) {
        let dir = ready_dir(&self.election);
        let path = format!("{dir}/{}", self.id.replace('/', "_"));
        let data = serde_json::json!({ "version": version.version, "sha256": version.sha256 }).to_string();
        let acl = self.access.acl.clone();
        if self.client.mkdir(&dir, &acl.persistent()).await.is_err() {
            return;
        }
        match self.client.set_data(&path, data.as_bytes(), None).await {
            Ok(_) => {}
            Err(zk::Error::NoNode) => {
                let _ = self.client.create(&path, data.as_bytes(), &acl.ephemeral()).await;
            }
            Err(_) => {}
        }
    }

    /// Hands a staged version to the supervisor: followers at once, the
    /// leader once its followers are ready (or the wait is over).
    async fn swap(&mut self, version: &Version, election: &Election, reload: &mpsc::UnboundedSender<Signal>) {
        if election.confirmed().is_some() {
            let deadline = Instant::now() + self.settings.rollout_wait;
            let mut waiting = usize::MAX;
            while Instant::now() < deadline {
                waiting = self.followers_not_ready(&version.sha256).await;
                if waiting == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            info!(
                event = "rollout_leader_swap",
                id = self.id,
                version = version.version,
                followers_not_ready = if waiting == usize::MAX { 0 } else { waiting },
                "followers have swapped (or the wait is over): the leader swaps at the next tick boundary"
            );
        }
        self.applied = Some(version.sha256.clone());
        let _ = reload.send(Signal::Reload);
    }

    /// How many other participants have not reported `sha256` ready.
    async fn followers_not_ready(&self, sha256: &str) -> usize {
        let Ok(children) = self.client.list_children(&self.election).await else { return usize::MAX };
        let others = node::in_order(&children).len().saturating_sub(1);
        let Ok(ready) = self.client.list_children(&ready_dir(&self.election)).await else { return others };
        let own = self.id.replace('/', "_");
        let mut count = 0;
        for name in ready.iter().filter(|name| **name != own) {
            if let Ok((data, _)) =
                self.client.get_data(&format!("{}/{name}", ready_dir(&self.election))).await
                && serde_json::from_slice::<serde_json::Value>(&data)
                    .ok()
                    .and_then(|v| v.get("sha256").and_then(|s| s.as_str().map(str::to_string)))
                    .as_deref()
                    == Some(sha256)
            {
                count += 1;
            }
        }
        others.saturating_sub(count)
    }
}

impl Drop for Follower {
    /// The staging directory is this process's alone: gone with it.
    fn drop(&mut self) {
        if let Some(dir) = self.staged.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let staging = path.with_extension("wasm.part");
    std::fs::write(&staging, bytes)
        .and_then(|()| std::fs::rename(&staging, path))
        .map_err(|e| format!("cannot stage the plugin at {}: {e}", path.display()))
}

/// Counts the leader's plugin failures and reverts the published version
/// when they pass the limit.
#[derive(Debug)]
pub struct Guard {
    election: String,
    id: String,
    revert_after: u32,
    window: Duration,
    failures: Mutex<VecDeque<(Instant, String)>>,
}

impl Guard {
    /// A guard for this participant of `election`.
    pub fn new(election: String, id: String, settings: &FollowSettings) -> Arc<Guard> {
        Arc::new(Guard {
            election,
            id,
            revert_after: settings.revert_after,
            window: settings.health_window,
            failures: Mutex::new(VecDeque::new()),
        })
    }

    /// The plugin with `sha256` failed on this leader in `term` (`fence`
    /// while it still leads). Reverts if that is one failure too many for
    /// the published version; `Some(reason)` if it did.
    pub async fn plugin_failed(
        &self,
        fence: Option<Fence>,
        term: Term,
        sha256: &str,
        why: &str,
    ) -> Option<String> {
        let count = {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            failures.retain(|(at, sha)| now.duration_since(*at) <= self.window && sha == sha256);
            failures.push_back((now, sha256.to_string()));
            failures.len() as u32
        };
        if count < self.revert_after {
            return None;
        }
        let Some(fence) = fence else {
            warn!(
                event = "revert_skipped",
                id = self.id,
                term = term.0,
                "a plugin failure would revert the published version, but this host no longer leads"
            );
            return None;
        };
        match self.revert(&fence, sha256, why).await {
            Ok(Some(revert)) => {
                self.failures.lock().unwrap_or_else(|p| p.into_inner()).clear();
                let reason = format!(
                    "{} failed on the leader {count} time(s) within {}: {}",
                    revert.version,
                    humantime::format_duration(self.window),
                    revert.reason
                );
                error!(
                    event = "rollout_reverted",
                    id = self.id,
                    term = term.0,
                    version = revert.version,
                    sha256,
                    reason,
                    "published plugin reverted: the fleet goes back to the previous version"
                );
                Some(reason)
            }
            Ok(None) => None,
            Err(e) => {
                error!(
                    event = "revert_failed",
                    id = self.id,
                    term = term.0,
                    error = e,
                    "cannot revert the published plugin: {e}"
                );
                None
            }
        }
    }

    /// One transaction: the leader's election node still exists, the
    /// manifest is the one read, the previous version becomes current and
    /// the failed one is marked bad. `Ok(None)`: nothing to revert (the
    /// failed plugin is not the published current one, or has no previous).
    async fn revert(&self, fence: &Fence, sha256: &str, why: &str) -> Result<Option<Revert>, String> {
        let client = &fence.client;
        let path = manifest_path(&self.election);
        let (data, stat) = match client.get_data(&path).await {
            Ok(found) => found,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(format!("cannot read {path}: {e}")),
        };
        let manifest = Manifest::parse(&data)?;
        if manifest.current.sha256 != sha256 {
            return Ok(None);
        }
        let Some(previous) = manifest.previous.clone() else {
            warn!(
                event = "revert_skipped",
                id = self.id,
                version = manifest.current.version,
                "the failing published version has no previous version to go back to"
            );
            return Ok(None);
        };
        let revert = Revert {
            version: manifest.current.version.clone(),
            sha256: sha256.to_string(),
            reason: why.lines().next().unwrap_or_default().to_string(),
            by: self.id.clone(),
            term: fence.term.0,
            at: super::now_rfc3339(),
        };
        let reverted =
            Manifest { current: previous, previous: Some(manifest.current), reverted: Some(revert.clone()) };
        client
            .mkdir(&bad_dir(&self.election), &fence.acl.persistent())
            .await
            .map_err(|e| format!("cannot create {}: {e}", bad_dir(&self.election)))?;
        let bad = serde_json::to_vec(&revert).expect("a revert serializes");
        let mut multi = client.new_multi_writer();
        multi
            .add_check_version(&fence.node_path, -1)
            .and_then(|()| multi.add_set_data(&path, &reverted.to_bytes(), Some(stat.version)))
            .and_then(|()| multi.add_create(&bad_path(&self.election, sha256), &bad, &fence.acl.persistent()))
            .map_err(|e| e.to_string())?;
        match multi.commit().await {
            Ok(_) => Ok(Some(revert)),
            Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => {
                Err("this host no longer leads (its election node is gone)".into())
            }
            Err(zk::MultiWriteError::OperationFailed { index: 1, .. }) => {
                Err("the manifest changed meanwhile (a publish or another revert)".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}
