//! Certificates for a TLS ensemble, made at run time: a CA, a server
//! certificate for 127.0.0.1, a client certificate (subject `CN=zkrun`, its
//! x509 identity), and a second CA that signed nothing the servers show.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The subject of the client certificate: the session's x509 identity.
pub const CLIENT_SUBJECT: &str = "CN=zkrun";

/// The files of a test PKI.
pub struct TestPki {
    /// The CA that signed the server and client certificates (PEM).
    pub ca: PathBuf,
    /// The servers' key and certificate in one PEM file (ZooKeeper's PEM key store).
    pub server: PathBuf,
    /// The client certificate (PEM).
    pub client_cert: PathBuf,
    /// The client key (PEM, PKCS#8).
    pub client_key: PathBuf,
    /// A CA that signed none of them (PEM): trusting it alone, a client
    /// must refuse the servers.
    pub other_ca: PathBuf,
    ca_der: CertificateDer<'static>,
    client_der: CertificateDer<'static>,
    client_key_der: Vec<u8>,
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params, key)
}

fn leaf(common_name: &str) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().expect("leaf key");
    // Both ends of a test connection are 127.0.0.1: servers check the
    // client's certificate against its address too.
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, common_name);
    (params, key)
}

impl TestPki {
    /// Makes the PKI's files in `dir`.
    pub fn create(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write pki file");
            path
        };
        let (ca_params, ca_key) = ca("zkrun test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let (server_params, server_key) = leaf("zookeeper");
        let server_cert = server_params.signed_by(&server_key, &issuer).expect("server certificate");
        let (client_params, client_key) = leaf(CLIENT_SUBJECT.trim_start_matches("CN="));
        let client_cert = client_params.signed_by(&client_key, &issuer).expect("client certificate");
        let (other_params, other_key) = ca("zkrun other CA");
        let other_cert = other_params.self_signed(&other_key).expect("other CA certificate");
        TestPki {
            ca: write("ca.pem", &ca_cert.pem()),
            server: write("server.pem", &format!("{}{}", server_key.serialize_pem(), server_cert.pem())),
            client_cert: write("client.pem", &client_cert.pem()),
            client_key: write("client-key.pem", &client_key.serialize_pem()),
            other_ca: write("other-ca.pem", &other_cert.pem()),
            ca_der: ca_cert.der().clone(),
            client_der: client_cert.der().clone(),
            client_key_der: client_key.serialize_der(),
        }
    }

    /// zkrun's flags for TLS with the client certificate.
    pub fn zkrun_args(&self) -> Vec<OsString> {
        vec![
            "--zk-tls-ca".into(),
            self.ca.clone().into(),
            "--zk-tls-cert".into(),
            self.client_cert.clone().into(),
            "--zk-tls-key".into(),
            self.client_key.clone().into(),
        ]
    }

    /// A rustls client presenting the client certificate, for the
    /// harness's own requests (four-letter words).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.client_key_der.clone()));
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![self.client_der.clone()], key)
        .expect("client certificate");
        Arc::new(config)
    }
}
