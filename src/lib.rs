//! # tidings
//!
//! Typed distributed events and RPC between daemons on many hosts. Declare an [`Event`], emit it
//! under a routing key, subscribe by pattern, share work between competing workers, cast and
//! call — without touching connections, queues, acks or serialization. The broker is chosen by
//! a URL (and a cargo feature), never by code changes:
//!
//! | URL | feature | broker |
//! |---|---|---|
//! | `memory://[name]` | `memory` (default) | embedded, in-process |
//! | `amqp://user:pass@host:port/vhost`, `amqps://…` | `amqp091` | RabbitMQ (AMQP 0.9.1) |
//! | `amqp10://user:pass@host:port`, `amqp10s://…` | `amqp10` | AMQP 1.0 brokers |
//! | `stomp://user:pass@host:port[/vhost]` | `stomp` | RabbitMQ STOMP, ActiveMQ |
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tidings::Event;
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Greeting { text: String }
//! impl Event for Greeting { const NAME: &'static str = "greeting"; }
//!
//! # #[tokio::main] async fn main() -> tidings::Result<()> {
//! let bus = tidings::connect("memory://doc").await?;
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! bus.subscribe::<Greeting>("greet.#")
//!     .handle(move |g| { let tx = tx.clone(); async move { tx.send(g.text)?; Ok(()) } })
//!     .await?;
//! bus.emit("greet.world", &Greeting { text: "hello".into() }).await?;
//! assert_eq!(rx.recv().await.unwrap(), "hello");
//! bus.shutdown().await?;
//! # Ok(()) }
//! ```

#[cfg(feature = "system")]
pub mod system;

pub use tidings_core::broker_url::redact;
pub use tidings_core::*;

/// The environment variable [`connect_from_env`] reads.
pub const URL_VAR: &str = "TIDINGS_URL";

/// Connects to the broker at `url` and returns a [`Bus`] on it.
///
/// The scheme picks the driver; a scheme whose driver is not compiled in is an error that
/// names the cargo feature to enable. Credentials in the URL never appear in errors or logs.
pub async fn connect(url: &str) -> Result<Bus> {
    let provider = match scheme_of(url)? {
        "memory" => use_driver!("memory", tidings_memory, url),
        "amqp" | "amqps" => use_driver!("amqp091", tidings_amqp091, url),
        "amqp10" | "amqp10s" => use_driver!("amqp10", tidings_amqp10, url),
        "stomp" | "stomp+ssl" => use_driver!("stomp", tidings_stomp, url),
        other => {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!(
                    "unknown scheme {other:?} in broker url {:?}; tidings knows memory://, amqp://, amqps://, amqp10://, amqp10s:// and stomp://",
                    redact(url)
                ),
            ))
        }
    };
    Ok(Bus::new(provider))
}

/// Connects to the broker named by the `TIDINGS_URL` environment variable, or to `fallback`
/// when it is not set.
pub async fn connect_from_env(fallback: &str) -> Result<Bus> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => connect(url.trim()).await,
        _ => connect(fallback).await,
    }
}

/// `url` moved into its own namespace `namespace` — a separate embedded broker for `memory://`,
/// a separate exchange (`?exchange=namespace`) for the broker drivers — so that tests, benchmarks
/// and the conformance suite never see each other's messages on one broker.
pub fn isolated_url(url: &str, namespace: &str) -> Result<String> {
    RoutingKey::validate(namespace).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("namespace: {}", e.message()),
        )
    })?;
    if scheme_of(url)? == "memory" {
        return Ok(format!("memory://{namespace}"));
    }
    // Split by hand: a cluster URL's host list (`h1:5672,h2:5673`) is not a URL the `url`
    // crate parses.
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut options = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key != "exchange" {
            options.append_pair(&key, &value);
        }
    }
    options.append_pair("exchange", namespace);
    Ok(format!("{base}?{}", options.finish()))
}

/// The scheme of a broker URL (`amqp` of `amqp://…`), or a clear error when there is none.
fn scheme_of(url: &str) -> Result<&str> {
    match url.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            Ok(scheme)
        }
        _ => Err(Error::new(
            ErrorKind::InvalidUrl,
            format!(
                "cannot parse broker url {:?}: it does not start with a scheme://; expected \
                 for example memory:// or amqp://user:pass@host:5672/vhost",
                redact(url)
            ),
        )),
    }
}

/// Picks a driver if its feature is compiled in, or says which feature to enable.
macro_rules! use_driver {
    ($feature:literal, $krate:ident, $url:expr) => {{
        #[cfg(feature = $feature)]
        {
            $krate::connect($url).await?
        }
        #[cfg(not(feature = $feature))]
        {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!(
                    "the {} driver is not compiled in; enable the cargo feature `tidings/{}`",
                    $feature, $feature
                ),
            ));
        }
    }};
}
use use_driver;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_say_what_is_wrong() {
        let e = connect("not a url").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidUrl);
        assert!(e.to_string().contains("cannot parse broker url"), "{e}");
        let e = connect("kafka://host").await.unwrap_err();
        assert!(e.to_string().contains("unknown scheme \"kafka\""), "{e}");
    }

    /// `amqp://` and `stomp://` used to reach the local broker with default credentials.
    #[cfg(all(feature = "amqp091", feature = "amqp10", feature = "stomp"))]
    #[tokio::test]
    async fn every_scheme_refuses_a_url_without_a_host_and_unknown_options() {
        for url in [
            "amqp://",
            "amqps://",
            "amqp10://",
            "stomp://",
            "stomp+ssl://",
        ] {
            let e = connect(url).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{url}: {e}");
            assert!(e.to_string().contains("has no host"), "{url}: {e}");
        }
        for url in [
            "memory://?bogus_option=1",
            "amqp://127.0.0.1/?bogus_option=1",
            "amqp10://127.0.0.1/?bogus_option=1",
            "stomp://127.0.0.1/?bogus_option=1",
        ] {
            let e = connect(url).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{url}: {e}");
            assert!(e.to_string().contains("bogus_option"), "{url}: {e}");
        }
    }

    #[test]
    fn cluster_urls_are_isolated_and_bad_urls_refused() {
        assert_eq!(
            isolated_url("amqp://u:p@h1:5682,h2:5683/%2f?heartbeat=5", "t1").unwrap(),
            "amqp://u:p@h1:5682,h2:5683/%2f?heartbeat=5&exchange=t1"
        );
        assert_eq!(
            isolated_url("stomp://h1,h2", "t1").unwrap(),
            "stomp://h1,h2?exchange=t1"
        );
        for bad in ["", "amqp", "://h", "amqp:/h", "am qp://h"] {
            let e = isolated_url(bad, "t1").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{bad:?}");
        }
    }

    #[test]
    fn isolated_urls_keep_other_options() {
        assert_eq!(isolated_url("memory://", "t1").unwrap(), "memory://t1");
        assert_eq!(
            isolated_url("amqp://u:p@h:5672/%2f?exchange=old&heartbeat=10", "t1").unwrap(),
            "amqp://u:p@h:5672/%2f?heartbeat=10&exchange=t1"
        );
        assert!(isolated_url("amqp://h", "bad name").is_err());
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(redact("amqp://u:secret@h:1/v"), "amqp://u:***@h:1/v");
        assert!(!redact("amqp://u:se cret@h/%").contains("se cret"));
    }
}
