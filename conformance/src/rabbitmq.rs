//! A small blocking client of RabbitMQ's management HTTP API, for test and benchmark code.
//!
//! Tests of every RabbitMQ-backed driver (AMQP 0.9.1, AMQP 1.0, STOMP) must list and delete
//! what they declared, and none of those protocols can list queues; the management API can.
//! This is the one client they share, so no driver's tests carry their own HTTP or base64 code.
//! (The amqp10 driver keeps its own runtime client: a driver never depends on this crate.)
//!
//! It is blocking (`ureq`, no async runtime of its own): cleanup runs once per test, never per
//! message. From async code call it through `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! use tidings_conformance::rabbitmq::Management;
//!
//! let api = Management::for_broker("amqp://guest:guest@127.0.0.1:5672/%2f")?;
//! api.delete_namespace("tc-1234")?; // the exchange `tc-1234` and every queue `tc-1234.*`
//! # Ok::<(), String>(())
//! ```
//!
//! A test that wants an exchange of its own, deleted when it ends, takes a [`Namespace`].

use std::fmt;
use std::time::Duration;

mod listing;

pub use listing::{Binding, Exchange, QueueDetails};

use base64::Engine as _;
use serde::Deserialize;
use tidings_core::broker_url::bracketed;
use tidings_core::BrokerUrl;

/// The environment variable that overrides where the management API listens (for example
/// `http://rabbit:15672`) when the broker URL has no `?management=` option.
pub const MANAGEMENT_ENV: &str = "TIDINGS_RABBITMQ_MANAGEMENT";

/// The management API's port when neither the URL nor [`MANAGEMENT_ENV`] names one.
pub const DEFAULT_PORT: u16 = 15672;

/// The broker URL schemes whose credentials and virtual host the client takes: every
/// tidings driver that can talk to RabbitMQ.
const SCHEMES: &[&str] = &["amqp", "amqps", "amqp10", "amqp10s", "stomp", "stomp+ssl"];

/// How long one HTTP request may take: a stuck broker fails the cleanup, not the test run.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One queue as the management API lists it: what cleanup decides on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Queue {
    /// The queue's name (tidings names its queues `<exchange>.<kind>.<name>`).
    pub name: String,
    /// How many consumers it has; `None` when the broker does not say (a queue that is down),
    /// which idle-only sweeps treat as "in use" to stay on the safe side.
    #[serde(default)]
    pub consumers: Option<u64>,
}

/// A client of one RabbitMQ management API, bound to one virtual host and user: tests clean up
/// in the vhost and with the login their broker URL uses.
#[derive(Clone)]
pub struct Management {
    /// `http://host:15672`, without credentials or trailing `/`.
    base: String,
    /// The virtual host, decoded (`/` for the default one).
    vhost: String,
    /// The `Authorization` header value.
    authorization: String,
    agent: ureq::Agent,
}

/// The Debug form never shows the credentials.
impl fmt::Debug for Management {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Management")
            .field("base", &self.base)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

/// Where the API is and who logs in: what [`Management::for_broker`] reads from a broker URL.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    base: String,
    user: String,
    password: String,
    vhost: String,
}

impl Endpoint {
    /// Reads `broker` (amqp://, amqp10://, stomp://, …); `env` is the value of
    /// [`MANAGEMENT_ENV`], if set. The base is the URL's `?management=`, else `env`, else
    /// `http://<broker host>:15672`. The login is the broker URL's (default `guest`/`guest`,
    /// RabbitMQ's own default) unless the base carries one.
    fn parse(broker: &str, env: Option<&str>) -> Result<Self, String> {
        let mut url = BrokerUrl::parse(broker, "RabbitMQ management", SCHEMES)
            .map_err(|e| e.message().to_owned())?;
        let host = url.nodes()[0].host();
        let default_base = format!("http://{}:{DEFAULT_PORT}", bracketed(host));
        let base = url
            .take("management")
            .or_else(|| env.map(str::to_owned))
            .filter(|b| !b.trim().is_empty())
            .unwrap_or(default_base);
        let mut base = url::Url::parse(base.trim())
            .map_err(|e| format!("bad management API address {:?}: {e}", redact(&base)))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!(
                "the management API address must be http:// or https://, not {}://",
                base.scheme()
            ));
        }
        let mut user = url.username().unwrap_or_else(|| "guest".to_owned());
        let mut password = url.password().unwrap_or_else(|| "guest".to_owned());
        if !base.username().is_empty() {
            user = decode(base.username());
            password = base.password().map(decode).unwrap_or_default();
            let _ = base.set_username("");
            let _ = base.set_password(None);
        }
        Ok(Self {
            base: base.as_str().trim_end_matches('/').to_owned(),
            user,
            password,
            vhost: url.vhost(),
        })
    }
}

/// Percent-decodes a URL's user name or password.
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Percent-encodes one path segment of the API (the vhost `/` becomes `%2F`).
fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `url` without its password, for error messages.
fn redact(url: &str) -> String {
    tidings_core::broker_url::redact(url)
}

impl Management {
    /// The management API of the RabbitMQ behind `broker_url` (`amqp://`, `amqps://`,
    /// `amqp10://`, `amqp10s://`, `stomp://` or `stomp+ssl://`), so a test cleans up with the
    /// same login and vhost it ran with. The API address is the URL's `?management=` option,
    /// else `TIDINGS_RABBITMQ_MANAGEMENT`, else `http://<broker host>:15672`. Nothing is sent
    /// yet; an unparsable URL or another scheme is an error.
    pub fn for_broker(broker_url: &str) -> Result<Self, String> {
        let env = std::env::var(MANAGEMENT_ENV).ok();
        Ok(Self::new(Endpoint::parse(broker_url, env.as_deref())?))
    }

    /// Deletes what a test on `broker_url` left: the URL's exchange (`?exchange=`, default
    /// `tidings`) and every queue of it, as [`delete_namespace`](Self::delete_namespace).
    /// Blocking; call it through `tokio::task::spawn_blocking` from async code.
    pub fn delete_namespace_of(broker_url: &str) -> Result<(), String> {
        let exchange = BrokerUrl::parse(broker_url, "RabbitMQ management", SCHEMES)
            .map_err(|e| e.message().to_owned())?
            .exchange()
            .to_owned();
        Self::for_broker(broker_url)?.delete_namespace(&exchange)
    }

    fn new(endpoint: Endpoint) -> Self {
        let credentials = format!("{}:{}", endpoint.user, endpoint.password);
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build();
        Self {
            base: endpoint.base,
            vhost: endpoint.vhost,
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
            agent: config.into(),
        }
    }

    /// The virtual host this client works in (`/` for the default one), for messages.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Every queue of the vhost with its consumer count: the only way to find what a test
    /// left, since no messaging protocol lists queues.
    pub fn queues(&self) -> Result<Vec<Queue>, String> {
        let path = format!(
            "/api/queues/{}?columns=name,consumers",
            segment(&self.vhost)
        );
        let body = self.expect(Method::Get, &path, None, "listing queues")?;
        serde_json::from_str(&body)
            .map_err(|e| format!("listing queues at {}: unexpected answer: {e}", self.base))
    }

    /// Deletes the queue `name` (with its messages, consumers or not). A queue that is already
    /// gone counts as deleted: auto-delete queues vanish on their own while cleanup runs.
    pub fn delete_queue(&self, name: &str) -> Result<(), String> {
        let path = format!("/api/queues/{}/{}", segment(&self.vhost), segment(name));
        self.expect(
            Method::Delete,
            &path,
            None,
            &format!("deleting queue {name:?}"),
        )
        .map(drop)
    }

    /// Deletes the exchange `name`; one already gone counts as deleted.
    pub fn delete_exchange(&self, name: &str) -> Result<(), String> {
        let path = format!("/api/exchanges/{}/{}", segment(&self.vhost), segment(name));
        self.expect(
            Method::Delete,
            &path,
            None,
            &format!("deleting exchange {name:?}"),
        )
        .map(drop)
    }

    /// Deletes every queue whose name starts with `prefix` and returns their names. With
    /// `only_idle`, queues with consumers (or an unknown count) are kept: a sweep of old
    /// leftovers must not break a run that is still going on. Deletes all it can, then reports
    /// every failure.
    pub fn delete_queues_with_prefix(
        &self,
        prefix: &str,
        only_idle: bool,
    ) -> Result<Vec<String>, String> {
        let mut deleted = Vec::new();
        let mut failures = Vec::new();
        for queue in self.queues()? {
            if !queue.name.starts_with(prefix) || (only_idle && queue.consumers != Some(0)) {
                continue;
            }
            match self.delete_queue(&queue.name) {
                Ok(()) => deleted.push(queue.name),
                Err(e) => failures.push(e),
            }
        }
        if failures.is_empty() {
            Ok(deleted)
        } else {
            Err(failures.join("; "))
        }
    }

    /// Deletes what a tidings bus with `?exchange=<exchange>` declares on RabbitMQ over AMQP:
    /// every queue named `<exchange>.*` and the exchange itself. Tries both, even when the
    /// first fails.
    pub fn delete_namespace(&self, exchange: &str) -> Result<(), String> {
        let queues = self.delete_queues_with_prefix(&format!("{exchange}."), false);
        let exchange = self.delete_exchange(exchange);
        match (queues, exchange) {
            (Ok(_), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(_), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        }
    }

    /// Declares the durable exchange `name` of type `kind` (`topic`, `direct`, …), for a plain
    /// client that compares against tidings and cannot declare over its own protocol.
    pub fn declare_exchange(&self, name: &str, kind: &str) -> Result<(), String> {
        let path = format!("/api/exchanges/{}/{}", segment(&self.vhost), segment(name));
        let body = serde_json::json!({ "type": kind, "durable": true }).to_string();
        self.expect(
            Method::Put,
            &path,
            Some(&body),
            &format!("declaring exchange {name:?}"),
        )
        .map(drop)
    }

    /// Declares the durable queue `name` (see [`declare_exchange`](Self::declare_exchange)).
    pub fn declare_queue(&self, name: &str) -> Result<(), String> {
        let path = format!("/api/queues/{}/{}", segment(&self.vhost), segment(name));
        let body = serde_json::json!({ "durable": true }).to_string();
        self.expect(
            Method::Put,
            &path,
            Some(&body),
            &format!("declaring queue {name:?}"),
        )
        .map(drop)
    }

    /// Binds `queue` to `exchange` with `routing_key` (see
    /// [`declare_exchange`](Self::declare_exchange)).
    pub fn bind_queue(&self, exchange: &str, queue: &str, routing_key: &str) -> Result<(), String> {
        let path = format!(
            "/api/bindings/{}/e/{}/q/{}",
            segment(&self.vhost),
            segment(exchange),
            segment(queue)
        );
        let body = serde_json::json!({ "routing_key": routing_key }).to_string();
        self.expect(
            Method::Post,
            &path,
            Some(&body),
            &format!("binding queue {queue:?} to {exchange:?} with {routing_key:?}"),
        )
        .map(drop)
    }

    /// Sends one request and returns the body of a 2xx answer. A 404 to a DELETE is a success
    /// (already gone); any other status is an error naming `what`, the status and the answer.
    fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        what: &str,
    ) -> Result<String, String> {
        let url = format!("{}{path}", self.base);
        let auth = self.authorization.as_str();
        let sent = match method {
            Method::Get => self.agent.get(&url).header("Authorization", auth).call(),
            Method::Delete => self.agent.delete(&url).header("Authorization", auth).call(),
            Method::Put => self
                .agent
                .put(&url)
                .header("Authorization", auth)
                .content_type("application/json")
                .send(body.unwrap_or_default()),
            Method::Post => self
                .agent
                .post(&url)
                .header("Authorization", auth)
                .content_type("application/json")
                .send(body.unwrap_or_default()),
        };
        let mut response = sent.map_err(|e| {
            format!(
                "{what}: cannot reach the RabbitMQ management API at {}: {e} (set {MANAGEMENT_ENV} \
                 or ?management= in the broker url if it listens elsewhere)",
                self.base
            )
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        match status {
            200..=299 => Ok(text),
            404 if method == Method::Delete => Ok(String::new()),
            _ => {
                let hint = match status {
                    401 => "; check the user and password in the broker url",
                    403 => "; the user needs the management tag and permissions on the vhost",
                    _ => "",
                };
                Err(format!(
                    "{what} in vhost {:?}: the management API at {} answered {status}: {}{hint}",
                    self.vhost,
                    self.base,
                    text.trim()
                ))
            }
        }
    }
}

/// An exchange of a test's own on RabbitMQ, deleted with its queues when dropped.
///
/// A test that runs a bus (or a `tidings` process) on [`url`](Self::url) declares everything
/// under [`exchange`](Self::exchange), so it shares the broker with other tests and leaves
/// nothing behind, even when it fails: on drop the exchange and every queue `<exchange>.*`
/// are deleted through the management API of the broker URL given to [`new`](Self::new) (its
/// `?management=` option included), as [`Management::delete_namespace`]. Blocking (dropping
/// it sends HTTP requests); a failed deletion is printed on stderr, never a panic. Declare it
/// before the buses and processes that use it: they are dropped (gone) first, and durable
/// groups and dead letters, which outlive them, are deleted after.
///
/// ```no_run
/// use tidings_conformance::rabbitmq::Namespace;
///
/// let ns = Namespace::new("amqp://guest:guest@127.0.0.1:5672/%2f", "cli-serve");
/// assert!(ns.exchange().starts_with("cli-serve-"));
/// assert!(ns.url().ends_with(&format!("?exchange={}", ns.exchange())));
/// ```
#[derive(Debug)]
pub struct Namespace {
    broker_url: String,
    exchange: String,
    url: String,
}

impl Namespace {
    /// A fresh exchange `<prefix>-<unique tag>` ([`unique_tag`](crate::support::unique_tag))
    /// on the RabbitMQ behind `broker_url`. `prefix` must be a routing-key word (no `.`, `*`,
    /// `#` or spaces). Nothing is sent yet.
    pub fn new(broker_url: &str, prefix: &str) -> Self {
        let exchange = format!("{prefix}-{}", crate::support::unique_tag());
        Self {
            broker_url: broker_url.to_owned(),
            url: with_exchange(broker_url, &exchange),
            exchange,
        }
    }

    /// [`new`](Self::new) on the RabbitMQ the AMQP 0.9.1 tests use: `TIDINGS_AMQP091_URL`, else
    /// the local broker (`amqp://guest:guest@127.0.0.1:5672/%2f`).
    pub fn on_amqp091_broker(prefix: &str) -> Self {
        let broker = std::env::var("TIDINGS_AMQP091_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        Self::new(&broker, prefix)
    }

    /// The exchange's name: also the prefix of every queue declared on [`url`](Self::url).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The broker URL with `exchange=<exchange>` in its query, for the buses of the test.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let deleted = Management::for_broker(&self.broker_url)
            .and_then(|api| api.delete_namespace(&self.exchange));
        if let Err(e) = deleted {
            eprintln!("cleanup of {}: {e}", self.exchange);
        }
    }
}

/// `broker_url` with `exchange=<exchange>` in its query, in place of any `exchange=` it had.
/// Done on the string: a cluster URL's host list (`h1:5672,h2:5673`) is not a URL the `url`
/// crate parses.
fn with_exchange(broker_url: &str, exchange: &str) -> String {
    let (base, query) = broker_url.split_once('?').unwrap_or((broker_url, ""));
    let mut query: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.starts_with("exchange="))
        .collect();
    let option = format!("exchange={exchange}");
    query.push(&option);
    format!("{base}?{}", query.join("&"))
}

/// The HTTP methods the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Put,
    Post,
    Delete,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(base: &str, user: &str, password: &str, vhost: &str) -> Endpoint {
        Endpoint {
            base: base.to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
            vhost: vhost.to_owned(),
        }
    }

    #[test]
    fn amqp_url_gives_login_vhost_and_default_port_on_the_broker_host() {
        assert_eq!(
            Endpoint::parse("amqp://guest:guest@127.0.0.1:5672/%2f?exchange=tc-1", None),
            Ok(endpoint("http://127.0.0.1:15672", "guest", "guest", "/"))
        );
        assert_eq!(
            Endpoint::parse("amqps://bob:se%40cret@rabbit.example:5671/prod", None),
            Ok(endpoint(
                "http://rabbit.example:15672",
                "bob",
                "se@cret",
                "prod"
            ))
        );
    }

    #[test]
    fn missing_login_and_vhost_mean_rabbitmq_defaults() {
        for url in [
            "amqp://h",
            "amqp://h/",
            "amqp10://h:5672/",
            "stomp://h:61613",
        ] {
            assert_eq!(
                Endpoint::parse(url, None),
                Ok(endpoint("http://h:15672", "guest", "guest", "/")),
                "{url}"
            );
        }
    }

    #[test]
    fn amqp10_and_stomp_urls_are_read_the_same_way() {
        assert_eq!(
            Endpoint::parse("amqp10://u:p@h:5672/v%2Fx?exchange=ns", None),
            Ok(endpoint("http://h:15672", "u", "p", "v/x"))
        );
        assert_eq!(
            Endpoint::parse("stomp://admin:admin@127.0.0.1:61613/", None),
            Ok(endpoint("http://127.0.0.1:15672", "admin", "admin", "/"))
        );
        assert_eq!(
            Endpoint::parse("stomp+ssl://a:b@h:61614/vh", None),
            Ok(endpoint("http://h:15672", "a", "b", "vh"))
        );
    }

    #[test]
    fn the_url_option_beats_the_environment_which_beats_the_default() {
        let env = Some("http://from-env:1/");
        assert_eq!(
            Endpoint::parse("amqp://h", env).map(|e| e.base),
            Ok("http://from-env:1".to_owned())
        );
        assert_eq!(
            Endpoint::parse("amqp10://h/?management=http://m:15673/", env).map(|e| e.base),
            Ok("http://m:15673".to_owned())
        );
        assert_eq!(
            Endpoint::parse("amqp://h", Some("  ")).map(|e| e.base),
            Ok("http://h:15672".to_owned())
        );
    }

    #[test]
    fn a_login_in_the_management_address_replaces_the_brokers() {
        assert_eq!(
            Endpoint::parse(
                "amqp10://u:p@h/?management=http://admin:hun%3Ater2@m:15672",
                None
            ),
            Ok(endpoint("http://m:15672", "admin", "hun:ter2", "/"))
        );
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        assert_eq!(
            Endpoint::parse("amqp://[::1]:5672", None).map(|e| e.base),
            Ok("http://[::1]:15672".to_owned())
        );
    }

    #[test]
    fn other_schemes_and_bad_addresses_are_errors_without_the_password() {
        let e = Endpoint::parse("memory://x", None).unwrap_err();
        assert!(e.contains("memory://"), "{e}");
        let e = Endpoint::parse("amqp://h", Some("ftp://m")).unwrap_err();
        assert!(e.contains("ftp://"), "{e}");
        let e = Endpoint::parse("amqp://h", Some("http://x:hunter2@[bad")).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(Endpoint::parse("not a url", None).is_err());
    }

    #[test]
    fn authorization_is_standard_base64_and_debug_hides_it() {
        let api = Management::new(endpoint("http://h:15672", "guest", "guest", "/"));
        assert_eq!(api.authorization, "Basic Z3Vlc3Q6Z3Vlc3Q=");
        let shown = format!("{api:?}");
        assert!(!shown.contains("Z3Vlc3Q"), "{shown}");
    }

    #[test]
    fn a_namespace_url_adds_its_exchange_to_the_query() {
        assert_eq!(
            with_exchange("amqp://guest:guest@127.0.0.1:5672/%2f", "t-1"),
            "amqp://guest:guest@127.0.0.1:5672/%2f?exchange=t-1"
        );
        assert_eq!(
            with_exchange(
                "amqp://u:p@127.0.0.1:5682,127.0.0.1:5683/%2f?management=http://127.0.0.1:15682",
                "t-1"
            ),
            "amqp://u:p@127.0.0.1:5682,127.0.0.1:5683/%2f?management=http://127.0.0.1:15682&exchange=t-1"
        );
        assert_eq!(
            with_exchange("amqp://h/v?exchange=old&heartbeat=10", "t-1"),
            "amqp://h/v?heartbeat=10&exchange=t-1"
        );
        assert_eq!(
            with_exchange("amqp://h/v?", "t-1"),
            "amqp://h/v?exchange=t-1"
        );

        // A management API where nothing listens: dropping the namespaces prints, never panics.
        let broker = "amqp://127.0.0.1/v?management=http://127.0.0.1:1";
        let ns = Namespace::new(broker, "cli-serve");
        let tag = ns
            .exchange()
            .strip_prefix("cli-serve-")
            .expect("the prefix");
        assert!(
            !tag.is_empty() && !tag.contains(['.', '*', '#', ' ']),
            "{tag}"
        );
        assert_eq!(ns.url(), format!("{broker}&exchange={}", ns.exchange()));
        assert_ne!(
            Namespace::new(broker, "p").exchange(),
            Namespace::new(broker, "p").exchange()
        );
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("tc-1.group.a b"), "tc%2D1%2Egroup%2Ea%20b");
    }
}
