//! `witness`: the chaos harness's eyes inside the job.
//!
//! Every tick logs when it started and when it ended, read from
//! `wasi:clocks/monotonic-clock`, which zkrun backs with the machine's
//! CLOCK_MONOTONIC: the times of all participants on one machine compare.
//! In between, it increments the fenced counter (as `counter` does), so the
//! checker can also look for lost or duplicated increments.
//!
//! Log lines (parsed by `tests/harness/chaos.rs`):
//! - `witness start <ns> term <T>`
//! - `committed <N> under term <T> (version <V>)` / `write of <N> ...`
//! - `blind put term <T> seq <N> version <V>`, `blind read term <T> seq <N>
//!   version <V>` (blind mode)
//! - `witness end <start ns> <end ns> term <T>`
//!
//! A tick cut off by zkrun (leadership lost) logs no end: zkrun refuses
//! every host call after the lease, including these logs. So that such a
//! tick still leaves a record, the witness also appends to a journal in a
//! granted directory (`/journal/ticks`, if granted), which no permit
//! guards: `start <ns> term <T>` before anything else, and the outcome of
//! each blind put. A tick that ran when it should not have shows there.
//!
//! With `--plugin-config url=...` (and zkrun's `--allow-http`), every tick
//! also POSTs `term <T> seq <N>` to that URL and logs `http <status> term
//! <T> seq <N>` or `http failed term <T> seq <N>: <error>`: the chaos
//! receiver checks that terms never arrive out of order.
//!
//! Blind mode (`--plugin-config blind=on`): every tick first reads and logs
//! the value under `blind`, and every other tick, instead of the counter
//! increment, puts `term <T> seq <N>` there without compare-and-set. Only
//! the fence then stops a deposed leader's write, so a write landing after
//! the successor's shows as a term going back in version order (seen by its
//! writer or by the successor's next read).
//!
//! Scheduled runs (zkrun `--every`/`--schedule`): a run that is for a slot
//! also journals and logs `slot <id> attempt <A> term <T> start <ns>`
//! right after its start line, so the checker can tell each slot's starts
//! apart by attempt and hold them against the ledger in ZooKeeper.
//!
//! Slow bodies (`--plugin-config slow-body=on`): in every third term
//! (`term % 3 == 1`) the POST streams its body in [`SLOW_CHUNKS`] chunks
//! [`SLOW_GAP_MS`] apart, so a request can straddle the end of its lease:
//! the chaos receiver stamps each chunk, and no byte may arrive after the
//! sender's leadership window (zkrun checks the permit on every socket
//! write). Logs `http slow <status> term <T> seq <N>` or `http slow failed
//! term <T> seq <N>: <error>`.
//!
//! Quota bursts (`--plugin-config quota=on`, run with a small
//! `--state-max-writes`): in every third term (`term % 3 == 0`) each tick
//! puts a [`BURST_BYTES`]-byte value under one of [`BURST_KEYS`] keys in
//! turn (past a 1 MiB byte quota once they fill), and every fifth tick a
//! burst of small writes past the write rate. Each value starts with
//! `tag <term>.<instance>.<seq>.<k>` (`instance`: when this instance first
//! ticked, since a term may get a fresh instance after a hook stopped in
//! doubt, and its ticks count from 1 again); a write refused for the quota logs (and
//! journals) `quota refused <key> tag <tag>: <error>`, one that landed
//! `quota put <key> tag <tag> version <V>`. The checker asserts that no
//! refused tag is ever stored.

wit_bindgen::generate!({ path: "../../wit", world: "job" });

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use wasi::clocks::monotonic_clock;
use zkrun::plugin::host::{config, log};
use zkrun::plugin::slots;
use zkrun::plugin::state::{self, StateError};
use zkrun::plugin::types::Level;

const KEY: &str = "counter";
const BLIND_KEY: &str = "blind";
const JOURNAL: &str = "/journal/ticks";

/// Ticks of this instance, numbering its blind puts.
static TICKS: AtomicU64 = AtomicU64::new(0);
/// When this instance first wrote a quota burst (tags must be unique).
static INSTANCE: AtomicU64 = AtomicU64::new(0);

struct Witness;

impl Guest for Witness {
    fn on_elected(leadership: Leadership) -> Result<(), String> {
        log(Level::Info, &format!("witness elected term {}", leadership.term));
        Ok(())
    }

    fn tick(leadership: Leadership) -> Result<(), String> {
        let term = leadership.term;
        let start = monotonic_clock::now();
        journal(&format!("start {start} term {term}"));
        log(Level::Info, &format!("witness start {start} term {term}"));
        if let Some(slot) = slots::current() {
            let line = format!("slot {} attempt {} term {term} start {start}", slot.id, slot.attempt);
            journal(&line);
            log(Level::Info, &format!("witness {line}"));
        }
        let seq = TICKS.fetch_add(1, Ordering::Relaxed) + 1;
        let blind = config("blind").as_deref() == Some("on");
        if blind {
            observe_blind();
        }
        if blind && seq % 2 == 1 {
            blind_put(term, seq);
        } else {
            increment(term);
        }
        if config("quota").as_deref() == Some("on") && term % 3 == 0 {
            quota_burst(term, seq);
        }
        if let Some(url) = config("url") {
            let slow = config("slow-body");
            if slow.as_deref() == Some("always") || (slow.as_deref() == Some("on") && term % 3 == 1) {
                post_slowly(&url, term, seq);
            } else {
                post(&url, term, seq);
            }
        }
        let end = monotonic_clock::now();
        log(Level::Info, &format!("witness end {start} {end} term {term}"));
        Ok(())
    }

    fn on_demoted(_: DemoteReason) {}
}

/// Appends a line to the journal, if one was granted; nothing guards it.
fn journal(line: &str) {
    // One write per line: a hook can be cut off between two writes.
    if let Ok(mut file) = std::fs::OpenOptions::new().append(true).create(true).open(JOURNAL) {
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

/// Logs the blind value as read: a deposed leader's put that landed shows
/// here even if its writer never got to record it.
fn observe_blind() {
    if let Ok(Some(entry)) = state::get(BLIND_KEY) {
        let value = String::from_utf8_lossy(&entry.value).into_owned();
        log(Level::Info, &format!("blind read {value} version {}", entry.version));
    }
}

fn blind_put(term: u64, seq: u64) {
    match state::put(BLIND_KEY, format!("term {term} seq {seq}").as_bytes()) {
        Ok(version) => {
            let line = format!("blind put term {term} seq {seq} version {version}");
            journal(&line);
            log(Level::Info, &line);
        }
        Err(e) => {
            journal(&format!("blind refused term {term} seq {seq}: {e:?}"));
            log(Level::Warn, &format!("blind put of seq {seq} failed: {e:?}"));
        }
    }
}

/// One stamped request to the chaos receiver (zkrun adds `zkrun-term`).
fn post(url: &str, term: u64, seq: u64) {
    use wstd::http::{Body, Client, Request};
    let sent = wstd::runtime::block_on(async {
        let request = Request::post(url)
            .body(Body::from(format!("term {term} seq {seq}")))
            .map_err(|e| e.to_string())?;
        let mut response = Client::new().send(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        response.body_mut().contents().await.map_err(|e| e.to_string())?;
        Ok::<u16, String>(status)
    });
    match sent {
        Ok(status) => log(Level::Info, &format!("http {status} term {term} seq {seq}")),
        Err(e) => log(Level::Warn, &format!("http failed term {term} seq {seq}: {e}")),
    }
}

/// Chunks of a slow body (`--plugin-config slow-chunks=<N>` sets another
/// number; `slow-body=always` streams slowly in every term).
const SLOW_CHUNKS: u64 = 8;
/// Time between two chunks of a slow body.
const SLOW_GAP_MS: u64 = 40;

/// A stamped POST whose body leaves in chunks over about 300 ms, written
/// with the raw `wasi:http` interfaces so each chunk is its own write.
fn post_slowly(url: &str, term: u64, seq: u64) {
    match send_slowly(url, term, seq) {
        Ok(status) => log(Level::Info, &format!("http slow {status} term {term} seq {seq}")),
        Err(e) => log(Level::Warn, &format!("http slow failed term {term} seq {seq}: {e}")),
    }
}

fn send_slowly(url: &str, term: u64, seq: u64) -> Result<u16, String> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs stream slowly")?;
    let (authority, path) =
        rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Post).map_err(|()| "method")?;
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "authority")?;
    request.set_path_with_query(Some(&path)).map_err(|()| "path")?;
    let body = request.body().map_err(|()| "body")?;
    let response = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    {
        let stream = body.write().map_err(|()| "body stream")?;
        let chunks = config("slow-chunks").and_then(|n| n.parse().ok()).unwrap_or(SLOW_CHUNKS);
        for k in 0..chunks {
            let chunk = format!("term {term} seq {seq} chunk {k}\n");
            stream.blocking_write_and_flush(chunk.as_bytes()).map_err(|e| format!("chunk {k}: {e:?}"))?;
            if k + 1 < chunks {
                monotonic_clock::subscribe_duration(SLOW_GAP_MS * 1_000_000).block();
            }
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| format!("finish: {e:?}"))?;
    let ready = response.subscribe();
    ready.block();
    let answer = response.get().ok_or("no response")?.map_err(|()| "response taken")?;
    let answer = answer.map_err(|e| format!("{e:?}"))?;
    Ok(answer.status())
}

/// Keys the byte bursts cycle through.
const BURST_KEYS: u64 = 20;
/// Size of one byte-burst value: 18 of them pass a 1 MiB quota.
const BURST_BYTES: usize = 60 * 1024;
/// Small writes in one rate burst, at most (it stops at the first refusal).
const RATE_BURST: u64 = 30;

/// Writes past the quota on purpose: one large value per tick, and every
/// fifth tick a burst of small ones past the write rate.
fn quota_burst(term: u64, seq: u64) {
    let key = format!("burst-{}", seq % BURST_KEYS);
    let _ = INSTANCE.compare_exchange(0, monotonic_clock::now(), Ordering::Relaxed, Ordering::Relaxed);
    let instance = INSTANCE.load(Ordering::Relaxed);
    let tag = format!("{term}.{instance}.{seq}.0");
    let mut value = format!("tag {tag} ").into_bytes();
    value.resize(BURST_BYTES, b'x');
    quota_put(&key, &tag, &value);
    if seq % 5 == 0 {
        for k in 1..=RATE_BURST {
            let tag = format!("{term}.{instance}.{seq}.{k}");
            if !quota_put("burst-rate", &tag, format!("tag {tag}").as_bytes()) {
                break;
            }
        }
    }
}

/// One tagged write; false if it was refused or failed.
fn quota_put(key: &str, tag: &str, value: &[u8]) -> bool {
    match state::put(key, value) {
        Ok(version) => {
            log(Level::Info, &format!("quota put {key} tag {tag} version {version}"));
            true
        }
        Err(StateError::Unavailable(why)) if why.starts_with("quota exceeded") => {
            let line = format!("quota refused {key} tag {tag}: {why}");
            journal(&line);
            log(Level::Info, &line);
            false
        }
        Err(e) => {
            log(Level::Warn, &format!("quota write {key} tag {tag} failed: {e:?}"));
            false
        }
    }
}

fn increment(term: u64) {
    let (current, version) = match state::get(KEY) {
        Ok(Some(entry)) => {
            let text = String::from_utf8_lossy(&entry.value).into_owned();
            let value = text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (value, Some(entry.version))
        }
        Ok(None) => (0, None),
        Err(e) => {
            log(Level::Warn, &format!("cannot read the counter: {e:?}"));
            return;
        }
    };
    let next = current + 1;
    match state::compare_and_set(KEY, version, format!("{next} {term}").as_bytes()) {
        Ok(v) => log(Level::Info, &format!("committed {next} under term {term} (version {v})")),
        Err(StateError::NotLeader) => log(Level::Warn, &format!("write of {next} refused: not-leader")),
        Err(StateError::Conflict) => log(Level::Warn, &format!("write of {next} lost a race: conflict")),
        Err(other) => log(Level::Warn, &format!("write of {next} failed: {other:?}")),
    }
}

export!(Witness);
