//! What the driver's tests share: the broker URL and removing what a test declared.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The broker the tests use: `TIDINGS_AMQP091_URL`, or the local RabbitMQ.
pub fn broker_url() -> String {
    std::env::var("TIDINGS_AMQP091_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// `broker_url()` with the driver options added to its query.
pub fn url_with(params: &str) -> String {
    let base = broker_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{params}")
}

/// The names of all queues in the broker's vhost, from the management API (the AMQP protocol
/// cannot list queues). Port `TIDINGS_AMQP091_MGMT_PORT`, default 15672.
pub async fn queue_names() -> Result<Vec<String>, String> {
    let url = url::Url::parse(&broker_url()).map_err(|e| e.to_string())?;
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let port: u16 = std::env::var("TIDINGS_AMQP091_MGMT_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(15672);
    let user = if url.username().is_empty() {
        "guest"
    } else {
        url.username()
    };
    let pass = url.password().unwrap_or("guest");
    let vhost = match url.path().trim_start_matches('/') {
        "" => "%2F".to_owned(),
        v => v.to_owned(),
    };
    let auth = base64(format!("{user}:{pass}").as_bytes());
    let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("management API unreachable: {e}"))?;
    let request = format!(
        "GET /api/queues/{vhost}?columns=name HTTP/1.0\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    Ok(value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|q| q.get("name")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Deletes the exchange `exchange` and every queue whose name starts with `exchange.`.
pub async fn cleanup(exchange: &str) {
    let prefix = format!("{exchange}.");
    let names = queue_names().await.unwrap_or_else(|e| {
        eprintln!("cleanup of {exchange}: cannot list queues: {e}");
        Vec::new()
    });
    let Ok(Ok(connection)) = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&broker_url(), ConnectionProperties::default()),
    )
    .await
    else {
        eprintln!("cleanup of {exchange}: cannot connect");
        return;
    };
    for name in names.iter().filter(|n| n.starts_with(&prefix)) {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel.close(200, "".into()).await;
        }
    }
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
        let _ = channel.close(200, "".into()).await;
    }
    let _ = connection.close(200, "cleanup".into()).await;
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
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
