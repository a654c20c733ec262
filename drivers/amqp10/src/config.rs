//! The broker URL, parsed once: where to connect, as whom, and the few driver settings that
//! travel as query parameters.
//!
//! `amqp10://user:pass@host:port[/vhost][?exchange=X&management=http://host:15672&dialect=rabbitmq&publish_timeout_ms=30000]`,
//! or `amqp10s://` for TLS.

use std::fmt;
use std::time::Duration;

use tidings_core::broker_url::bracketed;
use tidings_core::{BrokerUrl, Result};

/// Everything the driver reads from the URL.
#[derive(Clone)]
pub(crate) struct Config {
    /// Host name or address of the broker.
    pub(crate) host: String,
    /// AMQP port.
    pub(crate) port: u16,
    /// Whether to speak TLS (`amqp10s://`).
    pub(crate) tls: bool,
    /// SASL PLAIN user; `None` means SASL ANONYMOUS.
    pub(crate) username: Option<String>,
    /// SASL PLAIN password.
    pub(crate) password: Option<String>,
    /// The virtual host (RabbitMQ) or namespace, `/` when not given.
    pub(crate) vhost: String,
    /// The topic exchange (or topic) that is this bus's topic space.
    pub(crate) exchange: String,
    /// Base URL of an HTTP management API, when the dialect needs one.
    pub(crate) management: Option<String>,
    /// Which broker dialect to use.
    pub(crate) dialect: String,
    /// How long a publish waits for a lost connection to come back.
    pub(crate) publish_timeout: Duration,
    /// The URL with the password replaced, for messages.
    pub(crate) redacted: String,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.redacted)
            .field("exchange", &self.exchange)
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Parses `amqp10://…` or `amqp10s://…`.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let mut url = BrokerUrl::parse(url, "amqp10", &["amqp10", "amqp10s"])?;
        let tls = url.scheme() == "amqp10s";
        let host = url.nodes()[0].host().to_owned();
        let management = url
            .take("management")
            .filter(|m| !m.is_empty())
            .map(|m| m.trim_end_matches('/').to_owned());
        let dialect = url
            .take("dialect")
            .filter(|d| !d.is_empty())
            .map_or_else(|| "rabbitmq".to_owned(), |d| d.to_ascii_lowercase());
        url.reject_unknown(&["management", "dialect"])?;
        Ok(Config {
            host,
            port: url.nodes()[0].port_or(if tls { 5671 } else { 5672 }),
            tls,
            username: url.username(),
            password: url.password(),
            vhost: url.vhost(),
            exchange: url.exchange().to_owned(),
            management,
            dialect,
            publish_timeout: url.publish_timeout(),
            redacted: url.redacted().to_owned(),
        })
    }

    /// `host:port`, as fe2o3 wants it in its URL.
    pub(crate) fn address(&self) -> String {
        format!("{}:{}", bracketed(&self.host), self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::ErrorKind;

    #[test]
    fn parses_a_full_url() {
        let c = Config::parse(
            "amqp10://guest:se%40cret@broker:5673/prod?exchange=ns1&management=http://m:15672/",
        )
        .unwrap();
        assert_eq!(c.host, "broker");
        assert_eq!(c.port, 5673);
        assert!(!c.tls);
        assert_eq!(c.username.as_deref(), Some("guest"));
        assert_eq!(c.password.as_deref(), Some("se@cret"));
        assert_eq!(c.vhost, "prod");
        assert_eq!(c.exchange, "ns1");
        assert_eq!(c.management.as_deref(), Some("http://m:15672"));
        assert!(!c.redacted.contains("cret"));
    }

    #[test]
    fn defaults_and_tls() {
        let c = Config::parse("amqp10s://host").unwrap();
        assert!(c.tls);
        assert_eq!(c.port, 5671);
        assert_eq!(c.vhost, "/");
        assert!(c.username.is_none());
    }

    #[test]
    fn rejects_unknown_parameters_without_leaking_the_password() {
        let e = Config::parse("amqp10://u:hunter2@h/?bogus=1").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
        assert_eq!(e.kind(), ErrorKind::InvalidUrl);
    }
}
