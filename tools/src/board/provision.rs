//! A device's provisioning directory: everything `drover flash` puts on one board and nothing
//! it shares with another. `agent.toml` (who it is, its groups, how it reaches the broker),
//! `root.json` (the trust root for bundles), the broker's CA, and its credentials: a client
//! certificate signed by the fleet CA (`client.pem`, `client.key` 0600) and/or a password
//! (`password` 0600). The config names the files where they will be on the board
//! (`/etc/drover/…`), and is checked by parsing it as the agent does.

use std::path::{Path, PathBuf};

use drover_runtime::agent::AgentConfig;

use super::pki::{Ca, PkiError};
use super::secret::{self, Mode, WriteError};
use super::unit::STATE_DIR;

/// The agent's configuration in a provisioning directory.
pub const CONFIG: &str = "agent.toml";
/// The trust root in a provisioning directory.
pub const ROOT: &str = "root.json";
/// The broker's CA certificate.
pub const BROKER_CA: &str = "ca.pem";
/// The device's client certificate.
pub const CLIENT_CERT: &str = "client.pem";
/// The device's client key (secret).
pub const CLIENT_KEY: &str = "client.key";
/// The device's broker password (secret).
pub const PASSWORD: &str = "password";
/// Where the files go on the board.
pub const ETC: &str = "/etc/drover";
/// The provisioning files that are secrets (0600 here, 0640 root:drover on the board).
pub const SECRETS: [&str; 2] = [CLIENT_KEY, PASSWORD];
/// Every file a provisioning directory may hold, in install order.
pub const FILES: [&str; 6] = [CONFIG, ROOT, BROKER_CA, CLIENT_CERT, CLIENT_KEY, PASSWORD];

/// Where the device's broker is, as `--broker` says it: `mqtt://host[:port]`,
/// `mqtts://host[:port]` (TLS) or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address, as the device resolves it.
    pub host: String,
    /// Port (1883, or 8883 with TLS, unless given).
    pub port: u16,
    /// TLS.
    pub tls: bool,
}

impl std::str::FromStr for BrokerUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<BrokerUrl, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else if s.contains("://") {
            return Err(format!("'{s}': the scheme must be mqtt:// or mqtts://"));
        } else {
            (false, s)
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && !p.contains(']') => {
                (h, p.parse().map_err(|_| format!("'{s}': bad port '{p}'"))?)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("'{s}': expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"));
        }
        Ok(BrokerUrl { host: host.to_string(), port, tls })
    }
}

/// How the device proves who it is to the broker.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Issue a client certificate signed by this CA (its common name is the device id).
    pub ca: Option<PathBuf>,
    /// The user name (the device id when a password is given without one).
    pub username: Option<String>,
    /// A file whose first line is the device's password (copied, 0600).
    pub password_file: Option<PathBuf>,
}

/// What `drover provision` is asked for.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The device id.
    pub device: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// Its labels, `key=value`.
    pub labels: Vec<(String, String)>,
    /// The broker.
    pub broker: BrokerUrl,
    /// The CA certificate that authenticates the broker (TLS); the fleet CA's when absent.
    pub broker_ca: Option<PathBuf>,
    /// The fleet's `root.json`.
    pub root: PathBuf,
    /// The credentials.
    pub credentials: Credentials,
    /// The local API's `listen` (`127.0.0.1:8000`, `unix:/run/drover/api.sock`, `off`).
    pub api: String,
    /// Client certificate lifetime, days.
    pub days: u32,
    /// Replace an existing provisioning.
    pub force: bool,
}

/// Why a device could not be provisioned.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A file could not be read.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The CA failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The inputs do not make a configuration the agent accepts.
    #[error("{0}")]
    Invalid(String),
}

/// A TOML basic string (JSON's string escapes are TOML's).
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The device's `agent.toml` (pure). `files` says which provisioning files exist.
pub fn config_text(spec: &Spec, has_cert: bool, has_password: bool, has_broker_ca: bool) -> String {
    let etc = |f: &str| quote(&format!("{ETC}/{f}"));
    let groups: Vec<String> = spec.groups.iter().map(|g| quote(g)).collect();
    let mut t = format!(
        "# Provisioned by `drover provision` for {device}; installed by `drover flash` as /etc/drover/agent.toml.\n\
         device = {d}\ngroups = [{groups}]\ndata_dir = {data}\n",
        device = spec.device,
        d = quote(&spec.device),
        groups = groups.join(", "),
        data = quote(STATE_DIR),
    );
    t += &format!("\n[broker]\nhost = {}\nport = {}\n", quote(&spec.broker.host), spec.broker.port);
    if has_broker_ca {
        t += &format!("ca = {}\n", etc(BROKER_CA));
    }
    if has_cert {
        t += &format!("client_cert = {}\nclient_key = {}\n", etc(CLIENT_CERT), etc(CLIENT_KEY));
    }
    if has_password {
        let user = spec.credentials.username.as_deref().unwrap_or(&spec.device);
        t += &format!("username = {}\npassword_file = {}\n", quote(user), etc(PASSWORD));
    }
    t += &format!("\n[api]\nlisten = {}\n", quote(&spec.api));
    if !spec.labels.is_empty() {
        t += "\n[labels]\n";
        for (k, v) in &spec.labels {
            t += &format!("{} = {}\n", quote(k), quote(v));
        }
    }
    t
}

/// Writes the provisioning directory `out` for `spec` at `now_unix`; returns the files
/// written. Nothing is written when the inputs are wrong; existing files are kept unless
/// `spec.force`.
pub fn provision(spec: &Spec, out: &Path, now_unix: u64) -> Result<Vec<PathBuf>, ProvisionError> {
    let read =
        |path: &Path| std::fs::read(path).map_err(|error| ProvisionError::Read { path: path.to_path_buf(), error });
    if spec.broker.tls && spec.broker_ca.is_none() && spec.credentials.ca.is_none() {
        return Err(ProvisionError::Invalid(format!(
            "{}:{} is TLS (mqtts://): give --broker-ca PEM or --ca DIR (the fleet CA) to authenticate it",
            spec.broker.host, spec.broker.port
        )));
    }
    if !spec.broker.tls && spec.credentials.ca.is_some() {
        return Err(ProvisionError::Invalid(
            "a client certificate needs a TLS broker: use --broker mqtts://HOST[:PORT]".into(),
        ));
    }
    let ca = spec.credentials.ca.as_deref().map(Ca::load).transpose()?;
    let broker_ca = match (&spec.broker_ca, &ca) {
        (Some(p), _) => Some(read(p)?),
        (None, Some(ca)) if spec.broker.tls => Some(ca.cert_pem.clone().into_bytes()),
        _ => None,
    };
    let password = match &spec.credentials.password_file {
        Some(p) => {
            let text = read(p)?;
            let line = text.split(|b| *b == b'\n').next().unwrap_or_default().to_vec();
            if line.is_empty() {
                return Err(ProvisionError::Invalid(format!(
                    "{}: the first line (the password) is empty",
                    p.display()
                )));
            }
            Some(line)
        }
        None => None,
    };
    let root = read(&spec.root)?;
    serde_json::from_slice::<drover_wire::trust::SignedRoot>(&root)
        .map_err(|e| ProvisionError::Invalid(format!("{} is not a root document: {e}", spec.root.display())))?;
    let text = config_text(spec, ca.is_some(), password.is_some(), broker_ca.is_some());
    let cfg = AgentConfig::parse(&text).map_err(|e| ProvisionError::Invalid(e.to_string()))?;
    cfg.names().map_err(|e| ProvisionError::Invalid(e.to_string()))?;
    cfg.labels().map_err(|e| ProvisionError::Invalid(e.to_string()))?;
    let issued = ca.as_ref().map(|ca| ca.issue_client(&spec.device, now_unix, spec.days)).transpose()?;

    std::fs::create_dir_all(out).map_err(|error| ProvisionError::Read { path: out.to_path_buf(), error })?;
    if !spec.force {
        // All or nothing: refuse before writing anything if any file is there already.
        if let Some(f) = FILES.iter().map(|f| out.join(f)).find(|p| p.symlink_metadata().is_ok()) {
            return Err(WriteError::Exists(f).into());
        }
    }
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: &[u8], mode: Mode| -> Result<(), ProvisionError> {
        let p = out.join(name);
        secret::write(&p, bytes, mode, spec.force)?;
        written.push(p);
        Ok(())
    };
    if let Some(i) = &issued {
        put(CLIENT_KEY, i.key_pem.as_bytes(), Mode::Secret)?;
        put(CLIENT_CERT, i.cert_pem.as_bytes(), Mode::Public)?;
    }
    if let Some(pw) = &password {
        put(PASSWORD, pw, Mode::Secret)?;
    }
    if let Some(pem) = &broker_ca {
        put(BROKER_CA, pem, Mode::Public)?;
    }
    put(ROOT, &root, Mode::Public)?;
    put(CONFIG, text.as_bytes(), Mode::Public)?;
    if spec.force {
        // A re-provisioning without a password or certificate must not leave the old one.
        for f in SECRETS.iter().chain([&CLIENT_CERT, &BROKER_CA]) {
            let p = out.join(f);
            if !written.contains(&p) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn broker_urls_take_a_scheme_and_default_ports() {
        let u: BrokerUrl = "mqtts://broker.lan".parse().unwrap();
        assert_eq!(u, BrokerUrl { host: "broker.lan".into(), port: 8883, tls: true });
        let u: BrokerUrl = "mqtt://10.0.0.2:1884".parse().unwrap();
        assert_eq!(u, BrokerUrl { host: "10.0.0.2".into(), port: 1884, tls: false });
        let u: BrokerUrl = "127.0.0.1:1883".parse().unwrap();
        assert!(!u.tls);
        let u: BrokerUrl = "mqtt://[::1]:1883".parse().unwrap();
        assert_eq!(u.host, "::1");
        assert!("http://x".parse::<BrokerUrl>().is_err());
        assert!("mqtt://x:port".parse::<BrokerUrl>().is_err());
        assert!("mqtt://".parse::<BrokerUrl>().is_err());
    }

    fn spec(dir: &Path, tls: bool) -> Spec {
        let root = dir.join("root.json");
        let key = crate::keys::generate().unwrap();
        let doc = crate::trust_docs::root_init(&key, 1_800_000_000);
        std::fs::write(&root, serde_json::to_string(&doc).unwrap()).unwrap();
        Spec {
            device: "pi-07".into(),
            groups: vec!["lab".into(), "north".into()],
            labels: vec![("site".into(), "berlin \"east\"".into())],
            broker: BrokerUrl { host: "broker.lan".into(), port: if tls { 8883 } else { 1883 }, tls },
            broker_ca: None,
            root,
            credentials: Credentials::default(),
            api: "127.0.0.1:8000".into(),
            days: 365,
            force: false,
        }
    }

    #[test]
    fn a_device_gets_a_certificate_and_a_config_that_points_at_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        crate::board::pki::init(&ca_dir, "fleet", 1_780_000_000, 3650, false).unwrap();
        let mut s = spec(dir.path(), true);
        s.credentials.ca = Some(ca_dir.clone());
        let out = dir.path().join("pi-07");
        provision(&s, &out, 1_780_000_000).unwrap();
        let cfg = AgentConfig::load(&out.join(CONFIG)).unwrap();
        assert_eq!(cfg.device, "pi-07");
        assert_eq!(cfg.groups, ["lab", "north"]);
        assert_eq!(cfg.labels["site"], "berlin \"east\"");
        assert_eq!(cfg.broker.port, 8883);
        assert_eq!(cfg.broker.ca.as_deref(), Some(Path::new("/etc/drover/ca.pem")));
        assert_eq!(cfg.broker.client_key.as_deref(), Some(Path::new("/etc/drover/client.key")));
        let mode = |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(CLIENT_KEY), 0o600);
        assert_eq!(mode(CLIENT_CERT), 0o644);
        assert_eq!(
            std::fs::read_to_string(out.join(BROKER_CA)).unwrap(),
            std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap()
        );
        let key_before = std::fs::read(out.join(CLIENT_KEY)).unwrap();
        let again = provision(&s, &out, 1_780_000_000).unwrap_err();
        assert!(again.to_string().contains("exists (use --force"), "{again}");
        assert_eq!(std::fs::read(out.join(CLIENT_KEY)).unwrap(), key_before, "the key is kept");
        s.force = true;
        provision(&s, &out, 1_780_000_000).unwrap();
        assert_ne!(std::fs::read(out.join(CLIENT_KEY)).unwrap(), key_before, "--force issues a new key");
    }

    #[test]
    fn a_password_is_copied_0600_and_named_in_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), false);
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\nignored").unwrap();
        s.credentials.password_file = Some(pw);
        let out = dir.path().join("out");
        provision(&s, &out, 0).unwrap();
        assert_eq!(std::fs::read(out.join(PASSWORD)).unwrap(), b"s3cret");
        assert_eq!(std::fs::metadata(out.join(PASSWORD)).unwrap().permissions().mode() & 0o777, 0o600);
        let cfg = AgentConfig::load(&out.join(CONFIG)).unwrap();
        assert_eq!(cfg.broker.username.as_deref(), Some("pi-07"));
        assert!(!std::fs::read_to_string(out.join(CONFIG)).unwrap().contains("s3cret"));
    }

    #[test]
    fn wrong_inputs_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut s = spec(dir.path(), true);
        assert!(provision(&s, &out, 0).unwrap_err().to_string().contains("--broker-ca"));
        s = spec(dir.path(), false);
        s.device = "pi/07".into();
        assert!(provision(&s, &out, 0).unwrap_err().to_string().contains("pi/07"));
        s = spec(dir.path(), false);
        s.root = dir.path().join("pw-not-a-root");
        std::fs::write(&s.root, "{}").unwrap();
        assert!(provision(&s, &out, 0).unwrap_err().to_string().contains("not a root document"));
        assert!(!out.join(CONFIG).exists());
    }
}
