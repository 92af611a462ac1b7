//! Fleet rollout (`zkrun publish`, `--plugin published`) against a real
//! ensemble, with real components and real zkrun processes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zkrun_tests::process::{participant_args, run_to_end};
use zkrun_tests::{Ensemble, Event, Process, TempDir, paths};

const SOON: Duration = Duration::from_secs(60);

fn sha256_of(path: &Path) -> String {
    zkrun::rollout::sha256_hex(&std::fs::read(path).unwrap())
}

/// `zkrun publish ARGS --zk Z --election E`, to completion.
fn publish(ensemble: &Ensemble, election: &str, args: &[&str]) -> std::process::Output {
    let mut all: Vec<OsString> = vec!["publish".into()];
    all.extend(args.iter().map(OsString::from));
    all.extend(["--zk".into(), ensemble.connect_string().into(), "--election".into(), election.into()]);
    run_to_end(&all, SOON)
}

fn publish_ok(ensemble: &Ensemble, election: &str, args: &[&str]) -> String {
    let out = publish(ensemble, election, args);
    assert!(out.status.success(), "publish {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fleet's tick interval: the swap may cost at most two of them.
const TICK_MS: u64 = 500;

/// A participant following the published plugin of `election`.
fn follower(ensemble: &Ensemble, election: &str, id: &str, extra: &[&str]) -> Process {
    let tick = format!("{TICK_MS}ms");
    let args =
        participant_args(&ensemble.connect_string(), election, Path::new("published"), &tick, "4s", extra);
    Process::zkrun(id, &args)
}

fn reloaded_to(p: &Process, sha256: &str) -> Event {
    p.wait_event(&format!("{} reloaded to {}", p.id, &sha256[..12]), SOON, |e| {
        e.kind() == "reloaded" && e.str("sha256") == sha256
    })
}

fn leader_term(fleet: &[Process]) -> (usize, u64) {
    zkrun_tests::wait_for("a leader", SOON, || {
        fleet.iter().enumerate().find_map(|(i, p)| {
            let elected: Vec<Event> = p.events().into_iter().filter(|e| e.kind() == "elected").collect();
            let demoted = p.events().iter().filter(|e| e.kind() == "demoted").count();
            (elected.len() > demoted).then(|| (i, elected.last().unwrap().term().unwrap()))
        })
    })
}

fn plugin_copy(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.path().join(format!("{name}.wasm"));
    std::fs::copy(paths::plugin(name), &path).unwrap();
    path
}

#[test]
fn one_publish_moves_the_fleet_in_the_same_term_and_a_failing_version_is_reverted() {
    let ensemble = Ensemble::start();
    let election = "/zkrun/rollout/fleet";
    let dir = TempDir::new("rollout");
    let (v1, v2, v3) =
        (plugin_copy(&dir, "heartbeat"), plugin_copy(&dir, "counter"), plugin_copy(&dir, "trap"));
    let (sha1, sha2, sha3) = (sha256_of(&v1), sha256_of(&v2), sha256_of(&v3));

    // A host with no local file starts from the published version.
    let out = publish_ok(&ensemble, election, &[v1.to_str().unwrap(), "--label", "v1"]);
    assert!(out.starts_with("published v1 "), "{out}");
    let fleet: Vec<Process> = (0..3)
        .map(|i| {
            let p = follower(&ensemble, election, &format!("p{i}"), &[]);
            let started = p.wait_event("starting", SOON, |e| e.kind() == "starting");
            assert_eq!(started.str("sha256"), sha1, "{}", started.raw);
            p.wait_event("joined", SOON, |e| e.kind() == "joined");
            p
        })
        .collect();
    let (leader, term) = leader_term(&fleet);
    fleet[leader].wait_event("v1 ticks", SOON, |e| e.is_heartbeat_tick() && e.term() == Some(term));

    // v2: every participant swaps, followers first; the leader keeps its term.
    publish_ok(&ensemble, election, &[v2.to_str().unwrap(), "--label", "v2"]);
    let swaps: Vec<Event> = fleet.iter().map(|p| reloaded_to(p, &sha2)).collect();
    assert_eq!(swaps[leader].term(), Some(term), "{}", swaps[leader].raw);
    let leader_swap = swaps[leader].mono_ns().unwrap();
    for (i, swap) in swaps.iter().enumerate().filter(|(i, _)| *i != leader) {
        assert!(swap.mono_ns().unwrap() < leader_swap, "follower p{i} swapped after the leader");
    }
    assert_eq!(
        fleet[leader].events().iter().filter(|e| e.kind() == "elected").count(),
        1,
        "no second term: {}",
        fleet[leader].dump()
    );
    // The new job's ticks run in the same term, and the swap costs no more
    // than two tick intervals (the issue's bound; one is the norm).
    let ticks = |p: &Process| -> Vec<u64> {
        p.events()
            .iter()
            .filter(|e| e.kind() == "plugin_log" && e.term() == Some(term))
            .filter_map(Event::mono_ns)
            .collect()
    };
    zkrun_tests::wait_for("v2 ticks on the leader", SOON, || {
        (ticks(&fleet[leader]).iter().filter(|t| **t > leader_swap).count() >= 3).then_some(())
    });
    let stamps = ticks(&fleet[leader]);
    let gap = stamps
        .windows(2)
        .filter(|w| w[1] > leader_swap.saturating_sub(2_000_000_000) && w[0] < leader_swap + 2_000_000_000)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0);
    println!(
        "rollout v1 -> v2: leader term {term} kept; largest gap between job log lines around the swap: {} ms (tick {TICK_MS}ms)",
        gap / 1_000_000
    );
    assert!(
        gap > 0 && gap <= 2 * TICK_MS * 1_000_000,
        "the swap cost {} ms between ticks, over two intervals of {TICK_MS} ms",
        gap / 1_000_000
    );

    // v3 traps on its first tick: the leader reverts to v2 and marks v3 bad.
    let before: Vec<usize> = fleet.iter().map(|p| p.log().len()).collect();
    publish_ok(&ensemble, election, &[v3.to_str().unwrap(), "--label", "v3"]);
    let reverted = zkrun_tests::wait_for("a revert", SOON, || {
        fleet.iter().find_map(|p| p.events().into_iter().find(|e| e.kind() == "rollout_reverted"))
    });
    assert_eq!(reverted.str("sha256"), sha3, "{}", reverted.raw);
    assert!(reverted.str("reason").contains("v3 failed on the leader"), "{}", reverted.raw);
    // Every participant is back on v2 (a reload to v2 after v3 was published).
    for (p, from) in fleet.iter().zip(&before) {
        p.wait_event_from(*from, "back on v2", SOON, |e| e.kind() == "reloaded" && e.str("sha256") == sha2);
    }
    let listed = publish_ok(&ensemble, election, &["--list"]);
    assert!(listed.contains(&format!("bad       {sha3}")), "{listed}");
    assert!(listed.lines().next().unwrap().starts_with("current   v2 "), "{listed}");
    assert!(listed.contains("reverted  v3"), "{listed}");
    // A bad version is never loaded again: a new participant starts on v2.
    let late = follower(&ensemble, election, "late", &[]);
    let started = late.wait_event("starting", SOON, |e| e.kind() == "starting");
    assert_eq!(started.str("sha256"), sha2, "{}", started.raw);
}

/// Issue 25: a host waiting for a first published version stops on one
/// SIGTERM (exit 0); a publisher SIGKILLed after its chunks landed but
/// before its manifest leaves nothing any host loads, and the next publish
/// goes through; a participant started in the middle of a rollout starts on
/// the current manifest, not the version the fleet is leaving.
#[test]
fn a_killed_publisher_publishes_nothing_and_late_or_waiting_hosts_behave() {
    let ensemble = Ensemble::start();
    let election = "/zkrun/rollout/killed";
    let dir = TempDir::new("rollout-killed");
    let (v1, v2) = (plugin_copy(&dir, "heartbeat"), plugin_copy(&dir, "counter"));
    let (sha1, sha2) = (sha256_of(&v1), sha256_of(&v2));

    let mut waiting = follower(&ensemble, election, "waiting", &[]);
    waiting.wait_event("waiting for a version", SOON, |e| e.kind() == "rollout_waiting");
    waiting.signal(libc::SIGTERM);
    let status = waiting
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5 s of one SIGTERM\n{}", waiting.dump()));
    assert_eq!(status.code(), Some(0), "{}", waiting.dump());

    publish_ok(&ensemble, election, &[v1.to_str().unwrap(), "--label", "v1"]);
    let p0 = follower(&ensemble, election, "p0", &[]);
    assert_eq!(p0.wait_event("starting", SOON, |e| e.kind() == "starting").str("sha256"), sha1);
    p0.wait_event("joined", SOON, |e| e.kind() == "joined");

    // The publisher's replies come 3 s late: its chunk writes land at once,
    // but it cannot write the manifest before it has heard them all.
    let proxy = zkrun_tests::Proxy::start(&ensemble.client_addrs());
    proxy.delay_downstream(Duration::from_secs(3));
    let mut command = std::process::Command::new(paths::zkrun_binary());
    command.args(["publish", v2.to_str().unwrap(), "--label", "v2-killed", "--zk"]);
    command.args([proxy.connect_string().as_str(), "--election", election]);
    let mut publisher = Process::spawn("publisher", command);
    let chunks = zkrun::rollout::version_path(election, "v2");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let operator = runtime.block_on(zookeeper_client::Client::connect(&ensemble.connect_string())).unwrap();
    zkrun_tests::wait_for("chunks of v2 written", SOON, || {
        std::thread::sleep(Duration::from_millis(20));
        runtime.block_on(operator.list_children(&chunks)).ok().filter(|c| !c.is_empty()).map(|_| ())
    });
    publisher.kill();
    let listed = publish_ok(&ensemble, election, &["--list"]);
    assert!(listed.lines().next().unwrap().starts_with("current   v1 "), "{listed}");
    assert!(!listed.contains("v2-killed"), "{listed}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!p0.events().iter().any(|e| e.kind() == "reloaded"), "p0 reloaded:\n{}", p0.dump());

    // The next publish goes through (the leftover chunks are replaced), and
    // a participant started while the fleet is still on v1 starts on v2.
    publish_ok(&ensemble, election, &[v2.to_str().unwrap(), "--label", "v2"]);
    let late = follower(&ensemble, election, "late", &[]);
    assert_eq!(late.wait_event("starting", SOON, |e| e.kind() == "starting").str("sha256"), sha2);
    reloaded_to(&p0, &sha2);
    late.wait_event("joined", SOON, |e| e.kind() == "joined");
    let listed = publish_ok(&ensemble, election, &["--list"]);
    assert!(listed.lines().next().unwrap().starts_with("current   v2 "), "{listed}");
}

#[test]
fn tampered_chunks_unsigned_versions_and_oversized_components_are_refused() {
    let ensemble = Ensemble::start();
    let election = "/zkrun/rollout/refuse";
    let dir = TempDir::new("rollout-refuse");
    let (v1, v2) = (plugin_copy(&dir, "heartbeat"), plugin_copy(&dir, "counter"));
    let sha1 = sha256_of(&v1);

    // 64 MiB + 1 byte: refused before anything is written, in one line.
    let huge = dir.path().join("huge.wasm");
    std::fs::File::create(&huge).unwrap().set_len((64 << 20) + 1).unwrap();
    let out = publish(&ensemble, election, &[huge.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("67108865 bytes, over the 67108864-byte limit"), "{stderr}");

    publish_ok(&ensemble, election, &[v1.to_str().unwrap()]);
    let fleet: Vec<Process> = (0..3).map(|i| follower(&ensemble, election, &format!("t{i}"), &[])).collect();
    for p in &fleet {
        p.wait_event("joined", SOON, |e| e.kind() == "joined");
    }
    let (leader, term) = leader_term(&fleet);

    // Another client rewrites a chunk of a new version: refused everywhere.
    publish_ok(&ensemble, election, &[v2.to_str().unwrap()]);
    for p in &fleet {
        reloaded_to(p, &sha256_of(&v2));
    }
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let before: Vec<usize> = fleet.iter().map(|p| p.log().len()).collect();
    tokio.block_on(async {
        let client = zookeeper_client::Client::connect(&ensemble.connect_string()).await.unwrap();
        // A version v99 that claims to be v1, with one byte of its first
        // chunk flipped.
        let (data, stat) = client.get_data(&format!("{election}/plugin/current")).await.unwrap();
        let mut manifest: serde_json::Value = serde_json::from_slice(&data).unwrap();
        let bytes = std::fs::read(&v1).unwrap();
        let mut tampered = bytes[..bytes.len().min(512 << 10)].to_vec();
        tampered[100] ^= 0xff;
        let vdir = format!("{election}/plugin/v99");
        let options =
            zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
        client.create(&vdir, &[], &options).await.unwrap();
        client.create(&format!("{vdir}/chunk-0000"), &tampered, &options).await.unwrap();
        for i in 1..bytes.len().div_ceil(512 << 10) {
            let chunk = &bytes[i * (512 << 10)..((i + 1) * (512 << 10)).min(bytes.len())];
            client.create(&format!("{vdir}/chunk-{i:04}"), chunk, &options).await.unwrap();
        }
        manifest["previous"] = manifest["current"].clone();
        manifest["current"]["version"] = "v99".into();
        manifest["current"]["number"] = 99.into();
        manifest["current"]["sha256"] = sha1.clone().into();
        manifest["current"]["size"] = bytes.len().into();
        manifest["current"]["chunks"] = bytes.len().div_ceil(512 << 10).into();
        client
            .set_data(
                &format!("{election}/plugin/current"),
                &serde_json::to_vec(&manifest).unwrap(),
                Some(stat.version),
            )
            .await
            .unwrap();
    });
    for (p, from) in fleet.iter().zip(&before) {
        let refused =
            p.wait_event_from(*from, "tampered version refused", SOON, |e| e.kind() == "rollout_refused");
        assert!(refused.str("reason").contains("do not match the manifest"), "{}", refused.raw);
        assert!(!refused.str("reason").contains('\n'));
    }
    // The running version carries on.
    let refused_at = zkrun_tests::monotonic_ns();
    zkrun_tests::wait_for("ticks after the refusal", SOON, || {
        fleet[leader]
            .events()
            .iter()
            .any(|e| {
                e.kind() == "plugin_log" && e.term() == Some(term) && e.mono_ns().unwrap_or(0) > refused_at
            })
            .then_some(())
    });
    assert!(
        fleet.iter().all(|p| !p.events().iter().any(|e| e.kind() == "reloaded" && e.str("sha256") == sha1))
    );

    // --trust-key: an unsigned version is refused, a signed one runs.
    publish_ok(&ensemble, election, &[v2.to_str().unwrap()]);
    let keys = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let public = dir.path().join("zkrun.pub");
    let secret = dir.path().join("zkrun.key");
    std::fs::write(&public, keys.pk.to_box().unwrap().to_string()).unwrap();
    std::fs::write(&secret, keys.sk.to_box(None).unwrap().to_string()).unwrap();
    let strict = follower(&ensemble, election, "strict", &["--trust-key", public.to_str().unwrap()]);
    let refused = strict.wait_event("unsigned refused", SOON, |e| e.kind() == "rollout_refused");
    assert!(refused.str("reason").contains("not signed"), "{}", refused.raw);
    publish_ok(&ensemble, election, &[v1.to_str().unwrap(), "--sign-key", secret.to_str().unwrap()]);
    let started = strict.wait_event("signed version runs", SOON, |e| e.kind() == "starting");
    assert_eq!(started.str("sha256"), sha1, "{}", started.raw);
    // A signature by another key is refused.
    let other = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let other_secret = dir.path().join("other.key");
    std::fs::write(&other_secret, other.sk.to_box(None).unwrap().to_string()).unwrap();
    let from = strict.log().len();
    publish_ok(&ensemble, election, &[v2.to_str().unwrap(), "--sign-key", other_secret.to_str().unwrap()]);
    let refused =
        strict.wait_event_from(from, "wrongly signed refused", SOON, |e| e.kind() == "rollout_refused");
    assert!(refused.str("reason").contains("not valid for any --trust-key"), "{}", refused.raw);
}

/// The `zkrun` command lines of the README's "Rolling out a new job"
/// section, one list per code block.
fn readme_commands() -> Vec<Vec<Vec<String>>> {
    let readme = std::fs::read_to_string(paths::root().join("README.md")).unwrap();
    let section = readme
        .split("## Rolling out a new job")
        .nth(1)
        .expect("the README section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut blocks = Vec::new();
    for block in section.split("```sh\n").skip(1) {
        let code = block.split("```").next().unwrap();
        blocks.push(
            code.lines()
                .filter(|l| l.starts_with("zkrun "))
                .map(|l| l.split_whitespace().skip(1).map(str::to_string).collect())
                .collect(),
        );
    }
    blocks
}

#[test]
fn the_readme_rollout_commands_work_as_written() {
    let ensemble = Ensemble::start();
    let dir = TempDir::new("rollout-readme");
    let job = dir.path().join("job.wasm");
    std::fs::copy(paths::plugin("heartbeat"), &job).unwrap();
    std::fs::copy(paths::plugin("counter"), dir.path().join("job-v2.wasm")).unwrap();
    let keys = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    std::fs::write(dir.path().join("zkrun.pub"), keys.pk.to_box().unwrap().to_string()).unwrap();
    std::fs::write(dir.path().join("zkrun.key"), keys.sk.to_box(None).unwrap().to_string()).unwrap();
    let (sha1, sha2) = (sha256_of(&job), sha256_of(&dir.path().join("job-v2.wasm")));
    // As written, but on the test's ensemble, with the files in `dir`.
    let concrete = |args: &[String]| -> Vec<OsString> {
        args.iter()
            .map(|a| match a.as_str() {
                "zk1:2181,zk2:2181,zk3:2181" => ensemble.connect_string().into(),
                f if f.ends_with(".wasm") || f.ends_with(".key") || f.ends_with(".pub") => {
                    dir.path().join(f).into()
                }
                a => a.into(),
            })
            .collect()
    };
    let blocks = readme_commands();
    assert_eq!(blocks.len(), 2, "two code blocks: {blocks:?}");
    assert_eq!(blocks[0].len(), 4);
    // A job is already published when the section starts.
    publish_ok(&ensemble, "/jobs/nightly", &[job.to_str().unwrap()]);

    let host = Process::zkrun("host", &concrete(&blocks[0][0]));
    let started = host.wait_event("starting", SOON, |e| e.kind() == "starting");
    assert_eq!(started.str("sha256"), sha1);
    host.wait_event("elected", SOON, |e| e.kind() == "elected");
    for (i, command) in blocks[0][1..].iter().enumerate() {
        let out = run_to_end(&concrete(command), SOON);
        assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        match i {
            0 => {
                reloaded_to(&host, &sha2);
            }
            1 => assert!(stdout.starts_with("current   v2 ") && stdout.contains(" v2  "), "{stdout}"),
            _ => {
                assert!(stdout.contains("rolled back /jobs/nightly from v2 to v1"), "{stdout}");
                let from = host.events().iter().rposition(|e| e.kind() == "reloaded").unwrap() + 1;
                host.wait_event_from(from, "back on v1", SOON, |e| {
                    e.kind() == "reloaded" && e.str("sha256") == sha1
                });
            }
        }
    }
    // Signed: published with --sign-key, run with --trust-key.
    let out = run_to_end(&concrete(&blocks[1][0]), SOON);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(", signed)"));
    let strict = Process::zkrun("strict", &concrete(&blocks[1][1]));
    let started = strict.wait_event("starting", SOON, |e| e.kind() == "starting");
    assert_eq!(started.str("sha256"), sha2);
}
