use embedded_hal::delay::DelayNs;

use crate::{Features, MultiWindow, Window};

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

/// A source of `C` readings taken at the same instant, e.g. the three axes of an
/// accelerometer read in one bus burst so they belong to the same sample.
pub trait MultiSensor<const C: usize> {
    /// The bus or device error.
    type Error;
    /// Takes one reading of every channel, in the unit the model was trained on.
    fn read_all(&mut self) -> Result<[f32; C], Self::Error>;
}

/// One channel of a [`MultiSensor`] as a [`Sensor`], for single-channel windows (e.g. the
/// vertical axis of an accelerometer only).
pub struct Channel<M, const C: usize> {
    sensor: M,
    index: usize,
}

impl<M, const C: usize> Channel<M, C> {
    /// Channel `index` of `sensor`; an index past the sensor's channels reads as 0.
    pub fn new(sensor: M, index: usize) -> Self {
        Channel { sensor, index }
    }
}

impl<const C: usize, M: MultiSensor<C>> Sensor for Channel<M, C> {
    type Error = M::Error;
    fn read(&mut self) -> Result<f32, Self::Error> {
        Ok(self.sensor.read_all()?.get(self.index).copied().unwrap_or(0.0))
    }
}

/// Reads a multi-channel sensor at a fixed period into a [`MultiWindow`] and hands out each
/// completed window, which the caller turns into features with a
/// [`FeatureLayout`](crate::FeatureLayout).
pub struct MultiSampler<M, D, const C: usize, const N: usize> {
    sensor: M,
    delay: D,
    period_us: u32,
    window: MultiWindow<C, N>,
    errors: u32,
}

impl<M: MultiSensor<C>, D: DelayNs, const C: usize, const N: usize> MultiSampler<M, D, C, N> {
    /// A sampler reading `sensor` every `period_us` microseconds.
    pub fn new(sensor: M, delay: D, period_us: u32) -> Self {
        MultiSampler { sensor, delay, period_us, window: MultiWindow::new(), errors: 0 }
    }

    /// Takes samples until a window completes and returns it. A failed read is counted and
    /// skipped (one sample lost, not the window). The delay follows every read, the last of a
    /// window too, so the period holds across windows (less the caller's time per window).
    pub fn next_window(&mut self) -> &[[f32; N]; C] {
        loop {
            let complete = match self.sensor.read_all() {
                Ok(sample) => self.window.push(sample).is_some(),
                Err(_) => {
                    self.errors = self.errors.wrapping_add(1);
                    false
                }
            };
            self.delay.delay_us(self.period_us);
            if complete {
                return self.window.channels();
            }
        }
    }

    /// Sensor reads that failed since the start.
    pub fn errors(&self) -> u32 {
        self.errors
    }

    /// Gives the sensor and delay back.
    pub fn release(self) -> (M, D) {
        (self.sensor, self.delay)
    }
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

    /// Three channels counting up, failing at chosen reads.
    struct Ramp {
        at: u32,
        fail: &'static [u32],
        calls: u32,
    }

    impl MultiSensor<3> for Ramp {
        type Error = ();
        fn read_all(&mut self) -> Result<[f32; 3], ()> {
            self.calls += 1;
            if self.fail.contains(&self.calls) {
                return Err(());
            }
            self.at += 1;
            let v = self.at as f32;
            Ok([v, 10.0 * v, -v])
        }
    }

    #[test]
    fn multi_sampler_skips_failed_reads_and_keeps_the_period() {
        let sensor = Ramp { at: 0, fail: &[2], calls: 0 };
        let mut sampler: MultiSampler<_, _, 3, 4> = MultiSampler::new(sensor, Clock::default(), 500);
        assert_eq!(*sampler.next_window(), [[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [-1.0, -2.0, -3.0, -4.0]]);
        assert_eq!(sampler.next_window()[0], [5.0, 6.0, 7.0, 8.0]);
        assert_eq!(sampler.errors(), 1);
        let (_, clock) = sampler.release();
        // Nine reads (one failed), one period after each.
        assert_eq!(clock.waited_us, 9 * 500);
    }

    #[test]
    fn a_channel_of_a_multi_sensor_is_a_sensor() {
        let mut z = Channel::new(Ramp { at: 0, fail: &[], calls: 0 }, 2);
        assert_eq!(z.read(), Ok(-1.0));
        let mut past = Channel::new(Ramp { at: 0, fail: &[], calls: 0 }, 3);
        assert_eq!(past.read(), Ok(0.0));
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
