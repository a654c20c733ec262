//! The TLS policy every driver follows: one crypto provider (ring), and trust in the platform's
//! certificate store (the one `openssl` and `curl` use) plus the CA certificates of the URL's
//! `?ca=<pem file>`, so a broker signed by a private CA works without installing that CA on
//! the host. The same `?ca=` option on `amqps://`, `amqp10s://` and `stomp+ssl://`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tidings_core::{BrokerUrl, Error, ErrorKind, Result};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The URL option naming a PEM file of CA certificates to trust beside the platform's.
pub const CA_OPTION: &str = "ca";

/// How long a TLS handshake may take: a plain-text server may never answer one.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How one connection's TLS is set up: read from its URL once, the client configuration
/// built on first use.
#[derive(Debug)]
pub struct Tls {
    ca: Option<PathBuf>,
    client: OnceLock<std::result::Result<Arc<ClientConfig>, (ErrorKind, String)>>,
}

impl Tls {
    /// Takes the `?ca=` option out of `url`. `Ok(None)` for a plain (non-TLS) scheme; a CA
    /// file on a plain scheme is an error, since it would be silently unused.
    pub fn from_url(url: &mut BrokerUrl, tls_scheme: &str) -> Result<Option<Self>> {
        let ca = url.take(CA_OPTION).map(PathBuf::from);
        if url.scheme() != tls_scheme {
            return match ca {
                Some(path) => Err(Error::new(
                    ErrorKind::InvalidUrl,
                    format!(
                        "?ca={} only applies to {tls_scheme}:// urls, which use TLS",
                        path.display()
                    ),
                )),
                None => Ok(None),
            };
        }
        Ok(Some(Self {
            ca,
            client: OnceLock::new(),
        }))
    }

    /// The `?ca=` file, if the URL gave one.
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// The `?ca=` file's certificates as PEM text, for a client library that takes them so
    /// (lapin). Checked like [`client_config`](Self::client_config) checks them.
    pub fn ca_pem(&self) -> Result<Option<String>> {
        let Some(path) = &self.ca else {
            return Ok(None);
        };
        read_ca(path)?;
        std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| bad_ca(path, e.to_string()))
    }

    /// The rustls client configuration: ring, the platform verifier, the `?ca=` roots.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        self.client
            .get_or_init(|| build(self.ca.as_deref()).map_err(|e| (e.kind(), e.to_string())))
            .clone()
            .map_err(|(kind, message)| Error::new(kind, message))
    }

    /// Runs the TLS handshake on `tcp` for `host`; the error says what failed and what to
    /// check (a plain port, a certificate for another name, an unknown CA).
    pub async fn connect(&self, tcp: TcpStream, host: &str) -> Result<TlsStream<TcpStream>> {
        let client = self.client_config()?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            Error::new(
                ErrorKind::InvalidUrl,
                format!("{host:?} is not a valid TLS server name: {e}"),
            )
        })?;
        let handshake = TlsConnector::from(client).connect(name, tcp);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Err(_) => Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "no TLS handshake reply from {host} within {HANDSHAKE_TIMEOUT:?}; is this a \
                     TLS port?"
                ),
            )),
            Ok(Err(e)) => Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "the TLS handshake with {host} failed ({e}); is this a TLS port, does the \
                     url's host match the certificate, and is its CA trusted (installed on the \
                     host, or given as ?ca=<pem file>)?"
                ),
            )
            .with_source(e)),
            Ok(Ok(stream)) => Ok(stream),
        }
    }
}

fn bad_ca(path: &Path, why: String) -> Error {
    Error::new(
        ErrorKind::InvalidUrl,
        format!(
            "cannot use the CA file {} given as ?ca=: {why}",
            path.display()
        ),
    )
}

fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad_ca(path, e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad_ca(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad_ca(path, "it holds no PEM certificate".to_owned()));
    }
    Ok(certs)
}

fn build(ca: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let extra_roots = match ca {
        Some(path) => read_ca(path)?,
        None => Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connection,
                    format!("cannot load the platform's trust store: {e}"),
                )
            })?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Connection, format!("TLS setup failed: {e}")))?
        // `dangerous()` is how rustls takes a custom verifier; the platform verifier verifies.
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> BrokerUrl {
        BrokerUrl::parse(text, "t", &["x", "xs"]).unwrap()
    }

    #[test]
    fn a_plain_scheme_has_no_tls_and_refuses_a_ca_file() {
        assert!(Tls::from_url(&mut url("x://h"), "xs").unwrap().is_none());
        let e = Tls::from_url(&mut url("x://h/?ca=/tmp/ca.pem"), "xs").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidUrl);
        assert!(e.to_string().contains("only applies to xs://"), "{e}");
    }

    #[test]
    fn the_ca_option_is_taken_and_checked() {
        let mut u = url("xs://h/?ca=/nonexistent/ca.pem");
        let tls = Tls::from_url(&mut u, "xs").unwrap().unwrap();
        assert!(u.reject_unknown(&[]).is_ok(), "ca was taken out");
        assert_eq!(tls.ca(), Some(Path::new("/nonexistent/ca.pem")));
        let e = tls.client_config().unwrap_err();
        assert!(e.to_string().contains("cannot use the CA file"), "{e}");
        let e = tls.ca_pem().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidUrl);
        let empty =
            std::env::temp_dir().join(format!("tidings-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let tls = Tls::from_url(&mut url(&format!("xs://h/?ca={}", empty.display())), "xs")
            .unwrap()
            .unwrap();
        let e = tls.client_config().unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        std::fs::remove_file(empty).unwrap();
    }

    #[test]
    fn without_a_ca_file_the_platform_store_is_used() {
        let tls = Tls::from_url(&mut url("xs://h"), "xs").unwrap().unwrap();
        assert!(tls.client_config().is_ok());
        assert!(tls.ca_pem().unwrap().is_none());
    }
}
