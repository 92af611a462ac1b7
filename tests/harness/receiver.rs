//! A loopback HTTP server that receives a leader's stamped requests and
//! fences on `zkrun-term` as docs/egress.md tells a real service to: a
//! request whose term is lower than the highest seen is refused (409).
//!
//! It records every request that arrives whole, notices requests that
//! arrive out of term order, and can hold its answers to keep requests in
//! flight, noticing when the client drops such a connection. Every read
//! from a connection is stamped on CLOCK_MONOTONIC, so each request also
//! says when its first and last bytes arrived; requests cut off mid-body
//! are kept apart ([`Receiver::cut_off`]), with the same stamps.

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
    /// CLOCK_MONOTONIC of the read that brought its first byte.
    pub first_byte_ns: u64,
    /// CLOCK_MONOTONIC of the read that brought its last byte.
    pub last_byte_ns: u64,
    /// Reads that brought its bytes (a slow body arrives in many).
    pub chunks: usize,
}

#[derive(Default)]
struct Shared {
    arrivals: Mutex<Vec<Arrival>>,
    /// Requests whose head arrived but whose body was cut off.
    cut_off: Mutex<Vec<Arrival>>,
    /// Request heads that arrived (bodies may still be under way).
    heads: AtomicU64,
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

    /// Requests whose head arrived but whose connection closed mid-body
    /// (the body then holds what arrived).
    pub fn cut_off(&self) -> Vec<Arrival> {
        self.shared.cut_off.lock().unwrap().clone()
    }

    /// How many request heads arrived so far (their bodies may be under way).
    pub fn heads(&self) -> u64 {
        self.shared.heads.load(Ordering::Acquire)
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
    let mut reader = BufReader::new(Stamped { stream, first: None, last: 0, reads: 0 });
    loop {
        // Bytes already buffered belong to this request: its first read is
        // the one that brought them, or the next.
        let buffered = !reader.buffer().is_empty();
        let stamps = reader.get_ref();
        let (first, reads) = (if buffered { Some(stamps.last) } else { None }, usize::from(buffered));
        let stamps = reader.get_mut();
        stamps.first = first;
        stamps.reads = reads;
        let Some((path, headers)) = read_head(&mut reader) else { return };
        shared.heads.fetch_add(1, Ordering::AcqRel);
        let body = read_body(&mut reader, &headers);
        let header =
            |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        let term = header("zkrun-term").and_then(|t| t.parse::<u64>().ok());
        let stamps = reader.get_ref();
        let (first_byte_ns, last_byte_ns, chunks) =
            (stamps.first.unwrap_or(stamps.last), stamps.last, stamps.reads);
        let (body, trailers) = match body {
            Ok(whole) => whole,
            Err(partial) => {
                shared.cut_off.lock().unwrap().push(Arrival {
                    mono_ns: last_byte_ns,
                    path,
                    term,
                    participant: header("zkrun-participant"),
                    election: header("zkrun-election"),
                    body: String::from_utf8_lossy(&partial).into_owned(),
                    headers: headers.clone(),
                    trailers: Vec::new(),
                    refused: false,
                    first_byte_ns,
                    last_byte_ns,
                    chunks,
                });
                return;
            }
        };
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
                first_byte_ns,
                last_byte_ns,
                chunks,
            });
            refused
        };
        let hold = *shared.hold.lock().unwrap();
        if let Some(hold) = hold
            && client_hangs_up_within(&reader.get_ref().stream, hold)
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

/// A connection whose every read that brings bytes is stamped.
struct Stamped {
    stream: TcpStream,
    /// The first read of the current request, if it brought bytes yet.
    first: Option<u64>,
    /// The latest read that brought bytes.
    last: u64,
    /// Reads that brought bytes since the current request began.
    reads: usize,
}

impl Read for Stamped {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stream.read(buf)?;
        if n > 0 {
            let now = crate::monotonic_ns();
            self.first.get_or_insert(now);
            self.last = now;
            self.reads += 1;
        }
        Ok(n)
    }
}

type Head = (String, Vec<(String, String)>);

/// Reads one request's head.
fn read_head(reader: &mut BufReader<Stamped>) -> Option<Head> {
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
    Some((path, headers))
}

/// One request's body and a chunked body's trailers.
type Body = (Vec<u8>, Vec<(String, String)>);

/// Reads one request's body (content-length or chunked, with a chunked
/// body's trailers); `Err` holds what arrived before the connection closed.
fn read_body(reader: &mut BufReader<Stamped>, headers: &[(String, String)]) -> Result<Body, Vec<u8>> {
    let value =
        |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            if reader.read_line(&mut size).unwrap_or(0) == 0 {
                return Err(body);
            }
            let Some(size) = size.trim().split(';').next().and_then(|s| usize::from_str_radix(s, 16).ok())
            else {
                return Err(body);
            };
            if size == 0 {
                // Trailer lines, up to an empty line.
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return Err(body);
                    }
                    let line = line.trim_end_matches(['\r', '\n']);
                    if line.is_empty() {
                        break;
                    }
                    let Some((name, value)) = line.split_once(':') else { return Err(body) };
                    trailers.push((name.trim().to_string(), value.trim().to_string()));
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            if reader.read_exact(&mut chunk).is_err() {
                return Err(body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = value("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        let mut rest = vec![0; length];
        let mut got = 0;
        while got < length {
            match reader.read(&mut rest[got..]) {
                Ok(0) | Err(_) => {
                    body.extend_from_slice(&rest[..got]);
                    return Err(body);
                }
                Ok(n) => got += n,
            }
        }
        body = rest;
    }
    Ok((body, trailers))
}
