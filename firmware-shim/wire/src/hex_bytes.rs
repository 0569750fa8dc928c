//! Fixed-size byte strings (digests, keys, key ids, signatures) in serde: raw bytes in postcard
//! (the canonical form that is signed and sent), lowercase hex strings in human-readable formats
//! (JSON payloads, root and delegation files), so that a person reading `mosquitto_sub` output
//! or a root document sees what `sha256sum` and `drover keygen` print, not 32 numbers.
//!
//! Readers also take the arrays of numbers that JSON files written before held, so no document
//! on a device or an operator's disk needs rewriting.

use core::fmt;
use core::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};

/// Writes bytes as lowercase hex.
pub(crate) struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Serialises `bytes`: a hex string when the format is human-readable, a tuple of bytes
/// (exactly what `[u8; N]` derives) otherwise.
pub(crate) fn serialize<S: Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.collect_str(&Hex(bytes))
    } else {
        let mut t = s.serialize_tuple(N)?;
        for b in bytes {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

/// Reads what [`serialize`] writes; in human-readable formats also an array of `N` numbers.
pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
    d: D,
    what: &'static str,
) -> Result<[u8; N], D::Error> {
    let v = BytesVisitor::<N> { what, _n: PhantomData };
    if d.is_human_readable() { d.deserialize_any(v) } else { d.deserialize_tuple(N, v) }
}

/// Decodes `N` bytes from exactly `2 N` hex digits (either case).
pub(crate) fn parse<const N: usize>(text: &str) -> Option<[u8; N]> {
    let b = text.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

struct BytesVisitor<const N: usize> {
    what: &'static str,
    _n: PhantomData<[u8; N]>,
}

impl<'de, const N: usize> Visitor<'de> for BytesVisitor<N> {
    type Value = [u8; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as {} hex digits", self.what, 2 * N)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<[u8; N], E> {
        parse(v).ok_or_else(|| E::custom(format_args!("{} must be {} hex digits", self.what, 2 * N)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<u8>()?.is_some() {
            return Err(de::Error::invalid_length(N + 1, &self));
        }
        Ok(out)
    }
}
