//! Serde adapter for `f64` fields that may legitimately be infinite or NaN (a chi-squared statistic is
//! `+inf` when a category the reference never saw shows up). JSON has no literal for those values and
//! `serde_json` would write `null` and then refuse to read it back, so in human-readable formats the
//! non-finite values travel as the strings `"inf"`, `"-inf"` and `"NaN"`; binary formats (postcard)
//! carry the IEEE value unchanged.

use core::fmt;

use serde::{Deserializer, Serializer, de};

/// Writes `x` as a number, or as `"inf"` / `"-inf"` / `"NaN"` in human-readable formats.
pub(crate) fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() || !s.is_human_readable() {
        s.serialize_f64(*x)
    } else if x.is_nan() {
        s.serialize_str("NaN")
    } else if x.is_sign_positive() {
        s.serialize_str("inf")
    } else {
        s.serialize_str("-inf")
    }
}

/// Reads what [`serialize`] wrote; any other string is an error, never a panic.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    if d.is_human_readable() { d.deserialize_any(FloatVisitor) } else { d.deserialize_f64(FloatVisitor) }
}

struct FloatVisitor;

impl de::Visitor<'_> for FloatVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or one of \"inf\", \"-inf\", \"NaN\"")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<f64, E> {
        Ok(f64::from(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug)]
    struct Holder {
        #[serde(with = "super")]
        x: f64,
    }

    #[test]
    fn non_finite_values_survive_json_and_postcard() {
        for x in [f64::INFINITY, f64::NEG_INFINITY, 1.5, -0.25, 0.0] {
            let json = serde_json::to_string(&Holder { x }).expect("json encodes");
            let back: Holder = serde_json::from_str(&json).expect("json decodes");
            assert_eq!(back.x, x, "{json}");
            let bytes = postcard::to_stdvec(&Holder { x }).expect("postcard encodes");
            let back: Holder = postcard::from_bytes(&bytes).expect("postcard decodes");
            assert_eq!(back.x, x);
        }
        let json = serde_json::to_string(&Holder { x: f64::NAN }).expect("json encodes");
        let back: Holder = serde_json::from_str(&json).expect("json decodes");
        assert!(back.x.is_nan());
    }

    #[test]
    fn unknown_strings_are_errors() {
        assert!(serde_json::from_str::<Holder>(r#"{"x":"infinity"}"#).is_err());
        assert!(serde_json::from_str::<Holder>(r#"{"x":null}"#).is_err());
        assert!(serde_json::from_str::<Holder>(r#"{"x":7}"#).is_ok_and(|h| h.x == 7.0));
    }
}
