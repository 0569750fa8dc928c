//! The broker flags every MQTT verb of `drover` shares.

use std::path::PathBuf;

use drover_runtime::link::connect::DEFAULT_MAX_PACKET;
use drover_runtime::link::{BrokerSettings, PayloadFormat};

/// How to reach the broker.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// The broker: HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS, needs --ca).
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
        let (host, port) = parse_address(&self.broker, self.ca.is_some())?;
        Ok(BrokerSettings {
            host,
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

/// Host and port of `--broker`. Users copy broker URLs from other tools' configs, so the
/// `mqtt://` and `mqtts://` forms work too (with the scheme's usual port), instead of failing
/// later as an unknown host called "mqtt".
fn parse_address(broker: &str, tls: bool) -> anyhow::Result<(String, u16)> {
    let bad = |why: &str| anyhow::anyhow!("--broker '{broker}': {why}");
    let (rest, default_port) = match broker.split_once("://") {
        None => (broker, None),
        Some(("mqtt" | "tcp", rest)) => (rest, Some(1883)),
        Some(("mqtts" | "ssl", rest)) if tls => (rest, Some(8883)),
        Some(("mqtts" | "ssl", _)) => return Err(bad("a TLS broker needs --ca (the CA certificate to trust)")),
        Some((scheme, _)) => return Err(bad(&format!("unknown scheme '{scheme}' (mqtt:// or mqtts://)"))),
    };
    let rest = rest.trim_end_matches('/');
    // `[::1]:1883` or `host:1883`; a bare host only after a scheme.
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (host, after.strip_prefix(':'))
        }
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad(&format!("bad port '{p}'")))?,
        None => default_port.ok_or_else(|| bad("expected HOST:PORT"))?,
    };
    if host.is_empty() || (host.contains(['/', ':']) && !rest.starts_with('[')) {
        return Err(bad("expected HOST:PORT"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::parse_address;

    #[test]
    fn host_port_and_mqtt_urls_parse_and_bad_ones_are_named() {
        let ok = |s: &str, tls: bool| parse_address(s, tls).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("127.0.0.1:1883", false), ("127.0.0.1".into(), 1883));
        assert_eq!(ok("[::1]:1884", false), ("::1".into(), 1884));
        assert_eq!(ok("mqtt://broker.lan", false), ("broker.lan".into(), 1883));
        assert_eq!(ok("mqtt://broker.lan:2000/", false), ("broker.lan".into(), 2000));
        assert_eq!(ok("mqtts://broker.lan", true), ("broker.lan".into(), 8883));
        assert_eq!(ok("mqtt://[::1]", false), ("::1".into(), 1883));
        for (s, tls, why) in [
            ("broker.lan", false, "HOST:PORT"),
            ("mqtts://broker.lan", false, "--ca"),
            ("http://broker.lan:80", false, "unknown scheme 'http'"),
            ("mqtt://broker.lan:x", false, "bad port"),
            ("mqtt://:1883", false, "HOST:PORT"),
            ("mqtt://a/b:1883", false, "HOST:PORT"),
        ] {
            let e = parse_address(s, tls).expect_err(s).to_string();
            assert!(e.contains(why) && e.contains(s), "{s}: {e}");
        }
    }
}
