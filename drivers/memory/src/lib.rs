//! The embedded in-process broker of tidings, selected by `memory://[name]`.
//!
//! Full semantics in one process: topic routing with `*` and `#`, broadcast and competing
//! groups, prefetch, acks, requeue and redelivery when a consumer goes away unsettled, TTL
//! expiry, dead-letter queues and mandatory publishing. Every `connect` with the same name
//! reaches the same broker, so several buses in one program talk to each other.
//!
//! Hot path: publishing reads the bindings from a lock-free snapshot (rebuilt only when a
//! subscription comes or goes) and locks only the queues the message goes to. Queues are
//! unbounded: `publish` never blocks, so a consumer that falls behind costs memory.

mod broker;
mod queue;

use std::sync::Arc;

use tidings_core::{Error, ErrorKind, Provider, Result};

pub use broker::MemoryProvider;

/// Connects to the in-process broker named by the URL's host (`memory://` alone is the broker
/// named `default`). The broker is created on first use and lives as long as the process.
///
/// # Examples
/// ```
/// # #[tokio::main] async fn main() -> tidings_core::Result<()> {
/// let provider = tidings_memory::connect("memory://tests").await?;
/// let bus = tidings_core::Bus::new(provider);
/// # let _ = bus; Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn Provider>> {
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::new(ErrorKind::InvalidUrl, format!("cannot parse {url:?}: {e}")))?;
    if parsed.scheme() != "memory" {
        return Err(Error::new(
            ErrorKind::InvalidUrl,
            format!(
                "the memory driver takes memory:// urls, not {}://",
                parsed.scheme()
            ),
        ));
    }
    let name = match parsed.host_str() {
        None | Some("") => "default",
        Some(name) => name,
    };
    Ok(Arc::new(MemoryProvider::connect(name)))
}
