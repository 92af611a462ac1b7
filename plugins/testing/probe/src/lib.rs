//! Test plugin: on every tick, tries to reach outside its sandbox and logs
//! what happened, one line per attempt:
//!
//! - `env: <n> variables [NAME=value, ...]`
//! - `file <path>: read <n> bytes: <content>` or `file <path>: error <e>`
//! - `tcp 127.0.0.1:<port>: connected` or `tcp 127.0.0.1:<port>: error <e>`
//!
//! Configuration: `file` (default `/etc/hostname`), `tcp-port` (default
//! 2181), `state` (set to anything: also write and read fenced state in
//! `tick`, and try both again in `on-demoted`, logging each result as
//! `state <hook> <op>: <result>`).

use std::io::Read;

wit_bindgen::generate!({ path: "../../../wit", world: "job" });

use zkrun::plugin::host::{config, log};
use zkrun::plugin::state;
use zkrun::plugin::types::Level;

struct Probe;

impl Guest for Probe {
    fn on_elected(_: Leadership) -> Result<(), String> {
        Ok(())
    }

    fn tick(_: Leadership) -> Result<(), String> {
        let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        log(Level::Info, &format!("env: {} variables [{}]", vars.len(), vars.join(", ")));

        let path = config("file").unwrap_or_else(|| "/etc/hostname".to_string());
        let outcome = std::fs::File::open(&path).and_then(|mut f| {
            let mut content = String::new();
            f.read_to_string(&mut content).map(|n| format!("read {n} bytes: {}", content.trim()))
        });
        match outcome {
            Ok(text) => log(Level::Info, &format!("file {path}: {text}")),
            Err(e) => log(Level::Info, &format!("file {path}: error {e}")),
        }

        let port: u16 = config("tcp-port").and_then(|p| p.parse().ok()).unwrap_or(2181);
        match connect(port) {
            Ok(()) => log(Level::Info, &format!("tcp 127.0.0.1:{port}: connected")),
            Err(e) => log(Level::Info, &format!("tcp 127.0.0.1:{port}: error {e}")),
        }
        if config("state").is_some() {
            probe_state("tick", b"written in tick");
        }
        Ok(())
    }

    fn on_demoted(_: DemoteReason) {
        if config("state").is_some() {
            probe_state("on-demoted", b"written in on-demoted");
        }
    }
}

fn probe_state(hook: &str, value: &[u8]) {
    let put = state::put("probe", value);
    log(Level::Info, &format!("state {hook} put: {put:?}"));
    let got = state::get("probe").map(|e| e.map(|e| String::from_utf8_lossy(&e.value).into_owned()));
    log(Level::Info, &format!("state {hook} get: {got:?}"));
}

/// Connects with `wasi:sockets` directly (Debian's wasi-libc predates them).
fn connect(port: u16) -> Result<(), String> {
    use wasi::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    let network = wasi::sockets::instance_network::instance_network();
    let socket = wasi::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4)
        .map_err(|e| format!("{e:?}"))?;
    let address = IpSocketAddress::Ipv4(Ipv4SocketAddress { port, address: (127, 0, 0, 1) });
    socket.start_connect(&network, address).map_err(|e| format!("{e:?}"))?;
    socket.subscribe().block();
    socket.finish_connect().map(|_| ()).map_err(|e| format!("{e:?}"))
}

export!(Probe);
