//! TLS for `amqp10s://`: the TCP stream is wrapped in a rustls client session before AMQP
//! starts (TLS first, as RabbitMQ's 5671 listener and most brokers expect), and fe2o3 speaks
//! AMQP over it through `open_with_stream`, exactly as over plain TCP.
//!
//! Certificates are checked by the platform verifier (the operating system's trust store, the
//! same one `openssl` and `curl` use), so a broker signed by a private CA works once that CA is
//! installed on the host. Crypto is ring: tokio-rustls is used directly rather than through
//! fe2o3's `rustls` feature, which turns on rustls' default aws-lc-rs provider (a large C
//! build, and a second provider beside the ring one other tidings drivers already use).

use std::sync::{Arc, OnceLock};

use rustls_platform_verifier::BuilderVerifierExt;
use tidings_core::{Error, ErrorKind, Result};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::config::Config;

/// Built once per process: loading the trust store is not free.
static CLIENT_CONFIG: OnceLock<std::result::Result<Arc<ClientConfig>, String>> = OnceLock::new();

fn client_config() -> std::result::Result<Arc<ClientConfig>, String> {
    CLIENT_CONFIG
        .get_or_init(|| {
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .and_then(|builder| builder.with_platform_verifier())
                .map(|builder| Arc::new(builder.with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// Runs the TLS handshake on `stream`, verifying the broker's certificate for `config.host`.
pub(crate) async fn handshake(stream: TcpStream, config: &Config) -> Result<TlsStream<TcpStream>> {
    let fail = |message: String| Error::new(ErrorKind::Connection, message);
    let address = config.address();
    let client = client_config().map_err(|e| {
        fail(format!(
            "cannot set up TLS for the AMQP 1.0 broker at {address} ({}): platform trust store: {e}",
            config.redacted
        ))
    })?;
    let server = ServerName::try_from(config.host.clone()).map_err(|e| {
        fail(format!(
            "{:?} in {} is not a valid TLS server name: {e}",
            config.host, config.redacted
        ))
    })?;
    TlsConnector::from(client)
        .connect(server, stream)
        .await
        .map_err(|e| {
            fail(format!(
                "TLS handshake with the AMQP 1.0 broker at {address} failed: {e}; is it a TLS \
                 port? amqp10s:// needs a TLS listener (usually 5671); use amqp10:// for a plain \
                 one ({})",
                config.redacted
            ))
            .with_source(e)
        })
}
