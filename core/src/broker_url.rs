//! Broker URLs, parsed the same way for every driver: scheme, credentials, host, port, virtual
//! host, the options every driver shares (`exchange`, `publish_timeout_ms`), driver-specific
//! options, and a password-free form for logs and errors.
//!
//! `scheme://[user[:password]@]host[:port][,host[:port]…][/vhost][?exchange=NAME&publish_timeout_ms=N&…]`
//!
//! Several hosts, separated by commas, name the nodes of one broker cluster: a driver connects to
//! one of them and moves to another when its node is lost. An IPv6 host is written in brackets
//! (`[::1]:5672`); a node without a port uses the driver's default port.

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
    /// The URL with the first node as its host.
    url: url::Url,
    nodes: Vec<Node>,
    redacted: String,
    exchange: String,
    publish_timeout: Duration,
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("url", &self.redacted)
            .field("nodes", &self.nodes)
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
        let (first_node_url, nodes) = split_nodes(url)?;
        let mut parsed = url::Url::parse(&first_node_url).map_err(|e| {
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
        let nodes = match nodes {
            Some(nodes) => nodes,
            None => vec![Node::of(&parsed)],
        };
        Ok(Self {
            redacted: with_nodes(&redact(parsed.as_str()), &nodes),
            nodes,
            url: parsed,
            exchange,
            publish_timeout,
        })
    }

    /// The scheme, e.g. `amqps`.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The broker's nodes, in the order the URL gives them: one for a single host, several
    /// for a cluster. Never empty: [`parse`](Self::parse) refuses a URL without a host.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
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

    /// The URL of one node (`node`, one of [`nodes`](Self::nodes)) without the options taken
    /// so far, password included: for handing to a client library that takes one host. Never
    /// log it; use [`redacted`](Self::redacted).
    pub fn secret_url_of(&self, node: &Node) -> String {
        let mut url = self.url.clone();
        // The host was valid in the URL it came from, and so is its port.
        let _ = url.set_host(Some(&bracketed(&node.host)));
        let _ = url.set_port(node.port);
        url.into()
    }

    /// The URL with its password replaced by `***`, for logs and errors.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

/// The URL grammar, for error messages.
fn expected_form(scheme: &str) -> String {
    format!("{scheme}://[user[:password]@]host[:port][,host[:port]…][/vhost][?option=value&…]")
}

/// One node of a broker: a host (without IPv6 brackets) and, when the URL gives one, a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    host: String,
    port: Option<u16>,
}

impl Node {
    fn of(url: &url::Url) -> Self {
        Self {
            host: url
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned(),
            port: url.port(),
        }
    }

    /// The host name or address, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port; `default` (the driver's) when the URL gives none.
    pub fn port_or(&self, default: u16) -> u16 {
        self.port.unwrap_or(default)
    }

    /// `host:port` as a socket address is written (IPv6 in brackets), with `default` as the
    /// port when the URL gives none.
    pub fn address(&self, default: u16) -> String {
        format!("{}:{}", bracketed(&self.host), self.port_or(default))
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", bracketed(&self.host)),
            None => f.write_str(&bracketed(&self.host)),
        }
    }
}

/// Splits a host list (`h1:5672,h2:5673`) out of `url`: the URL with its first node as host,
/// and every node. `None` when there is one host (the URL is then parsed as it is). Each node
/// is parsed by the URL parser on its own, so hosts and ports follow the URL rules.
fn split_nodes(url: &str) -> Result<(Cow<'_, str>, Option<Vec<Node>>)> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok((Cow::Borrowed(url), None));
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let hosts_start = authority.rfind('@').map_or(0, |at| at + 1);
    let hosts = &authority[hosts_start..];
    if !hosts.contains(',') {
        return Ok((Cow::Borrowed(url), None));
    }
    let mut nodes = Vec::new();
    for (i, host) in hosts.split(',').enumerate() {
        let bad = |why: String| {
            invalid(format!(
                "node {} of the broker url {:?} {why}; expected {}",
                i + 1,
                redact(url),
                expected_form(scheme)
            ))
        };
        if host.is_empty() {
            return Err(bad("is empty (two commas, or a comma at an end)".to_owned()));
        }
        let one = url::Url::parse(&format!("{scheme}://{host}"))
            .map_err(|e| bad(format!("({host:?}) is not a host[:port]: {e}")))?;
        if one.host_str().is_none_or(str::is_empty) {
            return Err(bad(format!("({host:?}) has no host")));
        }
        let node = Node::of(&one);
        if nodes.contains(&node) {
            return Err(bad(format!("({node}) is listed twice")));
        }
        nodes.push(node);
    }
    let first = hosts.split(',').next().unwrap_or_default();
    let start = scheme.len() + 3 + hosts_start;
    let first_node_url = format!("{}{first}{}", &url[..start], &url[start + hosts.len()..]);
    Ok((Cow::Owned(first_node_url), Some(nodes)))
}

/// `redacted` (a URL with its first node as host) with every node of `nodes` as its host list.
fn with_nodes(redacted: &str, nodes: &[Node]) -> String {
    if nodes.len() < 2 {
        return redacted.to_owned();
    }
    match url::Url::parse(redacted) {
        Ok(url) => {
            let hosts: Vec<String> = nodes.iter().map(Node::to_string).collect();
            format!(
                "{}{}{}",
                &url[..url::Position::BeforeHost],
                hosts.join(","),
                &url[url::Position::AfterPort..]
            )
        }
        Err(_) => redacted.to_owned(),
    }
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
/// [`Node::host`] gives the host without them.
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
        assert_eq!(u.nodes().len(), 1);
        assert_eq!(u.nodes()[0].host(), "::1");
        assert_eq!(u.nodes()[0].port_or(1), 5673);
        assert_eq!(u.vhost(), "my/vhost");
        assert_eq!(u.exchange(), "ex1");
        assert_eq!(u.publish_timeout(), Duration::from_millis(250));
        assert_eq!(u.take("dialect").as_deref(), Some("x"));
        let secret = u.secret_url_of(&u.nodes()[0]);
        assert!(secret.contains("heartbeat=10") && !secret.contains("exchange"));
        assert!(
            secret.starts_with("amqp://gu%40est:se%2Fcret@[::1]:5673/"),
            "{secret}"
        );
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
            (u.exchange(), u.vhost(), u.nodes()[0].port_or(61613)),
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

    #[test]
    fn a_host_list_names_every_node_of_a_cluster() {
        let mut u = BrokerUrl::parse(
            "amqp://guest:s%2Cecret@h1:5672,h2,[::1]:5674,10.0.0.4:5675/v%2Ch?heartbeat=5&exchange=ex",
            "amqp091",
            &["amqp"],
        )
        .unwrap();
        let nodes: Vec<String> = u.nodes().iter().map(|n| n.address(5672)).collect();
        assert_eq!(nodes, ["h1:5672", "h2:5672", "[::1]:5674", "10.0.0.4:5675"]);
        assert_eq!(u.nodes()[2].host(), "::1");
        assert_eq!(u.nodes()[1].to_string(), "h2");
        assert_eq!(u.password().as_deref(), Some("s,ecret"));
        assert_eq!((u.vhost(), u.exchange()), ("v,h".to_owned(), "ex"));
        assert_eq!(
            u.redacted(),
            "amqp://guest:***@h1:5672,h2,[::1]:5674,10.0.0.4:5675/v%2Ch?heartbeat=5"
        );
        assert_eq!(
            u.secret_url_of(&u.nodes()[2]),
            "amqp://guest:s%2Cecret@[::1]:5674/v%2Ch?heartbeat=5"
        );
        assert_eq!(
            u.secret_url_of(&u.nodes()[1]),
            "amqp://guest:s%2Cecret@h2/v%2Ch?heartbeat=5"
        );
        assert_eq!(u.take("heartbeat").as_deref(), Some("5"));
        assert_eq!(
            u.secret_url_of(&u.nodes()[0]),
            "amqp://guest:s%2Cecret@h1:5672/v%2Ch"
        );
        // A comma in the login is not a host separator.
        let u = BrokerUrl::parse("stomp://a,b:c,d@h1,h2:61614", "stomp", &["stomp"]).unwrap();
        assert_eq!(u.nodes().len(), 2);
        assert_eq!(u.username().as_deref(), Some("a,b"));
    }

    #[test]
    fn a_bad_host_list_says_which_node_is_wrong() {
        for (url, expected) in [
            ("amqp://u:secret@h1,,h2/", "node 2 of the broker url"),
            ("amqp://u:secret@h1,/", "node 2 of the broker url"),
            ("amqp://u:secret@,h1/", "node 1 of the broker url"),
            ("amqp://u:secret@h1,h2:99999/", "node 2"),
            ("amqp://u:secret@h1,h2:x/", "is not a host[:port]"),
            ("amqp://u:secret@h1:5672,h1:5672/", "listed twice"),
            ("amqp://u:secret@h1,[::1/", "node 2"),
        ] {
            let e = BrokerUrl::parse(url, "amqp091", &["amqp"]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{url}");
            let text = e.to_string();
            assert!(text.contains(expected), "{url}: {text}");
            assert!(!text.contains("secret"), "{url}: {text}");
        }
    }
}
