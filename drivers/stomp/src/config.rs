//! The `stomp://` URL: where the broker is, who we are, and the driver's knobs.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tidings_core::broker_url::bracketed;
use tidings_core::{BrokerUrl, Error, ErrorKind, Result};

use crate::dialect::DialectKind;

/// Everything [`crate::connect`] reads from the URL.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) host: String,
    pub(crate) port: u16,
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
    /// `stomp+ssl://`: TLS (rustls) around the TCP connection.
    pub(crate) tls: bool,
    /// `?ca=<path>`: a PEM file of CA certificates trusted instead of the webpki roots.
    pub(crate) ca: Option<PathBuf>,
}

impl fmt::Debug for Config {
    /// Never shows the passcode.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("login", &self.login)
            .field("vhost", &self.vhost)
            .field("namespace", &self.namespace)
            .field("dialect", &self.dialect)
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Parses `stomp[+ssl]://[user[:pass]@]host[:port][/vhost][?exchange=..&dialect=..
    /// &heartbeat_ms=..&publish_timeout_ms=..&persistent=..&ca=..]`.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let mut url = BrokerUrl::parse(url, "stomp", &["stomp", "stomp+ssl"])?;
        let tls = url.scheme() == "stomp+ssl";
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
        let ca = match url.take("ca") {
            Some(path) if !tls => {
                return Err(bad(
                    "ca",
                    &path,
                    "a CA file only applies to stomp+ssl:// urls",
                ))
            }
            path => path.map(PathBuf::from),
        };
        let heartbeat = url
            .take_ms("heartbeat_ms")?
            .unwrap_or(Duration::from_secs(10));
        let persistent = url.take_bool("persistent")?.unwrap_or(true);
        url.reject_unknown(&["dialect", "heartbeat_ms", "persistent", "ca"])?;
        Ok(Config {
            host: url.nodes()[0].host().to_owned(),
            // The ports RabbitMQ's STOMP plugin listens on (plain, TLS) by default.
            port: url.nodes()[0].port_or(if tls { 61614 } else { 61613 }),
            login: url.username(),
            passcode: url.password(),
            vhost: url.vhost(),
            namespace,
            dialect,
            heartbeat,
            publish_timeout: url.publish_timeout(),
            persistent,
            tls,
            ca,
        })
    }

    /// `host:port`, for messages and the socket.
    pub(crate) fn address(&self) -> String {
        format!("{}:{}", bracketed(&self.host), self.port)
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
        assert_eq!(c.address(), "example.org:61623");
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
        assert!(c.tls);
        assert_eq!(c.port, 61614);
        assert_eq!(c.ca.as_deref(), Some(std::path::Path::new("/tmp/ca.pem")));
        assert!(!Config::parse("stomp://h/").unwrap().tls);
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
}
