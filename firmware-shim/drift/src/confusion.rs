//! Rolling classification metrics over the last `W` labelled predictions, for judging a model on
//! the device once ground truth trickles in (accuracy and sklearn-style macro precision, recall
//! and F1), with counts updated incrementally in fixed storage.

/// Rolling confusion matrix over the last `W` (predicted, actual) pairs with `K` tracked classes.
///
/// Class labels `0..K` have their own row and column; every other label (negative or ≥ `K`) is
/// lumped into one "other" class, which takes part in the metrics like any class. Metrics follow
/// scikit-learn's `average='macro'` with `zero_division=0`: averaged over the classes present in the
/// window's predictions or actuals.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Confusion<const K: usize, const W: usize> {
    predicted: [u16; W],
    actual: [u16; W],
    head: usize,
    len: usize,
    /// `cells[p][a]` for tracked classes.
    cells: [[u32; K]; K],
    /// Predicted "other", actual tracked class `a`.
    predicted_other: [u32; K],
    /// Predicted tracked class `p`, actual "other".
    actual_other: [u32; K],
    /// Both "other".
    both_other: u32,
}

impl<const K: usize, const W: usize> Default for Confusion<K, W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const K: usize, const W: usize> Confusion<K, W> {
    /// An empty window. `K` must fit a `u16` (anything larger is a compile-time-sized mistake;
    /// labels above `u16::MAX - 1` are then treated as "other").
    pub const fn new() -> Self {
        Self {
            predicted: [0; W],
            actual: [0; W],
            head: 0,
            len: 0,
            cells: [[0; K]; K],
            predicted_other: [0; K],
            actual_other: [0; K],
            both_other: 0,
        }
    }

    /// Index of the "other" class.
    const OTHER: usize = if K < u16::MAX as usize { K } else { u16::MAX as usize };

    fn class(label: i64) -> usize {
        if label >= 0 && (label as u64) < Self::OTHER as u64 { label as usize } else { Self::OTHER }
    }

    fn cell(&self, p: usize, a: usize) -> u32 {
        match (p < Self::OTHER, a < Self::OTHER) {
            (true, true) => self.cells[p][a],
            (false, true) => self.predicted_other[a],
            (true, false) => self.actual_other[p],
            (false, false) => self.both_other,
        }
    }

    fn cell_mut(&mut self, p: usize, a: usize) -> &mut u32 {
        match (p < Self::OTHER, a < Self::OTHER) {
            (true, true) => &mut self.cells[p][a],
            (false, true) => &mut self.predicted_other[a],
            (true, false) => &mut self.actual_other[p],
            (false, false) => &mut self.both_other,
        }
    }

    /// Adds one labelled prediction, evicting the oldest once `W` are held. With `W == 0` nothing
    /// is kept.
    pub fn record(&mut self, predicted: i64, actual: i64) {
        if W == 0 {
            return;
        }
        let (p, a) = (Self::class(predicted), Self::class(actual));
        if self.len == W {
            let (old_p, old_a) = (usize::from(self.predicted[self.head]), usize::from(self.actual[self.head]));
            let c = self.cell_mut(old_p, old_a);
            *c = c.saturating_sub(1);
        } else {
            self.len += 1;
        }
        self.predicted[self.head] = p as u16;
        self.actual[self.head] = a as u16;
        *self.cell_mut(p, a) += 1;
        self.head = (self.head + 1) % W;
    }

    /// Pairs currently in the window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fraction of correct predictions in the window, `None` when empty.
    pub fn accuracy(&self) -> Option<f64> {
        if self.len == 0 {
            return None;
        }
        let correct: u64 = (0..=Self::OTHER).map(|c| u64::from(self.cell(c, c))).sum();
        Some(correct as f64 / self.len as f64)
    }

    /// Per present class: (true positives, predicted count, actual count), folded by `metric`
    /// into a macro average.
    fn macro_average(&self, metric: impl Fn(u64, u64, u64) -> f64) -> Option<f64> {
        if self.len == 0 {
            return None;
        }
        let (mut sum, mut classes) = (0.0, 0u32);
        for c in 0..=Self::OTHER {
            let predicted: u64 = (0..=Self::OTHER).map(|a| u64::from(self.cell(c, a))).sum();
            let actual: u64 = (0..=Self::OTHER).map(|p| u64::from(self.cell(p, c))).sum();
            if predicted + actual == 0 {
                continue;
            }
            sum += metric(u64::from(self.cell(c, c)), predicted, actual);
            classes += 1;
        }
        Some(sum / f64::from(classes))
    }

    /// Macro-averaged precision (`tp / predicted`, 0 for a class never predicted), `None` when empty.
    pub fn macro_precision(&self) -> Option<f64> {
        self.macro_average(|tp, predicted, _| if predicted == 0 { 0.0 } else { tp as f64 / predicted as f64 })
    }

    /// Macro-averaged recall (`tp / actual`, 0 for a class that never occurred), `None` when empty.
    pub fn macro_recall(&self) -> Option<f64> {
        self.macro_average(|tp, _, actual| if actual == 0 { 0.0 } else { tp as f64 / actual as f64 })
    }

    /// Macro-averaged F1 (per class `2·tp / (predicted + actual)`, the mean of per-class F1 as in
    /// sklearn, not the F1 of the macro precision and recall), `None` when empty.
    pub fn macro_f1(&self) -> Option<f64> {
        self.macro_average(|tp, predicted, actual| 2.0 * tp as f64 / (predicted + actual) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cases, close, data, ints, num};

    #[test]
    fn matches_sklearn_macro_metrics_over_the_last_window() {
        let d = data();
        assert_eq!((d["metrics"]["k"].as_u64(), d["metrics"]["window"].as_u64()), (Some(4), Some(128)));
        for c in cases(&d["metrics"], "cases") {
            let mut m = Confusion::<4, 128>::new();
            let (predicted, actual) = (ints(&c["predicted"]), ints(&c["actual"]));
            for (&p, &a) in predicted.iter().zip(&actual) {
                m.record(p, a);
            }
            assert_eq!(m.len(), predicted.len().min(128));
            for (name, got) in [
                ("accuracy", m.accuracy()),
                ("precision", m.macro_precision()),
                ("recall", m.macro_recall()),
                ("f1", m.macro_f1()),
            ] {
                let got = got.expect("window is full");
                assert!(close(got, num(&c[name]), 1e-12, 1e-15), "{name}: got {got}, sklearn {}", c[name]);
            }
        }
    }

    #[test]
    fn rolling_window_evicts_oldest_and_handles_other() {
        let mut c = Confusion::<2, 3>::new();
        assert_eq!((c.accuracy(), c.macro_f1(), c.len(), c.is_empty()), (None, None, 0, true));
        c.record(0, 0);
        c.record(5, -3); // both "other": counts as correct
        c.record(1, 0);
        assert_eq!(c.accuracy(), Some(2.0 / 3.0));
        c.record(1, 1); // evicts (0, 0)
        assert_eq!(c.len(), 3);
        assert_eq!(c.accuracy(), Some(2.0 / 3.0));
        // Classes present: 0 (actual once), 1 (predicted twice, actual once), other.
        // precision: 0 -> 0, 1 -> 1/2, other -> 1; recall: 0 -> 0, 1 -> 1, other -> 1.
        assert_eq!(c.macro_precision(), Some(0.5));
        assert_eq!(c.macro_recall(), Some(2.0 / 3.0));
        let mut zero = Confusion::<2, 0>::new();
        zero.record(1, 1);
        assert_eq!(zero.len(), 0);
    }
}
