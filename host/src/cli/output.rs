//! Command output on stdout. A reader that closes the pipe early
//! (`zkrun check plugin.wasm | head -1`) ends the output, not the process
//! with a panic: `print!` panics on EPIPE, since Rust ignores SIGPIPE.

use std::io::{self, Write};

/// Writes `text` to stdout and flushes it at once (so `--watch` output
/// reaches a pipe as it happens). `Ok(false)`: the reader has gone.
pub fn print(text: &str) -> io::Result<bool> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}
