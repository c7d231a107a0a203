//! Encoding and decoding by content type, with the schema version checked first so an
//! unknown version gets its own clear error instead of a confusing field error.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::SCHEMA_VERSION;

/// The NATS header naming a message's encoding.
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";

/// Encodings the fleet speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentType {
    /// `application/msgpack`, named fields (the default).
    #[default]
    MsgPack,
    /// `application/json`.
    Json,
}

impl ContentType {
    /// Picks the encoding from a `Content-Type` header value; absent means MessagePack.
    pub fn from_header(value: Option<&str>) -> Result<Self, DecodeError> {
        let Some(raw) = value else {
            return Ok(Self::MsgPack);
        };
        let essence = raw
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "" | "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                Ok(Self::MsgPack)
            }
            "application/json" => Ok(Self::Json),
            _ => Err(DecodeError::UnsupportedContentType(raw.to_string())),
        }
    }

    /// The header value for this encoding.
    pub fn as_header(self) -> &'static str {
        match self {
            Self::MsgPack => "application/msgpack",
            Self::Json => "application/json",
        }
    }
}

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "unsupported Content-Type {0:?}: send application/msgpack (default) or application/json"
    )]
    UnsupportedContentType(String),
    #[error("missing schema_version: every message must carry schema_version = {SCHEMA_VERSION}")]
    MissingSchemaVersion,
    #[error("unknown schema_version {0}: this fleet speaks schema_version {SCHEMA_VERSION}")]
    UnknownSchemaVersion(u64),
    #[error("payload is not valid UTF-8 text: {0}")]
    InvalidUtf8(String),
    #[error("malformed {encoding} payload: {detail}")]
    Malformed {
        encoding: &'static str,
        detail: String,
    },
}

#[derive(Deserialize)]
struct VersionProbe {
    schema_version: Option<u64>,
}

/// Encodes a message; MessagePack uses named fields so any language can read it.
pub fn encode<T: Serialize>(value: &T, content_type: ContentType) -> Vec<u8> {
    match content_type {
        // Both serializers only fail on maps with non-string keys, which no wire type has.
        ContentType::MsgPack => rmp_serde::to_vec_named(value).unwrap_or_default(),
        ContentType::Json => serde_json::to_vec(value).unwrap_or_default(),
    }
}

/// Decodes a message after checking its `schema_version`.
pub fn decode<T: DeserializeOwned>(
    payload: &[u8],
    content_type: ContentType,
) -> Result<T, DecodeError> {
    let probe: VersionProbe = match content_type {
        ContentType::MsgPack => rmp_serde::from_slice(payload).map_err(msgpack_error)?,
        ContentType::Json => serde_json::from_slice(payload).map_err(json_error)?,
    };
    match probe.schema_version {
        None => return Err(DecodeError::MissingSchemaVersion),
        Some(v) if v != u64::from(SCHEMA_VERSION) => {
            return Err(DecodeError::UnknownSchemaVersion(v))
        }
        Some(_) => {}
    }
    match content_type {
        ContentType::MsgPack => rmp_serde::from_slice(payload).map_err(msgpack_error),
        ContentType::Json => serde_json::from_slice(payload).map_err(json_error),
    }
}

fn msgpack_error(err: rmp_serde::decode::Error) -> DecodeError {
    match err {
        rmp_serde::decode::Error::Utf8Error(e) => DecodeError::InvalidUtf8(e.to_string()),
        other => DecodeError::Malformed {
            encoding: "MessagePack",
            detail: other.to_string(),
        },
    }
}

fn json_error(err: serde_json::Error) -> DecodeError {
    let detail = err.to_string();
    if detail.contains("UTF-8") || detail.contains("unicode") {
        DecodeError::InvalidUtf8(detail)
    } else {
        DecodeError::Malformed {
            encoding: "JSON",
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobSpec, SCHEMA_VERSION};

    fn spec() -> JobSpec {
        JobSpec::python("calc", "def add(a, b):\n    return a + b\n")
    }

    #[test]
    fn msgpack_and_json_round_trip() {
        for ct in [ContentType::MsgPack, ContentType::Json] {
            let bytes = encode(&spec(), ct);
            let back: JobSpec = decode(&bytes, ct).expect("decodes");
            assert_eq!(back, spec());
        }
    }

    #[test]
    fn unknown_schema_version_is_named() {
        let mut value = serde_json::to_value(spec()).expect("to json");
        value["schema_version"] = serde_json::json!(SCHEMA_VERSION + 1);
        let bytes = serde_json::to_vec(&value).expect("bytes");
        let err = decode::<JobSpec>(&bytes, ContentType::Json).expect_err("rejected");
        assert!(matches!(err, DecodeError::UnknownSchemaVersion(2)), "{err}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let mut value = serde_json::to_value(spec()).expect("to json");
        value["covrage_target"] = serde_json::json!(0.8);
        let bytes = serde_json::to_vec(&value).expect("bytes");
        let err = decode::<JobSpec>(&bytes, ContentType::Json).expect_err("rejected");
        assert!(err.to_string().contains("covrage_target"), "{err}");
    }

    #[test]
    fn non_utf8_source_is_named() {
        let mut bytes = encode(&spec(), ContentType::MsgPack);
        let at = bytes
            .windows(3)
            .position(|w| w == b"def")
            .expect("source inside");
        bytes[at] = 0xff;
        let err = decode::<JobSpec>(&bytes, ContentType::MsgPack).expect_err("rejected");
        assert!(matches!(err, DecodeError::InvalidUtf8(_)), "{err}");
    }

    #[test]
    fn content_type_header_is_parsed() {
        assert_eq!(
            ContentType::from_header(Some("application/json; charset=utf-8")).expect("json"),
            ContentType::Json
        );
        assert_eq!(
            ContentType::from_header(None).expect("default"),
            ContentType::MsgPack
        );
        assert!(ContentType::from_header(Some("text/xml")).is_err());
    }
}
