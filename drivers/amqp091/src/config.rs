//! The broker URL: what lapin needs to connect, the driver's own options taken out of the query
//! string, and a password-free form of it for logs and error messages.

use std::time::Duration;

use tidings_core::{BrokerUrl, Result};

#[cfg(test)]
use tidings_core::broker_url::{DEFAULT_EXCHANGE, DEFAULT_PUBLISH_TIMEOUT};

/// The URL options lapin reads (amq-protocol-uri's query string), passed through to it.
const LAPIN_OPTIONS: &[&str] = &[
    "heartbeat",
    "frame_max",
    "channel_max",
    "connection_timeout",
    "auth_mechanism",
];

/// A parsed `amqp://` or `amqps://` URL.
#[derive(Clone)]
pub(crate) struct Config {
    /// What lapin connects to: the URL without the driver's own parameters. Holds the password,
    /// so it is never logged; use [`Config::redacted`].
    pub(crate) lapin_uri: String,
    /// The URL without its password, safe to log and to put in error messages.
    pub(crate) redacted: String,
    /// The bus's topic exchange.
    pub(crate) exchange: String,
    /// How long a publish may wait for a connection and for its confirm.
    pub(crate) publish_timeout: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.redacted)
            .field("exchange", &self.exchange)
            .field("publish_timeout", &self.publish_timeout)
            .finish()
    }
}

impl Config {
    /// Parses `url`. Errors never contain the password.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        // `exchange` and `publish_timeout_ms` are taken out by the shared parser; the rest of
        // the query is lapin's and passed through, so only the options lapin reads pass.
        let url = BrokerUrl::parse(url, "amqp091", &["amqp", "amqps"])?;
        url.reject_unknown(LAPIN_OPTIONS)?;
        Ok(Self {
            lapin_uri: url.secret_url().to_owned(),
            redacted: url.redacted().to_owned(),
            exchange: url.exchange().to_owned(),
            publish_timeout: url.publish_timeout(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_own_options_out_and_hides_the_password() {
        let c = Config::parse(
            "amqp://guest:secret@localhost:5672/%2f?exchange=ex1&publish_timeout_ms=250&heartbeat=10",
        )
        .unwrap();
        assert_eq!(c.exchange, "ex1");
        assert_eq!(c.publish_timeout, Duration::from_millis(250));
        assert!(c.lapin_uri.contains("secret"));
        assert!(c.lapin_uri.contains("heartbeat=10"));
        assert!(!c.lapin_uri.contains("exchange"));
        assert!(!c.redacted.contains("secret"));
        assert!(c.redacted.contains("guest:***@localhost"));
    }

    #[test]
    fn defaults() {
        let c = Config::parse("amqps://localhost").unwrap();
        assert_eq!(c.exchange, DEFAULT_EXCHANGE);
        assert_eq!(c.publish_timeout, DEFAULT_PUBLISH_TIMEOUT);
    }

    /// `?bogus_option=1` used to be accepted silently while the other drivers refused it.
    #[test]
    fn unknown_options_are_refused_by_name() {
        let e = Config::parse("amqp://u:pw@h/?bogus_option=1&heartbeat=5").unwrap_err();
        assert!(
            e.to_string().contains("unknown url option bogus_option;")
                && e.to_string().contains("frame_max"),
            "{e}"
        );
        assert!(!e.to_string().contains("pw@"), "{e}");
    }

    #[test]
    fn bad_input_is_reported_without_password() {
        let e = Config::parse("amqp://u:pw@h/?exchange=amq.topic").unwrap_err();
        assert!(!e.to_string().contains("pw"));
        let e = Config::parse("amqp://u:pw@h/?publish_timeout_ms=x").unwrap_err();
        assert!(!e.to_string().contains("pw"));
        assert!(Config::parse("http://h").is_err());
        let e = Config::parse("amqp://u:pw@h:x").unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
    }
}
