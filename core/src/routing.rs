//! Routing keys and subscription patterns, with AMQP topic semantics.
//!
//! A routing key is a list of words separated by dots: `log.host1.worker.1.error`. A word is made
//! of ASCII letters, digits, `_` and `-`. A pattern is a routing key whose words may also be `*`
//! (exactly one word) or `#` (zero or more words), anywhere in the pattern — `log.#.error` matches
//! `log.error` and `log.a.b.error`.
//!
//! Every driver routes with these rules. A broker that cannot express a pattern natively
//! subscribes to something wider and filters with [`Pattern::matches`].

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};

/// The longest routing key or pattern, in bytes (AMQP's short-string limit).
pub const MAX_KEY_LEN: usize = 255;

/// One pass over the bytes: the hot path for keys that are fine (every emit validates its key).
fn is_well_formed(input: &str, allow_wildcards: bool) -> bool {
    let bytes = input.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY_LEN {
        return false;
    }
    let mut word_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'.' => {
                if i == word_start {
                    return false;
                }
                word_start = i + 1;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' => {}
            b'*' | b'#' if allow_wildcards => {
                // A wildcard must be a whole word.
                let whole = i == word_start && bytes.get(i + 1).is_none_or(|n| *n == b'.');
                if !whole {
                    return false;
                }
            }
            _ => return false,
        }
    }
    word_start < bytes.len()
}

fn check_words(input: &str, what: &str, kind: ErrorKind, allow_wildcards: bool) -> Result<()> {
    if is_well_formed(input, allow_wildcards) {
        return Ok(());
    }
    let err = |why: String| Error::new(kind, format!("{what} {input:?} {why}"));
    if input.is_empty() {
        return Err(err(
            "is empty; use dot-separated words like `orders.created`".into(),
        ));
    }
    if input.len() > MAX_KEY_LEN {
        return Err(err(format!(
            "is {} bytes long; the limit is {MAX_KEY_LEN}",
            input.len()
        )));
    }
    for (index, word) in input.split('.').enumerate() {
        if word.is_empty() {
            return Err(err(format!(
                "has an empty word at position {}; remove the doubled, leading or trailing dot",
                index + 1
            )));
        }
        if allow_wildcards && (word == "*" || word == "#") {
            continue;
        }
        // Bytes first (the hot path: every emit validates its key); chars only to report.
        if word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            continue;
        }
        if let Some(bad) = word
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            let hint = if matches!(bad, '*' | '#') && !allow_wildcards {
                "; wildcards belong in subscription patterns, not in routing keys"
            } else if matches!(bad, '*' | '#') {
                "; a wildcard must be a whole word, like `log.*.error`"
            } else {
                "; words may use ASCII letters, digits, `_` and `-`"
            };
            return Err(err(format!(
                "has the illegal character {bad:?} in word {word:?}{hint}"
            )));
        }
    }
    Ok(())
}

/// A validated routing key: what an event is published under.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutingKey(Arc<str>);

impl RoutingKey {
    /// Validates `key`.
    ///
    /// # Examples
    /// ```
    /// use tidings_core::RoutingKey;
    /// assert!(RoutingKey::new("log.host1.error").is_ok());
    /// assert!(RoutingKey::new("log..error").is_err());
    /// assert!(RoutingKey::new("log.*").is_err());
    /// ```
    pub fn new(key: impl AsRef<str>) -> Result<Self> {
        let key = key.as_ref();
        Self::validate(key)?;
        Ok(Self(key.into()))
    }

    /// Checks `key` without keeping it: the same rules and errors as [`RoutingKey::new`].
    pub fn validate(key: &str) -> Result<()> {
        check_words(key, "routing key", ErrorKind::InvalidRoutingKey, false)
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The words of the key.
    pub fn words(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Display for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoutingKey({:?})", &*self.0)
    }
}

impl AsRef<str> for RoutingKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// One word of a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A literal word.
    Word(Box<str>),
    /// `*`: exactly one word.
    One,
    /// `#`: zero or more words.
    Many,
}

/// A validated subscription pattern with AMQP topic semantics.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Arc<str>,
    segments: Arc<[Segment]>,
}

impl Pattern {
    /// Validates `pattern`.
    ///
    /// # Examples
    /// ```
    /// use tidings_core::Pattern;
    /// let p = Pattern::new("log.#.error").unwrap();
    /// assert!(p.matches("log.error"));
    /// assert!(p.matches("log.host1.worker.error"));
    /// assert!(!p.matches("log.host1.info"));
    /// assert!(Pattern::new("log.er*").is_err());
    /// ```
    pub fn new(pattern: impl AsRef<str>) -> Result<Self> {
        let text = pattern.as_ref();
        check_words(text, "pattern", ErrorKind::InvalidPattern, true)?;
        let segments = text
            .split('.')
            .map(|w| match w {
                "*" => Segment::One,
                "#" => Segment::Many,
                w => Segment::Word(w.into()),
            })
            .collect();
        Ok(Self {
            text: text.into(),
            segments,
        })
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed words, for drivers that translate patterns into a broker's own syntax.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether the pattern has no wildcard, so it matches exactly one key.
    pub fn is_exact(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Word(_)))
    }

    /// Whether `key` matches this pattern. `key` is not validated; an invalid key simply
    /// matches what its words match.
    pub fn matches(&self, key: &str) -> bool {
        // Fast path for exact patterns: one comparison, no allocation.
        if self.is_exact() {
            return &*self.text == key;
        }
        // Without `#`, words pair up one to one: walk both, no table needed.
        if !self.segments.iter().any(|s| matches!(s, Segment::Many)) {
            let mut words = key.split('.');
            return self
                .segments
                .iter()
                .all(|segment| match (segment, words.next()) {
                    (_, None) => false,
                    (Segment::Word(w), Some(word)) => **w == *word,
                    (_, Some(_)) => true,
                })
                && words.next().is_none();
        }
        let words: smallvec::SmallWords<'_> = smallvec::SmallWords::split(key);
        matches_segments(&self.segments, words.as_slice())
    }
}

/// Dynamic programming over (pattern position, key position): linear in their product, so
/// several `#` never blow up as backtracking would.
fn matches_segments(segments: &[Segment], words: &[&str]) -> bool {
    // reach[j] == true: the pattern prefix seen so far can consume exactly j words.
    let mut inline = [false; 17];
    let mut heap = Vec::new();
    let reach: &mut [bool] = if words.len() < inline.len() {
        &mut inline[..=words.len()]
    } else {
        heap.resize(words.len() + 1, false);
        &mut heap
    };
    reach[0] = true;
    for segment in segments {
        match segment {
            Segment::Many => {
                // `#` extends any reachable position to every later one.
                let mut seen = false;
                for r in reach.iter_mut() {
                    seen |= *r;
                    *r = seen;
                }
            }
            Segment::One | Segment::Word(_) => {
                for j in (0..words.len()).rev() {
                    let ok = match segment {
                        Segment::Word(w) => **w == *words[j],
                        _ => true,
                    };
                    reach[j + 1] = reach[j] && ok;
                }
                reach[0] = false;
            }
        }
        if !reach.iter().any(|r| *r) {
            return false;
        }
    }
    reach[words.len()]
}

mod smallvec {
    /// Key words on the stack for the common short key; no allocation up to 16 words.
    /// Lives only on the stack for one match, so the large inline variant is intended.
    #[allow(clippy::large_enum_variant)]
    pub(super) enum SmallWords<'a> {
        Inline([&'a str; 16], usize),
        Heap(Vec<&'a str>),
    }

    impl<'a> SmallWords<'a> {
        pub(super) fn split(key: &'a str) -> Self {
            let mut inline = [""; 16];
            let mut len = 0;
            for word in key.split('.') {
                if len == inline.len() {
                    return Self::Heap(key.split('.').collect());
                }
                inline[len] = word;
                len += 1;
            }
            Self::Inline(inline, len)
        }

        pub(super) fn as_slice(&self) -> &[&'a str] {
            match self {
                Self::Inline(words, len) => &words[..*len],
                Self::Heap(words) => words,
            }
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, k: &str) -> bool {
        Pattern::new(p).unwrap().matches(k)
    }

    #[test]
    fn star_is_exactly_one_word() {
        assert!(m("a.*.c", "a.b.c"));
        assert!(!m("a.*.c", "a.c"));
        assert!(!m("a.*.c", "a.b.b.c"));
        assert!(m("*", "a"));
        assert!(!m("*", "a.b"));
    }

    #[test]
    fn hash_is_zero_or_more_words_anywhere() {
        assert!(m("#", "a"));
        assert!(m("#", "a.b.c"));
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b.c"));
        assert!(!m("a.#", "b.a"));
        assert!(m("a.#.z", "a.z"));
        assert!(m("a.#.z", "a.b.c.z"));
        assert!(!m("a.#.z", "a.b.c"));
        assert!(m("#.z", "z"));
        assert!(m("#.z", "a.b.z"));
        assert!(m("a.#.#.z", "a.z"));
        assert!(m("#.*", "a"));
        assert!(m("a.*.#", "a.b"));
        assert!(!m("a.*.#", "a"));
    }

    #[test]
    fn fast_and_detailed_validation_agree() {
        for key in [
            "a", "a.b", "a-b_c.D9", "a..b", ".a", "a.", "", "a.*", "a b", "ä.b", "a.#.b",
        ] {
            assert_eq!(
                is_well_formed(key, false),
                RoutingKey::new(key).is_ok(),
                "{key:?}"
            );
        }
        for pattern in ["a.*", "#", "*.#.b", "a.b*", "a.#b", "#.", "a..#", "**"] {
            assert_eq!(
                is_well_formed(pattern, true),
                Pattern::new(pattern).is_ok(),
                "{pattern:?}"
            );
        }
    }

    #[test]
    fn many_hashes_stay_linear() {
        let p = "#.a.#.a.#.a.#.a.#.a.#.a.#.b";
        let k = vec!["a"; 60].join(".");
        assert!(!m(p, &k));
    }

    #[test]
    fn long_keys_match_without_panicking() {
        let k = vec!["w"; 40].join(".");
        assert!(m("w.#.w", &k));
        assert!(!m("w.*", &k));
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        let e = RoutingKey::new("").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidRoutingKey);
        assert!(e.to_string().contains("empty"));
        let e = RoutingKey::new("a..b").unwrap_err();
        assert!(e.to_string().contains("empty word at position 2"), "{e}");
        let e = RoutingKey::new("a.b c").unwrap_err();
        assert!(e.to_string().contains("illegal character ' '"), "{e}");
        let e = RoutingKey::new("a.#").unwrap_err();
        assert!(
            e.to_string()
                .contains("wildcards belong in subscription patterns"),
            "{e}"
        );
        let e = RoutingKey::new("a".repeat(256)).unwrap_err();
        assert!(e.to_string().contains("limit is 255"), "{e}");
        let e = Pattern::new("a.b*").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidPattern);
        assert!(e.to_string().contains("whole word"), "{e}");
    }
}
