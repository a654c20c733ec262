//! One TLS policy on every driver, against real TLS listeners: the test cluster's nodes
//! (`scripts/cluster.sh`) serve AMQP 0.9.1 and 1.0 on 5692–5694 and STOMP on 61692–61694 with a
//! certificate of a test CA. With `?ca=` naming that CA's file, `amqps://`, `amqp10s://` and
//! `stomp+ssl://` connect, and an event goes through; without it, the handshake fails with a
//! Connection error that says to trust the CA, naming no password.

use std::time::Duration;

use tidings::{Bus, ErrorKind};

/// The test CA that scripts/cluster.sh made (`$TIDINGS_CLUSTER_BASE/tls/ca.pem`).
fn ca_file() -> String {
    let base =
        std::env::var("TIDINGS_CLUSTER_BASE").unwrap_or_else(|_| "/var/lib/tidings-cluster".into());
    let ca = format!("{base}/tls/ca.pem");
    assert!(
        std::path::Path::new(&ca).is_file(),
        "{ca} is missing: start the test cluster with scripts/cluster.sh (scripts/brokers.sh does)"
    );
    ca
}

/// The TLS URL of node 1 for each driver.
fn tls_urls(query: &str) -> [(&'static str, String); 3] {
    [
        (
            "amqp091",
            format!("amqps://guest:s3cr3t-guest@127.0.0.1:5692/%2f?{query}"),
        ),
        (
            "amqp10",
            format!(
                "amqp10s://guest:s3cr3t-guest@127.0.0.1:5692/?management=http://127.0.0.1:15682&{query}"
            ),
        ),
        (
            "stomp",
            format!("stomp+ssl://guest:s3cr3t-guest@127.0.0.1:61692/?{query}"),
        ),
    ]
}

#[tokio::test]
async fn every_driver_trusts_the_ca_file_of_the_url() {
    let ca = ca_file();
    for (driver, url) in tls_urls(&format!("ca={ca}&exchange=tls-test-{}", std::process::id())) {
        // The password is wrong for the broker but checked only after TLS: these connect with
        // guest's real one.
        let url = url.replace("s3cr3t-guest", "guest");
        let bus = tokio::time::timeout(Duration::from_secs(20), tidings::connect(&url))
            .await
            .unwrap_or_else(|_| panic!("{driver}: connect timed out"))
            .unwrap_or_else(|e| panic!("{driver}: TLS with ?ca= failed: {e}"));
        roundtrip(driver, &bus).await;
        bus.shutdown().await.ok();
    }
}

async fn roundtrip(driver: &str, bus: &Bus) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _sub = bus
        .subscribe::<String>("tls.#")
        .handle(move |text| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(text);
                Ok(())
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{driver}: subscribe over TLS: {e}"));
    bus.emit("tls.hello", &format!("over {driver}"))
        .await
        .unwrap_or_else(|e| panic!("{driver}: emit over TLS: {e}"));
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{driver}: nothing arrived over TLS"));
    assert_eq!(got.as_deref(), Some(format!("over {driver}").as_str()));
}

#[tokio::test]
async fn without_the_ca_file_the_handshake_fails_clearly() {
    ca_file();
    for (driver, url) in tls_urls("publish_timeout_ms=2000") {
        let error = tokio::time::timeout(Duration::from_secs(30), tidings::connect(&url))
            .await
            .unwrap_or_else(|_| panic!("{driver}: connect hung"))
            .err()
            .unwrap_or_else(|| panic!("{driver}: connected without trusting the test CA"));
        let text = format!("{error} / {error:?}");
        println!("{driver}: {error}");
        assert_eq!(error.kind(), ErrorKind::Connection, "{driver}: {text}");
        assert!(!text.contains("s3cr3t-guest"), "{driver}: {text}");
        assert!(
            text.to_lowercase().contains("certificate") || text.contains("?ca="),
            "{driver}: the error should say the certificate is not trusted: {text}"
        );
    }
}
