//! The `stomp://` URL: where the broker is, who we are, and the driver's knobs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tidings_core::broker_url::Node;
use tidings_core::{BrokerUrl, Error, ErrorKind, Result};
use tidings_plumbing::queue_type::{self, QueueType};
use tidings_plumbing::Tls;

use crate::dialect::DialectKind;

/// Everything [`crate::connect`] reads from the URL.
#[derive(Clone)]
pub(crate) struct Config {
    /// The broker's nodes, as the URL lists them (`h1:61613,h2:61613,...`).
    pub(crate) nodes: Vec<Node>,
    pub(crate) login: Option<String>,
    pub(crate) passcode: Option<String>,
    /// The STOMP `host` header: RabbitMQ's virtual host; ActiveMQ ignores it.
    pub(crate) vhost: String,
    /// Prefix of every destination, so several buses share one broker without meeting.
    pub(crate) namespace: String,
    /// Forced dialect; `None` = detect from the CONNECTED frame's `server` header.
    pub(crate) dialect: Option<DialectKind>,
    /// Heart-beat interval asked of and offered to the broker; zero disables heart-beats.
    pub(crate) heartbeat: Duration,
    /// How long a publish waits (across reconnects) for the broker's receipt.
    pub(crate) publish_timeout: Duration,
    /// Messages are sent `persistent:true` (kept across broker restarts; on RabbitMQ the
    /// receipt then also waits for the broker's confirm).
    pub(crate) persistent: bool,
    /// `stomp+ssl://`: TLS around the TCP connection, by the shared policy (platform roots
    /// plus the `?ca=<pem file>` certificates).
    pub(crate) tls: Option<Arc<Tls>>,
    /// The type of durable group queues on RabbitMQ (`?queue-type=`; quorum by default on a
    /// URL of several nodes).
    pub(crate) queue_type: QueueType,
    /// Whether the URL said `queue-type=` itself.
    pub(crate) queue_type_given: bool,
    /// The URL without its password, for messages.
    pub(crate) redacted: String,
}

impl fmt::Debug for Config {
    /// Never shows the passcode.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.redacted)
            .field("namespace", &self.namespace)
            .field("dialect", &self.dialect)
            .field("tls", &self.tls.is_some())
            .field("queue_type", &self.queue_type)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Parses `stomp[+ssl]://[user[:pass]@]host[:port][,host[:port]...][/vhost][?exchange=..
    /// &dialect=..&heartbeat_ms=..&publish_timeout_ms=..&persistent=..&queue-type=..&ca=..]`.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let mut url = BrokerUrl::parse(url, "stomp", &["stomp", "stomp+ssl"])?;
        let tls = Tls::from_url(&mut url, "stomp+ssl")?.map(Arc::new);
        let bad = |option: &str, value: &str, why: &str| {
            Error::new(
                ErrorKind::InvalidUrl,
                format!("stomp url option {option}={value:?}: {why}"),
            )
        };
        // The topic space prefixes every destination (`/topic/<exchange>.<key>`), so it must be
        // one word: a dot would add a level that wildcards then see.
        let namespace = url.exchange().to_owned();
        if !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                "exchange",
                &namespace,
                "on STOMP the topic space is one word of ASCII letters, digits, `_` and `-`",
            ));
        }
        let dialect = match url.take("dialect") {
            None => None,
            Some(name) => Some(DialectKind::from_name(&name).ok_or_else(|| {
                bad(
                    "dialect",
                    &name,
                    "known dialects are `rabbitmq` and `activemq`",
                )
            })?),
        };
        let given = QueueType::take(&mut url, "stomp")?;
        let queue_type = given.unwrap_or_else(|| QueueType::default_for(url.nodes()));
        let heartbeat = url
            .take_ms("heartbeat_ms")?
            .unwrap_or(Duration::from_secs(10));
        let persistent = url.take_bool("persistent")?.unwrap_or(true);
        url.reject_unknown(&[
            "dialect",
            "heartbeat_ms",
            "persistent",
            queue_type::OPTION,
            tidings_plumbing::tls::CA_OPTION,
        ])?;
        Ok(Config {
            nodes: url.nodes().to_vec(),
            login: url.username(),
            passcode: url.password(),
            vhost: url.vhost(),
            namespace,
            dialect,
            heartbeat,
            publish_timeout: url.publish_timeout(),
            persistent,
            queue_type,
            queue_type_given: given.is_some(),
            redacted: url.redacted().to_owned(),
            tls,
        })
    }

    /// The port of a node the URL gives none for: those RabbitMQ's STOMP plugin listens on
    /// (plain, TLS) by default.
    pub(crate) fn default_port(&self) -> u16 {
        if self.tls.is_some() {
            61614
        } else {
            61613
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_everything() {
        let c = Config::parse(
            "stomp://ann:s%40cret@example.org:61623/vh?exchange=ns1&dialect=activemq&heartbeat_ms=0",
        )
        .unwrap();
        assert_eq!(c.nodes[0].address(c.default_port()), "example.org:61623");
        assert_eq!(c.login.as_deref(), Some("ann"));
        assert_eq!(c.passcode.as_deref(), Some("s@cret"));
        assert_eq!(c.vhost, "vh");
        assert_eq!(c.namespace, "ns1");
        assert_eq!(c.dialect, Some(DialectKind::ActiveMq));
        assert_eq!(c.heartbeat, Duration::ZERO);
        assert!(!format!("{c:?}").contains("cret"));
    }

    #[test]
    fn stomp_ssl_means_tls() {
        let c = Config::parse("stomp+ssl://a:b@h/?ca=/tmp/ca.pem").unwrap();
        let tls = c.tls.as_ref().expect("tls");
        assert_eq!(c.default_port(), 61614);
        assert_eq!(tls.ca(), Some(std::path::Path::new("/tmp/ca.pem")));
        assert!(Config::parse("stomp://h/").unwrap().tls.is_none());
        assert!(Config::parse("stomp://h/?ca=x").is_err());
    }

    #[test]
    fn redacts_passwords() {
        let e = Config::parse("stomp://a:secret@h/?bogus=1").unwrap_err();
        assert!(
            e.to_string().contains("bogus") && !e.to_string().contains("secret"),
            "{e}"
        );
        let e = Config::parse("stomp://a:secret@h/?exchange=a.b").unwrap_err();
        assert!(e.to_string().contains("one word"), "{e}");
    }

    #[test]
    fn a_host_list_names_every_node_and_uses_quorum_queues() {
        let c = Config::parse("stomp://u:p@h1:61682,h2,[::1]:61684/vh").unwrap();
        let nodes: Vec<String> = c
            .nodes
            .iter()
            .map(|n| n.address(c.default_port()))
            .collect();
        assert_eq!(nodes, ["h1:61682", "h2:61613", "[::1]:61684"]);
        assert_eq!(c.vhost, "vh");
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert!(!c.queue_type_given);
        assert!(!c.redacted.contains(":p@"), "{}", c.redacted);
        let c = Config::parse("stomp://h1,h2/?queue-type=classic").unwrap();
        assert_eq!(
            (c.queue_type, c.queue_type_given),
            (QueueType::Classic, true)
        );
        let c = Config::parse("stomp://h1/").unwrap();
        assert_eq!(c.queue_type, QueueType::Classic);
        let c = Config::parse("stomp://h1/?queue-type=quorum").unwrap();
        assert_eq!(c.queue_type, QueueType::Quorum);
        let e = Config::parse("stomp://h1/?queue-type=stream").unwrap_err();
        assert!(e.to_string().contains("`classic` and `quorum`"), "{e}");
    }
}
