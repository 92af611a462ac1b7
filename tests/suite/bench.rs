//! The benchmark's smoke mode: a few rounds of every measure for every peer,
//! rendered, so the benchmark cannot rot. Numbers are not judged here.

use std::process::Command;

use zkrun_tests::{TempDir, paths};

#[test]
fn the_benchmark_smoke_run_covers_every_peer() {
    let dir = TempDir::new("bench");
    let json = dir.path().join("results.json");
    let bench = paths::zkrun_binary().with_file_name("zkrun-bench");
    let status =
        Command::new(&bench).arg("--smoke").arg("--out").arg(&json).status().expect("run zkrun-bench");
    assert!(status.success(), "zkrun-bench --smoke failed: {status}");

    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for peer in ["zkrun", "curator", "kazoo", "polling"] {
        for measure in ["graceful", "crash"] {
            let samples =
                results[measure][peer].as_array().unwrap_or_else(|| panic!("no {measure} for {peer}"));
            assert!(
                !samples.is_empty() && samples.iter().all(|s| s.as_f64().is_some_and(|v| v > 0.0)),
                "{measure} {peer}: {samples:?}"
            );
        }
        assert!(results["failover"][peer].as_array().is_some_and(|r| !r.is_empty()), "failover {peer}");
        assert!(
            results["scale"][peer]["handover_ms"].as_array().is_some_and(|r| !r.is_empty()),
            "scale {peer}"
        );
        assert!(results["overlaps"][peer].is_u64(), "overlaps {peer}");
    }
    // zkrun's job never ran on two hosts at once in any round.
    assert_eq!(results["overlaps"]["zkrun"], 0);
    assert!(results["zkrun_alone"]["tick_call_us"].as_f64().is_some_and(|v| v > 0.0));

    let markdown = dir.path().join("BENCHMARKS.md");
    let plot = dir.path().join("handover.png");
    let rendered = Command::new(paths::root().join("target/bench-venv/bin/python"))
        .arg(paths::root().join("benches/render.py"))
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .arg("--plot")
        .arg(&plot)
        .status()
        .expect("run render.py (scripts/setup.sh --bench installs its venv)");
    assert!(rendered.success());
    let text = std::fs::read_to_string(&markdown).unwrap();
    for peer in ["zkrun", "curator", "kazoo", "polling"] {
        assert!(text.contains(peer), "{peer} missing from the report");
    }
    assert!(std::fs::metadata(&plot).unwrap().len() > 1000);
}
