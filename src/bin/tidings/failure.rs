//! How a command fails: one line a person can act on, and an exit code — 2 for usage errors
//! (bad URL, key, JSON, option), 1 for failures (broker down, remote error, failed case).

use tidings::{Error, ErrorKind};

/// A failed command.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) code: u8,
}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }

    pub(crate) fn runtime(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }

    /// A failure already reported on screen (for example a conformance table).
    pub(crate) fn silent() -> Self {
        Self {
            message: String::new(),
            code: 1,
        }
    }

    pub(crate) fn no_url() -> Self {
        Self::usage("no broker url: pass --url or set TIDINGS_URL (for example amqp://guest:guest@127.0.0.1:5672/%2f)")
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        match error.kind() {
            ErrorKind::InvalidRoutingKey
            | ErrorKind::InvalidPattern
            | ErrorKind::InvalidUrl
            | ErrorKind::InvalidConfig => Self::usage(message),
            _ => Self::runtime(message),
        }
    }
}
