//! Test plugin: on every tick, one POST per URL in `--plugin-config urls=…`
//! (space-separated), sent through raw `wasi:http` so that nothing between
//! the guest and zkrun tidies it up. Each request tries to shadow zkrun's
//! fencing stamps:
//!
//! - headers `zkrun_term: 999997`, `Zkrun_Election: /forged`,
//!   `ZKRUN-PARTICIPANT: forged` and `trailer: zkrun-term`;
//! - trailers `zkrun-term: 999996` and `zkrun_participant: forged`;
//!
//! and its URL is used as written, path and authority byte for byte, so a
//! test can try the forms servers normalise. Each request logs one line:
//! `smuggler: <url> -> <status>` or `smuggler: <url> -> error <code>`.

wit_bindgen::generate!({ path: "../../../wit", world: "job" });

use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use zkrun::plugin::host::{config, log};
use zkrun::plugin::types::Level;

struct Smuggler;

impl Guest for Smuggler {
    fn on_elected(_: Leadership) -> Result<(), String> {
        Ok(())
    }

    fn tick(_: Leadership) -> Result<(), String> {
        let urls = config("urls").unwrap_or_default();
        for url in urls.split_whitespace() {
            let outcome = match post(url) {
                Ok(status) => status.to_string(),
                Err(error) => format!("error {error}"),
            };
            log(Level::Info, &format!("smuggler: {url} -> {outcome}"));
        }
        Ok(())
    }

    fn on_demoted(_: DemoteReason) {}
}

/// Sends one POST to `url` (taken apart by hand, nothing normalised).
fn post(url: &str) -> Result<u16, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(format!("not an http URL: {url}"));
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let headers = Fields::new();
    for (name, value) in [
        ("content-type", "text/plain"),
        ("zkrun_term", "999997"),
        ("Zkrun_Election", "/forged"),
        ("ZKRUN-PARTICIPANT", "forged"),
        ("trailer", "zkrun-term"),
    ] {
        // A header the host forbids is left out; the rest still go.
        let _ = headers.append(name, value.as_bytes());
    }
    let request = OutgoingRequest::new(headers);
    request.set_method(&Method::Post).map_err(|()| "bad method".to_string())?;
    request.set_scheme(Some(&scheme)).map_err(|()| "bad scheme".to_string())?;
    request.set_authority(Some(authority)).map_err(|()| format!("bad authority {authority:?}"))?;
    request.set_path_with_query(Some(path)).map_err(|()| format!("bad path {path:?}"))?;
    let body = request.body().map_err(|()| "no body".to_string())?;
    let response = outgoing_handler::handle(request, None).map_err(|e| code(&e))?;
    let sent = (|| {
        {
            let stream = body.write().map_err(|()| "no body stream".to_string())?;
            stream.blocking_write_and_flush(b"smuggled").map_err(|e| format!("writing the body: {e:?}"))?;
        }
        let trailers = Fields::new();
        let _ = trailers.append("zkrun-term", b"999996");
        let _ = trailers.append("zkrun_participant", b"forged");
        OutgoingBody::finish(body, Some(trailers)).map_err(|e| code(&e))
    })();
    response.subscribe().block();
    // A request refused while its body was being written closes the body
    // first: the answer says why, so it comes before the write's error.
    if let Err(why) = sent {
        return match response.get() {
            Some(Ok(Err(error))) => Err(code(&error)),
            _ => Err(why),
        };
    }
    let incoming = match response.get() {
        Some(Ok(Ok(incoming))) => incoming,
        Some(Ok(Err(error))) => return Err(code(&error)),
        Some(Err(())) | None => return Err("no response".into()),
    };
    let status = incoming.status();
    if let Ok(body) = incoming.consume() {
        if let Ok(stream) = body.stream() {
            while stream.blocking_read(64 * 1024).is_ok() {}
        }
        let _ = IncomingBody::finish(body);
    }
    Ok(status)
}

fn code(error: &ErrorCode) -> String {
    format!("{error:?}")
}

export!(Smuggler);
