//! Every mistake in a system file gets the line, the column and the field.

use std::time::Duration;

use super::*;

/// The one problem `text` has, as `line:column: field: message`.
fn problem(text: &str) -> String {
    let e = System::parse(text, "t.toml").expect_err("a bad file");
    assert_eq!(e.problems().len(), 1, "one problem expected: {e}");
    e.to_string()
        .strip_prefix("t.toml:")
        .expect("file first")
        .to_owned()
}

const GOOD: &str = r#"
url = "amqp://guest:guest@127.0.0.1:5672/%2f?exchange=shop"

[[component]]
name = "fetcher"
command = "fetcher --fast"
replicas = 3
env = { RUST_LOG = "info" }

[[component.worker]]
group = "fetch"
patterns = ["fetch.#", "refetch.*"]
prefetch = 4
concurrency = 2
max_attempts = 5
retry_delay = "250ms"
ttl = "30s"

[[component.fanout]]
patterns = ["config.changed"]

[[component.service]]
name = "fetcher.stats"
dead_letter_queue = "stats-dead"

[[component.subscribe]]
patterns = ["log.#"]

[[component]]
name = "persister"
command = "persister"
[[component.worker]]
patterns = ["fetched.#"]
"#;

#[test]
fn a_good_file_gives_components_with_their_settings() {
    let system = System::parse(GOOD, "t.toml").unwrap();
    assert_eq!(
        system.file_url(),
        Some("amqp://guest:guest@127.0.0.1:5672/%2f?exchange=shop")
    );
    let fetcher = system.component("fetcher").unwrap();
    assert_eq!(fetcher.command, "fetcher --fast");
    assert_eq!(fetcher.replicas, 3);
    assert_eq!(fetcher.env["RUST_LOG"], "info");
    let fetch = fetcher.intake("fetch").unwrap();
    assert_eq!(fetch.kind, IntakeKind::Worker);
    assert_eq!(fetch.patterns, ["fetch.#", "refetch.*"]);
    assert_eq!(fetch.prefetch, Some(4));
    assert_eq!(fetch.concurrency, Some(2));
    assert_eq!(fetch.max_attempts, Some(5));
    assert_eq!(fetch.retry_delay, Some(Duration::from_millis(250)));
    assert_eq!(fetch.ttl, Some(Duration::from_secs(30)));
    // A fanout's group is the component's name; each replica has its own.
    let fanout = fetcher.intake("fetcher").unwrap();
    assert_eq!(fanout.kind, IntakeKind::Fanout);
    assert_eq!(
        fetcher.intakes_for(2)[1].group.as_deref(),
        Some("fetcher.2")
    );
    assert_eq!(fetcher.intakes_for(2)[0].group.as_deref(), Some("fetch"));
    let stats = fetcher.intake("fetcher.stats").unwrap();
    assert_eq!(stats.service_name(), Some("fetcher.stats"));
    assert_eq!(stats.patterns, ["fetcher.stats"]);
    assert_eq!(stats.dead_letter_queue(), "stats-dead");
    assert_eq!(fetcher.intakes[3].group, None);
    assert_eq!(fetcher.intakes[3].dead_letter_queue(), "broadcast");
    // A worker's default group is the component's name.
    let persister = system.component("persister").unwrap();
    assert_eq!(persister.replicas, 1);
    assert_eq!(persister.intakes[0].group.as_deref(), Some("persister"));
    assert_eq!(system.ttl_for("refetch.x"), Some(Duration::from_secs(30)));
}

#[test]
fn the_topology_lists_durable_groups_only() {
    let system = System::parse(GOOD, "t.toml").unwrap();
    let topology = system.topology();
    let names: Vec<&str> = topology.groups().iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "fetch",
            "fetcher.1",
            "fetcher.2",
            "fetcher.3",
            "fetcher.stats",
            "persister"
        ]
    );
    let stats = &topology.groups()[4];
    assert_eq!(stats.patterns.iter().collect::<Vec<_>>(), ["fetcher.stats"]);
    assert_eq!(
        stats.dead_letter_queues.iter().collect::<Vec<_>>(),
        ["stats-dead"]
    );
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let e = problem("[[component]]\nname = \"a\"\ncommand = \"x\"\nreplica = 2\n");
    assert!(
        e.starts_with("4:1: replica: unknown field `replica`, expected one of"),
        "{e}"
    );
    let e = problem(
        "[[component]]\nname = \"a\"\ncommand = \"x\"\n[[component.worker]]\npattern = [\"a\"]\n",
    );
    assert!(
        e.starts_with("5:1: pattern: unknown field `pattern`"),
        "{e}"
    );
    let e = problem("urll = \"memory://\"\n[[component]]\nname = \"a\"\ncommand = \"x\"\n");
    assert!(e.starts_with("1:1: urll: unknown field `urll`"), "{e}");
}

#[test]
fn a_bad_pattern_says_what_is_wrong_where() {
    let e = problem(
        "[[component]]\nname = \"a\"\ncommand = \"x\"\n[[component.worker]]\npatterns = [\"ok.#\", \"log..error\"]\n",
    );
    assert_eq!(
        e,
        "5:21: component \"a\" > worker #1 > patterns[1]: pattern \"log..error\" has an empty word at \
         position 2; remove the doubled, leading or trailing dot"
    );
    let e = problem(
        "[[component]]\nname = \"a\"\ncommand = \"x\"\n[[component.subscribe]]\npatterns = [\"log.err*\"]\n",
    );
    assert!(e.starts_with("5:13: component \"a\" > subscribe #1 > patterns[0]: pattern \"log.err*\" has the illegal character '*'"), "{e}");
    let e = problem(
        "[[component]]\nname = \"a\"\ncommand = \"x\"\n[[component.worker]]\npatterns = []\n",
    );
    assert!(
        e.starts_with("5:12: component \"a\" > worker #1 > patterns: is empty"),
        "{e}"
    );
    let e = problem(
        "[[component]]\nname = \"a\"\ncommand = \"x\"\n[[component.service]]\nname = \"stats.*\"\n",
    );
    assert!(
        e.starts_with("5:8: component \"a\" > service #1 > name: routing key \"stats.*\""),
        "{e}"
    );
}

#[test]
fn two_components_with_one_name_are_refused() {
    let e = problem("[[component]]\nname = \"a\"\ncommand = \"x\"\n\n[[component]]\nname = \"a\"\ncommand = \"y\"\n");
    assert_eq!(
        e,
        "6:8: component \"a\" > name: two components are named \"a\": this one and the one at line 2"
    );
    let e = problem("[[component]]\nname = \"a.b\"\ncommand = \"x\"\n");
    assert!(
        e.starts_with("2:8: component \"a.b\" > name: \"a.b\" is not one word"),
        "{e}"
    );
}

#[test]
fn replicas_below_one_are_refused() {
    let e = problem("[[component]]\nname = \"a\"\ncommand = \"x\"\nreplicas = 0\n");
    assert_eq!(e, "4:12: component \"a\" > replicas: must be at least 1");
    let e = problem("[[component]]\nname = \"a\"\ncommand = \"x\"\nreplicas = -2\n");
    assert_eq!(e, "4:12: component \"a\" > replicas: must be at least 1");
    let e = problem("[[component]]\nname = \"a\"\ncommand = \"x\"\nreplicas = \"two\"\n");
    assert!(
        e.starts_with("4:12: replicas: invalid type: string \"two\""),
        "{e}"
    );
    let e = problem("[[component]]\nname = \"a\"\ncommand = \"x\"\n[[component.worker]]\npatterns = [\"a\"]\nprefetch = 70000\n");
    assert_eq!(
        e,
        "6:12: component \"a\" > worker #1 > prefetch: must be at most 65535"
    );
}

#[test]
fn a_missing_command_or_name_is_refused() {
    let e = problem("[[component]]\nname = \"a\"\nreplicas = 2\n");
    assert_eq!(
        e,
        "1:1: component \"a\" > command: missing: the shell command that runs one replica"
    );
    let e = problem("[[component]]\nname = \"a\"\ncommand = \"  \"\n");
    assert_eq!(e, "3:11: component \"a\" > command: is empty");
    let e = problem("url = \"memory://\"\n[[component]]\ncommand = \"x\"\n");
    assert_eq!(e, "2:1: component #1: missing `name`");
    let e = problem("url = \"memory://\"\n");
    assert!(
        e.starts_with("1:1: component: no [[component]] table"),
        "{e}"
    );
}

#[test]
fn bad_durations_are_refused() {
    let base =
        "[[component]]\nname = \"a\"\ncommand = \"x\"\n[[component.worker]]\npatterns = [\"a\"]\n";
    let e = problem(&format!("{base}ttl = \"30 parsecs\"\n"));
    assert!(
        e.starts_with("6:7: component \"a\" > worker #1 > ttl: \"30 parsecs\" is not a duration"),
        "{e}"
    );
    assert!(e.contains("\"30s\""), "{e}");
    let e = problem(&format!("{base}retry_delay = \"0s\"\n"));
    assert_eq!(
        e,
        "6:15: component \"a\" > worker #1 > retry_delay: must be longer than 0"
    );
    let e = problem(&format!("{base}ttl = 30\n"));
    assert!(e.starts_with("6:7: ttl: invalid type: integer `30`"), "{e}");
}

#[test]
fn keys_of_another_kind_and_shared_groups_are_refused() {
    let e = problem("[[component]]\nname = \"a\"\ncommand = \"x\"\n[[component.service]]\nname = \"s\"\npatterns = [\"s.#\"]\n");
    assert!(
        e.starts_with("6:12: component \"a\" > service #1 > patterns: does not apply here"),
        "{e}"
    );
    let e = problem("[[component]]\nname = \"a\"\ncommand = \"x\"\n[[component.subscribe]]\ngroup = \"g\"\npatterns = [\"s.#\"]\n");
    assert!(
        e.starts_with("5:9: component \"a\" > subscribe #1 > group: does not apply here"),
        "{e}"
    );
    let e = problem("[[component]]\nname = \"stats\"\ncommand = \"x\"\n[[component.worker]]\npatterns = [\"s.#\"]\n[[component]]\nname = \"b\"\ncommand = \"y\"\n[[component.service]]\nname = \"stats\"\n");
    assert!(
        e.starts_with("10:8: component \"b\" > service #1 > name: group \"stats\" is already taken by component \"stats\" > worker #1 (its default group) (line 4)"),
        "{e}"
    );
}

#[test]
fn syntax_errors_and_bad_urls_have_positions_too() {
    let e = problem("[[component]\nname = \"a\"\n");
    assert!(e.starts_with("1:"), "{e}");
    let e = problem("url = \"not a url\"\n[[component]]\nname = \"a\"\ncommand = \"x\"\n");
    assert!(e.starts_with("1:7: url: not a broker url"), "{e}");
}

#[test]
fn all_problems_are_reported_in_line_order() {
    let e = System::parse(
        "[[component]]\nname = \"a\"\nreplicas = 0\n[[component]]\nname = \"a\"\ncommand = \"x\"\n",
        "t.toml",
    )
    .unwrap_err();
    let lines: Vec<usize> = e.problems().iter().map(|p| p.line).collect();
    assert_eq!(lines, [1, 3, 5], "{e}");
    assert_eq!(e.to_string().lines().count(), 3);
}

#[test]
fn an_unknown_component_names_the_known_ones() {
    let system = System::parse(GOOD, "t.toml").unwrap();
    let e = system.component("mailer").unwrap_err();
    assert_eq!(
        e.to_string(),
        "t.toml has no component \"mailer\"; it has fetcher, persister"
    );
    let e: tidings_core::Error = e.into();
    assert_eq!(e.kind(), tidings_core::ErrorKind::InvalidConfig);
}
