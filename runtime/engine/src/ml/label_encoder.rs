//! `ai.onnx.ml::LabelEncoder` for numeric keys and values (ai.onnx.ml opset 2 attributes).
//!
//! skl2onnx writes it wherever a lookup table is the simplest graph: IsolationForest maps each
//! tree's leaf id to the leaf's sample count and depth with int64 → float encoders. Each element
//! of the input is looked up among the keys; a hit gives the value at the same position (the
//! first one for a repeated key, as onnxruntime's map keeps it), a miss gives the default
//! (`default_int64` = −1, `default_float` = −0.0 unless set).
//!
//! Drover carries no string tensors, so the string forms (opset 1's `classes_strings`, opset 2's
//! `keys_strings`/`values_strings`) and opset 4's `*_tensor` attributes are refused at load time
//! with the node named, rather than failing somewhere in tract.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::attrs::{AttrError, Attrs};

/// A lookup key: an int64, or an f32 by its bits with −0.0 folded onto 0.0 (they compare equal
/// and onnxruntime's hash map treats them as one key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Int(i64),
    Float(u32),
}

fn float_key(v: f32) -> Key {
    Key::Float(if v == 0.0 { 0 } else { v.to_bits() })
}

/// The value side: one type, its values in key order, and the default.
#[derive(Debug, Clone, PartialEq)]
enum Values {
    Int(Vec<i64>, i64),
    Float(Vec<f32>, f32),
}

/// tract-onnx's builder for `LabelEncoder`.
pub(crate) fn build(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(parse(node)?), vec![]))
}

fn parse(node: &NodeProto) -> Result<LabelEncoder, AttrError> {
    let attrs = Attrs::new(node);
    for name in ["classes_strings", "keys_strings", "values_strings"] {
        if attrs.has(name) {
            return Err(attrs.error_with(
                name,
                "string keys or values are not supported (Drover has no string tensors)",
                "encode strings to integers before the model (e.g. sklearn's OrdinalEncoder outside the graph)",
            ));
        }
    }
    for name in ["keys_tensor", "values_tensor", "default_tensor"] {
        if attrs.has(name) {
            return Err(attrs.error_with(
                name,
                "tensor attributes (ai.onnx.ml opset 4) are not supported",
                "convert with target_opset={'ai.onnx.ml': 3} or lower, which writes keys_int64s/keys_floats",
            ));
        }
    }
    let (keys, key_type, key_attr) = match (attrs.has("keys_int64s"), attrs.has("keys_floats")) {
        (true, false) => {
            (attrs.ints("keys_int64s").into_iter().map(Key::Int).collect::<Vec<_>>(), DatumType::I64, "keys_int64s")
        }
        (false, true) => {
            let floats = attrs.floats("keys_floats");
            if floats.iter().any(|v| v.is_nan()) {
                return Err(attrs.error(
                    "keys_floats",
                    "a NaN key (onnxruntime's versions disagree on whether NaN inputs match it)",
                ));
            }
            (floats.into_iter().map(float_key).collect(), DatumType::F32, "keys_floats")
        }
        _ => return Err(attrs.error("keys_int64s", "exactly one of keys_int64s and keys_floats is needed")),
    };
    let values = match (attrs.has("values_int64s"), attrs.has("values_floats")) {
        (true, false) => Values::Int(attrs.ints("values_int64s"), attrs.int_or("default_int64", -1)),
        (false, true) => Values::Float(attrs.floats("values_floats"), attrs.float_or("default_float", -0.0)),
        _ => return Err(attrs.error("values_int64s", "exactly one of values_int64s and values_floats is needed")),
    };
    let (count, value_attr) = match &values {
        Values::Int(v, _) => (v.len(), "values_int64s"),
        Values::Float(v, _) => (v.len(), "values_floats"),
    };
    if count != keys.len() {
        return Err(attrs.error(value_attr, format!("{count} values for {} keys ({key_attr})", keys.len())));
    }
    let mut index = HashMap::with_capacity(keys.len());
    for (i, k) in keys.into_iter().enumerate() {
        index.entry(k).or_insert(i);
    }
    Ok(LabelEncoder { node: node.name.clone(), key_type, table: Arc::new(Table { index, values }) })
}

/// The lookup table.
#[derive(Debug, Clone, PartialEq)]
struct Table {
    /// Each key's position among the values (its first occurrence).
    index: HashMap<Key, usize>,
    values: Values,
}

/// The operator, both at inference time (an [`Expansion`]) and typed (itself).
#[derive(Debug, Clone, PartialEq)]
struct LabelEncoder {
    /// The node's name, for run-time errors.
    node: String,
    /// What the input holds: I64 or F32.
    key_type: DatumType,
    table: Arc<Table>,
}

/// tract compares ops to merge identical nodes; keys are compared by bits.
impl Eq for LabelEncoder {}

impl LabelEncoder {
    /// Whether an input of type `dt` holds this encoder's keys. tract's inference types int64
    /// tensors as TDim (symbolic integers) where they may be shapes, so TDim is int64 here.
    fn accepts(&self, dt: DatumType) -> bool {
        dt == self.key_type || (dt == DatumType::TDim && self.key_type == DatumType::I64)
    }

    fn value_type(&self) -> DatumType {
        match self.table.values {
            Values::Int(..) => DatumType::I64,
            Values::Float(..) => DatumType::F32,
        }
    }

    fn encode(&self, keys: impl Iterator<Item = Key>, shape: &[usize]) -> TractResult<Tensor> {
        let at = |k| self.table.index.get(&k).copied();
        Ok(match &self.table.values {
            Values::Int(v, default) => {
                let out: Vec<i64> = keys.map(|k| at(k).map_or(*default, |i| v[i])).collect();
                Tensor::from_shape(shape, &out)?
            }
            Values::Float(v, default) => {
                let out: Vec<f32> = keys.map(|k| at(k).map_or(*default, |i| v[i])).collect();
                Tensor::from_shape(shape, &out)?
            }
        })
    }
}

impl Expansion for LabelEncoder {
    fn name(&self) -> StaticName {
        "LabelEncoder".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, self.value_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        s.given(&inputs[0].datum_type, move |_, dt| {
            ensure!(
                self.accepts(dt),
                "LabelEncoder node '{}': input of type {dt:?}, but its keys are {:?}",
                self.node,
                self.key_type
            );
            Ok(())
        })?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for LabelEncoder {
    fn name(&self) -> StaticName {
        "LabelEncoder".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{} keys, {:?} → {:?}", self.table.index.len(), self.key_type, self.value_type())])
    }

    op_as_typed_op!();
}

impl EvalOp for LabelEncoder {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = if inputs[0].datum_type() == DatumType::TDim && self.key_type == DatumType::I64 {
            inputs[0].cast_to::<i64>()?.into_owned().into_tvalue()
        } else {
            inputs[0].clone()
        };
        let plain = x.try_as_plain_ram()?;
        let y = match (x.datum_type(), self.key_type) {
            (DatumType::I64, DatumType::I64) => {
                self.encode(plain.as_slice::<i64>()?.iter().map(|&v| Key::Int(v)), x.shape())?
            }
            (DatumType::F32, DatumType::F32) => {
                self.encode(plain.as_slice::<f32>()?.iter().map(|&v| float_key(v)), x.shape())?
            }
            (dt, keys) => bail!("LabelEncoder node '{}': input of type {dt:?}, but its keys are {keys:?}", self.node),
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for LabelEncoder {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            self.accepts(inputs[0].datum_type),
            "LabelEncoder node '{}': input of type {:?}, but its keys are {:?}",
            self.node,
            inputs[0].datum_type,
            self.key_type
        );
        Ok(tvec!(self.value_type().fact(inputs[0].shape.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::AttributeProto;

    fn node(attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            name: "enc".into(),
            op_type: "LabelEncoder".into(),
            domain: "ai.onnx.ml".into(),
            attribute: attrs,
            ..Default::default()
        }
    }

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto { name: name.into(), ints: v.to_vec(), ..Default::default() }
    }

    fn floats(name: &str, v: &[f32]) -> AttributeProto {
        AttributeProto { name: name.into(), floats: v.to_vec(), ..Default::default() }
    }

    fn run(op: &LabelEncoder, x: Tensor) -> TractResult<Tensor> {
        Ok(op.eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue()))?.remove(0).into_tensor())
    }

    #[test]
    fn int64_keys_to_floats_with_the_default_for_misses() -> TractResult<()> {
        // IsolationForest's form: leaf ids to sample counts.
        let op = parse(&node(vec![ints("keys_int64s", &[2, 3, 10]), floats("values_floats", &[1.0, 8.0, 6.0])]))?;
        let y = run(&op, Tensor::from_shape(&[2, 2], &[10i64, 2, 7, 3])?)?;
        assert_eq!(y.shape(), [2, 2]);
        let y = y.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        assert_eq!(y[..2], [6.0, 1.0]);
        assert!(y[2] == 0.0 && y[2].is_sign_negative(), "a miss gives default_float's default, -0.0");
        assert_eq!(y[3], 8.0);
        Ok(())
    }

    #[test]
    fn float_keys_to_int64s_first_key_wins_and_signed_zeros_match() -> TractResult<()> {
        let mut attrs = vec![floats("keys_floats", &[0.0, 1.5, 1.5]), ints("values_int64s", &[7, 8, 9])];
        let op = parse(&node(attrs.clone()))?;
        let y = run(&op, Tensor::from_shape(&[4], &[-0.0f32, 1.5, 2.0, f32::NAN])?)?;
        assert_eq!(y.try_as_plain_ram()?.as_slice::<i64>()?, [7, 8, -1, -1]);
        attrs.push(AttributeProto { name: "default_int64".into(), i: 42, ..Default::default() });
        let y = run(&parse(&node(attrs))?, Tensor::from_shape(&[1], &[3.0f32])?)?;
        assert_eq!(y.try_as_plain_ram()?.as_slice::<i64>()?, [42]);
        Ok(())
    }

    #[test]
    fn strings_tensors_and_mismatches_are_refused_naming_the_node() {
        let refused = |attrs: Vec<AttributeProto>, attr: &str| {
            let e = parse(&node(attrs)).expect_err("refused").to_string();
            assert!(e.contains("node 'enc' (LabelEncoder)") && e.contains(&format!("'{attr}'")), "{e}");
        };
        let strings =
            AttributeProto { name: "keys_strings".into(), strings: vec![b"a".to_vec()], ..Default::default() };
        refused(vec![strings, ints("values_int64s", &[1])], "keys_strings");
        let classes =
            AttributeProto { name: "classes_strings".into(), strings: vec![b"a".to_vec()], ..Default::default() };
        refused(vec![classes], "classes_strings");
        let tensor = AttributeProto { name: "keys_tensor".into(), ..Default::default() };
        refused(vec![tensor], "keys_tensor");
        refused(vec![ints("keys_int64s", &[1, 2]), floats("values_floats", &[1.0])], "values_floats");
        refused(vec![floats("values_floats", &[1.0])], "keys_int64s");
        refused(vec![ints("keys_int64s", &[1])], "values_int64s");
        refused(vec![floats("keys_floats", &[f32::NAN]), ints("values_int64s", &[1])], "keys_floats");
    }

    #[test]
    fn an_input_of_the_wrong_type_is_an_error_not_a_panic() {
        let op = parse(&node(vec![ints("keys_int64s", &[1]), ints("values_int64s", &[2])])).expect("builds");
        let e = run(&op, Tensor::from_shape(&[1], &[1.0f32]).expect("tensor")).expect_err("f32 for int64 keys");
        assert!(e.to_string().contains("LabelEncoder node 'enc'"), "{e}");
    }
}
