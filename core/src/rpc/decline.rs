//! Declining a request: [`Decline`], and the record of who declined that travels with the
//! request (header [`DECLINED_BY`](crate::envelope::headers::DECLINED_BY)).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::envelope::{headers, Envelope};

/// What an RPC handler returns to decline a request it cannot answer, so that another server
/// of the same service answers it: a file server asked for a file it does not hold, a shard
/// asked for a key it does not own.
///
/// Return it as the handler's error (`Err(Decline::new(..).into())`, or `?` on a
/// `Result<_, Decline>`). The request goes back to the service's group for another server,
/// with the same attempt: declining is not a failure, so it is neither retried nor
/// dead-lettered for it. The request carries the servers that declined it, and their reasons,
/// in the header `tidings-declined-by`.
///
/// When the request comes back to a server that already declined it, every server the broker
/// hands it to has had its turn, so it goes round no more: a call gets an error of kind
/// [`ErrorKind::Declined`](crate::ErrorKind::Declined) at once (not a timeout) that says how
/// many servers declined and why, and a cast is dead-lettered with the reason `declined by
/// every server: …`. A request whose TTL (a call's timeout) runs out meanwhile is dropped.
///
/// Use it when which server can answer depends on what it holds; when a server cannot take
/// *any* work for a while (its disk is full), [`active_when`](crate::Serve::active_when) keeps
/// requests away from it instead.
///
/// The broker decides which server gets a request given back: RabbitMQ, ActiveMQ and the
/// in-process broker hand it to the group's servers in turn. Under load, a request may come
/// back to a server that declined it before every other server saw it; the caller then gets
/// the declined error early.
///
/// # Examples
/// ```
/// use tidings_core::{Bus, Decline, ErrorKind};
///
/// # async fn demo(bus: Bus) -> tidings_core::Result<()> {
/// // Two file servers, each holding one file.
/// for held in ["a.txt", "b.txt"] {
///     bus.serve("file.get", move |name: String| async move {
///         if name == held {
///             Ok(format!("contents of {name}"))
///         } else {
///             Err(Decline::new(format!("{name} is not held here")).into())
///         }
///     })
///     .await?;
/// }
/// let text: String = bus.call("file.get", &"b.txt".to_owned()).await?;
/// assert_eq!(text, "contents of b.txt");
/// // Nobody holds c.txt: both decline, and the caller hears so at once.
/// let err = bus.call::<_, String>("file.get", &"c.txt".to_owned()).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Declined);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decline {
    reason: String,
}

impl Decline {
    /// Declines with `reason`, which the caller reads if every server declines.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// Why the server declined.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Decline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "declined: {}", self.reason)
    }
}

impl std::error::Error for Decline {}

/// One server's decline, as the header records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Declined {
    /// The server instance (one [`Bus::serve`](crate::Bus::serve)).
    pub(crate) server: String,
    /// Its bus's identity, `host.kind.id`.
    #[serde(default)]
    pub(crate) emitter: String,
    #[serde(default)]
    pub(crate) reason: String,
}

/// Who declined `request` so far; a header that cannot be read counts as nobody.
pub(crate) fn declined(request: &Envelope) -> Vec<Declined> {
    let Some(text) = request.headers.get(headers::DECLINED_BY) else {
        return Vec::new();
    };
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "unreadable {} header; ignored", headers::DECLINED_BY);
        Vec::new()
    })
}

/// The header's value for `list`.
pub(crate) fn header_value(list: &[Declined]) -> String {
    serde_json::to_string(list).expect("strings always serialize")
}

/// What the caller (or the dead letter) is told when every server declined.
pub(crate) fn every_server_declined(service: &str, list: &[Declined]) -> String {
    let reasons = list
        .iter()
        .map(|d| format!("{}: {}", d.emitter, d.reason))
        .collect::<Vec<_>>()
        .join("; ");
    let n = list.len();
    let servers = if n == 1 { "server" } else { "servers" };
    format!("declined by every server of {service:?} ({n} {servers}: {reasons})")
}
