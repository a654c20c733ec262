//! The one error type of tidings.
//!
//! Every error carries a small [`ErrorKind`] to match on, a message that says what was wrong and
//! how to fix it, and, where a transport failed, that transport's error as `source` only — so no
//! driver type leaks into the public API.

use std::fmt;

/// What went wrong, in a form to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A routing key is empty, has an empty word, an illegal character or is too long.
    InvalidRoutingKey,
    /// A subscription pattern is malformed.
    InvalidPattern,
    /// A broker URL cannot be parsed or names a scheme no compiled-in driver handles.
    InvalidUrl,
    /// A setting (name, identity, option) is invalid.
    InvalidConfig,
    /// An event could not be encoded.
    Encode,
    /// A payload could not be decoded into the expected event type.
    Decode,
    /// The broker cannot be reached or the connection failed.
    Connection,
    /// The broker refused or lost a publish.
    Publish,
    /// The broker refused a subscription.
    Subscribe,
    /// An RPC call got no reply in time.
    Timeout,
    /// An RPC call or cast found nobody bound to its name.
    NoResponders,
    /// The remote RPC handler returned an error; the message is the remote error's text.
    Remote,
    /// The bus or connection is closed.
    Closed,
    /// The driver or broker cannot do what was asked.
    Unsupported,
    /// A middleware layer stopped the message; the message says why.
    Stopped,
    /// Every server of an RPC service declined the request
    /// ([`Decline`](crate::rpc::Decline)); the message says how many and why.
    Declined,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::InvalidRoutingKey => "invalid routing key",
            Self::InvalidPattern => "invalid pattern",
            Self::InvalidUrl => "invalid broker url",
            Self::InvalidConfig => "invalid configuration",
            Self::Encode => "encode failed",
            Self::Decode => "decode failed",
            Self::Connection => "connection failed",
            Self::Publish => "publish failed",
            Self::Subscribe => "subscribe failed",
            Self::Timeout => "timed out",
            Self::NoResponders => "no responders",
            Self::Remote => "remote handler failed",
            Self::Closed => "closed",
            Self::Unsupported => "unsupported",
            Self::Stopped => "stopped",
            Self::Declined => "no server took the request",
        };
        f.write_str(s)
    }
}

/// The error type of every tidings operation.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error of `kind` whose message says what was wrong and how to fix it.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying (for example transport) error as the source.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What went wrong, to match on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message, without the kind prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same operation later may succeed (the broker was unreachable or
    /// slow), as opposed to an input that will fail again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Connection | ErrorKind::Publish | ErrorKind::Timeout | ErrorKind::Closed
        )
    }
}

/// Result with the tidings [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
