//! Hostile components that a guest language cannot express, generated from
//! component text: each exports the `zkrun:plugin/job` hooks (doing
//! nothing) around one attack on the host.
//!
//! - [`table_hog`]: core instances that declare huge tables;
//! - [`blocking_start`]: a core start function that blocks in a WASI host
//!   call (monotonic-clock `subscribe-duration`, then `pollable.block`);
//! - [`slow_to_compile`]: one function that takes the compiler seconds.

use std::path::{Path, PathBuf};

/// The hooks, lifted from a core instance `$job` of [`JOB_MODULE`].
const JOB_EXPORTS: &str = r#"
  (core instance $job (instantiate $job-module))
  (type $leadership' (record (field "term" u64) (field "participant" string) (field "election" string)))
  (export $leadership "leadership" (type $leadership'))
  (type $reason' (enum "shutdown" "resigned" "connection-lost" "session-expired" "node-deleted" "plugin-failed" "reloading"))
  (export $reason "demote-reason" (type $reason'))
  (func (export "on-elected") (param "leadership" $leadership) (result (result (error string)))
    (canon lift (core func $job "hook") (memory (core memory $job "memory")) (realloc (core func $job "realloc"))))
  (func (export "tick") (param "leadership" $leadership) (result (result (error string)))
    (canon lift (core func $job "hook") (memory (core memory $job "memory")) (realloc (core func $job "realloc"))))
  (func (export "on-demoted") (param "reason" $reason)
    (canon lift (core func $job "demoted")))
"#;

/// A core module whose hooks return `ok` at once.
const JOB_MODULE: &str = r#"
  (core module $job-module
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (global.get $next))
      (global.set $next (i32.add (global.get $next) (i32.add (local.get 3) (i32.const 8))))
      (local.get $at))
    ;; result<_, string> at address 0: discriminant 0 is ok.
    (func (export "hook") (param i64 i32 i32 i32 i32) (result i32)
      (i32.store8 (i32.const 0) (i32.const 0))
      (i32.const 0))
    (func (export "demoted") (param i32)))
"#;

fn component(parts: &[&str]) -> Vec<u8> {
    let text = format!("(component {} {})", parts.join("\n"), JOB_EXPORTS);
    wat::parse_str(text).expect("the hostile component's text is valid")
}

fn write(dir: &Path, name: &str, bytes: Vec<u8>) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).expect("write the hostile component");
    path
}

/// `instances` core instances, each of a module with `tables` tables of
/// `entries` function references: `instances × tables × entries` slots of
/// host memory, from a file of a few kilobytes.
pub fn table_hog(dir: &Path, instances: usize, tables: usize, entries: u32) -> PathBuf {
    let mut hog = String::from("(core module $hog");
    for _ in 0..tables {
        hog.push_str(&format!(" (table {entries} funcref)"));
    }
    hog.push(')');
    let mut parts = vec![hog, JOB_MODULE.to_string()];
    for _ in 0..instances {
        parts.push("(core instance (instantiate $hog))".into());
    }
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    write(dir, "table-hog", component(&parts))
}

/// A component whose start code blocks for an hour inside a WASI host call.
pub fn blocking_start(dir: &Path) -> PathBuf {
    let parts = [
        r#"(import "wasi:io/poll@0.2.0" (instance $poll
             (export "pollable" (type (sub resource)))
             (export "[method]pollable.block" (func (param "self" (borrow 0))))))
           (alias export $poll "pollable" (type $pollable))
           (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
             (alias outer 1 $pollable (type))
             (export "pollable" (type (eq 0)))
             (type (own 1))
             (export "subscribe-duration" (func (param "when" u64) (result 2)))))
           (core func $subscribe (canon lower (func $clock "subscribe-duration")))
           (core func $block (canon lower (func $poll "[method]pollable.block")))
           (core module $sleeper
             (import "clock" "subscribe" (func $subscribe (param i64) (result i32)))
             (import "poll" "block" (func $block (param i32)))
             (func $start (call $block (call $subscribe (i64.const 3600000000000))))
             (start $start))
           (core instance $clock-core (export "subscribe" (func $subscribe)))
           (core instance $poll-core (export "block" (func $block)))
           (core instance (instantiate $sleeper
             (with "clock" (instance $clock-core))
             (with "poll" (instance $poll-core))))"#,
        JOB_MODULE,
    ];
    write(dir, "blocking-start", component(&parts))
}

/// A component with one function of `size` nested blocks, all reachable
/// from one `br_table` inside a loop, each join updating live locals: the
/// compiler's work grows with the square of `size` (seconds at a few
/// thousand), from a file of tens of kilobytes.
pub fn slow_to_compile(dir: &Path, size: usize) -> PathBuf {
    let locals = size;
    let mut f = String::from("(core module $slow (func (export \"slow\") (param i32) (result i32)");
    for i in 0..locals {
        f.push_str(&format!(" (local $l{i} i32)"));
    }
    f.push_str(" (loop $top");
    for i in 0..size {
        f.push_str(&format!(" (block $b{i}"));
    }
    f.push_str(" (br_table");
    for i in 0..size {
        f.push_str(&format!(" $b{i}"));
    }
    f.push_str(" $top (local.get 0))");
    for i in 0..size {
        let (a, b) = (i % locals, (i * 7 + 3) % locals);
        f.push_str(&format!(") (local.set $l{a} (i32.add (local.get $l{b}) (local.get $l{a})))"));
    }
    f.push_str(" (br_if $top (local.get $l0)))");
    f.push_str(" (local.get $l1)))");
    let parts = [f.as_str(), "(core instance (instantiate $slow))", JOB_MODULE];
    write(dir, "slow-to-compile", component(&parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hostile_components_are_valid_components() {
        let dir = crate::TempDir::new("hostile");
        for path in
            [table_hog(dir.path(), 1, 2, 10), blocking_start(dir.path()), slow_to_compile(dir.path(), 10)]
        {
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(&bytes[..4], b"\0asm");
            assert_ne!(bytes[4..8], [1, 0, 0, 0], "{} is a component", path.display());
        }
    }
}
