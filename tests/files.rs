//! The file service example (examples/files.rs) run as a user runs it, on memory:// and on
//! RabbitMQ: held files are encrypted (fetched from the server that holds them after others
//! declined, stored on a server whose disk is not full), a file nobody holds is declined by
//! all three file servers, a file server's exception reaches the worker as a remote error, and
//! the job queued with a TTL while no worker ran expires.
#![cfg(feature = "memory")]

#[path = "support/example.rs"]
mod example;

use std::process::{Command, Output};

/// Runs the example on `url` and returns its summary, the last line of stdout.
fn files(url: &str) -> (Output, serde_json::Value) {
    let output = Command::new(example::binary("files", &[]))
        .arg(url)
        .env_remove("TIDINGS_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!(
        "files {url}:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{:?}", output.status);
    let last = stdout.lines().last().expect("a summary line");
    let summary = serde_json::from_str(last).unwrap_or_else(|e| panic!("summary {last:?}: {e}"));
    (output, summary)
}

fn check(output: &Output, summary: &serde_json::Value) {
    let strings = |key: &str| -> Vec<String> {
        serde_json::from_value(summary[key].clone()).unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    assert_eq!(strings("encrypted"), ["c.txt", "a.txt", "d.txt"]);
    assert_eq!(strings("missing"), ["missing.txt"]);
    assert_eq!(strings("failed"), ["broken.txt"]);
    assert_eq!(strings("expired"), ["b.txt"]);
    // Each held file read from the server that holds it.
    let details = &summary["details"];
    for (file, server) in [
        ("a.txt", "files1"),
        ("c.txt", "files2"),
        ("d.txt", "files3"),
    ] {
        let detail = details[file].as_str().unwrap();
        assert!(
            detail.contains(&format!("read from {server},")),
            "{file}: {detail}"
        );
        assert!(!detail.contains("stored on files1"), "{file}: {detail}");
    }
    let missing = details["missing.txt"].as_str().unwrap();
    assert!(
        missing.starts_with(
            "no server took the request: declined by every server of \"file.get\" (3 servers:"
        ),
        "{missing}"
    );
    for server in ["files1", "files2", "files3"] {
        assert!(
            missing.contains(&format!("missing.txt is not on {server}")),
            "{missing}"
        );
    }
    let broken = details["broken.txt"].as_str().unwrap();
    assert!(
        broken.starts_with("remote handler failed: I/O error reading broken.txt: bad sector"),
        "{broken}"
    );
    // The full disk (files1) stored nothing; the three encrypted files went elsewhere.
    let puts: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(summary["puts"].clone()).unwrap();
    assert_eq!(puts.get("files1"), None, "{puts:?}");
    assert_eq!(puts.values().sum::<u64>(), 3, "{puts:?}");
    // missing.txt: once by each of the three; held files: at least one decline among them
    // (the first job lands on a server in turn, and each holds different files).
    let declines = summary["declines"].as_u64().unwrap();
    assert!(declines >= 4, "{declines} declines");
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("client: b.txt expired before a worker took it"),
        "the stale job's expiry is told"
    );
}

#[test]
fn on_memory_the_file_service_answers_declines_fails_and_expires_as_told() {
    let (output, summary) = files("memory://files-test");
    check(&output, &summary);
}

#[cfg(all(feature = "amqp091", feature = "cli"))]
#[test]
fn on_rabbitmq_the_file_service_answers_declines_fails_and_expires_as_told() {
    let ns = tidings_conformance::rabbitmq::Namespace::on_amqp091_broker("files-test");
    let (output, summary) = files(ns.url());
    check(&output, &summary);
}
