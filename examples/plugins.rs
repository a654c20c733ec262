//! An application of plugins where no plugin may miss the first events, even on broadcast
//! subscriptions (which keep nothing for a subscriber that does not exist yet): the start-up
//! barrier.
//!
//! Three plugins: `audit` and `mailer` are tasks in this process, `search` is an external
//! process written in Python with the python/ package (python/examples/plugin.py). Each one
//! subscribes to `app.event` and `app.stop`, then announces itself at the barrier `app-start`.
//! The application starts them, waits at the barrier for all three (failing after `--timeout`
//! with an error naming the missing ones), then emits its first `--events` events at once, then
//! `app.stop`; every plugin reports how many distinct events it received. The last line of
//! stdout is a JSON summary, `{"sent":N,"received":{"audit":N,..},"lost":0}`; the exit status
//! is 0 when nothing was lost.
//!
//! ```text
//! plugins [--events N] [--timeout SECS] [--python PATH] [--skip PLUGIN]...
//!   --events N      how many events to emit right after the barrier (default 200)
//!   --timeout SECS  how long to wait at the barrier (default 30)
//!   --python PATH   the interpreter of the Python plugin, one with the tidings package
//!                   installed (default: $TIDINGS_PYTHON, else target/py-venv/bin/python when
//!                   scripts/python-tests.sh made it, else python3)
//!   --skip PLUGIN   do not start PLUGIN but still wait for it: the barrier fails naming it
//! ```
//!
//! With RabbitMQ (AMQP 0.9.1, which the Python package speaks), all three plugins:
//!
//!     bash scripts/python-tests.sh     # or: python3 -m venv target/py-venv && target/py-venv/bin/pip install ./python
//!     TIDINGS_URL='amqp://guest:guest@127.0.0.1:5672/%2f?exchange=plugins' cargo run --features amqp091 --example plugins
//!
//! On `memory://` (the default URL) the bus lives inside this process: the Python plugin, an
//! external process, cannot join it, so the application says so and runs the two in-process
//! plugins only:
//!
//!     cargo run --example plugins

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidings::{Codec, Event};

/// The barrier every plugin announces itself at.
const BARRIER: &str = "app-start";
/// The plugins that run as tasks in this process.
const IN_PROCESS: [&str; 2] = ["audit", "mailer"];
/// The plugin that runs as a Python process.
const EXTERNAL: &str = "search";
/// How long a plugin waits, once told to stop, for events still on their way.
const STRAGGLERS: Duration = Duration::from_secs(10);
/// How long the application waits for the plugins' reports.
const REPORTS: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One of the application's first events.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AppEvent {
    seq: u64,
}

impl Event for AppEvent {
    const NAME: &'static str = "app_event";
}

/// The application is done emitting: `sent` events.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stop {
    sent: u64,
}

impl Event for Stop {
    const NAME: &'static str = "app_stop";
}

/// What a plugin received.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Report {
    plugin: String,
    received: u64,
    duplicates: u64,
}

impl Event for Report {
    const NAME: &'static str = "plugin_report";
}

/// The distinct events a plugin received, and how many came twice.
#[derive(Debug, Default)]
struct Seen {
    seqs: BTreeSet<u64>,
    duplicates: u64,
}

/// An in-process plugin: subscribes, announces itself, reports on `app.stop`, then leaves.
async fn plugin(url: String, name: &'static str) -> tidings::Result<()> {
    // JSON, so the Python plugin and the application read each other whatever they are.
    let bus = tidings::connect(&url)
        .await?
        .as_participant("plugin", name)
        .with_codec(Codec::Json);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let counting = seen.clone();
    let _events = bus
        .subscribe::<AppEvent>("app.event")
        .handle(move |event| {
            let mut seen = counting.lock().unwrap();
            if !seen.seqs.insert(event.seq) {
                seen.duplicates += 1;
            }
            async { Ok(()) }
        })
        .await?;
    let reported = Arc::new(tokio::sync::Notify::new());
    let (reporter, done) = (bus.clone(), reported.clone());
    let _stop = bus
        .subscribe::<Stop>("app.stop")
        .handle(move |stop| {
            let (bus, seen, done) = (reporter.clone(), seen.clone(), done.clone());
            async move {
                // app.stop has a queue of its own: it may overtake the last events.
                let give_up = Instant::now() + STRAGGLERS;
                let count = || seen.lock().unwrap().seqs.len() as u64;
                while count() < stop.sent && Instant::now() < give_up {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let report = {
                    let seen = seen.lock().unwrap();
                    Report {
                        plugin: name.to_owned(),
                        received: seen.seqs.len() as u64,
                        duplicates: seen.duplicates,
                    }
                };
                println!(
                    "[{name}] received {} of {} events",
                    report.received, stop.sent
                );
                bus.emit("plugins.report", &report).await?;
                done.notify_one();
                Ok(())
            }
        })
        .await?;
    // Only now that both subscriptions exist: "I am ready".
    let announcement = bus.barrier(BARRIER)?.announce(name).await?;
    println!("[{name}] subscribed; announced at barrier {BARRIER:?}");
    reported.notified().await;
    announcement.withdraw().await;
    bus.shutdown().await
}

struct Options {
    events: u64,
    timeout: Duration,
    python: PathBuf,
    skip: Vec<String>,
}

fn usage(problem: &str) -> ! {
    eprintln!("plugins: {problem}");
    eprintln!(
        "usage: plugins [--events N] [--timeout SECS] [--python PATH] [--skip PLUGIN]... (see examples/plugins.rs)"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = repo.join("target/py-venv/bin/python");
    let mut options = Options {
        events: 200,
        timeout: Duration::from_secs(30),
        python: match std::env::var_os("TIDINGS_PYTHON") {
            Some(python) => python.into(),
            None if venv.exists() => venv,
            None => "python3".into(),
        },
        skip: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--events" => {
                options.events = value().parse().unwrap_or_else(|_| usage("--events N"));
            }
            "--timeout" => {
                let secs: f64 = value().parse().unwrap_or_else(|_| usage("--timeout SECS"));
                options.timeout = Duration::from_secs_f64(secs);
            }
            "--python" => options.python = value().into(),
            "--skip" => {
                let plugin = value();
                if plugin != EXTERNAL && !IN_PROCESS.contains(&plugin.as_str()) {
                    usage(&format!("no plugin {plugin:?}: audit, mailer or search"));
                }
                options.skip.push(plugin);
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    options
}

/// The Python plugin's process, killed if the application leaves early.
struct External(Child);

impl External {
    fn start(python: &Path, url: &str) -> Result<Self, BoxError> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/examples/plugin.py");
        let child = Command::new(python)
            .arg(&script)
            .args(["--name", EXTERNAL, "--barrier", BARRIER])
            .env("TIDINGS_URL", url)
            // Its output goes to stderr: stdout stays the application's.
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start the Python plugin with {}: {e}",
                    python.display()
                )
            })?;
        println!(
            "[{EXTERNAL}] started: {} {} (pid {})",
            python.display(),
            script.display(),
            child.id()
        );
        Ok(Self(child))
    }

    /// Resolves when the process exits.
    async fn exited(&mut self) -> ExitStatus {
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("waiting for the Python plugin: {e}"),
            }
        }
    }
}

impl Drop for External {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

async fn run(options: Options) -> Result<bool, BoxError> {
    let url = std::env::var(tidings::URL_VAR).unwrap_or_else(|_| "memory://plugins".into());
    // memory:// is a broker inside this process: no other process can reach it.
    let external = !url.starts_with("memory:");
    let app = tidings::connect(&url)
        .await?
        .as_participant("app", "1")
        .with_codec(Codec::Json);

    // Listen for the plugins' reports before anything can send one.
    let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let _reports = app
        .subscribe::<Report>("plugins.report")
        .handle(move |report| {
            let _ = tx.send(report);
            async { Ok(()) }
        })
        .await?;

    let mut expected: Vec<&str> = IN_PROCESS.to_vec();
    if external {
        expected.push(EXTERNAL);
    } else {
        println!(
            "{} is an in-process broker: the Python plugin {EXTERNAL:?}, an external process, cannot join it; \
             running the two in-process plugins only (set TIDINGS_URL=amqp://... for all three)",
            tidings::redact(&url)
        );
    }

    // Start the plugins, in any order: the barrier is what tells when they are ready.
    let mut tasks = Vec::new();
    let mut python = None;
    for &name in &expected {
        if options.skip.iter().any(|s| s == name) {
            println!("[{name}] not started (--skip): the barrier will wait for it in vain");
        } else if name == EXTERNAL {
            python = Some(External::start(&options.python, &url)?);
        } else {
            tasks.push(tokio::spawn(plugin(url.clone(), name)));
        }
    }

    let waiting = Instant::now();
    let barrier = app.barrier(BARRIER)?;
    let passed = barrier.wait_for(&expected, options.timeout);
    match &mut python {
        Some(process) => tokio::select! {
            passed = passed => passed?,
            status = process.exited() => {
                return Err(format!(
                    "the Python plugin {EXTERNAL:?} exited ({status}) before the barrier passed; \
                     does {} have the tidings package (pip install ./python)?",
                    options.python.display()
                )
                .into())
            }
        },
        None => passed.await?,
    }
    println!(
        "barrier {BARRIER:?} passed after {} ms: {} subscribed",
        waiting.elapsed().as_millis(),
        expected.join(", ")
    );

    // The first events, all at once: every plugin's subscriptions exist.
    let mut emits = tokio::task::JoinSet::new();
    for seq in 0..options.events {
        let app = app.clone();
        emits.spawn(async move { app.emit("app.event", &AppEvent { seq }).await });
    }
    while let Some(emitted) = emits.join_next().await {
        emitted??;
    }
    app.emit(
        "app.stop",
        &Stop {
            sent: options.events,
        },
    )
    .await?;
    println!("emitted {} events, then app.stop", options.events);

    let mut received: BTreeMap<String, Report> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + REPORTS;
    while received.len() < expected.len() {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some(report)) if expected.contains(&report.plugin.as_str()) => {
                received.insert(report.plugin.clone(), report);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    for task in tasks {
        task.await??;
    }
    if let Some(mut process) = python.take() {
        let status = tokio::time::timeout(Duration::from_secs(15), process.exited()).await;
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => println!("[{EXTERNAL}] exited with {status}"),
            Err(_) => println!("[{EXTERNAL}] still running after its report; killed"),
        }
    }
    app.shutdown().await?;

    let mut lost = 0;
    let mut clean = true;
    let mut counts = serde_json::Map::new();
    for &name in &expected {
        match received.get(name) {
            Some(report) => {
                lost += options.events.saturating_sub(report.received);
                if report.duplicates > 0 {
                    println!("{name}: {} events came twice", report.duplicates);
                    clean = false;
                }
                counts.insert(name.into(), report.received.into());
            }
            None => {
                println!("{name}: no report within {REPORTS:?}");
                lost += options.events;
                clean = false;
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({ "sent": options.events, "received": counts, "lost": lost })
    );
    Ok(clean && lost == 0)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(options()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("plugins: {e}");
            ExitCode::FAILURE
        }
    }
}
