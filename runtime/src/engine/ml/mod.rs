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
