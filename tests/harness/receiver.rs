//! A loopback HTTP server that receives a leader's stamped requests and
//! fences on `zkrun-term` as docs/egress.md tells a real service to: a
//! request whose term is lower than the highest seen is refused (409).
//!
//! It records every request that arrives whole, notices requests that
//! arrive out of term order, and can hold its answers to keep requests in
//! flight, noticing when the client drops such a connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request that arrived whole.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// When it arrived (CLOCK_MONOTONIC, comparable with zkrun's `mono_ns`).
    pub mono_ns: u64,
    /// The request path.
    pub path: String,
    /// `zkrun-term`, if sent.
    pub term: Option<u64>,
    /// `zkrun-participant`, if sent.
    pub participant: Option<String>,
    /// `zkrun-election`, if sent.
    pub election: Option<String>,
    /// The body.
    pub body: String,
    /// Every header, as received.
    pub headers: Vec<(String, String)>,
    /// The trailers of a chunked body, as received.
    pub trailers: Vec<(String, String)>,
    /// Whether the receiver refused it for a stale term.
    pub refused: bool,
}

#[derive(Default)]
struct Shared {
    arrivals: Mutex<Vec<Arrival>>,
    highest_term: AtomicU64,
    /// Arrivals whose term was lower than one that arrived before.
    out_of_order: AtomicU64,
    /// Held requests whose client hung up before the answer.
    dropped: AtomicU64,
    hold: Mutex<Option<Duration>>,
    stop: AtomicBool,
}

/// The running server; stops on drop.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Starts on a free loopback port.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP receiver");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = accepting.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Receiver { addr, shared }
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Holds every answer this long from now on (`None`: answer at once),
    /// keeping requests in flight.
    pub fn hold(&self, hold: Option<Duration>) {
        *self.shared.hold.lock().unwrap() = hold;
    }

    /// Every request that arrived whole, in order of arrival.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.arrivals.lock().unwrap().clone()
    }

    /// How many arrived with a term lower than one that arrived earlier.
    pub fn out_of_order(&self) -> u64 {
        self.shared.out_of_order.load(Ordering::Acquire)
    }

    /// How many held requests the client dropped before the answer.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Acquire)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves one connection: requests one after another (keep-alive).
fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    while let Some(Request { path, headers, body, trailers }) = read_request(&mut reader) {
        let header =
            |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        let term = header("zkrun-term").and_then(|t| t.parse::<u64>().ok());
        let refused = {
            // One lock over check and record, so arrivals are in term order
            // exactly when their records are.
            let mut arrivals = shared.arrivals.lock().unwrap();
            let highest = shared.highest_term.load(Ordering::Acquire);
            let refused = term.is_some_and(|t| t < highest);
            if refused {
                shared.out_of_order.fetch_add(1, Ordering::AcqRel);
            }
            if let Some(t) = term {
                shared.highest_term.fetch_max(t, Ordering::AcqRel);
            }
            arrivals.push(Arrival {
                mono_ns: crate::monotonic_ns(),
                path,
                term,
                participant: header("zkrun-participant"),
                election: header("zkrun-election"),
                body: String::from_utf8_lossy(&body).into_owned(),
                headers: headers.clone(),
                trailers,
                refused,
            });
            refused
        };
        let hold = *shared.hold.lock().unwrap();
        if let Some(hold) = hold
            && client_hangs_up_within(reader.get_ref(), hold)
        {
            shared.dropped.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let (status, text) = if refused { ("409 Conflict", "stale term\n") } else { ("200 OK", "ok\n") };
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{text}", text.len());
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Waits up to `hold` for the client to close the connection.
fn client_hangs_up_within(stream: &TcpStream, hold: Duration) -> bool {
    let _ = stream.set_read_timeout(Some(hold));
    let mut byte = [0u8; 1];
    let closed = match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    closed
}

/// One request as read off the wire.
struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

/// Reads one request (head, then a content-length or chunked body, and a
/// chunked body's trailers).
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        let end = line == b"\r\n";
        head.extend_from_slice(&line);
        if end {
            break;
        }
    }
    let mut parsed = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut parsed);
    request.parse(&head).ok()?;
    let path = request.path?.to_string();
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let value =
        |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if size == 0 {
                // Trailer lines, up to an empty line.
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).ok()?;
                    let line = line.trim_end_matches(['\r', '\n']);
                    if line.is_empty() {
                        break;
                    }
                    let (name, value) = line.split_once(':')?;
                    trailers.push((name.trim().to_string(), value.trim().to_string()));
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = value("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        body.resize(length, 0);
        reader.read_exact(&mut body).ok()?;
    }
    Some(Request { path, headers, body, trailers })
}
