//! A plain STOMP client — raw frames over TCP, no tidings code — calls a tidings `serve`, on
//! RabbitMQ and on ActiveMQ, following `docs/wire-format-stomp.md` alone: the request goes to
//! the service's topic with the `tidings` header (`id`, `ts`, `content-type=application/json`)
//! and a reply address of the forms STOMP users give: a temporary queue in STOMP's own
//! `reply-to` header, or a queue, topic or exchange in the `tidings` header's `reply-to` item.
//! The reply must come back with the call's correlation id, JSON body and status, a remote
//! error as an error reply.
//!
//! And replies that cannot be sent — refused by the driver (no such destination form, a
//! newline, a wildcard) or by the broker (a missing exchange, a gone temporary queue) — are
//! dropped: the handler runs once for each such request, none is dead-lettered, and the server
//! keeps answering.
//!
//! A broker that cannot be reached fails the test; it never skips.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Broker;
use tidings_core::Bus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SERVICE: &str = "plain.double";
const WAIT: Duration = Duration::from_secs(10);

/// One frame from the broker, headers unescaped.
#[derive(Debug)]
struct Frame {
    command: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Frame {
    /// The first header `name` (STOMP 1.2: the first of repeated headers wins).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The items of the `tidings` header, as the wire format doc describes them.
    fn pack(&self) -> HashMap<String, String> {
        let mut items = HashMap::new();
        for item in self.header("tidings").unwrap_or("").split(';') {
            if let Some((name, value)) = item.split_once('=') {
                items
                    .entry(unpercent(name))
                    .or_insert_with(|| unpercent(value));
            }
        }
        items
    }
}

/// `%25`, `%3B`, `%3D` back to `%`, `;`, `=` (any other `%` reads as itself).
fn unpercent(text: &str) -> String {
    text.replace("%3B", ";")
        .replace("%3D", "=")
        .replace("%25", "%")
}

/// STOMP 1.2 header escaping.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
        .replace(':', "\\c")
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

/// A hand-written STOMP 1.2 client: one TCP connection, frames written and read by hand.
struct Plain {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Frames read while waiting for another one.
    unread: VecDeque<Frame>,
    next: u32,
}

impl Plain {
    async fn connect(broker: Broker) -> Plain {
        let url = url::Url::parse(&broker.url()).expect("broker url");
        let address = format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(61613)
        );
        let stream = TcpStream::connect(&address)
            .await
            .unwrap_or_else(|e| panic!("{}: cannot reach {address}: {e}", broker.label()));
        let vhost = match url.path() {
            "" | "/" => "/".to_owned(),
            path => path[1..].to_owned(),
        };
        let mut client = Plain {
            stream,
            buffer: Vec::new(),
            unread: VecDeque::new(),
            next: 0,
        };
        client
            .write(
                "CONNECT",
                &[
                    ("accept-version", "1.2".into()),
                    ("host", vhost),
                    ("login", url.username().into()),
                    ("passcode", url.password().unwrap_or("").into()),
                    ("heart-beat", "0,0".into()),
                ],
                b"",
            )
            .await;
        let connected = client.read().await;
        assert_eq!(connected.command, "CONNECTED", "{connected:?}");
        client
    }

    async fn write(&mut self, command: &str, headers: &[(&str, String)], body: &[u8]) {
        let mut frame = format!("{command}\n");
        for (name, value) in headers {
            frame.push_str(&format!("{}:{}\n", escape(name), escape(value)));
        }
        frame.push('\n');
        let mut bytes = frame.into_bytes();
        bytes.extend_from_slice(body);
        bytes.push(0);
        self.stream.write_all(&bytes).await.expect("write a frame");
    }

    /// The next frame from the socket.
    async fn read(&mut self) -> Frame {
        loop {
            while matches!(self.buffer.first(), Some(b'\n' | b'\r')) {
                self.buffer.remove(0);
            }
            if let Some(frame) = self.parse() {
                return frame;
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("the broker said nothing")
                .expect("read from the broker");
            assert!(n > 0, "the broker closed the connection");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// One whole frame off the front of the buffer, if it is all there.
    fn parse(&mut self) -> Option<Frame> {
        let end = self.buffer.windows(2).position(|w| w == b"\n\n")?;
        let head = String::from_utf8_lossy(&self.buffer[..end]).replace('\r', "");
        let mut lines = head.split('\n');
        let command = lines.next().unwrap_or("").to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (unescape(n), unescape(v)))
            .collect();
        let start = end + 2;
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let body_end = match length {
            Some(length) if self.buffer.len() > start + length => start + length,
            Some(_) => return None,
            None => start + self.buffer[start..].iter().position(|b| *b == 0)?,
        };
        let body = self.buffer[start..body_end].to_vec();
        self.buffer.drain(..=body_end);
        Some(Frame {
            command,
            headers,
            body,
        })
    }

    /// The first frame `wanted` picks, keeping the others for later. An ERROR fails the test.
    async fn expect(&mut self, what: &str, wanted: impl Fn(&Frame) -> bool) -> Frame {
        if let Some(at) = self.unread.iter().position(&wanted) {
            return self.unread.remove(at).expect("just found");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.read())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"));
            assert_ne!(frame.command, "ERROR", "waiting for {what}: {frame:?}");
            if wanted(&frame) {
                return frame;
            }
            self.unread.push_back(frame);
        }
    }

    fn receipt(&mut self) -> String {
        self.next += 1;
        format!("plain-{}", self.next)
    }

    /// Sends a frame with a receipt and waits for it.
    async fn confirmed(&mut self, command: &str, mut headers: Vec<(&str, String)>, body: &[u8]) {
        let receipt = self.receipt();
        headers.push(("receipt", receipt.clone()));
        self.write(command, &headers, body).await;
        self.expect(&format!("the RECEIPT of {command}"), |f| {
            f.command == "RECEIPT" && f.header("receipt-id") == Some(receipt.as_str())
        })
        .await;
    }

    async fn subscribe(&mut self, destination: &str) {
        let id = self.receipt();
        self.confirmed(
            "SUBSCRIBE",
            vec![
                ("destination", destination.into()),
                ("id", id),
                ("ack", "auto".into()),
            ],
            b"",
        )
        .await;
    }

    /// Sends a JSON request for `SERVICE` as the doc says: to the service's topic, with the
    /// `tidings` header (`id`, `ts`, `content-type`, plus `items`) and `headers`.
    async fn request(
        &mut self,
        topic: &str,
        items: &str,
        headers: Vec<(&str, String)>,
        body: &str,
    ) {
        self.next += 1;
        let mut all = vec![
            ("destination", topic.to_owned()),
            (
                "tidings",
                format!(
                    "id=plain-{}-{};ts={};content-type=application/json{items}",
                    std::process::id(),
                    self.next,
                    now_ms()
                ),
            ),
            ("content-length", body.len().to_string()),
        ];
        all.extend(headers);
        self.confirmed("SEND", all, body.as_bytes()).await;
    }

    /// The reply with `correlation` in its `tidings` header.
    async fn reply(&mut self, correlation: &str) -> Frame {
        self.expect(&format!("the reply to {correlation}"), |f| {
            f.command == "MESSAGE"
                && f.pack().get("correlation-id").map(String::as_str) == Some(correlation)
        })
        .await
    }
}

/// Asserts `reply` is a successful JSON reply carrying `body`.
fn assert_ok(reply: &Frame, body: &str, how: &str) {
    let pack = reply.pack();
    assert_eq!(
        pack.get("tidings-status").map(String::as_str),
        Some("ok"),
        "{how}: {reply:?}"
    );
    assert_eq!(
        pack.get("content-type").map(String::as_str),
        Some("application/json"),
        "{how}: the reply is in the caller's codec: {reply:?}"
    );
    assert_eq!(String::from_utf8_lossy(&reply.body), body, "{how}");
}

/// Where a publish under `key` goes, as `docs/wire-format-stomp.md` says.
fn topic_of(broker: Broker, namespace: &str, key: &str) -> String {
    match broker {
        Broker::RabbitMq => format!("/topic/{namespace}.{key}"),
        Broker::ActiveMq => format!("/topic/VirtualTopic.{namespace}.{key}"),
    }
}

async fn plain_client_calls_a_tidings_server(broker: Broker) {
    let label = broker.label();
    let namespace = format!("plain-{}", tidings_conformance::support::unique_tag());
    let url = broker.url_in(&namespace, "");
    let bus = Bus::new(
        tidings_stomp::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{label}: connect the server: {e}")),
    );
    // How often the handler ran for each request (the request is the number to double).
    let runs: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    let server = {
        let runs = runs.clone();
        bus.serve(SERVICE, move |n: i64| {
            *runs.lock().unwrap().entry(n).or_default() += 1;
            async move {
                if n < 0 {
                    Err(format!("cannot double {n}: negative").into())
                } else {
                    Ok(n * 2)
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{label}: serve: {e}"))
    };
    let topic = topic_of(broker, &namespace, SERVICE);
    let mut client = Plain::connect(broker).await;

    // 1. A temporary queue, given in STOMP's own `reply-to` header (with STOMP's
    // `correlation-id` header): the broker puts an address the server can send to in its place.
    // ActiveMQ delivers to the temporary queue's subscriber; RabbitMQ subscribes the caller
    // itself.
    if let Broker::ActiveMq = broker {
        client.subscribe("/temp-queue/plain-replies").await;
    }
    client
        .request(
            &topic,
            "",
            vec![
                ("reply-to", "/temp-queue/plain-replies".into()),
                ("correlation-id", "call-temp".into()),
            ],
            "21",
        )
        .await;
    let reply = client.reply("call-temp").await;
    assert_ok(&reply, "42", &format!("{label}: reply to /temp-queue/"));

    // 2. Queues, topics and exchanges, given in the `tidings` header's `reply-to` item.
    let queue = format!("{namespace}.plain-replies");
    client.subscribe(&format!("/queue/{queue}")).await;
    let reply_topic = format!("{namespace}.plain-reply-topic");
    client.subscribe(&format!("/topic/{reply_topic}")).await;
    let mut addresses = vec![format!("/queue/{queue}"), format!("/topic/{reply_topic}")];
    if let Broker::RabbitMq = broker {
        addresses.push(format!("/amq/queue/{queue}"));
        addresses.push(format!("/exchange/amq.topic/{reply_topic}"));
    }
    for (i, address) in addresses.iter().enumerate() {
        let correlation = format!("call-{i}");
        let n = i64::try_from(i).unwrap() + 1;
        client
            .request(
                &topic,
                &format!(";correlation-id={correlation};reply-to={address}"),
                Vec::new(),
                &n.to_string(),
            )
            .await;
        let reply = client.reply(&correlation).await;
        assert_ok(
            &reply,
            &(n * 2).to_string(),
            &format!("{label}: reply to {address}"),
        );
    }

    // 3. A handler error comes back as an error reply.
    client
        .request(
            &topic,
            &format!(";correlation-id=call-error;reply-to=/queue/{queue}"),
            Vec::new(),
            "-5",
        )
        .await;
    let reply = client.reply("call-error").await;
    let pack = reply.pack();
    assert_eq!(
        pack.get("tidings-status").map(String::as_str),
        Some("error"),
        "{label}: {reply:?}"
    );
    assert_eq!(
        pack.get("content-type").map(String::as_str),
        Some("text/plain; charset=utf-8"),
        "{label}: {reply:?}"
    );
    let text = String::from_utf8_lossy(&reply.body);
    assert!(
        text.contains("cannot double -5: negative"),
        "{label}: {text}"
    );

    // 4. Replies that cannot be sent: refused by the driver, then by the broker.
    let mut unsendable = vec![
        "/nowhere/x".to_owned(),
        format!("/queue/{namespace}.a\nb"),
        "/temp-queue/in-the-item".to_owned(),
    ];
    match broker {
        Broker::RabbitMq => {
            unsendable.push(format!("/exchange/{namespace}-missing/k"));
        }
        Broker::ActiveMq => {
            unsendable.push(format!("/queue/{namespace}.a,{namespace}.b"));
            unsendable.push(format!("/remote-temp-queue/ID:{namespace}-gone-1:1:1"));
        }
    }
    let first_bad = 1000;
    for (i, address) in unsendable.iter().enumerate() {
        let n = first_bad + i64::try_from(i).unwrap();
        client
            .request(
                &topic,
                &format!(";correlation-id=bad-{i};reply-to={address}"),
                Vec::new(),
                &n.to_string(),
            )
            .await;
    }
    // The server still answers, after them (one at a time: concurrency 1).
    client
        .request(
            &topic,
            &format!(";correlation-id=call-after;reply-to=/queue/{queue}"),
            Vec::new(),
            "50",
        )
        .await;
    let reply = client.reply("call-after").await;
    assert_ok(
        &reply,
        "100",
        &format!("{label}: a reply after unsendable ones"),
    );
    // A retry would have run by now (retries are immediate).
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let runs = runs.lock().unwrap();
        for (i, address) in unsendable.iter().enumerate() {
            let n = first_bad + i64::try_from(i).unwrap();
            assert_eq!(
                runs.get(&n).copied(),
                Some(1),
                "{label}: the handler ran {:?} times for the request replying to {address:?}",
                runs.get(&n)
            );
        }
        for n in [21, 1, 50, -5] {
            assert_eq!(runs.get(&n).copied(), Some(1), "{label}: runs of {n}");
        }
    }
    let mut dead = bus
        .dead_letters(SERVICE)
        .await
        .unwrap_or_else(|e| panic!("{label}: open the dead letters: {e}"));
    if let Ok(Some(letter)) = tokio::time::timeout(Duration::from_secs(2), dead.next()).await {
        panic!("{label}: a request was dead-lettered: {letter:?}");
    }
    let _ = dead.close().await;
    server.unsubscribe().await;
    let _ = bus.shutdown().await;
    let _ = client.stream.shutdown().await;
    let namespaces = vec![namespace];
    let _ = tokio::task::spawn_blocking(move || common::admin::purge(broker, &namespaces)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_stomp_client_calls_tidings_on_rabbitmq() {
    plain_client_calls_a_tidings_server(Broker::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_stomp_client_calls_tidings_on_activemq() {
    plain_client_calls_a_tidings_server(Broker::ActiveMq).await;
}
