//! What a subscription or RPC server runs per delivery, type-erased or not, and how it reports
//! the result to the receive path's policy step.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::envelope::Envelope;

/// A delivery handled: whether an RPC reply went out, and the handler's error if the reply
/// carried one (an RPC server replies with errors instead of retrying).
#[derive(Debug, Default)]
pub(crate) struct Done {
    pub(crate) replied: bool,
    pub(crate) error: Option<String>,
}

/// Why handling failed, which decides retry or immediate dead letter.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Retrying cannot help (the payload cannot be decoded).
    Poison(String),
    /// The handler failed; retry while attempts remain.
    Handler(String),
    /// An RPC server declined the request: give it back to the group, with these headers
    /// (who declined) on it, without counting an attempt.
    Decline(BTreeMap<String, String>),
}

/// A type-erased handler, for the RPC server whose handler is built at run time.
pub(crate) type RawHandler =
    Arc<dyn Fn(Arc<Envelope>) -> BoxFuture<'static, Result<Done, Failure>> + Send + Sync>;

/// What a subscription runs per message. Generic rather than boxed, so a typed handler costs no
/// allocation per message.
pub(crate) trait Handler: Send + Sync + 'static {
    fn call(&self, envelope: Arc<Envelope>) -> impl Future<Output = Result<Done, Failure>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Arc<Envelope>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Done, Failure>> + Send,
{
    fn call(&self, envelope: Arc<Envelope>) -> impl Future<Output = Result<Done, Failure>> + Send {
        self(envelope)
    }
}

/// The text of a caught panic.
pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
