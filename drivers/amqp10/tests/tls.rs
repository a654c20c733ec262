//! `amqp10s://`: the driver speaks TLS first, and fails fast and clearly when the other end
//! does not (no hang, the broker's `host:port` named, no password shown).
//!
//! The local RabbitMQ has no TLS listener, so these tests check the client side only: what a
//! TLS server sees first, and the error against the plain AMQP port (`TIDINGS_AMQP10_URL`'s
//! host and port, default 127.0.0.1:5672).

use std::time::{Duration, Instant};

use tidings_core::ErrorKind;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const PASSWORD: &str = "s3cret-pw";

fn plain_broker() -> (String, u16) {
    let url = std::env::var("TIDINGS_AMQP10_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "amqp10://guest:guest@127.0.0.1:5672/".to_owned());
    let parsed = url::Url::parse(&url).expect("TIDINGS_AMQP10_URL is a url");
    (
        parsed.host_str().unwrap_or("127.0.0.1").to_owned(),
        parsed.port().unwrap_or(5672),
    )
}

#[tokio::test]
async fn amqp10s_starts_with_a_tls_client_hello() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut first = [0u8; 3];
        socket.read_exact(&mut first).await.expect("read");
        first
        // The socket drops here: the handshake fails.
    });
    let url = format!("amqp10s://guest:{PASSWORD}@127.0.0.1:{port}/?management=http://127.0.0.1:1");
    let error = tidings_amqp10::connect(&url)
        .await
        .expect_err("no TLS server behind the socket");
    let first = server.await.expect("server task");
    // A TLS record of type handshake (0x16), version 3.x: not the AMQP header "AMQ".
    assert_eq!(first[0], 0x16, "expected a TLS ClientHello, got {first:?}");
    assert_eq!(first[1], 0x03, "expected a TLS ClientHello, got {first:?}");
    assert_eq!(error.kind(), ErrorKind::Connection, "{error}");
    assert!(
        !format!("{error} {error:?}").contains(PASSWORD),
        "{error:?}"
    );
}

#[tokio::test]
async fn amqp10s_against_a_plain_amqp_port_fails_fast_and_clearly() {
    let (host, port) = plain_broker();
    let url = format!("amqp10s://guest:{PASSWORD}@{host}:{port}");
    let started = Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(15), tidings_amqp10::connect(&url))
        .await
        .expect("connect must not hang")
        .expect_err("a plain AMQP port does not speak TLS");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let text = error.to_string();
    assert_eq!(error.kind(), ErrorKind::Connection, "{text}");
    assert!(text.contains(&format!("{host}:{port}")), "{text}");
    assert!(text.contains("TLS"), "{text}");
    assert!(!format!("{text} {error:?}").contains(PASSWORD), "{error:?}");
}
