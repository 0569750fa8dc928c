//! From a checkout to a running board: `drover package` makes a .deb that dpkg-deb validates
//! with a static agent inside, its systemd unit passes `systemd-analyze verify`, and `drover
//! flash` installs it over a real sshd into a throwaway root (`dpkg --root`), starts the
//! agent, and waits until it is online on a TLS broker with the client certificate `drover
//! provision` issued from `drover ca`. The agent's systemd notifications go to a real
//! datagram socket.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_runtime::link::codec;
use drover_tests::broker::{Broker, Kind, Options, Pki, free_port};
use drover_tests::cli::{fails, ok};
use drover_tests::observer::Observer;
use drover_tests::sshd::Sshd;
use drover_tests::tools::{in_ci, require_tool, workspace_bin};
use drover_wire::message::Status;

fn tool(name: &str, package: &str) -> Option<PathBuf> {
    require_tool(name, package)
}

/// `drover package --agent` of the host's agent into `dir`; returns the .deb.
fn host_package(dir: &Path) -> PathBuf {
    let agent = workspace_bin("drover-agent");
    let out =
        ok("drover", dir, &["package", "--agent", &agent.to_string_lossy(), "--target", "x86_64", "--out", "pkg"]);
    let deb = dir.join("pkg").join(format!("drover-agent_{}_amd64.deb", env!("CARGO_PKG_VERSION")));
    assert!(deb.is_file(), "{out}");
    deb
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run a tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The aarch64 musl agent `tests/run` cross-builds before the host tests.
fn aarch64_agent() -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("exe");
    // target/debug/deps/flash-… → target
    let target = exe.ancestors().nth(3).expect("target dir");
    let found = ["debug", "release"]
        .iter()
        .map(|p| target.join("aarch64-unknown-linux-musl").join(p).join("drover-agent"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(!in_ci(), "tests/run cross-builds the aarch64 agent before the host tests; it is missing");
        eprintln!(
            "SKIPPED: no aarch64 agent (cargo build --target aarch64-unknown-linux-musl -p drover-runtime --bin drover-agent)"
        );
    }
    found
}

#[test]
fn package_holds_a_static_aarch64_agent_its_unit_and_a_conffile() {
    let (Some(_), Some(_)) = (tool("dpkg-deb", "dpkg"), tool("file", "file")) else { return };
    let Some(agent) = aarch64_agent() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let a = agent.to_string_lossy();
    let out = ok("drover", d, &["package", "--agent", &a, "--out", "pkg"]);
    assert!(out.contains("arm64, static"), "{out}");
    let deb = d.join("pkg").join(format!("drover-agent_{}_arm64.deb", env!("CARGO_PKG_VERSION")));
    let (good, info, err) = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(good, "dpkg-deb --info: {err}");
    for line in ["Package: drover-agent", "Architecture: arm64", "Recommends: systemd"] {
        assert!(info.contains(line), "{info}");
    }
    assert!(info.contains("conffiles") && info.contains("postinst"), "{info}");
    let (good, contents, err) = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    assert!(good, "{err}");
    for path in [
        "./usr/bin/drover-agent",
        "./lib/systemd/system/drover-agent.service",
        "./etc/drover/agent.toml",
        "./usr/lib/sysusers.d/drover-agent.conf",
    ] {
        let line = contents.lines().find(|l| l.ends_with(path)).unwrap_or_else(|| panic!("{path} in {contents}"));
        assert!(line.contains("root/root"), "owned by root: {line}");
    }
    let x = d.join("x");
    assert!(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x).status().expect("dpkg-deb -x").success());
    let (_, file, _) = run(Command::new("file").arg(x.join("usr/bin/drover-agent")));
    assert!(file.contains("ARM aarch64") && file.contains("statically linked"), "{file}");
    println!(
        "aarch64 agent {} KiB, package {} KiB",
        std::fs::metadata(&agent).map(|m| m.len() / 1024).unwrap_or(0),
        std::fs::metadata(&deb).map(|m| m.len() / 1024).unwrap_or(0)
    );

    let wrong = fails("drover", d, &["package", "--agent", &a, "--target", "armv7", "--out", "pkg2"]);
    assert!(wrong.contains("built for aarch64, not armv7"), "{wrong}");
}

#[test]
fn the_packaged_unit_passes_systemd_analyze_verify() {
    let (Some(_), Some(_)) = (tool("dpkg-deb", "dpkg"), tool("systemd-analyze", "systemd")) else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let deb = host_package(dir.path());
    let root = dir.path().join("root");
    assert!(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root).status().expect("dpkg-deb -x").success());
    // The units it refers to (multi-user.target, network-online.target…) from this system.
    let units = Path::new("/lib/systemd/system");
    for e in std::fs::read_dir(units).expect("/lib/systemd/system") {
        let e = e.expect("entry");
        let to = root.join("lib/systemd/system").join(e.file_name());
        if !to.exists() && e.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::copy(e.path(), to).expect("copy a unit");
        }
    }
    let (good, out, err) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("/lib/systemd/system/drover-agent.service"));
    // verify reports bad values as warnings with exit 0: any output is a failure.
    assert!(good && err.trim().is_empty() && out.trim().is_empty(), "systemd-analyze verify:\n{out}{err}");
    let (_, sec_out, sec_err) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(format!("--root={}", root.display()))
        .arg("drover-agent.service"));
    let exposure = format!("{sec_out}{sec_err}");
    eprintln!("{}", exposure.lines().filter(|l| l.contains("exposure level")).collect::<Vec<_>>().join("\n"));
}

fn statuses(obs: &Observer) -> Vec<Status> {
    obs.messages().iter().filter_map(|(_, p)| codec::decode::<Status>(p).ok()).collect()
}

fn wait_gone(pid: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn flash_over_ssh_installs_into_a_throwaway_root_and_the_agent_comes_online_over_tls() {
    let (Some(_), Some(_)) = (tool("dpkg", "dpkg"), tool("systemd-sysusers", "systemd")) else { return };
    let Some(sshd) = Sshd::start() else { return };
    let work = tempfile::tempdir().expect("tmp");
    let d = work.path();
    // Mosquitto reads its certificates after dropping root: the path must be traversable.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    ok("drover", d, &["keygen", "--role", "root", "--out", "keys"]);
    ok("drover", d, &["root", "init", "--key", "keys/root.key", "--out", "root.json"]);
    let out = ok("drover", d, &["ca", "init", "--out", "ca"]);
    assert!(out.contains("0600"), "{out}");
    ok("drover", d, &["ca", "server", "--ca", "ca", "--name", "127.0.0.1", "--name", "localhost", "--out", "ca"]);
    assert_eq!(std::fs::metadata(d.join("ca/ca.key")).expect("ca.key").permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(d.join("ca"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(d.join("ca/broker.key"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let pki = Pki {
        ca: d.join("ca/ca.pem"),
        server_cert: d.join("ca/broker.pem"),
        server_key: d.join("ca/broker.key"),
        client_cert: d.join("ca/broker.pem"),
        client_key: d.join("ca/broker.key"),
    };
    let tls_port = free_port();
    let opts = Options { tls: Some((pki, tls_port)), require_client_cert: true, ..Options::default() };
    let Some(broker) = Broker::start(Kind::Mosquitto, opts) else { return };

    let api_port = free_port();
    let broker_url = format!("mqtts://127.0.0.1:{tls_port}");
    let api = format!("127.0.0.1:{api_port}");
    let out = ok(
        "drover",
        d,
        &["provision", "--device", "board-1", "--group", "lab", "--label", "site=desk", "--broker", &broker_url]
            .into_iter()
            .chain(["--root", "root.json", "--ca", "ca", "--api", &api, "--out", "prov/board-1"])
            .collect::<Vec<_>>(),
    );
    assert!(out.contains("client.key (secret, 0600)"), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "no secret on the terminal: {out}");
    let again = fails(
        "drover",
        d,
        &[
            "provision",
            "--device",
            "board-1",
            "--broker",
            &broker_url,
            "--root",
            "root.json",
            "--ca",
            "ca",
            "--out",
            "prov/board-1",
        ],
    );
    assert!(again.contains("exists (use --force"), "{again}");
    let deb = host_package(d);

    let host_untouched = !Path::new("/usr/bin/drover-agent").exists() && !Path::new("/etc/drover").exists();
    let root = d.join("board-root");
    let obs = Observer::connect(broker.port, "drover/v1/dev/board-1/status");
    let started = Instant::now();
    let child = Command::new(workspace_bin("drover"))
        .current_dir(d)
        .args(["flash", "--host", "root@127.0.0.1", "--provision", "prov/board-1"])
        .arg("--package")
        .arg(&deb)
        .arg(format!("--ssh-opts={}", sshd.opts()))
        .arg("--root")
        .arg(&root)
        .args(["--broker", &broker.address(), "--timeout", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("drover flash");
    let out = child.wait_with_output().expect("flash");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(root.join("var/log/drover-agent.log")).unwrap_or_default();
    assert!(out.status.success(), "flash failed:\n{stdout}\n{stderr}\nagent log:\n{log}\nsshd:\n{}", sshd.log());
    let row = stdout.lines().find(|l| l.starts_with("root@127.0.0.1")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("board-1") && row.contains("online"), "{stdout}");
    eprintln!("flashed and online in {:.1} s\n{stdout}", started.elapsed().as_secs_f64());

    // The package went into the root with dpkg, scripts and all; the real system is untouched.
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).expect("dpkg status in the root");
    assert!(status.contains("Package: drover-agent\nStatus: install ok installed"), "{status}");
    assert!(std::fs::read_to_string(root.join("etc/passwd")).expect("passwd in the root").contains("drover:"));
    assert!(root.join("var/lib/drover/trust.json").is_file());
    assert!(root.join("lib/systemd/system/drover-agent.service").is_file());
    let key_mode = std::fs::metadata(root.join("etc/drover/client.key")).expect("key").permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);
    if host_untouched {
        assert!(!Path::new("/usr/bin/drover-agent").exists() && !Path::new("/etc/drover").exists());
        assert!(!std::fs::read_to_string("/etc/passwd").unwrap_or_default().lines().any(|l| l.starts_with("drover:")));
    }
    let live = drover_tests::api::get(&format!("http://{api}/v2/health/live"));
    assert_eq!(live.status, 200, "the installed agent serves its local API");
    let s = statuses(&obs);
    assert!(s.iter().any(|s| s.online && s.labels.iter().any(|l| l.key.as_str() == "site")), "{s:?}");

    // Flashing again from a hosts file replaces the running agent (a clean stop, a new start).
    let pid = std::fs::read_to_string(root.join("run/drover-agent.pid")).expect("pid file").trim().to_string();
    std::fs::write(d.join("hosts.txt"), "# the desk\nroot@127.0.0.1 prov/board-1\n").expect("hosts");
    let out = Command::new(workspace_bin("drover"))
        .current_dir(d)
        .args(["flash", "--hosts", "hosts.txt", "--package"])
        .arg(&deb)
        .arg(format!("--ssh-opts={}", sshd.opts()))
        .arg("--root")
        .arg(&root)
        .args(["--broker", &broker.address(), "--timeout", "60s"])
        .output()
        .expect("flash --hosts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().any(|l| l.contains("board-1") && l.contains("online")), "{stdout}");
    assert!(wait_gone(&pid, Duration::from_secs(5)), "the old agent stopped");
    let new_pid = std::fs::read_to_string(root.join("run/drover-agent.pid")).expect("pid file").trim().to_string();
    assert_ne!(pid, new_pid);

    // SIGTERM: a clean stop, offline said by the agent itself.
    assert!(Command::new("kill").args(["-TERM", &new_pid]).status().expect("kill").success());
    assert!(wait_gone(&new_pid, Duration::from_secs(15)), "the agent stops on SIGTERM");
    std::thread::sleep(Duration::from_millis(300));
    let last = statuses(&obs).pop().expect("a status");
    assert!(!last.online, "the last word is offline");
    // The Last Will was made at connect time (uptime 0); the agent's own goodbye carries its uptime.
    assert!(last.uptime_s >= 1, "said by the agent, not its Last Will: {last:?}");
}

/// The agent as `Type=notify` sees it: READY=1 once serving, WATCHDOG=1 at half of
/// WATCHDOG_USEC, STOPPING=1 and exit 0 on SIGTERM, all on a real datagram socket.
#[test]
fn the_agent_notifies_systemd_readiness_watchdog_and_stopping() {
    let Some(broker) = Broker::start(Kind::Embedded, Options::default()) else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    ok("drover", d, &["keygen", "--role", "root", "--out", "keys"]);
    ok("drover", d, &["root", "init", "--key", "keys/root.key", "--out", "root.json"]);
    ok("drover-agent", d, &["trust", "--root", "root.json", "--data-dir", "data"]);
    let config = format!(
        "device = \"notify-1\"\ndata_dir = \"{}\"\n[broker]\nport = {}\n[api]\nlisten = \"off\"\n",
        d.join("data").display(),
        broker.port
    );
    std::fs::write(d.join("agent.toml"), config).expect("config");
    let sock_path = d.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    // systemd sets WATCHDOG_PID to the service's pid: the shell's pid is the agent's after exec.
    let mut agent = Command::new("sh")
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" run --config agent.toml")
        .arg(workspace_bin("drover-agent"))
        .current_dir(d)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .spawn()
        .expect("spawn the agent");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while got.iter().filter(|m: &&String| m.contains("WATCHDOG=1")).count() < 3 {
        let n = sock.recv(&mut buf).expect("a notification within 10 s");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let took = start.elapsed();
    assert!(got[0].contains("READY=1"), "READY first: {got:?}");
    assert!(took < Duration::from_secs(3), "pings every 0.5 s, three took {took:?}: {got:?}");
    assert!(Command::new("kill").args(["-TERM", &agent.id().to_string()]).status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = sock.recv(&mut buf).expect("STOPPING within 10 s");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    let exit = agent.wait().expect("exit");
    assert!(exit.success(), "SIGTERM is a clean stop: {exit:?}");
}
