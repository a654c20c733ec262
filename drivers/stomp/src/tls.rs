//! TLS for `stomp+ssl://` URLs, with the rustls that async-stomp already builds.
//!
//! The server certificate is checked against the webpki (Mozilla) roots, or only against the
//! CA certificates of the URL's `?ca=<pem file>` (a private CA, e.g. a test broker's). The
//! crypto provider is named explicitly (aws-lc-rs, which async-stomp's rustls enables) rather
//! than taken from the process default, which rustls cannot pick when another crate in the
//! same binary enables its `ring` provider too.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tidings_core::{Error, ErrorKind, Result};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::Config;

/// Builds the client configuration for `config` (reads the CA file, if any).
pub(crate) fn client_config(config: &Config) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match &config.ca {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let bad = |why: String| {
                Error::new(
                    ErrorKind::InvalidUrl,
                    format!(
                        "cannot use the CA file {} given as ?ca= in the stomp+ssl url: {why}",
                        path.display()
                    ),
                )
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad("it holds no usable PEM certificate".to_owned()));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Connection, format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(client))
}

/// Runs the TLS handshake on `tcp`; the error says what failed, the caller adds where.
pub(crate) async fn wrap(
    tcp: TcpStream,
    config: &Config,
    client: Arc<ClientConfig>,
) -> std::result::Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(config.host.clone())
        .map_err(|e| format!("{:?} is not a valid TLS server name: {e}", config.host))?;
    let handshake = TlsConnector::from(client).connect(name, tcp);
    // A plain-text server may just wait for a frame that never comes.
    tokio::time::timeout(std::time::Duration::from_secs(5), handshake)
        .await
        .map_err(|_| {
            "no TLS handshake reply within 5s; is this a TLS port (RabbitMQ's STOMP TLS \
             listener is usually 61614)?"
                .to_owned()
        })?
        .map_err(|e| {
            format!(
                "the TLS handshake failed ({e}); is this a TLS port (RabbitMQ's STOMP TLS \
                 listener is usually 61614), and does the url's host match the certificate?"
            )
        })
}
