//! Drivers for the sensor parts the shim reads, generic over the `embedded-hal` 1.0 bus traits.
//!
//! Each driver does what its datasheet specifies (identity check, wake-up, range and rate
//! configuration, data format) and nothing more, and implements [`Sensor`](crate::Sensor) or
//! [`MultiSensor`](crate::MultiSensor) so a sampler can take its readings.
//!
//! Why our own drivers: the crates.io candidates were checked first (2026-12). `mpu6050-dmp`
//! 0.6.1 (embedded-hal 1.0) sets `ACCEL_CONFIG`/`CONFIG` by OR-ing the new bits into the old
//! value without clearing them, so a range can only ever grow; `adxl345-eh-driver` 0.2.2 reads
//! `DATA_FORMAT` without first writing the register address; `adxl345_driver2` builds with `std`
//! unless a `no_std` feature is set and brings bitfield-macro dependencies; `mcp300x` is
//! GPL-3.0 (this project is Apache-2.0) and `mcp3008` drives Linux spidev only. Each part needs a
//! few register writes, which are tested transaction for transaction against the datasheets.

use core::fmt;

pub mod adxl345;
pub mod mcp3008;
pub mod mpu6050;

/// What can go wrong talking to a part: the bus failed, or the part at the address is not the
/// one configured (a wrong address or a different sensor on the board).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverError<E> {
    /// The bus transaction failed (NACK, arbitration loss, timeout), the HAL's error kept intact.
    Bus(E),
    /// The identity register did not hold the part's value.
    WrongDevice {
        /// What the identity register read.
        id: u8,
    },
    /// A configuration value outside what the part accepts (e.g. an ADC channel past 7).
    InvalidConfig,
}

impl<E> From<E> for DriverError<E> {
    fn from(e: E) -> Self {
        DriverError::Bus(e)
    }
}

impl<E: fmt::Debug> fmt::Display for DriverError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Bus(e) => write!(f, "bus error: {e:?}"),
            DriverError::WrongDevice { id } => write!(f, "unexpected device id 0x{id:02x}"),
            DriverError::InvalidConfig => f.write_str("configuration value out of range for the part"),
        }
    }
}

/// Three axes of one accelerometer sample, in g.
pub type Axes = [f32; 3];
