//! `ai.onnx.ml::Scaler`: `y = (x − offset) · scale`, per feature or for all (skl2onnx's
//! StandardScaler, MinMaxScaler, MaxAbsScaler and RobustScaler).
//!
//! Computed as onnxruntime's kernel does: in the input's precision (f64 inputs against the
//! widened f32 attributes, integers converted to f32 first), then stored as f32.

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::attrs::Attrs;

/// tract-onnx's builder for `Scaler`.
pub(crate) fn build(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let attrs = Attrs::new(node);
    let scale = attrs.floats("scale");
    let offset = attrs.floats("offset");
    if scale.is_empty() {
        return Err(attrs.error("scale", "no scale values").into());
    }
    attrs.expect_len("offset", &offset, scale.len())?;
    Ok((expand(Scaler { node: node.name.clone(), offset: offset.into(), scale: scale.into() }), vec![]))
}

/// The operator, both at inference time (an [`Expansion`]) and typed (itself).
#[derive(Debug, Clone, PartialEq)]
struct Scaler {
    /// The node's name, for run-time errors.
    node: String,
    offset: Arc<[f32]>,
    scale: Arc<[f32]>,
}

/// tract compares ops to merge identical nodes; equal attributes mean the same op.
impl Eq for Scaler {}

impl Scaler {
    /// Checks the input's feature count (last axis) against the attributes.
    fn check(&self, shape: &[usize]) -> TractResult<()> {
        let features = shape.last().copied().unwrap_or(0);
        ensure!(
            (1..=2).contains(&shape.len()) && (self.scale.len() == 1 || self.scale.len() == features),
            "Scaler node '{}': input of shape {shape:?} for {} scale values; it takes [N, {}] (or [N, any] with one value)",
            self.node,
            self.scale.len(),
            self.scale.len()
        );
        Ok(())
    }

    fn run<T: Copy>(&self, x: &[T], apply: impl Fn(T, f32, f32) -> f32) -> Vec<f32> {
        let k = self.scale.len();
        if k == 1 {
            return x.iter().map(|&v| apply(v, self.offset[0], self.scale[0])).collect();
        }
        x.chunks_exact(k)
            .flat_map(|row| {
                row.iter().zip(self.offset.iter().zip(self.scale.iter())).map(|(&v, (&o, &s))| apply(v, o, s))
            })
            .collect()
    }
}

impl Expansion for Scaler {
    fn name(&self) -> StaticName {
        "Scaler".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for Scaler {
    fn name(&self) -> StaticName {
        "Scaler".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Scaler {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        self.check(x.shape())?;
        let plain = x.try_as_plain_ram()?;
        let y = match x.datum_type() {
            DatumType::F32 => self.run(plain.as_slice::<f32>()?, |v, o, s| (v - o) * s),
            DatumType::F64 => self.run(plain.as_slice::<f64>()?, |v, o, s| ((v - f64::from(o)) * f64::from(s)) as f32),
            DatumType::I64 => self.run(plain.as_slice::<i64>()?, |v, o, s| (v as f32 - o) * s),
            DatumType::I32 => self.run(plain.as_slice::<i32>()?, |v, o, s| (v as f32 - o) * s),
            dt => bail!("Scaler node '{}': input of type {dt:?}; it takes float, double, int64 or int32", self.node),
        };
        Ok(tvec!(Tensor::from_shape(x.shape(), &y)?.into_tvalue()))
    }
}

impl TypedOp for Scaler {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        if let Some(Ok(f)) = x.shape.last().map(|d| d.to_usize()) {
            let mut probe = vec![1; x.rank()];
            if let Some(last) = probe.last_mut() {
                *last = f;
            }
            self.check(&probe)?;
        }
        Ok(tvec!(f32::fact(x.shape.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaler(offset: &[f32], scale: &[f32]) -> Scaler {
        Scaler { node: "s".into(), offset: offset.into(), scale: scale.into() }
    }

    fn eval(op: &Scaler, x: Tensor) -> TractResult<Vec<f32>> {
        let out = op.eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue()))?;
        Ok(out[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
    }

    #[test]
    fn per_feature_and_shared_values() -> TractResult<()> {
        let x = Tensor::from_shape(&[2, 2], &[1f32, 2., 3., 4.])?;
        assert_eq!(eval(&scaler(&[1., 2.], &[2., 0.5]), x.clone())?, [0., 0., 4., 1.]);
        assert_eq!(eval(&scaler(&[1.], &[2.]), x)?, [0., 2., 4., 6.]);
        let ints = Tensor::from_shape(&[1, 2], &[3i64, -1])?;
        assert_eq!(eval(&scaler(&[1., 1.], &[1., 1.]), ints)?, [2., -2.]);
        Ok(())
    }

    #[test]
    fn a_wrong_feature_count_is_an_error_naming_the_node() {
        let x = Tensor::from_shape(&[1, 3], &[1f32, 2., 3.]).expect("tensor");
        let e = eval(&scaler(&[1., 2.], &[2., 0.5]), x).expect_err("3 features for 2 values");
        assert!(e.to_string().contains("Scaler node 's'"), "{e}");
    }
}
