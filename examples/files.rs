//! A file service: encryption jobs are cast to encryption workers; a worker fetches the file
//! with `file.get` from the file servers — each holds some files and declines requests for the
//! others, so the one that holds the file answers — and stores the result with `file.put`,
//! which a server whose disk is full (`active_when`) does not take. A file server's exception
//! reaches the worker as a remote error; a file nobody holds comes back as declined by every
//! server; a job queued with a TTL while no worker ran expires instead of being done late.
//!
//!     cargo run --example files                       # memory://
//!     cargo run --example files --features amqp091 -- amqp://guest:guest@127.0.0.1:5672/%2f
//!
//! The broker URL is the first argument, else `TIDINGS_URL`, else `memory://files`. The last
//! line printed is a JSON summary (tests/files.rs checks it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{Bus, Decline, ErrorKind, Event};

/// A job: encrypt this file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Encrypt {
    file: String,
}

impl Event for Encrypt {
    const NAME: &'static str = "file_encrypt";
}

/// `file.get`: the file asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Get {
    file: String,
}

impl Event for Get {
    const NAME: &'static str = "file_get";
}

/// A file's contents, and who served them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Contents {
    file: String,
    bytes: Vec<u8>,
    server: String,
}

impl Event for Contents {
    const NAME: &'static str = "file_contents";
}

/// `file.put`: store this file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Put {
    file: String,
    bytes: Vec<u8>,
}

impl Event for Put {
    const NAME: &'static str = "file_put";
}

/// Where a stored file went.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    server: String,
}

impl Event for Stored {
    const NAME: &'static str = "file_stored";
}

/// What became of a job, as a worker reports it on `file.done`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done {
    file: String,
    /// `encrypted`, `missing` (every file server declined) or `failed` (a remote error).
    outcome: String,
    detail: String,
}

impl Event for Done {
    const NAME: &'static str = "file_done";
}

/// A file server: its name, the files it holds, and whether its disk is full.
struct FileServer {
    name: &'static str,
    files: &'static [&'static str],
    disk_full: bool,
}

const FILE_SERVERS: &[FileServer] = &[
    FileServer {
        name: "files1",
        files: &["a.txt", "b.txt"],
        disk_full: true,
    },
    FileServer {
        name: "files2",
        files: &["c.txt", "broken.txt"],
        disk_full: false,
    },
    FileServer {
        name: "files3",
        files: &["d.txt"],
        disk_full: false,
    },
];

/// The jobs cast after the workers start, one at a time.
const JOBS: &[&str] = &["c.txt", "a.txt", "d.txt", "missing.txt", "broken.txt"];
/// The job queued with a short TTL while no worker ran.
const STALE_JOB: &str = "b.txt";
const STALE_TTL: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Counts {
    declines: AtomicU32,
    puts: Mutex<BTreeMap<String, u32>>,
}

async fn connect(url: &str, identity: &str) -> tidings::Result<Bus> {
    tidings::connect(url).await?.with_identity(identity)
}

/// Starts a file server: `file.get` for the files it holds (declining the others), `file.put`
/// while its disk is not full.
async fn start_file_server(
    url: &str,
    spec: &FileServer,
    counts: &Arc<Counts>,
) -> tidings::Result<Bus> {
    let bus = connect(url, &format!("host.{}.1", spec.name)).await?;
    let name = spec.name;
    let files = spec.files;
    let declines = counts.clone();
    bus.serve("file.get", move |get: Get| {
        let declines = declines.clone();
        async move {
            if !files.contains(&get.file.as_str()) {
                declines.declines.fetch_add(1, Ordering::SeqCst);
                println!("{name}: declines file.get {} (not held here)", get.file);
                return Err(Decline::new(format!("{} is not on {name}", get.file)).into());
            }
            if get.file == "broken.txt" {
                println!("{name}: file.get {} fails: bad sector", get.file);
                return Err(format!("I/O error reading {}: bad sector", get.file).into());
            }
            println!("{name}: serves file.get {}", get.file);
            Ok(Contents {
                bytes: format!("contents of {}", get.file).into_bytes(),
                file: get.file,
                server: name.into(),
            })
        }
    })
    .await?;
    let puts = counts.clone();
    let disk_full = spec.disk_full;
    bus.serve("file.put", move |put: Put| {
        let puts = puts.clone();
        async move {
            println!("{name}: stores {} ({} bytes)", put.file, put.bytes.len());
            *puts.puts.lock().unwrap().entry(name.into()).or_default() += 1;
            Ok(Stored {
                server: name.into(),
            })
        }
    })
    // A full disk takes no uploads: the other servers get them.
    .active_when(move || !disk_full)
    .await?;
    Ok(bus)
}

/// Starts an encryption worker: fetch, encrypt, store, report on `file.done`.
async fn start_encryptor(url: &str, n: u32) -> tidings::Result<Bus> {
    let bus = connect(url, &format!("host.encryptor.{n}")).await?;
    let me = bus.clone();
    bus.serve("file.encrypt", move |job: Encrypt| {
        let bus = me.clone();
        async move {
            let done = encrypt(&bus, n, &job.file).await;
            println!(
                "encryptor {n}: {} {} ({})",
                job.file, done.outcome, done.detail
            );
            bus.emit("file.done", &done).await?;
            Ok(())
        }
    })
    .await?;
    Ok(bus)
}

async fn encrypt(bus: &Bus, n: u32, file: &str) -> Done {
    let done = |outcome: &str, detail: String| Done {
        file: file.into(),
        outcome: outcome.into(),
        detail,
    };
    let get = Get { file: file.into() };
    let contents: Contents = match bus
        .call("file.get", &get)
        .timeout(Duration::from_secs(5))
        .await
    {
        Ok(contents) => contents,
        Err(e) if e.kind() == ErrorKind::Declined => return done("missing", e.to_string()),
        Err(e) => return done("failed", e.to_string()),
    };
    let bytes: Vec<u8> = contents.bytes.iter().map(|b| b ^ 0x5a).collect();
    let put = Put {
        file: format!("{file}.enc"),
        bytes,
    };
    match bus
        .call::<_, Stored>("file.put", &put)
        .timeout(Duration::from_secs(5))
        .await
    {
        Ok(stored) => done(
            "encrypted",
            format!(
                "by encryptor {n}, read from {}, stored on {}",
                contents.server, stored.server
            ),
        ),
        Err(e) => done("failed", e.to_string()),
    }
}

#[tokio::main]
async fn main() -> tidings::Result<()> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var(tidings::URL_VAR).ok())
        .unwrap_or_else(|| "memory://files".into());
    let client = connect(&url, "host.client.1").await?;
    let counts = Arc::new(Counts::default());
    let mut buses = vec![client.clone()];
    for spec in FILE_SERVERS {
        buses.push(start_file_server(&url, spec, &counts).await?);
    }

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    client
        .subscribe::<Done>("file.done")
        .handle(move |done| {
            let _ = done_tx.send(done);
            async { Ok(()) }
        })
        .await?;

    // No encryption worker runs yet: the jobs queue keeps what is cast to it. One job may go
    // stale: it expires after STALE_TTL unless a worker takes it by then.
    client
        .subscribe::<Encrypt>("file.encrypt")
        .group("file.encrypt")
        .declare()
        .await?;
    println!("client: casts {STALE_JOB} with a TTL of {STALE_TTL:?}, no worker running");
    client
        .emit(
            "file.encrypt",
            &Encrypt {
                file: STALE_JOB.into(),
            },
        )
        .ttl(STALE_TTL)
        .await?;
    tokio::time::sleep(STALE_TTL * 3).await;
    for n in 1..=2 {
        buses.push(start_encryptor(&url, n).await?);
    }

    // One job at a time, each reported on `file.done`.
    let mut outcomes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut details = BTreeMap::new();
    for file in JOBS {
        println!("client: casts file.encrypt {file}");
        client
            .cast(
                "file.encrypt",
                &Encrypt {
                    file: (*file).into(),
                },
            )
            .await?;
        let done = tokio::time::timeout(Duration::from_secs(15), done_rx.recv())
            .await
            .map_err(|_| tidings::Error::new(ErrorKind::Timeout, format!("no report for {file}")))?
            .expect("the subscription lives");
        outcomes
            .entry(done.outcome.clone())
            .or_default()
            .push(done.file.clone());
        details.insert(done.file, done.detail);
    }
    // The stale job never comes.
    let late = tokio::time::timeout(Duration::from_millis(500), done_rx.recv()).await;
    let expired: Vec<&str> = match late {
        Ok(Some(done)) => {
            println!("client: {} was done late", done.file);
            outcomes.entry(done.outcome).or_default().push(done.file);
            Vec::new()
        }
        _ => {
            println!("client: {STALE_JOB} expired before a worker took it");
            vec![STALE_JOB]
        }
    };

    let puts = counts.puts.lock().unwrap().clone();
    let summary = serde_json::json!({
        "encrypted": outcomes.get("encrypted").cloned().unwrap_or_default(),
        "missing": outcomes.get("missing").cloned().unwrap_or_default(),
        "failed": outcomes.get("failed").cloned().unwrap_or_default(),
        "expired": expired,
        "details": details,
        "puts": puts,
        "declines": counts.declines.load(Ordering::SeqCst),
    });
    for bus in buses {
        bus.shutdown().await?;
    }
    println!("{summary}");
    Ok(())
}
