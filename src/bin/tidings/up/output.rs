//! What `tidings up` prints: every line of every process prefixed `name.N |`, one colour per
//! component, and its own notes under `up |`. Colour only when stdout is a terminal and
//! `NO_COLOR` is not set (https://no-color.org).

use std::io::{IsTerminal, Write};

/// Colours for components, in file order (red is kept for failures).
const PALETTE: &[&str] = &["36", "33", "32", "35", "34", "96", "93", "92", "95", "94"];

/// Writes prefixed lines to stdout. Cheap to clone.
#[derive(Debug, Clone, Copy)]
pub(super) struct Printer {
    colour: bool,
}

/// The prefix of one process's lines.
#[derive(Debug, Clone)]
pub(super) struct Label {
    /// `name.N`.
    pub(super) text: String,
    colour: &'static str,
}

impl Label {
    /// Replica `replica` of the component at `index` in the file.
    pub(super) fn new(component: &str, replica: u32, index: usize) -> Self {
        Self {
            text: format!("{component}.{replica}"),
            colour: PALETTE[index % PALETTE.len()],
        }
    }
}

impl Printer {
    pub(super) fn new() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            colour: std::io::stdout().is_terminal() && !no_color,
        }
    }

    /// One line a process wrote.
    pub(super) fn line(&self, label: &Label, text: &str) {
        self.write(&label.text, label.colour, text);
    }

    /// A note of the supervisor's.
    pub(super) fn note(&self, text: &str) {
        self.write("up", "1", text);
    }

    /// A failure of the supervisor's: also on stderr, so it is seen when stdout is not.
    pub(super) fn alert(&self, text: &str) {
        self.write("up", "1;31", text);
        eprintln!("tidings up: {text}");
    }

    fn write(&self, label: &str, colour: &str, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = if self.colour {
            writeln!(out, "\x1b[{colour}m{label} |\x1b[0m {text}")
        } else {
            writeln!(out, "{label} | {text}")
        };
        let _ = out.flush();
    }
}
