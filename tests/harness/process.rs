//! Child processes run by tests and benchmarks (the real zkrun binary, or a
//! benchmark peer), with every line they print captured as an event.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::events::{Event, EventLog};
use crate::{die_with_parent, paths};

/// A running child process whose output lines are captured.
pub struct Process {
    /// The participant id it was given.
    pub id: String,
    child: Child,
    log: EventLog,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Starts `zkrun run --log-format json --id <id> <args>`.
    pub fn zkrun<S: AsRef<OsStr>>(id: &str, args: &[S]) -> Process {
        let mut command = Command::new(paths::zkrun_binary());
        command.args(["run", "--log-format", "json", "--id", id]).args(args);
        Process::spawn(id, command)
    }

    /// Like [`Process::zkrun`], with extra environment variables (failpoints).
    pub fn zkrun_with_env<S: AsRef<OsStr>>(id: &str, args: &[S], env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(paths::zkrun_binary());
        command.args(["run", "--log-format", "json", "--id", id]).args(args);
        command.envs(env.iter().copied());
        Process::spawn(id, command)
    }

    /// Starts a command as given; stdout and stderr lines become events.
    pub fn spawn(id: &str, mut command: Command) -> Process {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.env("RUST_BACKTRACE", "1").env_remove("ZKRUN_LOG");
        die_with_parent(&mut command);
        let mut child = command.spawn().expect("start zkrun");
        let log = EventLog::default();
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.push(line);
                }
            });
        }
        Process { id: id.to_string(), child, log, exit: None }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits until the process is really stopped (after SIGSTOP).
    pub fn wait_stopped(&self) {
        let stat = format!("/proc/{}/stat", self.pid());
        crate::wait_for("the process to stop", Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&stat).ok()?;
            // The state follows the parenthesised command name.
            let state = text.rsplit_once(") ")?.1.chars().next()?;
            (state == 'T' || state == 't').then_some(())
        });
    }

    /// SIGKILL, and waits for the process to go.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                return self.exit;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The log so far.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.log.all()
    }

    /// Waits for an event matching `pred`, or panics with the log.
    pub fn wait_event(&self, what: &str, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Event {
        self.wait_event_from(0, what, timeout, pred)
    }

    /// Like [`Process::wait_event`], among events from index `from` on.
    pub fn wait_event_from(
        &self,
        from: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        match self.log.wait_from(from, timeout, pred) {
            Some(event) => event,
            None => panic!("{}: no {what} within {timeout:?}; log:\n{}", self.id, self.dump()),
        }
    }

    /// The log as text, for failure messages.
    pub fn dump(&self) -> String {
        self.log.all().iter().map(|e| e.raw.as_str()).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // SAFETY: plain kill(2) on our own child, in case it is stopped.
            unsafe { libc::kill(self.pid(), libc::SIGCONT) };
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `run` arguments of a participant of `election` on `connect` running
/// `plugin`, ticking every `tick`, asking for `session` timeout, then `extra`.
pub fn participant_args<S: AsRef<OsStr>>(
    connect: &str,
    election: &str,
    plugin: &std::path::Path,
    tick: &str,
    session: &str,
    extra: &[S],
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--plugin".into(),
        plugin.into(),
        "--zk".into(),
        connect.into(),
        "--election".into(),
        election.into(),
        "--tick".into(),
        tick.into(),
        "--session-timeout".into(),
        session.into(),
    ];
    args.extend(extra.iter().map(|a| a.as_ref().to_os_string()));
    args
}

/// Runs a short zkrun command (`check`, `status`, a bad `run`) to completion.
pub fn run_to_end<S: AsRef<OsStr>>(args: &[S], timeout: Duration) -> Output {
    let mut command = Command::new(paths::zkrun_binary());
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(&mut command);
    let child = command.spawn().expect("start zkrun");
    let pid = child.id() as i32;
    let (done, wait) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output().expect("zkrun output");
        let _ = done.send(());
        output
    });
    if wait.recv_timeout(timeout).is_err() {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let output = waiter.join().unwrap();
        panic!(
            "zkrun {:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
            args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    waiter.join().unwrap()
}
