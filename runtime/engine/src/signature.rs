use drover_wire::{DType, Dim, TensorSpec};
use serde::Serialize;

/// How samples map onto the model's leading axis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "symbol")]
pub enum BatchAxis {
    /// Every input starts with the same symbolic axis: any number of samples per run.
    Symbolic(String),
    /// Every input starts with a fixed axis of 1: one sample per run, given without that axis.
    FixedOne,
    /// No common batch axis: a sample is the whole set of input tensors.
    None,
}

impl BatchAxis {
    /// Largest batch a run may take.
    pub fn max_batch(&self) -> usize {
        match self {
            BatchAxis::Symbolic(_) => usize::MAX,
            BatchAxis::FixedOne | BatchAxis::None => 1,
        }
    }

    /// Whether samples are given without the leading axis.
    pub fn strips_leading_axis(&self) -> bool {
        !matches!(self, BatchAxis::None)
    }

    /// Whether `output` has this batch axis in front, to split samples along. Outputs of a
    /// [`BatchAxis::FixedOne`] model that do not start with a fixed 1 have none (a detector's
    /// `[K, 4]` boxes): they are the one sample's whole answer. Outputs of a symbolic batch
    /// are taken to have it (a run checks that they do).
    pub fn batches_output(&self, output: &TensorSpec) -> bool {
        match self {
            BatchAxis::Symbolic(_) => true,
            BatchAxis::FixedOne => output.shape.first() == Some(&Dim::Fixed(1)),
            BatchAxis::None => false,
        }
    }

    /// Finds the batch axis shared by all inputs.
    pub fn of(inputs: &[TensorSpec]) -> BatchAxis {
        let firsts: Vec<Option<&Dim>> = inputs.iter().map(|i| i.shape.first()).collect();
        match firsts.first() {
            Some(Some(Dim::Symbolic(s))) if s.as_str() != "?" && firsts.iter().all(|d| *d == firsts[0]) => {
                BatchAxis::Symbolic(s.to_string())
            }
            Some(Some(Dim::Fixed(1))) if firsts.iter().all(|d| *d == Some(&Dim::Fixed(1))) => BatchAxis::FixedOne,
            _ => BatchAxis::None,
        }
    }
}

/// What a loaded model takes and returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signature {
    /// Inputs in the order the model declares them.
    pub inputs: Vec<TensorSpec>,
    /// Outputs in the order the model declares them.
    pub outputs: Vec<TensorSpec>,
    /// How samples are batched.
    pub batch: BatchAxis,
    /// The class labels of outputs that were a ZipMap's map in the file: their columns, in
    /// order (see [`super::zipmap`]). OIP v2 carries tensors, not maps, so clients read the labels
    /// from the model's metadata.
    pub class_labels: Vec<super::zipmap::ClassLabels>,
}

impl Signature {
    /// Index of the input called `name`.
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|i| i.name.as_str() == name)
    }

    /// The shape one sample of input `index` must have: the declared shape without the batch
    /// axis. `None` entries accept any size (symbolic axes).
    pub fn sample_shape(&self, index: usize) -> Vec<Option<usize>> {
        let spec = &self.inputs[index];
        let skip = usize::from(self.batch.strips_leading_axis());
        spec.shape.iter().skip(skip).map(fixed).collect()
    }

    /// Element type of input `index`.
    pub fn input_dtype(&self, index: usize) -> DType {
        self.inputs[index].dtype
    }
}

/// The size of a fixed axis; `None` for a symbolic one.
pub fn fixed(d: &Dim) -> Option<usize> {
    match d {
        Dim::Fixed(n) => usize::try_from(*n).ok(),
        Dim::Symbolic(_) => None,
    }
}

/// Formats an expected per-sample shape for messages, `?` for free axes.
pub fn describe_shape(shape: &[Option<usize>]) -> String {
    shape.iter().map(|d| d.map_or("?".to_string(), |n| n.to_string())).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_wire::DimRef;

    fn spec(name: &str, dims: &[DimRef<'_>]) -> TensorSpec {
        TensorSpec::new(name, DType::F32, dims.iter().copied()).expect("fits")
    }

    #[test]
    fn batch_axis_is_found_from_inputs() {
        let n = DimRef::Symbolic("N");
        assert_eq!(
            BatchAxis::of(&[spec("a", &[n, DimRef::Fixed(3)]), spec("b", &[n])]),
            BatchAxis::Symbolic("N".into())
        );
        assert_eq!(BatchAxis::of(&[spec("a", &[DimRef::Fixed(1), DimRef::Fixed(28)])]), BatchAxis::FixedOne);
        assert_eq!(BatchAxis::of(&[spec("a", &[n]), spec("b", &[DimRef::Symbolic("M")])]), BatchAxis::None);
        assert_eq!(BatchAxis::of(&[spec("a", &[DimRef::Fixed(4)])]), BatchAxis::None);
        assert_eq!(BatchAxis::of(&[spec("a", &[])]), BatchAxis::None);
        // An unnamed axis is not a batch axis Drover can rely on.
        assert_eq!(BatchAxis::of(&[spec("a", &[DimRef::Symbolic("?")])]), BatchAxis::None);
    }

    #[test]
    fn a_fixed_one_batch_is_in_outputs_that_start_with_one() {
        let one = BatchAxis::FixedOne;
        assert!(one.batches_output(&spec("logits", &[DimRef::Fixed(1), DimRef::Fixed(10)])));
        assert!(!one.batches_output(&spec("boxes", &[DimRef::Fixed(300), DimRef::Fixed(4)])));
        assert!(!one.batches_output(&spec("scores", &[DimRef::Symbolic("k")])));
        assert!(!one.batches_output(&spec("count", &[])));
        assert!(BatchAxis::Symbolic("N".into()).batches_output(&spec("y", &[DimRef::Symbolic("N")])));
    }

    #[test]
    fn sample_shape_drops_the_batch_axis() {
        let sig = Signature {
            class_labels: Vec::new(),
            inputs: vec![spec("a", &[DimRef::Symbolic("N"), DimRef::Symbolic("T"), DimRef::Fixed(3)])],
            outputs: vec![],
            batch: BatchAxis::Symbolic("N".into()),
        };
        assert_eq!(sig.sample_shape(0), vec![None, Some(3)]);
        assert_eq!(describe_shape(&sig.sample_shape(0)), "?,3");
    }
}
