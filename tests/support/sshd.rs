//! A real OpenSSH server for the flash tests: Debian's `sshd`, started on a free loopback port
//! with a throwaway host key, a throwaway ed25519 client key as the only authorized key, and
//! its config, keys and pid file in a temporary directory; stopped when dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tools::require_tool;

/// A running sshd.
#[derive(Debug)]
pub struct Sshd {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The client's private key.
    pub client_key: PathBuf,
    dir: tempfile::TempDir,
    child: Child,
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "drover-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(st.success(), "ssh-keygen failed");
}

impl Sshd {
    /// Starts sshd; `None` (skipped) when OpenSSH is missing outside CI.
    pub fn start() -> Option<Sshd> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| require_tool("sshd", "openssh-server"))?;
        require_tool("ssh", "openssh-client")?;
        require_tool("scp", "openssh-client")?;
        require_tool("ssh-keygen", "openssh-client")?;
        let dir = tempfile::tempdir().expect("sshd dir");
        let d = dir.path();
        let (host_key, client_key) = (d.join("host_key"), d.join("client_key"));
        keygen(&host_key);
        keygen(&client_key);
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        // sshd's privilege separation directory (Debian creates it at boot with systemd).
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let sftp = ["/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or("internal-sftp");
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nStrictModes no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nUsePAM no\nPidFile {pid}\nSubsystem sftp {sftp}\n",
            hk = host_key.display(),
            ak = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display(),
        );
        std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
        let log = std::fs::File::create(d.join("sshd.log")).expect("log");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let s = Sshd { port, client_key, dir, child };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start: {}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(s)
    }

    /// The options `ssh` and `scp` need for it (`drover flash --ssh-opts`).
    pub fn opts(&self) -> String {
        format!(
            "-p {} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            self.port,
            self.client_key.display()
        )
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
