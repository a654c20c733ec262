//! Request/reply over the bus: [`Bus::call`] and [`Bus::serve`].
//!
//! A call publishes the request under the service name with a fresh correlation id and the
//! connection's inbox address as `reply_to`. Servers form a group named after the service, so
//! each request is handled once. The reply travels straight to the caller's inbox (see
//! `reply_inbox`), where the call takes it by correlation id.

mod call;
mod serve;

pub use call::{Call, DEFAULT_CALL_TIMEOUT};
pub use serve::Serve;
