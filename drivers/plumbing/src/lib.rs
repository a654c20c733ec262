//! What every tidings network driver shares, written once: the supervisor that keeps one
//! connection to a broker of one or several nodes (shuffled order, failover to the next live
//! node, backoff with jitter, a generation counter so stale handles fail cleanly, status
//! reporting), and the TLS policy (one crypto provider, the platform's trust store plus the
//! URL's `?ca=` file), and the choice of RabbitMQ queue type (`?queue-type=`).
//!
//! No transport protocol lives here: a driver says how to open a connection to one node and
//! how to watch it ([`Connector`]); this crate decides when and where.

mod backoff;
mod nodes;
pub mod queue_type;
mod supervisor;
pub mod tls;

pub use backoff::Backoff;
pub use nodes::NodeOrder;
pub use queue_type::QueueType;
pub use supervisor::{Connector, Current, NotLive, Settings, Supervisor};
pub use tls::Tls;
