//! `ai.onnx.ml::ArrayFeatureExtractor` with onnxruntime's shapes, replacing tract's.
//!
//! skl2onnx selects columns with it, a scalar index at a time: its multiclass SVC without
//! probabilities (`decision_function_shape='ovr'`, scikit-learn's default) rebuilds the
//! one-vs-rest scores from the pair scores that way, then concatenates the columns on axis 1.
//! onnxruntime keeps the input's rank and puts the number of indices on the last axis (a
//! scalar index gives a column `[N, 1]`; a 1-D input gives `[1, k]`); tract runs it as a
//! `Gather`, whose scalar index drops the axis, so those models failed to type. tract's
//! `Gather` also wraps negative indices and panics on indices past the end, where onnxruntime
//! refuses both: here they are errors naming the node.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// tract-onnx's builder for `ArrayFeatureExtractor` (replaces tract's own).
pub(crate) fn build(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(ArrayFeatureExtractor { node: node.name.clone() }), vec![]))
}

/// The operator, both at inference time (an [`Expansion`]) and typed (itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ArrayFeatureExtractor {
    /// The node's name, for run-time errors.
    node: String,
}

impl ArrayFeatureExtractor {
    /// onnxruntime's output shape: the input's, with the last axis the number of indices.
    fn output_shape<D: DimLike>(&self, x: &[D], indices: &[D]) -> TractResult<TVec<D>> {
        let k: D = indices.iter().cloned().product();
        Ok(match x {
            [] => bail!("ArrayFeatureExtractor node '{}': a scalar input; it takes [..., features]", self.node),
            [_] => tvec![D::one(), k],
            [outer @ .., _] => outer.iter().cloned().chain(std::iter::once(k)).collect(),
        })
    }

    fn gather<T: Datum + Copy>(&self, x: &TValue, indices: &[usize], shape: &[usize]) -> TractResult<Tensor> {
        let plain = x.try_as_plain_ram()?;
        let data = plain.as_slice::<T>()?;
        let last = x.shape().last().copied().unwrap_or(1).max(1);
        let out: Vec<T> = data.chunks_exact(last).flat_map(|row| indices.iter().map(move |&i| row[i])).collect();
        Tensor::from_shape(shape, &out)
    }
}

impl Expansion for ArrayFeatureExtractor {
    fn name(&self) -> StaticName {
        "ArrayFeatureExtractor".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[1].datum_type, i64::datum_type())?;
        s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, x, indices| {
            s.equals(&outputs[0].shape, self.output_shape(&x, &indices)?)
        })?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for ArrayFeatureExtractor {
    fn name(&self) -> StaticName {
        "ArrayFeatureExtractor".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ArrayFeatureExtractor {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, indices) = (&inputs[0], &inputs[1]);
        let shape = self.output_shape(x.shape(), indices.shape())?;
        let last = x.shape().last().copied().unwrap_or(0);
        let plain = indices.try_as_plain_ram()?;
        let indices = plain
            .as_slice::<i64>()?
            .iter()
            .map(|&i| match usize::try_from(i) {
                Ok(i) if i < last => Ok(i),
                _ => bail!(
                    "ArrayFeatureExtractor node '{}': index {i} outside the input's last axis of {last}",
                    self.node
                ),
            })
            .collect::<TractResult<Vec<usize>>>()?;
        let y = match x.datum_type() {
            DatumType::F32 => self.gather::<f32>(x, &indices, &shape)?,
            DatumType::F64 => self.gather::<f64>(x, &indices, &shape)?,
            DatumType::I64 => self.gather::<i64>(x, &indices, &shape)?,
            DatumType::I32 => self.gather::<i32>(x, &indices, &shape)?,
            dt => bail!(
                "ArrayFeatureExtractor node '{}': input of type {dt:?}; it takes float, double, int64 or int32",
                self.node
            ),
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for ArrayFeatureExtractor {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = self.output_shape(&inputs[0].shape, &inputs[1].shape)?;
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(x: Tensor, indices: Tensor) -> TractResult<Tensor> {
        let op = ArrayFeatureExtractor { node: "afe".into() };
        Ok(op.eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue(), indices.into_tvalue()))?.remove(0).into_tensor())
    }

    #[test]
    fn a_scalar_index_keeps_the_column_axis_as_onnxruntime_does() -> TractResult<()> {
        let x = Tensor::from_shape(&[2, 3], &[1f32, 2., 3., 4., 5., 6.])?;
        let y = run(x.clone(), tensor0(2i64))?;
        assert_eq!(y.shape(), [2, 1]);
        assert_eq!(y.try_as_plain_ram()?.as_slice::<f32>()?, [3., 6.]);
        let y = run(x, tensor1(&[2i64, 0]))?;
        assert_eq!(y.shape(), [2, 2]);
        assert_eq!(y.try_as_plain_ram()?.as_slice::<f32>()?, [3., 1., 6., 4.]);
        let y = run(tensor1(&[7i64, 8, 9]), tensor1(&[1i64]))?;
        assert_eq!(y.shape(), [1, 1], "a 1-D input gives one row");
        Ok(())
    }

    #[test]
    fn negative_or_past_the_end_indices_are_errors_not_panics() {
        let x = Tensor::from_shape(&[1, 3], &[1f32, 2., 3.]).expect("tensor");
        for bad in [-1i64, 3] {
            let e = run(x.clone(), tensor0(bad)).expect_err("refused");
            assert!(e.to_string().contains("ArrayFeatureExtractor node 'afe'"), "{e}");
        }
    }
}
