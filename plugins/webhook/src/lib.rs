//! `webhook`: a leader-only job that calls the outside world.
//!
//! On every tick it POSTs `{"term":…,"participant":…,"tick":…}` to the URL
//! in `--plugin-config url=…`. zkrun sends it only if the operator allowed
//! the URL (`--allow-http PREFIX`), only while this host's lease is fresh,
//! and stamps it with `zkrun-term`, `zkrun-election` and `zkrun-participant`,
//! so the receiver can refuse a deposed leader (see docs/egress.md).
//!
//! The HTTP client is `wstd`'s; the hooks are plain synchronous functions, so
//! each runs its request to completion with `wstd::runtime::block_on`.

use std::sync::atomic::{AtomicU64, Ordering};

use wstd::http::{Body, Client, Request};

wit_bindgen::generate!({ path: "../../wit", world: "job" });

use zkrun::plugin::host::{config, log};
use zkrun::plugin::types::Level;

/// Ticks in this term (a fresh instance serves each term).
static TICKS: AtomicU64 = AtomicU64::new(0);

struct Webhook;

impl Guest for Webhook {
    fn on_elected(leadership: Leadership) -> Result<(), String> {
        let url = config("url").ok_or("no url: run zkrun with --plugin-config url=https://...")?;
        log(Level::Info, &format!("elected: term {}; posting every tick to {url}", leadership.term));
        Ok(())
    }

    fn tick(leadership: Leadership) -> Result<(), String> {
        let url = config("url").ok_or("no url configured")?;
        let tick = TICKS.fetch_add(1, Ordering::Relaxed) + 1;
        let document = format!(
            r#"{{"term":{},"participant":"{}","tick":{tick}}}"#,
            leadership.term,
            escape(&leadership.participant)
        );
        match wstd::runtime::block_on(post(&url, document)) {
            Ok(status) if (200..300).contains(&status) => {
                log(Level::Debug, &format!("tick {tick}: {url} answered {status}"));
            }
            // A refusal from the receiver (e.g. 409 for a stale term) is
            // logged, not fatal: the next tick tries again.
            Ok(status) => log(Level::Warn, &format!("tick {tick}: {url} answered {status}")),
            Err(error) => log(Level::Warn, &format!("tick {tick}: POST {url} failed: {error}")),
        }
        Ok(())
    }

    fn on_demoted(_reason: DemoteReason) {
        let ticks = TICKS.load(Ordering::Relaxed);
        log(Level::Info, &format!("demoted after {ticks} ticks"));
    }
}

/// Sends one POST and returns the response status, after reading the body
/// (so the connection ends cleanly).
async fn post(url: &str, document: String) -> Result<u16, String> {
    let request = Request::post(url)
        .header("content-type", "application/json")
        .body(Body::from(document))
        .map_err(|e| format!("bad request: {e}"))?;
    let response = Client::new().send(request).await.map_err(|e| format!("{e}"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    body.contents().await.map_err(|e| format!("reading the response: {e}"))?;
    Ok(status)
}

/// Escapes a string for a JSON string literal.
fn escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect()
}

export!(Webhook);
