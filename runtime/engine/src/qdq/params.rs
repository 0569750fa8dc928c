//! Per-tensor quantization parameters read from a QuantizeLinear/DequantizeLinear node's
//! constant inputs.

use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use super::constant::initializer;

/// ONNX `TensorProto.DataType` codes the pass reads or writes.
pub(super) const FLOAT: i32 = 1;
pub(super) const UINT8: i32 = 2;
pub(super) const INT8: i32 = 3;

/// One scale and one zero point for a whole tensor, with the integer type they quantize to.
///
/// Only this form is rewritten: per-axis or blocked quantization, or parameters computed at run
/// time, are left to tract as they are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct QuantParams {
    /// The step between two integer levels (finite, > 0).
    pub scale: f32,
    /// The integer that stands for 0.0.
    pub zero_point: i32,
    /// `INT8` or `UINT8`.
    pub dtype: i32,
}

impl QuantParams {
    /// The integer type's range: `(min, max)`.
    pub fn range(&self) -> (i32, i32) {
        if self.dtype == INT8 { (i8::MIN as i32, i8::MAX as i32) } else { (u8::MIN as i32, u8::MAX as i32) }
    }

    /// Same parameters bit for bit, so that a Q after a DQ gives back the very integers.
    pub fn same_as(&self, other: &QuantParams) -> bool {
        self.scale.to_bits() == other.scale.to_bits()
            && self.zero_point == other.zero_point
            && self.dtype == other.dtype
    }
}

/// The parameters of a QuantizeLinear or DequantizeLinear node, if they are per-tensor
/// initializers Drover understands; `None` means "leave this node alone".
pub(super) fn of_node(graph: &GraphProto, node: &NodeProto) -> Option<QuantParams> {
    if node.attribute.iter().any(|a| a.name == "block_size" && a.i != 0) {
        return None;
    }
    let scale = initializer(graph, node.input.get(1)?)?;
    if scale.data_type != FLOAT || scale.dims.iter().product::<i64>() != 1 {
        return None;
    }
    let scale = scalar_f32(scale)?;
    if !scale.is_finite() || scale <= 0.0 {
        return None;
    }
    let (zero_point, dtype) = match node.input.get(2).filter(|n| !n.is_empty()) {
        None => (0, UINT8),
        Some(name) => {
            let zp = initializer(graph, name)?;
            if zp.dims.iter().product::<i64>() != 1 || (zp.data_type != INT8 && zp.data_type != UINT8) {
                return None;
            }
            (scalar_int(zp)?, zp.data_type)
        }
    };
    Some(QuantParams { scale, zero_point, dtype })
}

fn scalar_f32(t: &TensorProto) -> Option<f32> {
    if let Some(v) = t.float_data.first() {
        return Some(*v);
    }
    let bytes: [u8; 4] = t.raw_data.get(..4)?.try_into().ok()?;
    Some(f32::from_le_bytes(bytes))
}

fn scalar_int(t: &TensorProto) -> Option<i32> {
    let v = match t.int32_data.first() {
        Some(v) => *v,
        None => {
            let b = *t.raw_data.first()?;
            if t.data_type == INT8 { b as i8 as i32 } else { b as i32 }
        }
    };
    let (lo, hi) = if t.data_type == INT8 { (-128, 127) } else { (0, 255) };
    (lo..=hi).contains(&v).then_some(v)
}

/// A scalar f32 initializer.
pub(super) fn f32_scalar(name: String, value: f32) -> TensorProto {
    TensorProto { name, data_type: FLOAT, float_data: vec![value], ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph_with(scale: TensorProto, zp: Option<TensorProto>) -> (GraphProto, NodeProto) {
        let mut inputs = vec!["x".to_string(), scale.name.clone()];
        let mut initializer = vec![scale];
        if let Some(zp) = zp {
            inputs.push(zp.name.clone());
            initializer.push(zp);
        }
        let node = NodeProto { op_type: "QuantizeLinear".into(), input: inputs, ..Default::default() };
        (GraphProto { initializer, ..Default::default() }, node)
    }

    fn zp(dtype: i32, v: i32) -> TensorProto {
        TensorProto { name: "zp".into(), data_type: dtype, int32_data: vec![v], ..Default::default() }
    }

    #[test]
    fn reads_float_data_and_raw_data() {
        let (g, n) = graph_with(f32_scalar("s".into(), 0.5), Some(zp(INT8, -128)));
        assert_eq!(of_node(&g, &n), Some(QuantParams { scale: 0.5, zero_point: -128, dtype: INT8 }));
        let raw = TensorProto {
            name: "s".into(),
            data_type: FLOAT,
            raw_data: 0.25f32.to_le_bytes().to_vec(),
            ..Default::default()
        };
        let z = TensorProto { name: "zp".into(), data_type: UINT8, raw_data: vec![200], ..Default::default() };
        let (g, n) = graph_with(raw, Some(z));
        assert_eq!(of_node(&g, &n), Some(QuantParams { scale: 0.25, zero_point: 200, dtype: UINT8 }));
    }

    #[test]
    fn no_zero_point_means_uint8_zero() {
        let (g, n) = graph_with(f32_scalar("s".into(), 2.0), None);
        assert_eq!(of_node(&g, &n), Some(QuantParams { scale: 2.0, zero_point: 0, dtype: UINT8 }));
    }

    #[test]
    fn odd_parameters_are_left_alone() {
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let (g, n) = graph_with(f32_scalar("s".into(), bad), Some(zp(INT8, 0)));
            assert_eq!(of_node(&g, &n), None, "scale {bad}");
        }
        // Per-axis scale.
        let per_axis = TensorProto {
            name: "s".into(),
            data_type: FLOAT,
            dims: vec![2],
            float_data: vec![1.0, 2.0],
            ..Default::default()
        };
        let (g, n) = graph_with(per_axis, Some(zp(INT8, 0)));
        assert_eq!(of_node(&g, &n), None);
        // Zero point out of its type's range, or of a type the pass does not handle.
        let (g, n) = graph_with(f32_scalar("s".into(), 1.0), Some(zp(INT8, 300)));
        assert_eq!(of_node(&g, &n), None);
        let (g, n) = graph_with(f32_scalar("s".into(), 1.0), Some(zp(6, 0)));
        assert_eq!(of_node(&g, &n), None);
        // A scale that is not an initializer (computed at run time).
        let n =
            NodeProto { op_type: "QuantizeLinear".into(), input: vec!["x".into(), "s".into()], ..Default::default() };
        assert_eq!(of_node(&GraphProto::default(), &n), None);
    }
}
