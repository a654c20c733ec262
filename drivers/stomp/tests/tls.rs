//! `stomp+ssl://`: TLS to a port that speaks plain STOMP must fail fast and clearly — a
//! Connection error naming host:port, never hanging, never showing the password.

mod common;

use std::time::{Duration, Instant};

use common::Broker;
use tidings_core::ErrorKind;

async fn tls_to_a_plain_port_fails_clearly(broker: Broker) {
    let plain = url::Url::parse(&broker.url()).expect("broker url");
    let port = plain.port().expect("port in the broker url");
    let url = format!("stomp+ssl://someone:pa55-w0rd-xyz@127.0.0.1:{port}/?heartbeat_ms=0");
    let start = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), tidings_stomp::connect(&url))
        .await
        .expect("connect gave up on its own");
    let error = match result {
        Ok(_) => panic!("a TLS connection to the plain port {port} succeeded"),
        Err(e) => e,
    };
    let text = format!("{error} / {error:?}");
    println!(
        "{}: {:?} after {:?}",
        broker.label(),
        error.to_string(),
        start.elapsed()
    );
    assert_eq!(error.kind(), ErrorKind::Connection, "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("TLS"), "{text}");
    assert!(!text.contains("pa55-w0rd-xyz"), "password leaked: {text}");
    assert!(start.elapsed() < Duration::from_secs(12), "{text}");
}

#[tokio::test]
async fn rabbitmq_tls_to_the_plain_port_fails_clearly() {
    tls_to_a_plain_port_fails_clearly(Broker::RabbitMq).await;
}

#[tokio::test]
async fn activemq_tls_to_the_plain_port_fails_clearly() {
    tls_to_a_plain_port_fails_clearly(Broker::ActiveMq).await;
}

#[tokio::test]
async fn a_missing_ca_file_is_an_invalid_url() {
    let url = "stomp+ssl://u:secret-ca@127.0.0.1:61614/?ca=/nonexistent/ca.pem";
    let Err(error) = tidings_stomp::connect(url).await else {
        panic!("a missing CA file must fail");
    };
    assert_eq!(error.kind(), ErrorKind::InvalidUrl, "{error}");
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    assert!(!format!("{error:?}").contains("secret-ca"));
}
