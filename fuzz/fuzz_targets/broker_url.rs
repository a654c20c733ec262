//! `BrokerUrl` parsing, its accessors and option taking, and password redaction, on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;
use tidings_core::broker_url::{bracketed, redact, BrokerUrl};

const SCHEMES: &[&str] = &[
    "amqp",
    "amqps",
    "amqp10",
    "amqp10s",
    "stomp",
    "stomp+ssl",
    "memory",
];

/// Whether `text` shows no password: as a URL, its password (if any) is `***`.
fn hides_password(text: &str) {
    if let Ok(url) = url::Url::parse(text) {
        assert!(
            matches!(url.password(), None | Some("***")),
            "a password shows in {text:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let redacted = redact(input);
    hides_password(&redacted);
    // Redaction escapes each level of URLs in options once more; it looks two levels deep, so
    // the text grows by a bounded factor (it once grew with the square of the nesting).
    assert!(
        redacted.len() <= 100 * input.len() + 100,
        "{} bytes redacted to {}",
        input.len(),
        redacted.len()
    );
    let mut url = match BrokerUrl::parse(input, "fuzz", SCHEMES) {
        Ok(url) => url,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    hides_password(url.redacted());
    // The login and virtual host are the URL's, percent-decoded (and nothing else: `+` and `&`
    // are themselves there).
    let raw = url::Url::parse(input).expect("parsed once");
    let decoded = |text: &str| percent_decode_str(text).decode_utf8_lossy().into_owned();
    assert_eq!(
        url.username(),
        Some(decoded(raw.username())).filter(|u| !u.is_empty())
    );
    assert_eq!(url.password(), raw.password().map(decoded));
    if !matches!(raw.path(), "" | "/") {
        assert_eq!(url.vhost(), decoded(&raw.path()[1..]));
    }
    hides_password(&format!("{url:?}"));
    assert!(SCHEMES.contains(&url.scheme()));
    assert!(!url.exchange().is_empty() && url.exchange().len() <= 200);
    let host = url.host();
    let _ = bracketed(&host);
    let _ = (url.port_or(1), url.username(), url.password(), url.vhost());
    let _ = url.publish_timeout();
    let _ = url.take("dialect");
    let _ = url.take_ms("heartbeat_ms");
    let _ = url.take_bool("persistent");
    let _ = url.reject_unknown(&["dialect", "heartbeat_ms", "persistent"]);
    // What is handed to a client library parses again, to the same place and login, without
    // the options taken.
    let mut again = BrokerUrl::parse(url.secret_url(), "fuzz", SCHEMES)
        .unwrap_or_else(|e| panic!("{:?} does not parse again: {e}", url.redacted()));
    assert_eq!(again.exchange(), tidings_core::broker_url::DEFAULT_EXCHANGE);
    assert_eq!(again.take("dialect"), None);
    assert_eq!(
        (
            again.host(),
            again.port_or(1),
            again.username(),
            again.password(),
            again.vhost()
        ),
        (
            url.host(),
            url.port_or(1),
            url.username(),
            url.password(),
            url.vhost()
        )
    );
});
