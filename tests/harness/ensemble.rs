//! A real ZooKeeper ensemble (Debian's `zookeeper` package) on loopback.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::TestPki;
use crate::{TempDir, die_with_parent, wait_for};

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
const NETTY_EXTRA_JARS: [&str; 3] =
    ["netty-codec.jar", "netty-resolver.jar", "netty-transport-native-unix-common.jar"];

/// Settings of a test ensemble.
#[derive(Clone, Debug)]
pub struct EnsembleOptions {
    /// Servers in the ensemble (1, 3 or 5).
    pub servers: usize,
    /// ZooKeeper's tickTime; sessions may last 2 to 300 ticks.
    pub tick: Duration,
    /// Whether servers fsync their transaction log (ZooKeeper's default).
    pub force_sync: bool,
    /// Trade steady-state speed for start-up speed (JIT tier 1 only).
    pub fast_start: bool,
    /// Serve clients over TLS only (Netty, `secureClientPort`, client
    /// certificates required and authenticated as x509), with certificates
    /// made for the test; see [`Ensemble::pki`].
    pub tls: bool,
}

impl Default for EnsembleOptions {
    fn default() -> Self {
        EnsembleOptions {
            servers: 3,
            tick: Duration::from_millis(200),
            force_sync: false,
            fast_start: true,
            tls: false,
        }
    }
}

struct Server {
    id: usize,
    client_port: u16,
    peer_port: u16,
    election_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    frozen: bool,
}

/// A running ensemble. Killed and deleted on drop.
pub struct Ensemble {
    options: EnsembleOptions,
    servers: Vec<Server>,
    /// The certificates of a TLS ensemble.
    pki: Option<TestPki>,
    // Dropped last: the servers must be dead before their files go.
    _dir: TempDir,
}

impl Ensemble {
    /// Starts a 3-server ensemble and waits until it serves.
    pub fn start() -> Ensemble {
        Ensemble::start_with(EnsembleOptions::default())
    }

    /// Starts an ensemble with `options` and waits until it serves.
    pub fn start_with(options: EnsembleOptions) -> Ensemble {
        assert!(
            std::path::Path::new(ZOOKEEPER_JAR).exists(),
            "{ZOOKEEPER_JAR} is missing: install ZooKeeper with scripts/setup.sh"
        );
        // A port picked as free can be taken before the server binds it; a
        // second attempt with new ports settles that race.
        let mut last_error = String::new();
        for _ in 0..3 {
            let mut ensemble = Ensemble::configure(options.clone());
            for i in 0..ensemble.servers.len() {
                ensemble.spawn(i);
            }
            match ensemble.await_quorum(Duration::from_secs(60)) {
                Ok(()) => return ensemble,
                Err(e) => last_error = format!("{e}\n{}", ensemble.logs()),
            }
        }
        panic!("ZooKeeper ensemble did not start: {last_error}");
    }

    fn configure(options: EnsembleOptions) -> Ensemble {
        let dir = TempDir::new("zk");
        let ports = free_ports(options.servers * 3);
        let servers: Vec<Server> = (0..options.servers)
            .map(|i| Server {
                id: i + 1,
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                election_port: ports[3 * i + 2],
                dir: dir.path().join(format!("server{}", i + 1)),
                child: None,
                frozen: false,
            })
            .collect();
        let tick = options.tick.as_millis();
        let pki = options.tls.then(|| TestPki::create(&dir.path().join("pki")));
        for server in &servers {
            std::fs::create_dir_all(server.dir.join("data")).unwrap();
            std::fs::write(server.dir.join("data/myid"), format!("{}\n", server.id)).unwrap();
            let mut cfg = String::new();
            writeln!(cfg, "tickTime={tick}").unwrap();
            writeln!(cfg, "initLimit=20").unwrap();
            writeln!(cfg, "syncLimit=5").unwrap();
            writeln!(cfg, "dataDir={}", server.dir.join("data").display()).unwrap();
            match &pki {
                None => {
                    writeln!(cfg, "clientPort={}", server.client_port).unwrap();
                    writeln!(cfg, "clientPortAddress=127.0.0.1").unwrap();
                }
                // TLS only: no plaintext client port at all.
                Some(pki) => {
                    writeln!(cfg, "secureClientPort={}", server.client_port).unwrap();
                    writeln!(cfg, "secureClientPortAddress=127.0.0.1").unwrap();
                    writeln!(cfg, "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory")
                        .unwrap();
                    writeln!(cfg, "ssl.keyStore.location={}", pki.server.display()).unwrap();
                    writeln!(cfg, "ssl.keyStore.type=PEM").unwrap();
                    writeln!(cfg, "ssl.trustStore.location={}", pki.ca.display()).unwrap();
                    writeln!(cfg, "ssl.trustStore.type=PEM").unwrap();
                    writeln!(cfg, "ssl.clientAuth=need").unwrap();
                    writeln!(
                        cfg,
                        "authProvider.x509=org.apache.zookeeper.server.auth.X509AuthenticationProvider"
                    )
                    .unwrap();
                }
            }
            writeln!(cfg, "maxClientCnxns=0").unwrap();
            writeln!(cfg, "minSessionTimeout={}", 2 * tick).unwrap();
            writeln!(cfg, "maxSessionTimeout={}", 300 * tick).unwrap();
            writeln!(cfg, "4lw.commands.whitelist=*").unwrap();
            writeln!(cfg, "admin.enableServer=false").unwrap();
            writeln!(cfg, "forceSync={}", if options.force_sync { "yes" } else { "no" }).unwrap();
            writeln!(cfg, "reconfigEnabled=false").unwrap();
            writeln!(cfg, "quorumListenOnAllIPs=false").unwrap();
            if servers.len() > 1 {
                writeln!(cfg, "standaloneEnabled=false").unwrap();
                for s in &servers {
                    writeln!(cfg, "server.{}=127.0.0.1:{}:{}", s.id, s.peer_port, s.election_port).unwrap();
                }
            }
            std::fs::write(server.dir.join("zoo.cfg"), cfg).unwrap();
        }
        Ensemble { options, servers, pki, _dir: dir }
    }

    fn spawn(&mut self, i: usize) {
        let fast_start = self.options.fast_start;
        let server = &mut self.servers[i];
        assert!(server.child.is_none(), "server {} is already running", server.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(server.dir.join("server.log"))
            .unwrap();
        // Netty's TLS needs jars that zookeeper.jar's manifest leaves out.
        let netty = match self.pki {
            Some(_) => NETTY_EXTRA_JARS.iter().map(|j| format!(":/usr/share/java/{j}")).collect(),
            None => String::new(),
        };
        let mut command = Command::new("java");
        command
            .args(["-Xmx192m", "-Xms32m", "-XX:+UseSerialGC", "-Xss512k"])
            // C1 only: servers start about twice as fast, which tests want;
            // benchmarks turn it off to measure a fully compiled server.
            .args(fast_start.then_some("-XX:TieredStopAtLevel=1"))
            .arg(format!("-Dzookeeper.log.dir={}", server.dir.display()))
            .arg("-Dzookeeper.root.logger=INFO,CONSOLE")
            .arg("-Dzookeeper.jmx.log4j.disable=true")
            .arg("-cp")
            .arg(format!(
                "/etc/zookeeper/conf:{ZOOKEEPER_JAR}:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar{netty}"
            ))
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(server.dir.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut command);
        server.child = Some(command.spawn().expect("start java (install ZooKeeper with scripts/setup.sh)"));
        server.frozen = false;
    }

    /// Waits until every running server serves and exactly one leads.
    fn await_quorum(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<usize> = (0..self.servers.len()).filter(|&i| self.is_running(i)).collect();
            let modes: Vec<Option<String>> = running.iter().map(|&i| self.mode(i)).collect();
            let leaders = modes.iter().filter(|m| m.as_deref() == Some("leader")).count();
            let serving =
                modes.iter().all(|m| matches!(m.as_deref(), Some("leader" | "follower" | "standalone")));
            if serving && (leaders == 1 || self.servers.len() == 1) {
                return Ok(());
            }
            for &i in &running {
                if let Some(Ok(Some(status))) = self.servers[i].child.as_mut().map(|c| c.try_wait()) {
                    self.servers[i].child = None;
                    return Err(format!("server {} exited: {status}", i + 1));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("servers not serving after {timeout:?}: modes {modes:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a quorum serves again (after restarts).
    pub fn wait_serving(&mut self, timeout: Duration) {
        if let Err(e) = self.await_quorum(timeout) {
            panic!("{e}\n{}", self.logs());
        }
    }

    /// The connect string of every server: `127.0.0.1:p1,127.0.0.1:p2,...`.
    pub fn connect_string(&self) -> String {
        self.servers.iter().map(|s| format!("127.0.0.1:{}", s.client_port)).collect::<Vec<_>>().join(",")
    }

    /// The client address of every server.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| SocketAddr::from(([127, 0, 0, 1], s.client_port))).collect()
    }

    /// The number of servers.
    pub fn size(&self) -> usize {
        self.servers.len()
    }

    /// The certificates of a TLS ensemble (`None` for plaintext).
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// The settings the ensemble was started with.
    pub fn options(&self) -> &EnsembleOptions {
        &self.options
    }

    /// Whether server `i` (0-based) has a live process.
    pub fn is_running(&self, i: usize) -> bool {
        self.servers[i].child.is_some()
    }

    /// Kills server `i` with SIGKILL (its clients see the connection drop).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.servers[i].frozen = false;
    }

    /// Stops server `i` with SIGTERM and waits for it to exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.servers[i].frozen = false;
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.servers[i].frozen = false;
    }

    /// Starts server `i` again (it keeps its data).
    pub fn restart(&mut self, i: usize) {
        if self.servers[i].child.is_none() {
            self.spawn(i);
        }
    }

    /// Restarts server `i` with `maxSessionTimeout` set to `max` (`None`:
    /// the default of 300 ticks). Sessions it accepts from then on (new, or
    /// reconnecting to it) get at most `max`.
    pub fn restart_with_max_session_timeout(&mut self, i: usize, max: Option<Duration>) {
        let max_ms = max.map_or(300 * self.options.tick.as_millis(), |m| m.as_millis());
        let path = self.servers[i].dir.join("zoo.cfg");
        let cfg = std::fs::read_to_string(&path).expect("read zoo.cfg");
        let cfg: String = cfg
            .lines()
            .map(|l| {
                if l.starts_with("maxSessionTimeout=") {
                    format!("maxSessionTimeout={max_ms}")
                } else {
                    l.to_string()
                }
            })
            .map(|l| l + "\n")
            .collect();
        std::fs::write(&path, cfg).expect("write zoo.cfg");
        self.kill(i);
        self.spawn(i);
    }

    /// Freezes server `i` (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn freeze(&mut self, i: usize) {
        if let Some(child) = &self.servers[i].child {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
            self.servers[i].frozen = true;
        }
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&mut self, i: usize) {
        if let Some(child) = &self.servers[i].child {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        self.servers[i].frozen = false;
    }

    /// Sends a four-letter word to server `i`; `None` if it does not answer.
    pub fn four_letter(&self, i: usize, word: &str) -> Option<String> {
        if self.servers[i].child.is_none() || self.servers[i].frozen {
            return None;
        }
        match &self.pki {
            None => four_letter(self.client_addrs()[i], word),
            Some(pki) => four_letter_tls(self.client_addrs()[i], word, pki.client_config()),
        }
    }

    /// `leader`, `follower` or `standalone`, per `srvr`; `None` if not serving.
    pub fn mode(&self, i: usize) -> Option<String> {
        let reply = self.four_letter(i, "srvr")?;
        reply.lines().find_map(|l| l.strip_prefix("Mode: ")).map(|m| m.trim().to_string())
    }

    /// The index of the server that leads the ensemble right now.
    pub fn leader(&self) -> Option<usize> {
        (0..self.servers.len()).find(|&i| self.mode(i).as_deref() == Some("leader"))
    }

    /// The index of the server session `session` is connected to, per `cons`.
    pub fn server_of_session(&self, session: i64) -> Option<usize> {
        let needle = format!("sid={:#x}", session);
        (0..self.servers.len()).find(|&i| {
            self.four_letter(i, "cons").is_some_and(|cons| {
                cons.lines().any(|l| l.contains(&format!("{needle},")) || l.contains(&format!("{needle})")))
            })
        })
    }

    /// Waits until `session` is connected to some server, and returns it.
    pub fn wait_server_of_session(&self, session: i64, timeout: Duration) -> usize {
        wait_for(&format!("session {session:#x} to show up in cons"), timeout, || {
            self.server_of_session(session)
        })
    }

    /// Total number of watches the servers hold (`wchs`).
    pub fn watch_count(&self) -> usize {
        (0..self.servers.len())
            .filter_map(|i| self.four_letter(i, "wchs"))
            .filter_map(|reply| {
                // "N connections watching M paths\nTotal watches:K"
                reply
                    .lines()
                    .find_map(|l| l.strip_prefix("Total watches:"))
                    .and_then(|n| n.trim().parse::<usize>().ok())
            })
            .sum()
    }

    /// Server logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for s in &self.servers {
            let log = std::fs::read_to_string(s.dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let _ = writeln!(out, "--- server {} (port {}) ---", s.id, s.client_port);
            for line in tail.into_iter().rev() {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            if self.servers[i].frozen {
                self.thaw(i);
            }
            self.kill(i);
        }
    }
}

/// Sends a four-letter word to a ZooKeeper server and returns its reply.
pub fn four_letter(addr: SocketAddr, word: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(word.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    (!reply.is_empty() && !reply.contains("not currently serving")).then_some(reply)
}

/// [`four_letter`] over TLS, for a TLS-only ensemble.
pub fn four_letter_tls(
    addr: SocketAddr,
    word: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Option<String> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut conn = rustls::ClientConnection::new(config, name).ok()?;
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    stream.write_all(word.as_bytes()).ok()?;
    let mut reply = Vec::new();
    // The server closes without close_notify: keep what came before.
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    (!reply.is_empty() && !reply.contains("not currently serving")).then_some(reply)
}

/// Ports that were free a moment ago, all distinct.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}
