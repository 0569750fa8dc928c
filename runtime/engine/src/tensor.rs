//! Drover's own host tensor: owned, typed, row-major data with a shape.
//!
//! Input readers (JSONL, npy), the batcher and the output writer work on this type instead of
//! tract's, so that the engine is the only module that knows tract and a future engine (or a
//! microcontroller frame) can feed the same readers and writers.

use drover_wire::DType;
use serde::ser::{Serialize, SerializeSeq, Serializer};
use tract_onnx::prelude::{Datum, Tensor as TractTensor};

/// Owned element storage, one variant per [`DType`].
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    I8(Vec<i8>),
}

/// Runs `$body` with `$v` bound to the typed vector inside a [`TensorData`].
macro_rules! dispatch {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::I8($v) => $body,
        }
    };
}

/// A dense tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// Why a tensor could not be built or reshaped.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    /// The element count does not match the product of the shape.
    #[error("shape {shape:?} needs {expected} elements, got {actual}")]
    ElementCount {
        /// Requested shape.
        shape: Vec<usize>,
        /// Product of the shape.
        expected: usize,
        /// Elements supplied.
        actual: usize,
    },
    /// Tensors stacked into one batch differ in shape or type.
    #[error("cannot stack {what}: sample {index} is {got}, sample 0 is {first}")]
    Mismatch {
        /// "shapes" or "types".
        what: &'static str,
        /// First mismatching sample.
        index: usize,
        /// Its shape or type.
        got: String,
        /// The first sample's shape or type.
        first: String,
    },
    /// Nothing to stack.
    #[error("cannot stack zero samples")]
    Empty,
    /// A tract tensor whose element type Drover does not carry.
    #[error("unsupported element type {0}")]
    UnsupportedType(String),
    /// Splitting along an axis the tensor does not have, or into the wrong count.
    #[error("cannot split shape {shape:?} into {parts} samples along axis 0")]
    Split {
        /// The tensor's shape.
        shape: Vec<usize>,
        /// Requested number of parts.
        parts: usize,
    },
}

impl Tensor {
    /// Builds a tensor, checking that `data` fills `shape` exactly.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor, TensorError> {
        let expected = shape.iter().product::<usize>();
        let actual = dispatch!(&data, v => v.len());
        if expected != actual {
            return Err(TensorError::ElementCount { shape, expected, actual });
        }
        Ok(Tensor { shape, data })
    }

    /// An empty float tensor, a placeholder whose buffers later calls fill.
    pub fn empty() -> Tensor {
        Tensor { shape: vec![0], data: TensorData::F32(Vec::new()) }
    }

    /// Shape, outermost axis first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        match &self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::I64(_) => DType::I64,
            TensorData::I32(_) => DType::I32,
            TensorData::U8(_) => DType::U8,
            TensorData::I8(_) => DType::I8,
        }
    }

    /// The elements, row-major.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        dispatch!(&self.data, v => v.len())
    }

    /// Whether the tensor holds no element (some axis is 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements as `f64`, for comparisons and statistics across types.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::I8(v) => v.iter().map(|&x| f64::from(x)).collect(),
        }
    }

    /// Stacks samples of equal shape and type along a new leading axis (the batch axis).
    pub fn stack(samples: &[&Tensor]) -> Result<Tensor, TensorError> {
        let first = samples.first().ok_or(TensorError::Empty)?;
        for (index, s) in samples.iter().enumerate() {
            if s.dtype() != first.dtype() {
                return Err(TensorError::Mismatch {
                    what: "types",
                    index,
                    got: s.dtype().to_string(),
                    first: first.dtype().to_string(),
                });
            }
            if s.shape != first.shape {
                return Err(TensorError::Mismatch {
                    what: "shapes",
                    index,
                    got: format!("{:?}", s.shape),
                    first: format!("{:?}", first.shape),
                });
            }
        }
        let mut shape = Vec::with_capacity(first.shape.len() + 1);
        shape.push(samples.len());
        shape.extend_from_slice(&first.shape);
        macro_rules! concat {
            ($variant:ident) => {{
                let mut out = Vec::with_capacity(first.len() * samples.len());
                for s in samples {
                    if let TensorData::$variant(v) = &s.data {
                        out.extend_from_slice(v);
                    }
                }
                TensorData::$variant(out)
            }};
        }
        let data = match first.data {
            TensorData::F32(_) => concat!(F32),
            TensorData::F64(_) => concat!(F64),
            TensorData::I64(_) => concat!(I64),
            TensorData::I32(_) => concat!(I32),
            TensorData::U8(_) => concat!(U8),
            TensorData::I8(_) => concat!(I8),
        };
        Tensor::new(shape, data)
    }

    /// Splits along the leading axis into `parts` tensors without that axis (inverse of
    /// [`Tensor::stack`]).
    pub fn unstack(&self, parts: usize) -> Result<Vec<Tensor>, TensorError> {
        if self.shape.first() != Some(&parts) {
            return Err(TensorError::Split { shape: self.shape.clone(), parts });
        }
        let inner: Vec<usize> = self.shape[1..].to_vec();
        let step = inner.iter().product::<usize>();
        let mut out = Vec::with_capacity(parts);
        for i in 0..parts {
            let range = i * step..(i + 1) * step;
            let data = match &self.data {
                TensorData::F32(v) => TensorData::F32(v[range].to_vec()),
                TensorData::F64(v) => TensorData::F64(v[range].to_vec()),
                TensorData::I64(v) => TensorData::I64(v[range].to_vec()),
                TensorData::I32(v) => TensorData::I32(v[range].to_vec()),
                TensorData::U8(v) => TensorData::U8(v[range].to_vec()),
                TensorData::I8(v) => TensorData::I8(v[range].to_vec()),
            };
            out.push(Tensor { shape: inner.clone(), data });
        }
        Ok(out)
    }

    /// Reshapes in place when the element count allows it (used to add or drop a unit batch axis).
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Tensor, TensorError> {
        let expected = shape.iter().product::<usize>();
        if expected != self.len() {
            return Err(TensorError::ElementCount { shape, expected, actual: self.len() });
        }
        self.shape = shape;
        Ok(self)
    }

    /// Copies samples of equal shape and type into one tract tensor with a leading batch axis:
    /// one copy per element, straight into tract's aligned buffer.
    pub(crate) fn batch_to_tract(samples: &[&Tensor]) -> Result<TractTensor, TensorError> {
        let first = samples.first().ok_or(TensorError::Empty)?;
        let mut shape = Vec::with_capacity(first.shape.len() + 1);
        shape.push(samples.len());
        shape.extend_from_slice(&first.shape);
        if let [only] = samples {
            return Ok(dispatch!(&only.data, v => build(&shape, v)));
        }
        Ok(Tensor::stack(samples)?.to_tract_shaped(&shape))
    }

    /// Copies into a tract tensor for the engine.
    pub(crate) fn to_tract(&self) -> TractTensor {
        self.to_tract_shaped(&self.shape)
    }

    fn to_tract_shaped(&self, shape: &[usize]) -> TractTensor {
        dispatch!(&self.data, v => build(shape, v))
    }

    /// Copies a tract output tensor out of the engine, split along its leading axis into `parts`
    /// tensors without that axis (the inverse of [`Tensor::batch_to_tract`]).
    pub(crate) fn split_tract(t: &TractTensor, parts: usize) -> Result<Vec<Tensor>, TensorError> {
        if t.shape().first() != Some(&parts) {
            return Err(TensorError::Split { shape: t.shape().to_vec(), parts });
        }
        let whole = Tensor::from_tract(t)?;
        if parts == 1 {
            let inner = whole.shape[1..].to_vec();
            return Ok(vec![Tensor { shape: inner, data: whole.data }]);
        }
        whole.unstack(parts)
    }

    /// Overwrites this tensor with a tract output, dropping its leading axis when `drop_leading`
    /// is set (a one-sample batch). Reuses this tensor's buffers, so a caller that keeps its
    /// output tensors between calls allocates nothing once they have grown.
    pub(crate) fn assign_from_tract(&mut self, t: &TractTensor, drop_leading: bool) -> Result<(), TensorError> {
        use tract_onnx::prelude::DatumType;
        let shape = t.shape();
        let inner = if drop_leading {
            match shape.split_first() {
                Some((1, rest)) => rest,
                _ => return Err(TensorError::Split { shape: shape.to_vec(), parts: 1 }),
            }
        } else {
            shape
        };
        fn fill<T: Datum + Copy>(dst: &mut Vec<T>, t: &TractTensor) -> Result<(), TensorError> {
            let unsupported = |e: tract_onnx::prelude::TractError| TensorError::UnsupportedType(format!("{e:#}"));
            let plain = t.try_as_plain_ram().map_err(unsupported)?;
            dst.clear();
            dst.extend_from_slice(plain.as_slice::<T>().map_err(unsupported)?);
            Ok(())
        }
        macro_rules! assign {
            ($variant:ident) => {{
                if !matches!(self.data, TensorData::$variant(_)) {
                    self.data = TensorData::$variant(Vec::new());
                }
                if let TensorData::$variant(v) = &mut self.data {
                    fill(v, t)?;
                }
            }};
        }
        match t.datum_type() {
            DatumType::F32 => assign!(F32),
            DatumType::F64 => assign!(F64),
            DatumType::I64 => assign!(I64),
            DatumType::I32 => assign!(I32),
            DatumType::U8 => assign!(U8),
            DatumType::I8 => assign!(I8),
            other => return Err(TensorError::UnsupportedType(format!("{other:?}"))),
        }
        self.shape.clear();
        self.shape.extend_from_slice(inner);
        Ok(())
    }

    /// Copies into a tract tensor with a leading axis of 1 (a one-sample batch), without
    /// allocating for the shape.
    pub(crate) fn to_tract_one(&self) -> TractTensor {
        let mut shape: tract_onnx::prelude::TVec<usize> = tract_onnx::prelude::TVec::new();
        shape.push(1);
        shape.extend_from_slice(&self.shape);
        self.to_tract_shaped(&shape)
    }

    /// Copies a tract output tensor out of the engine.
    pub(crate) fn from_tract(t: &TractTensor) -> Result<Tensor, TensorError> {
        use tract_onnx::prelude::DatumType;
        fn read<T: Datum + Copy>(t: &TractTensor) -> Result<Vec<T>, TensorError> {
            let unsupported = |e: tract_onnx::prelude::TractError| TensorError::UnsupportedType(format!("{e:#}"));
            let plain = t.try_as_plain_ram().map_err(unsupported)?;
            Ok(plain.as_slice::<T>().map_err(unsupported)?.to_vec())
        }
        let data = match t.datum_type() {
            DatumType::F32 => TensorData::F32(read(t)?),
            DatumType::F64 => TensorData::F64(read(t)?),
            DatumType::I64 => TensorData::I64(read(t)?),
            DatumType::I32 => TensorData::I32(read(t)?),
            DatumType::U8 => TensorData::U8(read(t)?),
            DatumType::I8 => TensorData::I8(read(t)?),
            other => return Err(TensorError::UnsupportedType(format!("{other:?}"))),
        };
        Tensor::new(t.shape().to_vec(), data)
    }
}

fn build<T: Datum + Copy>(shape: &[usize], v: &[T]) -> TractTensor {
    // Every caller passes a shape whose product is v.len() (checked when the tensor was built).
    TractTensor::from_shape(shape, v).unwrap_or_else(|_| unreachable!("element count checked at construction"))
}

/// Serialises as a nested JSON array (a scalar for rank 0), floats in their shortest exact form.
impl Serialize for Tensor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        dispatch!(&self.data, v => Nested { shape: &self.shape, data: v }.serialize(serializer))
    }
}

/// A view of `data` as nested arrays following `shape`.
struct Nested<'a, T> {
    shape: &'a [usize],
    data: &'a [T],
}

impl<T: Serialize> Serialize for Nested<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.shape.split_first() {
            None => match self.data.first() {
                Some(x) => x.serialize(serializer),
                None => serializer.serialize_unit(),
            },
            Some((&n, rest)) => {
                let step = rest.iter().product::<usize>();
                let mut seq = serializer.serialize_seq(Some(n))?;
                for i in 0..n {
                    seq.serialize_element(&Nested { shape: rest, data: &self.data[i * step..(i + 1) * step] })?;
                }
                seq.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::new(shape.to_vec(), TensorData::F32(v)).expect("valid")
    }

    #[test]
    fn element_count_is_checked() {
        let err = Tensor::new(vec![2, 3], TensorData::I64(vec![1, 2])).unwrap_err();
        assert_eq!(err, TensorError::ElementCount { shape: vec![2, 3], expected: 6, actual: 2 });
    }

    #[test]
    fn stack_then_unstack_is_identity() {
        let a = t(&[2], vec![1.0, 2.0]);
        let b = t(&[2], vec![3.0, 4.0]);
        let s = Tensor::stack(&[&a, &b]).expect("stacks");
        assert_eq!(s.shape(), &[2, 2]);
        assert_eq!(s.unstack(2).expect("splits"), vec![a, b]);
    }

    #[test]
    fn stack_refuses_mixed_shapes_naming_the_sample() {
        let a = t(&[2], vec![1.0, 2.0]);
        let b = t(&[3], vec![3.0, 4.0, 5.0]);
        let err = Tensor::stack(&[&a, &a, &b]).unwrap_err();
        assert!(matches!(err, TensorError::Mismatch { what: "shapes", index: 2, .. }), "{err}");
    }

    #[test]
    fn unstack_refuses_a_wrong_count() {
        let a = t(&[3, 1], vec![1.0, 2.0, 3.0]);
        assert!(a.unstack(2).is_err());
    }

    #[test]
    fn serialises_nested_with_shortest_floats() {
        let a = t(&[2, 2], vec![0.1, 2.0, -3.5, 1e-7]);
        assert_eq!(serde_json::to_string(&a).expect("json"), "[[0.1,2.0],[-3.5,1e-7]]");
        let s = Tensor::new(vec![], TensorData::I64(vec![7])).expect("scalar");
        assert_eq!(serde_json::to_string(&s).expect("json"), "7");
    }

    #[test]
    fn tract_round_trip_keeps_type_and_shape() {
        let a = Tensor::new(vec![1, 3], TensorData::I8(vec![-1, 0, 1])).expect("valid");
        let back = Tensor::from_tract(&a.to_tract()).expect("round trip");
        assert_eq!(back, a);
    }

    #[test]
    fn batching_into_tract_and_splitting_back_is_identity() {
        let a = t(&[2], vec![1.0, 2.0]);
        let b = t(&[2], vec![3.0, 4.0]);
        for samples in [vec![&a], vec![&a, &b]] {
            let batched = Tensor::batch_to_tract(&samples).expect("batches");
            assert_eq!(batched.shape(), &[samples.len(), 2]);
            let back = Tensor::split_tract(&batched, samples.len()).expect("splits");
            assert_eq!(back.iter().collect::<Vec<_>>(), samples);
        }
        assert!(Tensor::split_tract(&a.to_tract(), 3).is_err());
    }

    #[test]
    fn assigning_a_one_sample_batch_reuses_buffers_and_drops_the_axis() {
        let a = t(&[3], vec![1.0, 2.0, 3.0]);
        let mut out = Tensor::new(vec![], TensorData::I8(vec![0])).expect("placeholder");
        out.assign_from_tract(&a.to_tract_one(), true).expect("assigns");
        assert_eq!(out, a);
        let b = t(&[3], vec![4.0, 5.0, 6.0]);
        out.assign_from_tract(&b.to_tract_one(), true).expect("assigns");
        assert_eq!(out, b);
        assert!(out.assign_from_tract(&Tensor::stack(&[&a, &b]).expect("stack").to_tract(), true).is_err());
    }
}
