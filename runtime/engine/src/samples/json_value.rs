//! Conversion of one JSON value (a nested array of numbers) into a typed tensor.

use drover_wire::DType;
use serde_json::{Number, Value};

use crate::tensor::{Tensor, TensorData};

/// Why a JSON value is not a valid tensor for an input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValueError {
    /// Sub-arrays of different lengths.
    #[error("ragged array at {}: {found} elements where {expected} were expected", at(.index))]
    Ragged {
        /// Where the ragged array starts.
        index: Vec<usize>,
        /// Length found.
        found: usize,
        /// Length of its first sibling.
        expected: usize,
    },
    /// A string, bool, null or object where a number belongs.
    #[error("non-numeric value {found} at {}", at(.index))]
    NotANumber {
        /// Position of the value.
        index: Vec<usize>,
        /// The value as found.
        found: String,
    },
    /// A number the element type cannot hold exactly.
    #[error("{found} at {} does not fit {dtype}", at(.index))]
    OutOfRange {
        /// Position of the value.
        index: Vec<usize>,
        /// The number.
        found: String,
        /// The input's element type.
        dtype: DType,
    },
    /// The array's shape differs from the input's.
    #[error("expected shape [{expected}], got {found:?}")]
    Shape {
        /// Expected per-sample shape (`?` for free axes).
        expected: String,
        /// Shape found.
        found: Vec<usize>,
    },
}

fn at(index: &[usize]) -> String {
    format!("{index:?}")
}

/// Reads `value` as a tensor of `dtype` whose shape must match `expected` (`None` = any size).
pub fn tensor_from_json(value: &Value, dtype: DType, expected: &[Option<usize>]) -> Result<Tensor, ValueError> {
    let shape = shape_of(value);
    let fits = shape.len() == expected.len() && shape.iter().zip(expected).all(|(s, e)| e.is_none_or(|e| e == *s));
    if !fits {
        // A ragged array reports its own, more precise, error.
        let mut leaves = Vec::new();
        collect(value, &shape, &mut Vec::new(), &mut leaves)?;
        return Err(ValueError::Shape { expected: crate::describe_shape(expected), found: shape });
    }
    // No capacity from `shape`: it follows only the first element at each depth, so a short
    // ragged line could declare a product of gigabytes (or overflow); `collect` checks every
    // sub-array before the leaves can outgrow the line itself.
    let mut leaves = Vec::new();
    collect(value, &shape, &mut Vec::new(), &mut leaves)?;
    let data = match dtype {
        DType::F32 => TensorData::F32(convert(&leaves, &shape, dtype, to_f32)?),
        DType::F64 => TensorData::F64(convert(&leaves, &shape, dtype, Number::as_f64)?),
        DType::I64 => TensorData::I64(convert(&leaves, &shape, dtype, to_int::<i64>)?),
        DType::I32 => TensorData::I32(convert(&leaves, &shape, dtype, to_int::<i32>)?),
        DType::U8 => TensorData::U8(convert(&leaves, &shape, dtype, to_int::<u8>)?),
        DType::I8 => TensorData::I8(convert(&leaves, &shape, dtype, to_int::<i8>)?),
    };
    Tensor::new(shape, data).map_err(|_| ValueError::Shape { expected: String::new(), found: Vec::new() })
}

/// The shape implied by following the first element at each depth.
fn shape_of(value: &Value) -> Vec<usize> {
    let mut shape = Vec::new();
    let mut v = value;
    while let Value::Array(items) = v {
        shape.push(items.len());
        match items.first() {
            Some(first) => v = first,
            None => break,
        }
    }
    shape
}

/// Collects the numbers in row-major order, checking that every sub-array follows `shape`.
fn collect<'a>(
    value: &'a Value,
    shape: &[usize],
    index: &mut Vec<usize>,
    out: &mut Vec<&'a Number>,
) -> Result<(), ValueError> {
    match (value, shape.split_first()) {
        (Value::Array(items), Some((&len, rest))) => {
            if items.len() != len {
                return Err(ValueError::Ragged { index: index.clone(), found: items.len(), expected: len });
            }
            for (i, item) in items.iter().enumerate() {
                index.push(i);
                collect(item, rest, index, out)?;
                index.pop();
            }
            Ok(())
        }
        (Value::Number(n), None) => {
            out.push(n);
            Ok(())
        }
        (Value::Array(items), None) => {
            Err(ValueError::Ragged { index: index.clone(), found: items.len(), expected: 0 })
        }
        (other, _) => Err(ValueError::NotANumber { index: index.clone(), found: short(other) }),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 24 { format!("{}…", &s[..s.floor_char_boundary(24)]) } else { s }
}

fn convert<T>(
    leaves: &[&Number],
    shape: &[usize],
    dtype: DType,
    f: impl Fn(&Number) -> Option<T>,
) -> Result<Vec<T>, ValueError> {
    leaves
        .iter()
        .enumerate()
        .map(|(flat, n)| {
            f(n).ok_or_else(|| ValueError::OutOfRange { index: unflatten(flat, shape), found: n.to_string(), dtype })
        })
        .collect()
}

fn unflatten(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        if dim > 0 {
            *slot = flat % dim;
            flat /= dim;
        }
    }
    index
}

fn to_f32(n: &Number) -> Option<f32> {
    let v = n.as_f64()?;
    let narrowed = v as f32;
    narrowed.is_finite().then_some(narrowed)
}

fn to_int<T: TryFrom<i64> + TryFrom<u64>>(n: &Number) -> Option<T> {
    if let Some(i) = n.as_i64() {
        return T::try_from(i).ok();
    }
    if let Some(u) = n.as_u64() {
        return T::try_from(u).ok();
    }
    // Integral floats such as `3.0` (what numpy's tolist() gives for float arrays) are accepted.
    let f = n.as_f64()?;
    if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 { T::try_from(f as i64).ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A ragged nested array whose first element at each of `depth` levels is `k` long and
    /// whose other elements are numbers: it implies the shape `[k; depth]` in about
    /// `2 * k * depth` bytes.
    fn first_chain(k: usize, depth: usize) -> Value {
        let mut text = format!("[{}]", vec!["0"; k].join(","));
        for _ in 1..depth {
            text = format!("[{text}{}]", ",0".repeat(k - 1));
        }
        serde_json::from_str(&text).expect("valid JSON")
    }

    #[test]
    fn a_ragged_line_implying_a_huge_shape_is_an_error_not_an_allocation() {
        // Found with the samples_jsonl fuzz target (docs/fuzzing.md): [1000, 1000, 1000] is 4 G leaves declared in 6 kB,
        // which the reader used to reserve before checking the sub-arrays.
        let err = tensor_from_json(&first_chain(1000, 3), DType::F32, &[None; 3]).expect_err("ragged");
        assert!(matches!(err, ValueError::NotANumber { .. }), "{err}");
        // Seven free axes: the implied shape's product overflows usize.
        assert!(tensor_from_json(&first_chain(1000, 7), DType::F32, &[None; 7]).is_err());
    }

    #[test]
    fn nested_array_becomes_a_row_major_tensor() {
        let t = tensor_from_json(&json!([[1, 2, 3], [4, 5, 6]]), DType::F32, &[Some(2), Some(3)]).expect("valid");
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.data(), &TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    }

    #[test]
    fn free_axes_accept_any_size() {
        let t = tensor_from_json(&json!([[1], [2], [3]]), DType::I64, &[None, Some(1)]).expect("valid");
        assert_eq!(t.shape(), &[3, 1]);
    }

    #[test]
    fn wrong_shape_names_expected_and_found() {
        let err = tensor_from_json(&json!([1, 2]), DType::F32, &[Some(3)]).unwrap_err();
        assert_eq!(err.to_string(), "expected shape [3], got [2]");
        let err = tensor_from_json(&json!(5), DType::F32, &[Some(1)]).unwrap_err();
        assert_eq!(err.to_string(), "expected shape [1], got []");
    }

    #[test]
    fn ragged_arrays_are_located() {
        let err = tensor_from_json(&json!([[1, 2], [3]]), DType::F32, &[Some(2), Some(2)]).unwrap_err();
        assert_eq!(err, ValueError::Ragged { index: vec![1], found: 1, expected: 2 });
    }

    #[test]
    fn non_numbers_are_located() {
        let err = tensor_from_json(&json!([1, "x", 3]), DType::F32, &[Some(3)]).unwrap_err();
        assert_eq!(err.to_string(), "non-numeric value \"x\" at [1]");
        let err = tensor_from_json(&json!([[1, null]]), DType::I32, &[Some(1), Some(2)]).unwrap_err();
        assert_eq!(err.to_string(), "non-numeric value null at [0, 1]");
    }

    #[test]
    fn integers_are_range_checked_per_type() {
        let err = tensor_from_json(&json!([1, 300]), DType::U8, &[Some(2)]).unwrap_err();
        assert_eq!(err.to_string(), "300 at [1] does not fit uint8");
        assert!(tensor_from_json(&json!([-129]), DType::I8, &[Some(1)]).is_err());
        assert!(tensor_from_json(&json!([1.5]), DType::I64, &[Some(1)]).is_err());
        assert!(tensor_from_json(&json!([1e40]), DType::F32, &[Some(1)]).is_err());
        let t = tensor_from_json(&json!([3.0, -128, 127]), DType::I8, &[Some(3)]).expect("valid");
        assert_eq!(t.data(), &TensorData::I8(vec![3, -128, 127]));
        let t = tensor_from_json(&json!([u64::MAX]), DType::I64, &[Some(1)]);
        assert!(t.is_err());
    }

    #[test]
    fn f32_values_round_trip_exactly() {
        let v = 0.1f32;
        let t = tensor_from_json(&json!([f64::from(v)]), DType::F32, &[Some(1)]).expect("valid");
        assert_eq!(t.data(), &TensorData::F32(vec![v]));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Arbitrary JSON of the kinds a user's file may hold, nested a few levels.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "[a-z]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| prop::collection::vec(inner, 0..6).prop_map(Value::Array))
    }

    fn any_dtype() -> impl Strategy<Value = DType> {
        prop::sample::select(DType::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn any_json_gives_a_tensor_or_an_error_never_a_panic(
            v in any_json(),
            dtype in any_dtype(),
            expected in prop::collection::vec(prop::option::of(0usize..5), 0..4),
        ) {
            if let Ok(t) = tensor_from_json(&v, dtype, &expected) {
                prop_assert_eq!(t.dtype(), dtype);
                prop_assert_eq!(t.shape().len(), expected.len());
            }
        }

        #[test]
        fn tensors_round_trip_through_json(
            shape in prop::collection::vec(0usize..4, 0..4),
            seed in any::<u64>(),
            dtype in any_dtype(),
        ) {
            let n: usize = shape.iter().product();
            // Values spread over each type's whole range, from a simple deterministic generator.
            let mut x = seed | 1;
            let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
            let data = match dtype {
                DType::F32 => TensorData::F32((0..n).map(|_| f32::from_bits(next() as u32 & 0x7f7f_ffff) * if next() % 2 == 0 { 1.0 } else { -1.0 }).collect()),
                DType::F64 => TensorData::F64((0..n).map(|_| (next() as i64) as f64 / 7.0).collect()),
                DType::I64 => TensorData::I64((0..n).map(|_| next() as i64).collect()),
                DType::I32 => TensorData::I32((0..n).map(|_| next() as i32).collect()),
                DType::U8 => TensorData::U8((0..n).map(|_| next() as u8).collect()),
                DType::I8 => TensorData::I8((0..n).map(|_| next() as i8).collect()),
            };
            let t = Tensor::new(shape.clone(), data).expect("valid");
            let json: Value = serde_json::from_str(&serde_json::to_string(&t).expect("serialises")).expect("parses");
            let expected: Vec<Option<usize>> = shape.iter().map(|&d| Some(d)).collect();
            let back = tensor_from_json(&json, dtype, &expected);
            // An axis of size 0 hides the inner axes from JSON; only non-empty tensors must round trip.
            if n > 0 || shape.len() <= 1 {
                prop_assert_eq!(back.expect("round trips"), t);
            }
        }
    }
}
