//! The `ai.onnx.ml` operators scikit-learn, XGBoost and LightGBM models need and tract 0.23 lacks
//! or runs differently from onnxruntime.
//!
//! skl2onnx and onnxmltools write tree ensembles, scalers and SVMs as `ai.onnx.ml` operators.
//! tract registers only a few of them, and its `TreeEnsembleClassifier` refuses the one-element
//! `base_values` onnxmltools writes for XGBoost binary classifiers, so those models could not
//! load at all. The operators here follow onnxruntime's kernels (the reference every exporter is
//! tested against) and register into tract-onnx's parser under the standard names, replacing
//! tract's own `TreeEnsembleClassifier` and `ArrayFeatureExtractor` (whose shapes differ from
//! onnxruntime's).

mod array_feature_extractor;
mod attrs;
mod label_encoder;
mod scaler;
mod svm;
mod transform;
mod tree;
mod tree_op;

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::tract_hir::internal::*;

/// Registers Drover's `ai.onnx.ml` operators (over tract's where the names collide).
pub(crate) fn register(register: &mut OnnxOpRegister) {
    register.insert("TreeEnsembleRegressor", tree_op::build_regressor);
    register.insert("TreeEnsembleClassifier", tree_op::build_classifier);
    register.insert("Scaler", scaler::build);
    register.insert("SVMClassifier", svm::build_classifier);
    register.insert("SVMRegressor", svm::build_regressor);
    register.insert("LabelEncoder", label_encoder::build);
    register.insert("ArrayFeatureExtractor", array_feature_extractor::build);
}

/// The shape rules the estimators here share (tree ensembles, SVMs): an `[N, features]` (or
/// `[features]`) input; last, an `[N, width]` float score output; before it, for a classifier,
/// an `[N]` int64 label.
pub(super) fn estimator_rules<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
    width: TDim,
    op: &'static str,
    node: String,
) -> InferenceResult {
    let scores = outputs.len().saturating_sub(1);
    s.equals(&outputs[scores].datum_type, DatumType::F32)?;
    s.equals(&outputs[scores].rank, 2)?;
    s.equals(&outputs[scores].shape[1], width)?;
    if scores == 1 {
        s.equals(&outputs[0].datum_type, DatumType::I64)?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[0].shape[0], &outputs[1].shape[0])?;
    }
    s.given(&inputs[0].rank, move |s, rank| match rank {
        1 => s.equals(&outputs[scores].shape[0], 1.to_dim()),
        2 => s.equals(&outputs[scores].shape[0], &inputs[0].shape[0]),
        r => bail!("{op} node '{node}': input of rank {r}; it takes [N, features]"),
    })?;
    Ok(())
}
