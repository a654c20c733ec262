//! The broker URL, parsed once: where to connect, as whom, and the few driver settings that
//! travel as query parameters.
//!
//! `amqp10://user:pass@host[:port][,host[:port]…][/vhost][?exchange=X&management=http://host:15672&dialect=rabbitmq&queue-type=quorum&publish_timeout_ms=30000]`,
//! or `amqp10s://` for TLS (with `?ca=<pem file>` for a private CA).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tidings_core::broker_url::Node;
use tidings_core::{BrokerUrl, Error, ErrorKind, Result};
use tidings_plumbing::queue_type::{self, QueueType};
use tidings_plumbing::Tls;

/// The option naming the management API(s) of a dialect that declares through one.
const MANAGEMENT: &str = "management";
/// The option choosing the broker dialect.
const DIALECT: &str = "dialect";

/// Everything the driver reads from the URL.
#[derive(Clone)]
pub(crate) struct Config {
    /// The broker's nodes, as the URL lists them (never empty).
    pub(crate) nodes: Vec<Node>,
    /// TLS (`amqp10s://`): the policy, with the `?ca=` file if any.
    pub(crate) tls: Option<Arc<Tls>>,
    /// SASL PLAIN user; `None` means SASL ANONYMOUS.
    pub(crate) username: Option<String>,
    /// SASL PLAIN password.
    pub(crate) password: Option<String>,
    /// The virtual host (RabbitMQ) or namespace, `/` when not given.
    pub(crate) vhost: String,
    /// The topic exchange (or topic) that is this bus's topic space.
    pub(crate) exchange: String,
    /// Base URLs of the HTTP management API (`?management=`, comma-separated: one for every
    /// node, or one for all), when the dialect needs one; empty when the URL names none.
    pub(crate) management: Vec<String>,
    /// Which broker dialect to use.
    pub(crate) dialect: String,
    /// The type of durable group and dead-letter queues.
    pub(crate) queue_type: QueueType,
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
            .field("queue_type", &self.queue_type)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Parses `amqp10://…` or `amqp10s://…`.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let mut url = BrokerUrl::parse(url, "amqp10", &["amqp10", "amqp10s"])?;
        let tls = Tls::from_url(&mut url, "amqp10s")?.map(Arc::new);
        let management: Vec<String> = url
            .take(MANAGEMENT)
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().trim_end_matches('/').to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        let nodes = url.nodes().to_vec();
        if management.len() > 1 && management.len() != nodes.len() {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!(
                    "?{MANAGEMENT}= lists {} management APIs for {} nodes in {}; give one for \
                     every node, in the order of the nodes, or one for all",
                    management.len(),
                    nodes.len(),
                    url.redacted()
                ),
            ));
        }
        let dialect = url
            .take(DIALECT)
            .filter(|d| !d.is_empty())
            .map_or_else(|| "rabbitmq".to_owned(), |d| d.to_ascii_lowercase());
        let queue_type =
            QueueType::take(&mut url, "amqp10")?.unwrap_or_else(|| QueueType::default_for(&nodes));
        url.reject_unknown(&[
            MANAGEMENT,
            DIALECT,
            queue_type::OPTION,
            tidings_plumbing::tls::CA_OPTION,
        ])?;
        Ok(Config {
            nodes,
            tls,
            username: url.username(),
            password: url.password(),
            vhost: url.vhost(),
            exchange: url.exchange().to_owned(),
            management,
            dialect,
            queue_type,
            publish_timeout: url.publish_timeout(),
            redacted: url.redacted().to_owned(),
        })
    }

    /// The AMQP port of a node that names none: 5671 with TLS, 5672 without.
    pub(crate) fn default_port(&self) -> u16 {
        if self.tls.is_some() {
            5671
        } else {
            5672
        }
    }

    /// `host:port` of `node`, as a socket address is written.
    pub(crate) fn address(&self, node: &Node) -> String {
        node.address(self.default_port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_url() {
        let c = Config::parse(
            "amqp10://guest:se%40cret@broker:5673/prod?exchange=ns1&management=http://m:15672/",
        )
        .unwrap();
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(c.address(&c.nodes[0]), "broker:5673");
        assert!(c.tls.is_none());
        assert_eq!(c.username.as_deref(), Some("guest"));
        assert_eq!(c.password.as_deref(), Some("se@cret"));
        assert_eq!(c.vhost, "prod");
        assert_eq!(c.exchange, "ns1");
        assert_eq!(c.management, ["http://m:15672"]);
        assert_eq!(c.queue_type, QueueType::Classic);
        assert!(!c.redacted.contains("cret"));
    }

    #[test]
    fn defaults_and_tls() {
        let c = Config::parse("amqp10s://host").unwrap();
        assert!(c.tls.is_some());
        assert_eq!(c.address(&c.nodes[0]), "host:5671");
        assert_eq!(c.vhost, "/");
        assert!(c.username.is_none());
        assert!(c.management.is_empty());
    }

    #[test]
    fn the_ca_option_is_for_tls_urls() {
        let c = Config::parse("amqp10s://host/?ca=/etc/ca.pem").unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca(), Some(std::path::Path::new("/etc/ca.pem")));
        let e = Config::parse("amqp10://host/?ca=/etc/ca.pem").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidUrl);
    }

    #[test]
    fn a_host_list_is_a_cluster_of_quorum_queues() {
        let c = Config::parse(
            "amqp10://u:p@h1:5682,h2:5683,[::1]:5684/v?management=http://h1:15682,http://h2:15683,http://[::1]:15684",
        )
        .unwrap();
        let addresses: Vec<String> = c.nodes.iter().map(|n| c.address(n)).collect();
        assert_eq!(addresses, ["h1:5682", "h2:5683", "[::1]:5684"]);
        assert_eq!(c.management.len(), 3);
        assert_eq!(c.queue_type, QueueType::Quorum);
        let classic = Config::parse("amqp10://h1,h2/?queue-type=classic").unwrap();
        assert_eq!(classic.queue_type, QueueType::Classic);
        assert_eq!(classic.address(&classic.nodes[1]), "h2:5672");
        let one = Config::parse("amqp10://h1/?queue-type=quorum").unwrap();
        assert_eq!(one.queue_type, QueueType::Quorum);
        let e = Config::parse("amqp10://h1/?queue-type=stream").unwrap_err();
        assert!(e.to_string().contains("classic"), "{e}");
        let e = Config::parse("amqp10://h1,h2,h3/?management=http://a,http://b").unwrap_err();
        assert!(
            e.to_string().contains("2 management APIs for 3 nodes"),
            "{e}"
        );
    }

    #[test]
    fn rejects_unknown_parameters_without_leaking_the_password() {
        let e = Config::parse("amqp10://u:hunter2@h/?bogus=1").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
        assert_eq!(e.kind(), ErrorKind::InvalidUrl);
    }
}
