//! The `tidings` binary, driven as a user would: exit codes, one-line errors, and (with the
//! amqp091 driver) real sessions against the local RabbitMQ.
#![cfg(feature = "cli")]

#[path = "support/cli.rs"]
mod cli;

use cli::{stderr, tidings};

#[test]
fn a_bad_url_is_a_usage_error_naming_the_problem() {
    let out = tidings(&["--url", "not a url", "emit", "a.b"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot parse broker url"),
        "{}",
        stderr(&out)
    );
    let out = tidings(&["--url", "kafka://h:1", "emit", "a.b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown scheme \"kafka\""),
        "{}",
        stderr(&out)
    );
    let out = tidings(&["emit", "a.b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("TIDINGS_URL"), "{}", stderr(&out));
}

#[test]
fn a_bad_key_says_which_word_is_wrong() {
    let out = tidings(&["--url", "memory://", "emit", "orders..created", "{}"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("empty word at position 2"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stderr(&out).lines().count(),
        1,
        "one line: {}",
        stderr(&out)
    );
}

#[test]
fn bad_json_gives_line_and_column() {
    let out = tidings(&[
        "--url",
        "memory://",
        "emit",
        "orders.created",
        "{\"a\":\n tru}",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid JSON") && stderr(&out).contains("line 2 column"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn emit_prints_the_message_id() {
    let out = tidings(&[
        "--url",
        "memory://",
        "emit",
        "orders.created",
        "{\"n\":1}",
        "--header",
        "tenant=acme",
        "--ttl",
        "30s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout);
    assert!(
        id.trim().contains('-') && id.trim().len() > 16,
        "printed {id:?}"
    );
}

#[test]
fn a_reserved_or_malformed_header_is_refused() {
    let out = tidings(&[
        "--url",
        "memory://",
        "emit",
        "a",
        "{}",
        "--header",
        "tidings-attempt=3",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("reserved"), "{}", stderr(&out));
    let out = tidings(&[
        "--url",
        "memory://",
        "emit",
        "a",
        "{}",
        "--header",
        "novalue",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn conformance_prints_a_table_and_exits_zero_when_all_pass() {
    let out = tidings(&["conformance", "memory://", "--case", "invalid"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    assert!(
        stdout.contains("invalid_keys_patterns_and_names_are_clear_errors")
            && stdout.contains("pass"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 passed, 0 failed, 0 unsupported"),
        "{stdout}"
    );
}

#[test]
fn conformance_with_an_unknown_case_is_a_usage_error() {
    let out = tidings(&["conformance", "memory://", "--case", "no_such_case"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no case matches"), "{}", stderr(&out));
}

#[test]
fn every_command_has_an_example_in_its_help() {
    for command in [
        "emit",
        "tail",
        "call",
        "serve",
        "dead-letters",
        "conformance",
        "bench",
    ] {
        let out = tidings(&[command, "--help"]);
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Example:"),
            "{command} --help has no example"
        );
    }
}

/// Sessions between several `tidings` processes through the local RabbitMQ.
#[cfg(feature = "amqp091")]
mod rabbitmq {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use tidings_conformance::rabbitmq::Namespace;

    use super::cli::tidings_on as run;
    use super::stderr;

    /// A long-running `tidings` process, killed when dropped.
    struct Background(Child);

    impl Drop for Background {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Starts `tidings` and waits for its "ready" line on stderr.
    fn start(url: &str, args: &[&str], ready: &str) -> Background {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .arg("--url")
            .arg(url)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tidings");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let seen = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|line| line.contains(ready));
        assert!(seen.is_some(), "`tidings {args:?}` never said {ready:?}");
        std::thread::spawn(move || lines.for_each(drop));
        Background(child)
    }

    #[test]
    fn serve_exec_answers_call_and_remote_errors_exit_1() {
        let namespace = Namespace::on_amqp091_broker("cli-serve");
        let url = namespace.url();
        let _server = start(
            url,
            &[
                "serve",
                "math.double",
                "--exec",
                "read x; test \"$x\" -lt 100 || { echo too big >&2; exit 3; }; echo $((x * 2))",
            ],
            "serving",
        );
        let out = run(url, &["call", "math.double", "21", "--timeout", "10s"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
        let out = run(url, &["call", "math.double", "500", "--timeout", "10s"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("too big"), "{}", stderr(&out));
        let out = run(url, &["call", "math.nobody", "1", "--timeout", "2s"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("no responders"), "{}", stderr(&out));
    }

    #[test]
    fn emit_is_seen_by_tail() {
        let namespace = Namespace::on_amqp091_broker("cli-tail");
        let url = namespace.url();
        let tail = start(
            url,
            &["tail", "orders.#", "--count", "1", "--json"],
            "following",
        );
        let out = run(
            url,
            &[
                "emit",
                "orders.created",
                "{\"order\":42}",
                "--header",
                "tenant=acme",
                "--as",
                "host1.shop.1",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let output = wait(tail);
        let line: serde_json::Value =
            serde_json::from_str(output.lines().next().unwrap_or("")).expect("one JSON line");
        assert_eq!(line["id"], id.as_str());
        assert_eq!(line["routing_key"], "orders.created");
        assert_eq!(line["emitter"], "host1.shop.1");
        assert_eq!(line["headers"]["tenant"], "acme");
        assert_eq!(line["payload"]["order"], 42);
    }

    #[test]
    fn dead_letter_then_replay_then_delivered() {
        let namespace = Namespace::on_amqp091_broker("cli-dead");
        let url = namespace.url();
        {
            // A worker that always fails: the job is dead-lettered (serve tries once).
            let _worker = start(
                url,
                &["serve", "jobs.resize", "--exec", "echo broken >&2; exit 1"],
                "serving",
            );
            let out = run(url, &["emit", "jobs.resize", "{\"file\":\"a.png\"}"]);
            assert!(out.status.success(), "{}", stderr(&out));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let out = run(url, &["dead-letters", "jobs.resize"]);
                let listed = String::from_utf8_lossy(&out.stdout).into_owned();
                if listed.contains("key=jobs.resize") {
                    assert!(
                        listed.contains("attempts=1") && listed.contains("broken"),
                        "{listed}"
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no dead letter listed: {listed}{}",
                    stderr(&out)
                );
            }
        }
        let tail = start(url, &["tail", "jobs.#", "--count", "1"], "following");
        let out = run(url, &["dead-letters", "jobs.resize", "--replay"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("1 dead letters"), "{}", stderr(&out));
        assert!(
            wait(tail).contains("a.png"),
            "the replayed job was not delivered"
        );
        let out = run(url, &["dead-letters", "jobs.resize"]);
        assert!(
            stderr(&out).contains("0 dead letters"),
            "replayed letter still there: {}",
            stderr(&out)
        );
    }

    /// Waits (at most 20 s) for a background command to exit and returns its stdout.
    fn wait(mut background: Background) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while background.0.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "background tidings did not finish"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        std::io::Read::read_to_string(background.0.stdout.as_mut().expect("stdout"), &mut out)
            .expect("read");
        out
    }
}
