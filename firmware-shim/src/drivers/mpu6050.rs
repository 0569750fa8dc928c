//! InvenSense MPU-6050 6-axis IMU over I2C (accelerometer part).
//!
//! Register numbers and bit fields are from the "MPU-6000 and MPU-6050 Register Map and
//! Descriptions" (RM-MPU-6000A-00 rev. 4.2), timings from the product specification
//! (PS-MPU-6000A-00 rev. 3.4). The part powers up asleep (PWR_MGMT_1 resets to 0x40), so
//! nothing is measured until [`Mpu6050::new`] wakes it.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::{Axes, DriverError};
use crate::MultiSensor;

/// Register 0x19 SMPLRT_DIV: sample rate = gyroscope output rate / (1 + value).
pub const SMPLRT_DIV: u8 = 0x19;
/// Register 0x1A CONFIG: DLPF_CFG in bits 2:0.
pub const CONFIG: u8 = 0x1A;
/// Register 0x1C ACCEL_CONFIG: AFS_SEL in bits 4:3 (self-test bits 7:5 left at 0).
pub const ACCEL_CONFIG: u8 = 0x1C;
/// Register 0x3B ACCEL_XOUT_H: first of six bytes X, Y, Z, each big-endian two's complement.
pub const ACCEL_XOUT_H: u8 = 0x3B;
/// Register 0x6B PWR_MGMT_1: DEVICE_RESET bit 7, SLEEP bit 6, CLKSEL bits 2:0.
pub const PWR_MGMT_1: u8 = 0x6B;
/// Register 0x75 WHO_AM_I: 0x68 whatever the AD0 pin (only bits 6:1 are the address).
pub const WHO_AM_I: u8 = 0x75;

/// WHO_AM_I's value on a genuine MPU-6050.
pub const DEVICE_ID: u8 = 0x68;
/// PWR_MGMT_1 DEVICE_RESET: every register back to its default.
const DEVICE_RESET: u8 = 0x80;
/// PWR_MGMT_1 with SLEEP clear and CLKSEL = 1 (PLL on the X gyroscope), which the register map
/// recommends over the internal 8 MHz oscillator for stability.
const WAKE_PLL_X: u8 = 0x01;
/// Product specification: start-up time for register read/write, 100 ms (also after a reset).
const STARTUP_MS: u32 = 100;

/// The I2C address: AD0 pin low (0x68) or high (0x69).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// AD0 low: 0x68.
    Ad0Low = 0x68,
    /// AD0 high: 0x69.
    Ad0High = 0x69,
}

/// Accelerometer full scale, AFS_SEL (ACCEL_CONFIG bits 4:3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// ±2 g, 16384 LSB/g.
    G2 = 0,
    /// ±4 g, 8192 LSB/g.
    G4 = 1,
    /// ±8 g, 4096 LSB/g.
    G8 = 2,
    /// ±16 g, 2048 LSB/g.
    G16 = 3,
}

impl Range {
    /// LSB per g at this range (register map, section 4.17).
    pub const fn lsb_per_g(self) -> f32 {
        match self {
            Range::G2 => 16384.0,
            Range::G4 => 8192.0,
            Range::G8 => 4096.0,
            Range::G16 => 2048.0,
        }
    }
}

/// How to configure the part at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Accelerometer full scale.
    pub range: Range,
    /// DLPF_CFG 0–6 (0: 260 Hz accelerometer bandwidth … 6: 5 Hz). Pick it below half the
    /// sampling rate so the window does not alias.
    pub dlpf: u8,
    /// SMPLRT_DIV: with the DLPF on (1–6) the output rate is 1 kHz / (1 + div).
    pub sample_rate_div: u8,
}

impl Default for Config {
    /// ±2 g, 44 Hz bandwidth (DLPF_CFG 3), 100 Hz output rate (1 kHz / 10): a vibration or
    /// motion window of a second or so.
    fn default() -> Self {
        Config { range: Range::G2, dlpf: 3, sample_rate_div: 9 }
    }
}

/// An MPU-6050 on an I2C bus; reads acceleration in g once [`init`](Mpu6050::init) woke it.
pub struct Mpu6050<I> {
    i2c: I,
    address: u8,
    config: Config,
}

impl<I: I2c> Mpu6050<I> {
    /// A driver for the part at `address`; nothing is sent until [`init`](Self::init).
    /// Refuses a DLPF setting the part does not have.
    pub fn new(i2c: I, address: Address, config: Config) -> Result<Self, DriverError<I::Error>> {
        if config.dlpf > 6 {
            return Err(DriverError::InvalidConfig);
        }
        Ok(Mpu6050 { i2c, address: address as u8, config })
    }

    /// Checks WHO_AM_I, resets the part, waits its start-up time, wakes it on the PLL clock and
    /// writes rate, filter and range. Safe to call again (after a brown-out, or to retry a part
    /// that did not answer); a wrong id stops before anything is written.
    pub fn init(&mut self, delay: &mut impl DelayNs) -> Result<(), DriverError<I::Error>> {
        let (i2c, address, config) = (&mut self.i2c, self.address, self.config);
        let mut id = [0u8];
        i2c.write_read(address, &[WHO_AM_I], &mut id)?;
        if id[0] != DEVICE_ID {
            return Err(DriverError::WrongDevice { id: id[0] });
        }
        i2c.write(address, &[PWR_MGMT_1, DEVICE_RESET])?;
        delay.delay_ms(STARTUP_MS);
        i2c.write(address, &[PWR_MGMT_1, WAKE_PLL_X])?;
        i2c.write(address, &[SMPLRT_DIV, config.sample_rate_div])?;
        i2c.write(address, &[CONFIG, config.dlpf])?;
        i2c.write(address, &[ACCEL_CONFIG, (config.range as u8) << 3])?;
        Ok(())
    }

    /// The raw accelerometer registers X, Y, Z, read in one burst so the axes come from the same
    /// sample (the register map: reads of the sensor registers within one burst are consistent).
    pub fn read_raw(&mut self) -> Result<[i16; 3], DriverError<I::Error>> {
        let mut b = [0u8; 6];
        self.i2c.write_read(self.address, &[ACCEL_XOUT_H], &mut b)?;
        Ok([i16::from_be_bytes([b[0], b[1]]), i16::from_be_bytes([b[2], b[3]]), i16::from_be_bytes([b[4], b[5]])])
    }

    /// Gives the bus back.
    pub fn release(self) -> I {
        self.i2c
    }
}

impl<I: I2c> MultiSensor<3> for Mpu6050<I> {
    type Error = DriverError<I::Error>;

    /// Acceleration in g on X, Y, Z.
    fn read_all(&mut self) -> Result<Axes, Self::Error> {
        let lsb = self.config.range.lsb_per_g();
        Ok(self.read_raw()?.map(|v| f32::from(v) / lsb))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use embedded_hal_mock::eh1::delay::CheckedDelay;
    use embedded_hal_mock::eh1::delay::Transaction as Wait;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    use super::*;

    const A: u8 = 0x68;

    fn init_transactions(range_bits: u8) -> std::vec::Vec<Transaction> {
        vec![
            Transaction::write_read(A, vec![0x75], vec![0x68]), // WHO_AM_I
            Transaction::write(A, vec![0x6B, 0x80]),            // PWR_MGMT_1: DEVICE_RESET
            Transaction::write(A, vec![0x6B, 0x01]),            // PWR_MGMT_1: awake, CLKSEL=1
            Transaction::write(A, vec![0x19, 9]),               // SMPLRT_DIV: 1 kHz / 10
            Transaction::write(A, vec![0x1A, 3]),               // CONFIG: DLPF_CFG=3
            Transaction::write(A, vec![0x1C, range_bits]),      // ACCEL_CONFIG: AFS_SEL
        ]
    }

    #[test]
    fn init_resets_wakes_and_configures_then_reads_g() {
        let mut expected = init_transactions(0b0001_0000); // AFS_SEL=2: ±8 g
        // ACCEL_XOUT_H..ACCEL_ZOUT_L: +4096 (1 g), -2048 (-0.5 g), 0x7FFF.
        expected.push(Transaction::write_read(A, vec![0x3B], vec![0x10, 0x00, 0xF8, 0x00, 0x7F, 0xFF]));
        let mut i2c = Mock::new(&expected);
        let mut delay = CheckedDelay::new(&[Wait::delay_ms(100)]);
        let config = Config { range: Range::G8, ..Config::default() };
        let mut mpu = Mpu6050::new(i2c.clone(), Address::Ad0Low, config).expect("config");
        mpu.init(&mut delay).expect("init");
        let g = mpu.read_all().expect("read");
        assert_eq!(g[0], 1.0);
        assert_eq!(g[1], -0.5);
        assert!((g[2] - 32767.0 / 4096.0).abs() < 1e-6);
        i2c.done();
        delay.done();
    }

    #[test]
    fn a_different_part_is_refused_after_the_id_read() {
        let mut i2c = Mock::new(&[Transaction::write_read(0x69, vec![0x75], vec![0x70])]);
        let mut delay = CheckedDelay::new(&[]);
        let mut mpu = Mpu6050::new(i2c.clone(), Address::Ad0High, Config::default()).expect("config");
        assert!(matches!(mpu.init(&mut delay), Err(DriverError::WrongDevice { id: 0x70 })));
        i2c.done();
        delay.done();
    }

    #[test]
    fn init_can_be_retried_after_the_part_did_not_answer() {
        use embedded_hal::i2c::ErrorKind;
        let mut expected = std::vec![Transaction::write_read(A, vec![0x75], vec![0]).with_error(ErrorKind::Other)];
        expected.extend(init_transactions(0));
        let mut i2c = Mock::new(&expected);
        let mut delay = CheckedDelay::new(&[Wait::delay_ms(100)]);
        let mut mpu = Mpu6050::new(i2c.clone(), Address::Ad0Low, Config::default()).expect("config");
        assert_eq!(mpu.init(&mut delay), Err(DriverError::Bus(ErrorKind::Other)));
        assert_eq!(mpu.init(&mut delay), Ok(()));
        i2c.done();
        delay.done();
    }

    #[test]
    fn a_nack_is_a_bus_error() {
        use embedded_hal::i2c::ErrorKind;
        let mut i2c = Mock::new(&init_transactions(0));
        let mut delay = CheckedDelay::new(&[Wait::delay_ms(100)]);
        let mut mpu = Mpu6050::new(i2c.clone(), Address::Ad0Low, Config::default()).expect("config");
        mpu.init(&mut delay).expect("init");
        i2c.update_expectations(&[Transaction::write_read(A, vec![0x3B], vec![0; 6]).with_error(ErrorKind::Other)]);
        assert_eq!(mpu.read_all(), Err(DriverError::Bus(ErrorKind::Other)));
        i2c.done();
        delay.done();
    }

    #[test]
    fn dlpf_out_of_range_is_refused_before_touching_the_bus() {
        let mut i2c = Mock::new(&[]);
        let config = Config { dlpf: 7, ..Config::default() };
        assert!(matches!(Mpu6050::new(i2c.clone(), Address::Ad0Low, config), Err(DriverError::InvalidConfig)));
        i2c.done();
    }
}
