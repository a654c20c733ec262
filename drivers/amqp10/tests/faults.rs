//! Fault tests: the connection is cut under load and the driver must reconnect, re-attach and
//! lose nothing. The cut happens in a TCP proxy inside this test, so no shared broker state
//! (other connections, other tests) is touched.
//!
//! Broker: `TIDINGS_AMQP10_URL`, default `amqp10://guest:guest@127.0.0.1:5672/`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidings_conformance::rabbitmq::Management;
use tidings_core::{Bus, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

fn broker_url() -> String {
    std::env::var("TIDINGS_AMQP10_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "amqp10://guest:guest@127.0.0.1:5672/".to_owned())
}

/// A TCP proxy to the broker whose connections can be cut at will.
struct Proxy {
    port: u16,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    refusing: Arc<AtomicBool>,
    /// While set, nothing the clients send reaches the broker (the connections stay open).
    stalled: Arc<AtomicBool>,
    /// Every byte the clients sent to the broker, in order.
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let refusing = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let sent: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (l, r, s) = (links.clone(), refusing.clone(), sent.clone());
        let st = stalled.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if r.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let sent = s.clone();
                let stalled = st.clone();
                let task = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let _ = server.set_nodelay(true);
                        let _ = client.set_nodelay(true);
                        let (mut from_client, mut to_client) = client.into_split();
                        let (mut from_server, mut to_server) = server.into_split();
                        let upward = async {
                            let mut buf = vec![0u8; 64 * 1024];
                            while let Ok(n) = from_client.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                                while stalled.load(Ordering::Acquire) {
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                sent.lock().unwrap().extend_from_slice(&buf[..n]);
                                if to_server.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = to_server.shutdown().await;
                        };
                        let downward = async {
                            let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                            let _ = to_client.shutdown().await;
                        };
                        tokio::join!(upward, downward);
                    }
                });
                l.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            port,
            links,
            refusing,
            stalled,
            sent,
        }
    }

    /// Holds back (`true`) or lets through again everything the clients send.
    fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Release);
    }

    /// Drops every proxied connection and refuses new ones for `outage`.
    async fn cut(&self, outage: Duration) {
        self.refusing.store(true, Ordering::Release);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
        tokio::time::sleep(outage).await;
        self.refusing.store(false, Ordering::Release);
    }
}

/// The broker's URL, rewritten to go through `proxy` in a fresh namespace.
fn proxied_url(base: &url::Url, proxy: &Proxy) -> String {
    // The whole id: its first 16 digits are the same for every id of this process.
    let exchange = format!("tf-{}", tidings_core::envelope::new_id());
    let mut via_proxy = base.clone();
    via_proxy.set_port(Some(proxy.port)).expect("port");
    via_proxy
        .query_pairs_mut()
        .append_pair("exchange", &exchange);
    if base.query_pairs().all(|(k, _)| k != "management") {
        let management = format!("http://{}:15672", base.host_str().unwrap_or("127.0.0.1"));
        via_proxy
            .query_pairs_mut()
            .append_pair("management", &management);
    }
    via_proxy.to_string()
}

async fn start_proxy() -> (url::Url, Proxy) {
    let base = url::Url::parse(&broker_url()).expect("broker url");
    let upstream = format!(
        "{}:{}",
        base.host_str().unwrap_or("127.0.0.1"),
        base.port().unwrap_or(5672)
    );
    let proxy = Proxy::start(upstream).await;
    (base, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connection_while_ten_thousand_messages_flow_to_a_group() {
    const N: u32 = 10_000;
    let (base, proxy) = start_proxy().await;
    let url = proxied_url(&base, &proxy);
    let result = run(&proxy, &url, N).await;
    cleanup(&url).await;
    let report = result.expect("fault test");
    println!("{report}");
}

async fn run(proxy: &Proxy, url: &str, n: u32) -> Result<String, String> {
    let consumer = Bus::new(
        tidings_amqp10::connect(url)
            .await
            .map_err(|e| e.to_string())?,
    );
    let publisher = Bus::new(
        tidings_amqp10::connect(url)
            .await
            .map_err(|e| e.to_string())?,
    );
    let mut status = consumer.status();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let group = "workers";
    consumer
        .subscribe::<u32>("fault.*")
        .group(group)
        .prefetch(200)
        .concurrency(8)
        .handle(move |n| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(n);
                Ok(())
            }
        })
        .await
        .map_err(|e| e.to_string())?;

    let started = Instant::now();
    let publishing = tokio::spawn(async move {
        for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
            let sends = chunk.iter().map(|i| {
                let publisher = publisher.clone();
                let i = *i;
                async move { publisher.emit("fault.item", &i).await }
            });
            for r in futures::future::join_all(sends).await {
                r.map_err(|e| e.to_string())?;
            }
        }
        Ok::<_, String>(publisher)
    });

    let mut seen = BTreeSet::new();
    let mut deliveries = 0u64;
    let mut cut_at = None;
    let mut saw_reconnecting = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < n as usize {
        if cut_at.is_none() && seen.len() >= 2_000 {
            cut_at = Some(seen.len());
            proxy.cut(Duration::from_millis(500)).await;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            got = tokio::time::timeout(wait, rx.recv()) => match got {
                Ok(Some(i)) => { deliveries += 1; seen.insert(i); }
                Ok(None) => return Err("the subscription ended".into()),
                Err(_) => return Err(format!("only {} of {n} arrived within 120 s (cut after {cut_at:?})", seen.len())),
            },
            changed = status.changed(), if !saw_reconnecting => {
                if changed.is_ok() && *status.borrow() == Status::Reconnecting { saw_reconnecting = true; }
            }
        }
    }
    let publisher = publishing.await.map_err(|e| e.to_string())??;
    // Late duplicates, if any, arrive within a moment.
    while let Ok(Some(i)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        deliveries += 1;
        seen.insert(i);
    }
    let elapsed = started.elapsed();
    if !saw_reconnecting {
        return Err("the cut was never reported as Status::Reconnecting".into());
    }
    if !consumer.status().borrow().is_connected() {
        return Err("the consumer did not report Connected again".into());
    }
    let _ = publisher.shutdown().await;
    let _ = consumer.shutdown().await;
    Ok(format!(
        "all {n} distinct messages arrived in {elapsed:?} despite a cut after {} ({} deliveries, {} duplicates)",
        cut_at.unwrap_or(0),
        deliveries,
        deliveries - n as u64
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_fail_after_publish_timeout_when_unconfirmed_or_disconnected() {
    let (base, proxy) = start_proxy().await;
    let url = format!("{}&publish_timeout_ms=600", proxied_url(&base, &proxy));
    let result = publish_timeout_case(&proxy, &url).await;
    cleanup(&url).await;
    let report = result.expect("publish timeout test");
    println!("{report}");
}

async fn publish_timeout_case(proxy: &Proxy, url: &str) -> Result<String, String> {
    const TIMEOUT: Duration = Duration::from_millis(600);
    let bus = Bus::new(
        tidings_amqp10::connect(url)
            .await
            .map_err(|e| e.to_string())?,
    );
    bus.emit("timeout.item", &0u32)
        .await
        .map_err(|e| e.to_string())?;
    let timed_out = |what: &str, result: tidings_core::Result<()>, took: Duration| {
        let error = match result {
            Ok(()) => return Err(format!("{what}: the publish succeeded")),
            Err(e) => e.to_string(),
        };
        if !error.contains("did not confirm within") {
            return Err(format!("{what}: unexpected error {error:?}"));
        }
        if took < TIMEOUT || took > TIMEOUT + Duration::from_millis(1_000) {
            return Err(format!(
                "{what}: failed after {took:?}, not after publish_timeout_ms ({TIMEOUT:?})"
            ));
        }
        Ok(format!("{what}: failed after {took:?}"))
    };

    // The broker never sees the message (so never confirms it); the connection stays up.
    proxy.stall(true);
    let started = Instant::now();
    let result = bus.emit("timeout.item", &1u32).await;
    let stalled = timed_out("unconfirmed", result, started.elapsed());
    proxy.stall(false);
    let stalled = stalled?;

    // No connection at all for longer than the timeout.
    let (_, outage) = tokio::join!(proxy.cut(Duration::from_secs(3)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let result = bus.emit("timeout.item", &2u32).await;
        timed_out("disconnected", result, started.elapsed())
    });
    let outage = outage?;

    // And publishing works again once the broker is back.
    let mut attempts = 0;
    while let Err(e) = bus.emit("timeout.item", &3u32).await {
        attempts += 1;
        if attempts == 20 {
            return Err(format!("no publish succeeded after the outage: {e}"));
        }
    }
    let _ = bus.shutdown().await;
    Ok(format!("{stalled}; {outage}; then published again"))
}

/// AMQP 1.0 performatives a graceful end or a settlement would send: the described-type
/// constructor `0x00 0x53 <code>` of disposition (0x15), detach (0x16), end (0x17) and
/// close (0x18).
fn graceful_frames(bytes: &[u8]) -> Vec<&'static str> {
    let names = [
        (0x15, "disposition"),
        (0x16, "detach"),
        (0x17, "end"),
        (0x18, "close"),
    ];
    names
        .iter()
        .filter(|(code, _)| bytes.windows(3).any(|w| w == [0x00, 0x53, *code]))
        .map(|(_, name)| *name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_drops_the_connection_like_a_crash() {
    let (base, proxy) = start_proxy().await;
    let url = proxied_url(&base, &proxy);
    let result = abort_case(&proxy, &url).await;
    cleanup(&url).await;
    let report = result.expect("abort test");
    println!("{report}");
}

async fn abort_case(proxy: &Proxy, url: &str) -> Result<String, String> {
    const N: u32 = 5;
    // Only the doomed bus goes through the proxy, so every byte it records after the abort
    // would be the doomed connection's.
    let base = url::Url::parse(&broker_url()).map_err(|e| e.to_string())?;
    let mut direct = url::Url::parse(url).map_err(|e| e.to_string())?;
    direct
        .set_port(Some(base.port().unwrap_or(5672)))
        .map_err(|_| "cannot set the port".to_owned())?;
    let direct = direct.to_string();
    let connect = |url: String| async move {
        tidings_amqp10::connect(&url)
            .await
            .map_err(|e| e.to_string())
    };
    let doomed = Bus::new(connect(url.to_owned()).await?);
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<u32>();
    doomed
        .subscribe::<u32>("abort.*")
        .group("workers")
        .prefetch(N as u16)
        .handle(move |n| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(n);
                // Stuck: this worker never settles anything.
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    let publisher = Bus::new(connect(direct.clone()).await?);
    for i in 0..N {
        publisher
            .emit("abort.item", &i)
            .await
            .map_err(|e| e.to_string())?;
    }
    tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .map_err(|_| "the doomed worker never started a message".to_owned())?;
    // Let the broker hand it the whole prefetch.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = proxy.sent.lock().unwrap().len();
    let aborted_at = Instant::now();
    tokio::time::timeout(Duration::from_secs(1), doomed.abort())
        .await
        .map_err(|_| "abort() did not return at once".to_owned())?;
    let took = aborted_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<u8> = proxy.sent.lock().unwrap()[before..].to_vec();
    let sent_frames = graceful_frames(&after);
    if !sent_frames.is_empty() {
        return Err(format!(
            "abort sent {sent_frames:?} ({} bytes: {after:02x?}) instead of just dropping the socket",
            after.len()
        ));
    }
    if *doomed.status().borrow() != Status::Closed {
        return Err("an aborted connection must report Closed".into());
    }

    // Everything the doomed worker held comes back, to another member.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u32, u32)>();
    let rescuer = Bus::new(connect(direct).await?);
    rescuer
        .subscribe::<u32>("abort.*")
        .group("workers")
        .handle_message(move |m: tidings_core::Message<u32>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((*m, m.attempt()));
                Ok(())
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut seen = BTreeSet::new();
    while seen.len() < N as usize {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some((i, _attempt))) => {
                seen.insert(i);
            }
            _ => return Err(format!("only {seen:?} of {N} came back after the abort")),
        }
    }
    let _ = rescuer.shutdown().await;
    let _ = publisher.shutdown().await;
    Ok(format!(
        "abort returned in {took:?}, sent no close/end/detach/disposition ({} bytes after it), and all {N} held messages were redelivered",
        after.len()
    ))
}

/// Deletes the test's exchange and queues (through the management API).
async fn cleanup(url: &str) {
    let url = url.to_owned();
    if let Ok(Err(e)) =
        tokio::task::spawn_blocking(move || Management::delete_namespace_of(&url)).await
    {
        eprintln!("cleanup: {e}");
    }
}
