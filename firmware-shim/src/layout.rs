//! The feature layout: which features of which channels, in which order, make one model input.
//!
//! A model trained on `[ax.mean, ax.rms, …, az.band3]` must receive exactly that vector. The
//! layout names every position, produces the [`TensorSpec`] the model's bundle must declare,
//! checks a declared spec against itself, and fills window frames in that order, so firmware,
//! agent and training script agree by construction. Order: channel by channel; within a
//! channel mean, rms, p2p, zc (those selected), then `band0..bandB-1`.

use core::fmt;

use crc::{CRC_32_ISO_HDLC, Crc};
use drover_wire::frame::{Hello, MAX_FRAME_FEATURES};
use drover_wire::{DType, Dim, DimRef, SpecError, TensorSpec};
use heapless::Vec;

use crate::Features;
use crate::fft::{self, FftError};

/// Most FFT bands per channel.
pub const MAX_BANDS: usize = 16;

/// The features computed for each channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSet {
    /// Arithmetic mean (the DC level: orientation for an accelerometer).
    pub mean: bool,
    /// Root mean square.
    pub rms: bool,
    /// Largest minus smallest sample.
    pub peak_to_peak: bool,
    /// Sign changes of the mean-removed signal.
    pub zero_crossings: bool,
    /// FFT band energies above DC, equal-width bands (0: no FFT).
    pub bands: u8,
}

impl FeatureSet {
    /// The four time-domain features, no FFT.
    pub const TIME: FeatureSet =
        FeatureSet { mean: true, rms: true, peak_to_peak: true, zero_crossings: true, bands: 0 };

    /// Values per channel.
    pub const fn per_channel(&self) -> usize {
        self.mean as usize
            + self.rms as usize
            + self.peak_to_peak as usize
            + self.zero_crossings as usize
            + self.bands as usize
    }
}

/// One named feature of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// See [`FeatureSet::mean`].
    Mean,
    /// See [`FeatureSet::rms`].
    Rms,
    /// See [`FeatureSet::peak_to_peak`].
    PeakToPeak,
    /// See [`FeatureSet::zero_crossings`].
    ZeroCrossings,
    /// FFT band `n`, lowest first.
    Band(u8),
}

/// A position of the layout: `channel.feature`, e.g. `az.rms` or `ax.band2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureName {
    /// The channel's name.
    pub channel: &'static str,
    /// The feature.
    pub feature: Feature,
}

impl fmt::Display for FeatureName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.channel;
        match self.feature {
            Feature::Mean => write!(f, "{c}.mean"),
            Feature::Rms => write!(f, "{c}.rms"),
            Feature::PeakToPeak => write!(f, "{c}.p2p"),
            Feature::ZeroCrossings => write!(f, "{c}.zc"),
            Feature::Band(n) => write!(f, "{c}.band{n}"),
        }
    }
}

/// Why a layout cannot be built, fill a frame, or feed a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// More values than a window frame carries ([`MAX_FRAME_FEATURES`]) or more bands than
    /// [`MAX_BANDS`].
    TooMany,
    /// The window cannot be split into the bands asked for.
    Fft(FftError),
    /// The model's input is not `float32`.
    DType(DType),
    /// The model's input is not `[N, len]`, `[1, len]` or `[len]`.
    Shape {
        /// Values per window in this layout.
        expected: usize,
    },
    /// A channel name makes a feature name too long for a tensor name.
    Spec(SpecError),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::TooMany => write!(f, "more than {MAX_FRAME_FEATURES} features or {MAX_BANDS} bands"),
            LayoutError::Fft(e) => write!(f, "{e}"),
            LayoutError::DType(d) => write!(f, "model input is {d}, features are float32"),
            LayoutError::Shape { expected } => write!(f, "model input is not [N, {expected}]"),
            LayoutError::Spec(e) => write!(f, "{e}"),
        }
    }
}

/// `C` named channels, the same [`FeatureSet`] for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureLayout<const C: usize> {
    channels: [&'static str; C],
    set: FeatureSet,
}

impl<const C: usize> FeatureLayout<C> {
    /// A layout, refused when its vector would not fit a window frame.
    pub fn new(channels: [&'static str; C], set: FeatureSet) -> Result<Self, LayoutError> {
        if usize::from(set.bands) > MAX_BANDS || C * set.per_channel() > MAX_FRAME_FEATURES {
            return Err(LayoutError::TooMany);
        }
        Ok(FeatureLayout { channels, set })
    }

    /// Values per window: the model input's width.
    pub fn len(&self) -> usize {
        C * self.set.per_channel()
    }

    /// Whether the layout computes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every position's name, in order.
    pub fn names(&self) -> impl Iterator<Item = FeatureName> + '_ {
        let s = self.set;
        self.channels.iter().flat_map(move |&channel| {
            let time = [
                (s.mean, Feature::Mean),
                (s.rms, Feature::Rms),
                (s.peak_to_peak, Feature::PeakToPeak),
                (s.zero_crossings, Feature::ZeroCrossings),
            ];
            time.into_iter()
                .filter_map(|(on, f)| on.then_some(f))
                .chain((0..s.bands).map(Feature::Band))
                .map(move |feature| FeatureName { channel, feature })
        })
    }

    /// CRC-32 of the names, newline-separated: what a `Hello` frame announces so the agent can
    /// tell two layouts of the same width apart.
    pub fn id(&self) -> u32 {
        struct Digest<'a>(crc::Digest<'a, u32>);
        impl fmt::Write for Digest<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                self.0.update(s.as_bytes());
                Ok(())
            }
        }
        const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);
        let mut d = Digest(CRC32.digest());
        for name in self.names() {
            // Writing into a digest cannot fail.
            let _ = fmt::write(&mut d, format_args!("{name}\n"));
        }
        d.0.finalize()
    }

    /// The `Hello` frame body announcing this layout.
    pub fn hello(&self, window_len: u16, period_us: u32) -> Hello {
        // `new` bounds the width by MAX_FRAME_FEATURES, far below u16::MAX.
        Hello { features: self.len() as u16, window_len, period_us, layout_id: self.id() }
    }

    /// The input a model must declare to take these windows: `name: float32[N, len]`.
    pub fn tensor_spec(&self, name: &str) -> Result<TensorSpec, LayoutError> {
        TensorSpec::new(name, DType::F32, [DimRef::Symbolic("N"), DimRef::Fixed(self.len() as u64)])
            .map_err(LayoutError::Spec)
    }

    /// Checks a model input declared in a bundle against this layout: float32, and `[N, len]`,
    /// `[1, len]` or `[len]`.
    pub fn check(&self, spec: &TensorSpec) -> Result<(), LayoutError> {
        if spec.dtype != DType::F32 {
            return Err(LayoutError::DType(spec.dtype));
        }
        let width = Dim::Fixed(self.len() as u64);
        let ok = match spec.shape.as_slice() {
            [w] => *w == width,
            [Dim::Symbolic(_) | Dim::Fixed(1), w] => *w == width,
            _ => false,
        };
        if ok { Ok(()) } else { Err(LayoutError::Shape { expected: self.len() }) }
    }

    /// Computes the features of one window of `N` samples per channel into `out`, in order.
    pub fn extract<const N: usize>(
        &self,
        window: &[[f32; N]; C],
        out: &mut Vec<f32, MAX_FRAME_FEATURES>,
    ) -> Result<(), LayoutError> {
        let bands = usize::from(self.set.bands);
        if bands > 0 {
            fft::check(N, bands).map_err(LayoutError::Fft)?;
        }
        out.clear();
        let mut energies = [0.0f32; MAX_BANDS];
        for samples in window {
            let f = Features::of(samples);
            let s = self.set;
            let time = [
                (s.mean, f.mean),
                (s.rms, f.rms),
                (s.peak_to_peak, f.peak_to_peak),
                (s.zero_crossings, f.zero_crossings as f32),
            ];
            for (_, v) in time.into_iter().filter(|(on, _)| *on) {
                out.push(v).map_err(|_| LayoutError::TooMany)?;
            }
            if bands > 0 {
                let e = &mut energies[..bands];
                fft::band_energies(samples, e).map_err(LayoutError::Fft)?;
                out.extend_from_slice(e).map_err(|_| LayoutError::TooMany)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;
    use std::vec::Vec as StdVec;

    use super::*;

    fn accel() -> FeatureLayout<3> {
        FeatureLayout::new(["ax", "ay", "az"], FeatureSet { bands: 2, ..FeatureSet::TIME }).expect("fits")
    }

    #[test]
    fn names_are_in_channel_then_feature_order() {
        let names: StdVec<_> = accel().names().map(|n| n.to_string()).collect();
        assert_eq!(names.len(), 18);
        assert_eq!(&names[..6], ["ax.mean", "ax.rms", "ax.p2p", "ax.zc", "ax.band0", "ax.band1"]);
        assert_eq!(names[17], "az.band1");
        assert_eq!(accel().len(), 18);
    }

    #[test]
    fn extract_fills_the_named_positions() {
        let layout = accel();
        let x: [f32; 8] = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0];
        let window = [x, [2.0; 8], [0.0; 8]];
        let mut out = Vec::new();
        layout.extract(&window, &mut out).expect("extracts");
        assert_eq!(out.len(), 18);
        // ax: mean 0, rms 1, p2p 2, 7 crossings; all energy at Nyquist (bin 4, band 1).
        assert_eq!(&out[..4], [0.0, 1.0, 2.0, 7.0]);
        assert!(out[4].abs() < 1e-6 && (out[5] - 1.0).abs() < 1e-5, "{out:?}");
        // ay: constant 2.
        assert_eq!(&out[6..10], [2.0, 2.0, 0.0, 0.0]);
    }

    #[test]
    fn selected_features_only() {
        let layout = FeatureLayout::new(
            ["v"],
            FeatureSet { mean: false, rms: true, peak_to_peak: false, zero_crossings: true, bands: 0 },
        )
        .expect("fits");
        let mut out = Vec::new();
        layout.extract(&[[3.0, -3.0, 3.0, -3.0]], &mut out).expect("extracts");
        assert_eq!(out.as_slice(), [3.0, 3.0]);
    }

    #[test]
    fn the_layout_checks_a_models_declared_input() {
        let layout = accel();
        let spec = layout.tensor_spec("features").expect("spec");
        assert_eq!(spec.to_string(), "features: float32[N,18]");
        assert_eq!(layout.check(&spec), Ok(()));
        let fixed = TensorSpec::new("x", DType::F32, [DimRef::Fixed(1), DimRef::Fixed(18)]).expect("spec");
        assert_eq!(layout.check(&fixed), Ok(()));
        let narrow = TensorSpec::new("x", DType::F32, [DimRef::Symbolic("N"), DimRef::Fixed(12)]).expect("spec");
        assert_eq!(layout.check(&narrow), Err(LayoutError::Shape { expected: 18 }));
        let f64_input = TensorSpec::new("x", DType::F64, [DimRef::Fixed(18)]).expect("spec");
        assert_eq!(layout.check(&f64_input), Err(LayoutError::DType(DType::F64)));
    }

    #[test]
    fn layout_ids_tell_same_width_layouts_apart() {
        let a = FeatureLayout::new(["ax", "ay"], FeatureSet::TIME).expect("fits");
        let b = FeatureLayout::new(["ay", "ax"], FeatureSet::TIME).expect("fits");
        assert_eq!(a.len(), b.len());
        assert_ne!(a.id(), b.id());
        assert_eq!(a.hello(64, 10_000), Hello { features: 8, window_len: 64, period_us: 10_000, layout_id: a.id() });
    }

    #[test]
    fn oversized_layouts_and_unusable_windows_are_refused() {
        assert_eq!(
            FeatureLayout::new(["a"; 9], FeatureSet { bands: 4, ..FeatureSet::TIME }),
            Err(LayoutError::TooMany)
        );
        assert_eq!(FeatureLayout::new(["a"], FeatureSet { bands: 17, ..FeatureSet::TIME }), Err(LayoutError::TooMany));
        let mut out = Vec::new();
        assert_eq!(accel().extract(&[[0.0; 6]; 3], &mut out), Err(LayoutError::Fft(FftError::NotPowerOfTwo)));
    }
}
