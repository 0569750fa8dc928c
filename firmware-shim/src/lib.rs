//! Drover's firmware shim: sensor input on a microcontroller (or on the Pi's own bus).
//!
//! The shim turns raw sensor samples into the fixed-size feature windows a model expects, with
//! no heap and a compile-time bound on every buffer, so it runs on a Cortex-M4F with a few KiB of
//! RAM. It is generic over the `embedded-hal` 1.0 traits and owns no global state: the same code
//! runs in firmware, inside the agent on a Raspberry Pi, and in host tests.
//!
//! ```text
//!  drivers (I2C/SPI) ─► MultiSampler ─► MultiWindow<C, N> ─► FeatureLayout::extract
//!      ─► Body::Window ─► FrameWriter (postcard + CRC-32 + COBS) ─► UART ─► agent's FrameDecoder
//! ```
#![no_std]
#![forbid(unsafe_code)]

pub mod drivers;
mod features;
pub mod fft;
mod layout;
mod link;
mod sampler;
mod window;

pub use drover_drift as drift;
pub use drover_wire as wire;
pub use features::Features;
pub use layout::{Feature, FeatureLayout, FeatureName, FeatureSet, LayoutError, MAX_BANDS};
pub use link::FrameWriter;
pub use sampler::{Channel, MultiSampler, MultiSensor, Sampler, Sensor};
pub use window::{MultiWindow, Window};
