//! Routing key and pattern validation and matching, against a plain reference implementation
//! of the rules in `core/src/routing.rs`.
//!
//! Input: a pattern, NUL, a key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_core::{ErrorKind, Pattern, RoutingKey, Segment};

/// The rules, word by word.
fn valid(text: &str, wildcards: bool) -> bool {
    !text.is_empty()
        && text.len() <= 255
        && text.split('.').all(|word| {
            (wildcards && (word == "*" || word == "#"))
                || (!word.is_empty()
                    && word
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        })
}

/// AMQP topic matching, by memoized recursion over (segment, word).
fn matches(segments: &[Segment], words: &[&str]) -> bool {
    let mut memo = vec![None; (segments.len() + 1) * (words.len() + 1)];
    fn go(
        s: usize,
        w: usize,
        segments: &[Segment],
        words: &[&str],
        memo: &mut Vec<Option<bool>>,
    ) -> bool {
        let at = s * (words.len() + 1) + w;
        if let Some(known) = memo[at] {
            return known;
        }
        let result = match segments.get(s) {
            None => w == words.len(),
            Some(Segment::Many) => {
                go(s + 1, w, segments, words, memo)
                    || (w < words.len() && go(s, w + 1, segments, words, memo))
            }
            Some(Segment::One) => w < words.len() && go(s + 1, w + 1, segments, words, memo),
            Some(Segment::Word(word)) => {
                w < words.len() && **word == *words[w] && go(s + 1, w + 1, segments, words, memo)
            }
        };
        memo[at] = Some(result);
        result
    }
    go(0, 0, segments, words, &mut memo)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, key) = text.split_once('\0').unwrap_or((text, ""));

    let routing_key = RoutingKey::new(key);
    assert_eq!(routing_key.is_ok(), valid(key, false), "key {key:?}");
    assert_eq!(RoutingKey::validate(key).is_ok(), routing_key.is_ok());
    match &routing_key {
        Ok(k) => {
            assert_eq!(k.as_str(), key);
            assert_eq!(
                k.words().collect::<Vec<_>>(),
                key.split('.').collect::<Vec<_>>()
            );
            // A key is a pattern matching exactly itself.
            let p = Pattern::new(key).expect("a key is a pattern");
            assert!(p.is_exact() && p.matches(key));
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidRoutingKey);
            let _ = e.to_string();
        }
    }

    let parsed = Pattern::new(pattern);
    assert_eq!(parsed.is_ok(), valid(pattern, true), "pattern {pattern:?}");
    let p = match parsed {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidPattern);
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(p.as_str(), pattern);
    assert_eq!(p.segments().len(), pattern.split('.').count());
    // Matching takes any text as the key, valid or not.
    let words: Vec<&str> = key.split('.').collect();
    assert_eq!(
        p.matches(key),
        matches(p.segments(), &words),
        "{pattern:?} against {key:?}"
    );
});
