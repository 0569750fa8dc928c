//! Tensor data in OIP JSON: read flat or nested arrays straight into a flat list of scalars
//! (no `serde_json::Value` tree), then into typed elements with exact range checks; written back
//! as one flat array.

use std::fmt;

use drover_wire::DType;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};

use crate::tensor::TensorData;

/// Nesting deeper than any tensor rank Drover takes is refused (and bounds recursion).
const MAX_DEPTH: usize = 16;

/// One JSON scalar as written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    /// A negative integer or one within `i64`.
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    /// A number with a fraction or exponent.
    Float(f64),
    /// `true`/`false` (no Drover type takes them).
    Bool(bool),
}

/// A tensor's `data` field, flattened in row-major order.
#[derive(Debug, Default, PartialEq)]
pub struct FlatData(pub Vec<Scalar>);

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FlatData, D::Error> {
        let mut out = Vec::new();
        d.deserialize_any(Flatten { out: &mut out, depth: 0 })?;
        Ok(FlatData(out))
    }
}

struct Flatten<'a> {
    out: &'a mut Vec<Scalar>,
    depth: usize,
}

impl<'de> de::DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of numbers (flat or nested)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom(format!("data nested deeper than {MAX_DEPTH} levels")));
        }
        if let Some(n) = seq.size_hint() {
            self.out.reserve(n);
        }
        while seq.next_element_seed(Flatten { out: &mut *self.out, depth: self.depth + 1 })?.is_some() {}
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(i64::try_from(v).map_or(Scalar::UInt(v), Scalar::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(Scalar::Float(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(Scalar::Bool(v))
    }
}

impl Flatten<'_> {
    fn scalar<E: de::Error>(self, s: Scalar) -> Result<(), E> {
        if self.depth == 0 {
            return Err(E::custom("data must be an array"));
        }
        self.out.push(s);
        Ok(())
    }
}

/// Why elements do not fit the input's type.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("element {index} ({found}) is not a valid {dtype}")]
pub struct ElementError {
    /// Flat position.
    pub index: usize,
    /// The value as read.
    pub found: String,
    /// The type it had to fit.
    pub dtype: &'static str,
}

impl FlatData {
    /// The elements as `dtype`: integers must be integral and in range, floats finite numbers
    /// (`FP32` narrowed; `Bool` fits nothing).
    pub fn into_data(self, dtype: DType) -> Result<TensorData, ElementError> {
        let items = self.0;
        Ok(match dtype {
            DType::F32 => {
                TensorData::F32(convert(&items, dtype, |s| to_f64(s).map(|v| v as f32).filter(|v| v.is_finite()))?)
            }
            DType::F64 => TensorData::F64(convert(&items, dtype, to_f64)?),
            DType::I64 => TensorData::I64(convert(&items, dtype, to_int)?),
            DType::I32 => TensorData::I32(convert(&items, dtype, to_int)?),
            DType::U8 => TensorData::U8(convert(&items, dtype, to_int)?),
            DType::I8 => TensorData::I8(convert(&items, dtype, to_int)?),
        })
    }
}

fn convert<T>(items: &[Scalar], dtype: DType, f: impl Fn(Scalar) -> Option<T>) -> Result<Vec<T>, ElementError> {
    items
        .iter()
        .enumerate()
        .map(|(index, s)| {
            f(*s).ok_or_else(|| ElementError {
                index,
                found: match s {
                    Scalar::Int(v) => v.to_string(),
                    Scalar::UInt(v) => v.to_string(),
                    Scalar::Float(v) => format!("{v:?}"),
                    Scalar::Bool(v) => v.to_string(),
                },
                dtype: super::oip::datatype(dtype),
            })
        })
        .collect()
}

fn to_f64(s: Scalar) -> Option<f64> {
    match s {
        Scalar::Int(v) => Some(v as f64),
        Scalar::UInt(v) => Some(v as f64),
        Scalar::Float(v) => v.is_finite().then_some(v),
        Scalar::Bool(_) => None,
    }
}

fn to_int<T: TryFrom<i64> + TryFrom<u64>>(s: Scalar) -> Option<T> {
    match s {
        Scalar::Int(v) => T::try_from(v).ok(),
        Scalar::UInt(v) => T::try_from(v).ok(),
        // `3.0` is what numpy's tolist() writes for integral floats.
        Scalar::Float(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
            T::try_from(f as i64).ok()
        }
        Scalar::Float(_) | Scalar::Bool(_) => None,
    }
}

/// Borrowed elements written as one flat JSON array.
#[derive(Debug)]
pub struct FlatRef<'a>(pub &'a TensorData);

impl Serialize for FlatRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            TensorData::F32(v) => v.serialize(s),
            TensorData::F64(v) => v.serialize(s),
            TensorData::I64(v) => v.serialize(s),
            TensorData::I32(v) => v.serialize(s),
            TensorData::U8(v) => v.serialize(s),
            TensorData::I8(v) => v.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(json: &str) -> Result<FlatData, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn nested_and_flat_arrays_read_the_same() {
        let a = flat("[[1, 2], [3.5, -4]]").expect("nested");
        let b = flat("[1, 2, 3.5, -4]").expect("flat");
        assert_eq!(a, b);
        assert_eq!(a.into_data(DType::F32).expect("fits"), TensorData::F32(vec![1.0, 2.0, 3.5, -4.0]));
    }

    #[test]
    fn integers_are_checked_exactly() {
        assert_eq!(flat("[255, 0, 7.0]").unwrap().into_data(DType::U8), Ok(TensorData::U8(vec![255, 0, 7])));
        let e = flat("[1, 256]").unwrap().into_data(DType::U8).unwrap_err();
        assert_eq!(e.to_string(), "element 1 (256) is not a valid UINT8");
        assert!(flat("[1.5]").unwrap().into_data(DType::I64).is_err());
        assert!(flat("[18446744073709551615]").unwrap().into_data(DType::I64).is_err());
        assert!(flat("[true]").unwrap().into_data(DType::F32).is_err());
        assert!(flat("[1e39]").unwrap().into_data(DType::F32).is_err(), "overflows f32");
    }

    #[test]
    fn non_arrays_and_strings_are_refused() {
        assert!(flat("3").is_err());
        assert!(flat("[\"a\"]").is_err());
        assert!(flat("[null]").is_err());
        assert!(flat("{}").is_err());
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        assert!(flat(&deep).unwrap_err().to_string().contains("nested deeper"));
    }

    #[test]
    fn output_is_one_flat_array() {
        let data = TensorData::F32(vec![0.5, 1.0]);
        assert_eq!(serde_json::to_string(&FlatRef(&data)).unwrap(), "[0.5,1.0]");
    }
}
