//! The plugins example (examples/plugins.rs) run as a user runs it: the events emitted right
//! after the start-up barrier reach every in-process plugin (on memory://, where the external
//! Python plugin cannot join, and it says so), and a plugin that never announces makes the
//! barrier fail naming it (on memory:// and on RabbitMQ).
//!
//! The run with all three plugins, the Python one included, is in the Python suite
//! (python/tests/test_plugins.py, run by scripts/python-tests.sh after `cargo test`): it needs
//! the virtual environment with the tidings package that script makes.
#![cfg(feature = "memory")]

#[path = "support/example.rs"]
mod example;

use std::process::{Command, Output};

const EVENTS: u64 = 300;

fn plugins(url: &str, args: &[&str]) -> Output {
    let output = Command::new(example::binary("plugins", &[]))
        .args(args)
        .env("TIDINGS_URL", url)
        .output()
        .unwrap();
    eprintln!(
        "plugins {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The last line of stdout: `{"sent":N,"received":{..},"lost":N}`.
fn summary(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().expect("a summary line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("summary {last:?}: {e}"))
}

#[test]
fn on_memory_the_first_events_reach_both_in_process_plugins() {
    let events = EVENTS.to_string();
    let output = plugins("memory://plugins-test", &["--events", &events]);
    assert!(output.status.success(), "{:?}", output.status);
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("the Python plugin \"search\", an external process, cannot join it"),
        "memory:// says why the Python plugin is not there"
    );
    assert_eq!(
        summary(&output),
        serde_json::json!({
            "sent": EVENTS,
            "received": { "audit": EVENTS, "mailer": EVENTS },
            "lost": 0,
        })
    );
}

#[test]
fn on_memory_a_missing_plugin_fails_the_barrier_naming_it() {
    let output = plugins(
        "memory://plugins-missing",
        &["--skip", "mailer", "--timeout", "1"],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "barrier \"app-start\": 1 of 2 participants did not announce within 1s: mailer"
        ),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("emitted"),
        "nothing is emitted before the barrier passes"
    );
}

/// On RabbitMQ, without the Python plugin (the Python suite runs it): the application waits
/// for it by name and fails naming it, the in-process plugins having announced.
#[cfg(all(feature = "amqp091", feature = "cli"))]
#[test]
fn on_rabbitmq_a_missing_external_plugin_fails_the_barrier_naming_it() {
    let ns = tidings_conformance::rabbitmq::Namespace::on_amqp091_broker("plugins-test");
    let output = plugins(ns.url(), &["--skip", "search", "--timeout", "3"]);
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("[audit] subscribed") && stdout.contains("[mailer] subscribed"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "barrier \"app-start\": 1 of 3 participants did not announce within 3s: search"
        ),
        "{stderr}"
    );
}
