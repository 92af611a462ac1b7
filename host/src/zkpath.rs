//! ZooKeeper addresses: connect strings and node paths, checked up front so
//! that a typo is reported as such instead of as a connection failure.

use std::fmt;

/// A parsed connect string: `host:port[,host:port...][/chroot]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectString {
    /// The servers of the ensemble, in the order given.
    pub servers: Vec<(String, u16)>,
    /// The chroot every path is relative to, if any.
    pub chroot: Option<String>,
}

/// Why a connect string or path was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} {input:?}: {reason}")]
pub struct AddressError {
    what: &'static str,
    input: String,
    reason: String,
}

impl AddressError {
    fn connect(input: &str, reason: impl Into<String>) -> AddressError {
        AddressError { what: "bad ZooKeeper connect string", input: input.to_string(), reason: reason.into() }
    }
}

impl ConnectString {
    /// Parses `h1:2181,h2:2181,h3:2181/optional/chroot`; a missing port is 2181.
    pub fn parse(input: &str) -> Result<ConnectString, AddressError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(AddressError::connect(input, "it is empty"));
        }
        let (hosts, chroot) = match trimmed.find('/') {
            Some(i) => (&trimmed[..i], Some(&trimmed[i..])),
            None => (trimmed, None),
        };
        let mut servers = Vec::new();
        for part in hosts.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(AddressError::connect(input, "it has an empty server between commas"));
            }
            servers.push(parse_server(part).map_err(|reason| AddressError::connect(input, reason))?);
        }
        let chroot = match chroot {
            None => None,
            Some(path) => {
                check_path(path)
                    .map_err(|reason| AddressError::connect(input, format!("chroot {reason}")))?;
                Some(path.to_string())
            }
        };
        Ok(ConnectString { servers, chroot })
    }

    /// The servers as the client library takes them, without the chroot.
    pub fn servers_string(&self) -> String {
        self.addresses().join(",")
    }

    fn addresses(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|(h, p)| if h.contains(':') { format!("[{h}]:{p}") } else { format!("{h}:{p}") })
            .collect()
    }

    /// Why the servers cannot be reached, as the sockets tell it (the
    /// ZooKeeper client only says that no host was available): each
    /// server's name lookup or TCP connect error, tried at once, within
    /// `timeout` each. Servers that accept a connection are left out.
    pub async fn probe(&self, timeout: std::time::Duration) -> String {
        let mut tries = tokio::task::JoinSet::new();
        for (i, addr) in self.addresses().into_iter().enumerate() {
            tries.spawn(async move {
                let outcome = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await
                {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("timed out after {}", humantime::format_duration(timeout))),
                };
                (i, outcome.map(|why| format!("{addr}: {why}")))
            });
        }
        let mut found: Vec<(usize, String)> =
            tries.join_all().await.into_iter().filter_map(|(i, why)| why.map(|w| (i, w))).collect();
        found.sort();
        let causes: Vec<String> = found.into_iter().map(|(_, why)| why).collect();
        if causes.is_empty() { "every server accepts TCP connections".into() } else { causes.join("; ") }
    }
}

impl fmt::Display for ConnectString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.servers_string(), self.chroot.as_deref().unwrap_or(""))
    }
}

fn parse_server(part: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = part.strip_prefix('[') {
        let end = rest.find(']').ok_or_else(|| format!("server {part:?} has an unclosed '['"))?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("server {part:?} has text after ']'")),
        };
        (host, port)
    } else {
        match part.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (part, None),
        }
    };
    if host.is_empty() {
        return Err(format!("server {part:?} has no host"));
    }
    if let Some(bad) = host.chars().find(|c| c.is_whitespace() || matches!(c, '/' | '@' | '?' | '#')) {
        return Err(format!("server {part:?} has {bad:?} in its host name"));
    }
    let port = match port {
        None => 2181,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("server {part:?} has port {p:?}; a port is 1 to 65535")),
            Ok(n) => n,
        },
    };
    Ok((host.to_string(), port))
}

/// Checks an absolute ZooKeeper node path such as `/zkrun/elections/job`.
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    if path == "/" {
        return Err("\"/\" is the root; name a node under it".to_string());
    }
    if path.ends_with('/') {
        return Err(format!("{path:?} must not end with '/'"));
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(format!("{path:?} has an empty segment"));
        }
        if segment == "." || segment == ".." {
            return Err(format!("{path:?} has a relative segment {segment:?}"));
        }
        if let Some(c) = segment.chars().find(|c| c.is_control()) {
            return Err(format!("{path:?} has a control character {c:?}"));
        }
    }
    if path == "/zookeeper" || path.starts_with("/zookeeper/") {
        return Err(format!("{path:?} is reserved by ZooKeeper"));
    }
    Ok(())
}

/// Checks an election path, with an error that names it as one.
pub fn check_election_path(path: &str) -> Result<(), AddressError> {
    check_path(path).map_err(|reason| AddressError {
        what: "bad election path",
        input: path.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ensembles_ports_and_chroots() {
        let c = ConnectString::parse("a:2181,b:2182,c/app/x").unwrap();
        assert_eq!(c.servers, vec![("a".into(), 2181), ("b".into(), 2182), ("c".into(), 2181)]);
        assert_eq!(c.chroot.as_deref(), Some("/app/x"));
        assert_eq!(c.servers_string(), "a:2181,b:2182,c:2181");
        let v6 = ConnectString::parse("[::1]:2181").unwrap();
        assert_eq!(v6.servers, vec![("::1".into(), 2181)]);
        assert_eq!(v6.servers_string(), "[::1]:2181");
    }

    #[test]
    fn rejects_typos_with_a_reason() {
        for (bad, needle) in [
            ("", "empty"),
            ("a:2181,,b:2181", "empty server"),
            ("a:99999", "port"),
            ("a:0", "port"),
            ("a:x", "port"),
            (":2181", "no host"),
            ("a b:2181", "host name"),
            ("a:2181/", "chroot"),
            ("a:2181/x//y", "chroot"),
        ] {
            let err = ConnectString::parse(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?} gave {err:?}");
        }
    }

    #[test]
    fn election_paths_must_be_absolute_and_plain() {
        assert!(check_election_path("/zkrun/job").is_ok());
        for bad in ["zkrun", "/", "/a/", "/a//b", "/a/../b", "/zookeeper/x"] {
            assert!(check_election_path(bad).is_err(), "{bad}");
        }
    }
}
