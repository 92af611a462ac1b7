//! Egress against a guest that tries to get around the fence: stamps
//! shadowed by look-alike headers and trailers, and URLs whose paths a
//! server normalises into something the grant does not cover. The
//! `smuggler` plugin sends them through raw `wasi:http`, against the real
//! `zkrun` binary, a real ensemble and a loopback receiver.

use std::time::Duration;

use zkrun_tests::process::participant_args;
use zkrun_tests::receiver::Receiver;
use zkrun_tests::{Ensemble, EnsembleOptions, Event, Process, paths, wait_for};

const SOON: Duration = Duration::from_secs(30);

fn smuggler(ensemble: &Ensemble, election: &str, id: &str, urls: &[String], grant: &str) -> Process {
    let urls = format!("urls={}", urls.join(" "));
    let extra = ["--plugin-config", urls.as_str(), "--allow-http", grant];
    let args = participant_args(
        &ensemble.connect_string(),
        election,
        &paths::plugin("smuggler"),
        "300ms",
        "4s",
        &extra,
    );
    let p = Process::zkrun(id, &args);
    p.wait_event("joined", SOON, |e| e.kind() == "joined");
    p
}

/// What the plugin saw for `url` (`smuggler: <url> -> <outcome>`), once.
fn outcome(p: &Process, url: &str) -> String {
    let prefix = format!("smuggler: {url} -> ");
    let event = p.wait_event(&format!("an outcome for {url}"), SOON, |e| {
        e.kind() == "plugin_log" && e.message().starts_with(&prefix)
    });
    event.message()[prefix.len()..].to_string()
}

#[test]
fn stamps_cannot_be_shadowed_by_look_alike_headers_or_trailers() {
    let ensemble = Ensemble::start_with(EnsembleOptions { servers: 1, ..EnsembleOptions::default() });
    let receiver = Receiver::start();
    let base = receiver.base_url();
    let election = "/zkrun/egress/shadow";
    let p = smuggler(&ensemble, election, "honest", &[format!("{base}hook")], &base);
    let term = p.wait_event("elected", SOON, |e| e.kind() == "elected").term().unwrap();
    assert_eq!(outcome(&p, &format!("{base}hook")), "200");
    let arrivals = wait_for("two requests", SOON, || {
        let arrivals = receiver.arrivals();
        (arrivals.len() >= 2).then_some(arrivals)
    });
    for arrival in &arrivals {
        assert_eq!(arrival.body, "smuggled", "{arrival:?}");
        // Exactly one of each stamp, and it is zkrun's.
        for (stamp, value) in [
            ("zkrun-term", term.to_string()),
            ("zkrun-election", election.into()),
            ("zkrun-participant", "honest".into()),
        ] {
            let same: Vec<&(String, String)> = arrival
                .headers
                .iter()
                .filter(|(name, _)| name.to_ascii_lowercase().replace('_', "-") == stamp)
                .collect();
            assert_eq!(same.len(), 1, "{stamp}: {:?}", arrival.headers);
            assert_eq!(same[0].0, stamp, "{:?}", arrival.headers);
            assert_eq!(same[0].1, value, "{:?}", arrival.headers);
        }
        assert!(arrival.trailers.is_empty(), "trailers arrived: {:?}", arrival.trailers);
        assert!(!arrival.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("trailer")), "{arrival:?}");
        assert!(!arrival.headers.iter().any(|(_, value)| value.contains("9999")), "{arrival:?}");
    }
}

#[test]
fn paths_a_server_would_normalise_are_refused_logged_and_denied() {
    let ensemble = Ensemble::start_with(EnsembleOptions { servers: 1, ..EnsembleOptions::default() });
    let receiver = Receiver::start();
    let base = receiver.base_url();
    let port = receiver.port();
    let grant = format!("{base}v1/");
    let good = format!("{base}v1/ok");
    let refused = [
        format!("{base}v1/..;/admin"),
        format!("{base}v1/%252e%252e/admin"),
        format!("{base}v1/%u002e%u002e/admin"),
        format!("{base}v1/%c0%ae%c0%ae/admin"),
        format!("{base}v1/.%00./admin"),
        format!("{base}v1//admin"),
        format!("http://127.0.0.1:{}@127.0.0.1:{port}/v1/x", port + 1),
    ];
    let mut urls = refused.to_vec();
    urls.push(good.clone());
    let p = smuggler(&ensemble, "/zkrun/egress/paths", "paths", &urls, &grant);
    p.wait_event("elected", SOON, |e| e.kind() == "elected");
    for url in &refused {
        assert_eq!(outcome(&p, url), "error ErrorCode::HttpRequestDenied", "{url}");
        // Each form is logged (its first refusal in a term, at once).
        p.wait_event(&format!("the refusal of {url}"), SOON, |e: &Event| {
            e.kind() == "http_refused" && e.str("url").contains("/v1") && e.str("url") == url.as_str()
        });
    }
    assert_eq!(outcome(&p, &good), "200");
    let arrivals = receiver.arrivals();
    assert!(arrivals.iter().all(|a| a.path == "/v1/ok"), "{arrivals:?}");
    // Host is rebuilt from the normalised host and port.
    let host: Vec<&str> = arrivals[0]
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(host, vec![format!("127.0.0.1:{port}").as_str()], "{:?}", arrivals[0]);
}
