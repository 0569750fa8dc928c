//! The agent's configuration file (TOML): who the device is, where its data lives, how it
//! reaches the broker. One file and one data dir per agent instance.

use std::path::{Path, PathBuf};

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
}

impl AgentConfig {
    /// Parses and checks a configuration.
    pub fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = toml::from_str(text)?;
        cfg.names()?;
        if !(cfg.transfer.stall_s.is_finite() && cfg.transfer.stall_s > 0.0) {
            return Err(ConfigError::Range("transfer.stall_s must be above 0".into()));
        }
        if cfg.broker.max_packet < 4096 {
            return Err(ConfigError::Range("broker.max_packet must be at least 4096 bytes".into()));
        }
        Ok(cfg)
    }

    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })?;
        Self::parse(&text)
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
"#,
        )
        .unwrap();
        assert_eq!(c.broker.port, 8883);
        assert_eq!(c.payload, PayloadFormat::Json);
        assert_eq!(c.transfer.stall_s, 0.5);
        assert_eq!(c.names().unwrap().1.len(), 2);
    }

    #[test]
    fn bad_configs_are_named() {
        for (text, expect) in [
            ("device = \"pi/1\"\ndata_dir = \"/d\"", "device 'pi/1'"),
            ("device = \"pi\"\ngroups = [\"#\"]\ndata_dir = \"/d\"", "group '#'"),
            ("device = \"pi\"\ndata_dir = \"/d\"\nbrokr = 1", "unknown field"),
            ("device = \"pi\"", "data_dir"),
            ("device = \"pi\"\ndata_dir = \"/d\"\n[transfer]\nstall_s = 0", "stall_s"),
        ] {
            let e = AgentConfig::parse(text).unwrap_err().to_string();
            assert!(e.contains(expect), "{e} / {expect}");
        }
    }
}
