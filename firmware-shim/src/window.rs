use heapless::Vec;

use crate::Features;

/// A fixed-capacity window of samples from one channel.
///
/// Models take inputs of a fixed length; a window of exactly `N` samples is the unit that
/// becomes one model input, and the capacity is checked at compile time instead of at run time.
#[derive(Debug, Clone, Default)]
pub struct Window<const N: usize> {
    samples: Vec<f32, N>,
}

impl<const N: usize> Window<N> {
    /// An empty window.
    pub const fn new() -> Self {
        Window { samples: Vec::new() }
    }

    /// Adds one sample. Returns the completed window's features when this sample filled it, and
    /// starts the next window empty (tumbling windows: no sample counts twice).
    pub fn push(&mut self, sample: f32) -> Option<Features> {
        // Capacity is N and the window is drained as soon as it is full, so this push never fails.
        if self.samples.push(sample).is_err() {
            self.samples.clear();
            return None;
        }
        if self.samples.is_full() {
            let features = Features::of(&self.samples);
            self.samples.clear();
            return Some(features);
        }
        None
    }

    /// Samples collected so far in the current window.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the current window has no sample yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The samples of the current (incomplete) window, oldest first.
    pub fn samples(&self) -> &[f32] {
        &self.samples
    }
}

/// A fixed-size tumbling window over `C` channels sampled together (the axes of one
/// accelerometer), `N` samples each: the unit a [`FeatureLayout`](crate::FeatureLayout) turns
/// into one model input.
///
/// Kept as arrays rather than vectors so the FFT can take a channel as `&[f32; N]` and the size
/// is part of the type.
#[derive(Debug, Clone)]
pub struct MultiWindow<const C: usize, const N: usize> {
    data: [[f32; N]; C],
    len: usize,
}

impl<const C: usize, const N: usize> Default for MultiWindow<C, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const C: usize, const N: usize> MultiWindow<C, N> {
    /// An empty window.
    pub const fn new() -> Self {
        MultiWindow { data: [[0.0; N]; C], len: 0 }
    }

    /// Adds one sample of every channel. Returns the completed window when this sample filled
    /// it; the next push starts a new one (no sample counts twice).
    pub fn push(&mut self, sample: [f32; C]) -> Option<&[[f32; N]; C]> {
        if self.len >= N {
            self.len = 0;
        }
        for (channel, v) in self.data.iter_mut().zip(sample) {
            channel[self.len] = v;
        }
        self.len += 1;
        (self.len == N).then_some(&self.data)
    }

    /// Every channel's samples; the first [`len`](Self::len) of each are the current window's.
    pub fn channels(&self) -> &[[f32; N]; C] {
        &self.data
    }

    /// Samples per channel in the current window (N right after it completed).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no sample is in the window.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn window_yields_features_exactly_every_n_samples() {
        let mut w: Window<4> = Window::new();
        let mut yielded = 0;
        for i in 0..12 {
            if let Some(f) = w.push(i as f32) {
                yielded += 1;
                // Window k holds 4k..4k+3, so its mean is 4k + 1.5.
                let k = (i / 4) as f32;
                assert_eq!(f.mean, 4.0 * k + 1.5);
                assert!(w.is_empty());
            }
        }
        assert_eq!(yielded, 3);
    }

    #[test]
    fn multi_window_completes_every_n_samples_per_channel() {
        let mut w: MultiWindow<2, 3> = MultiWindow::new();
        let mut completed = std::vec::Vec::new();
        for i in 0..7 {
            if let Some(full) = w.push([i as f32, -(i as f32)]) {
                completed.push(*full);
            }
        }
        assert_eq!(completed, [[[0.0, 1.0, 2.0], [0.0, -1.0, -2.0]], [[3.0, 4.0, 5.0], [-3.0, -4.0, -5.0]]]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn partial_window_keeps_its_samples() {
        let mut w: Window<8> = Window::new();
        for s in [1.0, 2.0, 3.0] {
            assert!(w.push(s).is_none());
        }
        assert_eq!(w.samples(), &[1.0, 2.0, 3.0]);
        assert_eq!(w.len(), 3);
    }
}
