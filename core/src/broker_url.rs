//! Broker URLs, parsed the same way for every driver: scheme, credentials, host, port, virtual
//! host, the options every driver shares (`exchange`, `publish_timeout_ms`), driver-specific
//! options, and a password-free form for logs and errors.
//!
//! `scheme://[user[:password]@]host[:port][/vhost][?exchange=NAME&publish_timeout_ms=N&…]`

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// The topic space used when the URL names none.
pub const DEFAULT_EXCHANGE: &str = "tidings";

/// How long a publish may wait for a lost connection (and its confirmation) by default.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed broker URL. Its `Debug` never shows the password.
#[derive(Clone)]
pub struct BrokerUrl {
    url: url::Url,
    redacted: String,
    exchange: String,
    publish_timeout: Duration,
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("url", &self.redacted)
            .field("exchange", &self.exchange)
            .field("publish_timeout", &self.publish_timeout)
            .finish()
    }
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidUrl, message)
}

impl BrokerUrl {
    /// Parses `url` for the driver `driver`, which accepts `schemes`. Takes out the shared
    /// options; errors name what is wrong and never contain the password.
    pub fn parse(url: &str, driver: &str, schemes: &[&str]) -> Result<Self> {
        let mut parsed = url::Url::parse(url).map_err(|e| {
            let scheme = url.split_once(':').map_or(schemes[0], |(scheme, _)| scheme);
            invalid(format!(
                "cannot parse the broker url {:?}: {e}; expected {}",
                redact(url),
                expected_form(scheme)
            ))
        })?;
        if !schemes.contains(&parsed.scheme()) {
            let accepted: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
            return Err(invalid(format!(
                "the {driver} driver takes {} urls, not {}://",
                accepted.join(" or "),
                parsed.scheme()
            )));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid(format!(
                "the broker url {:?} has no host; expected {}",
                redact(url),
                expected_form(parsed.scheme())
            )));
        }
        let mut exchange = DEFAULT_EXCHANGE.to_owned();
        let mut publish_timeout = DEFAULT_PUBLISH_TIMEOUT;
        let mut kept = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "exchange" => exchange = value.into_owned(),
                "publish_timeout_ms" => publish_timeout = parse_ms("publish_timeout_ms", &value)?,
                _ => kept.push((key.into_owned(), value.into_owned())),
            }
        }
        check_exchange(&exchange)?;
        set_query(&mut parsed, kept);
        Ok(Self {
            redacted: redact(parsed.as_str()),
            url: parsed,
            exchange,
            publish_timeout,
        })
    }

    /// The scheme, e.g. `amqps`.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The host, without IPv6 brackets. Every URL has one: [`parse`](Self::parse) refuses a
    /// URL without.
    pub fn host(&self) -> &str {
        self.url
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
    }

    /// The port; `default` when the URL has none.
    pub fn port_or(&self, default: u16) -> u16 {
        self.url.port().unwrap_or(default)
    }

    /// The user name, percent-decoded; `None` when empty.
    pub fn username(&self) -> Option<String> {
        (!self.url.username().is_empty()).then(|| decode(self.url.username()))
    }

    /// The password, percent-decoded.
    pub fn password(&self) -> Option<String> {
        self.url.password().map(decode)
    }

    /// The virtual host (the path without its leading `/`, percent-decoded); `/` when none.
    pub fn vhost(&self) -> String {
        match self.url.path() {
            "" | "/" => "/".to_owned(),
            path => decode(&path[1..]),
        }
    }

    /// The topic space of this bus (`?exchange=`, default `tidings`): an AMQP exchange, or the
    /// prefix of every destination where the broker has no exchanges.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// How long a publish may wait for a lost connection (`?publish_timeout_ms=`).
    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    /// Takes a driver-specific option out of the query string.
    pub fn take(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        let kept: Vec<(String, String)> = self
            .url
            .query_pairs()
            .filter_map(|(k, v)| {
                if k == name {
                    found = Some(v.into_owned());
                    None
                } else {
                    Some((k.into_owned(), v.into_owned()))
                }
            })
            .collect();
        set_query(&mut self.url, kept);
        found
    }

    /// Takes a driver-specific option given in milliseconds.
    pub fn take_ms(&mut self, name: &str) -> Result<Option<Duration>> {
        self.take(name).map(|v| parse_ms(name, &v)).transpose()
    }

    /// Takes a driver-specific `true`/`false` option.
    pub fn take_bool(&mut self, name: &str) -> Result<Option<bool>> {
        self.take(name)
            .map(|v| match v.as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(invalid(format!("{name}={v:?} must be true or false"))),
            })
            .transpose()
    }

    /// Fails if options remain that are not in `known`, naming them and every option the
    /// driver knows. Drivers call it after taking their own options, with those and the ones
    /// they pass through to their client library, so a misspelt option is never ignored.
    pub fn reject_unknown(&self, known: &[&str]) -> Result<()> {
        let unknown: Vec<String> = self
            .url
            .query_pairs()
            .map(|(k, _)| k.into_owned())
            .filter(|k| !known.contains(&k.as_str()))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let mut all = vec!["exchange", "publish_timeout_ms"];
        all.extend_from_slice(known);
        Err(invalid(format!(
            "unknown url option{} {}; this driver knows {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            all.join(", ")
        )))
    }

    /// The URL without the options taken so far, password included: for handing to a client
    /// library. Never log it; use [`redacted`](Self::redacted).
    pub fn secret_url(&self) -> &str {
        self.url.as_str()
    }

    /// The URL with its password replaced by `***`, for logs and errors.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

/// The URL grammar, for error messages.
fn expected_form(scheme: &str) -> String {
    format!("{scheme}://[user[:password]@]host[:port][/vhost][?option=value&…]")
}

fn set_query(url: &mut url::Url, pairs: Vec<(String, String)>) {
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
}

fn parse_ms(name: &str, value: &str) -> Result<Duration> {
    value.parse().map(Duration::from_millis).map_err(|_| {
        invalid(format!(
            "{name}={value:?} is not a whole number of milliseconds"
        ))
    })
}

/// Percent-decodes a user name, password or path: `+` and `&` are themselves there, not a
/// space and a field separator as in a query string.
fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Checks an exchange name early, so a bad `?exchange=` fails at connect time with a clear
/// message instead of as a broker error later.
fn check_exchange(name: &str) -> Result<()> {
    let bad = |why: &str| Err(invalid(format!("exchange={name:?} {why}")));
    if name.is_empty() {
        return bad("is empty; leave the option out to use the default `tidings`");
    }
    if name.len() > 200 {
        return bad(
            "is longer than 200 bytes; queue names derive from it and brokers limit them to 255",
        );
    }
    if name.starts_with("amq.") {
        return bad("starts with `amq.`, which RabbitMQ reserves for its own exchanges");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return bad(&format!(
            "contains {c:?}; use ASCII letters, digits, `-`, `_`, `.` and `:`"
        ));
    }
    Ok(())
}

/// `host` as written in a URL or a socket address (`host:port`): an IPv6 address in brackets.
/// [`BrokerUrl::host`] gives the host without them.
pub fn bracketed(host: &str) -> Cow<'_, str> {
    if host.contains(':') {
        Cow::Owned(format!("[{host}]"))
    } else {
        Cow::Borrowed(host)
    }
}

/// `url` with any password replaced by `***` — also inside URLs given as query options (such as
/// a management API address) and when the URL does not parse.
pub fn redact(url: &str) -> String {
    redact_nested(url, REDACT_LEVELS)
}

/// How many levels of URLs inside options of URLs [`redact`] looks into; an option one level
/// deeper that looks like a URL with credentials is hidden whole. Each level is escaped once
/// more, so without a bound the text grew with the square of the nesting (a 2 kB URL of
/// nested options became 200 kB, a 64 kB one several hundred MB).
const REDACT_LEVELS: usize = 2;

fn redact_nested(url: &str, levels: usize) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if pairs.iter().any(|(_, v)| v.contains('@')) {
                let pairs = pairs.into_iter().map(|(k, v)| {
                    let v = match levels.checked_sub(1) {
                        _ if !v.contains("://") => v,
                        Some(levels) => redact_nested(&v, levels),
                        None if v.contains('@') => "***".to_owned(),
                        None => v,
                    };
                    (k, v)
                });
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        // Unparseable: hide what lies between `://` and the last `@`, where credentials would be.
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(start), Some(end)) if end > start + 3 => {
                format!("{}://***{}", &url[..start], &url[end..])
            }
            _ => url.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_everything_and_hides_the_password() {
        let mut u = BrokerUrl::parse(
            "amqp://gu%40est:se%2Fcret@[::1]:5673/my%2Fvhost?exchange=ex1&publish_timeout_ms=250&heartbeat=10&dialect=x",
            "amqp091",
            &["amqp", "amqps"],
        )
        .unwrap();
        assert_eq!(u.username().as_deref(), Some("gu@est"));
        assert_eq!(u.password().as_deref(), Some("se/cret"));
        assert_eq!(u.host(), "::1");
        assert_eq!(u.port_or(1), 5673);
        assert_eq!(u.vhost(), "my/vhost");
        assert_eq!(u.exchange(), "ex1");
        assert_eq!(u.publish_timeout(), Duration::from_millis(250));
        assert_eq!(u.take("dialect").as_deref(), Some("x"));
        assert!(u.secret_url().contains("heartbeat=10") && !u.secret_url().contains("exchange"));
        assert!(!u.redacted().contains("cret") && !format!("{u:?}").contains("cret"));
        assert!(u
            .reject_unknown(&[])
            .unwrap_err()
            .to_string()
            .contains("unknown url option heartbeat"));
    }

    #[test]
    fn defaults_and_errors() {
        let u = BrokerUrl::parse("stomp://h", "stomp", &["stomp"]).unwrap();
        assert_eq!(
            (u.exchange(), u.vhost(), u.port_or(61613)),
            ("tidings", "/".to_owned(), 61613)
        );
        assert_eq!(u.username(), None);
        let e = BrokerUrl::parse("amqp://u:pw@h", "stomp", &["stomp", "stomp+ssl"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("takes stomp:// or stomp+ssl:// urls, not amqp://"),
            "{e}"
        );
        let e = BrokerUrl::parse("amqp://u:pw@h/?exchange=amq.topic", "amqp091", &["amqp"])
            .unwrap_err();
        assert!(
            e.to_string().contains("reserves") && !e.to_string().contains("pw"),
            "{e}"
        );
        let e = BrokerUrl::parse(
            "amqp://u:pw@h/?publish_timeout_ms=soon",
            "amqp091",
            &["amqp"],
        )
        .unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
        let e = BrokerUrl::parse("amqp://u:p w@h:x", "amqp091", &["amqp"]).unwrap_err();
        assert!(!e.to_string().contains("p w"), "{e}");
        let u = BrokerUrl::parse(
            "amqp10://u:pw@h/?management=http://admin:hunter2@m:15672",
            "amqp10",
            &["amqp10"],
        )
        .unwrap();
        assert!(
            !u.redacted().contains("hunter2") && !u.redacted().contains(":pw@"),
            "{}",
            u.redacted()
        );
    }

    /// `stomp://` and `amqp://` used to connect to the local broker with default credentials,
    /// while `amqp10://` was refused: every scheme now gets the same answer.
    #[test]
    fn a_url_without_a_host_is_refused_on_every_scheme() {
        for url in [
            "amqp://",
            "amqps://",
            "amqp10://",
            "stomp://",
            "stomp+ssl://",
            "amqp:///%2f",
            "amqp://u:secret@/vhost",
            "amqp:localhost",
            "stomp://:61613",
        ] {
            let scheme = url.split(':').next().unwrap();
            let e = BrokerUrl::parse(url, "any", &[scheme]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{url}");
            assert!(
                (e.to_string().contains("has no host") || e.to_string().contains("empty host"))
                    && e.to_string()
                        .contains(&format!("expected {scheme}://[user")),
                "{url}: {e}"
            );
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn options_a_driver_knows_pass_and_others_are_named() {
        let u = BrokerUrl::parse(
            "amqp://h/?heartbeat=10&bogus_option=1",
            "amqp091",
            &["amqp"],
        )
        .unwrap();
        let e = u.reject_unknown(&["heartbeat"]).unwrap_err().to_string();
        assert!(
            e.contains("unknown url option bogus_option;") && e.contains("heartbeat"),
            "{e}"
        );
        let u = BrokerUrl::parse("amqp://h/?heartbeat=10", "amqp091", &["amqp"]).unwrap();
        assert!(u.reject_unknown(&["heartbeat"]).is_ok());
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/broker_url.rs`): the login and the virtual host
    /// were decoded as a query field, so `+` became a space and `&` cut off the rest.
    #[test]
    fn the_login_and_vhost_keep_plus_and_ampersand() {
        let u = BrokerUrl::parse(
            "amqp://gu%40est:se%2Fcret@[::1]:5673/my%2Fvblish_time2=ot_usm50&hearttbae=10&dialect=x",
            "amqp091",
            &["amqp"],
        )
        .unwrap();
        assert_eq!(u.vhost(), "my/vblish_time2=ot_usm50&hearttbae=10&dialect=x");
        let u = BrokerUrl::parse("amqp://a+b&c:p&w+d%2B@h/v+h%26x", "amqp091", &["amqp"]).unwrap();
        assert_eq!(u.username().as_deref(), Some("a+b&c"));
        assert_eq!(u.password().as_deref(), Some("p&w+d+"));
        assert_eq!(u.vhost(), "v+h&x");
        assert!(!u.redacted().contains("p&w"), "{}", u.redacted());
    }

    /// A URL of options nested in options (`?m=x://u:p@h/?m=x://u:p@h/...`) was redacted at
    /// every level and escaped again at each: the result grew with the square of the nesting
    /// (seconds and hundreds of MB for a long one).
    #[test]
    fn redacting_nested_urls_stays_linear() {
        let mut url = String::from("amqp://u:secret@h/");
        for _ in 0..2000 {
            url.push_str("?m=x://u:secret@h/");
        }
        let redacted = redact(&url);
        assert!(!redacted.contains("secret"));
        assert!(redacted.len() < 3 * url.len(), "{} bytes", redacted.len());
        // The management API address of the amqp10 driver is still redacted on its own.
        let two = redact("amqp10://u:pw@h/?management=http://a:b@m/?x=http://c:d@n&e=f");
        assert_eq!(
            two,
            "amqp10://u:***@h/?management=http%3A%2F%2Fa%3A***%40m%2F%3Fx%3Dhttp%253A%252F%252Fc%253A***%2540n%252F&e=f"
        );
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(bracketed("rabbit.example"), "rabbit.example");
        assert_eq!(bracketed("127.0.0.1"), "127.0.0.1");
        assert_eq!(bracketed("::1"), "[::1]");
    }
}
