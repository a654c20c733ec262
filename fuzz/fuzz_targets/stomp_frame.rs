//! The STOMP driver's frame splitter (MESSAGE and RECEIPT frames, heart-beats; other frames go
//! to async-stomp) and its header unescaping, on bytes as a broker could send them.
//!
//! Input: one byte choosing the size of the pieces the bytes arrive in, then the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_stomp::fuzzing::{self, Frame};

const TOPIC: &str = "/topic/tidings.";

fn frames(frames: Vec<Frame>) -> Vec<Frame> {
    frames
        .into_iter()
        .filter(|f| !matches!(f, Frame::Heartbeat))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let (whole, whole_error) = fuzzing::read([input], TOPIC);
    // However the bytes are cut into reads, the same frames come out (heart-beats aside: they
    // are reported only while no frame follows yet).
    let piece = usize::from(first % 32) + 1;
    let (pieces, pieces_error) = fuzzing::read(input.chunks(piece), TOPIC);
    let (whole, pieces) = (frames(whole), frames(pieces));
    assert_eq!(whole, pieces, "pieces of {piece}");
    assert_eq!(
        whole_error.is_some(),
        pieces_error.is_some(),
        "pieces of {piece}: {whole_error:?} / {pieces_error:?}"
    );

    for frame in &whole {
        let Frame::Message { headers, .. } = frame else {
            continue;
        };
        for (name, value) in headers {
            assert!(!name.contains(&b'\n') && !value.contains(&b'\n'));
            fuzzing::unescape(name);
            fuzzing::unescape(value);
            for (name, value) in fuzzing::items(value) {
                assert!(!name.contains(&b';') && !value.contains(&b';'));
                fuzzing::unescape_item(name);
                fuzzing::unescape_item(value);
            }
        }
    }

    // Unescaping undoes the driver's escaping, for any text.
    let text = String::from_utf8_lossy(input);
    assert_eq!(fuzzing::unescape(&fuzzing::escape(&text)), text);
    assert_eq!(fuzzing::unescape_item(&fuzzing::escape_item(&text)), text);
    // And never fails on what no escaping produced.
    fuzzing::unescape(input);
    fuzzing::unescape_item(input);
    fuzzing::items(input);
});
