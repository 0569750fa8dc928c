//! How the agent and the operator tools reach the broker: address, credentials, TLS (rustls,
//! server-authenticated, optional client certificate) and the packet size bundles need.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use serde::Deserialize;

/// Largest MQTT packet either side accepts by default: room for a 64 KiB chunk and its header.
/// rumqttc's own default (10 KiB) is too small for bundles, so it is always set explicitly.
pub const DEFAULT_MAX_PACKET: usize = 128 * 1024;

/// Where and how to connect (the `[broker]` table of the agent's config, or the CLI's flags).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// Host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// Port (1883 plain, 8883 TLS by convention).
    #[serde(default = "default_port")]
    pub port: u16,
    /// User name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (prefer `password_file` on a board).
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificate(s), PEM: turns TLS on and authenticates the broker.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain, PEM, for brokers that authenticate devices by certificate.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key, PEM.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Largest packet sent or received, bytes.
    #[serde(default = "default_max_packet")]
    pub max_packet: usize,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    1883
}
fn default_max_packet() -> usize {
    DEFAULT_MAX_PACKET
}
fn default_keep_alive() -> u64 {
    30
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            host: default_host(),
            port: default_port(),
            username: None,
            password: None,
            password_file: None,
            ca: None,
            client_cert: None,
            client_key: None,
            max_packet: DEFAULT_MAX_PACKET,
            keep_alive_s: 30,
        }
    }
}

/// Why connection settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A certificate, key or password file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS settings are inconsistent.
    #[error("TLS: {0}")]
    Tls(String),
}

fn file_err(path: &Path) -> impl FnOnce(String) -> ConnectError + '_ {
    move |reason| ConnectError::File { path: path.to_path_buf(), reason }
}

impl BrokerSettings {
    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The rumqttc options for client `client_id`. A persistent session (`clean` false) keeps the
    /// device's subscriptions and queued commands at the broker while it is offline.
    pub fn mqtt_options(&self, client_id: &str, clean: bool) -> Result<MqttOptions, ConnectError> {
        let mut o = MqttOptions::new(client_id, &self.host, self.port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive_s.max(5)));
        o.set_max_packet_size(self.max_packet, self.max_packet);
        o.set_clean_session(clean);
        o.set_request_channel_capacity(64);
        o.set_inflight(32);
        let password = match (&self.password, &self.password_file) {
            (_, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| file_err(path)(e.to_string()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
            (Some(p), None) => Some(p.clone()),
            (None, None) => None,
        };
        if let Some(user) = &self.username {
            o.set_credentials(user, password.unwrap_or_default());
        }
        if let Some(tls) = self.tls_config()? {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))));
        }
        Ok(o)
    }

    fn tls_config(&self) -> Result<Option<rustls::ClientConfig>, ConnectError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let Some(ca) = &self.ca else {
            if self.client_cert.is_some() {
                return Err(ConnectError::Tls("a client certificate needs `ca` (TLS) as well".into()));
            }
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| file_err(ca)(e.to_string()))?;
        if certs.is_empty() {
            return Err(file_err(ca)("no PEM certificate in the file".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| file_err(ca)(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<_, _>>())
                    .map_err(|e| file_err(cert)(e.to_string()))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key)(e.to_string()))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| ConnectError::Tls(e.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(ConnectError::Tls("client_cert and client_key go together".into())),
        };
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_raise_the_packet_limit_for_chunks() {
        let o = BrokerSettings::default().mqtt_options("pi-1", false).unwrap();
        assert_eq!(o.max_packet_size(), DEFAULT_MAX_PACKET);
        assert!(!o.clean_session());
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1883));
    }

    #[test]
    fn unreadable_or_inconsistent_tls_settings_are_named() {
        let s = BrokerSettings { ca: Some("/nonexistent/ca.pem".into()), ..Default::default() };
        let e = s.mqtt_options("x", true).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let s = BrokerSettings { client_cert: Some("c.pem".into()), ..Default::default() };
        assert!(s.mqtt_options("x", true).unwrap_err().to_string().contains("needs `ca`"));
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let s = BrokerSettings { ca: Some(ca), ..Default::default() };
        assert!(s.mqtt_options("x", true).unwrap_err().to_string().contains("no PEM certificate"));
    }
}
