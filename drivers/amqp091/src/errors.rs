//! Turning lapin errors into tidings errors, and telling a lost connection from a refused
//! operation.

use lapin::protocol::AMQPErrorKind;
use lapin::ErrorKind as LapinKind;
use tidings_core::{Error, ErrorKind};

/// A tidings error of `kind` with `message`, keeping the lapin error as its source. lapin's
/// errors never contain the URL, so no password can leak through them.
pub(crate) fn transport(kind: ErrorKind, message: String, source: lapin::Error) -> Error {
    Error::new(kind, message).with_source(source)
}

/// Whether `error` means the connection is gone (as opposed to one channel or one operation
/// being refused while the connection lives on).
pub(crate) fn is_connection_error(error: &lapin::Error) -> bool {
    match error.kind() {
        LapinKind::IOError(_)
        | LapinKind::InvalidConnectionState(_)
        | LapinKind::MissingHeartbeatError
        | LapinKind::RuntimeShutdownError(_) => true,
        LapinKind::ProtocolError(e) => matches!(e.kind(), AMQPErrorKind::Hard(_)),
        _ => false,
    }
}
