//! Test plugin: floods what the host keeps for it, once per tick.
//! Configuration `flood`:
//! - `state`: 300 puts of 64 KiB under new keys (19 MB per tick);
//! - `keys`: 300 puts of new small keys;
//! - `log-giant`: one 50 MB `log()` message;
//! - `log-lines`: 20,000 `log()` messages of 1 KiB;
//! - `stdout-giant`: one 50 MB line on stdout;
//! - `err-giant`: `tick` returns an `Err` of 20 MB that tries to forge log
//!   lines (newlines, a fake `elected` line, ESC);
//! - `resign-giant`: `tick` resigns with the same 20 MB reason;
//! - `resign-elected`: `on-elected` resigns at once, every term;
//! - `churn`: `tick` writes 100 values of 64 KiB (keys `churn-0` to
//!   `churn-99`), then resigns.
//!
//! Each tick logs one summary line, `flood: <what> ok <n> refused <m> (<first error>)`.

wit_bindgen::generate!({ path: "../../../wit", world: "job" });

use std::sync::atomic::{AtomicU64, Ordering};

use zkrun::plugin::host::{config, log, resign};
use zkrun::plugin::state;
use zkrun::plugin::types::Level;

static TICKS: AtomicU64 = AtomicU64::new(0);

struct Flood;

impl Guest for Flood {
    fn on_elected(_: Leadership) -> Result<(), String> {
        if config("flood").as_deref() == Some("resign-elected") {
            log(Level::Info, "flood: resign-elected");
            resign("resigning at once, as every term");
        }
        Ok(())
    }

    fn tick(leadership: Leadership) -> Result<(), String> {
        let tick = TICKS.fetch_add(1, Ordering::Relaxed);
        let what = config("flood").unwrap_or_else(|| "state".into());
        let (mut ok, mut refused, mut first) = (0u32, 0u32, None::<String>);
        let mut count = |result: Result<u32, state::StateError>| match result {
            Ok(_) => ok += 1,
            Err(e) => {
                refused += 1;
                first.get_or_insert_with(|| format!("{e:?}"));
            }
        };
        match what.as_str() {
            "state" => {
                let value = vec![b'x'; 64 * 1024];
                for i in 0..300 {
                    count(state::put(&format!("big-{}-{tick}-{i}", leadership.term), &value));
                }
            }
            "keys" => {
                for i in 0..300 {
                    count(state::put(&format!("k-{}-{tick}-{i}", leadership.term), b"v"));
                }
            }
            "log-giant" => log(Level::Info, &"g".repeat(50_000_000)),
            "log-lines" => {
                let line = "l".repeat(1024);
                for _ in 0..20_000 {
                    log(Level::Info, &line);
                }
            }
            "stdout-giant" => println!("{}", "s".repeat(50_000_000)),
            "resign-elected" => {}
            "err-giant" => return Err(forgery()),
            "resign-giant" => resign(&forgery()),
            "churn" => {
                let value = vec![b'c'; 64 * 1024];
                for i in 0..100 {
                    count(state::put(&format!("churn-{i}"), &value));
                }
                resign("churned");
            }
            other => return Err(format!("unknown flood {other:?}")),
        }
        let first = first.unwrap_or_default();
        log(Level::Info, &format!("flood: {what} ok {ok} refused {refused} ({first})"));
        Ok(())
    }

    fn on_demoted(_: DemoteReason) {}
}

/// 20 MB of text that would forge log lines if printed raw.
fn forgery() -> String {
    let mut text = String::from("boom\nINFO elected id=\"victim\" term=999\n\u{1b}[31m\u{7}");
    text.push_str(&"e".repeat(20_000_000));
    text
}

export!(Flood);
