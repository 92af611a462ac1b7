//! `nightly`: the template for a scheduled job.
//!
//! Run it with a schedule, e.g.
//! `zkrun --plugin nightly.wasm --schedule "0 2 * * *" --timezone Europe/Berlin
//! --allow-http https://reports.example/ --plugin-config url=https://reports.example/nightly`.
//! zkrun then calls `tick` once per slot, fleet-wide, after claiming the
//! slot in ZooKeeper; a run cut off by a failover is retried by the next
//! leader as the next attempt (`docs/schedules.md`).
//!
//! Each run POSTs `{"slot":…,"due_ms":…,"attempt":…,"term":…,"participant":…}`
//! to the configured URL. The slot id is the same on every host and for
//! every attempt, so the receiver can keep one report per slot (zkrun also
//! stamps it as `zkrun-slot`, beside `zkrun-term`). A refusal or a failed
//! request returns `err`: the slot is recorded as `error` with the reason.

use wstd::http::{Body, Client, Request};

wit_bindgen::generate!({ path: "../../wit", world: "job" });

use zkrun::plugin::host::{config, log};
use zkrun::plugin::slots;
use zkrun::plugin::types::Level;

struct Nightly;

impl Guest for Nightly {
    fn on_elected(leadership: Leadership) -> Result<(), String> {
        let url = config("url").ok_or("no url: run zkrun with --plugin-config url=https://...")?;
        log(Level::Info, &format!("elected: term {}; reports go to {url}", leadership.term));
        Ok(())
    }

    fn tick(leadership: Leadership) -> Result<(), String> {
        // Without a schedule there is no slot: nothing to report.
        let Some(slot) = slots::current() else {
            log(Level::Debug, "tick outside a schedule: nothing to do (run zkrun with --schedule)");
            return Ok(());
        };
        let url = config("url").ok_or("no url configured")?;
        let report = format!(
            r#"{{"slot":"{}","due_ms":{},"attempt":{},"previous":{},"term":{},"participant":"{}"}}"#,
            escape(&slot.id),
            slot.due_ms,
            slot.attempt,
            slot.previous.as_deref().map_or("null".to_string(), |p| format!("\"{}\"", escape(p))),
            leadership.term,
            escape(&leadership.participant)
        );
        let status = wstd::runtime::block_on(post(&url, report))?;
        if !(200..300).contains(&status) {
            return Err(format!("slot {}: {url} answered {status}", slot.id));
        }
        log(Level::Info, &format!("slot {} attempt {}: report delivered ({status})", slot.id, slot.attempt));
        Ok(())
    }

    fn on_demoted(_reason: DemoteReason) {}
}

/// Sends one POST and returns the response status, after reading the body
/// (so the connection ends cleanly).
async fn post(url: &str, document: String) -> Result<u16, String> {
    let request = Request::post(url)
        .header("content-type", "application/json")
        .body(Body::from(document))
        .map_err(|e| format!("bad request: {e}"))?;
    let response = Client::new().send(request).await.map_err(|e| format!("POST {url}: {e}"))?;
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

export!(Nightly);
