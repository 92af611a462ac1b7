//! Fenced egress: the plugin's outgoing HTTP requests
//! (`wasi:http/outgoing-handler`), under the rules of every other leader
//! effect.
//!
//! - Nothing leaves unless the operator allowed its URL ([`HttpPrefix`]):
//!   with no grant, every request is refused in the guest.
//! - Nothing leaves without the permit: a request may only be sent from a
//!   leader hook (`on-elected`, `tick`) whose permit holds, and every write to
//!   its socket checks the permit again. Suspension, demotion, the hook's
//!   deadline, its end and shutdown drop the connection at once.
//! - Everything that leaves carries the fencing token: `zkrun-term`,
//!   `zkrun-election` and `zkrun-participant` are set by the host, replacing
//!   whatever the guest set, so a receiver can refuse a deposed leader. They
//!   cannot be shadowed: guest headers that name a stamp once `_` reads as
//!   `-` (as CGI/WSGI receivers fold them) are dropped, and so are the
//!   guest's trailers and its `Trailer` header.
//! - URLs are judged as servers read them ([`judge_path`]), and `Host` is
//!   rebuilt from the normalised host and port.
//! - Bounded: a per-request timeout (never past the hook's deadline), a cap
//!   on the response body, a cap on requests in flight per instance.
//!
//! Grants are by destination, so that raw TCP (`--allow-tcp host:port`) can
//! follow the same rules later: a [`Fence`] around the socket, the same
//! permit check on every write.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::Scheme;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::limits::{Gate, Stop};
use super::sandbox::LogContext;

/// Default per-request timeout (a request never outlives its hook either).
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on one response body.
pub const DEFAULT_HTTP_MAX_RESPONSE: u64 = 1 << 20;
/// Default cap on requests in flight at once, per instance.
pub const DEFAULT_HTTP_MAX_IN_FLIGHT: usize = 4;

/// The stamps every request carries.
pub const TERM_HEADER: &str = "zkrun-term";
/// See [`TERM_HEADER`].
pub const ELECTION_HEADER: &str = "zkrun-election";
/// See [`TERM_HEADER`].
pub const PARTICIPANT_HEADER: &str = "zkrun-participant";
/// The slot id of a scheduled run (`crate::schedule`), beside the term.
pub const SLOT_HEADER: &str = "zkrun-slot";

/// One destination the operator allows: scheme, host, port and a path
/// prefix, e.g. `https://api.example.com/v1/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpPrefix {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl FromStr for HttpPrefix {
    type Err = String;

    fn from_str(text: &str) -> Result<HttpPrefix, String> {
        let bad = |why: &str| format!("bad HTTP grant {text:?}: {why} (try https://api.example.com/v1/)");
        let uri: http::Uri = text.trim().parse().map_err(|e| bad(&format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => return Err(bad(&format!("scheme {other:?} is not http or https"))),
            None => return Err(bad("it needs a scheme")),
        };
        let authority = uri.authority().ok_or_else(|| bad("it needs a host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("it must not carry a user name or password"));
        }
        if uri.query().is_some() {
            return Err(bad("a grant is a prefix: it takes no query"));
        }
        let host = normal_host(authority.host());
        if host.is_empty() {
            return Err(bad("it needs a host"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = if uri.path().is_empty() { "/".to_string() } else { uri.path().to_string() };
        if let Err(why) = judge_path(&path) {
            return Err(bad(why));
        }
        Ok(HttpPrefix { https, host, port, path })
    }
}

impl fmt::Display for HttpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "{scheme}://{host}:{}{}", self.port, self.path)
    }
}

impl HttpPrefix {
    /// Whether this grant covers `uri`. A prefix path that does not end in
    /// `/` covers itself and what lies below it (`/v1` covers `/v1`, `/v1/x`
    /// and `/v1?q`, not `/v10`).
    fn covers(&self, uri: &http::Uri) -> bool {
        let https = uri.scheme() == Some(&Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = if uri.path().is_empty() { "/" } else { uri.path() };
        https == self.https
            && uri.host().map(normal_host).as_deref() == Some(self.host.as_str())
            && port == self.port
            && match path.strip_prefix(self.path.as_str()) {
                None => false,
                Some(rest) => self.path.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            }
    }
}

/// Hosts compare without case, and IPv6 literals without their brackets.
fn normal_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// Refuses a path that a server could read as something other than what
/// it says, so that the grant's prefix check means what it seems to:
/// `.`/`..` segments (plain or encoded), encoded separators and
/// backslashes, `;` parameters (Tomcat and Jetty strip them, `..;`
/// climbs), double (`%25`) and `%u` encoding, escapes that decode to
/// overlong or broken UTF-8 (`%c0%ae`) or to control bytes (`%00`),
/// malformed escapes, and empty segments (`//`). `Err` says why.
fn judge_path(path: &str) -> Result<(), &'static str> {
    let lower = path.to_ascii_lowercase();
    if lower.contains('\\') || lower.contains("%2f") || lower.contains("%5c") {
        return Err("the path has encoded separators or backslashes");
    }
    if lower.contains(';') || lower.contains("%3b") {
        return Err("the path has ; parameters, which servers strip");
    }
    if lower.contains("%25") {
        return Err("the path is percent-encoded twice (%25)");
    }
    if lower.contains("%u") {
        return Err("the path uses %u encoding");
    }
    if path.contains("//") {
        return Err("the path has empty segments (//)");
    }
    let decoded = percent_decode(path).ok_or("the path has a malformed % escape")?;
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err("the path has NUL or control bytes");
    }
    let text = std::str::from_utf8(&decoded).map_err(|_| "the path decodes to overlong or broken UTF-8")?;
    if text.split('/').any(|segment| segment == "." || segment == "..") {
        return Err("the path has . or .. segments");
    }
    Ok(())
}

/// `text` with its `%XX` escapes decoded; `None` if one is malformed.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Whether a guest header named `name` (lower case, as `http` keeps names)
/// would read as one of the stamps at a receiver that folds `_` into `-`
/// and ignores case, as CGI and WSGI do.
fn shadows_a_stamp(name: &str) -> bool {
    let folded = name.replace('_', "-");
    [TERM_HEADER, ELECTION_HEADER, PARTICIPANT_HEADER, SLOT_HEADER].contains(&folded.as_str())
}

/// The `Host` header for `uri`, from its normalised host and port (the
/// port left out when it is the scheme's default).
fn host_header(uri: &http::Uri) -> Option<HeaderValue> {
    let https = uri.scheme() == Some(&Scheme::HTTPS);
    let host = normal_host(uri.host()?);
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let value = match uri.port_u16() {
        Some(port) if port != if https { 443 } else { 80 } => format!("{host}:{port}"),
        _ => host,
    };
    HeaderValue::from_str(&value).ok()
}

/// How the plugin's requests are bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest one request may take, connecting to the end of its response
    /// body; the hook's deadline cuts it off earlier.
    pub timeout: Duration,
    /// Largest response body the plugin may read, in bytes.
    pub max_response_bytes: u64,
    /// Most requests one instance may have in flight at once.
    pub max_in_flight: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            timeout: DEFAULT_HTTP_TIMEOUT,
            max_response_bytes: DEFAULT_HTTP_MAX_RESPONSE,
            max_in_flight: DEFAULT_HTTP_MAX_IN_FLIGHT,
        }
    }
}

/// What the operator allows, shared by every instance.
#[derive(Clone, Debug, Default)]
pub struct HttpPolicy {
    /// The destinations allowed; empty allows none.
    pub allow: Vec<HttpPrefix>,
    /// The bounds of each request.
    pub limits: HttpLimits,
}

/// The term's stamps, set for each leader hook.
#[derive(Clone, Debug)]
pub struct Stamp {
    /// The fencing token.
    pub term: u64,
    /// The election path.
    pub election: String,
    /// This participant's id.
    pub participant: String,
}

/// One instance's side of `wasi:http`: decides, stamps and fences each
/// request the guest sends.
pub struct Egress {
    policy: Arc<HttpPolicy>,
    gate: Arc<Gate>,
    in_flight: Arc<Semaphore>,
    log: LogContext,
    /// The term's stamps, built at the instance's first leader hook (an
    /// instance serves one term, so they rarely change after).
    stamp: Option<Stamp>,
    /// The slot of the scheduled run in progress, if any.
    slot: Option<String>,
    /// Whether the running hook may send (`on-elected`, `tick`).
    may_send: bool,
    last_refusal_logged: Option<Instant>,
    refusals_unlogged: u64,
    /// The reasons refused for already logged by this instance: the first
    /// refusal for each reason is logged at once, whatever the rate limit.
    reasons_logged: Vec<String>,
}

/// How many distinct reasons an instance logs at once, at most.
const REASONS_LOGGED: usize = 16;

/// At most one `http_refused` line per instance this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl Egress {
    /// Egress for one instance, bounded by its gate.
    pub fn new(policy: Arc<HttpPolicy>, gate: Arc<Gate>, log: LogContext) -> Egress {
        let in_flight = Arc::new(Semaphore::new(policy.limits.max_in_flight));
        Egress {
            policy,
            gate,
            in_flight,
            log,
            stamp: None,
            slot: None,
            may_send: false,
            last_refusal_logged: None,
            refusals_unlogged: 0,
            reasons_logged: Vec::new(),
        }
    }

    /// Readies egress for the hook about to run: a leader hook, with its
    /// facts, may send; any other (`on-demoted`) may not. The stamps are
    /// rebuilt only when the facts differ, not on every tick.
    pub fn enter_hook(&mut self, leader: Option<&super::Facts>) {
        self.may_send = leader.is_some();
        if let Some(facts) = leader
            && !self.stamp.as_ref().is_some_and(|s| {
                s.term == facts.term && s.election == facts.election && s.participant == facts.participant
            })
        {
            self.stamp = Some(facts.stamp());
        }
    }

    /// Sets (or clears) the slot id stamped on requests as `zkrun-slot`.
    pub fn set_slot(&mut self, slot: Option<String>) {
        self.slot = slot;
    }

    /// Everything checked before a request may start: the permit, the grant,
    /// the in-flight cap. `Err` is what the guest sees, already logged.
    fn admit(
        &mut self,
        request: &mut http::Request<WasiBody>,
    ) -> Result<(Fence, OwnedSemaphorePermit, Duration), Error> {
        let url = request.uri().to_string();
        let Some(stamp) = self.stamp.clone().filter(|_| self.may_send) else {
            return Err(self.refuse(
                &url,
                "only on-elected and tick may send requests",
                Error::HttpRequestDenied,
            ));
        };
        let hook = self.gate.hook();
        let fence = match hook {
            Some(hook) if self.gate.leads() && self.gate.check_hook(hook).is_ok() => {
                Fence { gate: self.gate.clone(), hook }
            }
            _ => {
                return Err(self.refuse(
                    &url,
                    "leadership can no longer be confirmed",
                    Error::HttpRequestDenied,
                ));
            }
        };
        if self.policy.allow.is_empty() {
            return Err(self.refuse(
                &url,
                "no destination is allowed (see --allow-http)",
                Error::HttpRequestDenied,
            ));
        }
        if request.uri().authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(self.refuse(
                &url,
                "the URL carries a user name or password",
                Error::HttpRequestDenied,
            ));
        }
        if let Err(why) = judge_path(request.uri().path()) {
            return Err(self.refuse(&url, why, Error::HttpRequestDenied));
        }
        if !self.policy.allow.iter().any(|prefix| prefix.covers(request.uri())) {
            return Err(self.refuse(
                &url,
                "the URL is not under any --allow-http prefix",
                Error::HttpRequestDenied,
            ));
        }
        let Ok(slot) = self.in_flight.clone().try_acquire_owned() else {
            let why = format!("{} requests are in flight already", self.policy.limits.max_in_flight);
            return Err(self.refuse(&url, &why, Error::ConnectionLimitReached));
        };
        let host = host_header(request.uri()).ok_or(Error::HttpRequestUriInvalid)?;
        let headers = request.headers_mut();
        // Nothing the guest sends may read as a stamp at the receiver.
        let shadows: Vec<HeaderName> =
            headers.keys().filter(|name| shadows_a_stamp(name.as_str())).cloned().collect();
        for name in shadows {
            headers.remove(name);
        }
        headers.remove(http::header::TRAILER);
        headers.insert(http::header::HOST, host);
        let slot_stamp = self.slot.clone().map(|slot| (SLOT_HEADER, slot));
        for (name, value) in [
            (TERM_HEADER, stamp.term.to_string()),
            (ELECTION_HEADER, stamp.election),
            (PARTICIPANT_HEADER, stamp.participant),
        ]
        .into_iter()
        .chain(slot_stamp)
        {
            // `insert` replaces every value the guest may have set.
            let value = HeaderValue::from_str(&value)
                .map_err(|_| Error::InternalError(Some(format!("zkrun cannot stamp {name}"))))?;
            headers.insert(HeaderName::from_static(name), value);
        }
        // No trailers at all: a receiver may read them as headers.
        let body = std::mem::take(request.body_mut());
        *request.body_mut() = body.map_frame(without_trailers).boxed_unsync();
        let limit = self.policy.limits.timeout.min(self.gate.remaining());
        Ok((fence, slot, limit))
    }

    /// Logs a refusal (the first for each reason at once, then at most one
    /// line a second per instance, counting the rest: a plugin looping on
    /// refused requests cannot flood the log) and returns what the guest sees.
    fn refuse(&mut self, url: &str, why: &str, error: Error) -> Error {
        let now = Instant::now();
        let new_reason =
            self.reasons_logged.len() < REASONS_LOGGED && !self.reasons_logged.iter().any(|r| r == why);
        if new_reason {
            self.reasons_logged.push(why.to_string());
        } else if self.last_refusal_logged.is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_INTERVAL) {
            self.refusals_unlogged += 1;
            return error;
        }
        self.last_refusal_logged = Some(now);
        let also = std::mem::take(&mut self.refusals_unlogged);
        // The URL is the guest's: through the one door.
        let url = crate::text::guest(url, crate::text::MAX_NAME * 8);
        tracing::warn!(
            event = "http_refused",
            plugin = &*self.log.plugin,
            id = &*self.log.participant,
            term = self.log.term,
            url,
            also_refused = also,
            "an HTTP request was refused: {why}"
        );
        error
    }
}

/// A body frame as it may leave: trailers become an empty data frame.
fn without_trailers(frame: Frame<Bytes>) -> Frame<Bytes> {
    if frame.is_trailers() { Frame::data(Bytes::new()) } else { frame }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Egress {
    /// Small writes, so an unsent body holds little (see `held.rs`).
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        super::held::BODY_CHUNK
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        let admitted = self.admit(&mut request);
        let max_response = self.policy.limits.max_response_bytes;
        let log = self.log.clone();
        Box::new(async move {
            let (fence, slot, limit) = admitted?;
            let deadline = tokio::time::Instant::now() + limit;
            let answered = Arc::new(AtomicBool::new(false));
            let flight = InFlight {
                fence: fence.clone(),
                log,
                url: crate::text::guest(&request.uri().to_string(), crate::text::MAX_NAME * 8),
                _slot: slot,
                answered: answered.clone(),
                over: false,
            };
            let exchange = tokio::select! {
                result = tokio::time::timeout_at(deadline, send(request, options, fence.clone())) => {
                    result.map_err(|_| Error::ConnectionTimeout).and_then(|sent| sent)
                }
                stop = fence.stopped() => Err(cut_off(&stop)),
            };
            let (response, connection) = match exchange {
                Ok(sent) => sent,
                Err(error) => {
                    flight.end(Some(&error));
                    return Err(error);
                }
            };
            let response = response.map(|incoming| {
                FencedBody { inner: incoming, fence: fence.clone(), read: 0, max: max_response, answered }
                    .boxed_unsync()
            });
            // The connection (and the response body with it) lives until the
            // exchange is over, the timeout passes or the fence closes.
            let connection = async move {
                let result = tokio::select! {
                    result = tokio::time::timeout_at(deadline, connection) => {
                        result.map_err(|_| Error::ConnectionTimeout).and_then(|done| done.map_err(Error::from))
                    }
                    stop = fence.stopped() => Err(cut_off(&stop)),
                };
                flight.end(result.as_ref().err());
                result
            };
            Ok((response, Box::new(connection) as Box<dyn Future<Output = Result<(), Error>> + Send>))
        })
    }
}

/// A request from its admission until its connection is over. Dropped
/// before that (cut off by its fence, or abandoned with its instance), it
/// says so in one log line.
struct InFlight {
    fence: Fence,
    log: LogContext,
    url: String,
    /// Its place under the in-flight cap, given back on drop.
    _slot: OwnedSemaphorePermit,
    /// Set once the guest has read the whole response: closing the idle
    /// connection after that cuts nothing off.
    answered: Arc<AtomicBool>,
    over: bool,
}

impl InFlight {
    /// The request is over: done, failed, or (if `error` is the fence's) cut off.
    fn end(mut self, error: Option<&Error>) {
        self.over = !error.is_some_and(is_cut_off);
        if let Some(error) = error.filter(|_| self.over) {
            tracing::debug!(
                event = "http_failed",
                plugin = &*self.log.plugin,
                term = self.log.term,
                url = self.url,
                "an HTTP request failed: {error}"
            );
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.over || self.answered.load(Ordering::Acquire) {
            return;
        }
        let why = match self.fence.check() {
            Err(stop) => describe(&stop),
            Ok(()) => "its instance was dropped".into(),
        };
        tracing::info!(
            event = "http_aborted",
            plugin = &*self.log.plugin,
            id = &*self.log.participant,
            term = self.log.term,
            url = self.url,
            "an HTTP request in flight was cut off: {why}"
        );
    }
}

/// The error a guest sees when its request is cut off by the fence.
fn cut_off(stop: &Stop) -> Error {
    Error::InternalError(Some(format!("{CUT_OFF}: {}", describe(stop))))
}

const CUT_OFF: &str = "zkrun cut the request off";

fn is_cut_off(error: &Error) -> bool {
    matches!(error, Error::InternalError(Some(message)) if message.starts_with(CUT_OFF))
}

fn describe(stop: &Stop) -> String {
    match stop {
        // The gate says `Interrupted` once the hook that sent it is over too.
        Stop::Interrupted => "its hook ended, or leadership ended".into(),
        other => format!("its hook {other}"),
    }
}

/// Connects (through the fence), sends `request` and returns the response
/// head with the future that drives the connection. The guest's own
/// connect and first-byte timeouts apply within the host's.
async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    fence: Fence,
) -> Result<(http::Response<hyper::body::Incoming>, impl Future<Output = Result<(), hyper::Error>>), Error> {
    let uri = request.uri().clone();
    let https = uri.scheme() == Some(&Scheme::HTTPS);
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let options = options.unwrap_or_default();
    let address = (normal_host(&host), port);
    let connect = TcpStream::connect((address.0.as_str(), address.1));
    let tcp = match options.connect_timeout {
        Some(limit) => tokio::time::timeout(limit, connect).await.map_err(|_| Error::ConnectionTimeout)?,
        None => connect.await,
    }
    .map_err(connect_error)?;
    // Latency matters more than packing here: a small JSON POST per tick.
    let _ = tcp.set_nodelay(true);
    let socket = Fenced { inner: tcp, fence };
    let stream: Pin<Box<dyn Stream>> = if https {
        let name = rustls::pki_types::ServerName::try_from(normal_host(&host))
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let tls =
            tokio_rustls::TlsConnector::from(tls_config()).connect(name, socket).await.map_err(tls_error)?;
        Box::pin(tls)
    } else {
        Box::pin(socket)
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(Error::from)?;
    // The request line carries the path only: the authority is in `Host`.
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;
    let mut connection = Box::pin(connection);
    let mut sending = Box::pin(sender.send_request(request));
    let first_byte = async {
        match options.first_byte_timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let response = tokio::select! {
        biased;
        response = &mut sending => response?,
        finished = &mut connection => {
            finished?;
            // The connection finished first (the server closed it after its
            // response): the response is there to take.
            sending.await?
        }
        () = first_byte => return Err(Error::ConnectionReadTimeout),
    };
    Ok((response, connection))
}

trait Stream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Stream for T {}

/// TLS with the bundled Mozilla roots: no trust store on disk needed, the
/// same on every host.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("aws-lc-rs supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

fn connect_error(error: io::Error) -> Error {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
        io::ErrorKind::TimedOut => Error::ConnectionTimeout,
        _ if error.to_string().contains("failed to lookup address") => {
            Error::DnsError { rcode: Some(error.to_string()), info_code: None }
        }
        _ => Error::Connect(error),
    }
}

fn tls_error(error: io::Error) -> Error {
    match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => Error::TlsCertificateError,
        Some(rustls::Error::AlertReceived(alert)) => Error::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        _ => Error::Tls(error),
    }
}

/// The hook a request belongs to: it may go on while that hook runs with a
/// holding permit, and no longer.
#[derive(Clone)]
struct Fence {
    gate: Arc<Gate>,
    hook: u64,
}

impl Fence {
    fn check(&self) -> Result<(), Stop> {
        self.gate.check_hook(self.hook)
    }

    async fn stopped(&self) -> Stop {
        self.gate.stopped_hook(self.hook).await
    }
}

/// A socket that refuses to write once its fence closes: no byte of a
/// request leaves after its hook ended or its permit lapsed, even if the
/// task driving it runs before the watchdog does.
struct Fenced<S> {
    inner: S,
    fence: Fence,
}

impl<S: AsyncRead + Unpin> AsyncRead for Fenced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Fenced<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Err(stop) = self.fence.check() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, stop)));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that ends in an error past its size cap or once its
/// fence closes, so the guest never waits on a request that is over.
struct FencedBody {
    inner: hyper::body::Incoming,
    fence: Fence,
    read: u64,
    max: u64,
    answered: Arc<AtomicBool>,
}

impl Body for FencedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Err(stop) = self.fence.check() {
            return Poll::Ready(Some(Err(cut_off(&stop))));
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.answered.store(true, Ordering::Release);
        }
        Poll::Ready(frame.map(|frame| {
            let frame = frame.map_err(Error::from)?;
            if let Some(data) = frame.data_ref() {
                self.read += data.len() as u64;
                if self.read > self.max {
                    return Err(Error::HttpResponseBodySize(Some(self.max)));
                }
            }
            Ok(frame)
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-write fence on its own: the chaos run cannot isolate it (the
    /// guest's host calls and the request's cut-off on `Gate::stopped_hook`
    /// stop a request within a watchdog tick anyway), so this shows that a
    /// socket write after the permit lapsed is refused and nothing reaches
    /// the peer, while the same write under a holding permit goes through.
    #[tokio::test]
    async fn a_write_after_the_permit_lapsed_never_reaches_the_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let holds = Arc::new(AtomicBool::new(true));
        let gate = Arc::new(Gate::default());
        let permit = holds.clone();
        gate.open(Duration::from_secs(60), Some(Arc::new(move || permit.load(Ordering::Acquire))));
        let hook = gate.hook().unwrap();
        let (near, mut far) = tokio::io::duplex(1024);
        let mut socket = Fenced { inner: near, fence: Fence { gate, hook } };
        socket.write_all(b"before").await.unwrap();
        let mut got = [0u8; 6];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"before");

        holds.store(false, Ordering::Release);
        let refused = socket.write_all(b"after").await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionAborted);
        drop(socket);
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{} bytes left after the permit lapsed", rest.len());
    }

    fn covers(prefix: &str, url: &str) -> bool {
        prefix.parse::<HttpPrefix>().unwrap().covers(&url.parse().unwrap())
    }

    #[test]
    fn a_prefix_covers_its_scheme_host_port_and_path() {
        assert!(covers("https://api.example.com/v1/", "https://api.example.com/v1/jobs"));
        assert!(covers("https://api.example.com/v1/", "https://API.example.com:443/v1/?q=1"));
        assert!(covers("http://127.0.0.1:8080/", "http://127.0.0.1:8080/hook"));
        assert!(covers("https://api.example.com/v1", "https://api.example.com/v1"));
        assert!(covers("https://api.example.com/v1", "https://api.example.com/v1/x"));
        assert!(covers("https://api.example.com", "https://api.example.com/anything"));
        assert!(covers("http://[::1]:9000/", "http://[::1]:9000/x"));

        assert!(!covers("https://api.example.com/v1/", "http://api.example.com/v1/jobs"), "scheme");
        assert!(!covers("https://api.example.com/v1/", "https://api.example.com:8443/v1/jobs"), "port");
        assert!(!covers("https://api.example.com/v1/", "https://api.example.com.evil.net/v1/"), "host");
        assert!(!covers("https://api.example.com/v1/", "https://api.example.com/v2/jobs"), "path");
        assert!(!covers("https://api.example.com/v1", "https://api.example.com/v10"), "path boundary");
        assert!(!covers("http://127.0.0.1:8080/", "http://127.0.0.1:8081/hook"), "port");
    }

    #[test]
    fn paths_that_climb_out_of_a_prefix_are_caught() {
        for path in ["/v1/../admin", "/v1/%2e%2E/admin", "/v1/./x", "/v1/..%2fadmin", "/v1\\..\\admin"] {
            assert!(judge_path(path).is_err(), "{path}");
        }
        for path in ["/v1/jobs", "/v1/a.b/..c", "/", "/v1/caf%C3%A9", "/v1/a%20b"] {
            assert_eq!(judge_path(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn paths_are_judged_as_servers_read_them() {
        for (path, why) in [
            ("/v1/..;/admin", "; parameters"),
            ("/v1;jsessionid=x/jobs", "; parameters"),
            ("/v1/%3b/x", "; parameters"),
            ("/v1/%252e%252e/admin", "twice (%25)"),
            ("/v1/%u002e%u002e/admin", "%u encoding"),
            ("/v1/%c0%ae%c0%ae/admin", "overlong"),
            ("/v1/%e0%80%ae/admin", "overlong"),
            ("/v1/.%00./admin", "NUL"),
            ("/v1/%0d%0aX:y", "NUL"),
            ("/v1//admin", "empty segments"),
            ("/v1/%zz", "malformed"),
            ("/v1/%2", "malformed"),
        ] {
            let refused = judge_path(path).unwrap_err();
            assert!(refused.contains(why), "{path}: {refused}");
        }
    }

    #[test]
    fn stamps_cannot_be_shadowed_and_host_is_rebuilt() {
        for name in ["zkrun-term", "zkrun_term", "zkrun_election", "zkrun-participant", "zkrun_participant"] {
            assert!(shadows_a_stamp(name), "{name}");
        }
        for name in ["zkrun-terms", "x-zkrun-term", "term", "content-type"] {
            assert!(!shadows_a_stamp(name), "{name}");
        }
        let host = |url: &str| host_header(&url.parse().unwrap()).unwrap();
        assert_eq!(host("http://127.0.0.1:8080/x"), "127.0.0.1:8080");
        assert_eq!(host("http://API.Example.com:80/x"), "api.example.com");
        assert_eq!(host("https://[::1]:9443/"), "[::1]:9443");
        let frame = without_trailers(Frame::trailers(http::HeaderMap::new()));
        assert!(frame.is_data());
    }

    #[test]
    fn bad_grants_say_why() {
        for (text, why) in [
            ("ftp://example.com/", "scheme"),
            ("https://user:pw@example.com/", "user name"),
            ("https://example.com/v1/?x=1", "query"),
            ("https://example.com/v1/../", ". or .."),
        ] {
            let error = text.parse::<HttpPrefix>().unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
        assert!("example.com/v1/".parse::<HttpPrefix>().is_err());
        assert_eq!(
            "https://Example.com".parse::<HttpPrefix>().unwrap().to_string(),
            "https://example.com:443/"
        );
    }
}
