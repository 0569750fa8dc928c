//! `drover flash` for one board and for many: copy the package and the board's provisioning
//! over SSH, run [`install::script`] there, then wait until the agent is online on the broker.
//! Boards are flashed by a few workers at once; each ends in an [`Outcome`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drover_runtime::agent::AgentConfig;
use drover_wire::topic::Name;

use super::hosts::Host;
use super::install::{self, Mode};
use super::provision;
use super::ssh::{Ssh, SshError};
use super::watch::Watcher;

/// How every board of a run is flashed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `.deb`.
    pub package: PathBuf,
    /// Systemd or a throwaway root.
    pub mode: Mode,
    /// Extra ssh options.
    pub ssh_opts: Vec<String>,
    /// How long a board may take to come online after its install.
    pub online_timeout: Duration,
    /// Boards flashed at once.
    pub parallel: usize,
}

/// Why a board was not flashed.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The provisioning directory is incomplete or wrong.
    #[error("provisioning {dir}: {reason}")]
    Provision {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A local file could not be staged.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// An SSH step failed.
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// What became of one board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Result {
    /// Installed, started, and online on the broker.
    Online,
    /// Installed and started (the online check was skipped).
    Installed,
    /// Installed and started, but not online within the timeout.
    NotOnline,
    /// A step failed.
    Failed(String),
}

/// One board's line of the result table.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The board.
    pub destination: String,
    /// Its device id (from its provisioning), if it could be read.
    pub device: Option<String>,
    /// What happened.
    pub result: Result,
    /// How long it took.
    pub took: Duration,
}

/// The device id a provisioning directory is for (its `agent.toml`), checked.
pub fn device_of(dir: &Path) -> std::result::Result<Name, FlashError> {
    let bad = |reason: String| FlashError::Provision { dir: dir.to_path_buf(), reason };
    for f in [provision::CONFIG, provision::ROOT] {
        if !dir.join(f).is_file() {
            return Err(bad(format!("no {f} (make it with `drover provision`)")));
        }
    }
    let cfg = AgentConfig::load(&dir.join(provision::CONFIG)).map_err(|e| bad(e.to_string()))?;
    let (device, _) = cfg.names().map_err(|e| bad(e.to_string()))?;
    Ok(device)
}

/// Copies what goes to the board into `staging`: the package, the provisioning (the config
/// rewritten into the root in `Root` mode) and the script.
fn stage(host: &Host, s: &Settings, staging: &Path) -> std::result::Result<Vec<PathBuf>, FlashError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| FlashError::Io { path, error }
    };
    let mut files = Vec::new();
    let deb = staging.join(install::DEB);
    std::fs::copy(&s.package, &deb).map_err(io(&s.package))?;
    files.push(deb);
    for f in provision::FILES {
        let from = host.provision.join(f);
        if !from.exists() {
            continue;
        }
        let to = staging.join(f);
        match (&s.mode, f) {
            (Mode::Root(root), provision::CONFIG) => {
                let text = std::fs::read_to_string(&from).map_err(io(&from))?;
                let rooted = install::rooted_config(&text, root)
                    .map_err(|reason| FlashError::Provision { dir: host.provision.clone(), reason })?;
                std::fs::write(&to, rooted).map_err(io(&to))?;
            }
            _ => {
                // std::fs::copy keeps the mode: secrets stay 0600 on the way.
                std::fs::copy(&from, &to).map_err(io(&from))?;
            }
        }
        files.push(to);
    }
    let script = staging.join(install::SCRIPT);
    std::fs::write(&script, install::script(&s.mode)).map_err(io(&script))?;
    files.push(script);
    Ok(files)
}

/// Installs one board: stage, `mktemp -d` there, `scp`, run the script (with `sudo -n`
/// unless logged in as root). The remote directory is removed by the script, or here when
/// the copy failed.
pub fn install_one(host: &Host, s: &Settings) -> std::result::Result<String, FlashError> {
    let staging = tempfile::tempdir().map_err(|error| FlashError::Io { path: "temporary directory".into(), error })?;
    let files = stage(host, s, staging.path())?;
    let ssh = Ssh { destination: host.destination.clone(), opts: s.ssh_opts.clone() };
    let dir = ssh.run("making a private directory", &["mktemp", "-d", "/tmp/drover-flash.XXXXXX"])?;
    let dir = dir.trim().to_string();
    if let Err(e) = ssh.copy(&files, &dir) {
        let _ = ssh.run("cleaning up", &["rm", "-rf", &dir]);
        return Err(e.into());
    }
    let script = format!("{dir}/{}", install::SCRIPT);
    let out = ssh.run(
        "installing",
        &[
            "sh",
            "-c",
            r#"if [ "$(id -u)" -eq 0 ]; then exec sh "$1"; else exec sudo -n sh "$1"; fi"#,
            "drover-flash",
            &script,
        ],
    )?;
    Ok(out.lines().last().unwrap_or("installed").to_string())
}

/// Flashes every host, `s.parallel` at a time; with a `watcher`, each waits to be online.
pub fn flash_all(
    hosts: &[Host],
    s: &Settings,
    watcher: Option<&Watcher>,
    report: &(dyn Fn(&Outcome) + Sync),
) -> Vec<Outcome> {
    let queue = Mutex::new(hosts.iter().cloned().collect::<VecDeque<_>>());
    let done = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..s.parallel.clamp(1, hosts.len().max(1)) {
            scope.spawn(|| {
                while let Some(host) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
                    let o = flash_one(&host, s, watcher);
                    report(&o);
                    if let Ok(mut d) = done.lock() {
                        d.push(o);
                    }
                }
            });
        }
    });
    let mut all = done.into_inner().unwrap_or_default();
    all.sort_by_key(|o| hosts.iter().position(|h| h.destination == o.destination));
    all
}

fn flash_one(host: &Host, s: &Settings, watcher: Option<&Watcher>) -> Outcome {
    let start = Instant::now();
    let device = device_of(&host.provision).map(|d| d.as_str().to_string());
    let result = match &device {
        Err(e) => Result::Failed(e.to_string()),
        Ok(device) => match install_one(host, s) {
            Err(e) => Result::Failed(e.to_string()),
            Ok(said) => {
                log::info!("{}: {said}", host.destination);
                match watcher {
                    None => Result::Installed,
                    Some(w) if w.wait_online(device, Instant::now() + s.online_timeout) => Result::Online,
                    Some(_) => Result::NotOnline,
                }
            }
        },
    };
    Outcome { destination: host.destination.clone(), device: device.ok(), result, took: start.elapsed() }
}

/// The result table, one line per board.
pub fn table(outcomes: &[Outcome]) -> String {
    let w = outcomes.iter().map(|o| o.destination.len()).max().unwrap_or(4).max(4);
    let d = outcomes.iter().map(|o| o.device.as_deref().map_or(1, str::len)).max().unwrap_or(6).max(6);
    let mut t = format!("{:<w$}  {:<d$}  {:<10}  {:>6}  DETAIL\n", "HOST", "DEVICE", "RESULT", "TIME");
    for o in outcomes {
        let (r, detail) = match &o.result {
            Result::Online => ("online", ""),
            Result::Installed => ("installed", "not waited for (--no-wait)"),
            Result::NotOnline => ("not-online", "installed and started, but no status on the broker in time"),
            Result::Failed(e) => ("FAILED", e.as_str()),
        };
        t += &format!(
            "{:<w$}  {:<d$}  {:<10}  {:>5.1}s  {detail}\n",
            o.destination,
            o.device.as_deref().unwrap_or("-"),
            r,
            o.took.as_secs_f64()
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_board_and_why_it_failed() {
        let o = |dest: &str, device: Option<&str>, result| Outcome {
            destination: dest.into(),
            device: device.map(str::to_string),
            result,
            took: Duration::from_millis(1500),
        };
        let t = table(&[
            o("pi@10.0.0.7", Some("pi-07"), Result::Online),
            o("pi@10.0.0.8", None, Result::Failed("provisioning x: no agent.toml".into())),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("HOST"));
        assert!(lines[1].contains("pi-07") && lines[1].contains("online") && lines[1].contains("1.5s"));
        assert!(lines[2].contains("FAILED") && lines[2].ends_with("no agent.toml"));
    }

    #[test]
    fn an_incomplete_provisioning_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = device_of(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no agent.toml"), "{e}");
    }
}
