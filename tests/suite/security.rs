//! ZooKeeper security end to end: credentials, ACLs on everything zkrun
//! creates, and a TLS-only ensemble. Outsiders are real clients without
//! (or with wrong) credentials.

use std::ffi::OsString;
use std::time::Duration;

use zkrun::election::node;
use zkrun_tests::process::{participant_args, run_to_end};
use zkrun_tests::tls::CLIENT_SUBJECT;
use zkrun_tests::{Ensemble, EnsembleOptions, Process, TempDir, paths};
use zookeeper_client as zk;

const SOON: Duration = Duration::from_secs(30);
const CREDENTIALS: &str = "digest:zkrun:s3cret";

fn counter_args(connect: &str, election: &str, extra: &[OsString]) -> Vec<OsString> {
    participant_args(connect, election, &paths::plugin("counter"), "100ms", "4s", extra)
}

/// How many increments `p` committed (the counter plugin logs each one).
fn commits(p: &Process) -> usize {
    p.events().iter().filter(|e| e.kind() == "plugin_log" && e.message().starts_with("committed ")).count()
}

fn wait_commits(p: &Process, n: usize) {
    let at_least = commits(p) + n;
    zkrun_tests::wait_for(&format!("{} to commit {n} more increments", p.id), SOON, || {
        (commits(p) >= at_least).then_some(())
    });
}

/// The leader's election node and its lease node, as anyone may read them.
async fn leader_paths(client: &zk::Client, election: &str) -> (String, String) {
    let children = client.list_children(election).await.expect("the election is world-readable");
    let (_, first) = node::in_order(&children)[0];
    let lease = node::lease_name(first).expect("a zkrun node");
    (format!("{election}/{first}"), format!("{election}/{lease}"))
}

/// Asserts that `acl` gives everything to one identity of `scheme` whose
/// id starts with `id`, and only read to everyone else.
fn assert_owned_by(path: &str, acl: &[zk::Acl], scheme: &str, id: &str) {
    assert_eq!(acl.len(), 2, "{path}: {acl:?}");
    let owner = acl.iter().find(|a| a.scheme() == scheme).unwrap_or_else(|| panic!("{path}: {acl:?}"));
    assert!(owner.id().starts_with(id) && owner.permission() == zk::Permission::ALL, "{path}: {acl:?}");
    let world = acl.iter().find(|a| a.scheme() == "world").unwrap_or_else(|| panic!("{path}: {acl:?}"));
    assert_eq!((world.id(), world.permission()), ("anyone", zk::Permission::READ), "{path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_credentials_keep_outsiders_out_of_the_election_and_its_state() {
    let ensemble = Ensemble::start();
    let connect = ensemble.connect_string();
    let election = "/zkrun/sec/digest";
    // The same identity twice: on the command line, and in the environment.
    let leader =
        Process::zkrun("a", &counter_args(&connect, election, &["--zk-auth".into(), CREDENTIALS.into()]));
    leader.wait_event("elected", SOON, |e| e.kind() == "elected");
    let follower = Process::zkrun_with_env(
        "b",
        &counter_args(&connect, election, &[]),
        &[("ZKRUN_ZK_AUTH", CREDENTIALS)],
    );
    follower.wait_event("joined", SOON, |e| e.kind() == "joined");
    wait_commits(&leader, 3);

    let outsider = zk::Client::connect(&connect).await.unwrap();
    let wrong = zk::Client::connector().with_auth("digest", b"zkrun:guess").connect(&connect).await.unwrap();
    let (leader_node, lease_node) = leader_paths(&outsider, election).await;
    let state = format!("{election}/state");
    let counter = format!("{state}/counter");
    let open = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let fake = format!("{election}/_c_00000000-0000-0000-0000-000000000000-latch-");
    for (who, client) in [("no credentials", &outsider), ("a wrong password", &wrong)] {
        assert_eq!(
            client.delete(&leader_node, None).await,
            Err(zk::Error::NoAuth),
            "{who}: delete the leader's node"
        );
        assert_eq!(client.delete(&lease_node, None).await, Err(zk::Error::NoAuth), "{who}: delete the lease");
        assert_eq!(client.create(&fake, b"fake", &open).await.err(), Some(zk::Error::NoAuth), "{who}: join");
        assert_eq!(
            client.set_data(&counter, b"999 1", None).await.err(),
            Some(zk::Error::NoAuth),
            "{who}: write state"
        );
        let injected_path = format!("{state}/injected");
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let injected = client.create(&injected_path, b"x", &persistent);
        assert_eq!(injected.await.err(), Some(zk::Error::NoAuth), "{who}: add state");
        assert_eq!(client.delete(&counter, None).await, Err(zk::Error::NoAuth), "{who}: delete state");
        assert_eq!(
            client.set_acl(&counter, &zk::Acls::anyone_all(), None).await.err(),
            Some(zk::Error::NoAuth),
            "{who}: open the ACL"
        );
    }

    // Every node zkrun created: the identity may do everything, anyone may read.
    for path in ["/zkrun", "/zkrun/sec", election, &leader_node, &lease_node, &state, &counter] {
        let (acl, _) = outsider.get_acl(path).await.unwrap();
        assert_owned_by(path, &acl, "digest", "zkrun:");
    }
    // Reading stays open: status works without credentials.
    let status = run_to_end(&["status", "--zk", &connect, "--election", election, "--json"], SOON);
    assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stderr));
    let found: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(found["participants"][0]["id"], "a");
    assert_eq!(found["participants"][1]["id"], "b");

    // The right credentials are let in: the refusals above were the ACL's.
    let insider =
        zk::Client::connector().with_auth("digest", b"zkrun:s3cret").connect(&connect).await.unwrap();
    let probe = format!("{state}/probe");
    insider
        .create(&probe, b"x", &zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all()))
        .await
        .unwrap();
    insider.delete(&probe, None).await.unwrap();

    // The outsiders changed nothing: the same leader goes on counting.
    wait_commits(&leader, 3);
    assert_eq!(leader_paths(&outsider, election).await.0, leader_node);
    for p in [&leader, &follower] {
        assert!(!p.events().iter().any(|e| e.kind() == "demoted"), "{}", p.dump());
        assert!(!p.dump().contains("s3cret"), "{} logged the password:\n{}", p.id, p.dump());
        assert!(!p.events().iter().any(|e| e.kind() == "election_world_writable"), "{}", p.dump());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_an_open_election_warns_once_and_credentials_come_from_a_file() {
    let ensemble = Ensemble::start();
    let connect = ensemble.connect_string();
    let election = "/zkrun/sec/open";
    // An election made before zkrun had ACLs: open to everyone.
    let old = zk::Client::connect(&connect).await.unwrap();
    old.mkdir(election, &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await.unwrap();

    let dir = TempDir::new("sec-open");
    let file = dir.path().join("zk-auth");
    std::fs::write(&file, format!("{CREDENTIALS}\n")).unwrap();
    let heartbeat = paths::plugin("heartbeat");
    let args = participant_args(
        &connect,
        election,
        &heartbeat,
        "100ms",
        "4s",
        &["--zk-auth-file".into(), file.into_os_string()],
    );
    let p = Process::zkrun("a", &args);
    p.wait_event("elected", SOON, |e| e.kind() == "elected");
    let warning = p.wait_event("a world-writable warning", SOON, |e| e.kind() == "election_world_writable");
    assert_eq!(warning.str("path"), election);
    // Its own node is protected all the same.
    let (leader_node, _) = leader_paths(&old, election).await;
    let (acl, _) = old.get_acl(&leader_node).await.unwrap();
    assert_owned_by(&leader_node, &acl, "digest", "zkrun:");
    // Once, not at every look at the election.
    zkrun_tests::wait_for("a few ticks", SOON, || {
        (p.events().iter().filter(|e| e.is_heartbeat_tick()).count() >= 3).then_some(())
    });
    assert_eq!(
        p.events().iter().filter(|e| e.kind() == "election_world_writable").count(),
        1,
        "{}",
        p.dump()
    );
}

fn status_args(ensemble: &Ensemble, connect: &str, election: &str, tls: &[OsString]) -> Vec<OsString> {
    let _ = ensemble;
    let mut args: Vec<OsString> =
        ["status", "--zk", connect, "--election", election, "--json", "--timeout", "5s"]
            .iter()
            .map(OsString::from)
            .collect();
    args.extend(tls.iter().cloned());
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_ensemble_runs_the_job_end_to_end() {
    let ensemble = Ensemble::start_with(EnsembleOptions { tls: true, ..EnsembleOptions::default() });
    let pki = ensemble.pki().expect("a TLS ensemble");
    let connect = ensemble.connect_string();
    let election = "/zkrun/sec/tls";
    let tls = pki.zkrun_args();
    let leader = Process::zkrun("a", &counter_args(&connect, election, &tls));
    leader.wait_event("elected", SOON, |e| e.kind() == "elected");
    let follower = Process::zkrun("b", &counter_args(&connect, election, &tls));
    follower.wait_event("joined", SOON, |e| e.kind() == "joined");
    wait_commits(&leader, 3);

    // status over TLS sees both, in order.
    let status = run_to_end(&status_args(&ensemble, &connect, election, &tls), SOON);
    assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stderr));
    let found: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(found["participants"][0]["id"], "a");
    assert_eq!(found["participants"][1]["id"], "b");

    // The client certificate is the sessions' identity (x509): what zkrun
    // created belongs to it. (Read through zkrun's own connect code.)
    let access = zkrun::cli::security::SecurityArgs {
        zk_tls_ca: Some(pki.ca.clone()),
        zk_tls_cert: Some(pki.client_cert.clone()),
        zk_tls_key: Some(pki.client_key.clone()),
        ..Default::default()
    }
    .resolve(Default::default(), std::path::Path::new("."))
    .unwrap();
    let client = access
        .connect(zk::Client::connector().with_session_timeout(Duration::from_secs(5)), &connect)
        .await
        .unwrap();
    let (leader_node, lease_node) = leader_paths(&client, election).await;
    for path in [election.to_string(), leader_node, lease_node, format!("{election}/state/counter")] {
        let (acl, _) = client.get_acl(&path).await.unwrap();
        assert_owned_by(&path, &acl, "x509", CLIENT_SUBJECT);
    }

    // What goes wrong is said in one line, with the exit code of an
    // unreachable ensemble.
    let client_cert = &tls[2..];
    let mut untrusted: Vec<OsString> = vec!["--zk-tls-ca".into(), pki.other_ca.clone().into()];
    untrusted.extend(client_cert.iter().cloned());
    let port = connect.split(',').next().unwrap().rsplit_once(':').unwrap().1;
    let by_name = format!("localhost:{port}");
    let no_client_cert: Vec<OsString> = tls[..2].to_vec();
    for (what, connect, args, expected) in [
        ("untrusted server", connect.as_str(), untrusted, "untrusted server"),
        ("name mismatch", by_name.as_str(), tls.clone(), "name mismatch"),
        ("no client certificate", connect.as_str(), no_client_cert, "client certificate"),
    ] {
        let out = run_to_end(&status_args(&ensemble, connect, election, &args), SOON);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{what}: {stderr}");
        assert!(stderr.contains(expected) && stderr.lines().count() == 1, "{what}: {stderr}");
    }
    // A file that is no certificate is a usage error, before any connect.
    let bad: Vec<OsString> = vec!["--zk-tls-ca".into(), pki.client_key.clone().into()];
    let out = run_to_end(&status_args(&ensemble, &connect, election, &bad), SOON);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad --zk-tls-ca") && stderr.lines().count() == 1, "{stderr}");

    wait_commits(&leader, 2);
    assert!(!leader.events().iter().any(|e| e.kind() == "demoted"), "{}", leader.dump());
}
