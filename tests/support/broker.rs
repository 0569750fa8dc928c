//! MQTT brokers for end-to-end tests: the embedded one (`drover broker`, the real binary) and
//! Mosquitto from Debian, each started on a free loopback port, killable and restartable on the
//! same port, and stopped when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tools::{require_tool, workspace_bin};

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `drover broker` (rumqttd).
    Embedded,
    /// Debian's Mosquitto.
    Mosquitto,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// TLS material for a broker and its clients, made with rcgen.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The broker's certificate (for 127.0.0.1 and localhost) and key.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA, and its key.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl Pki {
    /// Makes a CA, a server certificate and a client certificate in `dir` (world-readable, as
    /// Mosquitto drops root privileges before reading them).
    pub fn make(dir: &Path) -> Pki {
        Pki::make_for(dir, &["localhost"], true)
    }

    /// [`Pki::make`] with a server certificate for `names` (and 127.0.0.1 when `loopback_ip`).
    pub fn make_for(dir: &Path, names: &[&str], loopback_ip: bool) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        std::fs::create_dir_all(dir).expect("pki dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "drover test CA");
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let mut server =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("server params");
        if loopback_ip {
            server.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        }
        let server_key = KeyPair::generate().expect("server key");
        let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");
        let mut client = CertificateParams::new(vec!["pi-1".to_string()]).expect("client params");
        client.distinguished_name.push(rcgen::DnType::CommonName, "pi-1");
        let client_key = KeyPair::generate().expect("client key");
        let client_cert = client.signed_by(&client_key, &issuer).expect("client cert");
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write pem");
            set_mode(&p, 0o644);
            p
        };
        set_mode(dir, 0o755);
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.pem", client_cert.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// What a broker is started with.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Users and passwords (anonymous when empty).
    pub users: Vec<(String, String)>,
    /// A TLS listener with this PKI (the plain listener stays on `port`).
    pub tls: Option<(Pki, u16)>,
    /// Mosquitto only: require a client certificate on the TLS listener.
    pub require_client_cert: bool,
    /// Mosquitto only: more lines for its configuration (limits a large fleet needs raised),
    /// after the listeners; with `allow_anonymous` in them, they replace `users`.
    pub extra: String,
    /// `RUST_LOG` for the embedded broker (`drover broker`); unset: the test's own.
    pub rust_log: Option<String>,
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    /// Which.
    pub kind: Kind,
    /// Plain listener port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    opts: Options,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker of `kind` on a free port; `None` when Mosquitto is missing outside CI.
    pub fn start(kind: Kind, opts: Options) -> Option<Broker> {
        if kind == Kind::Mosquitto && !mosquitto_path().is_file() {
            require_tool("mosquitto", "mosquitto")?;
        }
        let dir = tempfile::tempdir().expect("broker dir");
        set_mode(dir.path(), 0o755);
        let mut b = Broker { kind, port: free_port(), dir, opts, child: None };
        b.restart();
        Some(b)
    }

    /// The address clients use.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&self) -> Child {
        let log = std::fs::File::create(self.dir.path().join("broker.log")).expect("log");
        let mut cmd = match self.kind {
            Kind::Embedded => {
                let mut text = format!("listen = \"127.0.0.1:{}\"\n", self.port);
                if let Some((pki, port)) = &self.opts.tls {
                    text += &format!(
                        "[tls]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                        pki.server_cert.display(),
                        pki.server_key.display()
                    );
                }
                if !self.opts.users.is_empty() {
                    text += "[users]\n";
                    for (u, p) in &self.opts.users {
                        text += &format!("{u} = \"{p}\"\n");
                    }
                }
                let conf = self.dir.path().join("broker.toml");
                std::fs::write(&conf, text).expect("broker.toml");
                let mut c = Command::new(workspace_bin("drover"));
                c.arg("broker").arg("--config").arg(conf);
                c
            }
            Kind::Mosquitto => {
                let mut text =
                    format!("per_listener_settings false\npersistence false\nlistener {} 127.0.0.1\n", self.port);
                if let Some((pki, port)) = &self.opts.tls {
                    text += &format!(
                        "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                        pki.ca.display(),
                        pki.server_cert.display(),
                        pki.server_key.display(),
                        self.opts.require_client_cert
                    );
                }
                text += &self.opts.extra;
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                if self.opts.extra.contains("allow_anonymous") {
                    // The test brings its own authentication (`drover acl`'s files).
                } else if self.opts.users.is_empty() {
                    text += "allow_anonymous true\n";
                } else {
                    let pw = self.dir.path().join("passwd");
                    let _ = std::fs::remove_file(&pw);
                    for (i, (u, p)) in self.opts.users.iter().enumerate() {
                        let mut c = Command::new("mosquitto_passwd");
                        if i == 0 {
                            c.arg("-c");
                        }
                        let st = c.arg("-b").arg(&pw).args([u, p]).status().expect("mosquitto_passwd");
                        assert!(st.success(), "mosquitto_passwd failed");
                    }
                    set_mode(&pw, 0o644);
                    text += &format!("allow_anonymous false\npassword_file {}\n", pw.display());
                }
                let conf = self.dir.path().join("mosquitto.conf");
                std::fs::write(&conf, text).expect("mosquitto.conf");
                set_mode(&conf, 0o644);
                let mut c = Command::new(mosquitto_path());
                c.arg("-c").arg(conf);
                c
            }
        };
        let err = log.try_clone().expect("log");
        if let Some(filter) = &self.opts.rust_log {
            cmd.env("RUST_LOG", filter);
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(err).spawn().expect("start the broker")
    }

    /// Kills the broker at once (SIGKILL: no goodbye to anyone).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Mosquitto only: SIGHUP, after which it reads its password and ACL files again.
    pub fn reload(&self) {
        let child = self.child.as_ref().expect("the broker runs");
        let status = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().expect("kill -HUP");
        assert!(status.success(), "SIGHUP the broker");
    }

    /// Starts it again on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(self.spawn());
        let deadline = Instant::now() + Duration::from_secs(15);
        let addr: SocketAddr = self.address().parse().expect("addr");
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "{:?} did not start: {}", self.kind, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The broker's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn mosquitto_path() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mosquitto"))
}
