//! The broker URL: the nodes to connect to, what lapin needs for each, the driver's own options
//! taken out of the query string, and a password-free form of it for logs and error messages.

use std::sync::Arc;
use std::time::Duration;

use tidings_core::broker_url::Node;
use tidings_core::{BrokerUrl, Result};
use tidings_plumbing::queue_type::{self, QueueType};
use tidings_plumbing::Tls;

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
    /// The parsed URL without the driver's own options. Holds the password: never log it; use
    /// [`Config::redacted`].
    url: BrokerUrl,
    /// TLS (`amqps://`): the `?ca=` file, handed to lapin.
    pub(crate) tls: Option<Arc<Tls>>,
    /// The URL without its password, safe to log and to put in error messages.
    pub(crate) redacted: String,
    /// The bus's topic exchange.
    pub(crate) exchange: String,
    /// How long a publish may wait for a connection and for its confirm.
    pub(crate) publish_timeout: Duration,
    /// The type of durable group and dead-letter queues.
    pub(crate) queue_type: QueueType,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.redacted)
            .field("exchange", &self.exchange)
            .field("publish_timeout", &self.publish_timeout)
            .field("queue_type", &self.queue_type)
            .finish()
    }
}

impl Config {
    /// Parses `url`. Errors never contain the password.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        // `exchange` and `publish_timeout_ms` are taken out by the shared parser, `ca` by the
        // TLS policy, `queue-type` here; the rest of the query is lapin's and passed through,
        // so only the options lapin reads pass.
        let mut url = BrokerUrl::parse(url, "amqp091", &["amqp", "amqps"])?;
        let tls = Tls::from_url(&mut url, "amqps")?.map(Arc::new);
        let queue_type = QueueType::take(&mut url, "amqp091")?
            .unwrap_or_else(|| QueueType::default_for(url.nodes()));
        let mut known = LAPIN_OPTIONS.to_vec();
        known.extend([queue_type::OPTION, tidings_plumbing::tls::CA_OPTION]);
        url.reject_unknown(&known)?;
        Ok(Self {
            redacted: url.redacted().to_owned(),
            exchange: url.exchange().to_owned(),
            publish_timeout: url.publish_timeout(),
            tls,
            queue_type,
            url,
        })
    }

    /// The broker's nodes, as the URL lists them.
    pub(crate) fn nodes(&self) -> &[Node] {
        self.url.nodes()
    }

    /// What lapin connects to for `node`: its URL with the lapin options. Holds the password.
    pub(crate) fn lapin_uri(&self, node: &Node) -> String {
        self.url.secret_url_of(node)
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
        let uri = c.lapin_uri(&c.nodes()[0]);
        assert!(uri.contains("secret"));
        assert!(uri.contains("heartbeat=10"));
        assert!(!uri.contains("exchange"));
        assert!(!c.redacted.contains("secret"));
        assert!(c.redacted.contains("guest:***@localhost"));
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn defaults() {
        let c = Config::parse("amqps://localhost").unwrap();
        assert_eq!(c.exchange, DEFAULT_EXCHANGE);
        assert_eq!(c.publish_timeout, DEFAULT_PUBLISH_TIMEOUT);
        assert_eq!(c.queue_type, QueueType::Classic);
        assert!(c.tls.is_some() && c.tls.as_ref().unwrap().ca().is_none());
        assert!(Config::parse("amqp://localhost").unwrap().tls.is_none());
    }

    #[test]
    fn a_cluster_url_uses_quorum_queues_unless_told_otherwise() {
        let c = Config::parse("amqp://u:pw@h1:5682,h2:5683,[::1]:5684/%2f").unwrap();
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert_eq!(c.nodes().len(), 3);
        assert_eq!(c.lapin_uri(&c.nodes()[2]), "amqp://u:pw@[::1]:5684/%2f");
        assert!(
            c.redacted.contains("h1:5682,h2:5683,[::1]:5684"),
            "{}",
            c.redacted
        );
        let c = Config::parse("amqp://h1,h2/?queue-type=classic").unwrap();
        assert_eq!(c.queue_type, QueueType::Classic);
        let c = Config::parse("amqp://h1/?queue-type=quorum").unwrap();
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert!(!c.lapin_uri(&c.nodes()[0]).contains("queue-type"));
        let e = Config::parse("amqp://h1/?queue-type=stream").unwrap_err();
        assert!(
            e.to_string().contains("knows `classic` and `quorum`"),
            "{e}"
        );
    }

    #[test]
    fn the_ca_file_is_for_amqps_only() {
        let c = Config::parse("amqps://h/?ca=/etc/ca.pem").unwrap();
        assert_eq!(
            c.tls.unwrap().ca(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        let e = Config::parse("amqp://h/?ca=/etc/ca.pem").unwrap_err();
        assert!(e.to_string().contains("only applies to amqps://"), "{e}");
    }

    /// `?bogus_option=1` used to be accepted silently while the other drivers refused it.
    #[test]
    fn unknown_options_are_refused_by_name() {
        let e = Config::parse("amqp://u:pw@h/?bogus_option=1&heartbeat=5").unwrap_err();
        assert!(
            e.to_string().contains("unknown url option bogus_option;")
                && e.to_string().contains("frame_max")
                && e.to_string().contains("queue-type"),
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
