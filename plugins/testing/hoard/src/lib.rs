//! Test plugin: makes the host hold memory for it through `wasi:http`
//! resources it never sends, once per tick. Configuration `hoard`:
//! - `bodies`: 1,000 outgoing requests, each with a body filled with up to
//!   1 MiB (as much as the host's stream accepts without sending);
//! - `fields`: 8,000 `fields`, each filled with 56 KiB of headers (under
//!   zkrun's 64 KiB cap on one `fields`, which traps past it).
//!
//! Everything is kept alive until the tick ends. Each tick logs one summary
//! line, `hoard: <what> made <n> holding <bytes> bytes refused <m> (<first
//! refusal>)`, if the host lets it get that far.

wit_bindgen::generate!({ path: "../../../wit", world: "job" });

use wasi::http::types::{Fields, OutgoingBody, OutgoingRequest};
use zkrun::plugin::host::{config, log};
use zkrun::plugin::types::Level;

struct Hoard;

/// What one tick built and what the host refused.
#[derive(Default)]
struct Tally {
    made: u32,
    bytes: u64,
    refused: u32,
    first: Option<String>,
}

impl Tally {
    fn refuse(&mut self, why: String) {
        self.refused += 1;
        self.first.get_or_insert(why);
    }
}

/// 1,000 requests with bodies of up to 1 MiB each, unsent.
fn bodies(tally: &mut Tally) -> Vec<(OutgoingRequest, OutgoingBody)> {
    let chunk = vec![b'b'; 64 * 1024];
    let mut kept = Vec::new();
    for _ in 0..1000 {
        let request = OutgoingRequest::new(Fields::new());
        let Ok(body) = request.body() else {
            tally.refuse("outgoing-request.body refused".into());
            continue;
        };
        let Ok(stream) = body.write() else {
            tally.refuse("outgoing-body.write refused".into());
            continue;
        };
        let mut written = 0usize;
        while written < 1 << 20 {
            match stream.check_write() {
                Ok(0) => break,
                Ok(n) => {
                    let n = (n as usize).min(chunk.len()).min((1 << 20) - written);
                    if let Err(e) = stream.write(&chunk[..n]) {
                        tally.refuse(format!("write: {e:?}"));
                        break;
                    }
                    written += n;
                }
                Err(e) => {
                    tally.refuse(format!("check-write: {e:?}"));
                    break;
                }
            }
        }
        drop(stream);
        tally.made += 1;
        tally.bytes += written as u64;
        kept.push((request, body));
    }
    kept
}

/// 8,000 fields of 56 KiB of headers each.
fn fields(tally: &mut Tally) -> Vec<Fields> {
    let value = vec![b'v'; 8 * 1024];
    let mut kept = Vec::new();
    for _ in 0..8000 {
        let fields = Fields::new();
        let mut held = 0u64;
        for i in 0..7 {
            match fields.append(&format!("x-hoard-{i}"), &value) {
                Ok(()) => held += value.len() as u64,
                Err(e) => {
                    tally.refuse(format!("append: {e:?}"));
                    break;
                }
            }
        }
        tally.made += 1;
        tally.bytes += held;
        kept.push(fields);
    }
    kept
}

impl Guest for Hoard {
    fn on_elected(_: Leadership) -> Result<(), String> {
        Ok(())
    }

    fn tick(_: Leadership) -> Result<(), String> {
        let what = config("hoard").unwrap_or_else(|| "bodies".into());
        let mut tally = Tally::default();
        match what.as_str() {
            "bodies" => drop(bodies(&mut tally)),
            "fields" => drop(fields(&mut tally)),
            other => return Err(format!("unknown hoard {other:?}")),
        }
        let first = tally.first.unwrap_or_default();
        log(
            Level::Info,
            &format!(
                "hoard: {what} made {} holding {} bytes refused {} ({first})",
                tally.made, tally.bytes, tally.refused
            ),
        );
        Ok(())
    }

    fn on_demoted(_: DemoteReason) {}
}

export!(Hoard);
