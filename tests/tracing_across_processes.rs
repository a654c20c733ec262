//! One trace across three OS processes over RabbitMQ: process A calls a server in process B,
//! whose handler emits an event that a group in process C handles.
//!
//! The test re-executes its own binary three times with `TIDINGS_TRACE_ROLE` set to `caller`,
//! `server` or `audit`. Each child installs its own in-memory span exporter and prints its
//! finished spans as `SPAN {json}` lines on stdout; this process collects them and checks that
//! they form one trace: call → server's process → publish → C's process. The only thing that
//! joins them is the `traceparent` header each message carries.
//!
//! Needs RabbitMQ at `TIDINGS_AMQP091_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

#[path = "support/otel.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::{Done, SpanLine, Work, Worked, EVENT, GROUP, SERVICE};
use tidings::observe::TracingLayer;

const ROLE: &str = "TIDINGS_TRACE_ROLE";
const URL: &str = "TIDINGS_TRACE_URL";
const TEST: &str = "one_trace_across_three_processes";

#[test]
fn one_trace_across_three_processes() {
    if let Ok(role) = std::env::var(ROLE) {
        return play(&role);
    }
    let broker = std::env::var("TIDINGS_AMQP091_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let namespace = format!("trace-{}", std::process::id());
    let url = tidings::isolated_url(&broker, &namespace).expect("url");

    let (tx, rx) = mpsc::channel::<(String, String)>();
    let mut children = Children(Vec::new());
    for role in ["server", "audit"] {
        children.0.push(spawn(role, &url, tx.clone()));
    }
    let mut ready = 0;
    let mut lines: Vec<(String, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (role, line) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("server and audit not ready in 30 s; they said {lines:?}"));
        // The test harness's `test … ` comes first on the line.
        if line.ends_with("READY") {
            ready += 1;
        }
        lines.push((role, line));
    }
    children.0.push(spawn("caller", &url, tx.clone()));
    drop(tx);

    let deadline = Instant::now() + Duration::from_secs(60);
    for (role, child) in &mut children.0 {
        loop {
            match child.try_wait().expect("wait") {
                Some(status) => {
                    assert!(
                        status.success(),
                        "{role} failed: {status}; output {lines:?}"
                    );
                    break;
                }
                None if Instant::now() > deadline => {
                    panic!("{role} did not finish in 60 s; output {lines:?}");
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    lines.extend(rx.iter());
    let spans: Vec<SpanLine> = lines
        .iter()
        .filter_map(|(_, line)| line.find("SPAN {").map(|at| &line[at + 5..]))
        .map(|json| serde_json::from_str(json).expect("a span line"))
        .collect();

    let [call, server, reply, publish, handled] = support::assert_chain(&spans, "rabbitmq");
    assert_eq!(call.process, "caller");
    assert_eq!(server.process, "server");
    assert_eq!(reply.process, "server");
    assert_eq!(publish.process, "server");
    assert_eq!(handled.process, "audit");
    assert_eq!(
        call.parent_span_id, "0000000000000000",
        "the call starts the trace"
    );
}

/// The children, killed if the test fails before they finish.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts this test binary again as `role`, its stdout lines sent to `tx`.
fn spawn(role: &str, url: &str, tx: mpsc::Sender<(String, String)>) -> (String, Child) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(URL, url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let name = role.to_owned();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((name.clone(), line)).is_err() {
                break;
            }
        }
    });
    (role.to_owned(), child)
}

/// A child's part.
fn play(role: &str) {
    let url = std::env::var(URL).expect("url");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let traces = support::install(match role {
        "caller" => "trace-caller",
        "server" => "trace-server",
        _ => "trace-audit",
    });
    runtime.block_on(async {
        let bus = tidings::connect(&url)
            .await
            .expect("connect")
            .as_participant(role, "1")
            .with_layer(TracingLayer::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        match role {
            "caller" => {
                let worked: Worked = bus
                    .call(SERVICE, &Work { n: 21 })
                    .timeout(Duration::from_secs(20))
                    .await
                    .expect("call");
                assert_eq!(worked.n, 42);
            }
            "server" => {
                let emitter = bus.clone();
                bus.serve(SERVICE, move |work: Work| {
                    let emitter = emitter.clone();
                    let tx = tx.clone();
                    async move {
                        emitter.emit(EVENT, &Done { n: work.n }).await?;
                        tx.send(work.n)?;
                        Ok(Worked { n: work.n * 2 })
                    }
                })
                .await
                .expect("serve");
            }
            _ => {
                bus.subscribe::<Done>(EVENT)
                    .group(GROUP)
                    .handle(move |done| {
                        let tx = tx.clone();
                        async move {
                            tx.send(done.n)?;
                            Ok(())
                        }
                    })
                    .await
                    .expect("subscribe");
            }
        }
        if role != "caller" {
            say("READY");
            let n = tokio::time::timeout(Duration::from_secs(40), rx.recv())
                .await
                .expect("one message in time");
            assert_eq!(n, Some(21));
            // Let the handler's span close (the reply is sent, the delivery settled).
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        bus.shutdown().await.expect("shutdown");
    });
    for span in support::finished(&traces, role) {
        say(&format!(
            "SPAN {}",
            serde_json::to_string(&span).expect("json")
        ));
    }
}

/// One line on stdout, at once.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout");
    out.flush().expect("stdout");
}
