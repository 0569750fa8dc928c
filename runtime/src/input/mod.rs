//! Sensor inputs: feature windows from a microcontroller on a serial line (`serial.rs`) or
//! sampled by the agent itself from sensors on the board's own I2C/SPI bus (`bus.rs`), each
//! inferred by the served model like any API request, so it feeds telemetry, drift and the
//! predictions awaiting labels the same way.
//!
//! Configured as `[[input]]` tables in `agent.toml`; each source runs on a thread of its own
//! (blocking reads of a tty or a bus), started next to the local API and stopped with the agent.
//! The decoding and accounting are pure ([`stream::FrameStream`], [`deliver`]); only the reads
//! are I/O. Per-input counters reach MQTT in every telemetry report ([`InputReport`]).

pub mod bus;
pub mod serial;
pub mod stream;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use drover_wire::DType;
use drover_wire::telemetry::{InputReport, MAX_INPUTS};
use serde::Deserialize;

use crate::serve::Inference;
use crate::tensor::{Tensor, TensorData};

/// One `[[input]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum InputSettings {
    /// Frames from a microcontroller running drover-shim, on a tty (`/dev/ttyACM0`,
    /// `/dev/serial0`).
    Serial {
        /// The name telemetry reports it under (default: the path).
        name: Option<String>,
        /// The tty.
        path: PathBuf,
        /// Line speed; the firmware's (115200 for the example firmware).
        #[serde(default = "default_baud")]
        baud: u32,
    },
    /// An accelerometer on the board's I2C bus, sampled by the agent.
    I2c {
        /// The name telemetry reports it under (default: the device path).
        name: Option<String>,
        /// The bus (`/dev/i2c-1` on a Raspberry Pi).
        device: PathBuf,
        /// The part.
        part: I2cPart,
        /// The part's address when not its default (0x68 MPU-6050, 0x53 ADXL345); the
        /// alternative address (AD0 or ALT ADDRESS high) is the only other choice.
        address: Option<u8>,
        /// FFT bands per axis after mean, rms, p2p and zero crossings (must match the model).
        #[serde(default = "default_bands")]
        bands: u8,
    },
    /// An MCP3008 ADC channel on the board's SPI bus, sampled by the agent.
    Spi {
        /// The name telemetry reports it under (default: the device path).
        name: Option<String>,
        /// The SPI device (`/dev/spidev0.0`).
        device: PathBuf,
        /// The part.
        part: SpiPart,
        /// Single-ended channel 0–7.
        channel: u8,
        /// The voltage on VREF.
        #[serde(default = "default_vref")]
        vref: f32,
        /// Sampling period, microseconds.
        #[serde(default = "default_period_us")]
        period_us: u32,
        /// FFT bands after mean, rms, p2p and zero crossings (must match the model).
        #[serde(default = "default_bands")]
        bands: u8,
    },
}

/// I2C parts the agent can sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum I2cPart {
    /// InvenSense MPU-6050 (accelerometer axes, 100 Hz).
    Mpu6050,
    /// Analog Devices ADXL345 (100 Hz).
    Adxl345,
}

/// SPI parts the agent can sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpiPart {
    /// Microchip MCP3008 10-bit ADC.
    Mcp3008,
}

fn default_baud() -> u32 {
    115_200
}
fn default_bands() -> u8 {
    4
}
fn default_vref() -> f32 {
    3.3
}
fn default_period_us() -> u32 {
    10_000
}

impl InputSettings {
    /// The name telemetry reports the input under.
    pub fn name(&self) -> String {
        let (name, path) = match self {
            InputSettings::Serial { name, path, .. } => (name, path),
            InputSettings::I2c { name, device, .. } | InputSettings::Spi { name, device, .. } => (name, device),
        };
        name.clone().unwrap_or_else(|| path.display().to_string())
    }
}

/// Why the `[[input]]` tables cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InputConfigError {
    /// More inputs than a telemetry report carries.
    #[error("at most {MAX_INPUTS} [[input]] tables")]
    TooMany,
    /// Two inputs report under the same name.
    #[error("two [[input]] tables are named {0:?}")]
    DuplicateName(String),
    /// A setting outside what the part or the layout supports.
    #[error("[[input]] {name:?}: {why}")]
    Invalid {
        /// The input.
        name: String,
        /// What is wrong.
        why: String,
    },
}

/// Checks the `[[input]]` tables as a whole (names, bounds, parts' settings).
pub fn check(inputs: &[InputSettings]) -> Result<(), InputConfigError> {
    if inputs.len() > MAX_INPUTS {
        return Err(InputConfigError::TooMany);
    }
    let mut names = std::collections::HashSet::new();
    for input in inputs {
        let name = input.name();
        if !names.insert(name.clone()) {
            return Err(InputConfigError::DuplicateName(name));
        }
        let invalid = |why: String| InputConfigError::Invalid { name: name.clone(), why };
        match input {
            InputSettings::Serial { baud, .. } if *baud == 0 => return Err(invalid("baud must be positive".into())),
            InputSettings::I2c { bands, part, address, .. } => {
                bus::accel_layout(*bands).map_err(|e| invalid(e.to_string()))?;
                if let Some(a) = address
                    && bus::I2cAddress::of(*part, *a).is_none()
                {
                    return Err(invalid(format!("{part:?} answers at its two addresses only, not 0x{a:02x}")));
                }
            }
            InputSettings::Spi { bands, channel, period_us, .. } => {
                bus::adc_layout(*bands).map_err(|e| invalid(e.to_string()))?;
                if *channel > 7 {
                    return Err(invalid(format!("MCP3008 channel {channel} does not exist (0-7)")));
                }
                if *period_us == 0 {
                    return Err(invalid("period_us must be positive".into()));
                }
            }
            InputSettings::Serial { .. } => {}
        }
    }
    Ok(())
}

/// What happened to one window handed to the inference service.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivered {
    /// Inferred; the class for classifiers.
    Inferred(Option<i64>),
    /// Its width (or the model's input type) does not fit the served model.
    Mismatched,
    /// The service refused it (no model, queue full, engine error).
    Refused,
}

impl Delivered {
    /// Counts this outcome in `report` (apart from the inference, so a source holds the
    /// report's lock only for the count, never while the engine runs).
    pub fn count(&self, report: &mut InputReport) {
        match self {
            Delivered::Inferred(class) => {
                report.inferred += 1;
                if let Some(c) = class {
                    report.count_class(*c);
                }
            }
            Delivered::Mismatched => report.mismatched += 1,
            Delivered::Refused => report.refused += 1,
        }
    }
}

/// Infers one window's feature vector with the served model. The model must take one float32
/// input whose sample shape holds exactly `values.len()` numbers (`[N, 24]` takes 24 values as
/// `[24]`); anything else is a mismatch, not an inference error.
pub fn deliver(inference: &Inference, values: Vec<f32>) -> Delivered {
    let Some(served) = inference.served() else { return Delivered::Refused };
    let sig = &served.signature;
    if sig.inputs.len() != 1 || sig.input_dtype(0) != DType::F32 {
        return Delivered::Mismatched;
    }
    let Some(shape) = sig.sample_shape(0).into_iter().collect::<Option<Vec<usize>>>() else {
        return Delivered::Mismatched;
    };
    if shape.iter().product::<usize>() != values.len() {
        return Delivered::Mismatched;
    }
    let Ok(tensor) = Tensor::new(shape, TensorData::F32(values)) else { return Delivered::Mismatched };
    match inference.infer(None, &[tensor]) {
        Ok(p) => Delivered::Inferred(p.class),
        Err(e) => {
            log::debug!("input window refused: {e}");
            Delivered::Refused
        }
    }
}

/// Delivers windows and counts their outcomes in the shared report.
pub(crate) fn deliver_all(inference: &Inference, windows: Vec<Vec<f32>>, report: &Shared) {
    for values in windows {
        let outcome = deliver(inference, values);
        outcome.count(&mut lock(report));
    }
}

/// The counters one source shares with the telemetry tick.
pub(crate) type Shared = Arc<Mutex<InputReport>>;

pub(crate) fn lock(report: &Shared) -> MutexGuard<'_, InputReport> {
    // A source thread that panicked leaves counts that are still consistent.
    report.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running sources of one agent: started with it, stopped (and joined) with it.
#[derive(Debug, Default)]
pub struct Inputs {
    reports: Vec<Shared>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Inputs {
    /// Starts one thread per input, each delivering its windows to `inference`. A source that
    /// cannot open its device keeps trying (the board may be plugged in later) and reports
    /// itself disconnected meanwhile.
    pub fn start(settings: &[InputSettings], inference: &Inference) -> Inputs {
        let stop = Arc::new(AtomicBool::new(false));
        let mut inputs = Inputs { reports: Vec::new(), stop: stop.clone(), threads: Vec::new() };
        for s in settings {
            let name = s.name();
            let report: Shared = Arc::new(Mutex::new(InputReport::new(&name)));
            let (r, stop, inference, s) = (report.clone(), stop.clone(), inference.clone(), s.clone());
            let spawned = std::thread::Builder::new().name(format!("input {name}")).spawn(move || match s {
                InputSettings::Serial { path, baud, .. } => serial::run(&path, baud, &inference, &r, &stop),
                InputSettings::I2c { device, part, address, bands, .. } => {
                    bus::run_i2c(&device, part, address, bands, &inference, &r, &stop)
                }
                InputSettings::Spi { device, channel, vref, period_us, bands, .. } => {
                    bus::run_spi(&device, channel, vref, period_us, bands, &inference, &r, &stop)
                }
            });
            match spawned {
                Ok(thread) => inputs.threads.push(thread),
                Err(e) => log::error!("input {name}: cannot start its thread: {e}"),
            }
            inputs.reports.push(report);
        }
        inputs
    }

    /// Each input's counters since the last call, in configuration order (for telemetry).
    pub fn take_reports(&self) -> heapless::Vec<InputReport, MAX_INPUTS> {
        // `check` bounds the inputs by MAX_INPUTS; past it, the rest would go unreported.
        self.reports.iter().map(|r| lock(r).take()).take(MAX_INPUTS).collect()
    }

    /// Stops every source and waits for it (each notices within its read timeout or one
    /// sampling period).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Inputs {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::SystemClock;
    use crate::engine::Model;
    use drover_wire::message::ModelRef;

    fn models() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    fn service() -> Inference {
        let settings = crate::agent::AgentConfig::parse("device = \"t\"\ndata_dir = \"/tmp\"")
            .expect("config")
            .serve_settings(None);
        Inference::new(settings, Arc::new(SystemClock::default()))
    }

    fn serve(s: &Inference, file: &str) {
        let model = Model::load(&models().join(file)).expect("model");
        s.serve(model, ModelRef { name: "sensor".try_into().expect("name"), version: 1 }, None);
    }

    /// The committed reference windows of the sensor model (classes 0, 1, 2 in turn, as
    /// `reference/sensor_logreg.output.label.npy` says).
    fn reference_windows() -> Vec<Vec<f32>> {
        let text = std::fs::read_to_string(models().join("reference/sensor_logreg.input.jsonl")).expect("jsonl");
        text.lines().map(|l| serde_json::from_str(l).expect("row")).collect()
    }

    #[test]
    fn windows_are_inferred_and_their_classes_counted() {
        let s = service();
        let mut report = InputReport::new("uart");
        let windows = reference_windows();
        assert_eq!(deliver(&s, windows[0].clone()), Delivered::Refused, "no model yet");
        serve(&s, "sensor_logreg.onnx");
        for (i, w) in windows.iter().take(6).enumerate() {
            let outcome = deliver(&s, w.clone());
            assert_eq!(outcome, Delivered::Inferred(Some((i % 3) as i64)), "window {i}");
            outcome.count(&mut report);
        }
        assert_eq!((report.inferred, report.classes.as_slice()), (6, [2, 2, 2].as_slice()));
    }

    #[test]
    fn a_window_that_does_not_fit_the_model_is_a_mismatch() {
        let s = service();
        serve(&s, "sensor_logreg.onnx");
        let mut short = reference_windows().swap_remove(0);
        short.pop();
        let mut report = InputReport::new("uart");
        let outcome = deliver(&s, short);
        assert_eq!(outcome, Delivered::Mismatched);
        outcome.count(&mut report);
        assert_eq!((report.mismatched, report.inferred), (1, 0));
        // A model with several inputs cannot take a feature vector at all.
        serve(&s, "dtypes.onnx");
        assert_eq!(deliver(&s, vec![0.0; 3]), Delivered::Mismatched);
    }

    fn parse(text: &str) -> Result<Vec<InputSettings>, toml::de::Error> {
        #[derive(Deserialize)]
        struct File {
            input: Vec<InputSettings>,
        }
        toml::from_str::<File>(text).map(|f| f.input)
    }

    #[test]
    fn input_tables_parse_with_defaults() {
        let inputs = parse(
            r#"
            [[input]]
            kind = "serial"
            path = "/dev/ttyACM0"
            [[input]]
            kind = "i2c"
            name = "imu"
            device = "/dev/i2c-1"
            part = "mpu6050"
            address = 0x69
            [[input]]
            kind = "spi"
            device = "/dev/spidev0.0"
            part = "mcp3008"
            channel = 3
            "#,
        )
        .expect("parses");
        assert_eq!(inputs[0], InputSettings::Serial { name: None, path: "/dev/ttyACM0".into(), baud: 115_200 });
        assert_eq!(inputs[0].name(), "/dev/ttyACM0");
        assert_eq!(inputs[1].name(), "imu");
        assert!(matches!(inputs[1], InputSettings::I2c { part: I2cPart::Mpu6050, address: Some(0x69), bands: 4, .. }));
        assert!(matches!(inputs[2], InputSettings::Spi { channel: 3, period_us: 10_000, .. }));
        assert_eq!(check(&inputs), Ok(()));
    }

    #[test]
    fn bad_input_tables_are_refused() {
        assert!(parse("[[input]]\nkind = \"usb\"\npath = \"/dev/x\"").is_err(), "unknown kind");
        assert!(parse("[[input]]\nkind = \"serial\"\npath = \"/dev/x\"\nbaud_rate = 9600").is_err(), "unknown key");
        assert!(
            parse("[[input]]\nkind = \"i2c\"\ndevice = \"/dev/i2c-1\"\npart = \"bmp280\"").is_err(),
            "unknown part"
        );
        let two =
            parse("[[input]]\nkind = \"serial\"\npath = \"/dev/x\"\n[[input]]\nkind = \"serial\"\npath = \"/dev/x\"")
                .expect("parses");
        assert_eq!(check(&two), Err(InputConfigError::DuplicateName("/dev/x".into())));
        let adc = parse("[[input]]\nkind = \"spi\"\ndevice = \"/dev/spidev0.0\"\npart = \"mcp3008\"\nchannel = 8")
            .expect("parses");
        assert!(matches!(check(&adc), Err(InputConfigError::Invalid { .. })));
        let bands = parse("[[input]]\nkind = \"i2c\"\ndevice = \"/dev/i2c-1\"\npart = \"adxl345\"\nbands = 70")
            .expect("parses");
        assert!(matches!(check(&bands), Err(InputConfigError::Invalid { .. })));
    }
}
