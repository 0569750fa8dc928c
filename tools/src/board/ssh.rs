//! The system's `ssh` and `scp`, as an operator would type them: the same keys, agent,
//! `~/.ssh/config` aliases and jump hosts. `--ssh-opts` is passed to both; `-p PORT` becomes
//! scp's `-P PORT`. BatchMode is on: a board that asks for a password fails instead of
//! hanging a run over a hundred boards.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::install::sh_quote;

/// Why a remote step failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// `ssh`/`scp` could not be started.
    #[error("{tool}: {error} (apt-get install openssh-client)")]
    Spawn {
        /// Which.
        tool: &'static str,
        /// The error.
        error: std::io::Error,
    },
    /// The remote command or the copy failed.
    #[error("{what} on {destination} failed ({status}): {stderr}")]
    Failed {
        /// The step.
        what: String,
        /// The board.
        destination: String,
        /// The exit status.
        status: std::process::ExitStatus,
        /// The last lines of its standard error.
        stderr: String,
    },
}

/// One board reached over SSH.
#[derive(Debug, Clone)]
pub struct Ssh {
    /// `USER@HOST`, `HOST` or an alias.
    pub destination: String,
    /// Extra options for ssh (and, translated, scp).
    pub opts: Vec<String>,
}

/// The last lines of a tool's standard error.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

/// ssh's options as scp takes them (`-p N` → `-P N`).
pub fn scp_opts(opts: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < opts.len() {
        match opts[i].as_str() {
            "-p" => out.push("-P".to_string()),
            o if o.starts_with("-p") && o.len() > 2 && o[2..].bytes().all(|b| b.is_ascii_digit()) => {
                out.push(format!("-P{}", &o[2..]));
            }
            o => out.push(o.to_string()),
        }
        i += 1;
    }
    out
}

impl Ssh {
    fn check(&self, what: &str, out: Output) -> Result<Vec<u8>, SshError> {
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(SshError::Failed {
                what: what.to_string(),
                destination: self.destination.clone(),
                status: out.status,
                stderr: tail(&out.stderr),
            })
        }
    }

    /// Runs `words` (each quoted for the remote shell) on the board; returns its standard
    /// output.
    pub fn run(&self, what: &str, words: &[&str]) -> Result<String, SshError> {
        let remote: Vec<String> = words.iter().map(|w| sh_quote(w)).collect();
        log::debug!("ssh {}: {what}", self.destination);
        let out = Command::new("ssh")
            .args(["-o", "BatchMode=yes"])
            .args(&self.opts)
            .arg("--")
            .arg(&self.destination)
            .arg(remote.join(" "))
            .stdin(Stdio::null())
            .output()
            .map_err(|error| SshError::Spawn { tool: "ssh", error })?;
        self.check(what, out).map(|o| String::from_utf8_lossy(&o).into_owned())
    }

    /// Copies `files` into `remote_dir` on the board.
    pub fn copy(&self, files: &[PathBuf], remote_dir: &str) -> Result<(), SshError> {
        log::debug!("scp {} file(s) to {}:{remote_dir}", files.len(), self.destination);
        let out = Command::new("scp")
            .args(["-q", "-o", "BatchMode=yes"])
            .args(scp_opts(&self.opts))
            .arg("--")
            .args(files)
            .arg(format!("{}:{remote_dir}/", self.destination))
            .stdin(Stdio::null())
            .output()
            .map_err(|error| SshError::Spawn { tool: "scp", error })?;
        self.check("copying the package and provisioning", out).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scp_takes_the_port_with_a_capital_p() {
        let opts: Vec<String> = ["-p", "2222", "-i", "key", "-p22", "-o", "Port=1"].map(String::from).to_vec();
        assert_eq!(scp_opts(&opts), ["-P", "2222", "-i", "key", "-P22", "-o", "Port=1"]);
    }

    #[test]
    fn a_missing_host_fails_with_the_step_and_host_named() {
        if std::process::Command::new("ssh").arg("-V").output().is_err() {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "ssh is required in CI: apt-get install openssh-client"
            );
            eprintln!("SKIPPED: no ssh client (apt-get install openssh-client)");
            return;
        }
        // A port nothing listens on: refused at once, no network needed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let ssh = Ssh {
            destination: "nobody@127.0.0.1".into(),
            opts: vec!["-p".into(), port.to_string(), "-o".into(), "ConnectTimeout=5".into()],
        };
        let e = ssh.run("making a directory", &["true"]).unwrap_err().to_string();
        assert!(e.starts_with("making a directory on nobody@127.0.0.1 failed"), "{e}");
    }
}
