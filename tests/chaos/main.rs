//! `zkrun-chaos`: a seeded schedule of faults against a real ensemble and
//! five zkrun participants, then a check of what happened. A failing seed
//! reproduces the same schedule.
//!
//! ```sh
//! target/release/zkrun-chaos --duration 30m --seed 1234
//! target/release/zkrun-chaos --duration 30m --seed 1234 --every 2s   # scheduled mode
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use zkrun_tests::chaos::{self, ChaosConfig};

#[derive(Debug, Parser)]
#[command(about = "Jepsen-style fault injection against zkrun and a real ZooKeeper ensemble")]
struct Options {
    /// Seed of the fault schedule [default: random, printed]
    #[arg(long)]
    seed: Option<u64>,
    /// How long to inject faults, e.g. 2m, 30m
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// ZooKeeper servers: 3 or 5
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// zkrun participants
    #[arg(long, default_value_t = 5)]
    participants: usize,
    /// Session timeout of the participants
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    session_timeout: Duration,
    /// Lease period of the participants (`zkrun --lease`), shorter than the session timeout [default: none, derived from the session timeout]
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
    /// Scheduled mode: the participants run the witness once per slot of this period (`zkrun --every`), and the checker holds the slot ledger against the witnesses' journals
    #[arg(long, value_parser = humantime::parse_duration)]
    every: Option<Duration>,
    /// Only these kinds of fault, e.g. DeleteNode,PauseMidWrite [default: all]
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    faults: Vec<chaos::FaultKind>,
    /// Print nothing but the report
    #[arg(long)]
    quiet: bool,
    /// Save every log and journal line and every fault to this file
    #[arg(long, value_name = "FILE")]
    save: Option<std::path::PathBuf>,
    /// Run nothing: check a history saved with --save, and report
    #[arg(long, value_name = "FILE", conflicts_with = "save")]
    check: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let options = Options::parse();
    if options.servers != 3 && options.servers != 5 {
        eprintln!("zkrun-chaos: --servers must be 3 or 5");
        return ExitCode::from(2);
    }
    if let Some(path) = &options.check {
        let history = match chaos::load(path) {
            Ok(history) => history,
            Err(e) => {
                eprintln!("zkrun-chaos: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        let mut report = chaos::Report::default();
        chaos::check(&history, &mut report);
        println!("{report}");
        return if report.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let seed = options.seed.unwrap_or_else(rand::random);
    eprintln!(
        "zkrun-chaos: seed {seed}, {:?} of faults, session timeout {:?}, lease {:?}, slots every {:?}",
        options.duration, options.session_timeout, options.lease, options.every
    );
    let mut config = ChaosConfig::new(seed, options.duration);
    config.servers = options.servers;
    config.participants = options.participants;
    config.session_timeout = options.session_timeout;
    config.lease = options.lease;
    config.every = options.every;
    if !options.faults.is_empty() {
        config.kinds = options.faults;
    }
    config.verbose = !options.quiet;
    config.save = options.save;
    let report = chaos::run(config);
    println!("{report}");
    if report.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn parse_kind(name: &str) -> Result<chaos::FaultKind, String> {
    chaos::FaultKind::ALL.into_iter().find(|k| format!("{k:?}") == name).ok_or_else(|| {
        let names: Vec<String> = chaos::FaultKind::ALL.iter().map(|k| format!("{k:?}")).collect();
        format!("unknown fault {name:?}: one of {}", names.join(", "))
    })
}
