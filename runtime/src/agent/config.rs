//! The agent's configuration file (TOML): who the device is, where its data lives, how it
//! reaches the broker. One file and one data dir per agent instance.

use std::path::{Path, PathBuf};

use drover_wire::message::{Label, MAX_LABELS};
use drover_wire::topic::Name;
use serde::Deserialize;

use crate::link::{BrokerSettings, PayloadFormat};

/// `agent.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The device id: unique in the fleet, a topic level (`[A-Za-z0-9._-]`, ≤ 64).
    pub device: String,
    /// Groups this device belongs to (group pushes and commands reach it).
    #[serde(default)]
    pub groups: Vec<String>,
    /// `[labels]`: the operator's key = "value" pairs (site, rack), reported with presence so
    /// the fleet views can filter by them. Up to 8; keys `[a-z0-9_.-]`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The data directory: slots, state, trust, transfers.
    pub data_dir: PathBuf,
    /// How this agent encodes what it publishes (`postcard` or `json`).
    #[serde(default)]
    pub payload: PayloadFormat,
    /// The broker.
    #[serde(default)]
    pub broker: BrokerSettings,
    /// Bundle transfers.
    #[serde(default)]
    pub transfer: TransferSettings,
    /// How often presence is refreshed, seconds.
    #[serde(default = "default_status_every")]
    pub status_every_s: u64,
    /// Telemetry and the outbox.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Data and prediction drift.
    #[serde(default)]
    pub drift: DriftSettings,
    /// Prediction quality from labels (concept drift).
    #[serde(default)]
    pub quality: QualitySettings,
    /// The inference queue.
    #[serde(default)]
    pub inference: InferenceSettings,
    /// The local inference API.
    #[serde(default)]
    pub api: crate::api::ApiSettings,
    /// Sensor inputs (`[[input]]`): frames from a microcontroller on a tty, or sensors on the
    /// board's own I2C/SPI bus; each window is inferred by the served model.
    #[serde(default)]
    pub input: Vec<crate::input::InputSettings>,
}

/// The `[telemetry]` table.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Seconds between two reports; unset, the bundle's setting or 60.
    pub period_s: Option<u32>,
    /// Disk the outbox may use, MiB (reports beyond it drop the oldest, counted).
    #[serde(default = "default_outbox_mib")]
    pub outbox_mib: u64,
    /// Whose word delivers a report: the fleet server's (`"fleet"`, the default: kept until
    /// `drover fleet serve` says it stored it, so a broker restart loses nothing) or the
    /// broker's (`"broker"`: for brokers read by something other than a Drover fleet server,
    /// which would never say so).
    #[serde(default)]
    pub delivery: DeliveredBy,
    /// Seconds a report the broker took waits for the fleet's word before it is sent again.
    #[serde(default = "default_resend_s")]
    pub resend_s: u32,
}

/// The `delivery` setting of `[telemetry]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveredBy {
    /// The fleet server's `stored` message.
    #[default]
    Fleet,
    /// The broker's acknowledgement.
    Broker,
}

fn default_outbox_mib() -> u64 {
    16
}

fn default_resend_s() -> u32 {
    30
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            period_s: None,
            outbox_mib: default_outbox_mib(),
            delivery: DeliveredBy::default(),
            resend_s: default_resend_s(),
        }
    }
}

impl TelemetrySettings {
    /// The outbox's acknowledgement rule.
    pub fn acks(&self) -> crate::outbox::Acks {
        match self.delivery {
            DeliveredBy::Fleet => crate::outbox::Acks::Fleet { resend_ms: u64::from(self.resend_s.max(1)) * 1000 },
            DeliveredBy::Broker => crate::outbox::Acks::Broker,
        }
    }
}

/// The `[drift]` table. Unset thresholds come from the bundle (PSI) or the drift crate's
/// defaults, which were chosen for a false-alarm rate stated in `drover_drift`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftSettings {
    /// A window closes after this many samples…
    #[serde(default = "default_window_samples")]
    pub window_samples: u32,
    /// …or after this many seconds, whichever comes first.
    #[serde(default = "default_window_s")]
    pub window_s: u64,
    /// Fewer samples than this and a window is reported but not judged.
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
    /// Population stability index at or above which a feature drifted.
    pub psi: Option<f64>,
    /// Jensen–Shannon distance at or above which a feature drifted.
    pub js: Option<f64>,
    /// Kolmogorov–Smirnov p-value below which a feature drifted.
    pub ks_p: Option<f64>,
    /// Chi-squared p-value below which a categorical feature drifted.
    pub chi2_p: Option<f64>,
    /// Variance-test p-value (against the reference's standard deviation) below which a numeric
    /// feature drifted.
    pub variance_p: Option<f64>,
    /// Consecutive drifted windows that raise a `retrain` event.
    #[serde(default = "default_sustain")]
    pub sustain: u8,
    /// Percent of the engine's time drift monitoring may cost; past it, one inference in so many
    /// is observed (windows then count observed samples). 0 observes every inference.
    #[serde(default = "default_budget_pct")]
    pub budget_pct: f64,
}

fn default_budget_pct() -> f64 {
    0.5
}

fn default_window_samples() -> u32 {
    500
}
fn default_window_s() -> u64 {
    300
}
fn default_min_samples() -> u32 {
    100
}
fn default_sustain() -> u8 {
    3
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettings {
            window_samples: default_window_samples(),
            window_s: default_window_s(),
            min_samples: default_min_samples(),
            psi: None,
            js: None,
            ks_p: None,
            chi2_p: None,
            variance_p: None,
            sustain: default_sustain(),
            budget_pct: default_budget_pct(),
        }
    }
}

/// The `[quality]` table.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualitySettings {
    /// Predictions remembered for their labels.
    #[serde(default = "default_memory")]
    pub memory: usize,
    /// Rolling accuracy under which a `degraded` alert is raised.
    pub min_accuracy: Option<f64>,
    /// Rolling macro F1 under which a `degraded` alert is raised.
    pub min_f1: Option<f64>,
    /// Labels needed before the floors are checked.
    #[serde(default = "default_min_labels")]
    pub min_labels: u32,
}

fn default_memory() -> usize {
    10_000
}
fn default_min_labels() -> u32 {
    50
}

impl Default for QualitySettings {
    fn default() -> Self {
        QualitySettings { memory: default_memory(), min_accuracy: None, min_f1: None, min_labels: default_min_labels() }
    }
}

/// The `[inference]` table.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSettings {
    /// Requests that may wait for the engine; more are refused as busy.
    #[serde(default = "default_queue")]
    pub queue: u32,
    /// Dynamic batching: most samples merged into one engine call (0 or 1: off). Only models
    /// with a symbolic batch axis are batched.
    #[serde(default)]
    pub batch: usize,
    /// How long a batch may wait for more requests once the waiting ones are in, microseconds.
    #[serde(default = "default_batch_delay_us")]
    pub batch_delay_us: u64,
}

fn default_queue() -> u32 {
    64
}
fn default_batch_delay_us() -> u64 {
    500
}

impl Default for InferenceSettings {
    fn default() -> Self {
        InferenceSettings { queue: default_queue(), batch: 0, batch_delay_us: default_batch_delay_us() }
    }
}

fn default_status_every() -> u64 {
    60
}

/// The `[transfer]` table.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSettings {
    /// Ask again for missing chunks after this many seconds without one.
    #[serde(default = "default_stall")]
    pub stall_s: f64,
    /// Abandon a transfer after this many seconds (connected) without a chunk.
    #[serde(default = "default_give_up")]
    pub give_up_s: u64,
    /// Largest bundle accepted, MiB.
    #[serde(default = "default_max_bundle")]
    pub max_bundle_mib: u64,
}

fn default_stall() -> f64 {
    3.0
}
fn default_give_up() -> u64 {
    300
}
fn default_max_bundle() -> u64 {
    1024
}

impl Default for TransferSettings {
    fn default() -> Self {
        TransferSettings {
            stall_s: default_stall(),
            give_up_s: default_give_up(),
            max_bundle_mib: default_max_bundle(),
        }
    }
}

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A device id or group name is not a valid topic level.
    #[error("{what} '{name}': {reason}")]
    Name {
        /// "device" or "group".
        what: &'static str,
        /// The value.
        name: String,
        /// Why.
        reason: drover_wire::topic::BadName,
    },
    /// A value is out of range.
    #[error("{0}")]
    Range(String),
    /// An `[[input]]` table is unusable.
    #[error("{0}")]
    Input(#[from] crate::input::InputConfigError),
}

impl AgentConfig {
    /// A device's configuration with every default, its local API off: what a program that
    /// runs many agents in one process starts from (they would all want the API's one port).
    pub fn new(device: impl Into<String>, data_dir: impl Into<PathBuf>) -> AgentConfig {
        AgentConfig {
            device: device.into(),
            groups: Vec::new(),
            labels: Default::default(),
            data_dir: data_dir.into(),
            payload: PayloadFormat::default(),
            broker: BrokerSettings::default(),
            transfer: TransferSettings::default(),
            status_every_s: default_status_every(),
            telemetry: TelemetrySettings::default(),
            drift: DriftSettings::default(),
            quality: QualitySettings::default(),
            inference: InferenceSettings::default(),
            api: crate::api::ApiSettings { listen: crate::api::Listen::Off, ..Default::default() },
            input: Vec::new(),
        }
    }

    /// Parses and checks a configuration.
    pub fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = toml::from_str(text)?;
        cfg.names()?;
        cfg.labels()?;
        if !(cfg.transfer.stall_s.is_finite() && cfg.transfer.stall_s > 0.0) {
            return Err(ConfigError::Range("transfer.stall_s must be above 0".into()));
        }
        if cfg.drift.window_samples == 0 || cfg.drift.window_s == 0 || cfg.drift.sustain == 0 {
            return Err(ConfigError::Range("drift.window_samples, window_s and sustain must be above 0".into()));
        }
        if !(cfg.drift.budget_pct.is_finite() && cfg.drift.budget_pct >= 0.0) {
            return Err(ConfigError::Range("drift.budget_pct must be 0 (no limit) or a positive percent".into()));
        }
        if cfg.telemetry.period_s == Some(0) || cfg.inference.queue == 0 {
            return Err(ConfigError::Range("telemetry.period_s and inference.queue must be above 0".into()));
        }
        if cfg.api.max_body_kib == 0 {
            return Err(ConfigError::Range("api.max_body_kib must be above 0".into()));
        }
        if cfg.broker.max_packet < 4096 {
            return Err(ConfigError::Range("broker.max_packet must be at least 4096 bytes".into()));
        }
        crate::input::check(&cfg.input)?;
        Ok(cfg)
    }

    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })?;
        Self::parse(&text)
    }

    /// The inference service's settings, with the bundle's PSI threshold (thousandths) where the
    /// config leaves it unset.
    pub fn serve_settings(&self, bundle_psi_milli: Option<u32>) -> crate::serve::ServeSettings {
        let d = &self.drift;
        let defaults = drover_wire::drift::Thresholds::default();
        let bundle_psi = bundle_psi_milli.map(|m| f64::from(m) / 1000.0);
        crate::serve::ServeSettings {
            queue: self.inference.queue,
            window: drover_wire::drift::WindowPolicy {
                samples: d.window_samples,
                millis: d.window_s.saturating_mul(1000),
                min_samples: d.min_samples,
            },
            thresholds: drover_wire::drift::Thresholds {
                psi: d.psi.or(bundle_psi).unwrap_or(defaults.psi),
                js: d.js.unwrap_or(defaults.js),
                ks_p: d.ks_p.unwrap_or(defaults.ks_p),
                chi2_p: d.chi2_p.unwrap_or(defaults.chi2_p),
                variance_p: d.variance_p.unwrap_or(defaults.variance_p),
            },
            sustain: d.sustain,
            budget: d.budget_pct / 100.0,
            memory: self.quality.memory,
            floors: crate::serve::Floors {
                accuracy: self.quality.min_accuracy,
                f1: self.quality.min_f1,
                min_labels: self.quality.min_labels,
            },
            batching: (self.inference.batch > 1).then(|| crate::serve::Batching {
                max_batch: self.inference.batch,
                max_delay: std::time::Duration::from_micros(self.inference.batch_delay_us),
            }),
        }
    }

    /// The labels, checked: at most [`MAX_LABELS`], keys of `[a-z0-9_.-]` up to 32 bytes, values of
    /// printable characters up to 64 bytes.
    pub fn labels(&self) -> Result<heapless::Vec<Label, MAX_LABELS>, ConfigError> {
        if self.labels.len() > MAX_LABELS {
            return Err(ConfigError::Range(format!("at most {MAX_LABELS} labels, not {}", self.labels.len())));
        }
        let bad = |k: &str, why: &str| ConfigError::Range(format!("label '{k}': {why}"));
        let mut out = heapless::Vec::new();
        for (k, v) in &self.labels {
            let key_ok =
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
            if !key_ok {
                return Err(bad(k, "keys are 1 to 32 of a-z 0-9 _ . -"));
            }
            if v.chars().any(char::is_control) {
                return Err(bad(k, "the value has a control character"));
            }
            let key = k.as_str().try_into().map_err(|_| bad(k, "keys are 1 to 32 of a-z 0-9 _ . -"))?;
            let value = v.as_str().try_into().map_err(|_| bad(k, "values are at most 64 bytes"))?;
            // Cannot overflow: the count was checked above.
            let _ = out.push(Label { key, value });
        }
        Ok(out)
    }

    /// The device id and groups as checked topic levels.
    pub fn names(&self) -> Result<(Name, Vec<Name>), ConfigError> {
        let device = Name::new(&self.device).map_err(|reason| ConfigError::Name {
            what: "device",
            name: self.device.clone(),
            reason,
        })?;
        let groups = self
            .groups
            .iter()
            .map(|g| Name::new(g).map_err(|reason| ConfigError::Name { what: "group", name: g.clone(), reason }))
            .collect::<Result<_, _>>()?;
        Ok((device, groups))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_config_gets_defaults_and_a_full_one_parses() {
        let c = AgentConfig::parse("device = \"pi-1\"\ndata_dir = \"/var/lib/drover\"\n").unwrap();
        assert_eq!(c.broker, BrokerSettings::default());
        assert_eq!(c.payload, PayloadFormat::Postcard);
        assert!(c.groups.is_empty());
        let c = AgentConfig::parse(
            r#"
device = "pi-1"
groups = ["lab", "floor-2"]
data_dir = "/tmp/d"
payload = "json"
status_every_s = 30
[labels]
site = "berlin"
rack = "r-3"
[broker]
host = "broker.local"
port = 8883
username = "pi-1"
password_file = "/etc/drover/password"
ca = "/etc/drover/ca.pem"
max_packet = 262144
[transfer]
stall_s = 0.5
give_up_s = 60
[telemetry]
period_s = 10
outbox_mib = 4
[drift]
window_samples = 200
psi = 0.25
sustain = 2
[quality]
min_accuracy = 0.9
[inference]
queue = 8
batch = 16
batch_delay_us = 200
[api]
listen = "unix:/run/drover/api.sock"
max_body_kib = 1024
[[input]]
kind = "serial"
path = "/dev/ttyACM0"
baud = 230400
[[input]]
kind = "i2c"
device = "/dev/i2c-1"
part = "adxl345"
"#,
        )
        .unwrap();
        assert_eq!(c.broker.port, 8883);
        assert_eq!(c.payload, PayloadFormat::Json);
        assert_eq!(c.transfer.stall_s, 0.5);
        assert_eq!(c.names().unwrap().1.len(), 2);
        let labels = c.labels().unwrap();
        assert_eq!((labels[0].key.as_str(), labels[1].value.as_str()), ("rack", "berlin"));
        let s = c.serve_settings(Some(100));
        assert_eq!((s.queue, s.window.samples, s.window.millis, s.sustain), (8, 200, 300_000, 2));
        assert_eq!(s.thresholds.psi, 0.25, "the config's threshold wins over the bundle's");
        assert_eq!(s.floors.accuracy, Some(0.9));
        let b = s.batching.expect("batching on");
        assert_eq!((b.max_batch, b.max_delay), (16, std::time::Duration::from_micros(200)));
        assert_eq!(c.api.listen, crate::api::Listen::Unix("/run/drover/api.sock".into()));
        assert_eq!(c.input.len(), 2);
        assert!(matches!(&c.input[0], crate::input::InputSettings::Serial { baud: 230_400, .. }));
        let plain = AgentConfig::parse("device = \"pi\"\ndata_dir = \"/d\"").unwrap();
        assert_eq!(plain.serve_settings(Some(150)).thresholds.psi, 0.15, "then the bundle's");
        assert_eq!(plain.serve_settings(None).thresholds, drover_wire::drift::Thresholds::default());
    }

    #[test]
    fn bad_configs_are_named() {
        for (text, expect) in [
            ("device = \"pi/1\"\ndata_dir = \"/d\"", "device 'pi/1'"),
            ("device = \"pi\"\ngroups = [\"#\"]\ndata_dir = \"/d\"", "group '#'"),
            ("device = \"pi\"\ndata_dir = \"/d\"\nbrokr = 1", "unknown field"),
            ("device = \"pi\"", "data_dir"),
            ("device = \"pi\"\ndata_dir = \"/d\"\n[transfer]\nstall_s = 0", "stall_s"),
            ("device = \"pi\"\ndata_dir = \"/d\"\n[drift]\nsustain = 0", "sustain"),
            ("device = \"pi\"\ndata_dir = \"/d\"\n[telemetry]\nperiod_s = 0", "period_s"),
            ("device = \"pi\"\ndata_dir = \"/d\"\n[drift]\npsy = 0.1", "unknown field"),
            ("device = \"pi\"\ndata_dir = \"/d\"\n[api]\nlisten = \"localhost\"", "HOST:PORT"),
            ("device = \"pi\"\ndata_dir = \"/d\"\n[labels]\nSite = \"x\"", "label 'Site'"),
            ("device = \"pi\"\ndata_dir = \"/d\"\n[labels]\nsite = \"a\\nb\"", "control character"),
            (
                "device = \"pi\"\ndata_dir = \"/d\"\n[labels]\nsite = \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"",
                "at most 64",
            ),
            (
                "device = \"pi\"\ndata_dir = \"/d\"\n[[input]]\nkind = \"i2c\"\ndevice = \"/dev/i2c-1\"\npart = \"mpu6050\"\naddress = 0x53",
                "two addresses",
            ),
        ] {
            let e = AgentConfig::parse(text).unwrap_err().to_string();
            assert!(e.contains(expect), "{e} / {expect}");
        }
    }
}
