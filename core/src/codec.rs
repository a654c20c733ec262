//! Codecs: how an event becomes bytes and back.
//!
//! The sender picks a codec; its content type travels in the envelope and the receiver decodes
//! by that content type, so senders may change codecs without coordinating with receivers.

use std::cell::Cell;

use bytes::Bytes;
use serde::de::{Deserialize, DeserializeOwned};
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};

mod depth;

/// Content type of [`Codec::Postcard`].
pub const POSTCARD: &str = "application/postcard";
/// Content type of [`Codec::Json`].
pub const JSON: &str = "application/json";

/// A payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// Compact binary (postcard), the default: fastest and smallest, Rust-to-Rust.
    #[default]
    Postcard,
    /// JSON, for peers written in other languages and for humans reading the wire.
    Json,
}

impl Codec {
    /// The MIME type written into the envelope.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Postcard => POSTCARD,
            Self::Json => JSON,
        }
    }

    /// The codec for a content type, ignoring parameters such as `; charset=utf-8`.
    pub fn for_content_type(content_type: &str) -> Option<Self> {
        // The exact types first: that is what tidings itself sends, once per message.
        match content_type {
            POSTCARD => return Some(Self::Postcard),
            JSON => return Some(Self::Json),
            _ => {}
        }
        let base = content_type.split(';').next().unwrap_or("").trim();
        match base {
            POSTCARD => Some(Self::Postcard),
            JSON | "text/json" => Some(Self::Json),
            _ => None,
        }
    }

    /// Encodes `value`.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes> {
        let bytes = match self {
            Self::Postcard => {
                let failed =
                    |e| Error::new(ErrorKind::Encode, format!("postcard: {e}")).with_source(e);
                // Measured first, so the buffer is allocated once, at its exact size, and
                // becomes `Bytes` without another allocation.
                let size =
                    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
                        .map_err(failed)?;
                postcard::to_extend(value, Vec::with_capacity(size)).map_err(failed)?
            }
            Self::Json => serde_json::to_vec(value)
                .map_err(|e| Error::new(ErrorKind::Encode, format!("json: {e}")).with_source(e))?,
        };
        Ok(Bytes::from(bytes))
    }

    /// Decodes `bytes` as the content type says. Never panics on hostile input.
    pub fn decode<T: DeserializeOwned>(content_type: &str, bytes: &[u8]) -> Result<T> {
        let type_name = std::any::type_name::<T>();
        let codec = Self::for_content_type(content_type).ok_or_else(|| {
            Error::new(
                ErrorKind::Decode,
                format!(
                    "cannot decode {type_name}: unknown content type {content_type:?} \
                     (tidings reads {POSTCARD} and {JSON})"
                ),
            )
        })?;
        match codec {
            Self::Postcard => match take_postcard(bytes) {
                // postcard reads what the type needs and stops: a body with bytes left over was
                // written for another type (or is not postcard at all, such as JSON sent with
                // the wrong content type), so it must not pass as this one.
                (Ok((value, [])), _) => Ok(value),
                (Ok((_, rest)), _) => Err(Error::new(
                    ErrorKind::Decode,
                    format!(
                        "cannot decode {type_name} from {} postcard bytes: {} byte{} left over \
                         (the body was written for another type or is not postcard)",
                        bytes.len(),
                        rest.len(),
                        if rest.len() == 1 { "" } else { "s" }
                    ),
                )),
                (Err(e), too_deep) => Err(Error::new(
                    ErrorKind::Decode,
                    if too_deep {
                        format!(
                            "cannot decode {type_name} from {} postcard bytes: values nested \
                             deeper than {POSTCARD_MAX_DEPTH} levels",
                            bytes.len()
                        )
                    } else {
                        format!(
                            "cannot decode {type_name} from {} postcard bytes: {e}",
                            bytes.len()
                        )
                    },
                )
                .with_source(e)),
            },
            Self::Json => serde_json::from_slice(bytes).map_err(|e| {
                Error::new(
                    ErrorKind::Decode,
                    format!("cannot decode {type_name} from json: {e}"),
                )
                .with_source(e)
            }),
        }
    }
}

/// How deeply a postcard body may nest: every sequence, tuple, struct, map, option, newtype and
/// enum variant is a level. postcard itself has no limit, and a body of nested values (for a
/// recursive type) would overflow the stack and abort the process.
const POSTCARD_MAX_DEPTH: usize = 256;

/// `postcard::take_from_bytes` under [`POSTCARD_MAX_DEPTH`], and whether the limit was hit.
fn take_postcard<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
) -> (postcard::Result<(T, &'a [u8])>, bool) {
    let hit = Cell::new(false);
    let mut deserializer = postcard::Deserializer::from_bytes(bytes);
    let limited = depth::Limited {
        inner: &mut deserializer,
        limit: depth::Limit::new(POSTCARD_MAX_DEPTH, &hit),
    };
    let result = T::deserialize(limited).and_then(|value| Ok((value, deserializer.finalize()?)));
    (result, hit.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i32,
        label: String,
    }

    #[test]
    fn both_codecs_round_trip() {
        let p = Point {
            x: -3,
            label: "a".into(),
        };
        for codec in [Codec::Postcard, Codec::Json] {
            let bytes = codec.encode(&p).unwrap();
            let back: Point = Codec::decode(codec.content_type(), &bytes).unwrap();
            assert_eq!(back, p);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let e = Codec::decode::<Point>(POSTCARD, &[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode);
        let e = Codec::decode::<Point>(JSON, b"{\"x\":").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = Codec::decode::<Point>("text/plain", b"hi").unwrap_err();
        assert!(e.to_string().contains("unknown content type"), "{e}");
    }

    /// JSON sent under the postcard content type used to decode as a valid event with garbage
    /// fields: postcard read a prefix and ignored the rest.
    #[test]
    fn a_body_with_bytes_left_over_is_not_this_type() {
        // Long enough that postcard finds a whole `Point` in its first 36 bytes.
        let json = Codec::Json
            .encode(&Point {
                x: 1,
                label: "a".repeat(40),
            })
            .unwrap();
        let e = Codec::decode::<Point>(POSTCARD, &json).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode);
        assert!(e.to_string().contains("left over"), "{e}");
        let mut bytes = Codec::Postcard
            .encode(&Point {
                x: 1,
                label: "a".into(),
            })
            .unwrap()
            .to_vec();
        bytes.push(0);
        let e = Codec::decode::<Point>(POSTCARD, &bytes).unwrap_err();
        assert!(e.to_string().contains("1 byte left over"), "{e}");
        // serde_json already refuses anything after the value.
        let e = Codec::decode::<Point>(JSON, br#"{"x":1,"label":"a"} x"#).unwrap_err();
        assert!(e.to_string().contains("trailing characters"), "{e}");
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/codec_json.rs`): serde_json's default float parser
    /// is off by one unit in the last place for some numbers, so an `f64` sent as JSON could
    /// arrive as its neighbour.
    #[test]
    fn json_floats_round_trip_exactly() {
        for x in [
            3.6666666666e79_f64,
            0.1,
            1e-300,
            2.2250738585072014e-308,
            f64::MAX,
        ] {
            let bytes = Codec::Json.encode(&x).unwrap();
            let back: f64 = Codec::decode(JSON, &bytes).unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x:e}");
        }
    }

    /// postcard has no depth limit: a body of nested values for a recursive type (the `Tree`
    /// of the `codec_postcard` fuzz target) overflowed the stack, which aborts the whole
    /// process; here a 200 kB body of `Node([Node([...`.
    #[test]
    fn deeply_nested_postcard_is_an_error_not_a_stack_overflow() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        enum Tree {
            Leaf(i32),
            Node(Vec<Tree>),
        }
        let nested = |depth: usize| {
            let mut body = [1u8, 1].repeat(depth);
            body.extend([0, 0]);
            body
        };
        let e = Codec::decode::<Tree>(POSTCARD, &nested(100_000)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode);
        assert!(
            e.to_string().contains("nested deeper than 256 levels"),
            "{e}"
        );
        // Two levels per node (the variant and its vector), the leaf's variant one more.
        assert!(Codec::decode::<Tree>(POSTCARD, &nested(127)).is_ok());
        assert!(Codec::decode::<Tree>(POSTCARD, &nested(128)).is_err());
        // Everything else decodes as before, options, maps and newtypes included.
        type Nested = (
            Option<Vec<Point>>,
            std::collections::BTreeMap<String, (u8, Option<String>)>,
        );
        let value: Nested = (
            Some(vec![Point {
                x: 1,
                label: "a".into(),
            }]),
            [("k".to_owned(), (2, None))].into(),
        );
        let bytes = Codec::Postcard.encode(&value).unwrap();
        assert_eq!(Codec::decode::<Nested>(POSTCARD, &bytes).unwrap(), value);
    }
}
