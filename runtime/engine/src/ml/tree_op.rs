//! `TreeEnsembleRegressor` and `TreeEnsembleClassifier` as tract operators over [`Forest`].
//!
//! The regressor adds base values and post-transforms as onnxruntime does. The classifier
//! reproduces onnxruntime's decision rules, which the exporters rely on and the ONNX spec leaves
//! vague: with two classes, a forest whose leaves vote for one class only (XGBoost, LightGBM and
//! scikit-learn binary models) gives one score, turned into the two probabilities according to
//! its weights' signs and the post-transform; and XGBoost's single `base_values` entry for two
//! classes (which tract refuses) is added to that score.

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::attrs::{AttrError, Attrs};
use super::transform::{PostTransform, logistic};
use super::tree::{Aggregate, CLASSIFIER_LEAVES, Forest, REGRESSOR_LEAVES, Score, parse_aggregate};

/// Targets or classes beyond this are a malformed file, not a model (the scores are dense).
const MAX_OUTPUTS: i64 = 1 << 20;

/// What turns the per-target scores into the outputs.
#[derive(Debug, Clone, PartialEq)]
enum Head {
    Regressor { aggregate: Aggregate, base: Vec<f32>, post: PostTransform },
    Classifier(Classes),
}

/// The classifier's labels and onnxruntime's decision inputs.
#[derive(Debug, Clone, PartialEq)]
struct Classes {
    labels: Vec<i64>,
    base: Vec<f32>,
    post: PostTransform,
    /// Two classes and every leaf weight for the same one: one score decides.
    binary_case: bool,
    /// No negative leaf weight: the single score is a probability, decided at 0.5.
    all_positive: bool,
}

/// tract-onnx's builder for `TreeEnsembleRegressor`.
pub(crate) fn build_regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(regressor(node)?), vec![]))
}

/// tract-onnx's builder for `TreeEnsembleClassifier` (replaces tract's own).
pub(crate) fn build_classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(classifier(node)?), vec![]))
}

fn regressor(node: &NodeProto) -> TractResult<TreeEnsemble> {
    let attrs = Attrs::new(node);
    let targets = match attrs.int_or("n_targets", 0) {
        t @ 1..=MAX_OUTPUTS => t as usize,
        t => return Err(attrs.error("n_targets", format!("{t} targets")).into()),
    };
    let forest = Forest::parse(&attrs, &REGRESSOR_LEAVES, targets)?;
    let aggregate = parse_aggregate(&attrs)?;
    let base = attrs.floats("base_values");
    if !base.is_empty() {
        attrs.expect_len("base_values", &base, targets)?;
    }
    let post = PostTransform::parse(&attrs)?;
    if targets == 1 && !matches!(post, PostTransform::None | PostTransform::Probit) {
        return Err(attrs
            .error_with(
                "post_transform",
                format!("{post:?} on a single target: onnxruntime ignores it where the ONNX spec applies it"),
                "apply the transform after the regressor in the graph, or re-export with post_transform NONE",
            )
            .into());
    }
    Ok(op(node, forest, Head::Regressor { aggregate, base, post }))
}

fn classifier(node: &NodeProto) -> TractResult<TreeEnsemble> {
    let attrs = Attrs::new(node);
    let classes = parse_classes(&attrs)?;
    let forest = Forest::parse(&attrs, &CLASSIFIER_LEAVES, classes.labels.len())?;
    let mut classes = classes;
    let first = forest.weights().first().map(|w| w.target);
    classes.binary_case = classes.labels.len() == 2 && forest.weights().iter().all(|w| Some(w.target) == first);
    classes.all_positive = forest.weights().iter().all(|w| w.value >= 0.0);
    Ok(op(node, forest, Head::Classifier(classes)))
}

fn parse_classes(attrs: &Attrs<'_>) -> Result<Classes, AttrError> {
    if attrs.has("classlabels_strings") {
        return Err(attrs.error_with(
            "classlabels_strings",
            "string class labels are not supported (Drover's outputs are numeric tensors)",
            "train on integer classes (e.g. sklearn's LabelEncoder) and map them back to names outside the model",
        ));
    }
    let labels = attrs.ints("classlabels_int64s");
    if labels.len() < 2 || labels.len() as i64 > MAX_OUTPUTS {
        return Err(
            attrs.error("classlabels_int64s", format!("{} class labels; a classifier needs 2 or more", labels.len()))
        );
    }
    let base = attrs.floats("base_values");
    let fits = base.is_empty() || base.len() == labels.len() || (labels.len() == 2 && base.len() == 1);
    if !fits {
        return Err(attrs.error("base_values", format!("{} values for {} classes", base.len(), labels.len())));
    }
    let post = PostTransform::parse(attrs)?;
    if labels.len() == 2 && post == PostTransform::Probit {
        return Err(attrs.error_with(
            "post_transform",
            "PROBIT on a binary classifier has no defined second probability (onnxruntime leaves it unset)",
            "re-export with post_transform NONE or LOGISTIC",
        ));
    }
    Ok(Classes { labels, base, post, binary_case: false, all_positive: true })
}

fn op(node: &NodeProto, forest: Forest, head: Head) -> TreeEnsemble {
    TreeEnsemble { node: node.name.clone(), forest: Arc::new(forest), head: Arc::new(head) }
}

/// The operator, both at inference time (an [`Expansion`]) and typed (itself).
#[derive(Debug, Clone, PartialEq)]
struct TreeEnsemble {
    /// The node's name, for run-time errors.
    node: String,
    forest: Arc<Forest>,
    head: Arc<Head>,
}

/// tract compares ops to merge identical nodes; thresholds never NaN-compare in practice.
impl Eq for TreeEnsemble {}

impl TreeEnsemble {
    fn op_name(&self) -> &'static str {
        match *self.head {
            Head::Regressor { .. } => "TreeEnsembleRegressor",
            Head::Classifier(_) => "TreeEnsembleClassifier",
        }
    }

    /// Rows of `[N, F]` or one row of `[F]`.
    fn rows(&self, shape: &[usize]) -> TractResult<(usize, usize)> {
        let (n, f) = match *shape {
            [f] => (1, f),
            [n, f] => (n, f),
            _ => bail!("{} node '{}': input of shape {shape:?}; it takes [N, features]", self.op_name(), self.node),
        };
        ensure!(
            f > self.forest.max_feature(),
            "{} node '{}': rows of {f} features, but the trees read feature {}: feed the features the model was trained on",
            self.op_name(),
            self.node,
            self.forest.max_feature()
        );
        Ok((n, f))
    }

    fn run<T: Copy>(&self, x: &[T], n: usize, f: usize, widen: impl Fn(T) -> f64) -> TractResult<TVec<TValue>> {
        let mut row = vec![0f64; f];
        let mut scores = vec![Score::default(); self.forest.targets()];
        let rows = x.chunks_exact(f).take(n);
        match &*self.head {
            Head::Regressor { aggregate, base, post } => {
                let t = self.forest.targets();
                let mut out = vec![0f32; n * t];
                for (xs, ys) in rows.zip(out.chunks_exact_mut(t)) {
                    row.iter_mut().zip(xs).for_each(|(r, &v)| *r = widen(v));
                    self.forest.scores(&row, *aggregate, &mut scores);
                    self.regress(*aggregate, base, *post, &scores, ys);
                }
                Ok(tvec!(Tensor::from_shape(&[n, t], &out)?.into_tvalue()))
            }
            Head::Classifier(classes) => {
                let c = classes.labels.len();
                let mut labels = vec![0i64; n];
                let mut probabilities = vec![0f32; n * c];
                for ((xs, label), ps) in rows.zip(labels.iter_mut()).zip(probabilities.chunks_exact_mut(c)) {
                    row.iter_mut().zip(xs).for_each(|(r, &v)| *r = widen(v));
                    self.forest.scores(&row, Aggregate::Sum, &mut scores);
                    *label = classes.classify(&mut scores, ps);
                }
                Ok(tvec!(
                    Tensor::from_shape(&[n], &labels)?.into_tvalue(),
                    Tensor::from_shape(&[n, c], &probabilities)?.into_tvalue()
                ))
            }
        }
    }

    /// onnxruntime's regressor finalisation: AVERAGE divides by the trees, base values add.
    fn regress(&self, aggregate: Aggregate, base: &[f32], post: PostTransform, scores: &[Score], out: &mut [f32]) {
        let trees = self.forest.trees() as f32;
        for (k, (s, y)) in scores.iter().zip(out.iter_mut()).enumerate() {
            let mut v = if s.has { s.value } else { 0.0 };
            if aggregate == Aggregate::Average {
                v /= trees;
            }
            if let Some(b) = base.get(k) {
                v += b;
            }
            *y = v;
        }
        if out.len() == 1 {
            // Single target: onnxruntime applies PROBIT only (the builder refuses the others).
            if post == PostTransform::Probit {
                out[0] = super::transform::probit(out[0]);
            }
        } else {
            post.apply(out);
        }
    }
}

impl Classes {
    /// One row's label and probabilities from its summed scores, as onnxruntime's
    /// `TreeAggregatorClassifier::FinalizeScores` and `write_scores` compute them.
    fn classify(&self, s: &mut [Score], probabilities: &mut [f32]) -> i64 {
        if self.labels.len() > 2 {
            for (score, b) in s.iter_mut().zip(&self.base) {
                score.value = if score.has { score.value + b } else { *b };
                score.has = true;
            }
            // The first highest among the classes that received a score.
            let mut best: Option<(usize, f32)> = None;
            for (k, score) in s.iter().enumerate() {
                if score.has && best.is_none_or(|(_, w)| score.value > w) {
                    best = Some((k, score.value));
                }
            }
            probabilities.iter_mut().zip(s.iter()).for_each(|(p, score)| *p = score.value);
            self.post.apply(probabilities);
            // No score at all (leaves without weights, no base values): the first class.
            return self.labels[best.map_or(0, |(k, _)| k)];
        }

        // Two classes.
        let mut second = -1i8; // onnxruntime's `write_additional_scores`
        let mut one_score = false;
        match self.base[..] {
            [_, b1] if s[1].has => {
                // onnxruntime: class 1 = base[1] + class 0's score, class 0 its negation.
                s[1].value = b1 + s[0].value;
                s[0].value = -s[1].value;
            }
            [b0, b1] => {
                s[1].value += b1;
                s[0].value += b0;
            }
            [b0] => {
                s[0].value += b0;
                one_score = !s[1].has;
            }
            _ => {
                second = 3;
                one_score = !s[1].has;
            }
        }
        let positive = if !one_score && s[1].has {
            s[1].value
        } else if s[0].has {
            s[0].value
        } else {
            0.0
        };
        let (negative_label, positive_label) = (self.labels[0], self.labels[1]);
        let label = if self.binary_case {
            let (threshold, above, below) = if self.all_positive { (0.5, 0, 1) } else { (0.0, 2, 3) };
            if positive > threshold {
                second = above;
                positive_label
            } else {
                second = below;
                negative_label
            }
        } else if positive > 0.0 {
            positive_label
        } else {
            negative_label
        };
        if !one_score {
            probabilities[0] = s[0].value;
            probabilities[1] = s[1].value;
            self.post.apply(probabilities);
            return label;
        }
        let v = s[0].value;
        let (p0, p1) = match (second, self.post) {
            (0 | 1, _) => (1.0 - v, v),
            (2 | 3, PostTransform::Logistic) => (logistic(-v), logistic(v)),
            (2, _) => (-v, v),
            (3, _) => (v, -v),
            // Not onnxruntime's binary case and class 1 got no score: onnxruntime writes one
            // value and leaves the second unset; Drover writes 0 there.
            _ => (v, 0.0),
        };
        probabilities[0] = p0;
        probabilities[1] = p1;
        label
    }
}

impl Expansion for TreeEnsemble {
    fn name(&self) -> StaticName {
        self.op_name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(match *self.head {
            Head::Regressor { .. } => 1,
            Head::Classifier(_) => 2,
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
        let width = self.forest.targets().to_dim();
        super::estimator_rules(s, inputs, outputs, width, self.op_name(), self.node.to_string())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for TreeEnsemble {
    fn name(&self) -> StaticName {
        self.op_name().into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{} trees, {} outputs per row", self.forest.trees(), self.forest.targets())])
    }

    op_as_typed_op!();
}

impl EvalOp for TreeEnsemble {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let (n, f) = self.rows(x.shape())?;
        let plain = x.try_as_plain_ram()?;
        match x.datum_type() {
            DatumType::F32 => self.run(plain.as_slice::<f32>()?, n, f, f64::from),
            DatumType::F64 => self.run(plain.as_slice::<f64>()?, n, f, |v| v),
            // onnxruntime compares integers with the f32 thresholds in f32.
            DatumType::I64 => self.run(plain.as_slice::<i64>()?, n, f, |v| f64::from(v as f32)),
            DatumType::I32 => self.run(plain.as_slice::<i32>()?, n, f, |v| f64::from(v as f32)),
            dt => bail!(
                "{} node '{}': input of type {dt:?}; it takes float, double, int64 or int32",
                self.op_name(),
                self.node
            ),
        }
    }
}

impl TypedOp for TreeEnsemble {
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
        let scores = f32::fact([n.clone(), self.forest.targets().to_dim()]);
        Ok(match *self.head {
            Head::Regressor { .. } => tvec!(scores),
            Head::Classifier(_) => tvec!(i64::fact([n]), scores),
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
        Ss(Vec<&'static str>),
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
                    A::Ss(v) => a.strings = v.iter().map(|s| s.as_bytes().to_vec()).collect(),
                }
                a
            })
            .collect();
        NodeProto {
            name: "trees".into(),
            op_type: op.into(),
            domain: "ai.onnx.ml".into(),
            attribute,
            ..Default::default()
        }
    }

    /// `trees` stumps on feature 0: node 0 `x <mode> threshold`, true leaf 1, false leaf 2;
    /// leaf weights `(tree, node, target, weight)`.
    fn stumps(trees: usize, mode: &'static str, threshold: f32, missing: i64) -> Vec<(&'static str, A)> {
        let per = |v: [i64; 3]| A::Is((0..trees).flat_map(|_| v).collect());
        vec![
            ("nodes_treeids", A::Is((0..trees as i64).flat_map(|t| [t, t, t]).collect())),
            ("nodes_nodeids", per([0, 1, 2])),
            ("nodes_featureids", per([0, 0, 0])),
            ("nodes_values", A::Fs((0..trees).flat_map(|_| [threshold, 0.0, 0.0]).collect())),
            ("nodes_modes", A::Ss((0..trees).flat_map(|_| [mode, "LEAF", "LEAF"]).collect())),
            ("nodes_truenodeids", per([1, 0, 0])),
            ("nodes_falsenodeids", per([2, 0, 0])),
            ("nodes_missing_value_tracks_true", per([missing, 0, 0])),
        ]
    }

    fn leaves(prefix: &str, w: &[(i64, i64, i64, f32)]) -> Vec<(String, A)> {
        vec![
            (format!("{prefix}_treeids"), A::Is(w.iter().map(|l| l.0).collect())),
            (format!("{prefix}_nodeids"), A::Is(w.iter().map(|l| l.1).collect())),
            (format!("{prefix}_ids"), A::Is(w.iter().map(|l| l.2).collect())),
            (format!("{prefix}_weights"), A::Fs(w.iter().map(|l| l.3).collect())),
        ]
    }

    fn with(mut attrs: Vec<(&'static str, A)>, more: Vec<(String, A)>) -> Vec<(&'static str, A)> {
        attrs.extend(more.into_iter().map(|(k, v)| (&*Box::leak(k.into_boxed_str()), v)));
        attrs
    }

    fn build(op: &str, attrs: Vec<(&str, A)>) -> TractResult<TreeEnsemble> {
        let n = node(op, attrs);
        if op == "TreeEnsembleRegressor" { regressor(&n) } else { classifier(&n) }
    }

    fn eval(op: &TreeEnsemble, rows: &[&[f32]]) -> TractResult<TVec<TValue>> {
        let f = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let x = Tensor::from_shape(&[rows.len(), f], &flat)?;
        op.eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue()))
    }

    fn f32s(v: &TValue) -> Vec<f32> {
        v.try_as_plain_ram().and_then(|r| Ok(r.as_slice::<f32>()?.to_vec())).expect("f32 output")
    }

    fn regressor_of(
        trees: usize,
        mode: &'static str,
        missing: i64,
        w: &[(i64, i64, i64, f32)],
        extra: Vec<(&'static str, A)>,
    ) -> TreeEnsemble {
        let mut attrs = with(stumps(trees, mode, 1.0, missing), leaves("target", w));
        attrs.extend(extra);
        if !attrs.iter().any(|(k, _)| *k == "n_targets") {
            attrs.push(("n_targets", A::I(1)));
        }
        build("TreeEnsembleRegressor", attrs).expect("builds")
    }

    /// One stump: the true leaf gives 10, the false leaf 20.
    fn one_stump(mode: &'static str, missing: i64) -> TreeEnsemble {
        regressor_of(1, mode, missing, &[(0, 1, 0, 10.0), (0, 2, 0, 20.0)], vec![])
    }

    #[test]
    fn every_branch_mode_compares_as_named() {
        let cases = [
            ("BRANCH_LEQ", [10.0, 10.0, 20.0]),
            ("BRANCH_LT", [10.0, 20.0, 20.0]),
            ("BRANCH_GTE", [20.0, 10.0, 10.0]),
            ("BRANCH_GT", [20.0, 20.0, 10.0]),
            ("BRANCH_EQ", [20.0, 10.0, 20.0]),
            ("BRANCH_NEQ", [10.0, 20.0, 10.0]),
        ];
        for (mode, want) in cases {
            let out = eval(&one_stump(mode, 0), &[&[0.5], &[1.0], &[2.0]]).expect("runs");
            assert_eq!(f32s(&out[0]), want, "{mode} at 0.5, 1.0 (the threshold), 2.0");
        }
    }

    #[test]
    fn nan_follows_missing_value_tracks_true_and_ieee_comparison() {
        // NaN compares false, so it takes the false child unless the node tracks it to true...
        assert_eq!(f32s(&eval(&one_stump("BRANCH_LEQ", 0), &[&[f32::NAN]]).expect("runs")[0]), [20.0]);
        assert_eq!(f32s(&eval(&one_stump("BRANCH_LEQ", 1), &[&[f32::NAN]]).expect("runs")[0]), [10.0]);
        assert_eq!(f32s(&eval(&one_stump("BRANCH_LT", 1), &[&[f32::NAN]]).expect("runs")[0]), [10.0]);
        // ...except for NEQ, where NaN != threshold holds (onnxruntime and IEEE agree).
        assert_eq!(f32s(&eval(&one_stump("BRANCH_NEQ", 0), &[&[f32::NAN]]).expect("runs")[0]), [10.0]);
        // A tracked node still compares ordinary values.
        assert_eq!(f32s(&eval(&one_stump("BRANCH_LEQ", 1), &[&[3.0]]).expect("runs")[0]), [20.0]);
    }

    #[test]
    fn aggregate_functions_combine_trees_as_onnxruntime() {
        // Three stumps, all true at x = 0: leaves -3, -1, -2 for target 0.
        let w = [(0, 1, 0, -3.0), (0, 2, 0, 5.0), (1, 1, 0, -1.0), (1, 2, 0, 5.0), (2, 1, 0, -2.0), (2, 2, 0, 5.0)];
        let run = |agg: &'static str, base: Vec<f32>| {
            let mut extra = vec![("aggregate_function", A::S(agg))];
            if !base.is_empty() {
                extra.push(("base_values", A::Fs(base)));
            }
            f32s(&eval(&regressor_of(3, "BRANCH_LEQ", 0, &w, extra), &[&[0.0]]).expect("runs")[0])[0]
        };
        assert_eq!(run("SUM", vec![]), -6.0);
        assert_eq!(run("AVERAGE", vec![]), -2.0);
        // MIN/MAX start from the first leaf, not from zero (all leaves are negative here).
        assert_eq!(run("MIN", vec![]), -3.0);
        assert_eq!(run("MAX", vec![]), -1.0);
        // base_values are added after aggregation (AVERAGE divides first).
        assert_eq!(run("AVERAGE", vec![0.5]), -1.5);
        assert_eq!(run("MAX", vec![0.5]), -0.5);
    }

    #[test]
    fn multi_target_leaves_and_base_values() {
        // Target 1 gets weights only from tree 1; both trees go true at x = 0.
        let w = [(0, 1, 0, 1.0), (0, 2, 0, 2.0), (1, 1, 0, 3.0), (1, 1, 1, 4.0), (1, 2, 1, 8.0)];
        let extra = vec![("n_targets", A::I(2)), ("base_values", A::Fs(vec![0.25, -0.25]))];
        let op = regressor_of(2, "BRANCH_LEQ", 0, &w, extra);
        let out = eval(&op, &[&[0.0], &[2.0]]).expect("runs");
        assert_eq!(out[0].shape(), [2, 2]);
        assert_eq!(f32s(&out[0]), [4.25, 3.75, 2.25, 7.75]);
    }

    fn classifier_of(w: &[(i64, i64, i64, f32)], extra: Vec<(&'static str, A)>) -> TreeEnsemble {
        let mut attrs = with(stumps(1, "BRANCH_LT", 1.0, 0), leaves("class", w));
        attrs.extend(extra);
        if !attrs.iter().any(|(k, _)| *k == "classlabels_int64s") {
            attrs.push(("classlabels_int64s", A::Is(vec![0, 1])));
        }
        build("TreeEnsembleClassifier", attrs).expect("builds")
    }

    fn classify(op: &TreeEnsemble, x: f32) -> (i64, Vec<f32>) {
        let out = eval(op, &[&[x]]).expect("runs");
        let label = out[0].try_as_plain_ram().expect("plain").as_slice::<i64>().expect("i64")[0];
        (label, f32s(&out[1]))
    }

    #[test]
    fn xgboost_binary_one_base_value_and_logistic() {
        // onnxmltools' XGBoost binary: margins for class 0 only, base_values = [logit(base_score)].
        let op = classifier_of(
            &[(0, 1, 0, -0.4), (0, 2, 0, 0.3)],
            vec![("base_values", A::Fs(vec![0.2])), ("post_transform", A::S("LOGISTIC"))],
        );
        let (label, p) = classify(&op, 0.0); // margin -0.4 + 0.2 = -0.2
        assert_eq!(label, 0);
        assert!((p[1] - logistic(-0.2)).abs() < 1e-7 && (p[0] - logistic(0.2)).abs() < 1e-7, "{p:?}");
        let (label, p) = classify(&op, 5.0); // 0.3 + 0.2 = 0.5
        assert_eq!(label, 1);
        assert!((p[1] - logistic(0.5)).abs() < 1e-7, "{p:?}");
    }

    #[test]
    fn binary_positive_weights_are_a_probability_decided_at_one_half() {
        // skl2onnx's binary random forest: the probability of class 1, all weights positive.
        let op = classifier_of(&[(0, 1, 0, 0.5), (0, 2, 0, 0.75)], vec![("classlabels_int64s", A::Is(vec![3, 7]))]);
        assert_eq!(classify(&op, 0.0), (3, vec![0.5, 0.5]), "0.5 is not above one half");
        assert_eq!(classify(&op, 2.0), (7, vec![0.25, 0.75]));
    }

    #[test]
    fn multiclass_adds_base_values_and_picks_the_first_highest() {
        let w = [(0, 1, 0, 1.0), (0, 1, 1, 2.0), (0, 2, 2, 1.0)];
        let extra = vec![
            ("classlabels_int64s", A::Is(vec![10, 20, 30])),
            ("base_values", A::Fs(vec![1.0, 0.0, 0.0])),
            ("post_transform", A::S("SOFTMAX")),
        ];
        let op = classifier_of(&w, extra);
        let (label, p) = classify(&op, 0.0); // scores [2, 2, 0]: a tie goes to the first
        assert_eq!(label, 10);
        assert!((p[0] - p[1]).abs() < 1e-7 && (p.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{p:?}");
        // Only class 2 scores 1; base values give class 0 a score of 1 too: the first wins.
        assert_eq!(classify(&op, 2.0).0, 10);
    }

    #[test]
    fn malformed_trees_are_errors_naming_node_and_attribute() {
        let err = |attrs: Vec<(&'static str, A)>| {
            build("TreeEnsembleRegressor", attrs).map(|_| ()).expect_err("refused").to_string()
        };
        let w = leaves("target", &[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
        let mut cyclic = with(stumps(1, "BRANCH_LEQ", 1.0, 0), leaves("target", &[(0, 2, 0, 2.0)]));
        cyclic[1] = ("nodes_nodeids", A::Is(vec![0, 1, 2]));
        cyclic[4] = ("nodes_modes", A::Ss(vec!["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"]));
        cyclic[5] = ("nodes_truenodeids", A::Is(vec![1, 0, 0]));
        cyclic[6] = ("nodes_falsenodeids", A::Is(vec![2, 2, 0]));
        cyclic.push(("n_targets", A::I(1)));
        let e = err(cyclic);
        assert!(e.contains("node 'trees' (TreeEnsembleRegressor)") && e.contains("loops back to node 0"), "{e}");

        let mut dangling = with(stumps(1, "BRANCH_LEQ", 1.0, 0), leaves("target", &[(0, 1, 0, 1.0)]));
        dangling[6] = ("nodes_falsenodeids", A::Is(vec![9, 0, 0]));
        dangling.push(("n_targets", A::I(1)));
        let e = err(dangling);
        assert!(e.contains("'nodes_falsenodeids'") && e.contains("points at node 9"), "{e}");

        let mut wide = with(stumps(1, "BRANCH_LEQ", 1.0, 0), leaves("target", &[(0, 1, 3, 1.0)]));
        wide.push(("n_targets", A::I(1)));
        assert!(err(wide).contains("'target_ids': target or class 3"));

        let mut modes = with(stumps(1, "BRANCH_ALMOST", 1.0, 0), w);
        modes.push(("n_targets", A::I(1)));
        assert!(err(modes).contains("unknown node mode 'BRANCH_ALMOST'"));

        let strings = node("TreeEnsembleClassifier", vec![("classlabels_strings", A::Ss(vec!["a", "b"]))]);
        let e = classifier(&strings).map(|_| ()).expect_err("refused").to_string();
        assert!(e.contains("'classlabels_strings'") && e.contains("integer classes"), "{e}");
    }

    #[test]
    fn rows_too_short_for_the_trees_are_an_error_not_a_panic() {
        let mut attrs = with(stumps(1, "BRANCH_LEQ", 1.0, 0), leaves("target", &[(0, 1, 0, 1.0)]));
        attrs[2] = ("nodes_featureids", A::Is(vec![4, 0, 0]));
        attrs.push(("n_targets", A::I(1)));
        let op = build("TreeEnsembleRegressor", attrs).expect("builds");
        let e = eval(&op, &[&[1.0, 2.0]]).map(|_| ()).expect_err("2 features, feature 4 read").to_string();
        assert!(e.contains("rows of 2 features, but the trees read feature 4"), "{e}");
    }

    /// Issue 33's failure, kept as a check that Drover's classifier is the one registered:
    /// tract's own parser refuses onnxmltools' single base value for an XGBoost binary model.
    #[test]
    fn tract_alone_refuses_xgboost_binary_models_and_drover_loads_them() {
        use tract_onnx::prelude::Framework;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/ml/xgb_binary_classifier.onnx");
        let tract = tract_onnx::onnx();
        let proto = tract.proto_model_for_path(&path).expect("reads");
        let e = tract.model_for_proto_model(&proto).map(|_| ()).expect_err("tract refuses it");
        assert!(format!("{e:#}").contains("base_values"), "{e:#}");
        crate::onnx().model_for_proto_model(&proto).expect("Drover parses it");
    }
}
