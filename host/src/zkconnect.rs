//! How zkrun reaches ZooKeeper and what it leaves there: the credentials and
//! TLS of every session (`run` and `status` alike), and the ACL of every node
//! zkrun creates. One place owns each, so that no connect forgets the
//! credentials and no create forgets the ACL.

mod probe;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zookeeper_client as zk;

use crate::zkpath::ConnectString;

/// The environment variable that may hold `SCHEME:CREDENTIALS`.
pub const AUTH_ENV: &str = "ZKRUN_ZK_AUTH";

/// A secret (a password, a private key) that no log or `Debug` output shows.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// For clap: any text is a secret; it is checked later, by [`ZkAuth::parse`],
    /// whose errors never repeat it (clap's would).
    pub fn from_arg(text: &str) -> Result<Secret, std::convert::Infallible> {
        Ok(Secret::new(text))
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The `addAuth` schemes ZooKeeper's servers provide.
pub const AUTH_SCHEMES: [&str; 4] = ["digest", "sasl", "x509", "ip"];

/// Credentials for ZooKeeper's `addAuth`: `SCHEME:CREDENTIALS`, e.g.
/// `digest:user:password`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkAuth {
    scheme: String,
    credentials: Secret,
}

impl ZkAuth {
    /// Parses `SCHEME:CREDENTIALS` (a trailing newline, as files have, is
    /// dropped). `from` says where it came from; errors never show the secret.
    pub fn parse(text: &Secret, from: &str) -> Result<ZkAuth, String> {
        let text = text.expose().trim_end_matches(['\n', '\r']);
        let Some((scheme, credentials)) = text.split_once(':') else {
            return Err(format!(
                "bad ZooKeeper credentials in {from}: expected SCHEME:CREDENTIALS, e.g. digest:user:password"
            ));
        };
        if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!(
                "bad ZooKeeper credentials in {from}: the scheme before the first ':' is missing or not a word"
            ));
        }
        if !AUTH_SCHEMES.contains(&scheme) {
            // `user:password` without its scheme reads as scheme `user`; an
            // ensemble refuses an unknown scheme on every connect, so say so
            // now rather than retry forever (never showing the secret).
            return Err(format!(
                "bad ZooKeeper credentials in {from}: unknown scheme '{scheme}' (ZooKeeper's are {}); for a user and password write digest:{scheme}:PASSWORD",
                AUTH_SCHEMES.join(", ")
            ));
        }
        if credentials.is_empty() {
            return Err(format!("bad ZooKeeper credentials in {from}: nothing after {scheme}:"));
        }
        if scheme == "digest" {
            match credentials.split_once(':') {
                Some((user, password)) if !user.is_empty() && !password.is_empty() => {}
                _ => {
                    return Err(format!(
                        "bad ZooKeeper credentials in {from}: digest credentials are user:password"
                    ));
                }
            }
        }
        Ok(ZkAuth { scheme: scheme.to_string(), credentials: Secret::new(credentials) })
    }

    /// Reads `SCHEME:CREDENTIALS` from a file (the whole file, one line).
    pub fn from_file(path: &Path) -> Result<ZkAuth, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read ZooKeeper credentials {}: {e}", path.display()))?;
        ZkAuth::parse(&Secret::new(text), &path.display().to_string())
    }

    /// Who this is, without the secret: `digest:user`, or the scheme alone.
    pub fn identity(&self) -> String {
        match (self.scheme.as_str(), self.credentials.expose().split_once(':')) {
            ("digest", Some((user, _))) => format!("digest:{user}"),
            (scheme, _) => scheme.to_string(),
        }
    }
}

/// The TLS files of a client, read and checked at start.
#[derive(Clone)]
pub struct ZkTls {
    ca: PathBuf,
    ca_pem: String,
    /// The client certificate and its key (`Secret`: the key must not show).
    identity: Option<(String, Secret)>,
    options: zk::TlsOptions,
}

impl ZkTls {
    /// Reads and checks the CA bundle, and the client certificate and key
    /// (both or neither).
    pub fn load(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<ZkTls, String> {
        let read = |flag: &str, path: &Path| {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
        };
        let ca_pem = read("--zk-tls-ca", ca)?;
        let options = zk::TlsOptions::new().with_pem_ca(&ca_pem).map_err(|_| {
            format!("bad --zk-tls-ca {}: it holds no PEM certificate (BEGIN CERTIFICATE)", ca.display())
        })?;
        let (options, identity) = match (cert, key) {
            (None, None) => (options, None),
            (Some(cert), Some(key)) => {
                let cert_pem = read("--zk-tls-cert", cert)?;
                let key_pem = read("--zk-tls-key", key)?;
                probe::check_identity(&cert_pem, &key_pem).map_err(|why| {
                    format!("bad client certificate {} / key {}: {why}", cert.display(), key.display())
                })?;
                let options = options.with_pem_identity(&cert_pem, &key_pem).map_err(|e| {
                    format!("bad client certificate {} / key {}: {e}", cert.display(), key.display())
                })?;
                (options, Some((cert_pem, Secret::new(key_pem))))
            }
            _ => return Err("--zk-tls-cert and --zk-tls-key go together: give both or neither".into()),
        };
        Ok(ZkTls { ca: ca.to_path_buf(), ca_pem, identity, options })
    }

    /// Whether a client certificate is presented (ZooKeeper's x509 scheme
    /// then authenticates the session as its subject).
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }
}

impl fmt::Debug for ZkTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkTls")
            .field("ca", &self.ca)
            .field("client_certificate", &self.has_identity())
            .finish()
    }
}

/// The ACL of every node zkrun creates: election parents, election and
/// lease nodes, fenced state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAcl(Arc<[zk::Acl]>);

impl Default for NodeAcl {
    /// Open to every client (what an ensemble without authentication allows).
    fn default() -> NodeAcl {
        NodeAcl::open()
    }
}

impl NodeAcl {
    /// `world:anyone` may do everything.
    pub fn open() -> NodeAcl {
        NodeAcl(zk::Acls::anyone_all().to_vec().into())
    }

    /// Full rights to the session's authenticated identities, read to
    /// everyone (so `zkrun status` and monitoring work without credentials).
    pub fn owner_all_world_read() -> NodeAcl {
        NodeAcl(
            vec![
                zk::Acl::new(zk::Permission::ALL, zk::AuthId::authed()),
                zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone()),
            ]
            .into(),
        )
    }

    /// Parses `--zk-acl` entries: `SCHEME:ID:PERMS`, `creator:PERMS` (the
    /// session's own identities) or `world:PERMS`; PERMS are letters of
    /// `rwcda` or `all`.
    pub fn parse(entries: &[String]) -> Result<NodeAcl, String> {
        if entries.is_empty() {
            return Err("an ACL needs at least one entry".into());
        }
        let mut acl = Vec::new();
        for entry in entries {
            let bad = |why: &str| format!("bad ACL entry {entry:?}: {why} (try creator:all or world:r)");
            let (rest, perms) = entry.rsplit_once(':').ok_or_else(|| bad("expected SCHEME:ID:PERMS"))?;
            let permission =
                parse_permissions(perms).ok_or_else(|| bad("permissions are letters of rwcda, or all"))?;
            let id = match rest.split_once(':') {
                None if rest == "creator" => zk::AuthId::authed(),
                None if rest == "world" => zk::AuthId::anyone(),
                None => return Err(bad("expected SCHEME:ID:PERMS")),
                Some((scheme, id)) if !scheme.is_empty() && !id.is_empty() => zk::AuthId::new(scheme, id),
                Some(_) => return Err(bad("the scheme and the id must not be empty")),
            };
            acl.push(zk::Acl::new(permission, id));
        }
        Ok(NodeAcl(acl.into()))
    }

    /// Whether the ACL names the creator (needs an authenticated session).
    fn names_creator(&self) -> bool {
        self.0.iter().any(|a| a.scheme() == "auth")
    }

    /// The entries, as ZooKeeper holds them.
    pub fn entries(&self) -> &[zk::Acl] {
        &self.0
    }

    /// Options for a persistent node.
    pub fn persistent(&self) -> zk::CreateOptions<'_> {
        zk::CreateMode::Persistent.with_acls(zk::Acls::new(&self.0))
    }

    /// Options for an ephemeral node.
    pub fn ephemeral(&self) -> zk::CreateOptions<'_> {
        zk::CreateMode::Ephemeral.with_acls(zk::Acls::new(&self.0))
    }

    /// Options for an ephemeral sequential node.
    pub fn ephemeral_sequential(&self) -> zk::CreateOptions<'_> {
        zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::new(&self.0))
    }
}

fn parse_permissions(text: &str) -> Option<zk::Permission> {
    if text == "all" {
        return Some(zk::Permission::ALL);
    }
    if text.is_empty() {
        return None;
    }
    text.chars().try_fold(zk::Permission::NONE, |p, c| {
        let one = match c {
            'r' => zk::Permission::READ,
            'w' => zk::Permission::WRITE,
            'c' => zk::Permission::CREATE,
            'd' => zk::Permission::DELETE,
            'a' => zk::Permission::ADMIN,
            _ => return None,
        };
        Some(p | one)
    })
}

/// Whether clients without credentials may change what `acl` guards: set
/// its data, add or remove children, or change the ACL itself.
pub fn world_writable(acl: &[zk::Acl]) -> bool {
    let changes =
        zk::Permission::WRITE | zk::Permission::CREATE | zk::Permission::DELETE | zk::Permission::ADMIN;
    acl.iter().any(|a| {
        a.scheme() == "world" && a.id() == "anyone" && a.permission() & changes != zk::Permission::NONE
    })
}

/// How to reach the ensemble besides its address: credentials, TLS, and
/// the ACL of what zkrun creates there.
#[derive(Clone, Debug, Default)]
pub struct ZkAccess {
    /// Credentials sent at every connect (and reconnect).
    pub auth: Option<ZkAuth>,
    /// TLS for every server of the ensemble.
    pub tls: Option<ZkTls>,
    /// The ACL of every node zkrun creates.
    pub acl: NodeAcl,
}

impl ZkAccess {
    /// Puts the pieces together: without `acl` entries, authenticated
    /// sessions (credentials or a client certificate) create nodes with
    /// [`NodeAcl::owner_all_world_read`], others open ones.
    pub fn new(auth: Option<ZkAuth>, tls: Option<ZkTls>, acl: &[String]) -> Result<ZkAccess, String> {
        let authenticated = auth.is_some() || tls.as_ref().is_some_and(ZkTls::has_identity);
        let acl = match (acl.is_empty(), authenticated) {
            (true, true) => NodeAcl::owner_all_world_read(),
            (true, false) => NodeAcl::open(),
            (false, _) => NodeAcl::parse(acl)?,
        };
        if acl.names_creator() && !authenticated {
            return Err("an ACL entry for the creator needs credentials: give --zk-auth (or a file or $ZKRUN_ZK_AUTH) or a client certificate".into());
        }
        Ok(ZkAccess { auth, tls, acl })
    }

    /// Whether the session authenticates at all.
    pub fn authenticated(&self) -> bool {
        self.auth.is_some() || self.tls.as_ref().is_some_and(ZkTls::has_identity)
    }

    /// Connects with `connector` (session timeout and the like already
    /// set), adding the credentials and TLS.
    pub async fn connect(&self, connector: zk::Connector, servers: &str) -> Result<zk::Client, zk::Error> {
        let connector = match &self.auth {
            Some(auth) => connector.with_auth(&auth.scheme, auth.credentials.expose().as_bytes()),
            None => connector,
        };
        match &self.tls {
            Some(tls) => connector.with_tls(tls.options.clone()).secure_connect(servers).await,
            None => connector.connect(servers).await,
        }
    }

    /// After a failed connect: a one-line reason if TLS is what failed (an
    /// untrusted server, a name mismatch, a refused client certificate, a
    /// server that does not speak TLS), found by a handshake of our own
    /// with the first server that answers. `None` if TLS is not in use or
    /// looks fine.
    pub async fn diagnose(&self, connect: &ConnectString) -> Option<String> {
        let tls = self.tls.clone()?;
        let servers = connect.servers.clone();
        tokio::task::spawn_blocking(move || probe::diagnose(&tls, &servers)).await.ok().flatten()
    }

    /// What the logs may say about the access: no secret, only identities.
    pub fn describe(&self) -> String {
        let auth = self.auth.as_ref().map_or("none".to_string(), ZkAuth::identity);
        let tls = match &self.tls {
            None => "off".to_string(),
            Some(tls) if tls.has_identity() => format!("on, CA {}, client certificate", tls.ca.display()),
            Some(tls) => format!("on, CA {}", tls.ca.display()),
        };
        format!("auth {auth}, tls {tls}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_and_never_show() {
        let auth = ZkAuth::parse(&Secret::new("digest:zkrun:s3cret\n"), "test").unwrap();
        assert_eq!(auth.identity(), "digest:zkrun");
        assert!(!format!("{auth:?}").contains("s3cret"));
        for bad in ["digest", "digest:", "digest:zkrun", "digest:zkrun:", ":x", "di gest:x"] {
            let e = ZkAuth::parse(&Secret::new(bad), "test").unwrap_err();
            assert!(!bad.contains("zkrun") || !e.contains("zkrun:"), "{e}");
        }
        let e = ZkAuth::parse(&Secret::new("digest:nopassword-s3cret"), "test").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn acl_entries_parse() {
        let acl =
            NodeAcl::parse(&["creator:all".into(), "world:r".into(), "x509:CN=a,O=b:rw".into()]).unwrap();
        let entries = acl.entries();
        assert_eq!(entries[0], zk::Acl::new(zk::Permission::ALL, zk::AuthId::authed()));
        assert_eq!(entries[1], zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone()));
        assert_eq!(
            entries[2],
            zk::Acl::new(zk::Permission::READ | zk::Permission::WRITE, zk::AuthId::new("x509", "CN=a,O=b"))
        );
        assert!(!world_writable(entries));
        assert!(world_writable(NodeAcl::open().entries()));
        for bad in ["creator", "creator:x", "nobody:r", ":id:r", "digest::r", ""] {
            assert!(NodeAcl::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn authentication_chooses_the_default_acl() {
        assert_eq!(ZkAccess::new(None, None, &[]).unwrap().acl, NodeAcl::open());
        let auth = ZkAuth::parse(&Secret::new("digest:u:p"), "test").ok();
        assert_eq!(ZkAccess::new(auth.clone(), None, &[]).unwrap().acl, NodeAcl::owner_all_world_read());
        let e = ZkAccess::new(None, None, &["creator:all".into()]).unwrap_err();
        assert!(e.contains("needs credentials"), "{e}");
        let access = ZkAccess::new(auth, None, &["creator:all".into()]).unwrap();
        assert!(!format!("{access:?}").contains("p\""), "{access:?}");
        assert_eq!(access.describe(), "auth digest:u, tls off");
    }
}
