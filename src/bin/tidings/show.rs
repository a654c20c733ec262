//! How events look on screen: one line each — time, emitter, routing key, compact payload —
//! coloured on a terminal, or one JSON object per line for machines.

use std::io::IsTerminal;

use serde_json::{json, Value};
use tidings::codec::{JSON, POSTCARD};
use tidings::Envelope;

/// Plain, coloured or JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Plain,
    Colour,
    Json,
}

impl Style {
    /// JSON if asked; colours only on a terminal and without NO_COLOR.
    pub(crate) fn detect(json: bool) -> Self {
        if json {
            Self::Json
        } else if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            Self::Colour
        } else {
            Self::Plain
        }
    }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
pub(crate) fn clock(ms: u64) -> String {
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// The payload, compact: JSON as JSON, anything else as hex with its size.
pub(crate) fn payload(envelope: &Envelope) -> String {
    let base = envelope.content_type.split(';').next().unwrap_or("").trim();
    if base == JSON {
        if let Ok(value) = serde_json::from_slice::<Value>(&envelope.body) {
            return value.to_string();
        }
    }
    let kind = if base == POSTCARD { "postcard" } else { base };
    let shown: String = envelope
        .body
        .iter()
        .take(32)
        .map(|b| format!("{b:02x}"))
        .collect();
    let more = if envelope.body.len() > 32 { "…" } else { "" };
    format!("<{kind} {} bytes: {shown}{more}>", envelope.body.len())
}

/// One line for `tail`.
pub(crate) fn event_line(envelope: &Envelope, style: Style) -> String {
    match style {
        Style::Json => json!({
            "id": envelope.id,
            "time_ms": envelope.timestamp_ms,
            "emitter": envelope.emitter,
            "routing_key": envelope.routing_key,
            "event": envelope.event,
            "headers": envelope.headers,
            "content_type": envelope.content_type,
            "payload": match serde_json::from_slice::<Value>(&envelope.body) {
                Ok(value) if envelope.content_type.starts_with(JSON) => value,
                _ => Value::String(payload(envelope)),
            },
        })
        .to_string(),
        Style::Plain => format!(
            "{} {} {} {}",
            clock(envelope.timestamp_ms),
            envelope.emitter,
            envelope.routing_key,
            payload(envelope)
        ),
        Style::Colour => format!(
            "\x1b[2m{}\x1b[0m \x1b[36m{}\x1b[0m \x1b[1m{}\x1b[0m {}",
            clock(envelope.timestamp_ms),
            envelope.emitter,
            envelope.routing_key,
            payload(envelope)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings::Bytes;

    #[test]
    fn clock_shows_utc_time_of_day() {
        assert_eq!(clock(86_400_000 + 3_723_004), "01:02:03.004");
    }

    #[test]
    fn postcard_shows_as_hex_with_size() {
        let e = Envelope::new("k", POSTCARD, Bytes::from_static(&[1, 0xab]));
        assert_eq!(payload(&e), "<postcard 2 bytes: 01ab>");
        let e = Envelope::new("k", JSON, Bytes::from_static(b"{ \"a\" : 1 }"));
        assert_eq!(payload(&e), "{\"a\":1}");
    }
}
