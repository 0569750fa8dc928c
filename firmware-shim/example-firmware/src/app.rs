//! The board-independent firmware: an MPU-6050 on any `embedded-hal` I2C bus, windows of
//! `WINDOW` samples, the layout's features, frames on any `embedded-io` writer.
//!
//! Kept apart from `main.rs` so that moving to another board changes only the pins and clocks.

use drover_shim::drift::LatencyHistogram;
use drover_shim::drivers::mpu6050::{self, Mpu6050};
use drover_shim::wire::frame::{Body, DELIMITER, DeviceStats, FeatureWindow};
use drover_shim::{FeatureLayout, FeatureSet, FrameWriter, MultiSampler};
use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;
use embedded_io::Write;
use heapless::Vec;

/// Samples per channel and window: 1.28 s at 100 Hz, a power of two for the FFT bands.
pub const WINDOW: usize = 128;
/// Sampling period: the MPU-6050's 100 Hz output rate (`mpu6050::Config::default`).
pub const PERIOD_US: u32 = 10_000;
/// A `Hello` and a `Stats` frame after this many windows (and at boot), so an agent started
/// after the board learns the layout within a minute.
const ANNOUNCE_EVERY: u32 = 32;

/// The layout the reference sensor model (`models/sensor_mlp.onnx`) is trained on: per axis
/// mean, rms, p2p, zc and four FFT bands, 24 values.
pub fn layout() -> FeatureLayout<3> {
    // 3 × 8 values fit MAX_FRAME_FEATURES; a layout that did not would fail every host test.
    match FeatureLayout::new(["ax", "ay", "az"], FeatureSet { bands: 4, ..FeatureSet::TIME }) {
        Ok(layout) => layout,
        Err(_) => panic!("layout exceeds a frame"),
    }
}

/// Writes all of `bytes`, waiting while the UART's data register is full (embedded-io 0.6's
/// `write_all` panics on a zero-length write, which a busy UART returns).
fn send<W: Write>(tx: &mut W, bytes: &[u8]) -> Result<(), W::Error> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = tx.write(rest)?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Runs the sensor forever. `cycles` reads a free-running 32-bit counter ticking
/// `cycles_per_us` times a microsecond; it times the feature computation into a
/// `LatencyHistogram`, the agent's own no_std statistics.
pub fn run<I: I2c, D: DelayNs, W: Write>(
    i2c: I,
    mut delay: D,
    mut tx: W,
    mut cycles: impl FnMut() -> u32,
    cycles_per_us: u32,
) -> ! {
    let layout = layout();
    let mut writer = FrameWriter::new();
    let mut stats = DeviceStats::default();
    let mut compute = LatencyHistogram::new();
    // A lone delimiter ends whatever the receiver had half-read before this boot.
    let _ = send(&mut tx, &[DELIMITER]);
    // The default configuration is valid (DLPF 3), so this cannot fail; a sensor that does
    // not answer yet is retried every second, counted as sensor errors.
    let Ok(mut mpu) = Mpu6050::new(i2c, mpu6050::Address::Ad0Low, mpu6050::Config::default()) else {
        panic!("invalid MPU-6050 configuration")
    };
    while mpu.init(&mut delay).is_err() {
        stats.sensor_errors = stats.sensor_errors.wrapping_add(1);
        delay.delay_ms(1000);
    }
    let boot_errors = stats.sensor_errors;
    let mut sampler: MultiSampler<_, _, 3, WINDOW> = MultiSampler::new(mpu, delay, PERIOD_US);
    let mut values = Vec::new();
    loop {
        if stats.windows % ANNOUNCE_EVERY == 0 {
            stats.sensor_errors = boot_errors.wrapping_add(sampler.errors());
            stats.feature_p50_us = compute.quantile(0.5).unwrap_or(0);
            stats.feature_p99_us = compute.quantile(0.99).unwrap_or(0);
            for body in [Body::Hello(layout.hello(WINDOW as u16, PERIOD_US)), Body::Stats(stats)] {
                emit(&mut writer, &mut tx, body, &mut stats.tx_dropped);
            }
        }
        let window = sampler.next_window();
        let start = cycles();
        let extracted = layout.extract(window, &mut values);
        compute.record(cycles().wrapping_sub(start) / cycles_per_us.max(1));
        stats.windows = stats.windows.wrapping_add(1);
        if extracted.is_ok() {
            let body = Body::Window(FeatureWindow { index: stats.windows, values: values.clone() });
            emit(&mut writer, &mut tx, body, &mut stats.tx_dropped);
        }
    }
}

fn emit<W: Write>(writer: &mut FrameWriter, tx: &mut W, body: Body, dropped: &mut u32) {
    let sent = match writer.encode(body) {
        Ok(bytes) => send(tx, bytes).is_ok(),
        Err(_) => false,
    };
    if !sent {
        *dropped = dropped.wrapping_add(1);
    }
}
