//! The broker flags every MQTT verb of `drover` shares.

use std::path::PathBuf;

use drover_runtime::link::connect::DEFAULT_MAX_PACKET;
use drover_runtime::link::{BrokerSettings, PayloadFormat};

/// How to reach the broker.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// The broker, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883", env = "DROVER_BROKER")]
    pub broker: String,
    /// CA certificate (PEM): connect with TLS and authenticate the broker.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that require one.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// User name.
    #[arg(long, env = "DROVER_USERNAME")]
    pub username: Option<String>,
    /// A file holding the password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Largest MQTT packet, bytes (the broker's limit must allow it).
    #[arg(long, default_value_t = DEFAULT_MAX_PACKET)]
    pub max_packet: usize,
    /// Payload encoding of what this command publishes.
    #[arg(long, value_enum, default_value_t = PayloadFormat::Postcard)]
    pub payload: PayloadFormat,
}

impl BrokerArgs {
    /// The connection settings.
    pub fn settings(&self) -> anyhow::Result<BrokerSettings> {
        let (host, port) = self
            .broker
            .rsplit_once(':')
            .ok_or_else(|| anyhow::anyhow!("--broker '{}': expected HOST:PORT", self.broker))?;
        let port: u16 = port.parse().map_err(|_| anyhow::anyhow!("--broker '{}': bad port", self.broker))?;
        Ok(BrokerSettings {
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            username: self.username.clone(),
            password_file: self.password_file.clone(),
            ca: self.ca.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            max_packet: self.max_packet,
            ..BrokerSettings::default()
        })
    }
}
