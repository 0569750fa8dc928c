//! Drover example firmware for an STM32F411 (Nucleo-F411RE or a "Black Pill"): reads an
//! MPU-6050 on I2C1 (PB8 SCL, PB9 SDA, 400 kHz), computes the feature windows of
//! [`app::layout`] and writes Drover frames on USART2 TX (PA2, 115200 8N1: the Nucleo's ST-LINK
//! virtual COM port). Everything but the pins and clocks is in `app.rs`, generic over the
//! `embedded-hal` and `embedded-io` traits.
//!
//! Build: `cargo build --release` in this directory (the target is set in `.cargo/config.toml`);
//! `tests/run` prints its flash and RAM use.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod app;

use cortex_m::peripheral::DWT;
use cortex_m_rt::entry;
use panic_halt as _;
use stm32f4xx_hal::i2c::I2c;
use stm32f4xx_hal::pac;
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::rcc::Config;

/// Core clock: the internal 16 MHz oscillator through the PLL, so no crystal is assumed.
const SYSCLK_MHZ: u32 = 84;
/// UART speed the agent's `[[input]]` `baud` must match.
const BAUD: u32 = 115_200;

#[entry]
fn main() -> ! {
    // Both are taken once, at reset: `None` is impossible here.
    let (Some(dp), Some(mut cp)) = (pac::Peripherals::take(), cortex_m::Peripherals::take()) else {
        panic!("peripherals taken twice")
    };
    let mut rcc = dp.RCC.freeze(Config::hsi().sysclk(SYSCLK_MHZ.MHz()));
    let gpioa = dp.GPIOA.split(&mut rcc);
    let gpiob = dp.GPIOB.split(&mut rcc);
    let i2c = I2c::new(dp.I2C1, (gpiob.pb8, gpiob.pb9), 400.kHz(), &mut rcc);
    let Ok(tx) = dp.USART2.tx(gpioa.pa2, BAUD.bps(), &mut rcc) else {
        panic!("USART2 cannot reach {BAUD} baud from the APB1 clock")
    };
    let delay = cp.SYST.delay(&rcc.clocks);
    // The cycle counter times the feature computation (wraps after 51 s; differences stay exact).
    cp.DCB.enable_trace();
    cp.DWT.enable_cycle_counter();
    app::run(i2c, delay, tx, DWT::cycle_count, SYSCLK_MHZ)
}
