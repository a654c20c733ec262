//! `tidings topology apply|check|systemd`, run as a user runs them: apply then check agree on
//! RabbitMQ, check reports a broker that drifted and exits 1, a bad file is a usage error with
//! its line, and memory:// says it cannot be checked.
#![cfg(feature = "cli")]

#[path = "support/cli.rs"]
mod cli;

use std::path::{Path, PathBuf};

use cli::{text, tidings};

/// `tidings.toml` holding `system` in a directory of this test's own.
fn system_file(test: &str, system: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tidings-topo-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tidings.toml");
    std::fs::write(&file, system).unwrap();
    file
}

fn path(file: &Path) -> &str {
    file.to_str().unwrap()
}

const SYSTEM: &str = r#"
[[component]]
name = "fetcher"
command = "fetcher"
replicas = 2

[[component.worker]]
group = "fetch"
patterns = ["fetch.#", "refetch.*"]

[[component.fanout]]
patterns = ["config.changed"]

[[component.service]]
name = "fetcher.stats"
"#;

#[test]
fn a_bad_file_is_a_usage_error_with_line_and_field() {
    let file = system_file(
        "bad",
        "[[component]]\nname = \"a\"\ncommand = \"x\"\nreplicas = 0\n",
    );
    let out = tidings(&["--url", "memory://", "topology", "apply", path(&file)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("tidings.toml:4:12: component \"a\" > replicas: must be at least 1"),
        "{}",
        text(&out)
    );
}

#[test]
fn memory_cannot_be_checked_or_applied_and_says_so() {
    let file = system_file("memory", SYSTEM);
    let out = tidings(&["--url", "memory://", "topology", "check", path(&file)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no broker to check"), "{}", text(&out));
    let out = tidings(&["--url", "memory://", "topology", "apply", path(&file)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nothing to declare"), "{}", text(&out));
}

#[test]
fn systemd_units_are_written_for_every_component() {
    let file = system_file("systemd", SYSTEM);
    let out_dir = file.parent().unwrap().join("units");
    let out = tidings(&[
        "topology",
        "systemd",
        path(&file),
        "--out",
        path(&out_dir),
        "--name",
        "shop",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "shop-fetcher@.service",
            "shop-topology.service",
            "shop.target"
        ]
    );
    let target = std::fs::read_to_string(out_dir.join("shop.target")).unwrap();
    assert!(
        target
            .contains("Wants=shop-topology.service shop-fetcher@1.service shop-fetcher@2.service"),
        "{target}"
    );
}

#[cfg(feature = "amqp091")]
mod rabbitmq {
    use tidings_conformance::rabbitmq::{Management, Namespace};

    use super::*;

    #[test]
    fn check_finds_what_apply_declared_and_reports_drift() {
        let ns = Namespace::on_amqp091_broker("topocli-drift");
        let file = system_file("drift", &format!("url = {:?}\n{SYSTEM}", ns.url()));
        let file = path(&file);
        let ex = ns.exchange();

        // Nothing declared yet: every queue is missing.
        let out = tidings(&["topology", "check", file]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains(&format!(
                "missing queue {ex}.group.fetch (group \"fetch\" of fetcher)"
            )),
            "{}",
            text(&out)
        );

        let out = tidings(&["topology", "apply", file]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains(
                "group fetch ← fetch.#, refetch.*  (dead letters: fetch; taken by fetcher)"
            ),
            "{}",
            text(&out)
        );
        assert!(text(&out).contains("4 groups of"), "{}", text(&out));
        // Idempotent.
        let out = tidings(&["topology", "apply", file]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));

        let out = tidings(&["topology", "check", file]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains("has what") && text(&out).contains("(8 queues, 5 bindings)"),
            "{}",
            text(&out)
        );

        // The broker drifts: a stray binding, a stray durable group, a deleted queue.
        let api = Management::for_broker(ns.url()).unwrap();
        api.bind_queue(ex, &format!("{ex}.group.fetch"), "old.#")
            .unwrap();
        api.declare_queue(&format!("{ex}.group.forgotten")).unwrap();
        api.delete_queue(&format!("{ex}.dead.fetcher.stats"))
            .unwrap();
        let out = tidings(&[
            "topology",
            "check",
            file,
            "--management",
            "http://127.0.0.1:15672",
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines,
            [
                format!(
                    "missing queue {ex}.dead.fetcher.stats (dead letters of \"fetcher.stats\")"
                ),
                format!("extra binding {ex} → {ex}.group.fetch with \"old.#\": not in the file"),
                format!("extra queue {ex}.group.forgotten: a durable group not in the file"),
            ],
            "{}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("3 differences between"),
            "{}",
            text(&out)
        );

        // A management API that is not there is an error saying what check needs.
        let out = tidings(&[
            "topology",
            "check",
            file,
            "--management",
            "http://127.0.0.1:1",
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("management API"), "{}", text(&out));
    }
}

/// Over STOMP (groups bound to `amq.topic` under the namespace) and AMQP 1.0 (declared through
/// the management API), check compares the names those drivers use.
#[cfg(all(feature = "stomp", feature = "amqp10"))]
mod other_protocols {
    use tidings_conformance::rabbitmq::Management;

    use super::*;

    fn apply_then_check(base: &str, test: &str) {
        let exchange = format!("topocli-{test}-{}", std::process::id());
        let url = tidings::isolated_url(base, &exchange).unwrap();
        let file = system_file(test, SYSTEM);
        let apply = tidings(&["--url", &url, "topology", "apply", path(&file)]);
        let check = tidings(&["--url", &url, "topology", "check", path(&file)]);
        let cleanup = Management::for_broker(&url).and_then(|api| {
            api.delete_queues_with_prefix(&format!("{exchange}."), false)?;
            api.delete_exchange(&exchange)
        });
        assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
        assert_eq!(check.status.code(), Some(0), "{}", text(&check));
        assert!(
            text(&check).contains("(8 queues, 5 bindings)"),
            "{}",
            text(&check)
        );
        cleanup.unwrap();
    }

    #[test]
    fn stomp_groups_check_out() {
        let base = std::env::var("TIDINGS_STOMP_RABBITMQ_URL")
            .unwrap_or_else(|_| "stomp://guest:guest@127.0.0.1:61613/".into());
        apply_then_check(&base, "stomp");
    }

    #[test]
    fn amqp10_groups_check_out() {
        let base = std::env::var("TIDINGS_AMQP10_URL")
            .unwrap_or_else(|_| "amqp10://guest:guest@127.0.0.1:5672/".into());
        apply_then_check(&base, "amqp10");
    }
}
