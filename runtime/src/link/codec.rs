//! Payload encoding on the wire: postcard (compact, the default) or JSON (readable with
//! `mosquitto_sub`), told apart by their first byte so that a receiver takes either, whatever
//! the sender was configured with.

use serde::{Deserialize, Serialize};

/// First byte of every postcard payload: never `{`, so it cannot be mistaken for JSON, and it
/// versions the binary layout.
pub const POSTCARD_TAG: u8 = 0xD1;

/// How a component encodes what it publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// postcard behind [`POSTCARD_TAG`]: what boards should use.
    #[default]
    Postcard,
    /// JSON: for people watching the broker.
    Json,
}

/// Why a payload could not be decoded. The message is dropped; nothing else changes.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Nothing to decode (a cleared retained message).
    #[error("empty payload")]
    Empty,
    /// Neither a postcard nor a JSON payload.
    #[error("unknown payload format (first byte 0x{0:02x}): neither Drover postcard nor JSON")]
    UnknownFormat(u8),
    /// A postcard payload that does not decode to the expected message.
    #[error("garbled postcard payload: {0}")]
    Postcard(#[from] postcard::Error),
    /// A JSON payload that does not decode to the expected message.
    #[error("garbled JSON payload: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes `value` in `format`.
pub fn encode<T: Serialize>(format: PayloadFormat, value: &T) -> Vec<u8> {
    match format {
        PayloadFormat::Postcard => {
            let mut out = vec![POSTCARD_TAG];
            // Serialising our own wire types into a Vec cannot fail (no maps with non-string
            // keys, no unbounded sequences).
            out.extend(postcard::to_stdvec(value).unwrap_or_default());
            out
        }
        PayloadFormat::Json => serde_json::to_vec(value).unwrap_or_default(),
    }
}

/// Decodes a payload in either format. Trailing bytes after a postcard message are refused, so
/// a garbled payload is not half-read.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, DecodeError> {
    match payload.first() {
        None => Err(DecodeError::Empty),
        Some(&POSTCARD_TAG) => {
            let (value, rest) = postcard::take_from_bytes(&payload[1..])?;
            if rest.is_empty() { Ok(value) } else { Err(postcard::Error::DeserializeBadEncoding.into()) }
        }
        Some(b'{') => Ok(serde_json::from_slice(payload)?),
        Some(&other) => Err(DecodeError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_wire::message::{Digest, Op, Phase, Progress};
    use proptest::prelude::*;

    fn progress() -> Progress {
        Progress {
            op: Op::Bundle { transfer: Digest([0xab; 32]), name: "iris".try_into().unwrap(), version: 3, issued_at: 9 },
            phase: Phase::Downloading { have: 3, total: 9 },
            at: 1_700_000_000,
        }
    }

    #[test]
    fn both_formats_round_trip_and_json_is_readable() {
        for format in [PayloadFormat::Postcard, PayloadFormat::Json] {
            let bytes = encode(format, &progress());
            assert_eq!(decode::<Progress>(&bytes).unwrap(), progress());
        }
        let json = String::from_utf8(encode(PayloadFormat::Json, &progress())).unwrap();
        assert!(json.contains(&"ab".repeat(32)), "digests are hex in JSON: {json}");
        assert!(json.contains("\"Downloading\""), "{json}");
        assert!(encode(PayloadFormat::Postcard, &progress()).len() < json.len() / 2);
    }

    #[test]
    fn architectures_are_spelled_as_users_type_them_and_the_old_spelling_still_reads() {
        use drover_wire::Arch;
        for arch in Arch::ALL {
            let json = String::from_utf8(encode(PayloadFormat::Json, &arch)).unwrap();
            assert_eq!(json, format!("\"{}\"", arch.name()));
            assert_eq!(serde_json::from_str::<Arch>(&json).unwrap(), arch);
            assert_eq!(decode::<Arch>(&encode(PayloadFormat::Postcard, &arch)).unwrap(), arch);
        }
        assert_eq!(serde_json::from_str::<Arch>("\"Aarch64\"").unwrap(), Arch::Aarch64);
        assert_eq!(serde_json::from_str::<Arch>("\"X86_64\"").unwrap(), Arch::X86_64);
    }

    #[test]
    fn garbled_payloads_are_errors() {
        let good = encode(PayloadFormat::Postcard, &progress());
        assert!(matches!(decode::<Progress>(&[]), Err(DecodeError::Empty)));
        assert!(matches!(decode::<Progress>(b"hello"), Err(DecodeError::UnknownFormat(b'h'))));
        assert!(matches!(decode::<Progress>(b"{\"op\": 1}"), Err(DecodeError::Json(_))));
        assert!(matches!(decode::<Progress>(&good[..good.len() - 1]), Err(DecodeError::Postcard(_))));
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(decode::<Progress>(&longer), Err(DecodeError::Postcard(_))));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode::<Progress>(&bytes);
            let _ = decode::<drover_wire::message::Status>(&bytes);
            let _ = decode::<drover_wire::message::Chunk<'_>>(&bytes);
            let _ = decode::<drover_wire::command::SignedCommand>(&bytes);
        }
    }
}
