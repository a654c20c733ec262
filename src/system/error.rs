//! What goes wrong with a system file: it cannot be read, it is not TOML of the right shape,
//! or what it says does not make a system. Every problem names the line, the column and the
//! field.

use std::fmt;
use std::ops::Range;

use tidings_core::{Error, ErrorKind};

/// Why a system file could not be used. Its `Display` is one line per problem, each
/// `file:line:column: field: what is wrong`.
///
/// # Examples
/// ```
/// let e = tidings::system::System::parse("[[component]]\nname = \"a\"\ncommand = \"x\"\nreplicas = 0\n", "tidings.toml")
///     .unwrap_err();
/// assert_eq!(e.to_string(), "tidings.toml:4:12: component \"a\" > replicas: must be at least 1");
/// assert_eq!(e.problems()[0].line, 4);
/// ```
#[derive(Debug)]
pub struct SystemError {
    file: String,
    reason: Reason,
}

#[derive(Debug)]
enum Reason {
    Read(std::io::Error),
    Problems(Vec<Problem>),
    NoSuchComponent { name: String, known: Vec<String> },
}

/// One mistake in a system file, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1, in characters.
    pub column: usize,
    /// The field, as a path: `component "fetcher" > worker #1 > patterns`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl SystemError {
    pub(super) fn read(file: &str, error: std::io::Error) -> Self {
        Self {
            file: file.to_owned(),
            reason: Reason::Read(error),
        }
    }

    pub(super) fn problems_in(file: &str, problems: Vec<Problem>) -> Self {
        Self {
            file: file.to_owned(),
            reason: Reason::Problems(problems),
        }
    }

    pub(super) fn no_such_component(file: &str, name: &str, known: Vec<String>) -> Self {
        Self {
            file: file.to_owned(),
            reason: Reason::NoSuchComponent {
                name: name.to_owned(),
                known,
            },
        }
    }

    /// The file, as it was named to [`System::load`](super::System::load) or
    /// [`System::parse`](super::System::parse).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The mistakes found in the file; empty when it could not be read or the error is about a
    /// component it does not have.
    pub fn problems(&self) -> &[Problem] {
        match &self.reason {
            Reason::Problems(problems) => problems,
            _ => &[],
        }
    }
}

impl fmt::Display for SystemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = &self.file;
        match &self.reason {
            Reason::Read(e) => write!(f, "cannot read the system file {file}: {e}"),
            Reason::NoSuchComponent { name, known } => write!(
                f,
                "{file} has no component {name:?}; it has {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
            Reason::Problems(problems) => {
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{file}:{}:{}: ", p.line, p.column)?;
                    if !p.field.is_empty() {
                        write!(f, "{}: ", p.field)?;
                    }
                    f.write_str(&p.message)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for SystemError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.reason {
            Reason::Read(e) => Some(e),
            _ => None,
        }
    }
}

/// A bad system file is a configuration error of the bus: `?` works in a daemon returning
/// [`tidings::Result`](crate::Result).
impl From<SystemError> for Error {
    fn from(e: SystemError) -> Self {
        Error::new(ErrorKind::InvalidConfig, e.to_string())
    }
}

/// Turns byte offsets of one source text into lines and columns.
#[derive(Debug)]
pub(super) struct Lines<'a> {
    text: &'a str,
}

impl<'a> Lines<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self { text }
    }

    /// The line and column (both from 1; columns in characters) of byte `offset`.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[start..].chars().count() + 1)
    }

    /// A problem at the start of `span`.
    pub(super) fn problem(&self, span: &Range<usize>, field: &str, message: String) -> Problem {
        let (line, column) = self.position(span.start);
        Problem {
            line,
            column,
            field: field.to_owned(),
            message,
        }
    }

    /// Line `line` (from 1), without its end.
    pub(super) fn line(&self, line: usize) -> &'a str {
        self.text.lines().nth(line.saturating_sub(1)).unwrap_or("")
    }

    /// The text of `span`, for naming the key an error points at.
    pub(super) fn text(&self, span: &Range<usize>) -> &'a str {
        self.text.get(span.clone()).unwrap_or("")
    }
}
