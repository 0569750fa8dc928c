//! Whole constant tensors (scales, zero points, biases) read from a graph's initializers.

use tract_onnx::pb::{GraphProto, TensorProto};

use super::params::{FLOAT, INT8, UINT8};

/// ONNX `TensorProto.DataType` code of int32 (quantized biases).
pub(super) const INT32: i32 = 6;

/// The initializer called `name`.
pub(super) fn initializer<'a>(graph: &'a GraphProto, name: &str) -> Option<&'a TensorProto> {
    graph.initializer.iter().find(|t| t.name == name)
}

/// Elements the dims promise (`None` for negative or overflowing dims).
pub(super) fn len(t: &TensorProto) -> Option<usize> {
    t.dims.iter().try_fold(1usize, |n, d| n.checked_mul(usize::try_from(*d).ok()?))
}

/// A float tensor's values, from `float_data` or little-endian `raw_data`.
pub(super) fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != FLOAT || !t.external_data.is_empty() {
        return None;
    }
    let n = len(t)?;
    let v: Vec<f32> = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    (v.len() == n).then_some(v)
}

/// An int8, uint8 or int32 tensor's values, from `int32_data` or `raw_data`.
pub(super) fn ints(t: &TensorProto) -> Option<Vec<i32>> {
    if !t.external_data.is_empty() {
        return None;
    }
    let n = len(t)?;
    let v: Vec<i32> = match (t.data_type, t.raw_data.is_empty()) {
        (INT8 | UINT8 | INT32, true) => t.int32_data.clone(),
        (INT8, false) => t.raw_data.iter().map(|b| *b as i8 as i32).collect(),
        (UINT8, false) => t.raw_data.iter().map(|b| *b as i32).collect(),
        (INT32, false) => t.raw_data.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        _ => return None,
    };
    let range = match t.data_type {
        INT8 => -128..=127,
        UINT8 => 0..=255,
        _ => i32::MIN..=i32::MAX,
    };
    (v.len() == n && v.iter().all(|x| range.contains(x))).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_typed_and_raw_data_and_refuses_short_or_out_of_range() {
        let t = |data_type, dims: Vec<i64>| TensorProto { data_type, dims, ..Default::default() };
        let f = TensorProto { float_data: vec![1.0, 2.0], ..t(FLOAT, vec![2]) };
        assert_eq!(floats(&f), Some(vec![1.0, 2.0]));
        let raw = TensorProto { raw_data: [0.5f32.to_le_bytes(), 3f32.to_le_bytes()].concat(), ..t(FLOAT, vec![2]) };
        assert_eq!(floats(&raw), Some(vec![0.5, 3.0]));
        assert_eq!(floats(&TensorProto { float_data: vec![1.0], ..t(FLOAT, vec![2]) }), None);
        let i8s = TensorProto { raw_data: vec![0xff, 1], ..t(INT8, vec![2]) };
        assert_eq!(ints(&i8s), Some(vec![-1, 1]));
        let i32s = TensorProto { raw_data: (-7i32).to_le_bytes().to_vec(), ..t(INT32, vec![1]) };
        assert_eq!(ints(&i32s), Some(vec![-7]));
        assert_eq!(ints(&TensorProto { int32_data: vec![300], ..t(INT8, vec![1]) }), None);
        assert_eq!(ints(&TensorProto { int32_data: vec![1], ..t(INT8, vec![-1]) }), None);
    }
}
