//! The comparison, on hand-made broker states.

use super::*;

const FILE: &str = r#"
[[component]]
name = "fetcher"
command = "f"
[[component.worker]]
group = "fetch"
patterns = ["fetch.#", "refetch.*"]
"#;

fn topology() -> Topology {
    System::parse(FILE, "t.toml").unwrap().topology()
}

fn queue(name: &str, arguments: Value) -> Queue {
    Queue {
        name: name.into(),
        durable: true,
        auto_delete: false,
        exclusive: false,
        arguments: arguments.as_object().cloned().unwrap(),
    }
}

fn binding(source: &str, queue: &str, key: &str) -> (String, String, String) {
    (source.into(), queue.into(), key.into())
}

/// What `tidings topology apply` leaves on RabbitMQ over AMQP 0.9.1 (classic queues).
fn applied() -> Observed {
    Observed {
        queues: vec![
            queue("shop.group.fetch", json!({})),
            queue("shop.dead.fetch", json!({"x-queue-type": "classic"})),
            queue("shop.broadcast.x", json!({})),
        ],
        bindings: [
            binding("shop", "shop.group.fetch", "fetch.#"),
            binding("shop", "shop.group.fetch", "refetch.*"),
            binding("", "shop.group.fetch", "shop.group.fetch"),
        ]
        .into(),
        exchanges: vec![("shop".into(), "topic".into(), true)],
    }
}

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?exchange=shop";

#[test]
fn what_apply_declares_matches() {
    let expected = expected(URL, &topology()).unwrap();
    assert_eq!(diff(&expected, &applied()), Vec::<String>::new());
}

#[test]
fn every_difference_is_one_line() {
    let expected = expected(URL, &topology()).unwrap();
    let mut observed = applied();
    observed.queues.retain(|q| q.name != "shop.dead.fetch");
    observed.queues[0].arguments = json!({"x-max-length": 10}).as_object().cloned().unwrap();
    observed.queues.push(queue("shop.group.old", json!({})));
    let mut temporary = queue("shop.group.tmp", json!({}));
    temporary.auto_delete = true;
    observed.queues.push(temporary);
    observed
        .bindings
        .remove(&binding("shop", "shop.group.fetch", "refetch.*"));
    observed
        .bindings
        .insert(binding("shop", "shop.group.fetch", "old.#"));
    observed.exchanges.clear();
    assert_eq!(
        diff(&expected, &observed),
        [
            "missing exchange shop (topic, durable)",
            "wrong arguments of queue shop.group.fetch (group \"fetch\" of fetcher): has {\"x-max-length\":10}, the url needs {}",
            "missing queue shop.dead.fetch (dead letters of \"fetch\")",
            "missing binding shop → shop.group.fetch with \"refetch.*\"",
            "extra binding shop → shop.group.fetch with \"old.#\": not in the file",
            "extra queue shop.group.old: a durable group not in the file",
        ]
    );
}

#[test]
fn a_non_durable_queue_is_wrong_settings() {
    let expected = expected(URL, &topology()).unwrap();
    let mut observed = applied();
    observed.queues[0].durable = false;
    observed.queues[0].auto_delete = true;
    let lines = diff(&expected, &observed);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("wrong settings of queue shop.group.fetch"),
        "{lines:?}"
    );
}

#[test]
fn a_quorum_url_needs_quorum_queues() {
    let url = "amqp://h1:5672,h2:5672/%2f?exchange=shop";
    let expected = expected(url, &topology()).unwrap();
    let lines = diff(&expected, &applied());
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].ends_with(
            "has {}, the url needs {\"x-delivery-limit\":2147483647,\"x-queue-type\":\"quorum\"}"
        ),
        "{lines:?}"
    );
    let classic = expected_for("amqp://h1,h2/%2f?exchange=shop&queue-type=classic");
    assert!(diff(&classic, &applied()).is_empty());
}

fn expected_for(url: &str) -> Expected {
    expected(url, &topology()).unwrap()
}

#[test]
fn stomp_groups_are_bound_to_amq_topic_under_the_namespace() {
    let expected = expected_for("stomp://guest:guest@127.0.0.1:61613/?exchange=shop");
    assert_eq!(expected.exchange, None);
    assert!(expected
        .bindings
        .contains(&binding("amq.topic", "shop.group.fetch", "shop.fetch.#")));
}

#[test]
fn quorum_groups_over_stomp_have_only_the_queue_type() {
    let expected = expected_for("stomp://h1:61613,h2:61613/?exchange=shop");
    let arguments: Vec<String> = expected
        .queues
        .iter()
        .map(|(name, _, args)| format!("{name} {}", Value::Object(args.clone())))
        .collect();
    assert_eq!(
        arguments,
        [
            "shop.group.fetch {\"x-queue-type\":\"quorum\"}",
            "shop.dead.fetch {}"
        ]
    );
    let amqp10 = expected_for("amqp10://h/?exchange=shop&queue-type=quorum");
    assert_eq!(amqp10.queues[1].2["x-delivery-limit"], i32::MAX);
}

#[test]
fn memory_cannot_be_checked_and_says_so() {
    let e = expected("memory://x", &topology()).unwrap_err();
    assert_eq!(e.code, 2);
    assert!(e.message.contains("no broker to check"), "{}", e.message);
    let e = expected("kafka://h", &topology()).unwrap_err();
    assert!(e.message.contains("kafka"), "{}", e.message);
}

#[test]
fn the_management_flag_replaces_the_urls() {
    assert_eq!(
        with_management(
            "amqp://h/%2f?exchange=a&management=http://old",
            Some("http://m:1/")
        ),
        "amqp://h/%2f?exchange=a&management=http%3A%2F%2Fm%3A1%2F"
    );
    assert_eq!(
        with_management("amqp://h", Some("http://m")),
        "amqp://h?management=http%3A%2F%2Fm"
    );
    assert_eq!(with_management("amqp://h", None), "amqp://h");
}
