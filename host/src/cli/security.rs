//! The `--zk-auth`, `--zk-acl` and `--zk-tls-*` flags and the `[zk]` table
//! of the configuration file: how `run` and `status` reach a secured
//! ensemble. Flags override the file, which overrides `$ZKRUN_ZK_AUTH`,
//! which overrides systemd credentials (`zk-auth`, `zk-tls-ca`,
//! `zk-tls-cert`, `zk-tls-key` in `$CREDENTIALS_DIRECTORY`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

use crate::zkconnect::{AUTH_ENV, Secret, ZkAccess, ZkAuth, ZkTls};

/// How to authenticate to the ensemble, encrypt, and protect what zkrun creates.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SecurityArgs {
    /// ZooKeeper credentials, e.g. digest:user:password (shows in ps: prefer --zk-auth-file or $ZKRUN_ZK_AUTH)
    #[arg(long, value_name = "SCHEME:CREDENTIALS", value_parser = Secret::from_arg, conflicts_with = "zk_auth_file")]
    pub zk_auth: Option<Secret>,
    /// File holding SCHEME:CREDENTIALS [default: $ZKRUN_ZK_AUTH if set, else $CREDENTIALS_DIRECTORY/zk-auth if present]
    #[arg(long, value_name = "FILE")]
    pub zk_auth_file: Option<PathBuf>,
    /// ACL of every node zkrun creates (repeatable): creator:PERMS, world:PERMS or SCHEME:ID:PERMS, PERMS in rwcda or all [default: creator:all and world:r with credentials, else world:all]
    #[arg(long = "zk-acl", value_name = "ENTRY")]
    pub zk_acl: Vec<String>,
    /// CA certificates (PEM) that signed the servers' certificates; connects with TLS
    #[arg(long, value_name = "FILE")]
    pub zk_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM); the session authenticates as its subject (x509)
    #[arg(long, value_name = "FILE")]
    pub zk_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --zk-tls-cert
    #[arg(long, value_name = "FILE")]
    pub zk_tls_key: Option<PathBuf>,
}

/// `zk` in the configuration file: the servers alone (`zk = "h1:2181"`), or
/// a `[zk]` table with `servers`, `auth-file`, `acl` and `[zk.tls]`.
#[derive(Debug, Default)]
pub struct ZkSection {
    /// The connect string.
    pub servers: Option<String>,
    auth_file: Option<PathBuf>,
    acl: Option<Vec<String>>,
    tls: TlsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ZkTable {
    servers: Option<String>,
    auth_file: Option<PathBuf>,
    acl: Option<Vec<String>>,
    #[serde(default)]
    tls: TlsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for ZkSection {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<ZkSection, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = ZkSection;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a connect string or a [zk] table")
            }
            fn visit_str<E: de::Error>(self, servers: &str) -> Result<ZkSection, E> {
                Ok(ZkSection { servers: Some(servers.to_string()), ..ZkSection::default() })
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<ZkSection, M::Error> {
                // Through the table's own derive: unknown keys are typos.
                let t = ZkTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ZkSection { servers: t.servers, auth_file: t.auth_file, acl: t.acl, tls: t.tls })
            }
        }
        deserializer.deserialize_any(Either)
    }
}

impl SecurityArgs {
    /// Merges the flags, the file's `[zk]` table (paths relative to
    /// `base`, the file's directory) and `$ZKRUN_ZK_AUTH`, reading and
    /// checking every file named.
    pub fn resolve(self, file: ZkSection, base: &Path) -> Result<ZkAccess, String> {
        let auth = if let Some(secret) = self.zk_auth {
            Some(ZkAuth::parse(&secret, "--zk-auth")?)
        } else if let Some(path) = self.zk_auth_file.or(file.auth_file.map(|p| base.join(p))) {
            Some(ZkAuth::from_file(&path)?)
        } else if let Ok(text) = std::env::var(AUTH_ENV)
            && !text.is_empty()
        {
            Some(ZkAuth::parse(&Secret::new(text), &format!("${AUTH_ENV}"))?)
        } else if let Some(path) = credential("zk-auth") {
            Some(ZkAuth::from_file(&path)?)
        } else {
            None
        };
        let ca = self.zk_tls_ca.or(file.tls.ca.map(|p| base.join(p))).or_else(|| credential("zk-tls-ca"));
        let cert =
            self.zk_tls_cert.or(file.tls.cert.map(|p| base.join(p))).or_else(|| credential("zk-tls-cert"));
        let key = self.zk_tls_key.or(file.tls.key.map(|p| base.join(p))).or_else(|| credential("zk-tls-key"));
        let tls = match ca {
            Some(ca) => Some(ZkTls::load(&ca, cert.as_deref(), key.as_deref())?),
            None if cert.is_some() || key.is_some() => {
                return Err(
                    "a client certificate needs --zk-tls-ca too (the CA of the servers' certificates)".into(),
                );
            }
            None => None,
        };
        let acl = if self.zk_acl.is_empty() { file.acl.unwrap_or_default() } else { self.zk_acl };
        ZkAccess::new(auth, tls, &acl)
    }
}

/// The file systemd's `LoadCredential=NAME:…` put in
/// `$CREDENTIALS_DIRECTORY`, if there is one: under `DynamicUser=yes` zkrun
/// cannot read a root-owned file itself, and systemd hands it a private
/// copy there. Used only when no flag, file setting or variable names one.
fn credential(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty())?;
    let path = Path::new(&dir).join(name);
    path.exists().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        zk: ZkSection,
    }

    fn section(text: &str) -> Result<ZkSection, String> {
        toml::from_str::<File>(text).map(|f| f.zk).map_err(|e| e.to_string())
    }

    #[test]
    fn the_zk_table_merges_with_the_flags() {
        assert_eq!(section("zk = \"a:1\"").unwrap().servers.as_deref(), Some("a:1"));

        let dir = std::env::temp_dir().join(format!("zkrun-security-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("auth"), "digest:u:secret-pw\n").unwrap();
        let file =
            section("[zk]\nservers = \"a:1\"\nauth-file = \"auth\"\nacl = [\"creator:all\"]\n").unwrap();
        assert_eq!(file.servers.as_deref(), Some("a:1"));
        let access = SecurityArgs::default().resolve(file, &dir).unwrap();
        assert_eq!(access.describe(), "auth digest:u, tls off");
        assert_eq!(access.acl.entries().len(), 1);
        assert!(!format!("{access:?}").contains("secret-pw"));

        // A flag wins over the file.
        let file = section("[zk]\nauth-file = \"auth\"\n").unwrap();
        let flags = SecurityArgs { zk_auth: Some(Secret::new("digest:flag:pw")), ..SecurityArgs::default() };
        assert_eq!(flags.resolve(file, &dir).unwrap().describe(), "auth digest:flag, tls off");

        // Typos and half a TLS setup are reported.
        let e = section("[zk]\nserver = \"a:1\"\n").unwrap_err();
        assert!(e.contains("server"), "{e}");
        let file = section("[zk.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
        let e = SecurityArgs::default().resolve(file, &dir).unwrap_err();
        assert!(e.contains("--zk-tls-ca"), "{e}");
        let e = SecurityArgs { zk_tls_ca: Some(dir.join("auth")), ..SecurityArgs::default() }
            .resolve(ZkSection::default(), &dir)
            .unwrap_err();
        assert!(e.starts_with("bad --zk-tls-ca") && !e.contains("secret-pw"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
