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

use tidings_core::driver::Provider;
use tidings_core::{Error, ErrorKind, Result};

pub use broker::MemoryProvider;

/// Connects to the in-process broker named by the URL's host (`memory://` alone is the broker
/// named `default`); see [`MemoryProvider::connect`].
///
/// # Examples
/// ```
/// # #[tokio::main] async fn main() -> tidings_core::Result<()> {
/// let provider = tidings_memory::connect("memory://tests").await?;
/// let bus = tidings_core::Bus::new(provider);
/// # let _ = bus; Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn Provider>> {
    Ok(Arc::new(MemoryProvider::connect(url).await?))
}

impl MemoryProvider {
    /// Connects to the in-process broker named by the URL's host (`memory://` alone is the
    /// broker named `default`); `?exchange=` keeps topic spaces apart on one broker, as on a
    /// real one. The broker is created on first use and lives as long as the process.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() -> tidings_core::Result<()> {
    /// let provider = tidings_memory::MemoryProvider::connect("memory://tests").await?;
    /// # let _ = provider; Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
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
        // The options every driver shares; anything else is refused by name, as the network
        // drivers do, so a misspelt option is never ignored.
        let mut exchange = None;
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "exchange" => exchange = Some(value.into_owned()),
                "publish_timeout_ms" => {}
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidUrl,
                        format!(
                            "unknown url option {key} in {url:?}; the memory driver knows \
                             exchange, publish_timeout_ms"
                        ),
                    ))
                }
            }
        }
        Ok(match exchange {
            Some(exchange) => Self::named(&format!("{name}?exchange={exchange}")),
            None => Self::named(name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_options_are_refused_by_name() {
        let e = connect("memory://x?bogus_option=1").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidUrl);
        assert!(
            e.to_string().contains("unknown url option bogus_option"),
            "{e}"
        );
        assert!(connect("memory://x?exchange=a&publish_timeout_ms=5")
            .await
            .is_ok());
    }
}
