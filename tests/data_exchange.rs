//! The data-exchange example (examples/data-exchange/) run as a user runs it — `tidings up` on
//! its system file, across real processes on RabbitMQ — driven from the command line: a crawl
//! request emitted right after the topology is applied (before the components run) reaches the
//! controller; every item is fetched, persisted exactly once, announced to every notifier
//! replica; the stats service answers; items crawled again come from the cache and are not
//! stored again; SIGTERM stops everything cleanly.
#![cfg(all(feature = "cli", feature = "amqp091", feature = "system"))]

#[path = "support/cli.rs"]
mod cli;
#[path = "support/example.rs"]
mod example;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cli::tidings_on;
use tidings_conformance::rabbitmq::Namespace;

const ITEMS: usize = 24;

/// `tidings up` in the background, its stdout read line by line; killed if the test fails.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    fn wait_for(&mut self, wanted: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.seen.iter().any(|l| l.contains(wanted)) {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line {wanted:?} in:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_data_exchange_system_fetches_persists_once_notifies_everyone_and_answers_stats() {
    let ns = Namespace::on_amqp091_broker("dx-test");
    let data = std::env::temp_dir().join(format!("tidings-dx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data-exchange/tidings.toml");

    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("--url")
        .arg(ns.url())
        .arg("up")
        .arg(&file)
        .args(["--drain-timeout", "10s"])
        .env("DX_BIN", example::binary("data_exchange", &["system"]))
        .env("DX_DATA", &data)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut up = Up {
        child,
        lines,
        seen: Vec::new(),
    };

    // Emitted as soon as the topology is there, before the components run: kept for them.
    up.wait_for("groups of", Duration::from_secs(30));
    let items: Vec<String> = (1..=ITEMS).map(|i| format!("page-{i}")).collect();
    let crawl = serde_json::json!({ "items": items }).to_string();
    let out = tidings_on(ns.url(), &["emit", "dx.crawl", &crawl]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every item persisted, and announced to both notifier replicas.
    let wanted: BTreeSet<String> = items.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let notified: Vec<BTreeSet<String>> = (1..=2)
            .map(|r| {
                lines_of(&data.join(format!("notified.{r}")))
                    .into_iter()
                    .collect()
            })
            .collect();
        if notified.iter().all(|n| *n == wanted)
            && lines_of(&data.join("persisted.log")).len() >= ITEMS
        {
            break;
        }
        up.drain();
        assert!(
            Instant::now() < deadline,
            "not everything persisted and notified in 60 s:\n{}",
            up.seen.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Each item stored exactly once, by whichever persister got it.
    let persisted = lines_of(&data.join("persisted.log"));
    let stored: BTreeSet<String> = persisted
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(persisted.len(), ITEMS, "{persisted:?}");
    assert_eq!(stored, wanted);
    let files = std::fs::read_dir(data.join("items")).unwrap().count();
    assert_eq!(files, ITEMS);

    // The stats service, as the web tier calls it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let out = tidings_on(ns.url(), &["call", "dx.stats", "--timeout", "5s"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let fetched: u64 = stats["fetched_by"]
            .as_object()
            .map(|by| by.values().filter_map(|n| n.as_u64()).sum())
            .unwrap_or(0);
        if stats["persisted"] == ITEMS && fetched >= ITEMS as u64 {
            break stats;
        }
        assert!(Instant::now() < deadline, "stats never caught up: {stats}");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("stats: {stats}");

    // Items crawled again come from the cache and are not stored twice.
    let again = serde_json::json!({ "items": ["page-1", "page-2"] }).to_string();
    let out = tidings_on(ns.url(), &["emit", "dx.crawl", &again]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = tidings_on(ns.url(), &["call", "dx.stats", "--timeout", "5s"]);
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if stats["from_cache"].as_u64() >= Some(2) {
            assert_eq!(stats["persisted"], ITEMS, "{stats}");
            break;
        }
        assert!(Instant::now() < deadline, "no cache hits: {stats}");
        std::thread::sleep(Duration::from_millis(200));
    }
    up.wait_for(
        "page-2 is already stored; not again",
        Duration::from_secs(30),
    );
    assert_eq!(lines_of(&data.join("persisted.log")).len(), ITEMS);

    // The output of every component, prefixed; then SIGTERM stops them all cleanly.
    up.drain();
    for prefix in [
        "controller.1 | asked a fetcher for page-1 → dx.store",
        "cache.1 | cache 1 ready",
        "stats.1 | stats 1 ready",
    ] {
        assert!(
            up.seen.iter().any(|l| l.starts_with(prefix)),
            "{prefix:?} in:\n{}",
            up.seen.join("\n")
        );
    }
    for replica in [
        "fetcher.1",
        "fetcher.2",
        "fetcher.3",
        "persister.1",
        "persister.2",
        "notifier.1",
        "notifier.2",
    ] {
        let ready = format!("{replica} | ");
        assert!(
            up.seen.iter().any(|l| l.starts_with(&ready)),
            "{replica} said nothing:\n{}",
            up.seen.join("\n")
        );
    }
    let pid = rustix::process::Pid::from_raw(up.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = up.child.wait().unwrap();
    up.drain();
    assert_eq!(status.code(), Some(0), "{}", up.seen.join("\n"));
    let stopped = up
        .seen
        .iter()
        .filter(|l| l.starts_with("up | ") && l.ends_with("stopped: exited with status 0"))
        .count();
    assert_eq!(
        stopped,
        10,
        "every replica drains and exits 0:\n{}",
        up.seen.join("\n")
    );
    let _ = std::fs::remove_dir_all(&data);
}
