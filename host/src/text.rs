//! The one door for text that zkrun does not write itself: whatever a
//! plugin (or its file, or another ZooKeeper client) controls passes
//! through here before it reaches a log line, a metric label, ZooKeeper
//! node data or `zkrun status`. Hook error strings, resign reasons, trap
//! messages, the guest's last words on stderr, the plugin's name: each is
//! cut at the line cap with a visible mark and has its control characters
//! escaped, so it can neither flood the log nor forge a line, a row or a
//! metric. What a plugin says on its own behalf is also charged to its
//! instance's output budget (see `plugin::sandbox::Output::charge`).

use std::borrow::Cow;

/// The line cap for guest text that no instance's output limits govern
/// (plugin metadata, node data): long enough for any honest name.
pub const MAX_NAME: usize = 256;

/// `text` as it may appear in one line of output: at most `max` bytes of
/// it (cut on a character boundary, marked), control characters escaped.
pub fn guest(text: &str, max: usize) -> String {
    escape_controls(&truncate(text, max, 0)).into_owned()
}

/// `text` with every control character but tab escaped (`\n`, `\u{1b}`), so
/// that it stays on one line and cannot move a terminal's cursor.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// Cuts `text` to at most `max` bytes (on a character boundary), marking the
/// cut with how much was left out, `also_cut` bytes cut earlier included.
pub fn truncate(text: &str, max: usize, also_cut: usize) -> Cow<'_, str> {
    if text.len() <= max && also_cut == 0 {
        return text.into();
    }
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end + also_cut;
    format!("{}… [truncated {cut} bytes]", &text[..end]).into()
}

/// `text` as a Prometheus label value: through [`guest`], then `\` and `"`
/// escaped as the exposition format requires (the encoder writes label
/// values as they are).
pub fn label_value(text: &str) -> String {
    let text = guest(text, MAX_NAME);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_a_line() {
        assert_eq!(escape_controls("plain\ttab"), "plain\ttab");
        assert_eq!(escape_controls("a\nINFO elected id=\"victim\""), "a\\nINFO elected id=\"victim\"");
        assert_eq!(escape_controls("\u{1b}[31mred\r"), "\\u{1b}[31mred\\r");
    }

    #[test]
    fn long_text_is_cut_with_a_visible_mark() {
        assert_eq!(truncate("short", 8, 0), "short");
        assert_eq!(truncate("0123456789", 4, 0), "0123… [truncated 6 bytes]");
        // Never inside a character.
        assert_eq!(truncate("ééé", 3, 0), "é… [truncated 4 bytes]");
        assert_eq!(truncate("kept", 8, 100), "kept… [truncated 100 bytes]");
    }

    #[test]
    fn guest_text_is_cut_then_escaped() {
        let giant = format!("boom\nINFO elected term=999\n{}", "e".repeat(20_000_000));
        let line = guest(&giant, 8 * 1024);
        assert!(line.len() < 8 * 1024 + 64, "{}", line.len());
        assert!(!line.contains('\n'));
        assert!(line.starts_with("boom\\nINFO elected term=999\\n"));
        assert!(line.ends_with(" bytes]"));
    }

    #[test]
    fn label_values_carry_no_quote_newline_or_backslash_raw() {
        let value = label_value("evil\"} 1\nzkrun_is_leader{forged=\"1\\");
        assert_eq!(value, "evil\\\"} 1\\\\nzkrun_is_leader{forged=\\\"1\\\\");
        assert!(!value.contains('\n'));
        // Every quote is escaped: the label cannot end early.
        assert!(value.match_indices('"').all(|(at, _)| value[..at].ends_with('\\')));
    }
}
