//! Analog Devices ADXL345 3-axis accelerometer over I2C.
//!
//! Register numbers and bit fields are from the ADXL345 data sheet (Rev. G), Table 19
//! (register map) and the register definitions that follow it. The part powers up in standby
//! (POWER_CTL Measure = 0); configuration is written in standby and measurement enabled last, as
//! the data sheet recommends.

use embedded_hal::i2c::I2c;

use super::{Axes, DriverError};
use crate::MultiSensor;

/// Register 0x00 DEVID: the fixed device id 0xE5.
pub const DEVID: u8 = 0x00;
/// Register 0x2C BW_RATE: LOW_POWER bit 4, output data rate code bits 3:0.
pub const BW_RATE: u8 = 0x2C;
/// Register 0x2D POWER_CTL: Measure bit 3 (0 = standby).
pub const POWER_CTL: u8 = 0x2D;
/// Register 0x31 DATA_FORMAT: FULL_RES bit 3, Justify bit 2 (0 = right), Range bits 1:0.
pub const DATA_FORMAT: u8 = 0x31;
/// Register 0x32 DATAX0: first of six bytes X0 X1 Y0 Y1 Z0 Z1, little-endian two's complement.
pub const DATAX0: u8 = 0x32;

/// DEVID's value.
pub const DEVICE_ID: u8 = 0xE5;
/// POWER_CTL Measure bit.
const MEASURE: u8 = 1 << 3;
/// DATA_FORMAT FULL_RES bit: resolution grows with the range, the scale stays 4 mg/LSB.
const FULL_RES: u8 = 1 << 3;
/// Full resolution sensitivity, 256 LSB/g typical (Table 1: 3.9 mg/LSB scale factor).
pub const LSB_PER_G: f32 = 256.0;

/// The I2C address: ALT ADDRESS pin low (0x53) or high (0x1D).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// ALT ADDRESS low: 0x53.
    AltLow = 0x53,
    /// ALT ADDRESS high: 0x1D.
    AltHigh = 0x1D,
}

/// g range, DATA_FORMAT bits 1:0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// ±2 g.
    G2 = 0b00,
    /// ±4 g.
    G4 = 0b01,
    /// ±8 g.
    G8 = 0b10,
    /// ±16 g.
    G16 = 0b11,
}

/// Output data rate, BW_RATE rate code (Table 7): the bandwidth is half the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// 25 Hz (code 1000).
    Hz25 = 0x08,
    /// 50 Hz (code 1001).
    Hz50 = 0x09,
    /// 100 Hz (code 1010, the reset value).
    Hz100 = 0x0A,
    /// 200 Hz (code 1011).
    Hz200 = 0x0B,
    /// 400 Hz (code 1100).
    Hz400 = 0x0C,
    /// 800 Hz (code 1101).
    Hz800 = 0x0D,
    /// 1600 Hz (code 1110).
    Hz1600 = 0x0E,
    /// 3200 Hz (code 1111).
    Hz3200 = 0x0F,
}

/// How to configure the part at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// g range (always read in full resolution, so the scale does not change with it).
    pub range: Range,
    /// Output data rate, normal power.
    pub rate: Rate,
}

impl Default for Config {
    /// ±4 g at 100 Hz.
    fn default() -> Self {
        Config { range: Range::G4, rate: Rate::Hz100 }
    }
}

/// An ADXL345 on an I2C bus; reads acceleration in g once [`init`](Adxl345::init) started it.
pub struct Adxl345<I> {
    i2c: I,
    address: u8,
    config: Config,
}

impl<I: I2c> Adxl345<I> {
    /// A driver for the part at `address`; nothing is sent until [`init`](Self::init).
    pub fn new(i2c: I, address: Address, config: Config) -> Self {
        Adxl345 { i2c, address: address as u8, config }
    }

    /// Checks DEVID, puts the part in standby, writes rate and data format, then starts
    /// measuring. Safe to call again; a wrong id stops before anything is written.
    pub fn init(&mut self) -> Result<(), DriverError<I::Error>> {
        let (i2c, address, config) = (&mut self.i2c, self.address, self.config);
        let mut id = [0u8];
        i2c.write_read(address, &[DEVID], &mut id)?;
        if id[0] != DEVICE_ID {
            return Err(DriverError::WrongDevice { id: id[0] });
        }
        i2c.write(address, &[POWER_CTL, 0])?;
        i2c.write(address, &[BW_RATE, config.rate as u8])?;
        i2c.write(address, &[DATA_FORMAT, FULL_RES | config.range as u8])?;
        i2c.write(address, &[POWER_CTL, MEASURE])?;
        Ok(())
    }

    /// DATAX0..DATAZ1 in one multiple-byte read, which the data sheet recommends so that no
    /// axis changes between the reads of its two bytes.
    pub fn read_raw(&mut self) -> Result<[i16; 3], DriverError<I::Error>> {
        let mut b = [0u8; 6];
        self.i2c.write_read(self.address, &[DATAX0], &mut b)?;
        Ok([i16::from_le_bytes([b[0], b[1]]), i16::from_le_bytes([b[2], b[3]]), i16::from_le_bytes([b[4], b[5]])])
    }

    /// Back to standby (POWER_CTL Measure = 0, 0.1 µA) and gives the bus back.
    pub fn release(mut self) -> Result<I, DriverError<I::Error>> {
        self.i2c.write(self.address, &[POWER_CTL, 0])?;
        Ok(self.i2c)
    }
}

impl<I: I2c> MultiSensor<3> for Adxl345<I> {
    type Error = DriverError<I::Error>;

    /// Acceleration in g on X, Y, Z.
    fn read_all(&mut self) -> Result<Axes, Self::Error> {
        Ok(self.read_raw()?.map(|v| f32::from(v) / LSB_PER_G))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    use super::*;

    const A: u8 = 0x53;

    #[test]
    fn init_configures_in_standby_then_measures_and_reads_g() {
        let expected = [
            Transaction::write_read(A, vec![0x00], vec![0xE5]), // DEVID
            Transaction::write(A, vec![0x2D, 0x00]),            // POWER_CTL: standby
            Transaction::write(A, vec![0x2C, 0x0B]),            // BW_RATE: 200 Hz
            Transaction::write(A, vec![0x31, 0x0A]),            // DATA_FORMAT: FULL_RES, ±8 g
            Transaction::write(A, vec![0x2D, 0x08]),            // POWER_CTL: Measure
            // DATAX0..DATAZ1: +256 (1 g), -128 (-0.5 g), -1.
            Transaction::write_read(A, vec![0x32], vec![0x00, 0x01, 0x80, 0xFF, 0xFF, 0xFF]),
            Transaction::write(A, vec![0x2D, 0x00]), // release: standby
        ];
        let mut i2c = Mock::new(&expected);
        let config = Config { range: Range::G8, rate: Rate::Hz200 };
        let mut adxl = Adxl345::new(i2c.clone(), Address::AltLow, config);
        adxl.init().expect("init");
        assert_eq!(adxl.read_all().expect("read"), [1.0, -0.5, -1.0 / 256.0]);
        adxl.release().expect("standby");
        i2c.done();
    }

    #[test]
    fn a_different_part_is_refused() {
        // An ADXL343 answers 0xE5 too; an MPU-6050 at 0x1D would not.
        let mut i2c = Mock::new(&[Transaction::write_read(0x1D, vec![0x00], vec![0x68])]);
        assert!(matches!(
            Adxl345::new(i2c.clone(), Address::AltHigh, Config::default()).init(),
            Err(DriverError::WrongDevice { id: 0x68 })
        ));
        i2c.done();
    }
}
