//! `zkrun run` settings: flags override the configuration file, which
//! overrides the defaults. Every value is checked here, before anything
//! starts, so a typo is reported as a typo.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::security::{SecurityArgs, ZkSection};
use crate::election::timing::MIN_LEASE;
use crate::logging::LogFormat;
use crate::plugin::{
    DEFAULT_COMPILE_MEMORY_LIMIT, DEFAULT_COMPILE_TIMEOUT, DEFAULT_HOOK_TIMEOUT, DEFAULT_MAX_COMPONENT_SIZE,
    DEFAULT_MEMORY_LIMIT, DirGrant, Grants, HttpLimits, HttpPrefix,
};
use crate::schedule::{self, Cadence, CatchUp, OnInterrupted, Schedule};
use crate::state::StateQuota;
use crate::zkconnect::ZkAccess;
use crate::zkpath::{self, ConnectString};

/// The default election path.
pub const DEFAULT_ELECTION: &str = "/zkrun/election";
/// The default ensemble, when neither `--zk`, the file nor `$ZOOKEEPER_SERVERS` say.
pub const DEFAULT_ZK: &str = "127.0.0.1:2181";
/// The default tick interval.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);
/// The default requested session timeout.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `zkrun run` needs, resolved and checked.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// The plugin file.
    pub plugin: PathBuf,
    /// The ensemble.
    pub zk: ConnectString,
    /// Credentials, TLS and the ACL of the nodes we create.
    pub zk_access: ZkAccess,
    /// The election path.
    pub election: String,
    /// This participant's id.
    pub id: String,
    /// Interval between ticks.
    pub tick: Duration,
    /// The session timeout to request.
    pub session_timeout: Duration,
    /// The lease period leases and takeovers derive from; `None`: the
    /// session timeout.
    pub lease: Option<Duration>,
    /// Deadline of each hook.
    pub hook_timeout: Duration,
    /// Cap on plugin linear memory and tables, in bytes.
    pub memory_limit: usize,
    /// Largest component file accepted, in bytes.
    pub max_component_size: usize,
    /// Longest a component may take to compile.
    pub compile_timeout: Duration,
    /// Most resident memory the compiler child may use, in bytes.
    pub compile_memory_limit: u64,
    /// The compiled-code cache, if any.
    pub cache_dir: Option<PathBuf>,
    /// The most the cache's entries may take together, in bytes.
    pub cache_max_size: u64,
    /// Whether `--plugin` may be precompiled code.
    pub trust_precompiled: bool,
    /// Limits on the election's fenced state.
    pub state_quota: StateQuota,
    /// The plugin's configuration.
    pub plugin_config: BTreeMap<String, String>,
    /// What the plugin may reach.
    pub grants: Grants,
    /// Bounds on the plugin's HTTP requests.
    pub http_limits: HttpLimits,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter, e.g. `info`.
    pub log_level: String,
    /// Give up at start after this long without a session.
    pub connect_timeout: Option<Duration>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Run the job on a schedule's slots instead of every tick.
    pub schedule: Option<Schedule>,
    /// With `--plugin published`: how to follow the published plugin.
    pub follow: Option<crate::rollout::follow::FollowSettings>,
}

/// The `run` flags, as given (all optional: the file and defaults fill in).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RunArgs {
    /// The plugin: a WebAssembly component for the zkrun:plugin/job world.
    #[arg(long, value_name = "PATH")]
    pub plugin: Option<PathBuf>,
    /// ZooKeeper servers, `h1:2181,h2:2181,h3:2181[/chroot]` [default: $ZOOKEEPER_SERVERS, else 127.0.0.1:2181]
    #[arg(long, value_name = "HOSTS")]
    pub zk: Option<String>,
    /// Election path; every host running the same job must use the same one [default: /zkrun/election]
    #[arg(long, value_name = "PATH")]
    pub election: Option<String>,
    /// This participant's id [default: <hostname>-<pid>]
    #[arg(long, value_name = "NAME")]
    pub id: Option<String>,
    /// Interval between ticks, e.g. 1s, 250ms [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub tick: Option<Duration>,
    /// ZooKeeper session timeout to ask for (servers clamp it) [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub session_timeout: Option<Duration>,
    /// Lease period, shorter than the session timeout: the leader renews every sixth of it and a crashed leader is replaced after about 0.7 of it, e.g. 1s [default: the session timeout]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lease: Option<Duration>,
    /// Deadline of every hook call [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub hook_timeout: Option<Duration>,
    /// Cap on the plugin's linear memory and tables, e.g. 64MiB [default: 64MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<usize>,
    /// Largest component file accepted, e.g. 64MiB [default: 64MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_component_size: Option<usize>,
    /// Longest a component may take to compile (at start and on SIGHUP) [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub compile_timeout: Option<Duration>,
    /// Most memory the compiler may use (at start and on SIGHUP), e.g. 1GiB [default: 768MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub compile_memory_limit: Option<usize>,
    /// Compiled-code cache directory, private to this user [default: $CACHE_DIRECTORY, else $XDG_CACHE_HOME/zkrun, else ~/.cache/zkrun]
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    pub cache_dir: Option<PathBuf>,
    /// Most the compiled-code cache may hold; least recently used entries go first, e.g. 1GiB [default: 512MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub cache_max_size: Option<usize>,
    /// Compile the plugin at every start and reload, caching nothing
    #[arg(long)]
    pub no_cache: bool,
    /// Accept a plugin precompiled by `zkrun compile` (native code: only from a build you trust)
    #[arg(long)]
    pub trust_precompiled: bool,
    /// Most keys the election's fenced state may hold [default: 1000]
    #[arg(long, value_name = "N")]
    pub state_max_keys: Option<usize>,
    /// Most bytes the election's fenced state may hold, e.g. 8MiB [default: 8MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub state_max_bytes: Option<usize>,
    /// Most fenced-state writes per second [default: 100]
    #[arg(long, value_name = "N")]
    pub state_max_writes: Option<u32>,
    /// Most bytes of values written to the fenced state per second, e.g. 128KiB [default: 128KiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub state_max_bytes_per_second: Option<usize>,
    /// Plugin configuration entry (repeatable)
    #[arg(long = "plugin-config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub plugin_config: Vec<(String, String)>,
    /// Let the plugin see a host directory (repeatable); `:ro` for read-only
    #[arg(long = "grant-dir", value_name = "HOST:GUEST[:ro]", value_parser = parse_dir_grant)]
    pub grant_dir: Vec<DirGrant>,
    /// Let the plugin see an environment variable (repeatable); NAME alone passes zkrun's own value
    #[arg(long = "grant-env", value_name = "NAME[=VALUE]", value_parser = parse_env_grant)]
    pub grant_env: Vec<(String, String)>,
    /// Let the plugin's leader hooks send HTTP requests under this URL prefix (repeatable), e.g. https://api.example.com/v1/
    #[arg(long = "allow-http", value_name = "PREFIX", value_parser = parse_http_prefix)]
    pub allow_http: Vec<HttpPrefix>,
    /// Longest one HTTP request may take; never past the hook's deadline [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub http_timeout: Option<Duration>,
    /// Largest HTTP response body the plugin may read, e.g. 1MiB [default: 1MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub http_max_response: Option<usize>,
    /// Most HTTP requests one term may have in flight at once [default: 4]
    #[arg(long, value_name = "N")]
    pub http_max_in_flight: Option<usize>,
    /// Configuration file (TOML); flags override it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format [default: text]
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Log filter, e.g. info, debug, zkrun=debug [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Exit (code 4) if no ZooKeeper session is established this long after start [default: keep retrying]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address, e.g. 127.0.0.1:9464 [default: off]
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    #[command(flatten)]
    pub rollout: crate::rollout::follow::FollowArgs,
}

/// The schedule flags (issue 24; docs/schedules.md).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ScheduleArgs {
    /// Run the job once per slot of this cron schedule instead of every tick: 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or @hourly/@daily/@weekly/@monthly/@yearly
    #[arg(long, value_name = "CRON", conflicts_with = "every")]
    pub schedule: Option<String>,
    /// Run the job once per slot of this interval, aligned to the Unix epoch, e.g. 15m
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub every: Option<Duration>,
    /// IANA time zone the cron fields are read in, e.g. Europe/Berlin [default: UTC]
    #[arg(long, value_name = "ZONE")]
    pub timezone: Option<String>,
    /// How late a slot may still start; older unrun slots are recorded as missed [default: 1h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub catch_up: Option<Duration>,
    /// Which missed slots inside the catch-up window a new leader runs: latest, all or none [default: latest]
    #[arg(long, value_name = "POLICY")]
    pub catch_up_policy: Option<String>,
    /// A slot whose run was cut off (leader died, lease lapsed): retry (as the next attempt) or skip [default: retry]
    #[arg(long, value_name = "POLICY")]
    pub on_interrupted: Option<String>,
    /// Most attempts of one slot, the first run included [default: 3]
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Deadline of one scheduled run (instead of --hook-timeout) [default: 10m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub run_timeout: Option<Duration>,
}

impl ScheduleArgs {
    /// The schedule from flags alone (`zkrun schedule`).
    pub fn resolve_flags(self) -> Result<Option<Schedule>, String> {
        self.resolve(ScheduleSection::default(), &|what| what.to_string())
    }

    /// The schedule, if `--schedule` or `--every` (or the file's
    /// `[schedule]`) names one; flags override the file.
    fn resolve(
        self,
        file: ScheduleSection,
        in_file: &dyn Fn(&str) -> String,
    ) -> Result<Option<Schedule>, String> {
        let every = match (self.every, &file.every) {
            (Some(d), _) => Some(d),
            (None, Some(t)) if self.schedule.is_none() => {
                Some(parse_duration(t).map_err(|e| format!("{}: {e}", in_file("[schedule] every")))?)
            }
            _ => None,
        };
        let cron = self.schedule.or(if self.every.is_some() { None } else { file.cron });
        let cadence = match (cron, every) {
            (Some(_), Some(_)) => {
                return Err(format!("{}: give cron or every, not both", in_file("[schedule]")));
            }
            (Some(text), None) => schedule::parse_cron(&text)?,
            (None, Some(period)) if period < Duration::from_secs(1) => {
                return Err(format!(
                    "--every must be at least 1s, not {}",
                    humantime::format_duration(period)
                ));
            }
            (None, Some(period)) => Cadence::Every(period),
            (None, None) => {
                let stray = [
                    ("--timezone", self.timezone.is_some()),
                    ("--catch-up", self.catch_up.is_some()),
                    ("--catch-up-policy", self.catch_up_policy.is_some()),
                    ("--on-interrupted", self.on_interrupted.is_some()),
                    ("--max-attempts", self.max_attempts.is_some()),
                    ("--run-timeout", self.run_timeout.is_some()),
                ];
                if let Some((flag, _)) = stray.iter().find(|(_, given)| *given) {
                    return Err(format!("{flag} needs a schedule: add --schedule CRON or --every DURATION"));
                }
                return Ok(None);
            }
        };
        let file_duration = |text: Option<String>, what: &str| -> Result<Option<Duration>, String> {
            text.map(|t| parse_duration(&t).map_err(|e| format!("{}: {e}", in_file(what)))).transpose()
        };
        let catch_up = match self.catch_up {
            Some(d) => d,
            None => {
                file_duration(file.catch_up, "[schedule] catch-up")?.unwrap_or(schedule::DEFAULT_CATCH_UP)
            }
        };
        let run_timeout = match self.run_timeout {
            Some(d) => d,
            None => file_duration(file.run_timeout, "[schedule] run-timeout")?
                .unwrap_or(schedule::DEFAULT_RUN_TIMEOUT),
        };
        let policy =
            self.catch_up_policy.or(file.catch_up_policy).map(|p| schedule::parse_policy(&p)).transpose()?;
        let on_interrupted = self
            .on_interrupted
            .or(file.on_interrupted)
            .map(|p| schedule::parse_on_interrupted(&p))
            .transpose()?;
        let zone = self.timezone.or(file.timezone).unwrap_or_else(|| "UTC".to_string());
        Schedule::new(
            cadence,
            &zone,
            catch_up,
            policy.unwrap_or(CatchUp::Latest),
            on_interrupted.unwrap_or(OnInterrupted::Retry),
            self.max_attempts.or(file.max_attempts).unwrap_or(schedule::DEFAULT_MAX_ATTEMPTS),
            run_timeout,
        )
        .map(Some)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ScheduleSection {
    cron: Option<String>,
    every: Option<String>,
    timezone: Option<String>,
    catch_up: Option<String>,
    catch_up_policy: Option<String>,
    on_interrupted: Option<String>,
    max_attempts: Option<u32>,
    run_timeout: Option<String>,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    #[serde(default)]
    zk: ZkSection,
    election: Option<String>,
    id: Option<String>,
    tick: Option<String>,
    session_timeout: Option<String>,
    lease: Option<String>,
    connect_timeout: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    metrics: Option<String>,
    #[serde(default)]
    plugin: PluginSection,
    #[serde(default)]
    state: StateSection,
    #[serde(default)]
    schedule: ScheduleSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct StateSection {
    max_keys: Option<usize>,
    max_bytes: Option<String>,
    max_writes_per_second: Option<u32>,
    max_bytes_per_second: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PluginSection {
    path: Option<PathBuf>,
    hook_timeout: Option<String>,
    memory_limit: Option<String>,
    max_component_size: Option<String>,
    compile_timeout: Option<String>,
    compile_memory_limit: Option<String>,
    cache_dir: Option<PathBuf>,
    cache_max_size: Option<String>,
    #[serde(default)]
    trust_precompiled: bool,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    grants: GrantsSection,
    #[serde(default)]
    http: HttpSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct HttpSection {
    timeout: Option<String>,
    max_response: Option<String>,
    max_in_flight: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct GrantsSection {
    #[serde(default)]
    dirs: Vec<DirSection>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    http: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct DirSection {
    host: PathBuf,
    guest: String,
    #[serde(default)]
    read_only: bool,
}

impl RunArgs {
    /// Merges flags, file and defaults into checked settings.
    pub fn resolve(self) -> Result<RunSettings, String> {
        let (file, base) = match &self.config {
            None => (FileConfig::default(), PathBuf::from(".")),
            Some(path) => (read_file(path)?, path.parent().map(Path::to_path_buf).unwrap_or_default()),
        };
        let in_file =
            |what: &str| format!("{what} in {}", self.config.as_deref().unwrap_or(Path::new("")).display());

        let plugin = match (self.plugin, file.plugin.path) {
            (Some(path), _) => path,
            // Paths in the file are relative to the file.
            (None, Some(path)) => base.join(path),
            (None, None) => {
                return Err(
                    "no plugin given: use --plugin PATH (or `path` under [plugin] in --config)".into()
                );
            }
        };
        let zk_text = self
            .zk
            .or(file.zk.servers.clone())
            .or_else(|| std::env::var("ZOOKEEPER_SERVERS").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| DEFAULT_ZK.to_string());
        let zk = ConnectString::parse(&zk_text).map_err(|e| e.to_string())?;
        let zk_access = self.security.resolve(file.zk, &base)?;
        let election = self.election.or(file.election).unwrap_or_else(|| DEFAULT_ELECTION.to_string());
        zkpath::check_election_path(&election).map_err(|e| e.to_string())?;
        let id = self
            .id
            .or(file.id)
            .unwrap_or_else(|| format!("{}-{}", crate::election::node::hostname(), std::process::id()));
        if id.trim().is_empty() {
            return Err("the participant id must not be empty".into());
        }

        let duration = |flag: Option<Duration>, text: Option<String>, what: &str, default: Duration| match (
            flag, text,
        ) {
            (Some(d), _) => Ok(d),
            (None, Some(t)) => parse_duration(&t).map_err(|e| format!("{}: {e}", in_file(what))),
            (None, None) => Ok(default),
        };
        let tick = duration(self.tick, file.tick, "tick", DEFAULT_TICK)?;
        let session_timeout =
            duration(self.session_timeout, file.session_timeout, "session-timeout", DEFAULT_SESSION_TIMEOUT)?;
        let lease = match (self.lease, file.lease) {
            (Some(d), _) => Some(d),
            (None, Some(t)) => Some(parse_duration(&t).map_err(|e| format!("{}: {e}", in_file("lease")))?),
            (None, None) => None,
        };
        if let Some(lease) = lease {
            check_lease(lease, session_timeout)?;
        }
        let hook_timeout = duration(
            self.hook_timeout,
            file.plugin.hook_timeout,
            "[plugin] hook-timeout",
            DEFAULT_HOOK_TIMEOUT,
        )?;
        let connect_timeout = match (self.connect_timeout, file.connect_timeout) {
            (Some(d), _) => Some(d),
            (None, Some(t)) => {
                Some(parse_duration(&t).map_err(|e| format!("{}: {e}", in_file("connect-timeout")))?)
            }
            (None, None) => None,
        };
        let size = |flag: Option<usize>, text: Option<String>, what: &str, default: usize| match (flag, text)
        {
            (Some(n), _) => Ok(n),
            (None, Some(t)) => parse_size(&t).map_err(|e| format!("{}: {e}", in_file(what))),
            (None, None) => Ok(default),
        };
        let memory_limit =
            size(self.memory_limit, file.plugin.memory_limit, "[plugin] memory-limit", DEFAULT_MEMORY_LIMIT)?;
        let max_component_size = size(
            self.max_component_size,
            file.plugin.max_component_size,
            "[plugin] max-component-size",
            DEFAULT_MAX_COMPONENT_SIZE as usize,
        )?;
        let compile_memory_limit = size(
            self.compile_memory_limit,
            file.plugin.compile_memory_limit,
            "[plugin] compile-memory-limit",
            DEFAULT_COMPILE_MEMORY_LIMIT as usize,
        )? as u64;
        let compile_timeout = duration(
            self.compile_timeout,
            file.plugin.compile_timeout,
            "[plugin] compile-timeout",
            DEFAULT_COMPILE_TIMEOUT,
        )?;
        let cache_max_size = match (self.cache_max_size, file.plugin.cache_max_size) {
            (Some(n), _) => n as u64,
            (None, Some(t)) => {
                parse_bytes(&t).map_err(|e| format!("{}: {e}", in_file("[plugin] cache-max-size")))? as u64
            }
            (None, None) => crate::plugin::DEFAULT_CACHE_MAX_SIZE,
        };
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir
                .or(file.plugin.cache_dir.map(|d| base.join(d)))
                .or_else(crate::plugin::default_cache_dir)
        };
        let defaults = StateQuota::default();
        let state_quota = StateQuota {
            max_keys: self.state_max_keys.or(file.state.max_keys).unwrap_or(defaults.max_keys),
            max_bytes: size(
                self.state_max_bytes,
                file.state.max_bytes,
                "[state] max-bytes",
                defaults.max_bytes,
            )?,
            max_writes_per_second: self
                .state_max_writes
                .or(file.state.max_writes_per_second)
                .unwrap_or(defaults.max_writes_per_second),
            max_bytes_per_second: match (self.state_max_bytes_per_second, file.state.max_bytes_per_second) {
                (Some(n), _) => n,
                (None, Some(t)) => parse_bytes(&t)
                    .map_err(|e| format!("{}: {e}", in_file("[state] max-bytes-per-second")))?,
                (None, None) => defaults.max_bytes_per_second,
            },
        };
        if state_quota.max_writes_per_second == 0 {
            return Err("the state write rate must be at least 1 per second".into());
        }
        if state_quota.max_bytes_per_second == 0 {
            return Err("the state byte rate must be at least 1 byte per second".into());
        }

        let mut plugin_config = file.plugin.config;
        plugin_config.extend(self.plugin_config);

        let mut grants = Grants::default();
        for dir in file.plugin.grants.dirs {
            grants.dirs.push(DirGrant {
                host: base.join(dir.host),
                guest: dir.guest,
                read_only: dir.read_only,
            });
        }
        grants.dirs.extend(self.grant_dir);
        let mut env = file.plugin.grants.env;
        env.extend(self.grant_env);
        grants.env = env.into_iter().collect();
        for prefix in &file.plugin.grants.http {
            grants
                .http
                .push(prefix.parse().map_err(|e| format!("{}: {e}", in_file("[plugin.grants] http")))?);
        }
        grants.http.extend(self.allow_http);
        crate::plugin::check_cache_grants(cache_dir.as_deref(), Some(plugin.as_path()), &grants.dirs)?;
        let http_defaults = HttpLimits::default();
        let http_limits = HttpLimits {
            timeout: duration(
                self.http_timeout,
                file.plugin.http.timeout,
                "[plugin.http] timeout",
                http_defaults.timeout,
            )?,
            max_response_bytes: match (self.http_max_response, file.plugin.http.max_response) {
                (Some(n), _) => n as u64,
                (None, Some(t)) => parse_bytes(&t)
                    .map_err(|e| format!("{}: {e}", in_file("[plugin.http] max-response")))?
                    as u64,
                (None, None) => http_defaults.max_response_bytes,
            },
            max_in_flight: self
                .http_max_in_flight
                .or(file.plugin.http.max_in_flight)
                .unwrap_or(http_defaults.max_in_flight),
        };
        if http_limits.max_in_flight == 0 {
            return Err("at least 1 HTTP request must be allowed in flight".into());
        }
        for dir in &grants.dirs {
            if !dir.host.is_dir() {
                return Err(format!("granted directory {} does not exist", dir.host.display()));
            }
            if !dir.guest.starts_with('/') {
                return Err(format!(
                    "granted directory {} must be mounted at an absolute path, not {:?}",
                    dir.host.display(),
                    dir.guest
                ));
            }
        }

        let log_format = match (self.log_format, file.log_format) {
            (Some(f), _) => f.parse()?,
            (None, Some(f)) => f,
            (None, None) => LogFormat::Text,
        };
        let log_level = self.log_level.or(file.log_level).unwrap_or_else(|| "info".to_string());
        let metrics = match (self.metrics, file.metrics) {
            (Some(addr), _) => Some(addr),
            (None, Some(text)) => Some(
                text.parse()
                    .map_err(|e| format!("{}: {e}: {text:?} (try 127.0.0.1:9464)", in_file("metrics")))?,
            ),
            (None, None) => None,
        };

        let schedule = self.schedule.resolve(file.schedule, &in_file)?;

        // `--plugin published` follows `zkrun publish` (see rollout).
        let follow = if plugin.as_os_str() == crate::rollout::follow::PUBLISHED {
            Some(self.rollout.resolve()?)
        } else if !self.rollout.trust_key.is_empty() {
            return Err("--trust-key applies to --plugin published only".into());
        } else {
            None
        };
        Ok(RunSettings {
            follow,
            plugin,
            zk,
            zk_access,
            election,
            id,
            tick,
            session_timeout,
            lease,
            hook_timeout,
            memory_limit,
            max_component_size,
            compile_timeout,
            compile_memory_limit,
            cache_dir,
            cache_max_size,
            trust_precompiled: self.trust_precompiled || file.plugin.trust_precompiled,
            state_quota,
            plugin_config,
            grants,
            http_limits,
            log_format,
            log_level,
            connect_timeout,
            metrics,
            schedule,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read configuration {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let message = e.message().to_string();
        match e.span() {
            Some(span) => {
                let line = text[..span.start].matches('\n').count() + 1;
                format!("bad configuration {} line {line}: {message}", path.display())
            }
            None => format!("bad configuration {}: {message}", path.display()),
        }
    })
}

/// Checks a lease period against the session timeout asked for: shorter
/// (expiry must still bound everything), and long enough to be renewed.
fn check_lease(lease: Duration, session_timeout: Duration) -> Result<(), String> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if lease < MIN_LEASE {
        return Err(format!(
            "--lease {} is too short: at least {} (the leader renews it with a quorum write every sixth of it)",
            show(lease),
            show(MIN_LEASE)
        ));
    }
    if lease >= session_timeout {
        return Err(format!(
            "--lease {} must be shorter than the session timeout ({}); leave it out to derive it from the session timeout",
            show(lease),
            show(session_timeout)
        ));
    }
    Ok(())
}

/// Parses `1s`, `250ms`, `2m 30s`; zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("bad duration {text:?}: {e} (try 1s or 250ms)"))?;
    if d.is_zero() {
        return Err(format!("bad duration {text:?}: it must be more than zero"));
    }
    Ok(d)
}

/// Parses a plugin memory size: [`parse_bytes`], at least 1MiB.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let bytes = parse_bytes(text)?;
    if bytes < 1 << 20 {
        return Err(format!("bad size {text:?}: a plugin needs at least 1MiB"));
    }
    Ok(bytes)
}

/// Parses `64MiB`, `512KiB`, `1GiB`, `64M` or a number of bytes.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits.parse().map_err(|_| format!("bad size {text:?}: try 64MiB"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        other => return Err(format!("bad size {text:?}: unknown unit {other:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("bad size {text:?}: too large"))
}

fn parse_http_prefix(text: &str) -> Result<HttpPrefix, String> {
    text.parse()
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

fn parse_dir_grant(text: &str) -> Result<DirGrant, String> {
    let (rest, read_only) = match text.strip_suffix(":ro") {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    match rest.rsplit_once(':') {
        Some((host, guest)) if !host.is_empty() && guest.starts_with('/') => {
            Ok(DirGrant { host: PathBuf::from(host), guest: guest.to_string(), read_only })
        }
        _ => Err(format!("expected HOST:GUEST[:ro] with an absolute GUEST path, got {text:?}")),
    }
}

fn parse_env_grant(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!("expected NAME or NAME=VALUE, got {text:?}")),
        None => std::env::var(text)
            .map(|v| (text.to_string(), v))
            .map_err(|_| format!("--grant-env {text}: zkrun's environment has no {text}; give NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs { plugin: Some("job.wasm".into()), ..RunArgs::default() }
    }

    #[test]
    fn defaults_fill_in() {
        let s = args().resolve().unwrap();
        assert_eq!(s.election, DEFAULT_ELECTION);
        assert_eq!(s.tick, DEFAULT_TICK);
        assert_eq!(s.memory_limit, 64 << 20);
        assert_eq!(s.log_format, LogFormat::Text);
        assert!(s.id.contains('-'));
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("zkrun-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("zkrun.toml");
        std::fs::write(
            &file,
            r#"
zk = "a:1,b:2/app"
election = "/jobs/x"
tick = "250ms"
[plugin]
path = "jobs/heartbeat.wasm"
memory-limit = "32MiB"
[plugin.config]
greeting = "hi"
mode = "file"
"#,
        )
        .unwrap();
        let s = RunArgs {
            config: Some(file.clone()),
            election: Some("/jobs/y".into()),
            plugin_config: vec![("mode".into(), "flag".into())],
            ..RunArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.plugin, dir.join("jobs/heartbeat.wasm"));
        assert_eq!(s.zk.chroot.as_deref(), Some("/app"));
        assert_eq!(s.election, "/jobs/y");
        assert_eq!(s.tick, Duration::from_millis(250));
        assert_eq!(s.memory_limit, 32 << 20);
        assert_eq!(s.plugin_config["greeting"], "hi");
        assert_eq!(s.plugin_config["mode"], "flag");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lease_is_checked_against_the_session_timeout() {
        let s = args().resolve().unwrap();
        assert_eq!(s.lease, None);
        let with = |lease: &str, session: Option<&str>| {
            RunArgs {
                lease: Some(parse_duration(lease).unwrap()),
                session_timeout: session.map(|t| parse_duration(t).unwrap()),
                ..args()
            }
            .resolve()
        };
        assert_eq!(with("1s", Some("10s")).unwrap().lease, Some(Duration::from_secs(1)));
        assert_eq!(with("500ms", None).unwrap().lease, Some(Duration::from_millis(500)));
        let e = with("10s", Some("10s")).unwrap_err();
        assert!(e.contains("shorter than the session timeout (10s)") && !e.contains('\n'), "{e}");
        let e = with("12s", None).unwrap_err();
        assert!(e.contains("shorter than the session timeout"), "{e}");
        let e = with("200ms", Some("10s")).unwrap_err();
        assert!(e.contains("too short: at least 500ms"), "{e}");

        let dir = std::env::temp_dir().join(format!("zkrun-settings-lease-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("zkrun.toml");
        std::fs::write(&file, "session-timeout = \"6s\"\nlease = \"2s\"\n").unwrap();
        let s = RunArgs { config: Some(file.clone()), ..args() }.resolve().unwrap();
        assert_eq!((s.session_timeout, s.lease), (Duration::from_secs(6), Some(Duration::from_secs(2))));
        // The flag overrides the file, and is checked against its timeout.
        let e = RunArgs { config: Some(file.clone()), lease: Some(Duration::from_secs(7)), ..args() }
            .resolve()
            .unwrap_err();
        assert!(e.contains("--lease 7s must be shorter than the session timeout (6s)"), "{e}");
        std::fs::write(&file, "lease = \"soon\"\n").unwrap();
        let e = RunArgs { config: Some(file), ..args() }.resolve().unwrap_err();
        assert!(e.contains("lease in") && e.contains("bad duration"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/zkrun.toml");
        let s = RunArgs { config: Some(example), ..RunArgs::default() }.resolve().unwrap();
        assert_eq!(s.plugin, PathBuf::from("/opt/zkrun/jobs/heartbeat.wasm"));
        assert_eq!(s.zk.servers.len(), 3);
        assert_eq!(s.election, "/elections/nightly-report");
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.plugin_config["greeting"], "hello");
    }

    #[test]
    fn typos_are_reported_as_typos() {
        let dir = std::env::temp_dir().join(format!("zkrun-settings-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "zk = \"a:1\"\ntik = \"1s\"\n").unwrap();
        let e = RunArgs { config: Some(file), ..args() }.resolve().unwrap_err();
        assert!(e.contains("line 2") && e.contains("tik"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();

        let e = RunArgs { zk: Some("a:99999".into()), ..args() }.resolve().unwrap_err();
        assert!(e.contains("bad ZooKeeper connect string"), "{e}");
        let e = RunArgs { election: Some("nope".into()), ..args() }.resolve().unwrap_err();
        assert!(e.contains("bad election path"), "{e}");
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_key_value("=x").is_err());
        assert!(parse_dir_grant("/srv/x:/data:ro").unwrap().read_only);
        assert!(parse_dir_grant("/srv/x:data").is_err());
    }
}
