use embedded_hal::delay::DelayNs;

use crate::{Features, Window};

/// A source of one scalar reading per call, e.g. one axis of an accelerometer or one ADC channel.
///
/// Drivers for real parts (issue: MPU-6050, ADXL345, MCP3008) implement this on top of their
/// bus; the sampler only needs "give me the next reading or an error".
pub trait Sensor {
    /// The bus or device error, kept intact so the caller can tell a NACK from a timeout.
    type Error;
    /// Takes one reading, in the unit the model was trained on.
    fn read(&mut self) -> Result<f32, Self::Error>;
}

/// Reads a sensor at a fixed period into a window and reports each completed window.
///
/// Owning the delay (instead of a global timer) keeps the sampler testable on the host and lets
/// several samplers run on different sensors.
pub struct Sampler<S, D, const N: usize> {
    sensor: S,
    delay: D,
    period_us: u32,
    window: Window<N>,
}

impl<S: Sensor, D: DelayNs, const N: usize> Sampler<S, D, N> {
    /// A sampler reading `sensor` every `period_us` microseconds.
    pub fn new(sensor: S, delay: D, period_us: u32) -> Self {
        Sampler { sensor, delay, period_us, window: Window::new() }
    }

    /// Takes samples until a window completes and returns its features.
    ///
    /// A sensor error ends the attempt and is returned; the partial window is kept, so a
    /// transient bus error costs one sample, not a window.
    pub fn next_window(&mut self) -> Result<Features, S::Error> {
        loop {
            let reading = self.sensor.read()?;
            if let Some(features) = self.window.push(reading) {
                return Ok(features);
            }
            self.delay.delay_us(self.period_us);
        }
    }

    /// Gives the sensor and delay back, e.g. to put the bus to sleep.
    pub fn release(self) -> (S, D) {
        (self.sensor, self.delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sensor replaying a fixed sequence, failing once at a chosen index.
    struct Replay {
        values: &'static [f32],
        at: usize,
        fail_at: Option<usize>,
    }

    impl Sensor for Replay {
        type Error = &'static str;
        fn read(&mut self) -> Result<f32, Self::Error> {
            if self.fail_at == Some(self.at) {
                self.fail_at = None;
                return Err("nack");
            }
            let v = self.values[self.at % self.values.len()];
            self.at += 1;
            Ok(v)
        }
    }

    /// Counts requested delay, standing in for a hardware timer.
    #[derive(Default)]
    struct Clock {
        waited_us: u64,
    }

    impl DelayNs for Clock {
        fn delay_ns(&mut self, ns: u32) {
            self.waited_us += u64::from(ns / 1000);
        }
        fn delay_us(&mut self, us: u32) {
            self.waited_us += u64::from(us);
        }
    }

    #[test]
    fn sampler_waits_one_period_between_samples_of_a_window() {
        let sensor = Replay { values: &[1.0, 3.0], at: 0, fail_at: None };
        let mut sampler: Sampler<_, _, 4> = Sampler::new(sensor, Clock::default(), 1000);
        let f = sampler.next_window().expect("no error");
        assert_eq!(f.mean, 2.0);
        let (_, clock) = sampler.release();
        // Four samples, three waits between them.
        assert_eq!(clock.waited_us, 3000);
    }

    #[test]
    fn sensor_error_keeps_the_partial_window() {
        let sensor = Replay { values: &[1.0, 2.0, 3.0, 4.0], at: 0, fail_at: Some(2) };
        let mut sampler: Sampler<_, _, 4> = Sampler::new(sensor, Clock::default(), 10);
        assert_eq!(sampler.next_window(), Err("nack"));
        let f = sampler.next_window().expect("recovers");
        assert_eq!(f.mean, 2.5);
    }
}
