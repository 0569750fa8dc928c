//! A real PostgreSQL server for end-to-end tests: the server programs of Debian's
//! `postgresql-15`, a fresh cluster in a temporary directory on a free loopback port (trust
//! authentication for the superuser `drover`), killable and restartable on the same port, and
//! stopped, with every one of its processes, and removed when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::free_port;
use crate::services::until;
use crate::tools::in_ci;

/// Where Debian's `postgresql-15` puts `initdb` and `postgres`: off PATH, as `/usr/bin` only
/// holds the client wrappers.
const DEBIAN_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The superuser `initdb` makes, and the name of the database [`Postgres::start`] makes for it.
pub const USER: &str = "drover";

/// A running PostgreSQL server with its own cluster.
#[derive(Debug)]
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The directory holding `initdb`, `postgres` and (on Debian) the client programs.
    bin: PathBuf,
    /// The uid and gid the server runs as when the tests run as root: PostgreSQL refuses root.
    run_as: Option<(u32, u32)>,
    /// The postmaster itself (no wrapper in between, so a signal reaches it).
    child: Option<Child>,
    /// The cluster (`data/`), the Unix socket and `postgres.log`.
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Makes a cluster, starts the server on a free port, waits until it accepts connections
    /// and makes the database `drover`; `None` when PostgreSQL is missing outside CI.
    pub fn start() -> Option<Postgres> {
        let bin = server_bin_dir()?;
        let run_as = (current_uid() == 0).then(unprivileged_user);
        let dir = temp_dir(run_as.is_some());
        if let Some((uid, gid)) = run_as {
            // initdb makes `data/` inside, and the server its socket: both as that user.
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the postgres dir");
        }
        let mut pg = Postgres { port: free_port(), bin, run_as, child: None, dir };
        pg.init();
        pg.restart();
        pg.create_database(USER);
        Some(pg)
    }

    /// `postgres://drover@127.0.0.1:PORT/drover`.
    pub fn url(&self) -> String {
        self.database_url(USER)
    }

    /// The URL of database `name` on this server (which may not exist yet).
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Makes a new empty database `name` (letters, digits and `_`), so one server can hold
    /// several fleets' databases, and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {name:?}: letters, digits and _ only (it goes into a URL unescaped)"
        );
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.database_url(name)
    }

    /// Runs `sql` with `psql -At` in `db` (a URL, or a database name on this server) and returns
    /// its output without the last newline: one row a line, columns separated by `|`. Panics,
    /// with psql's errors, when the statement fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let url = if db.contains("://") { db.to_string() } else { self.database_url(db) };
        let out = Command::new(self.client("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if !out.status.success() {
            return Err(format!("psql {url} -c {sql:?}: {}", String::from_utf8_lossy(&out.stderr).trim_end()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_string())
    }

    /// Kills the server at once, as a power cut: SIGKILL to the postmaster and to every backend
    /// and worker it had (frozen first, so it forks no new one meanwhile), nothing shut down
    /// cleanly. Returns once none of them is left.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let postmaster = child.id();
        // Backends outlive a killed postmaster until they notice, and one in a commit could
        // still write; a stopped postmaster cannot fork, so this list is complete.
        signal("STOP", &[postmaster]);
        let workers = children(postmaster);
        let _ = child.kill();
        let _ = child.wait();
        signal("KILL", &workers);
        let deadline = Instant::now() + Duration::from_secs(10);
        while workers.iter().any(|&pid| alive(pid)) {
            assert!(Instant::now() < deadline, "PostgreSQL backends {workers:?} outlived SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server (again, after [`Postgres::kill`]: crash recovery) on the same port with
    /// the same cluster, and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self.log_path()).expect("postgres.log");
        let err = log.try_clone().expect("postgres.log");
        let child = self
            .server_command("postgres")
            .arg("-D")
            .arg(self.data())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            // Durable against a killed server (the page cache keeps every write) but not against
            // a power cut of the machine, which a test never makes. synchronous_commit stays on:
            // a commit acknowledged before a `kill` must be there after `restart`.
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off"])
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        until(Duration::from_secs(30), "PostgreSQL to accept connections", || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("postgres exited ({status}):\n{}", self.log());
            }
            self.ready().map_err(|why| format!("{why}\n--- postgres.log:\n{}", self.log()))
        });
    }

    /// Serves TLS with `cert` and `key` (PEM) and refuses TCP connections without it (only
    /// `hostssl` entries in `pg_hba.conf`), then restarts: a client that does not use TLS cannot
    /// connect, so a test that connects proves it did.
    pub fn require_tls(&mut self, cert: &Path, key: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let (cert_copy, key_copy) = (self.dir.path().join("server.pem"), self.dir.path().join("server.key"));
        std::fs::copy(cert, &cert_copy).expect("copy the server certificate");
        std::fs::copy(key, &key_copy).expect("copy the server key");
        // PostgreSQL refuses a key others may read, or one it does not own.
        std::fs::set_permissions(&key_copy, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        if let Some((uid, gid)) = self.run_as {
            for f in [&cert_copy, &key_copy] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown the TLS files");
            }
        }
        let conf = self.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str(&format!(
            "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            cert_copy.display(),
            key_copy.display()
        ));
        std::fs::write(&conf, text).expect("postgresql.conf");
        std::fs::write(
            self.data().join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .expect("pg_hba.conf");
        self.restart();
    }

    /// The server's log so far (this start's only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn ready(&self) -> Result<(), String> {
        let pg_isready = self.bin.join("pg_isready");
        if !pg_isready.is_file() {
            return self.try_psql("postgres", "SELECT 1").map(drop);
        }
        let port = self.port.to_string();
        let out = Command::new(pg_isready)
            .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", USER, "-d", "postgres", "-t", "1"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run pg_isready: {e}"))?;
        if out.status.success() { Ok(()) } else { Err(format!("pg_isready: {}", out.status)) }
    }

    fn init(&self) {
        let out = self
            .server_command("initdb")
            .args(["--auth=trust", "--username", USER, "--encoding=UTF8", "--no-locale", "--no-sync"])
            .arg("--no-instructions")
            .arg("-D")
            .arg(self.data())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One of the server's programs, run as the unprivileged user when the tests run as root.
    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        // The test's working directory may be closed to that user; and whatever locale the
        // environment names may not be installed.
        cmd.current_dir(self.dir.path()).env("LC_ALL", "C").stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            // Switched between fork and exec, supplementary groups dropped: nothing in between.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// A client program of the same version when it is there (Debian), else from PATH.
    fn client(&self, program: &str) -> PathBuf {
        let beside = self.bin.join(program);
        if beside.is_file() { beside } else { PathBuf::from(program) }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

impl Drop for Postgres {
    /// A fast shutdown (`pg_ctl stop -m fast`: clients cut off, a checkpoint, every process
    /// gone), then [`Postgres::kill`] for whatever is left; the directory goes after.
    fn drop(&mut self) {
        let running = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        let pg_ctl = self.bin.join("pg_ctl");
        if running && pg_ctl.is_file() {
            let _ = self
                .server_command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "-t", "15"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.kill();
    }
}

/// The directory holding `initdb` and `postgres`: Debian's for PostgreSQL 15, else the first on
/// PATH. In CI a missing server fails the test; elsewhere the test is skipped.
fn server_bin_dir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    let found = std::iter::once(PathBuf::from(DEBIAN_BIN))
        .chain(path)
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file());
    if found.is_none() {
        assert!(!in_ci(), "PostgreSQL 15 (initdb, postgres) is required in CI: apt-get install postgresql");
        eprintln!("SKIPPED: PostgreSQL's initdb and postgres not found (apt-get install postgresql)");
    }
    found
}

/// `id -u` (the crate has no libc binding outside its tests).
fn current_uid() -> u32 {
    id(&["-u"]).expect("id -u")
}

/// The `postgres` system user Debian's package makes, else `nobody`: who the server runs as
/// when the tests run as root.
fn unprivileged_user() -> (u32, u32) {
    ["postgres", "nobody"]
        .iter()
        .find_map(|user| Some((id(&["-u", user])?, id(&["-g", user])?)))
        .expect("neither a postgres nor a nobody user to run PostgreSQL as (it refuses root)")
}

fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A fresh temporary directory; for another user, under a path that user can traverse (else
/// in `/tmp`).
fn temp_dir(for_other_user: bool) -> tempfile::TempDir {
    let base = std::env::temp_dir();
    let open = |d: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    };
    let base = if for_other_user && !base.ancestors().all(open) { PathBuf::from("/tmp") } else { base };
    tempfile::Builder::new().prefix("drover-pg-").tempdir_in(base).expect("postgres dir")
}

/// `kill -SIG pids` (the crate has no libc binding outside its tests).
fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The processes whose parent is `pid`, from `/proc`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| proc_stat(p).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// Whether `pid` still runs (a zombie has ended: its parent, init, reaps it).
fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// State and parent of `pid` from `/proc/PID/stat` (after the command name, which may hold
/// spaces and parentheses).
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    #[test]
    fn postgres_serves_survives_a_kill_and_leaves_nothing() {
        let Some(mut pg) = Postgres::start() else { return };
        let url = pg.url();
        assert_eq!(url, format!("postgres://drover@127.0.0.1:{}/drover", pg.port));
        pg.psql(&url, "CREATE TABLE readings (device text, value real)");
        pg.psql(&url, "INSERT INTO readings VALUES ('pi-1', 1.5), ('pi-2', 2.5), ('pi-1', 3.0)");
        assert_eq!(pg.psql(&url, "SELECT count(*) FROM readings WHERE device = 'pi-1'"), "2");
        assert_eq!(pg.psql("drover", "SELECT device, value FROM readings ORDER BY value LIMIT 1"), "pi-1|1.5");

        // A second fleet's database on the same server starts empty.
        let other = pg.create_database("fleet_b");
        assert_eq!(other, format!("postgres://drover@127.0.0.1:{}/fleet_b", pg.port));
        assert_eq!(pg.psql(&other, "SELECT count(*) FROM pg_tables WHERE tablename = 'readings'"), "0");

        // Killed, the server takes its backends with it and closes the port ...
        let postmaster = pg.child.as_ref().map(Child::id).expect("running");
        let workers = children(postmaster);
        assert!(!workers.is_empty(), "a running postmaster has workers");
        pg.kill();
        assert!(TcpStream::connect(("127.0.0.1", pg.port)).is_err(), "port {} still accepts", pg.port);
        assert!(!alive(postmaster) && !workers.iter().any(|&p| alive(p)), "processes left after kill");

        // ... and after recovery on the same port it still has every committed row.
        pg.restart();
        assert_eq!(pg.psql(&url, "SELECT count(*) FROM readings"), "3");

        // Dropped, nothing is left: no process, no directory.
        let dir = pg.dir.path().to_path_buf();
        let postmaster = pg.child.as_ref().map(Child::id).expect("running");
        let workers = children(postmaster);
        let port = pg.port;
        drop(pg);
        assert!(!alive(postmaster) && !workers.iter().any(|&p| alive(p)), "processes left after drop");
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still accepts after drop");
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
