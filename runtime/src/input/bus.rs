//! Sensors on the board's own bus (a Raspberry Pi's `/dev/i2c-1`, `/dev/spidev0.0`) through
//! `linux-embedded-hal`: the same drover-shim drivers, windows and feature layouts as the
//! firmware, so a model cannot tell whether its windows came from a microcontroller or from the
//! agent itself.
//!
//! Windows are [`BUS_WINDOW`] samples per channel; accelerometers at their configured 100 Hz
//! output rate, the ADC at the configured period. The sampling is deadline-based (no drift from
//! the time a read takes) and each window is inferred on the sampling thread.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use drover_shim::drivers::adxl345::{self, Adxl345};
use drover_shim::drivers::mcp3008::{Input, Mcp3008};
use drover_shim::drivers::mpu6050::{self, Mpu6050};
use drover_shim::wire::frame::MAX_FRAME_FEATURES;
use drover_shim::{FeatureLayout, FeatureSet, LayoutError, MultiSensor, MultiWindow, Sensor};
use drover_wire::telemetry::InputReport;
use linux_embedded_hal::spidev::{SpiModeFlags, SpidevOptions};
use linux_embedded_hal::{Delay, I2cdev, SpidevDevice};

use super::{I2cPart, Shared, deliver, lock};
use crate::serve::Inference;

/// Samples per channel in a bus input's window (a power of two for the FFT bands): 1.28 s at
/// 100 Hz, the example firmware's window, so one model serves both.
pub const BUS_WINDOW: usize = 128;
/// The accelerometers' output rate as the drivers configure them: 100 Hz.
const ACCEL_PERIOD_US: u32 = 10_000;
/// Reads failing in a row before the bus is closed and the part initialised again.
const MAX_FAILURES: u32 = 100;
/// Wait before opening a bus again.
const RETRY: Duration = Duration::from_secs(1);
/// The MCP3008 at 3.3 V takes at most 1.35 MHz (data sheet, 2.7 V figure); 1 MHz leaves margin.
const SPI_HZ: u32 = 1_000_000;

/// The layout of an accelerometer input: per axis mean, rms, p2p, zero crossings and `bands`
/// FFT bands (the example firmware's with `bands` = 4).
pub fn accel_layout(bands: u8) -> Result<FeatureLayout<3>, LayoutError> {
    layout(["ax", "ay", "az"], bands)
}

/// The layout of an ADC input: the same features of one channel `v`.
pub fn adc_layout(bands: u8) -> Result<FeatureLayout<1>, LayoutError> {
    layout(["v"], bands)
}

fn layout<const C: usize>(channels: [&'static str; C], bands: u8) -> Result<FeatureLayout<C>, LayoutError> {
    drover_shim::fft::check(BUS_WINDOW, usize::from(bands)).map_err(LayoutError::Fft)?;
    FeatureLayout::new(channels, FeatureSet { bands, ..FeatureSet::TIME })
}

/// An accelerometer's I2C address, checked against the part's two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum I2cAddress {
    /// An MPU-6050's.
    Mpu6050(mpu6050::Address),
    /// An ADXL345's.
    Adxl345(adxl345::Address),
}

impl I2cAddress {
    /// `address` for `part`, if the part can answer there.
    pub fn of(part: I2cPart, address: u8) -> Option<I2cAddress> {
        match (part, address) {
            (I2cPart::Mpu6050, 0x68) => Some(I2cAddress::Mpu6050(mpu6050::Address::Ad0Low)),
            (I2cPart::Mpu6050, 0x69) => Some(I2cAddress::Mpu6050(mpu6050::Address::Ad0High)),
            (I2cPart::Adxl345, 0x53) => Some(I2cAddress::Adxl345(adxl345::Address::AltLow)),
            (I2cPart::Adxl345, 0x1D) => Some(I2cAddress::Adxl345(adxl345::Address::AltHigh)),
            _ => None,
        }
    }

    /// The part's default address (pin low).
    pub fn default_for(part: I2cPart) -> I2cAddress {
        match part {
            I2cPart::Mpu6050 => I2cAddress::Mpu6050(mpu6050::Address::Ad0Low),
            I2cPart::Adxl345 => I2cAddress::Adxl345(adxl345::Address::AltLow),
        }
    }
}

/// Readings into windows into feature vectors, pure: what the sampling loop does with each read.
pub struct BusSampler<const C: usize> {
    layout: FeatureLayout<C>,
    window: MultiWindow<C, BUS_WINDOW>,
    values: heapless::Vec<f32, MAX_FRAME_FEATURES>,
}

impl<const C: usize> BusSampler<C> {
    /// A sampler computing `layout` over windows of [`BUS_WINDOW`] samples.
    pub fn new(layout: FeatureLayout<C>) -> Self {
        BusSampler { layout, window: MultiWindow::new(), values: heapless::Vec::new() }
    }

    /// Takes one reading (or a failed read, counted and skipped); returns the window's feature
    /// vector when this reading completed it.
    pub fn step<E>(&mut self, reading: Result<[f32; C], E>, report: &mut InputReport) -> Option<Vec<f32>> {
        let Ok(sample) = reading else {
            report.sensor_errors += 1;
            return None;
        };
        let window = self.window.push(sample)?;
        report.windows += 1;
        match self.layout.extract(window, &mut self.values) {
            Ok(()) => Some(self.values.to_vec()),
            Err(e) => {
                // `accel_layout`/`adc_layout` checked the layout against BUS_WINDOW.
                log::error!("features: {e}");
                report.mismatched += 1;
                None
            }
        }
    }
}

/// One ADC channel as a one-channel sensor.
struct Single<S>(S);

impl<S: Sensor> MultiSensor<1> for Single<S> {
    type Error = S::Error;
    fn read_all(&mut self) -> Result<[f32; 1], Self::Error> {
        Ok([self.0.read()?])
    }
}

/// Samples `sensor` every `period_us` until `stop`, or until it fails [`MAX_FAILURES`] times in
/// a row (the caller then opens the bus and initialises the part again).
fn pump<M: MultiSensor<C>, const C: usize>(
    sensor: &mut M,
    layout: FeatureLayout<C>,
    period_us: u32,
    inference: &Inference,
    report: &Shared,
    stop: &AtomicBool,
) {
    let mut sampler = BusSampler::new(layout);
    let period = Duration::from_micros(u64::from(period_us));
    let mut next = Instant::now();
    let mut failures = 0;
    while !stop.load(Ordering::Relaxed) {
        let reading = sensor.read_all();
        failures = if reading.is_ok() { 0 } else { failures + 1 };
        let ready = sampler.step(reading, &mut lock(report));
        if let Some(values) = ready {
            deliver(inference, values).count(&mut lock(report));
        }
        if failures >= MAX_FAILURES {
            return;
        }
        next += period;
        let now = Instant::now();
        match next.checked_duration_since(now) {
            Some(wait) => std::thread::sleep(wait),
            // Behind (a slow inference): sample now and start the schedule again.
            None => next = now,
        }
    }
}

fn set_connected(report: &Shared, connected: bool) {
    lock(report).connected = connected;
}

/// Waits [`RETRY`] unless stopped first; false when stopped.
fn pause(stop: &AtomicBool) -> bool {
    let until = Instant::now() + RETRY;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !stop.load(Ordering::Relaxed)
}

/// Runs an I2C accelerometer input until `stop`.
pub fn run_i2c(
    device: &Path,
    part: I2cPart,
    address: Option<u8>,
    bands: u8,
    inference: &Inference,
    report: &Shared,
    stop: &AtomicBool,
) {
    let name = device.display();
    let (Ok(layout), Some(address)) =
        (accel_layout(bands), address.map_or(Some(I2cAddress::default_for(part)), |a| I2cAddress::of(part, a)))
    else {
        log::error!("input {name}: invalid layout or address (the config check should have refused it)");
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        match I2cdev::new(device) {
            Err(e) => log::warn!("input {name}: {e}"),
            Ok(i2c) => {
                let started = match address {
                    I2cAddress::Mpu6050(a) => Mpu6050::new(i2c, a, mpu6050::Config::default()).and_then(|mut m| {
                        m.init(&mut Delay)?;
                        Ok(Accel::Mpu(m))
                    }),
                    I2cAddress::Adxl345(a) => {
                        let mut adxl = Adxl345::new(i2c, a, adxl345::Config::default());
                        adxl.init().map(|()| Accel::Adxl(adxl))
                    }
                };
                match started {
                    Ok(mut accel) => {
                        set_connected(report, true);
                        pump(&mut accel, layout, ACCEL_PERIOD_US, inference, report, stop);
                    }
                    Err(e) => {
                        lock(report).sensor_errors += 1;
                        log::warn!("input {name}: {part:?} did not start: {e}");
                    }
                }
            }
        }
        set_connected(report, false);
        if !pause(stop) {
            break;
        }
    }
}

/// Either accelerometer, read as one three-axis sensor.
enum Accel {
    Mpu(Mpu6050<I2cdev>),
    Adxl(Adxl345<I2cdev>),
}

impl MultiSensor<3> for Accel {
    type Error = drover_shim::drivers::DriverError<linux_embedded_hal::I2CError>;
    fn read_all(&mut self) -> Result<[f32; 3], Self::Error> {
        match self {
            Accel::Mpu(m) => m.read_all(),
            Accel::Adxl(a) => a.read_all(),
        }
    }
}

/// Runs an MCP3008 input until `stop`.
#[allow(clippy::too_many_arguments)] // one per `[[input]]` setting, passed straight through
pub fn run_spi(
    device: &Path,
    channel: u8,
    vref: f32,
    period_us: u32,
    bands: u8,
    inference: &Inference,
    report: &Shared,
    stop: &AtomicBool,
) {
    let name = device.display();
    let Ok(layout) = adc_layout(bands) else {
        log::error!("input {name}: invalid layout (the config check should have refused it)");
        return;
    };
    // Mode 0,0, 8-bit words: data sheet section 6.1.
    let options = SpidevOptions::new().bits_per_word(8).max_speed_hz(SPI_HZ).mode(SpiModeFlags::SPI_MODE_0).build();
    while !stop.load(Ordering::Relaxed) {
        let opened = SpidevDevice::open(device).and_then(|mut spi| {
            spi.0.configure(&options)?;
            Ok(spi)
        });
        match opened.map(|spi| Mcp3008::new(spi, Input::Single(channel), vref)) {
            Ok(Ok(adc)) => {
                set_connected(report, true);
                pump(&mut Single(adc), layout, period_us, inference, report, stop);
            }
            Ok(Err(e)) => {
                log::error!("input {name}: {e}");
                return;
            }
            Err(e) => log::warn!("input {name}: {e}"),
        }
        set_connected(report, false);
        if !pause(stop) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_of_readings_becomes_the_layouts_vector() {
        let mut sampler = BusSampler::new(accel_layout(4).expect("layout"));
        let mut report = InputReport::new("i2c");
        let mut out = None;
        let mut ok = 0;
        for i in 0..BUS_WINDOW + 1 {
            // One failed read: counted, skipped, the window still completes.
            let reading = if i == 5 {
                Err(())
            } else {
                ok += 1;
                Ok([0.0, (ok % 2) as f32, 1.0])
            };
            if let Some(v) = sampler.step(reading, &mut report) {
                assert!(out.is_none(), "one window");
                out = Some(v);
            }
        }
        let v = out.expect("a window");
        assert_eq!(v.len(), 24);
        // ay alternates 0/1 over the window's 128 readings: mean 0.5, p2p 1, 127 crossings.
        assert_eq!(v[8], 0.5);
        assert_eq!(v[10], 1.0);
        assert_eq!(v[11], 127.0);
        // az is 1 g still: no energy in any band.
        assert_eq!(&v[20..24], [0.0; 4]);
        assert_eq!((report.windows, report.sensor_errors), (1, 1));
    }

    #[test]
    fn addresses_are_the_parts_own() {
        assert_eq!(I2cAddress::of(I2cPart::Mpu6050, 0x69), Some(I2cAddress::Mpu6050(mpu6050::Address::Ad0High)));
        assert_eq!(I2cAddress::of(I2cPart::Adxl345, 0x68), None);
        assert!(accel_layout(65).is_err());
        assert_eq!(adc_layout(4).expect("layout").len(), 8);
    }
}
