//! Interceptors: read and set envelope headers on every message sent and received, for example to
//! propagate a session or trace id.
//!
//! Interceptors run in the order they were added, in both directions. They see RPC requests and
//! replies too.

use std::fmt;

use crate::envelope::Envelope;

/// Sees every envelope a bus sends and receives.
pub trait Interceptor: Send + Sync + 'static {
    /// Called before an envelope is published. Headers set here travel with it.
    fn on_send(&self, envelope: &mut Envelope) {
        let _ = envelope;
    }

    /// Called when an envelope arrives, before it is decoded and handled.
    fn on_receive(&self, envelope: &mut Envelope) {
        let _ = envelope;
    }
}

/// An interceptor from a closure that runs on send.
///
/// # Examples
/// ```
/// let stamp = tidings_core::interceptor::on_send(|env| {
///     env.headers.insert("session".into(), "42".into());
/// });
/// # let _ = stamp;
/// ```
pub fn on_send<F: Fn(&mut Envelope) + Send + Sync + 'static>(f: F) -> impl Interceptor {
    OnSend(f)
}

/// An interceptor from a closure that runs on receive.
pub fn on_receive<F: Fn(&mut Envelope) + Send + Sync + 'static>(f: F) -> impl Interceptor {
    OnReceive(f)
}

struct OnSend<F>(F);
struct OnReceive<F>(F);

impl<F: Fn(&mut Envelope) + Send + Sync + 'static> Interceptor for OnSend<F> {
    fn on_send(&self, envelope: &mut Envelope) {
        (self.0)(envelope)
    }
}

impl<F: Fn(&mut Envelope) + Send + Sync + 'static> Interceptor for OnReceive<F> {
    fn on_receive(&self, envelope: &mut Envelope) {
        (self.0)(envelope)
    }
}

impl<F> fmt::Debug for OnSend<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnSend")
    }
}

impl<F> fmt::Debug for OnReceive<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnReceive")
    }
}
