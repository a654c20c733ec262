//! Request/reply over the bus: [`Bus::call`](crate::Bus::call) and
//! [`Bus::serve`](crate::Bus::serve).
//!
//! A call sends the request with [`Provider::request`](crate::driver::Provider::request) under
//! the service name with a fresh correlation id; the driver gives it the connection's inbox
//! address as `reply_to`. Servers form a group named after the service, so each request is
//! handled once, and send the reply with
//! [`Provider::reply`](crate::driver::Provider::reply) straight to that address. The caller's
//! connection has one inbox, shared by every bus over it (see `reply_inbox`), where the call
//! takes its reply by correlation id.
//!
//! A server that cannot answer a request (it does not hold what is asked for) returns
//! [`Decline`], and the request goes to another server of the group.

mod call;
mod decline;
mod serve;

pub use call::{Call, DEFAULT_CALL_TIMEOUT};
pub use decline::Decline;
pub use serve::Serve;
