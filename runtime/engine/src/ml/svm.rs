//! `SVMClassifier` and `SVMRegressor` (skl2onnx's SVC, NuSVC, SVR, NuSVR and OneClassSVM) as
//! tract operators, computed as onnxruntime's kernels do.
//!
//! The ONNX spec leaves most of what matters to the exporters unsaid, and skl2onnx writes its
//! models against onnxruntime's behaviour, so that behaviour is the reference here:
//!
//! * the one-vs-one decision values `Σ coef·K + rho` are accumulated in f64 over f32 products,
//!   and each one votes for class `i` when positive, for class `j` otherwise;
//! * the label is the class with the most votes (the first on a tie), **also when probabilities
//!   are computed**: onnxruntime does not take the most probable class, and neither does Drover;
//! * probabilities are libsvm's: Platt scaling of each pair (`1 − σ(A·f + B)`, clipped to
//!   `[1e-7, 1 − 1e-7]`) coupled by libsvm's iterative method, with onnxruntime's f32 arithmetic;
//! * a binary model without probabilities gives two scores from one decision value `f`:
//!   `[−f, f]`, or `[1 − f, f]` when a `post_transform` is set (which is then not applied);
//! * without support vectors (`vectors_per_class`/`n_supports` empty or zero) the model is
//!   liblinear's: one coefficient row per class and `rho[0]` added to every class's score.

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::attrs::{AttrError, Attrs};
use super::transform::{PostTransform, logistic};

/// onnxruntime's limit on the number of classes.
const MAX_CLASSES: usize = 65535;

/// The kernel function `K(x, v)` between an input row and a support vector.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KernelType {
    Linear,
    Poly,
    Rbf,
    Sigmoid,
}

/// A kernel with its parameters (`kernel_params` = `[gamma, coef0, degree]`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Kernel {
    kind: KernelType,
    gamma: f32,
    coef0: f32,
    degree: f32,
}

impl Kernel {
    /// The linear kernel liblinear-mode models use whatever `kernel_type` says.
    const LINEAR: Kernel = Kernel { kind: KernelType::Linear, gamma: 0.0, coef0: 0.0, degree: 0.0 };

    fn parse(attrs: &Attrs<'_>) -> Result<Kernel, AttrError> {
        let kind = match attrs.string_or("kernel_type", "LINEAR")?.as_str() {
            "LINEAR" => KernelType::Linear,
            "POLY" => KernelType::Poly,
            "RBF" => KernelType::Rbf,
            "SIGMOID" => KernelType::Sigmoid,
            // onnxruntime runs any other name as SIGMOID; a typo should not silently do that.
            other => {
                return Err(attrs.error("kernel_type", format!("'{other}' is none of LINEAR, POLY, RBF, SIGMOID")));
            }
        };
        let (gamma, coef0, degree) = match attrs.floats("kernel_params")[..] {
            [] => (0.0, 0.0, 0.0),
            [gamma, coef0, degree] => (gamma, coef0, degree),
            ref other => {
                return Err(attrs.error(
                    "kernel_params",
                    format!("{} values where 3 (gamma, coef0, degree) are needed", other.len()),
                ));
            }
        };
        Ok(Kernel { kind, gamma, coef0, degree })
    }

    /// `K(x, v)`; `c` is the constant the linear kernel adds (0 between an input and a support
    /// vector, `rho[0]` in liblinear mode), as onnxruntime passes it to its GEMM.
    fn apply(&self, x: &[f32], v: &[f32], c: f32) -> f32 {
        let dot = || x.iter().zip(v).fold(0f32, |s, (a, b)| s + a * b);
        match self.kind {
            KernelType::Rbf => {
                let sum = x.iter().zip(v).fold(0f32, |s, (a, b)| {
                    let d = a - b;
                    s + d * d
                });
                (-self.gamma * sum).exp()
            }
            KernelType::Linear => dot() + c,
            KernelType::Poly => {
                let base = self.gamma * dot() + self.coef0;
                if self.degree == 2.0 {
                    base * base
                } else if self.degree == 3.0 {
                    base * base * base
                } else {
                    base.powf(self.degree)
                }
            }
            KernelType::Sigmoid => (self.gamma * dot() + self.coef0).tanh(),
        }
    }
}

/// Support vectors, one row of `features` values each.
#[derive(Debug, Clone, PartialEq)]
struct Supports {
    vectors: Vec<f32>,
    features: usize,
}

impl Supports {
    /// Reads `support_vectors` for `count` vectors; the feature count is what divides evenly.
    fn parse(attrs: &Attrs<'_>, count: usize) -> Result<Supports, AttrError> {
        let vectors = attrs.floats("support_vectors");
        if count == 0 || vectors.is_empty() || !vectors.len().is_multiple_of(count) {
            return Err(attrs.error(
                "support_vectors",
                format!("{} values cannot be {count} support vectors of the same length", vectors.len()),
            ));
        }
        Ok(Supports { features: vectors.len() / count, vectors })
    }

    fn count(&self) -> usize {
        self.vectors.len() / self.features
    }

    /// `K(x, v)` for every support vector `v`.
    fn kernels(&self, kernel: &Kernel, x: &[f32], out: &mut [f32]) {
        for (k, v) in out.iter_mut().zip(self.vectors.chunks_exact(self.features)) {
            *k = kernel.apply(x, v, 0.0);
        }
    }
}

/// How an `SVMClassifier` scores a row.
#[derive(Debug, Clone, PartialEq)]
enum ClassifierMode {
    /// libsvm: support vectors per class, one-vs-one decision values and votes.
    Svc {
        supports: Supports,
        /// Support vectors of each class, and where each class's start.
        per_class: Vec<usize>,
        starts: Vec<usize>,
        /// Platt scaling `(A, B)` per pair of classes, when the model gives probabilities.
        platt: Option<(Vec<f32>, Vec<f32>)>,
    },
    /// liblinear: one coefficient row per class.
    Linear { features: usize },
}

/// An `SVMClassifier` node's model.
#[derive(Debug, Clone, PartialEq)]
struct Classifier {
    labels: Vec<i64>,
    mode: ClassifierMode,
    coefficients: Vec<f32>,
    rho: Vec<f32>,
    post: PostTransform,
    /// No negative coefficient (onnxruntime's binary liblinear rule reads it).
    all_positive: bool,
    /// The node has `prob_a`: onnxruntime then skips its binary liblinear rule.
    have_proba: bool,
}

/// An `SVMRegressor` node's model.
#[derive(Debug, Clone, PartialEq)]
struct Regressor {
    /// `None` in liblinear mode (`coefficients` are then per feature).
    supports: Option<Supports>,
    coefficients: Vec<f32>,
    rho0: f32,
    /// OneClassSVM: the output is the sign of the decision value, ±1.
    one_class: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Head {
    Classifier(Classifier),
    Regressor(Regressor),
}

/// tract-onnx's builder for `SVMClassifier`.
pub(crate) fn build_classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(classifier(node)?), vec![]))
}

/// tract-onnx's builder for `SVMRegressor`.
pub(crate) fn build_regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(regressor(node)?), vec![]))
}

/// `n·(n−1)/2`, the number of class pairs.
fn pairs(n: usize) -> usize {
    n * n.saturating_sub(1) / 2
}

fn classifier(node: &NodeProto) -> TractResult<Svm> {
    let attrs = Attrs::new(node);
    if attrs.has("classlabels_strings") {
        return Err(attrs
            .error_with(
                "classlabels_strings",
                "string class labels are not supported (Drover's outputs are numeric tensors)",
                "train on integer classes (e.g. sklearn's LabelEncoder) and map them back to names outside the model",
            )
            .into());
    }
    let labels = attrs.ints("classlabels_ints");
    let classes = labels.len();
    if !(2..=MAX_CLASSES).contains(&classes) {
        return Err(attrs
            .error("classlabels_ints", format!("{classes} class labels; a classifier needs 2 to {MAX_CLASSES}"))
            .into());
    }
    let mut kernel = Kernel::parse(&attrs)?;
    let coefficients = attrs.floats("coefficients");
    let rho = attrs.floats("rho");
    let post = PostTransform::parse(&attrs)?;
    let per_class: Vec<usize> = attrs.indices("vectors_per_class")?.into_iter().map(|v| v as usize).collect();
    let vectors = per_class.iter().try_fold(0usize, |s, &v| s.checked_add(v));
    let vectors = vectors.ok_or_else(|| attrs.error("vectors_per_class", "the counts overflow"))?;
    let (prob_a, prob_b) = (attrs.floats("prob_a"), attrs.floats("prob_b"));
    attrs.expect_len("prob_b", &prob_b, prob_a.len())?;
    let have_proba = !prob_a.is_empty();
    let mode = if vectors > 0 {
        attrs.expect_len("vectors_per_class", &per_class, classes)?;
        let supports = Supports::parse(&attrs, vectors)?;
        let expected = (classes - 1).checked_mul(vectors).ok_or_else(|| attrs.error("coefficients", "too many"))?;
        attrs.expect_len("coefficients", &coefficients, expected)?;
        attrs.expect_len("rho", &rho, pairs(classes))?;
        let platt = if prob_a.is_empty() {
            None
        } else {
            attrs.expect_len("prob_a", &prob_a, pairs(classes))?;
            Some((prob_a, prob_b))
        };
        if classes == 2 && platt.is_none() && post == PostTransform::Probit {
            return Err(attrs
                .error_with(
                    "post_transform",
                    "PROBIT on a binary classifier has no defined second score (onnxruntime leaves it unset)",
                    "re-export with post_transform NONE",
                )
                .into());
        }
        let starts = per_class.iter().scan(0, |s, &v| Some(std::mem::replace(s, *s + v))).collect();
        ClassifierMode::Svc { supports, per_class, starts, platt }
    } else {
        if coefficients.is_empty() || !coefficients.len().is_multiple_of(classes) {
            return Err(attrs
                .error(
                    "coefficients",
                    format!("{} values cannot be one row per class for {classes} classes", coefficients.len()),
                )
                .into());
        }
        if rho.is_empty() {
            return Err(attrs.error("rho", "no value (liblinear mode adds rho[0])").into());
        }
        kernel = Kernel::LINEAR;
        ClassifierMode::Linear { features: coefficients.len() / classes }
    };
    let all_positive = coefficients.iter().all(|&c| c >= 0.0);
    let head = Head::Classifier(Classifier { labels, mode, coefficients, rho, post, all_positive, have_proba });
    Ok(Svm { node: node.name.clone(), kernel, head: Arc::new(head) })
}

fn regressor(node: &NodeProto) -> TractResult<Svm> {
    let attrs = Attrs::new(node);
    let mut kernel = Kernel::parse(&attrs)?;
    let vectors = attrs.int_or("n_supports", 0);
    let vectors =
        usize::try_from(vectors).map_err(|_| attrs.error("n_supports", format!("{vectors} support vectors")))?;
    let coefficients = attrs.floats("coefficients");
    let rho = attrs.floats("rho");
    let Some(&rho0) = rho.first() else {
        return Err(attrs.error("rho", "no value").into());
    };
    let one_class = match attrs.int_or("one_class", 0) {
        0 => false,
        1 => true,
        v => return Err(attrs.error("one_class", format!("{v}; it is 0 or 1")).into()),
    };
    if PostTransform::parse(&attrs)? != PostTransform::None {
        return Err(attrs
            .error_with(
                "post_transform",
                "onnxruntime ignores it where the ONNX spec applies it",
                "apply the transform after the regressor in the graph, or re-export with post_transform NONE",
            )
            .into());
    }
    let supports = if vectors > 0 {
        let supports = Supports::parse(&attrs, vectors)?;
        attrs.expect_len("coefficients", &coefficients, vectors)?;
        Some(supports)
    } else {
        if coefficients.is_empty() {
            return Err(attrs.error("coefficients", "no value").into());
        }
        kernel = Kernel::LINEAR;
        None
    };
    let head = Head::Regressor(Regressor { supports, coefficients, rho0, one_class });
    Ok(Svm { node: node.name.clone(), kernel, head: Arc::new(head) })
}

/// The index of the first largest value, as `std::max_element` finds it.
fn first_max<T: PartialOrd + Copy>(values: &[T]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate().skip(1) {
        if values[best] < *v {
            best = i;
        }
    }
    best
}

/// libsvm's pairwise coupling (Wu, Lin and Weng, method 2) as onnxruntime computes it in f32:
/// `r[i·k + j]` is the probability of class `i` against class `j`; `p` receives the classes'.
fn multiclass_probability(k: usize, r: &[f32], p: &mut [f32]) {
    let mut q = vec![0f32; k * k];
    let mut qp = vec![0f32; k];
    let eps = 0.005 / k as f32;
    for i in 0..k {
        p[i] = 1.0 / k as f32;
        for j in 0..i {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = q[j * k + i];
        }
        for j in i + 1..k {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = -r[j * k + i] * r[i * k + j];
        }
    }
    for _ in 0..100 {
        let mut pqp = 0f32;
        for i in 0..k {
            qp[i] = 0.0;
            for j in 0..k {
                qp[i] += q[i * k + j] * p[j];
            }
            pqp += p[i] * qp[i];
        }
        let max_error = qp.iter().fold(0f32, |m, &v| {
            let e = (v - pqp).abs();
            if e > m { e } else { m }
        });
        if max_error < eps {
            break;
        }
        for i in 0..k {
            let diff = (-qp[i] + pqp) / q[i * k + i];
            p[i] += diff;
            pqp = (pqp + diff * (diff * q[i * k + i] + 2.0 * qp[i])) / (1.0 + diff) / (1.0 + diff);
            for j in 0..k {
                qp[j] = (qp[j] + diff * q[i * k + j]) / (1.0 + diff);
                p[j] /= 1.0 + diff;
            }
        }
    }
}

/// Platt scaling of one decision value (libsvm's `sigmoid_predict`), clipped as onnxruntime does.
fn platt(score: f32, a: f32, b: f32) -> f32 {
    (1.0 - logistic(score * a + b)).clamp(1.0e-7, 1.0 - 1.0e-7)
}

impl Classifier {
    /// The number of scores per row.
    fn width(&self) -> usize {
        match &self.mode {
            ClassifierMode::Svc { platt: None, .. } if self.labels.len() > 2 => pairs(self.labels.len()),
            _ => self.labels.len(),
        }
    }

    fn features(&self) -> usize {
        match &self.mode {
            ClassifierMode::Svc { supports, .. } => supports.features,
            ClassifierMode::Linear { features } => *features,
        }
    }

    /// One row's label and scores (`scores` has [`Self::width`] elements; `work` is scratch).
    fn classify(&self, kernel: &Kernel, x: &[f32], work: &mut Vec<f32>, scores: &mut [f32]) -> i64 {
        let classes = self.labels.len();
        match &self.mode {
            ClassifierMode::Linear { features } => {
                for (s, row) in scores.iter_mut().zip(self.coefficients.chunks_exact(*features)) {
                    *s = kernel.apply(x, row, self.rho[0]);
                }
                let best = first_max(scores);
                let max = scores[best];
                let label = if classes == 2 && !self.have_proba {
                    // onnxruntime's binary rule for one score per class.
                    if (self.all_positive && max >= 0.5) || (max > 0.0 && !self.all_positive) {
                        self.labels[1]
                    } else {
                        self.labels[best]
                    }
                } else {
                    self.labels[best]
                };
                self.post.apply(scores);
                label
            }
            ClassifierMode::Svc { supports, per_class, starts, platt: scaling } => {
                work.resize(supports.count(), 0.0);
                supports.kernels(kernel, x, work);
                let mut votes = vec![0u32; classes];
                let mut decisions = Vec::with_capacity(pairs(classes));
                let vectors = supports.count();
                for i in 0..classes - 1 {
                    for j in i + 1..classes {
                        let mut sum = 0f64;
                        let (si, sj) = (starts[i], starts[j]);
                        let row_j = &self.coefficients[vectors * (j - 1)..][si..si + per_class[i]];
                        for (c, k) in row_j.iter().zip(&work[si..si + per_class[i]]) {
                            sum += f64::from(c * k);
                        }
                        let row_i = &self.coefficients[vectors * i..][sj..sj + per_class[j]];
                        for (c, k) in row_i.iter().zip(&work[sj..sj + per_class[j]]) {
                            sum += f64::from(c * k);
                        }
                        sum += f64::from(self.rho[decisions.len()]);
                        decisions.push(sum as f32);
                        votes[if sum > 0.0 { i } else { j }] += 1;
                    }
                }
                match scaling {
                    Some((a, b)) => {
                        let mut r = vec![0f32; classes * classes];
                        let mut index = 0;
                        for i in 0..classes - 1 {
                            for j in i + 1..classes {
                                let p = platt(decisions[index], a[index], b[index]);
                                r[i * classes + j] = p;
                                r[j * classes + i] = 1.0 - p;
                                index += 1;
                            }
                        }
                        multiclass_probability(classes, &r, scores);
                        self.post.apply(scores);
                    }
                    None if classes == 2 => {
                        let f = decisions[0];
                        scores[0] = if self.post == PostTransform::None { -f } else { 1.0 - f };
                        scores[1] = f;
                    }
                    None => {
                        scores.copy_from_slice(&decisions);
                        self.post.apply(scores);
                    }
                }
                // The most votes, probabilities or not (onnxruntime's rule).
                self.labels[first_max(&votes)]
            }
        }
    }
}

impl Regressor {
    fn features(&self) -> usize {
        self.supports.as_ref().map_or(self.coefficients.len(), |s| s.features)
    }

    fn predict(&self, kernel: &Kernel, x: &[f32], work: &mut Vec<f32>) -> f32 {
        let y = match &self.supports {
            Some(supports) => {
                work.resize(supports.count(), 0.0);
                supports.kernels(kernel, x, work);
                work.iter().zip(&self.coefficients).fold(0f32, |s, (k, c)| s + k * c) + self.rho0
            }
            None => kernel.apply(x, &self.coefficients, self.rho0),
        };
        if !self.one_class {
            y
        } else if y > 0.0 {
            1.0
        } else {
            -1.0
        }
    }
}

/// The operator, both at inference time (an [`Expansion`]) and typed (itself).
#[derive(Debug, Clone, PartialEq)]
struct Svm {
    /// The node's name, for run-time errors.
    node: String,
    kernel: Kernel,
    head: Arc<Head>,
}

/// tract compares ops to merge identical nodes; attributes never NaN-compare in practice.
impl Eq for Svm {}

impl Svm {
    fn op_name(&self) -> &'static str {
        match *self.head {
            Head::Classifier(_) => "SVMClassifier",
            Head::Regressor(_) => "SVMRegressor",
        }
    }

    fn features(&self) -> usize {
        match &*self.head {
            Head::Classifier(c) => c.features(),
            Head::Regressor(r) => r.features(),
        }
    }

    fn width(&self) -> usize {
        match &*self.head {
            Head::Classifier(c) => c.width(),
            Head::Regressor(_) => 1,
        }
    }

    /// Rows of `[N, F]` or one row of `[F]`.
    fn rows(&self, shape: &[usize]) -> TractResult<usize> {
        let (n, f) = match *shape {
            [f] => (1, f),
            [n, f] => (n, f),
            _ => bail!("{} node '{}': input of shape {shape:?}; it takes [N, features]", self.op_name(), self.node),
        };
        ensure!(
            f == self.features(),
            "{} node '{}': rows of {f} features, but the model takes {}: feed the features it was trained on",
            self.op_name(),
            self.node,
            self.features()
        );
        Ok(n)
    }

    fn run(&self, x: &[f32], n: usize) -> TractResult<TVec<TValue>> {
        let f = self.features();
        let width = self.width();
        let mut work = Vec::new();
        let mut scores = vec![0f32; n * width];
        let rows = x.chunks_exact(f).zip(scores.chunks_exact_mut(width));
        match &*self.head {
            Head::Classifier(c) => {
                let mut labels = vec![0i64; n];
                for ((xs, ys), label) in rows.zip(labels.iter_mut()) {
                    *label = c.classify(&self.kernel, xs, &mut work, ys);
                }
                Ok(tvec!(
                    Tensor::from_shape(&[n], &labels)?.into_tvalue(),
                    Tensor::from_shape(&[n, width], &scores)?.into_tvalue()
                ))
            }
            Head::Regressor(r) => {
                for (xs, ys) in rows {
                    ys[0] = r.predict(&self.kernel, xs, &mut work);
                }
                Ok(tvec!(Tensor::from_shape(&[n, 1], &scores)?.into_tvalue()))
            }
        }
    }
}

impl Expansion for Svm {
    fn name(&self) -> StaticName {
        self.op_name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(match *self.head {
            Head::Classifier(_) => 2,
            Head::Regressor(_) => 1,
        })
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, self.nboutputs()?)?;
        super::estimator_rules(s, inputs, outputs, self.width().to_dim(), self.op_name(), self.node.to_string())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for Svm {
    fn name(&self) -> StaticName {
        self.op_name().into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} kernel, {} features, {} scores per row",
            self.kernel.kind,
            self.features(),
            self.width()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Svm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let n = self.rows(x.shape())?;
        let plain = x.try_as_plain_ram()?;
        // onnxruntime converts every input type to f32 first.
        let x: Vec<f32> = match x.datum_type() {
            DatumType::F32 => return self.run(plain.as_slice::<f32>()?, n),
            DatumType::F64 => plain.as_slice::<f64>()?.iter().map(|&v| v as f32).collect(),
            DatumType::I64 => plain.as_slice::<i64>()?.iter().map(|&v| v as f32).collect(),
            DatumType::I32 => plain.as_slice::<i32>()?.iter().map(|&v| v as f32).collect(),
            dt => bail!(
                "{} node '{}': input of type {dt:?}; it takes float, double, int64 or int32",
                self.op_name(),
                self.node
            ),
        };
        self.run(&x, n)
    }
}

impl TypedOp for Svm {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        let n = match x.rank() {
            1 => 1.to_dim(),
            2 => x.shape[0].clone(),
            r => bail!("{} node '{}': input of rank {r}; it takes [N, features]", self.op_name(), self.node),
        };
        if let Ok(f) = x.shape[x.rank() - 1].to_usize() {
            self.rows(&[f])?;
        }
        let scores = f32::fact([n.clone(), self.width().to_dim()]);
        Ok(match *self.head {
            Head::Classifier(_) => tvec!(i64::fact([n]), scores),
            Head::Regressor(_) => tvec!(scores),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::AttributeProto;

    /// An attribute value for [`node`].
    enum A {
        I(i64),
        Is(Vec<i64>),
        Fs(Vec<f32>),
        S(&'static str),
    }

    fn node(op: &str, attrs: Vec<(&str, A)>) -> NodeProto {
        let attribute = attrs
            .into_iter()
            .map(|(name, v)| {
                let mut a = AttributeProto { name: name.into(), ..Default::default() };
                match v {
                    A::I(i) => a.i = i,
                    A::Is(v) => a.ints = v,
                    A::Fs(v) => a.floats = v,
                    A::S(s) => a.s = s.as_bytes().to_vec(),
                }
                a
            })
            .collect();
        NodeProto {
            name: "svm".into(),
            op_type: op.into(),
            domain: "ai.onnx.ml".into(),
            attribute,
            ..Default::default()
        }
    }

    fn eval(op: &Svm, rows: &[&[f32]]) -> TractResult<(Vec<i64>, Vec<f32>)> {
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let x = Tensor::from_shape(&[rows.len(), rows[0].len()], &flat)?;
        let out = op.eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue()))?;
        let scores = out[out.len() - 1].try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        let labels = if out.len() == 2 { out[0].try_as_plain_ram()?.as_slice::<i64>()?.to_vec() } else { vec![] };
        Ok((labels, scores))
    }

    /// An SVC with one support vector (at the origin) per class and all coefficients zero, so
    /// that each pair's decision value is its `rho`.
    fn svc_of_rho(rho: &[f32], extra: Vec<(&'static str, A)>) -> Svm {
        let classes = (1..).find(|&c| pairs(c) == rho.len()).expect("a pair count");
        let mut attrs = vec![
            ("classlabels_ints", A::Is((0..classes as i64).map(|c| 10 * (c + 1)).collect())),
            ("vectors_per_class", A::Is(vec![1; classes])),
            ("support_vectors", A::Fs(vec![0.0; classes])),
            ("coefficients", A::Fs(vec![0.0; (classes - 1) * classes])),
            ("rho", A::Fs(rho.to_vec())),
            ("kernel_type", A::S("LINEAR")),
        ];
        attrs.extend(extra);
        classifier(&node("SVMClassifier", attrs)).expect("builds")
    }

    #[test]
    fn kernels_compute_as_libsvm_defines_them() {
        let (x, v) = ([1.0f32, 2.0], [3.0f32, -1.0]);
        let k = |kind, gamma, coef0, degree| Kernel { kind, gamma, coef0, degree }.apply(&x, &v, 0.0);
        // x·v = 1, |x − v|² = 13.
        assert_eq!(k(KernelType::Linear, 0.5, 7.0, 3.0), 1.0);
        assert!((k(KernelType::Rbf, 0.1, 0.0, 0.0) - (-1.3f32).exp()).abs() < 1e-6);
        assert_eq!(k(KernelType::Poly, 0.5, 1.0, 3.0), 1.5f32 * 1.5 * 1.5);
        assert_eq!(k(KernelType::Poly, 0.5, 1.0, 2.0), 2.25);
        assert!((k(KernelType::Poly, 0.5, 1.0, 2.5) - 1.5f32.powf(2.5)).abs() < 1e-6);
        assert_eq!(k(KernelType::Sigmoid, 0.5, 1.0, 0.0), 1.5f32.tanh());
        // liblinear mode: the constant is rho[0].
        assert_eq!(Kernel::LINEAR.apply(&x, &v, 0.25), 1.25);
    }

    #[test]
    fn one_vs_one_coefficients_pair_each_class_with_the_others_rows() {
        // 3 classes with 2, 1 and 1 support vectors (1 feature, linear kernel: K = x·v).
        // coefficients row r holds, for the vectors of class c, the dual coefficient of c
        // against the (r+1)-th other class, libsvm's layout.
        let op = classifier(&node(
            "SVMClassifier",
            vec![
                ("classlabels_ints", A::Is(vec![0, 1, 2])),
                ("vectors_per_class", A::Is(vec![2, 1, 1])),
                ("support_vectors", A::Fs(vec![1.0, 2.0, 3.0, 4.0])),
                ("coefficients", A::Fs(vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])),
                ("rho", A::Fs(vec![-1.0, -2.0, -3.0])),
                ("kernel_type", A::S("LINEAR")),
            ],
        ))
        .expect("builds");
        let x = 2.0f32;
        let k = [x * 1.0, x * 2.0, x * 3.0, x * 4.0];
        let d01 = 0.1 * k[0] + 0.2 * k[1] + 0.3 * k[2] - 1.0;
        let d02 = 0.5 * k[0] + 0.6 * k[1] + 0.4 * k[3] - 2.0;
        let d12 = 0.7 * k[2] + 0.8 * k[3] - 3.0;
        let (labels, scores) = eval(&op, &[&[x]]).expect("runs");
        for (got, want) in scores.iter().zip([d01, d02, d12]) {
            assert!((got - want).abs() < 1e-5, "{scores:?}");
        }
        // All positive: class 0 wins both its pairs.
        assert_eq!(labels, [0]);
    }

    #[test]
    fn votes_decide_the_label_and_ties_go_to_the_first_class() {
        // Pairs (0,1), (0,2), (1,2): a positive value votes for the first class of the pair.
        let (labels, scores) = eval(&svc_of_rho(&[1.0, -1.0, 1.0], vec![]), &[&[0.0]]).expect("runs");
        assert_eq!(labels, [10], "one vote each: the first class");
        assert_eq!(scores, [1.0, -1.0, 1.0], "the decision values, pair by pair");
        let (labels, _) = eval(&svc_of_rho(&[-1.0, -1.0, 1.0], vec![]), &[&[0.0]]).expect("runs");
        assert_eq!(labels, [20]);
        // Exactly zero votes for the second class of the pair.
        let (labels, _) = eval(&svc_of_rho(&[0.0, 0.0, 0.0], vec![]), &[&[0.0]]).expect("runs");
        assert_eq!(labels, [30]);
    }

    #[test]
    fn binary_scores_without_probabilities_are_minus_f_and_f() {
        let (labels, scores) = eval(&svc_of_rho(&[0.75], vec![]), &[&[0.0]]).expect("runs");
        assert_eq!((labels, scores), (vec![10], vec![-0.75, 0.75]), "f > 0 is the first class");
        let (labels, scores) = eval(&svc_of_rho(&[-0.5], vec![]), &[&[0.0]]).expect("runs");
        assert_eq!((labels, scores), (vec![20], vec![0.5, -0.5]));
        // A post_transform makes onnxruntime write [1 − f, f] and not apply the transform.
        let op = svc_of_rho(&[0.75], vec![("post_transform", A::S("LOGISTIC"))]);
        assert_eq!(eval(&op, &[&[0.0]]).expect("runs").1, [0.25, 0.75]);
    }

    #[test]
    fn platt_scaling_gives_probabilities_but_votes_still_pick_the_label() {
        // f = 1 votes for class 0; with A = 5 its probability is 1 − σ(5) ≈ 0.0067.
        let op = svc_of_rho(&[1.0], vec![("prob_a", A::Fs(vec![5.0])), ("prob_b", A::Fs(vec![0.0]))]);
        let (labels, p) = eval(&op, &[&[0.0]]).expect("runs");
        assert_eq!(labels, [10], "onnxruntime labels by votes, not by the highest probability");
        let p0 = 1.0 - logistic(5.0);
        assert!((p[0] - p0).abs() < 1e-3 && (p[0] + p[1] - 1.0).abs() < 1e-6, "{p:?}");
        // Clipped away from 0 and 1 before coupling.
        assert_eq!(platt(100.0, -1.0, 0.0), 1.0 - 1.0e-7);
        assert_eq!(platt(100.0, 1.0, 0.0), 1.0e-7);
    }

    #[test]
    fn pairwise_coupling_matches_libsvm_on_three_classes() {
        // Consistent pairwise probabilities from p = (0.5, 0.3, 0.2): r_ij = p_i / (p_i + p_j).
        let p = [0.5f32, 0.3, 0.2];
        let mut r = [0f32; 9];
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    r[i * 3 + j] = p[i] / (p[i] + p[j]);
                }
            }
        }
        let mut out = [0f32; 3];
        multiclass_probability(3, &r, &mut out);
        for (got, want) in out.iter().zip(p) {
            assert!((got - want).abs() < 2e-3, "{out:?}");
        }
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn liblinear_mode_uses_rho0_for_every_class_and_onnxruntimes_binary_rule() {
        let attrs = |extra: Vec<(&'static str, A)>| {
            let mut a = vec![
                ("classlabels_ints", A::Is(vec![3, 7])),
                ("coefficients", A::Fs(vec![1.0, -1.0])),
                ("rho", A::Fs(vec![0.5, 99.0])),
                ("kernel_type", A::S("RBF")),
            ];
            a.extend(extra);
            a
        };
        let op = classifier(&node("SVMClassifier", attrs(vec![]))).expect("builds");
        // x = 2: scores [2.5, -1.5]; class 0 is highest, but a positive maximum with mixed
        // signs picks the second label in onnxruntime.
        let (labels, scores) = eval(&op, &[&[2.0]]).expect("runs");
        assert_eq!((labels, scores), (vec![7], vec![2.5, -1.5]));
        let with_proba = attrs(vec![("prob_a", A::Fs(vec![1.0])), ("prob_b", A::Fs(vec![0.0]))]);
        let op = classifier(&node("SVMClassifier", with_proba)).expect("builds");
        assert_eq!(eval(&op, &[&[2.0]]).expect("runs").0, [3], "with prob_a: the highest score");
    }

    #[test]
    fn regressor_support_vectors_linear_mode_and_one_class() {
        let svr = |one_class| {
            regressor(&node(
                "SVMRegressor",
                vec![
                    ("n_supports", A::I(2)),
                    ("support_vectors", A::Fs(vec![0.0, 0.0, 1.0, 1.0])),
                    ("coefficients", A::Fs(vec![2.0, -1.0])),
                    ("rho", A::Fs(vec![-0.5])),
                    ("kernel_type", A::S("RBF")),
                    ("kernel_params", A::Fs(vec![0.5, 0.0, 3.0])),
                    ("one_class", A::I(one_class)),
                ],
            ))
            .expect("builds")
        };
        let x = [1.0f32, 0.0];
        let want = 2.0 * (-0.5f32).exp() - (-0.5f32).exp() - 0.5;
        let (_, y) = eval(&svr(0), &[&x]).expect("runs");
        assert!((y[0] - want).abs() < 1e-6, "{y:?}");
        assert_eq!(eval(&svr(1), &[&x, &[9.0, 9.0]]).expect("runs").1, [1.0, -1.0]);
        let linear = regressor(&node(
            "SVMRegressor",
            vec![("coefficients", A::Fs(vec![2.0, 3.0])), ("rho", A::Fs(vec![1.0])), ("kernel_type", A::S("POLY"))],
        ))
        .expect("builds");
        assert_eq!(eval(&linear, &[&[1.0, 1.0]]).expect("runs").1, [6.0]);
    }

    #[test]
    fn hostile_attributes_are_errors_naming_node_and_attribute() {
        let base = || {
            vec![
                ("classlabels_ints", A::Is(vec![0, 1])),
                ("vectors_per_class", A::Is(vec![1, 1])),
                ("support_vectors", A::Fs(vec![0.0, 1.0])),
                ("coefficients", A::Fs(vec![1.0, -1.0])),
                ("rho", A::Fs(vec![0.0])),
            ]
        };
        let refused = |change: (&'static str, A), attr: &str| {
            let mut attrs: Vec<_> = base().into_iter().filter(|(k, _)| *k != change.0).collect();
            attrs.push(change);
            let e = classifier(&node("SVMClassifier", attrs)).expect_err("refused").to_string();
            assert!(e.contains("node 'svm' (SVMClassifier)") && e.contains(&format!("'{attr}'")), "{e}");
        };
        refused(("vectors_per_class", A::Is(vec![-1, 3])), "vectors_per_class");
        refused(("vectors_per_class", A::Is(vec![1, 1, 1])), "vectors_per_class");
        refused(("support_vectors", A::Fs(vec![0.0, 1.0, 2.0])), "support_vectors");
        refused(("coefficients", A::Fs(vec![1.0])), "coefficients");
        refused(("rho", A::Fs(vec![])), "rho");
        refused(("prob_a", A::Fs(vec![1.0])), "prob_b");
        refused(("kernel_params", A::Fs(vec![0.1, 0.0])), "kernel_params");
        refused(("kernel_type", A::S("GAUSSIAN")), "kernel_type");
        refused(("classlabels_ints", A::Is(vec![4])), "classlabels_ints");
        refused(("post_transform", A::S("PROBIT")), "post_transform");
        let e = regressor(&node("SVMRegressor", vec![("n_supports", A::I(-3)), ("rho", A::Fs(vec![0.0]))]))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("'n_supports'"), "{e}");
        let e = regressor(&node("SVMRegressor", vec![("coefficients", A::Fs(vec![1.0]))])).expect_err("no rho");
        assert!(e.to_string().contains("'rho'"), "{e}");
    }

    #[test]
    fn rows_of_the_wrong_width_are_an_error_not_a_panic() {
        let op = svc_of_rho(&[1.0], vec![]);
        let e = eval(&op, &[&[1.0, 2.0]]).expect_err("2 features for 1").to_string();
        assert!(e.contains("SVMClassifier node 'svm'"), "{e}");
    }
}
