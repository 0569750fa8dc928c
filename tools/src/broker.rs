//! The embedded broker (rumqttd) for a single-machine fleet and the demo: our own small
//! configuration, turned into rumqttd's, with the packet size bundles need.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The embedded broker's largest packet by default: chunks of up to 64 KiB and their headers
/// fit. (rumqttd's shipped 20 KiB is checked against the whole packet, and a client that
/// exceeds it just sees its connection reset.)
pub const DEFAULT_MAX_PACKET: usize = 256 * 1024;

/// `broker.toml` for `drover broker --config`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Plain MQTT listener (none when only TLS is wanted).
    #[serde(default = "default_listen")]
    pub listen: Option<SocketAddr>,
    /// A TLS listener (server-authenticated).
    #[serde(default)]
    pub tls: Option<TlsListener>,
    /// Largest packet accepted, bytes.
    #[serde(default = "default_max_packet")]
    pub max_packet: usize,
    /// Most simultaneous connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// User names and passwords; empty lets anyone connect.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
}

/// The `[tls]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    /// Address of the TLS listener.
    pub listen: SocketAddr,
    /// The server certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

fn default_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 1883)))
}
fn default_max_packet() -> usize {
    DEFAULT_MAX_PACKET
}
fn default_max_connections() -> usize {
    10_000
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: default_listen(),
            tls: None,
            max_packet: DEFAULT_MAX_PACKET,
            max_connections: default_max_connections(),
            users: BTreeMap::new(),
        }
    }
}

impl BrokerConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<BrokerConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let cfg: BrokerConfig = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Refuses a configuration that cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.listen.is_some() || self.tls.is_some(), "the broker needs `listen` or a [tls] listener");
        anyhow::ensure!(self.max_packet >= 4096, "max_packet must be at least 4096 bytes");
        if let Some(tls) = &self.tls {
            for f in [&tls.cert, &tls.key] {
                anyhow::ensure!(f.is_file(), "TLS file {} does not exist", f.display());
            }
        }
        Ok(())
    }

    /// rumqttd's configuration for this one.
    pub fn rumqttd(&self) -> rumqttd::Config {
        let auth = (!self.users.is_empty()).then(|| self.users.clone().into_iter().collect::<HashMap<_, _>>());
        let connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: self.max_packet,
            max_inflight_count: 100,
            auth,
            external_auth: None,
            dynamic_filters: true,
        };
        let mut servers = HashMap::new();
        if let Some(listen) = self.listen {
            servers.insert(
                "plain".to_string(),
                rumqttd::ServerSettings {
                    name: "plain".into(),
                    listen,
                    tls: None,
                    next_connection_delay_ms: 1,
                    connections: connections.clone(),
                },
            );
        }
        if let Some(tls) = &self.tls {
            servers.insert(
                "tls".to_string(),
                rumqttd::ServerSettings {
                    name: "tls".into(),
                    listen: tls.listen,
                    tls: Some(rumqttd::TlsConfig::Rustls {
                        capath: None,
                        certpath: tls.cert.to_string_lossy().into_owned(),
                        keypath: tls.key.to_string_lossy().into_owned(),
                    }),
                    next_connection_delay_ms: 1,
                    connections,
                },
            );
        }
        rumqttd::Config {
            id: 0,
            router: rumqttd::RouterConfig {
                max_connections: self.max_connections,
                max_outgoing_packet_count: 200,
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some(servers),
            ..Default::default()
        }
    }
}

/// Runs the broker on the calling thread until the process ends.
pub fn run(cfg: &BrokerConfig) -> anyhow::Result<()> {
    cfg.check()?;
    let mut broker = rumqttd::Broker::new(cfg.rumqttd());
    broker.start().map_err(|e| anyhow::anyhow!("broker: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_map_onto_rumqttd_with_the_raised_packet_limit() {
        let cfg: BrokerConfig = toml::from_str("listen = \"127.0.0.1:18830\"\n[users]\npi = \"secret\"\n").unwrap();
        let r = cfg.rumqttd();
        let plain = &r.v4.as_ref().unwrap()["plain"];
        assert_eq!(plain.listen.port(), 18830);
        assert_eq!(plain.connections.max_payload_size, DEFAULT_MAX_PACKET);
        assert_eq!(plain.connections.auth.as_ref().unwrap()["pi"], "secret");
        assert!(BrokerConfig::default().rumqttd().v4.unwrap()["plain"].connections.auth.is_none());
    }

    #[test]
    fn unusable_configs_are_refused() {
        let none = BrokerConfig { listen: None, ..Default::default() };
        assert!(none.check().unwrap_err().to_string().contains("needs `listen`"));
        let tls = BrokerConfig {
            tls: Some(TlsListener {
                listen: "127.0.0.1:8883".parse().unwrap(),
                cert: "/nonexistent.pem".into(),
                key: "/nonexistent.key".into(),
            }),
            ..Default::default()
        };
        assert!(tls.check().unwrap_err().to_string().contains("/nonexistent.pem"));
        assert!(toml::from_str::<BrokerConfig>("lisen = \"x\"").is_err());
    }
}
