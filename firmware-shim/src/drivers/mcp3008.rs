//! Microchip MCP3008 8-channel 10-bit ADC over SPI.
//!
//! From the MCP3004/3008 data sheet (DS21295): one conversion is a 3-byte exchange with 8-bit
//! segments (section 6.1, Figure 6-1): the first byte carries the start bit, the second the
//! SGL/DIFF bit and the channel D2..D0 in its top nibble (Table 5-2), and the reply's last 10
//! bits are the result, B9..B8 in the second byte's two low bits and B7..B0 in the third. The
//! chip select framing comes from `SpiDevice` (one transaction per conversion; the data sheet
//! requires CS to go high between conversions). SPI mode 0,0 or 1,1; at most 3.6 MHz at 5 V,
//! 1.35 MHz at 2.7 V.

use embedded_hal::spi::SpiDevice;

use super::DriverError;
use crate::Sensor;

/// The start bit, alone in the first byte so the result lands byte-aligned at the end.
const START: u8 = 0x01;
/// Full scale: a 10-bit result.
pub const FULL_SCALE: u16 = 1023;

/// Which input a conversion reads (Table 5-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Single-ended CH0..CH7 against ground.
    Single(u8),
    /// Pseudo-differential pair: `Differential(0)` is CH0+ CH1−, `(1)` CH0− CH1+, … `(7)` CH6− CH7+
    /// (the D2..D0 code of the table).
    Differential(u8),
}

impl Input {
    /// The second command byte: SGL/DIFF in bit 7, D2..D0 in bits 6:4.
    fn command(self) -> Option<u8> {
        let (single, code) = match self {
            Input::Single(c) => (0x80, c),
            Input::Differential(c) => (0x00, c),
        };
        (code < 8).then_some(single | code << 4)
    }
}

/// One input of an MCP3008 read as volts.
pub struct Mcp3008<S> {
    spi: S,
    command: u8,
    vref: f32,
}

impl<S: SpiDevice> Mcp3008<S> {
    /// Reads `input`, scaled to volts against the reference voltage on VREF (often the 3.3 V
    /// supply). The ADC has no identity register, so nothing is checked on the bus here.
    pub fn new(spi: S, input: Input, vref: f32) -> Result<Self, DriverError<S::Error>> {
        let command = input.command().ok_or(DriverError::InvalidConfig)?;
        Ok(Mcp3008 { spi, command, vref })
    }

    /// One conversion: the 10-bit code, 0..=1023.
    pub fn read_code(&mut self) -> Result<u16, DriverError<S::Error>> {
        let mut buf = [START, self.command, 0x00];
        self.spi.transfer_in_place(&mut buf)?;
        Ok(u16::from(buf[1] & 0x03) << 8 | u16::from(buf[2]))
    }

    /// Gives the bus back.
    pub fn release(self) -> S {
        self.spi
    }
}

impl<S: SpiDevice> Sensor for Mcp3008<S> {
    type Error = DriverError<S::Error>;

    /// The input in volts: code × VREF / 1024 (data sheet equation 4-2).
    fn read(&mut self) -> Result<f32, Self::Error> {
        Ok(f32::from(self.read_code()?) * self.vref / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use embedded_hal_mock::eh1::spi::{Mock, Transaction};

    use super::*;

    fn conversion(sent: [u8; 3], reply: [u8; 3]) -> [Transaction<u8>; 3] {
        [
            Transaction::transaction_start(),
            Transaction::transfer_in_place(vec![sent[0], sent[1], sent[2]], vec![reply[0], reply[1], reply[2]]),
            Transaction::transaction_end(),
        ]
    }

    #[test]
    fn single_ended_channel_five_reads_ten_bits_as_volts() {
        // CH5 single-ended: SGL=1, D2..D0=101 -> 0b1101_0000. The reply's bits above B9 are
        // undefined (high impedance, then the null bit): the driver must mask them.
        let mut expected = conversion([0x01, 0xD0, 0x00], [0xFF, 0xFE, 0x00]);
        let mut spi = Mock::new(&expected);
        let mut adc = Mcp3008::new(spi.clone(), Input::Single(5), 3.3).expect("channel 5 exists");
        assert_eq!(adc.read().expect("read"), 512.0 * 3.3 / 1024.0);
        spi.done();

        expected = conversion([0x01, 0x80, 0x00], [0x00, 0x03, 0xFF]);
        let mut spi = Mock::new(&expected);
        let mut adc = Mcp3008::new(spi.clone(), Input::Single(0), 3.3).expect("channel 0 exists");
        assert_eq!(adc.read_code().expect("read"), FULL_SCALE);
        spi.done();
    }

    #[test]
    fn differential_pair_clears_sgl() {
        // CH2+ CH3- is code 010: 0b0010_0000.
        let mut spi = Mock::new(&conversion([0x01, 0x20, 0x00], [0x00, 0x00, 0x2A]));
        let mut adc = Mcp3008::new(spi.clone(), Input::Differential(2), 5.0).expect("pair exists");
        assert_eq!(adc.read_code().expect("read"), 42);
        spi.done();
    }

    #[test]
    fn channel_eight_does_not_exist() {
        let mut spi: Mock<u8> = Mock::new(&[]);
        assert!(matches!(Mcp3008::new(spi.clone(), Input::Single(8), 3.3), Err(DriverError::InvalidConfig)));
        spi.done();
    }
}
