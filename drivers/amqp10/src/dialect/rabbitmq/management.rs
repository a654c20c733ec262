//! A minimal client of RabbitMQ's management HTTP API: just the calls that declare queues and
//! bindings and list bindings, which RabbitMQ 3.x cannot do over AMQP 1.0.
//!
//! It uses `ureq` (blocking, small, no async runtime of its own) on tokio's blocking pool: a
//! declaration happens once per subscription and reconnect, never per message, so a blocking
//! client costs nothing that matters and keeps the dependency tree small.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidings_core::{Error, ErrorKind, Result};

/// The management APIs of a broker's nodes (one, or one per node), with the credentials.
///
/// Every node of a RabbitMQ cluster serves the whole cluster's API, so any answering one will
/// do; the one of the node the AMQP connection is on is asked first (a classic queue lives on
/// the node that declared it, and an inbox is best beside its consumer), the others when it
/// cannot be reached.
#[derive(Clone)]
pub(crate) struct Management {
    bases: Arc<[String]>,
    /// Index in `bases` of the API asked first.
    preferred: Arc<AtomicUsize>,
    authorization: String,
    agent: ureq::Agent,
}

impl fmt::Debug for Management {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Management")
            .field("bases", &self.bases)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes one path segment (vhost `/` becomes `%2F`).
pub(crate) fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Management {
    /// A client of the APIs at `bases` (e.g. `http://127.0.0.1:15672`; never empty).
    pub(crate) fn new(bases: Vec<String>, username: &str, password: &str) -> Self {
        assert!(!bases.is_empty(), "a management API to talk to");
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build();
        Self {
            bases: bases
                .into_iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .collect(),
            preferred: Arc::new(AtomicUsize::new(0)),
            authorization: format!(
                "Basic {}",
                base64(format!("{username}:{password}").as_bytes())
            ),
            agent: config.into(),
        }
    }

    /// Asks the API at `bases[index]` first from now on.
    pub(crate) fn prefer(&self, index: usize) {
        self.preferred
            .store(index % self.bases.len(), Ordering::Relaxed);
    }

    /// The API asked first (for messages and tests).
    pub(crate) fn preferred(&self) -> &str {
        &self.bases[self.preferred.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Sends one request to the preferred API, or to the next one that can be reached;
    /// `Ok((status, body))` for any HTTP answer.
    pub(crate) async fn call(
        &self,
        method: &'static str,
        path: String,
        body: Option<String>,
    ) -> Result<(u16, String)> {
        let this = self.clone();
        let first = self.preferred.load(Ordering::Relaxed);
        let shown = format!("{}{path}", self.preferred());
        let outcome = tokio::task::spawn_blocking(move || {
            let count = this.bases.len();
            let mut failures = Vec::new();
            for step in 0..count {
                let base = &this.bases[(first + step) % count];
                let url = format!("{base}{path}");
                match this.send(method, &url, body.clone()) {
                    Ok(answer) => return Ok(answer),
                    Err(e) => failures.push((url, e)),
                }
            }
            Err(failures)
        })
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Connection,
                format!("management call {method} {shown} did not finish: {e}"),
            )
        })?;
        outcome.map_err(|mut failures| {
            let tried: Vec<String> = failures.iter().map(|(url, e)| format!("{url}: {e}")).collect();
            let (_, source) = failures.remove(0);
            Error::new(
                ErrorKind::Connection,
                format!(
                    "cannot reach the RabbitMQ management API ({}); enable the rabbitmq_management plugin or pass ?management=http://host:15672 in the broker url (one per node, comma-separated, for a cluster)",
                    tried.join("; ")
                ),
            )
            .with_source(source)
        })
    }

    /// One request to one API.
    fn send(
        &self,
        method: &'static str,
        url: &str,
        body: Option<String>,
    ) -> std::result::Result<(u16, String), ureq::Error> {
        let mut response = match (method, body) {
            ("PUT", body) => self
                .agent
                .put(url)
                .header("Authorization", &self.authorization)
                .content_type("application/json")
                .send(body.unwrap_or_default())?,
            ("POST", body) => self
                .agent
                .post(url)
                .header("Authorization", &self.authorization)
                .content_type("application/json")
                .send(body.unwrap_or_default())?,
            ("DELETE", _) => self
                .agent
                .delete(url)
                .header("Authorization", &self.authorization)
                .call()?,
            _ => self
                .agent
                .get(url)
                .header("Authorization", &self.authorization)
                .call()?,
        };
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Ok((status, text))
    }

    /// Like [`call`](Self::call), failing with `kind` unless the status is 2xx.
    pub(crate) async fn expect_ok(
        &self,
        kind: ErrorKind,
        what: &str,
        method: &'static str,
        path: String,
        body: Option<String>,
    ) -> Result<String> {
        let (status, text) = self.call(method, path, body).await?;
        if (200..300).contains(&status) {
            Ok(text)
        } else {
            let hint = match status {
                401 => "; check the user and password in the broker url",
                403 => "; the user needs the management tag and configure permission on the vhost",
                _ => "",
            };
            Err(Error::new(
                kind,
                format!(
                    "{what}: the management API answered {status}: {}{hint}",
                    text.trim()
                ),
            ))
        }
    }
}

/// Standard base64 with padding (RFC 4648), for the Basic authorization header.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
    }

    #[test]
    fn vhost_slash_is_encoded() {
        assert_eq!(super::segment("/"), "%2F");
    }
}
