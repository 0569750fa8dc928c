//! `drover acl` against a real Mosquitto: the generated rules and password file, with devices
//! logging in by password (certificate identities: see docs/security.md, not run here). A device cannot publish as another (the
//! fleet server never sees the forgery), cannot read another device's commands or another
//! group's announcements; real agents still come online, report telemetry to the fleet
//! server's role, and install a real `drover push` from the operator's role.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use drover_runtime::link::{BrokerSettings, codec};
use drover_tests::broker::{Broker, Kind, Options};
use drover_tests::cli::{ok, trust_setup};
use drover_tests::fleet::Fleet;
use drover_tests::observer::Observer;
use drover_tests::onnx_gen::{write_matmul_model, write_samples};
use drover_tests::services::{eventually, until};
use drover_tests::tools::workspace_bin;
use drover_wire::message::Status;

const FLEET: &str = "groups = [\"lab\", \"north\"]\n\
    [[device]]\nid = \"dev-00\"\ngroups = [\"lab\"]\npassword_file = \"dev-00.pw\"\n\
    [[device]]\nid = \"dev-01\"\ngroups = [\"lab\"]\npassword_file = \"dev-01.pw\"\n\
    [[device]]\nid = \"pi-1\"\ngroups = [\"lab\"]\n\
    [[device]]\nid = \"dev-b\"\ngroups = [\"north\"]\npassword_file = \"dev-b.pw\"\n\
    [[user]]\nname = \"fleet\"\nrole = \"fleet-server\"\npassword_file = \"fleet.pw\"\n\
    [[user]]\nname = \"ops\"\nrole = \"operator\"\npassword_file = \"ops.pw\"\n";

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A signed bundle `big-v1.drv` in `d` (keys and root from `trust_setup`).
fn bundle(d: &Path) {
    ok(
        "drover",
        d,
        &["delegate", "--root", "root.json", "--root-key", "keys/root.key"]
            .into_iter()
            .chain(["--release", "keys/release.pub", "--models", "big", "--out", "big.json"])
            .collect::<Vec<_>>(),
    );
    write_samples(&d.join("samples.jsonl"), 4);
    write_matmul_model(&d.join("big.onnx"), 64 * 1024);
    ok(
        "drover",
        d,
        &["bundle", "big.onnx", "--name", "big", "--version", "1", "--selftest", "samples.jsonl"]
            .into_iter()
            .chain(["--key", "keys/release.key", "--delegation", "big.json", "--out", "big-v1.drv"])
            .collect::<Vec<_>>(),
    );
}

fn topics(obs: &Observer) -> Vec<String> {
    obs.messages().into_iter().map(|(t, _)| t).collect()
}

/// `drover push` of `big-v1.drv` to `target` (`--group lab`, `--device dev-00`) as `user`:
/// whether it succeeded, and its stdout and stderr.
fn push_as(
    d: &Path,
    broker: &Broker,
    target: [&str; 2],
    user: &str,
    password_file: &str,
    timeout: &str,
) -> (bool, String) {
    let output = std::process::Command::new(workspace_bin("drover"))
        .current_dir(d)
        .args(["push", "big-v1.drv", target[0], target[1], "--broker", &broker.address()])
        .args(["--username", user, "--password-file", password_file, "--timeout", timeout])
        .output()
        .expect("drover push");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn mosquitto_confines_each_device_to_its_own_topics() {
    let rel = trust_setup();
    let d = rel.path();
    for (user, pw) in [
        ("dev-00", "pw-dev-00"),
        ("dev-01", "pw-dev-01"),
        ("dev-b", "pw-dev-b"),
        ("fleet", "pw-fleet"),
        ("ops", "pw-ops"),
    ] {
        std::fs::write(d.join(format!("{user}.pw")), format!("{pw}\n")).expect("pw");
    }
    std::fs::write(d.join("fleet.toml"), FLEET).expect("fleet.toml");
    bundle(d);
    // Mosquitto started as root reads its files as the `mosquitto` user: a readable directory,
    // and (in this test only) a readable password file.
    let acl_dir = tempfile::tempdir().expect("tmp");
    chmod(acl_dir.path(), 0o755);
    let out = acl_dir.path().join("acl");
    let o = out.to_string_lossy().into_owned();
    let printed = ok("drover", d, &["acl", "--fleet", "fleet.toml", "--out", &o]);
    assert!(printed.contains("4 device(s) and 2 user(s)"), "{printed}");
    assert_eq!(std::fs::metadata(out.join("passwd")).expect("passwd").permissions().mode() & 0o777, 0o600);
    chmod(&out, 0o755);
    chmod(&out.join("passwd"), 0o644);
    let conf = std::fs::read_to_string(out.join("mosquitto.conf")).expect("conf");

    let opts = Options { extra: conf, ..Options::default() };
    let Some(broker) = Broker::start(Kind::Mosquitto, opts) else { return };

    let fleet_role = Observer::connect_as(broker.port, "drover/v1/#", "fleet", "pw-fleet");
    // The fleet server's ingest connections read the reports through a shared subscription.
    // Mosquitto's ACL file checks reads at delivery only, so a device may join a group: it then
    // takes its turn and loses the reports dealt to it. A group name the devices cannot guess
    // (`--share-group-file`, the one `drover acl` wrote) keeps them out; this device tries the
    // default name.
    let group = std::fs::read_to_string(out.join("share-group")).expect("drover acl wrote the share group");
    assert!(printed.contains("--share-group-file"), "{printed}");
    let shared_ingest = Observer::connect_as(
        broker.port,
        &format!("$share/{}/drover/v1/dev/+/telemetry", group.trim()),
        "fleet",
        "pw-fleet",
    );
    let shared_intruder =
        Observer::connect_as(broker.port, "$share/drover-fleet/drover/v1/dev/+/telemetry", "dev-b", "pw-dev-b");
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let plain = BrokerSettings { port: broker.port, ..BrokerSettings::default() };
    let mut agents = Fleet::new(fleet_dir.path(), "dev", 2, &["lab"], &d.join("root.json"), &plain);
    for (i, m) in agents.members.iter_mut().enumerate() {
        m.cfg.broker.username = Some(format!("dev-0{i}"));
        m.cfg.broker.password_file = Some(d.join(format!("dev-0{i}.pw")));
    }
    for m in &mut agents.members {
        m.cfg.telemetry.period_s = Some(1);
    }
    agents.start_all();

    // Both identities come online (their Last Will on their own status is allowed) and the
    // fleet server's role receives their presence and telemetry.
    for dev in ["dev-00", "dev-01"] {
        let status = format!("drover/v1/dev/{dev}/status");
        let telemetry = format!("drover/v1/dev/{dev}/telemetry");
        until(Duration::from_secs(30), &format!("{dev} online with telemetry"), || {
            let seen = fleet_role.messages();
            let online = seen.iter().any(|(t, p)| *t == status && codec::decode::<Status>(p).is_ok_and(|s| s.online));
            let reported = seen.iter().any(|(t, _)| *t == telemetry);
            let shared = shared_ingest.messages().iter().any(|(t, _)| *t == telemetry);
            if online && reported && shared {
                Ok(())
            } else {
                Err(format!("online {online}, telemetry {reported}, shared {shared}\n{}", broker.log()))
            }
        });
    }

    // dev-b (group north) listens to everything and tries to speak for dev-00.
    let intruder = Observer::connect_as(broker.port, "drover/v1/#", "dev-b", "pw-dev-b");
    intruder.publish("drover/v1/dev/dev-00/status", b"forged".to_vec(), true);
    intruder.publish("drover/v1/dev/dev-00/telemetry", b"forged".to_vec(), false);
    intruder.publish("drover/v1/dev/dev-01/events", b"forged".to_vec(), false);
    intruder.publish("drover/v1/dev/dev-b/events", b"marker".to_vec(), false);
    eventually(Duration::from_secs(10), "dev-b's own report at the fleet server", || {
        fleet_role.messages().iter().any(|(t, p)| t == "drover/v1/dev/dev-b/events" && p == b"marker").then_some(())
    });
    let forged: Vec<String> =
        fleet_role.messages().into_iter().filter(|(_, p)| p == b"forged").map(|(t, _)| t).collect();
    assert!(forged.is_empty(), "the fleet server received forgeries on {forged:?}");
    let stolen = shared_intruder.messages();
    assert!(stolen.is_empty(), "a device read reports through a shared subscription: {stolen:?}");
    // Nor does its refused membership take a share of the reports away from the fleet server.
    let reports: Vec<(String, Vec<u8>)> =
        fleet_role.messages().into_iter().filter(|(t, _)| t.ends_with("/telemetry")).collect();
    std::thread::sleep(Duration::from_secs(2));
    let shared = shared_ingest.messages();
    let missing = reports.iter().filter(|r| !shared.contains(r)).count();
    assert_eq!(missing, 0, "{missing} of {} reports never reached the shared subscription", reports.len());

    // The operator pushes to lab: both devices install it.
    let (success, text) = push_as(d, &broker, ["--group", "lab"], "ops", "ops.pw", "90s");
    assert!(success, "drover push failed:\n{text}\n{}", broker.log());
    assert!(text.contains("2/2 device(s) succeeded"), "{text}");
    for i in 0..2 {
        assert_eq!(agents.serving(i), Some(("big".into(), 1)));
    }

    // Commands for dev-00 and for lab stay away from dev-b; north's reach it.
    let operator = Observer::connect_as(broker.port, "drover/v1/dev/+/status", "ops", "pw-ops");
    operator.publish("drover/v1/dev/dev-00/cmd", b"not-for-dev-b".to_vec(), false);
    operator.publish("drover/v1/grp/lab/cmd", b"not-for-dev-b".to_vec(), false);
    operator.publish("drover/v1/grp/north/cmd", b"for-north".to_vec(), false);
    eventually(Duration::from_secs(10), "north's command at dev-b", || {
        intruder.messages().iter().any(|(t, p)| t == "drover/v1/grp/north/cmd" && p == b"for-north").then_some(())
    });
    let allowed = |t: &str| {
        t.starts_with("drover/v1/dev/dev-b/")
            || t.starts_with("drover/v1/grp/north/")
            || t == "drover/v1/fleet/bundle"
            || (t.starts_with("drover/v1/xfer/") && t.ends_with("/chunk"))
    };
    let leaked: Vec<String> = topics(&intruder).into_iter().filter(|t| !allowed(t)).collect();
    assert!(leaked.is_empty(), "dev-b read {leaked:?}");
    assert!(!topics(&intruder).iter().any(|t| t == "drover/v1/grp/lab/bundle"), "lab's announcement");

    // A wrong password is refused outright (an Observer would retry forever: drover gives up).
    let (success, text) = push_as(d, &broker, ["--device", "dev-00"], "ops", "dev-b.pw", "5s");
    assert!(!success && text.contains("could not reach the broker"), "{text}");

    // dev-b leaves the fleet (stolen): removed from the fleet file, `drover acl` again, Mosquitto
    // reloaded. Its password no longer logs in; dev-00 still does.
    let without_b =
        FLEET.replace("[[device]]\nid = \"dev-b\"\ngroups = [\"north\"]\npassword_file = \"dev-b.pw\"\n", "");
    assert_ne!(without_b, FLEET);
    std::fs::write(d.join("fleet.toml"), without_b).expect("fleet.toml");
    let printed = ok("drover", d, &["acl", "--fleet", "fleet.toml", "--out", &o, "--force"]);
    assert!(printed.contains("3 device(s) and 2 user(s)"), "{printed}");
    chmod(&out.join("passwd"), 0o644);
    broker.reload();
    let login =
        |user: &str, password_file: &str| push_as(d, &broker, ["--device", "dev-00"], user, password_file, "5s").1;
    until(Duration::from_secs(10), "dev-b refused after the reload", || {
        let text = login("dev-b", "dev-b.pw");
        if text.contains("could not reach the broker") { Ok(()) } else { Err(text) }
    });
    let text = login("ops", "ops.pw");
    assert!(!text.contains("could not reach the broker"), "the operator still logs in: {text}");
}
