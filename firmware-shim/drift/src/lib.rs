//! Drift statistics for Drover, in `no_std` with no allocation, so the same code judges drift on
//! a Raspberry Pi agent, in the fleet server and on a microcontroller next to the sensor.
//!
//! - [`DriftMonitor`] sketches features per window and scores them against [`FeatureRef`]s
//!   (data drift, and prediction drift with the predicted class as a categorical feature);
//!   [`score`] applies the same judgement to [`Sketch`]es merged across devices.
//! - [`stats`] holds the statistics (PSI, Jensen–Shannon, chi-squared, KS), checked against scipy.
//! - [`PageHinkley`], [`Adwin`] and [`Confusion`] watch the error stream once labels arrive
//!   (concept drift), checked against river and scikit-learn.
//! - [`LatencyHistogram`] keeps mergeable inference-latency distributions.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod concept;
pub mod confusion;
#[cfg(test)]
mod fixtures;
mod float_wire;
pub mod latency;
pub mod monitor;
pub mod reference;
pub mod sketch;
pub mod stats;
#[cfg(test)]
mod test_rng;

pub use concept::{ADWIN_MAX_BUCKETS, ADWIN_ROWS, Adwin, PageHinkley, PageHinkleyMode};
pub use confusion::Confusion;
pub use latency::{BUCKETS, LatencyHistogram};
pub use monitor::{DriftMonitor, FeatureScore, Statistic, Thresholds, WindowPolicy, WindowReport, score};
pub use reference::{FeatureKind, FeatureRef, RefError};
pub use sketch::{MAX_BINS, MAX_CATEGORIES, MAX_SLOTS, MergeError, Sketch, SketchDecodeError};
pub use stats::{
    ChiSquared, PSI_FLOOR, chi_squared, chi2_sf, js_distance, kolmogorov_sf, ks_binned, ks_p_value, proportions, psi,
    variance_p_value,
};
