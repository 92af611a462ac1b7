//! A TLS handshake of zkrun's own, to say in one line why a TLS connect
//! failed: the client library reports only that no server could be reached.

use std::io::{ErrorKind, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore};

use super::ZkTls;

/// How long a server may take to connect, or to object to our certificate.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of one handshake.
enum Outcome {
    /// No TCP connection: not a TLS problem.
    Unreachable,
    /// TLS works with this server.
    Fine,
    /// TLS fails, and why.
    Failed(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("unreadable PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (BEGIN CERTIFICATE) in the certificate file".into());
    }
    Ok(certs)
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| format!("unreadable PEM key: {e}"))?
        .ok_or_else(|| "no PEM private key (BEGIN PRIVATE KEY) in the key file".into())
}

/// Checks that the client certificate and key parse and belong together.
pub(super) fn check_identity(cert_pem: &str, key_pem: &str) -> Result<(), String> {
    let certs = certificates(cert_pem)?;
    let key = private_key(key_pem)?;
    rustls::sign::CertifiedKey::from_der(certs, key, &provider()).map(|_| ()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => "the key does not belong to the certificate".to_string(),
        other => other.to_string(),
    })
}

fn client_config(tls: &ZkTls) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(&tls.ca_pem)? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match &tls.identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key.expose())?)
            .map_err(|e| e.to_string()),
    }
}

/// Why TLS fails with the first server that answers, if it does.
pub(super) fn diagnose(tls: &ZkTls, servers: &[(String, u16)]) -> Option<String> {
    let config = Arc::new(client_config(tls).ok()?);
    for (host, port) in servers {
        match handshake(&config, host, *port) {
            Outcome::Unreachable => continue,
            Outcome::Fine => return None,
            Outcome::Failed(why) => return Some(format!("TLS with {host}:{port} failed: {why}")),
        }
    }
    None
}

fn handshake(config: &Arc<ClientConfig>, host: &str, port: u16) -> Outcome {
    // Every address of the name (localhost may be ::1 first), as the
    // client library does.
    let addrs = (host, port).to_socket_addrs().map(Vec::from_iter).unwrap_or_default();
    let Some(mut tcp) = addrs.iter().find_map(|addr| TcpStream::connect_timeout(addr, PROBE_TIMEOUT).ok())
    else {
        return Outcome::Unreachable;
    };
    let _ = tcp.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(PROBE_TIMEOUT));
    let Ok(name) = ServerName::try_from(host.to_string()) else {
        return Outcome::Failed(format!("{host:?} is not a name a certificate can hold"));
    };
    let Ok(mut conn) = ClientConnection::new(config.clone(), name) else {
        return Outcome::Unreachable;
    };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            return classify(&e, host);
        }
    }
    // With TLS 1.3 the server checks our certificate after the handshake
    // and objects with an alert; a server content with it waits for
    // ZooKeeper's connect request, so a timeout here means TLS is fine.
    let mut byte = [0u8; 1];
    match rustls::Stream::new(&mut conn, &mut tcp).read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Outcome::Fine,
        Err(e) => classify(&e, host),
        Ok(0) => Outcome::Failed(
            "the server closed the connection after the handshake: does it trust the client certificate (--zk-tls-cert)?".into(),
        ),
        Ok(_) => Outcome::Fine,
    }
}

fn classify(error: &std::io::Error, host: &str) -> Outcome {
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return match error.kind() {
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Outcome::Failed(
                "the server closed the connection during the TLS handshake: is this its TLS port (secureClientPort)?".into(),
            ),
            _ => Outcome::Unreachable,
        };
    };
    let why = match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by a CA in --zk-tls-ca (untrusted server)".to_string()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the server's certificate is not valid for the name {host:?} (name mismatch: connect by a name or address the certificate lists)"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired".to_string(),
        rustls::Error::InvalidCertificate(other) => {
            format!("the server's certificate is not accepted: {other:?}")
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            "the server requires a client certificate: give --zk-tls-cert and --zk-tls-key".to_string()
        }
        rustls::Error::AlertReceived(alert) => format!(
            "the server ended the handshake ({alert:?}): does it trust the client certificate (--zk-tls-cert)?"
        ),
        rustls::Error::InvalidMessage(_) => {
            "the server does not speak TLS on this port (a plaintext clientPort?)".to_string()
        }
        other => other.to_string(),
    };
    Outcome::Failed(why)
}
