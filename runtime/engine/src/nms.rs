//! ONNX `NonMaxSuppression`, following onnxruntime's CPU kernel, replacing tract's.
//!
//! Every torchvision detector ends in `batched_nms`, which the TorchScript exporter writes as a
//! `NonMaxSuppression` over all the candidates of an image at once (SSDlite320: up to ~27,000
//! boxes, 300 per class × 90 classes above a 0.001 score). tract-onnx-opl 0.23's operator slices
//! an ndarray view (`IxDyn`) per box pair and sorts with a comparator that treats NaN as equal to
//! everything; it dominated the detector's latency (~40 s an image in a debug build, seconds in
//! release, against ~30 ms for the whole detector in onnxruntime). It also treats
//! `max_output_boxes_per_class = 0` as "no limit" where ONNX and onnxruntime select nothing.
//!
//! The operator here is onnxruntime's algorithm (`non_max_suppression.cc`), with its
//! arithmetic, so the same boxes come out in the same order:
//!
//! - per (batch, class): keep the boxes whose score is strictly above `score_threshold` (all of
//!   them without one), ranked by score, highest first; equal scores lower index first (the
//!   tie-break of onnxruntime's priority queue). NaN scores never pass a threshold; without one
//!   they rank after every number (onnxruntime's order for them is undefined);
//! - greedily, each candidate is compared with the boxes already selected for that class only,
//!   and dropped when its IoU with one of them is strictly above `iou_threshold`; selection stops
//!   at `max_output_boxes_per_class`. The selected boxes are indexed by x-strips, so a candidate
//!   meets only those that can overlap it on x: the others would fail onnxruntime's first
//!   comparison anyway, so the answer is unchanged ([`Kept`]; onnxruntime compares with all,
//!   ~230 ms of its 1-thread time on SSDlite320's 27,000 candidates, 16,900 kept);
//! - corners and areas are computed once per box: for `center_point_box = 0` the corners are put
//!   in order (`[y1, x1, y2, x2]` may be flipped), for `1` they are `centre ± size / 2` as given
//!   (a negative size never overlaps anything), in f32 as onnxruntime computes them.
//!
//! The output is `[selected, 3]` int64 `(batch, class, box)` rows, batches then classes in order,
//! each class's rows in selection order. Its length is a symbol of the node, bound at run time
//! (as tract's own operator declares it).

use std::cmp::Ordering;
use std::sync::Arc;

use tract_onnx::model::{ParsingContext, optional_inputs};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// tract-onnx's builder for `NonMaxSuppression` (replaces tract's own).
pub(crate) fn build(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let center_point_box = match node.get_attr_opt::<i64>("center_point_box")?.unwrap_or(0) {
        0 => BoxFormat::Corners,
        1 => BoxFormat::CenterSize,
        other => bail!(
            "NonMaxSuppression node '{}': center_point_box = {other}; ONNX allows 0 ([y1, x1, y2, x2]) \
             and 1 ([x_center, y_center, width, height])",
            node.name
        ),
    };
    // Inputs 2..4 are optional, and may be left out in the middle (an empty name).
    let mut optional = optional_inputs(node).skip(2);
    let op = NonMaxSuppression {
        node: node.name.as_str().into(),
        center_point_box,
        max_output_input: optional.next().flatten(),
        iou_threshold_input: optional.next().flatten(),
        score_threshold_input: optional.next().flatten(),
        selected: ctx.template.symbols.new_with_prefix("nms"),
    };
    Ok((expand(op), vec![]))
}

/// How a box is written (the `center_point_box` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BoxFormat {
    /// `[y1, x1, y2, x2]`, any two opposite corners (0, TensorFlow's format).
    Corners,
    /// `[x_center, y_center, width, height]` (1, PyTorch's format).
    CenterSize,
}

/// The operator, both at inference time (an [`Expansion`]) and typed (itself). Stateless: a
/// clone is a few words and an `Arc`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct NonMaxSuppression {
    /// The node's name, for errors.
    node: Arc<str>,
    center_point_box: BoxFormat,
    /// Where `max_output_boxes_per_class` is among the node's inputs, if given.
    max_output_input: Option<usize>,
    /// Where `iou_threshold` is, if given.
    iou_threshold_input: Option<usize>,
    /// Where `score_threshold` is, if given.
    score_threshold_input: Option<usize>,
    /// The number of selected boxes: known only once the op has run.
    selected: Symbol,
}

/// The run-time parameters, read from the optional inputs as onnxruntime reads them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Params {
    pub format: BoxFormat,
    /// At most this many boxes per (batch, class); 0 (the default) selects none.
    pub max_output: usize,
    /// A box is suppressed by a selected one when their IoU is strictly above this.
    pub iou_threshold: f32,
    /// Only boxes scoring strictly above this are candidates (all of them when `None`).
    pub score_threshold: Option<f32>,
}

/// One box as the IoU needs it: ordered corners and its area, computed once.
#[derive(Debug, Clone, Copy)]
struct Extent {
    x_min: f32,
    x_max: f32,
    y_min: f32,
    y_max: f32,
    area: f32,
}

/// onnxruntime's `MaxMin`: `(min, max)`, the first when they compare equal or unordered.
#[inline(always)]
fn min_max(a: f32, b: f32) -> (f32, f32) {
    if a >= b { (b, a) } else { (a, b) }
}

/// `std::max(a, b)`: `a` unless `a < b` (NaN handling as in onnxruntime).
#[inline(always)]
fn cpp_max(a: f32, b: f32) -> f32 {
    if a < b { b } else { a }
}

/// `std::min(a, b)`: `a` unless `b < a`.
#[inline(always)]
fn cpp_min(a: f32, b: f32) -> f32 {
    if b < a { b } else { a }
}

impl Extent {
    /// onnxruntime's `BoxInfo` constructor.
    fn new(b: &[f32], format: BoxFormat) -> Extent {
        match format {
            BoxFormat::Corners => {
                let (x_min, x_max) = min_max(b[1], b[3]);
                let (y_min, y_max) = min_max(b[0], b[2]);
                Extent { x_min, x_max, y_min, y_max, area: (y_max - y_min) * (x_max - x_min) }
            }
            BoxFormat::CenterSize => {
                let (half_w, half_h) = (b[2] / 2.0, b[3] / 2.0);
                Extent {
                    x_min: b[0] - half_w,
                    x_max: b[0] + half_w,
                    y_min: b[1] - half_h,
                    y_max: b[1] + half_h,
                    area: b[2] * b[3],
                }
            }
        }
    }

    /// Whether `selected` suppresses this candidate: onnxruntime's `SuppressByIOU`, called on
    /// the candidate with the selected box as `rhs`, operation for operation.
    #[inline(always)]
    fn suppressed_by(&self, selected: &Extent, iou_threshold: f32) -> bool {
        let ix_min = cpp_max(self.x_min, selected.x_min);
        let ix_max = cpp_min(self.x_max, selected.x_max);
        if ix_max <= ix_min {
            return false;
        }
        let iy_min = cpp_max(self.y_min, selected.y_min);
        let iy_max = cpp_min(self.y_max, selected.y_max);
        if iy_max <= iy_min {
            return false;
        }
        let intersection = (ix_max - ix_min) * (iy_max - iy_min);
        if intersection <= 0.0 {
            return false;
        }
        let union = self.area + selected.area - intersection;
        intersection / union > iou_threshold
    }
}

/// The candidates' order: score descending, equal scores by index ascending, NaN last.
fn rank(a: &(f32, usize), b: &(f32, usize)) -> Ordering {
    let by_score = match (a.0.is_nan(), b.0.is_nan()) {
        (false, false) => b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal),
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (true, true) => Ordering::Equal,
    };
    by_score.then(a.1.cmp(&b.1))
}

/// A selected box covering more x-cells than this is compared with every candidate instead of
/// being stored in each cell (bounds the index at this many entries per selected box).
const MAX_SPAN: usize = 64;

/// At most this many x-cells per (batch, class).
const MAX_CELLS: usize = 1 << 16;

/// The boxes selected so far for one (batch, class), indexed by the vertical strips (x-cells)
/// they cover, so that a candidate is compared only with the selected boxes that can overlap it
/// on x.
///
/// Exactness: for boxes without NaN on x, onnxruntime's IoU test returns "not suppressed" at
/// its first comparison unless both boxes have `x_min < x_max` and their x-intervals overlap;
/// such a pair always shares a cell, since the cell of a coordinate never decreases as the
/// coordinate grows. Boxes with NaN on x are compared with everything, as onnxruntime does. So
/// the boxes skipped are exactly ones whose comparison would have said "not suppressed", and
/// the answer is onnxruntime's. (torchvision's `batched_nms` offsets each class's boxes apart:
/// SSDlite320's 27,000 candidates, 16,900 kept, become a few hundred comparisons each.)
#[derive(Debug, Default)]
struct Kept {
    /// Every selected box, in selection order.
    all: Vec<Extent>,
    /// Positions in `all` of the boxes compared with every candidate: NaN on x, or wider than
    /// [`MAX_SPAN`] cells.
    always: Vec<usize>,
    /// For each x-cell, the positions in `all` of the boxes that cover it.
    cells: Vec<Vec<usize>>,
    /// Where cell 0 starts.
    x0: f32,
    /// Cells per unit of x (0: a single cell).
    scale: f32,
}

/// A box whose x-interval is non-empty and has no NaN: the only kind an IoU test can pass.
fn spans_x(e: &Extent) -> bool {
    e.x_min < e.x_max
}

fn nan_x(e: &Extent) -> bool {
    e.x_min.is_nan() || e.x_max.is_nan()
}

impl Kept {
    /// Empties the index and sizes its cells for `candidates`: about one box's mean width each,
    /// over the range of their finite x.
    fn reset(&mut self, candidates: &[(f32, usize)], extents: &[Extent]) {
        let (mut lo, mut hi, mut widths, mut count) = (f32::INFINITY, f32::NEG_INFINITY, 0f64, 0usize);
        for &(_, i) in candidates {
            let e = &extents[i];
            if spans_x(e) && e.x_min.is_finite() && e.x_max.is_finite() {
                lo = lo.min(e.x_min);
                hi = hi.max(e.x_max);
                widths += f64::from(e.x_max - e.x_min);
                count += 1;
            }
        }
        let range = hi - lo;
        let cells = if count > 0 && range.is_finite() && range > 0.0 {
            let mean = widths / count as f64;
            ((f64::from(range) / mean).ceil() as usize).clamp(1, count.min(MAX_CELLS))
        } else {
            1
        };
        let scale = cells as f32 / range;
        self.scale = if cells > 1 && scale.is_finite() { scale } else { 0.0 };
        self.x0 = if lo.is_finite() { lo } else { 0.0 };
        self.all.clear();
        self.always.clear();
        self.cells.truncate(cells);
        self.cells.iter_mut().for_each(Vec::clear);
        self.cells.resize_with(cells, Vec::new);
    }

    /// The cell of a coordinate (not NaN); never decreases as `x` grows.
    #[inline(always)]
    fn cell(&self, x: f32) -> usize {
        // `as` saturates: below the range (and NaN from inf · 0) is cell 0, above is the last.
        (((x - self.x0) * self.scale) as usize).min(self.cells.len() - 1)
    }

    /// Whether a selected box suppresses `candidate` (onnxruntime's test against each one that
    /// can).
    fn suppresses(&self, candidate: &Extent, iou_threshold: f32) -> bool {
        let by = |&i: &usize| candidate.suppressed_by(&self.all[i], iou_threshold);
        if nan_x(candidate) {
            return self.all.iter().any(|s| candidate.suppressed_by(s, iou_threshold));
        }
        if self.always.iter().any(by) {
            return true;
        }
        // An empty x-interval overlaps nothing without NaN, and those were just compared.
        spans_x(candidate)
            && (self.cell(candidate.x_min)..=self.cell(candidate.x_max)).any(|k| self.cells[k].iter().any(by))
    }

    /// Adds a selected box.
    fn push(&mut self, e: Extent) {
        let i = self.all.len();
        self.all.push(e);
        if nan_x(&e) {
            self.always.push(i);
        } else if spans_x(&e) {
            let (first, last) = (self.cell(e.x_min), self.cell(e.x_max));
            if last - first >= MAX_SPAN {
                self.always.push(i);
            } else {
                self.cells[first..=last].iter_mut().for_each(|c| c.push(i));
            }
        }
        // Otherwise (an empty x-interval without NaN) it can only suppress a candidate with NaN
        // on x, which is compared with `all`.
    }
}

/// Runs NMS over `boxes` `[batches, n, 4]` and `scores` `[batches, classes, n]` (row-major,
/// lengths already checked); returns the `(batch, class, box)` rows.
pub(crate) fn select(
    boxes: &[f32],
    scores: &[f32],
    (batches, classes, n): (usize, usize, usize),
    params: &Params,
) -> Vec<[i64; 3]> {
    let mut rows = Vec::new();
    if params.max_output == 0 || n == 0 {
        return rows;
    }
    let mut candidates: Vec<(f32, usize)> = Vec::with_capacity(n);
    let mut kept = Kept::default();
    for batch in 0..batches {
        let extents: Vec<Extent> =
            boxes[batch * n * 4..(batch + 1) * n * 4].chunks_exact(4).map(|b| Extent::new(b, params.format)).collect();
        for class in 0..classes {
            let class_scores = &scores[(batch * classes + class) * n..][..n];
            candidates.clear();
            let scored = class_scores.iter().copied().enumerate().map(|(i, s)| (s, i));
            match params.score_threshold {
                Some(t) => candidates.extend(scored.filter(|(s, _)| *s > t)),
                None => candidates.extend(scored),
            }
            candidates.sort_unstable_by(rank);
            kept.reset(&candidates, &extents);
            for &(_, index) in &candidates {
                if kept.all.len() >= params.max_output {
                    break;
                }
                let candidate = extents[index];
                if !kept.suppresses(&candidate, params.iou_threshold) {
                    kept.push(candidate);
                    rows.push([batch as i64, class as i64, index as i64]);
                }
            }
        }
    }
    rows
}

impl NonMaxSuppression {
    fn inputs_expected(&self) -> usize {
        [self.max_output_input, self.iou_threshold_input, self.score_threshold_input]
            .iter()
            .flatten()
            .map(|&ix| ix + 1)
            .max()
            .unwrap_or(2)
            .max(2)
    }

    /// Checks that `count` inputs arrived, as many as the node wires.
    fn check_arity(&self, count: usize) -> TractResult<()> {
        ensure!(
            count == self.inputs_expected(),
            "NonMaxSuppression node '{}': {count} inputs where {} are wired",
            self.node,
            self.inputs_expected()
        );
        Ok(())
    }

    /// Checks what is known of the inputs' types and shapes, naming the node.
    fn check_facts(&self, inputs: &[&TypedFact]) -> TractResult<()> {
        let node = &self.node;
        self.check_arity(inputs.len())?;
        let (boxes, scores) = (inputs[0], inputs[1]);
        for (what, fact) in [("boxes", boxes), ("scores", scores)] {
            ensure!(
                fact.datum_type == DatumType::F32,
                "NonMaxSuppression node '{node}': {what} of type {:?}; ONNX takes float",
                fact.datum_type
            );
        }
        let known = |d: &TDim| d.to_usize().ok();
        ensure!(
            boxes.rank() == 3 && known(&boxes.shape[2]).is_none_or(|d| d == 4),
            "NonMaxSuppression node '{node}': boxes of shape {:?}; it takes [batches, boxes, 4]",
            boxes.shape
        );
        ensure!(
            scores.rank() == 3,
            "NonMaxSuppression node '{node}': scores of shape {:?}; it takes [batches, classes, boxes]",
            scores.shape
        );
        for (b, s, what) in [(0, 0, "batches"), (1, 2, "boxes")] {
            if let (Some(b), Some(s)) = (known(&boxes.shape[b]), known(&scores.shape[s])) {
                ensure!(
                    b == s,
                    "NonMaxSuppression node '{node}': boxes {:?} and scores {:?} disagree on the number of {what}",
                    boxes.shape,
                    scores.shape
                );
            }
        }
        for (ix, what, dt) in self.scalar_inputs() {
            let fact = inputs[ix];
            ensure!(
                fact.datum_type == dt,
                "NonMaxSuppression node '{node}': {what} of type {:?}; ONNX takes {dt:?}",
                fact.datum_type
            );
            if let Ok(len) = fact.shape.volume().to_usize() {
                ensure!(
                    len == 1,
                    "NonMaxSuppression node '{node}': {what} of shape {:?}; it takes one value",
                    fact.shape
                );
            }
        }
        Ok(())
    }

    /// The optional scalar inputs that are wired: position, name, element type.
    fn scalar_inputs(&self) -> impl Iterator<Item = (usize, &'static str, DatumType)> {
        [
            (self.max_output_input, "max_output_boxes_per_class", DatumType::I64),
            (self.iou_threshold_input, "iou_threshold", DatumType::F32),
            (self.score_threshold_input, "score_threshold", DatumType::F32),
        ]
        .into_iter()
        .filter_map(|(ix, what, dt)| ix.map(|ix| (ix, what, dt)))
    }

    /// The one value of an optional scalar input.
    fn scalar<T: Datum + Copy>(&self, inputs: &[TValue], ix: Option<usize>, what: &str) -> TractResult<Option<T>> {
        let Some(ix) = ix else { return Ok(None) };
        let t = inputs.get(ix).with_context(|| format!("NonMaxSuppression node '{}': no {what} input", self.node))?;
        let plain = t.try_as_plain_ram()?;
        match plain.as_slice::<T>() {
            Ok([v]) => Ok(Some(*v)),
            _ => bail!(
                "NonMaxSuppression node '{}': {what} is {t:?}; it takes one {:?} value",
                self.node,
                T::datum_type()
            ),
        }
    }

    /// The run-time parameters, as onnxruntime reads them (`GetThresholdsFromInputs`).
    fn params(&self, inputs: &[TValue]) -> TractResult<Params> {
        let max_output = self.scalar::<i64>(inputs, self.max_output_input, "max_output_boxes_per_class")?.unwrap_or(0);
        let iou_threshold = self.scalar::<f32>(inputs, self.iou_threshold_input, "iou_threshold")?.unwrap_or(0.0);
        ensure!(
            (0.0..=1.0).contains(&iou_threshold),
            "NonMaxSuppression node '{}': iou_threshold {iou_threshold} is outside [0, 1]",
            self.node
        );
        Ok(Params {
            format: self.center_point_box,
            max_output: usize::try_from(max_output.max(0)).unwrap_or(usize::MAX),
            iou_threshold,
            score_threshold: self.scalar::<f32>(inputs, self.score_threshold_input, "score_threshold")?,
        })
    }
}

impl Expansion for NonMaxSuppression {
    fn name(&self) -> StaticName {
        "NonMaxSuppression".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.inputs_expected())?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, i64::datum_type())?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[0], self.selected.to_dim())?;
        s.equals(&outputs[0].shape[1], 3usize.to_dim())?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for NonMaxSuppression {
    fn name(&self) -> StaticName {
        "NonMaxSuppression".into()
    }

    /// The output's length is a symbol only a run gives a value.
    fn mints_runtime_symbols(&self) -> bool {
        true
    }

    op_as_typed_op!();
}

impl EvalOp for NonMaxSuppression {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let node = &self.node;
        self.check_arity(inputs.len())?;
        let (boxes, scores) = (&inputs[0], &inputs[1]);
        let (Ok(&[batches, n, 4]), Ok(&[score_batches, classes, score_n])) =
            (<&[usize; 3]>::try_from(boxes.shape()), <&[usize; 3]>::try_from(scores.shape()))
        else {
            bail!(
                "NonMaxSuppression node '{node}': boxes {:?} and scores {:?}; it takes boxes [batches, boxes, 4] \
                 and scores [batches, classes, boxes]",
                boxes.shape(),
                scores.shape()
            );
        };
        ensure!(
            batches == score_batches && n == score_n,
            "NonMaxSuppression node '{node}': boxes {:?} and scores {:?} disagree on the number of batches or boxes",
            boxes.shape(),
            scores.shape()
        );
        let params = self.params(&inputs)?;
        let (boxes_ram, scores_ram) = (boxes.try_as_plain_ram()?, scores.try_as_plain_ram()?);
        let (Ok(boxes), Ok(scores)) = (boxes_ram.as_slice::<f32>(), scores_ram.as_slice::<f32>()) else {
            bail!(
                "NonMaxSuppression node '{node}': boxes of type {:?} and scores of type {:?}; ONNX takes float",
                inputs[0].datum_type(),
                inputs[1].datum_type()
            );
        };
        ensure!(
            boxes.len() == batches * n * 4 && scores.len() == batches * classes * n,
            "NonMaxSuppression node '{node}': inputs' data do not match their shapes"
        );
        let rows = select(boxes, scores, (batches, classes, n), &params);
        log::trace!("NonMaxSuppression node '{node}': {} of {n} boxes × {classes} classes selected", rows.len());
        let flat: Vec<i64> = rows.into_iter().flatten().collect();
        Ok(tvec!(Tensor::from_shape(&[flat.len() / 3, 3], &flat)?.into_tvalue()))
    }
}

impl TypedOp for NonMaxSuppression {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.check_facts(inputs)?;
        Ok(tvec!(i64::fact([self.selected.to_dim(), 3usize.to_dim()])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node with all three optional inputs wired (positions 2, 3, 4) or only the first two.
    fn op(format: BoxFormat, with_score_threshold: bool) -> NonMaxSuppression {
        NonMaxSuppression {
            node: "nms".into(),
            center_point_box: format,
            max_output_input: Some(2),
            iou_threshold_input: Some(3),
            score_threshold_input: with_score_threshold.then_some(4),
            selected: SymbolScope::default().sym("nms"),
        }
    }

    /// Runs `op` on `boxes` `[1, n, 4]` and one class of `scores`.
    fn run_op(op: &NonMaxSuppression, inputs: Vec<Tensor>) -> TractResult<Tensor> {
        let inputs = inputs.into_iter().map(|t| t.into_tvalue()).collect();
        Ok(op.eval(&EvalContext::out_of_plan(), inputs)?.remove(0).into_tensor())
    }

    fn rows(t: &Tensor) -> Vec<[i64; 3]> {
        let plain = t.try_as_plain_ram().expect("plain");
        plain.as_slice::<i64>().expect("i64").chunks_exact(3).map(|r| [r[0], r[1], r[2]]).collect()
    }

    /// One batch, one class: the selected box indices.
    fn one_class(boxes: &[[f32; 4]], scores: &[f32], params: &Params) -> Vec<i64> {
        let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
        select(&flat, scores, (1, 1, boxes.len()), params).into_iter().map(|r| r[2]).collect()
    }

    fn params(max_output: usize, iou_threshold: f32, score_threshold: Option<f32>) -> Params {
        Params { format: BoxFormat::Corners, max_output, iou_threshold, score_threshold }
    }

    #[test]
    fn an_overlapping_box_with_a_lower_score_is_suppressed() {
        // [y1, x1, y2, x2]; the second overlaps the first with IoU 81/119.
        let boxes = [[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.]];
        assert_eq!(one_class(&boxes, &[0.9, 0.8, 0.7], &params(10, 0.5, None)), [0, 2]);
        // The order is by score, not by index; the suppressor is whichever scores higher.
        assert_eq!(one_class(&boxes, &[0.8, 0.9, 0.95], &params(10, 0.5, None)), [2, 1]);
        // Below the overlap, nothing is suppressed.
        assert_eq!(one_class(&boxes, &[0.9, 0.8, 0.7], &params(10, 0.7, None)), [0, 1, 2]);
    }

    #[test]
    fn an_iou_exactly_at_the_threshold_is_not_suppressed() {
        // Areas 4 and 2, intersection 2, union 4: IoU exactly 0.5.
        let boxes = [[0., 0., 2., 2.], [0., 0., 2., 1.]];
        assert_eq!(one_class(&boxes, &[0.9, 0.8], &params(10, 0.5, None)), [0, 1]);
        assert_eq!(one_class(&boxes, &[0.9, 0.8], &params(10, 0.499, None)), [0]);
        // Touching edges are no overlap, even at threshold 0.
        let touching = [[0., 0., 2., 2.], [0., 2., 2., 4.]];
        assert_eq!(one_class(&touching, &[0.9, 0.8], &params(10, 0.0, None)), [0, 1]);
    }

    #[test]
    fn flipped_corners_are_put_in_order() {
        let boxes = [[2., 2., 0., 0.], [0., 1., 2., 0.]];
        assert_eq!(one_class(&boxes, &[0.9, 0.8], &params(10, 0.4, None)), [0]);
        assert_eq!(one_class(&boxes, &[0.9, 0.8], &params(10, 0.5, None)), [0, 1]);
    }

    #[test]
    fn center_point_boxes_are_centre_and_size() {
        let center = Params { format: BoxFormat::CenterSize, ..params(10, 0.4, None) };
        // x 0..2, y 0..2 and x 0..1, y 0..2: IoU 0.5. The third has a negative width (x 2..0):
        // it is selected first and overlaps nothing, as in onnxruntime.
        let boxes = [[1., 1., 2., 2.], [0.5, 1., 1., 2.], [1., 1., -2., 2.]];
        assert_eq!(one_class(&boxes, &[0.9, 0.8, 0.95], &center), [2, 0]);
        assert_eq!(one_class(&boxes, &[0.9, 0.8, 0.95], &Params { iou_threshold: 0.5, ..center }), [2, 0, 1]);
    }

    #[test]
    fn the_score_threshold_is_strict() {
        let boxes = [[0., 0., 1., 1.], [2., 2., 3., 3.], [4., 4., 5., 5.]];
        assert_eq!(one_class(&boxes, &[0.5, 0.6, 0.4], &params(10, 0.5, Some(0.5))), [1]);
        assert_eq!(one_class(&boxes, &[0.5, 0.6, 0.4], &params(10, 0.5, None)), [1, 0, 2]);
    }

    #[test]
    fn max_output_zero_selects_nothing_and_n_caps_each_class() -> TractResult<()> {
        let boxes = [[0., 0., 1., 1.], [2., 2., 3., 3.], [4., 4., 5., 5.]];
        let scores = [0.5, 0.6, 0.4];
        assert_eq!(one_class(&boxes, &scores, &params(0, 0.5, None)), Vec::<i64>::new());
        assert_eq!(one_class(&boxes, &scores, &params(1, 0.5, None)), [1]);
        assert_eq!(one_class(&boxes, &scores, &params(2, 0.5, None)), [1, 0]);
        assert_eq!(one_class(&boxes, &scores, &params(usize::MAX, 0.5, None)), [1, 0, 2]);
        // Through the operator: a negative count is 0, as onnxruntime reads it.
        let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
        for (max, want) in [(-1i64, 0), (0, 0), (2, 2), (i64::MAX, 3)] {
            let out = run_op(
                &op(BoxFormat::Corners, false),
                vec![
                    Tensor::from_shape(&[1, 3, 4], &flat)?,
                    Tensor::from_shape(&[1, 1, 3], &scores)?,
                    tensor1(&[max]),
                    tensor1(&[0.5f32]),
                ],
            )?;
            assert_eq!(out.shape(), [want, 3], "max_output_boxes_per_class {max}");
        }
        Ok(())
    }

    #[test]
    fn rows_are_batch_then_class_then_selection_order() {
        // Two batches of two boxes (the second pair overlapping), two classes.
        let boxes = [0., 0., 1., 1., 5., 5., 6., 6., 0., 0., 2., 2., 0., 0., 2., 1.9];
        let scores = [
            0.1, 0.2, // batch 0, class 0
            0.4, 0.3, // batch 0, class 1
            0.6, 0.7, // batch 1, class 0: box 1 suppresses box 0
            0.9, 0.0, // batch 1, class 1: box 0 suppresses box 1
        ];
        let got = select(&boxes, &scores, (2, 2, 2), &params(10, 0.5, None));
        assert_eq!(got, [[0, 0, 1], [0, 0, 0], [0, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0]]);
    }

    #[test]
    fn equal_scores_go_lower_index_first_as_in_onnxruntime() {
        // onnxruntime 1.32 on 20 disjoint boxes, scores 3/1/2 in this pattern, gave these rows.
        let boxes: Vec<[f32; 4]> = (0..20).map(|i| [i as f32 * 10., 0., i as f32 * 10. + 5., 5.]).collect();
        let scores = [3., 1., 2., 1., 3., 2., 1., 3., 2., 2., 1., 3., 3., 1., 2., 1., 2., 3., 1., 3.];
        assert_eq!(
            one_class(&boxes, &scores, &params(100, 0.5, Some(0.0))),
            [0, 4, 7, 11, 12, 17, 19, 2, 5, 8, 9, 14, 16, 1, 3, 6, 10, 13, 15, 18]
        );
        // Of two equal, overlapping boxes the lower index is kept; -0 and 0 are equal scores.
        let same = [[0., 0., 2., 2.], [0., 0., 2., 2.]];
        assert_eq!(one_class(&same, &[0.5, 0.5], &params(10, 0.5, None)), [0]);
        assert_eq!(one_class(&same, &[0.0, -0.0], &params(10, 0.5, None)), [0]);
        assert_eq!(one_class(&same, &[-0.0, 0.0], &params(10, 0.5, None)), [0]);
    }

    #[test]
    fn nan_scores_do_not_panic_and_never_pass_a_threshold() {
        let boxes = [[0., 0., 1., 1.], [2., 2., 3., 3.], [4., 4., 5., 5.], [6., 6., 7., 7.]];
        let scores = [f32::NAN, 0.5, f32::NAN, 0.7];
        assert_eq!(one_class(&boxes, &scores, &params(10, 0.5, Some(0.0))), [3, 1]);
        assert_eq!(one_class(&boxes, &scores, &params(10, 0.5, None)), [3, 1, 0, 2]);
    }

    #[test]
    fn empty_inputs_give_zero_rows_of_three() -> TractResult<()> {
        for (n, classes) in [(0usize, 3usize), (4, 0)] {
            let out = run_op(
                &op(BoxFormat::Corners, true),
                vec![
                    Tensor::zero::<f32>(&[1, n, 4])?,
                    Tensor::zero::<f32>(&[1, classes, n])?,
                    tensor1(&[10i64]),
                    tensor1(&[0.5f32]),
                    tensor1(&[0.0f32]),
                ],
            )?;
            assert_eq!(out.shape(), [0, 3]);
            assert_eq!(out.datum_type(), DatumType::I64);
        }
        Ok(())
    }

    #[test]
    fn malformed_inputs_are_errors_naming_the_node() {
        let cases: Vec<(Vec<Tensor>, &str)> = vec![
            (vec![Tensor::zero::<f32>(&[1, 3, 5]).expect("t"), Tensor::zero::<f32>(&[1, 1, 3]).expect("t")], "boxes"),
            (vec![Tensor::zero::<f32>(&[3, 4]).expect("t"), Tensor::zero::<f32>(&[1, 1, 3]).expect("t")], "boxes"),
            (
                vec![Tensor::zero::<f32>(&[1, 3, 4]).expect("t"), Tensor::zero::<f32>(&[1, 1, 2]).expect("t")],
                "disagree",
            ),
            (
                vec![Tensor::zero::<f32>(&[2, 3, 4]).expect("t"), Tensor::zero::<f32>(&[1, 1, 3]).expect("t")],
                "disagree",
            ),
            (vec![Tensor::zero::<f64>(&[1, 3, 4]).expect("t"), Tensor::zero::<f64>(&[1, 1, 3]).expect("t")], "float"),
        ];
        for (mut inputs, what) in cases {
            inputs.push(tensor1(&[10i64]));
            inputs.push(tensor1(&[0.5f32]));
            let e = run_op(&op(BoxFormat::Corners, false), inputs).expect_err(what);
            let msg = e.to_string();
            assert!(msg.contains("NonMaxSuppression node 'nms'") && msg.contains(what), "{msg}");
        }
        let good = || vec![Tensor::zero::<f32>(&[1, 3, 4]).expect("t"), Tensor::zero::<f32>(&[1, 1, 3]).expect("t")];
        for (max, iou, what) in
            [(tensor1(&[1i64, 2]), tensor1(&[0.5f32]), "one"), (tensor1(&[1i64]), tensor1(&[1.5f32]), "[0, 1]")]
        {
            let mut inputs = good();
            inputs.extend([max, iou]);
            let e = run_op(&op(BoxFormat::Corners, false), inputs).expect_err(what);
            assert!(e.to_string().contains("NonMaxSuppression node 'nms'") && e.to_string().contains(what), "{e}");
        }
        let e = run_op(&op(BoxFormat::Corners, false), good()).expect_err("missing inputs");
        assert!(e.to_string().contains("NonMaxSuppression node 'nms'"), "{e}");
    }

    #[test]
    fn the_output_length_is_bound_at_run_time_in_a_plan() -> TractResult<()> {
        let mut model = TypedModel::default();
        let boxes = model.add_source("boxes", f32::fact([1usize, 3, 4]))?;
        let scores = model.add_source("scores", f32::fact([1usize, 2, 3]))?;
        let max = model.add_const("max", tensor1(&[10i64]))?;
        let iou = model.add_const("iou", tensor1(&[0.5f32]))?;
        let nms = NonMaxSuppression {
            score_threshold_input: None,
            selected: model.symbols.sym("nms"),
            ..op(BoxFormat::Corners, false)
        };
        let out = model.wire_node("nms", nms, &[boxes, scores, max, iou])?;
        model.select_output_outlets(&out)?;
        let plan = model.into_optimized()?.into_runnable()?;
        let boxes = Tensor::from_shape(&[1, 3, 4], &[0f32, 0., 2., 2., 0., 0., 2., 1.9, 5., 5., 6., 6.])?;
        let scores = Tensor::from_shape(&[1, 2, 3], &[0.9f32, 0.8, 0.7, 0.1, 0.2, 0.3])?;
        let got = plan.run(tvec!(boxes.into_tvalue(), scores.into_tvalue()))?.remove(0).into_tensor();
        assert_eq!(rows(&got), [[0, 0, 0], [0, 0, 2], [0, 1, 2], [0, 1, 1]]);
        Ok(())
    }

    /// A deterministic generator (SplitMix64) for the randomized comparison.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[self.below(from.len())]
        }
    }

    /// The IoU of two boxes, written from the definition.
    fn naive_iou(a: &[f32], b: &[f32], format: BoxFormat) -> f32 {
        // (x_min, x_max, y_min, y_max, area)
        let extent = |b: &[f32]| match format {
            BoxFormat::Corners => {
                let (x0, x1) = (b[1].min(b[3]), b[1].max(b[3]));
                let (y0, y1) = (b[0].min(b[2]), b[0].max(b[2]));
                (x0, x1, y0, y1, (x1 - x0) * (y1 - y0))
            }
            BoxFormat::CenterSize => {
                (b[0] - b[2] / 2.0, b[0] + b[2] / 2.0, b[1] - b[3] / 2.0, b[1] + b[3] / 2.0, b[2] * b[3])
            }
        };
        let (a, b) = (extent(a), extent(b));
        let w = a.1.min(b.1) - a.0.max(b.0);
        let h = a.3.min(b.3) - a.2.max(b.2);
        if w <= 0.0 || h <= 0.0 {
            return 0.0;
        }
        let inter = w * h;
        inter / (a.4 + b.4 - inter)
    }

    /// NMS as the specification says it, quadratically: repeatedly take the best remaining
    /// candidate (highest score, then lowest index, NaN last) and keep it unless a kept box
    /// overlaps it.
    fn naive(boxes: &[f32], scores: &[f32], dims: (usize, usize, usize), p: &Params) -> Vec<[i64; 3]> {
        naive_with(boxes, scores, dims, p, |a, b| naive_iou(a, b, p.format) > p.iou_threshold)
    }

    /// [`naive`] with the test of whether box `b` (selected) suppresses box `a`.
    fn naive_with(
        boxes: &[f32],
        scores: &[f32],
        (batches, classes, n): (usize, usize, usize),
        p: &Params,
        suppresses: impl Fn(&[f32], &[f32]) -> bool,
    ) -> Vec<[i64; 3]> {
        let mut rows = vec![];
        for batch in 0..batches {
            let of = |i: usize| &boxes[(batch * n + i) * 4..(batch * n + i) * 4 + 4];
            for class in 0..classes {
                let score = |i: usize| scores[(batch * classes + class) * n + i];
                let mut left: Vec<usize> = (0..n).filter(|&i| p.score_threshold.is_none_or(|t| score(i) > t)).collect();
                let mut kept: Vec<usize> = vec![];
                while !left.is_empty() && kept.len() < p.max_output {
                    let mut best = 0;
                    for k in 1..left.len() {
                        let (s, b) = (score(left[k]), score(left[best]));
                        if s > b || (b.is_nan() && !s.is_nan()) {
                            best = k;
                        }
                    }
                    let i = left.remove(best);
                    if !kept.iter().any(|&j| suppresses(of(i), of(j))) {
                        kept.push(i);
                        rows.push([batch as i64, class as i64, i as i64]);
                    }
                }
            }
        }
        rows
    }

    #[test]
    fn random_cases_agree_with_a_naive_implementation() {
        let mut rng = Rng(20_261_207);
        let mut selected = 0;
        for case in 0..3000 {
            let (batches, classes, n) = (1 + rng.below(2), 1 + rng.below(3), rng.below(40));
            let format = rng.pick(&[BoxFormat::Corners, BoxFormat::CenterSize]);
            // Coarse coordinates and scores: exact IoU ties with the threshold and equal scores.
            let boxes: Vec<f32> = (0..batches * n * 4)
                .map(|_| match format {
                    BoxFormat::Corners => rng.below(16) as f32,
                    BoxFormat::CenterSize => rng.below(16) as f32 - 2.0,
                })
                .collect();
            let scores: Vec<f32> = (0..batches * classes * n).map(|_| rng.below(10) as f32 / 10.0).collect();
            let p = Params {
                format,
                max_output: rng.pick(&[0, 1, 3, 1000]),
                iou_threshold: rng.pick(&[0.0, 0.25, 0.5, 0.7, 1.0]),
                score_threshold: rng.pick(&[None, Some(0.0), Some(0.3), Some(0.5)]),
            };
            let want = naive(&boxes, &scores, (batches, classes, n), &p);
            assert_eq!(select(&boxes, &scores, (batches, classes, n), &p), want, "case {case}: {p:?}");
            selected += want.len();
        }
        assert!(selected > 10_000, "the cases select boxes ({selected})");
    }

    #[test]
    fn many_clustered_boxes_agree_with_a_naive_implementation() {
        // Hundreds to thousands of boxes around a few centres (as a detector's), a few of them
        // spanning everything (compared with every candidate rather than indexed), and classes
        // offset apart as torchvision's batched_nms does.
        let mut rng = Rng(7);
        for case in 0..12 {
            let n = 200 + rng.below(1800);
            let centres: Vec<(f32, f32)> =
                (0..8).map(|_| (rng.below(1000) as f32 / 10.0, rng.below(1000) as f32 / 10.0)).collect();
            let mut boxes = Vec::with_capacity(n * 4);
            for _ in 0..n {
                let (cx, cy) = rng.pick(&centres);
                let offset = rng.below(4) as f32 * 200.0;
                let (x, y) = (cx + rng.below(80) as f32 / 10.0 + offset, cy + rng.below(80) as f32 / 10.0 + offset);
                let (w, h) = if rng.below(150) == 0 {
                    (2000.0, 3.0 + rng.below(50) as f32)
                } else {
                    (1.0 + rng.below(200) as f32 / 10.0, 1.0 + rng.below(200) as f32 / 10.0)
                };
                boxes.extend([y, x, y + h, x + w]);
            }
            let scores: Vec<f32> = (0..n).map(|_| rng.below(1000) as f32 / 1000.0).collect();
            let p = params(usize::MAX, rng.pick(&[0.3, 0.5, 0.7]), rng.pick(&[None, Some(0.2)]));
            let want = naive(&boxes, &scores, (1, 1, n), &p);
            assert_eq!(select(&boxes, &scores, (1, 1, n), &p), want, "case {case}: {n} boxes, {p:?}");
            assert!(want.len() > 10 && want.len() < n, "case {case}: some but not all kept");
        }
    }

    #[test]
    fn non_finite_coordinates_give_onnxruntime_answers() {
        // NaN, infinities, huge, flipped and empty boxes: the indexed search must compare every
        // pair onnxruntime's test could find overlapping, so it agrees with comparing all pairs
        // with that test.
        let mut rng = Rng(11);
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, -f32::MAX, 0.0, -0.0];
        for case in 0..1500 {
            let n = rng.below(30);
            let format = rng.pick(&[BoxFormat::Corners, BoxFormat::CenterSize]);
            let boxes: Vec<f32> = (0..n * 4)
                .map(|_| if rng.below(12) == 0 { rng.pick(&special) } else { rng.below(16) as f32 - 2.0 })
                .collect();
            let scores: Vec<f32> =
                (0..n).map(|_| if rng.below(20) == 0 { f32::NAN } else { rng.below(8) as f32 / 8.0 }).collect();
            let p =
                Params { format, ..params(rng.pick(&[3, 1000]), rng.pick(&[0.0, 0.5]), rng.pick(&[None, Some(0.1)])) };
            let want = naive_with(&boxes, &scores, (1, 1, n), &p, |a, b| {
                Extent::new(a, format).suppressed_by(&Extent::new(b, format), p.iou_threshold)
            });
            assert_eq!(select(&boxes, &scores, (1, 1, n), &p), want, "case {case}: {p:?} {boxes:?} {scores:?}");
        }
    }
}
