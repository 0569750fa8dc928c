//! The device's model store through the real binaries: installs into A/B slots, the tamper
//! matrix (each refusal leaves the active model and the anti-rollback floor unchanged), SIGKILL
//! at every step of an install, the boot counter, and corrupted slots at start-up.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use drover_runtime::store::failpoint::INSTALL_POINTS;
use drover_tests::cli;
use drover_tests::cli::{delegate, fails, model, ok, revoke_release, run, signed_bundle};
use drover_tests::disk::SmallDisk;
use drover_tests::manifest::resolve;
use drover_tests::tools::workspace_bin;

/// Keys, root, delegation, and signed iris bundles v1..v3 (with self-tests) in a temp dir.
fn fleet() -> tempfile::TempDir {
    let dir = cli::trust_setup();
    let d = dir.path();
    let selftest = resolve("reference/iris_logreg.input.jsonl").to_string_lossy().into_owned();
    for v in ["1", "2", "3"] {
        signed_bundle(d, &model("iris_logreg.onnx"), "iris", v, &["--selftest", &selftest], &format!("v{v}.drv"));
    }
    dir
}

/// A provisioned device data dir with `versions` installed in order.
fn device(fleet: &Path, name: &str, versions: &[&str]) -> String {
    let data = fleet.join(name).to_string_lossy().into_owned();
    ok("drover-agent", fleet, &["trust", "--root", "root.json", "--data-dir", &data]);
    for v in versions {
        ok("drover-agent", fleet, &["install", &format!("v{v}.drv"), "--data-dir", &data]);
    }
    data
}

fn status(d: &Path, data: &str) -> serde_json::Value {
    serde_json::from_str(&ok("drover-agent", d, &["status", "--json", "--data-dir", data])).expect("status JSON")
}

fn active_version(s: &serde_json::Value) -> u64 {
    let slot = s["active"].as_str().expect("an active slot");
    s["slots"][slot]["version"].as_u64().expect("a version")
}

#[test]
fn installs_alternate_slots_and_rollback_returns_to_the_previous_model() {
    let dir = fleet();
    let d = dir.path();
    let data = device(d, "dev", &["1"]);
    let s = status(d, &data);
    assert_eq!((s["active"].as_str(), active_version(&s), s["pending"].as_bool()), (Some("a"), 1, Some(false)));
    let out = ok("drover-agent", d, &["install", "v2.drv", "--data-dir", &data]);
    assert!(out.contains("installed iris v2 in slot B (8 self-test case(s) passed)"), "{out}");
    let s = status(d, &data);
    assert_eq!((s["active"].as_str(), s["previous"].as_str(), active_version(&s)), (Some("b"), Some("a"), 2));
    let out = ok("drover-agent", d, &["rollback", "--data-dir", &data]);
    assert!(out.contains("rolled back to iris v1 in slot A"), "{out}");
    let s = status(d, &data);
    assert_eq!((active_version(&s), s["highest"]["iris"].as_u64()), (1, Some(2)));
    // The floor holds after a rollback: v2 cannot be installed again, v3 can.
    let out = fails("drover-agent", d, &["install", "v2.drv", "--data-dir", &data]);
    assert!(out.contains("not newer than 2"), "{out}");
    ok("drover-agent", d, &["install", "v3.drv", "--data-dir", &data]);
    assert_eq!(active_version(&status(d, &data)), 3);
}

/// Writes a variant of `src` made by `f` and returns its name.
fn variant(d: &Path, src: &str, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut bytes = std::fs::read(d.join(src)).expect("bundle");
    f(&mut bytes);
    std::fs::write(d.join(name), bytes).expect("write");
    name.to_string()
}

/// Re-labels the manifest of a signed bundle without re-signing it (keeping its payload).
fn edit_manifest(d: &Path, src: &str, name: &str) -> String {
    use drover_runtime::bundle::{Limits, read_header, write_bundle};
    let bytes = std::fs::read(d.join(src)).expect("bundle");
    let mut r = bytes.as_slice();
    let mut header = read_header(&mut r, &Limits::default()).expect("header");
    header.manifest.label = heapless::String::try_from("evil").expect("fits");
    let mut out = Vec::new();
    write_bundle(&mut out, &header, &[r]).expect("write");
    std::fs::write(d.join(name), out).expect("write");
    name.to_string()
}

/// Offset of the payload: magic (8) + length (4) + header.
fn payload_offset(bytes: &[u8]) -> usize {
    12 + u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
}

#[test]
fn tamper_matrix_refusals_leave_the_device_unchanged() {
    let dir = fleet();
    let d = dir.path();
    let data = device(d, "dev", &["2"]);
    let before = status(d, &data);
    let selftest = resolve("reference/iris_logreg.input.jsonl").to_string_lossy().into_owned();
    let make = |args: &[&str], out: &str| {
        let iris = model("iris_logreg.onnx");
        let mut all = vec!["bundle", &iris as &str, "--name", "iris", "--selftest", &selftest];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--out", out]);
        ok("drover", d, &all);
        out.to_string()
    };
    let signed = ["--key", "keys/release.key", "--delegation", "release.delegation.json"];

    ok("drover", d, &["keygen", "--role", "release", "--out", "keys", "--name", "rogue"]);
    ok("drover", d, &["keygen", "--role", "root", "--out", "keys", "--name", "rogue-root"]);
    ok("drover", d, &["root", "init", "--key", "keys/rogue-root.key", "--out", "rogue-root.json"]);
    ok(
        "drover",
        d,
        &[
            "delegate",
            "--root",
            "rogue-root.json",
            "--root-key",
            "keys/rogue-root.key",
            "--release",
            "keys/rogue.pub",
            "--models",
            "iris",
            "--out",
            "rogue-del.json",
        ],
    );
    delegate(d, "--release", "keys/release.pub", "other", "other-del.json");
    revoke_release(d, "root-v2.json");

    let v3 = std::fs::read(d.join("v3.drv")).expect("v3");
    // Another signed bundle's payload (a different model) to splice under v3's header.
    ok("drover", d, &["bundle", &model("mlp.onnx"), "--name", "iris", "--version", "9", "--out", "mlp.drv"]);
    let other = std::fs::read(d.join("mlp.drv")).expect("mlp");
    let cases: Vec<(String, &str)> = vec![
        (
            make(&["--version", "9", "--key", "keys/rogue.key", "--delegation", "rogue-del.json"], "rogue.drv"),
            "delegation is not signed by the trusted root",
        ),
        (
            make(&["--version", "9", "--key", "keys/release.key", "--delegation", "other-del.json"], "other.drv"),
            "not delegated to sign model 'iris'",
        ),
        (
            make(
                &[
                    "--version",
                    "9",
                    "--with-root",
                    "root-v2.json",
                    "--key",
                    "keys/release.key",
                    "--delegation",
                    "release.delegation.json",
                ],
                "revoked.drv",
            ),
            "is revoked",
        ),
        (make(&["--version", "9"], "unsigned.drv"), "the bundle is not signed: sign it with `drover sign`"),
        ("v1.drv".into(), "version 1 of 'iris' is not newer than 2"),
        ("v2.drv".into(), "version 2 of 'iris' is not newer than 2"),
        (make(&[&["--version", "9", "--targets", "armv7"][..], &signed[..]].concat(), "armv7.drv"), "targets armv7"),
        (
            make(&[&["--version", "9", "--min-agent", "99.0.0"][..], &signed[..]].concat(), "future.drv"),
            "needs agent 99.0.0",
        ),
        (
            variant(d, "v3.drv", "flipped.drv", |b| {
                let n = b.len();
                b[n - 5] ^= 0x20
            }),
            "does not match the manifest's SHA-256",
        ),
        (variant(d, "v3.drv", "cut.drv", |b| b.truncate(b.len() - 50)), "truncated"),
        (
            variant(d, "v3.drv", "endless.drv", |b| b.extend(std::iter::repeat_n(0u8, 4 << 20))),
            "unexpected data after the last file",
        ),
        (
            variant(d, "v3.drv", "mixed.drv", |b| {
                let p = payload_offset(&v3);
                b.truncate(p);
                b.extend_from_slice(&other[payload_offset(&other)..])
            }),
            "does not match the manifest's SHA-256",
        ),
        (edit_manifest(d, "v3.drv", "edited.drv"), "bad manifest signature"),
        (variant(d, "v3.drv", "magic.drv", |b| b[0] = b'X'), "not a Drover bundle"),
        (variant(d, "v3.drv", "huge-header.drv", |b| b[11] = 0x7f), "exceeds the limit"),
    ];
    // Expiry: a bundle valid for one second, installed after it lapsed.
    let expired = make(&[&["--version", "9", "--expires", "1s"][..], &signed[..]].concat(), "expired.drv");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let mut all = cases;
    // Times people read are RFC 3339, never raw Unix seconds.
    all.push((expired, "bundle expired at 20"));
    assert!(all.len() >= 16);
    for (bundle, reason) in &all {
        let out = fails("drover-agent", d, &["install", bundle, "--data-dir", &data]);
        assert!(out.contains(reason), "{bundle}: expected '{reason}' in:\n{out}");
        assert_eq!(out.matches(reason).count(), 1, "{bundle}: the reason is said more than once:\n{out}");
        let after = status(d, &data);
        assert_eq!(after, before, "{bundle}: the device state changed");
        assert!(!PathBuf::from(&data).join("staging").exists(), "{bundle}: staging left behind");
    }
    // And the device still serves its verified model.
    let out = ok("drover-agent", d, &["boot", "--data-dir", &data]);
    assert!(out.contains("serving iris v2 from slot A"), "{out}");
}

/// Starts an install with a fail point armed, waits for the agent to reach it, kills it.
fn kill_at(d: &Path, data: &str, bundle: &str, point: &str, verb: &[&str]) {
    let mut child = park_at(d, data, bundle, point, verb);
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}

/// Starts an install with a fail point armed and returns it parked there (still running).
fn park_at(d: &Path, data: &str, bundle: &str, point: &str, verb: &[&str]) -> std::process::Child {
    let mut args: Vec<&str> = verb.to_vec();
    if !bundle.is_empty() {
        args.push(bundle);
    }
    args.extend_from_slice(&["--data-dir", data]);
    let mut child = Command::new(workspace_bin("drover-agent"))
        .current_dir(d)
        .args(&args)
        .env("DROVER_FAILPOINT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let stderr = child.stderr.take().expect("stderr");
    let mut reached = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        if line == format!("drover-failpoint: {point}") {
            reached = true;
            break;
        }
    }
    assert!(reached, "the agent never reached fail point {point}");
    child
}

/// `status` is what an operator runs on a board where the agent serves as a service: run while
/// an install has staged its files, it reads and changes nothing (the install's staging stays).
#[test]
fn status_during_an_install_leaves_the_staged_files_alone() {
    let dir = fleet();
    let d = dir.path();
    let data = device(d, "dev", &["1"]);
    let mut install = park_at(d, &data, "v2.drv", "staged", &["install"]);
    let staging = Path::new(&data).join("staging");
    let listing = |p: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(p)
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    let staged = listing(&staging);
    assert!(staged.contains(&"model.onnx".to_string()), "the install staged its files: {staged:?}");
    let s = status(d, &data);
    let text = ok("drover-agent", d, &["status", "--data-dir", &data]);
    assert!(text.contains("slot A   iris v1"), "{text}");
    let expiry = text.lines().find(|l| l.starts_with("trust")).and_then(|l| l.split("(expires ").nth(1));
    assert!(expiry.is_some_and(|e| e.starts_with("20") && e.contains('T') && e.ends_with("Z)")), "{text}");
    assert_eq!(listing(&staging), staged, "status removed or changed the running install's staging");
    assert_eq!(active_version(&s), 1);
    install.kill().expect("SIGKILL");
    let _ = install.wait();
    // A data dir that does not exist is an error, not an empty device made on the spot.
    let missing = d.join("no-such-dir");
    let out = fails("drover-agent", d, &["status", "--data-dir", &missing.to_string_lossy()]);
    assert!(out.contains("no-such-dir"), "{out}");
    assert!(!missing.exists(), "status created the data dir");
}

#[test]
fn sigkill_at_every_install_step_leaves_a_verified_model_serving() {
    let dir = fleet();
    let d = dir.path();
    for (i, point) in INSTALL_POINTS.iter().enumerate() {
        let data = device(d, &format!("dev-{i}"), &["1"]);
        kill_at(d, &data, "v2.drv", point, &["install"]);
        // Restart: the start-up check must find a verified, loadable model.
        let out = ok("drover-agent", d, &["boot", "--data-dir", &data]);
        let s = status(d, &data);
        let version = active_version(&s);
        let switched = INSTALL_POINTS.iter().position(|p| *p == "switched").expect("point") <= i;
        assert_eq!(version, if switched { 2 } else { 1 }, "after a kill at {point}: {out}");
        assert_eq!(s["pending"], false, "after boot at {point} the serving slot is committed");
        assert!(out.contains(&format!("serving iris v{version}")), "{point}: {out}");
        assert!(!Path::new(&data).join("staging").exists(), "{point}: staging discarded");
        // The device can always take the next update.
        ok("drover-agent", d, &["install", "v3.drv", "--data-dir", &data]);
        assert_eq!(active_version(&status(d, &data)), 3, "{point}");
    }
}

#[test]
fn a_model_that_keeps_crashing_before_its_health_check_is_rolled_back() {
    let dir = fleet();
    let d = dir.path();
    let data = device(d, "dev", &["1"]);
    // The install switches to v2 and dies before committing.
    kill_at(d, &data, "v2.drv", "switched", &["install"]);
    // Every start dies during the health check: three attempts…
    for _ in 0..3 {
        kill_at(d, &data, "", "boot-health", &["boot"]);
    }
    // …then the boot counter gives up on v2.
    let out = ok("drover-agent", d, &["boot", "--data-dir", &data]);
    assert!(out.contains("rolled back from slot B"), "{out}");
    assert!(out.contains("serving iris v1 from slot A"), "{out}");
    let s = status(d, &data);
    assert_eq!((active_version(&s), s["highest"]["iris"].as_u64()), (1, Some(2)));
}

#[test]
fn a_corrupted_active_slot_is_never_served() {
    let dir = fleet();
    let d = dir.path();
    let data = device(d, "dev", &["1", "2"]);
    let model = Path::new(&data).join("slots/b/model.onnx");
    let mut bytes = std::fs::read(&model).expect("model");
    bytes[100] ^= 0xff;
    std::fs::write(&model, bytes).expect("corrupt");
    let out = ok("drover-agent", d, &["boot", "--data-dir", &data]);
    assert!(out.contains("serving iris v1 from slot A"), "{out}");
    // Corrupted state: the agent stops with a clear message instead of guessing.
    std::fs::write(Path::new(&data).join("state.json"), "{ not json").expect("corrupt state");
    let out = fails("drover-agent", d, &["boot", "--data-dir", &data]);
    assert!(out.contains("state.json is corrupted"), "{out}");
}

#[test]
fn signed_operator_commands_are_bound_to_their_target_and_never_replayed() {
    let dir = fleet();
    let d = dir.path();
    ok("drover", d, &["keygen", "--role", "operator", "--out", "keys"]);
    delegate(d, "--operator", "keys/operator.pub", "pi-*,lab", "op.json");
    let data = device(d, "dev", &["1", "2"]);
    let signer = ["--key", "keys/operator.key", "--delegation", "op.json"];
    let sign = |args: &[&str]| ok("drover", d, &[&["command"][..], args, &signer[..]].concat());

    sign(&["rollback", "--device", "pi-1", "--out", "rollback.json"]);
    let apply = |cmd: &str, extra: &[&str]| {
        let mut args = vec!["command", cmd, "--data-dir", &data, "--device", "pi-1", "--group", "lab"];
        args.extend_from_slice(extra);
        run("drover-agent", d, &args)
    };
    let o = apply("rollback.json", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(active_version(&status(d, &data)), 1);
    // The same command again: a replay.
    let o = apply("rollback.json", &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("replayed command"), "{}", String::from_utf8_lossy(&o.stderr));

    // For another device, or a group this device is not in.
    sign(&["rollback", "--device", "pi-2", "--out", "other.json"]);
    let o = apply("other.json", &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not for this device"));
    // Outside the operator's delegation.
    sign(&["rollback", "--group", "prod", "--out", "prod.json"]);
    let o = apply("prod.json", &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("may not command 'prod'"));

    // A group install command with its bundle; a mismatching bundle is refused.
    sign(&["install", "--name", "iris", "--version", "3", "--group", "lab", "--out", "install.json"]);
    let o = apply("install.json", &["--bundle", "v2.drv"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("authorises iris v3, the bundle is iris v2"));
    sign(&["install", "--name", "iris", "--version", "3", "--group", "lab", "--out", "install2.json"]);
    let o = apply("install2.json", &["--bundle", "v3.drv"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(active_version(&status(d, &data)), 3);
    // A release key is not an operator key.
    let out = fails(
        "drover",
        d,
        &[
            "command",
            "rollback",
            "--device",
            "pi-1",
            "--key",
            "keys/release.key",
            "--delegation",
            "op.json",
            "--out",
            "x.json",
        ],
    );
    assert!(out.contains("this is a release key; an operator key is needed"), "{out}");
}

/// A candidate is verified like an install but leaves the slots alone; a shadow command needs
/// the very candidate it names, and a bad bundle leaves the previous candidate in place.
#[test]
fn candidates_are_verified_and_shadow_commands_need_the_one_they_name() {
    let dir = fleet();
    let d = dir.path();
    ok("drover", d, &["keygen", "--role", "operator", "--out", "keys"]);
    delegate(d, "--operator", "keys/operator.pub", "pi-*", "op.json");
    let data = device(d, "dev", &["1"]);
    let signer = ["--key", "keys/operator.key", "--delegation", "op.json", "--device", "pi-1"];
    let sign = |args: &[&str]| ok("drover", d, &[&["command"][..], args, &signer[..]].concat());
    let apply = |cmd: &str| run("drover-agent", d, &["command", cmd, "--data-dir", &data, "--device", "pi-1"]);
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    sign(&["shadow", "--name", "iris", "--version", "2", "--sample-rate", "0.25", "--out", "early.json"]);
    let o = apply("early.json");
    assert!(stderr(&o).contains("no candidate is staged: push iris v2"), "{}", stderr(&o));

    let out = ok("drover-agent", d, &["stage", "v2.drv", "--data-dir", &data]);
    assert!(out.contains("staged iris v2 as the candidate"), "{out}");
    let s = status(d, &data);
    assert_eq!((active_version(&s), s["slots"]["b"].is_null()), (1, true), "slots untouched: {s}");

    // A tampered bundle is refused and the staged candidate stays.
    let mut bytes = std::fs::read(d.join("v3.drv")).expect("bundle");
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    std::fs::write(d.join("tampered.drv"), bytes).expect("write");
    let out = fails("drover-agent", d, &["stage", "tampered.drv", "--data-dir", &data]);
    assert!(out.contains("stage tampered.drv"), "{out}");
    let manifest = std::fs::read_to_string(Path::new(&data).join("candidate/manifest.json")).expect("candidate");
    assert!(manifest.contains("\"version\": 2"), "{manifest}");
    // Not newer than what was installed: refused as an install would be.
    let out = fails("drover-agent", d, &["stage", "v1.drv", "--data-dir", &data]);
    assert!(out.contains("not newer"), "{out}");

    sign(&["shadow", "--name", "iris", "--version", "3", "--out", "v3.json"]);
    let o = apply("v3.json");
    assert!(stderr(&o).contains("the candidate is iris v2, not iris v3"), "{}", stderr(&o));
    sign(&["shadow", "--name", "iris", "--version", "2", "--sample-rate", "0.25", "--out", "v2.json"]);
    let o = apply("v2.json");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("iris v2 will run in shadow on 250000 ppm"));
    let experiment = std::fs::read_to_string(Path::new(&data).join("experiment.json")).expect("persisted");
    assert!(experiment.contains("250000"), "{experiment}");
    sign(&["stop-shadow", "--out", "stop.json"]);
    let o = apply("stop.json");
    assert!(String::from_utf8_lossy(&o.stdout).contains("shadow stopped"), "{}", stderr(&o));
    assert!(!Path::new(&data).join("experiment.json").exists());
    assert_eq!(active_version(&status(d, &data)), 1);
}

#[test]
fn disk_full_while_staging_is_a_clear_error_and_the_active_model_stays() {
    let dir = fleet();
    let d = dir.path();
    let Some(disk) = SmallDisk::mount(&d.join("small"), "160k") else { return };
    let data = disk.0.join("dev").to_string_lossy().into_owned();
    ok("drover-agent", d, &["trust", "--root", "root.json", "--data-dir", &data]);
    ok("drover-agent", d, &["install", "v1.drv", "--data-dir", &data]);
    let before = status(d, &data);
    // A 340 KB model under the delegated name: more than the disk has left.
    signed_bundle(d, &model("mlp.onnx"), "iris", "2", &[], "big.drv");
    let out = fails("drover-agent", d, &["install", "big.drv", "--data-dir", &data]);
    assert!(out.contains("No space left on device"), "{out}");
    assert_eq!(status(d, &data), before, "state unchanged");
    assert!(!Path::new(&data).join("staging").exists(), "partial staging removed");
    let out = ok("drover-agent", d, &["boot", "--data-dir", &data]);
    assert!(out.contains("serving iris v1 from slot A"), "{out}");
}

/// The real agent binary under a clock moved by libfaketime.
fn at_offset(offset: &str, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("faketime")
        .arg("-f")
        .arg(offset)
        .arg(workspace_bin("drover-agent"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("faketime")
}

/// The clock jumps (a board without a real-time clock that boots in the past, a forged NTP
/// answer, a bad RTC battery). Set back, it must not revive a bundle that expired before the
/// latest signed time the device saw (a freeze attack needs exactly that), yet a valid release
/// still installs; set far ahead, everything looks expired and is refused while the device keeps
/// serving; once the clock is right again, installs resume.
#[test]
fn clock_jumps_neither_revive_expired_bundles_nor_stop_the_device_for_good() {
    let Some(_) = drover_tests::tools::require_tool("faketime", "faketime") else { return };
    let dir = cli::trust_setup();
    let d = dir.path();
    let selftest = resolve("reference/iris_logreg.input.jsonl").to_string_lossy().into_owned();
    let iris = model("iris_logreg.onnx");
    // A release valid for one second, then releases signed after it expired.
    signed_bundle(d, &iris, "iris", "5", &["--selftest", &selftest, "--expires", "1s"], "v5-brief.drv");
    std::thread::sleep(std::time::Duration::from_millis(2_200));
    for v in ["1", "2", "3"] {
        signed_bundle(d, &iris, "iris", v, &["--selftest", &selftest], &format!("v{v}.drv"));
    }
    let data = device(d, "dev", &["1"]);

    let o = at_offset("-1h", d, &["install", "v5-brief.drv", "--data-dir", &data]);
    assert!(!o.status.success(), "an hour back, the brief release looks valid to the clock alone");
    assert!(String::from_utf8_lossy(&o.stderr).contains("expired"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(active_version(&status(d, &data)), 1, "refused, nothing changed");
    let o = at_offset("-1h", d, &["install", "v2.drv", "--data-dir", &data]);
    assert!(o.status.success(), "a clock behind does not stop valid releases: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(active_version(&status(d, &data)), 2);

    let o = at_offset("+400d", d, &["install", "v3.drv", "--data-dir", &data]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("expired"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = at_offset("+400d", d, &["boot", "--data-dir", &data]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("serving iris v2"), "still serving with the clock ahead");
    ok("drover-agent", d, &["install", "v3.drv", "--data-dir", &data]);
    assert_eq!(active_version(&status(d, &data)), 3, "the clock right again: installs resume");
}

/// A revocation sticks: a bundle carrying root v2 (which revokes the release key and trusts a
/// new one) installs, the device keeps root v2, and from then on a bundle of the revoked key is
/// refused even without any root in it. `drover-agent trust` moves a provisioned device only
/// forward, to the root's own successor.
#[test]
fn a_revocation_brought_by_an_install_is_kept_and_roots_only_move_forward() {
    let dir = fleet();
    let d = dir.path();
    let data = device(d, "dev", &["1"]);
    revoke_release(d, "root-v2.json");
    ok("drover", d, &["keygen", "--role", "release", "--out", "keys", "--name", "release2"]);
    let base = ["delegate", "--root", "root-v2.json", "--root-key", "keys/root.key"];
    ok(
        "drover",
        d,
        &[&base[..], &["--release", "keys/release2.pub", "--models", "iris", "--out", "rel2.json"]].concat(),
    );
    let selftest = resolve("reference/iris_logreg.input.jsonl").to_string_lossy().into_owned();
    let iris = model("iris_logreg.onnx");
    let bundle = |version: &str, key: &str, delegation: &str, extra: &[&str], out: &str| {
        let mut args = vec!["bundle", &iris, "--name", "iris", "--version", version, "--selftest", &selftest];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--key", key, "--delegation", delegation, "--out", out]);
        ok("drover", d, &args);
    };
    bundle("4", "keys/release2.key", "rel2.json", &["--with-root", "root-v2.json"], "v4-new-key.drv");
    bundle("5", "keys/release.key", "release.delegation.json", &[], "v5-revoked.drv");

    ok("drover-agent", d, &["install", "v4-new-key.drv", "--data-dir", &data]);
    let s = status(d, &data);
    assert_eq!(active_version(&s), 4);
    let trust: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&data).join("trust.json")).expect("trust"))
            .expect("json");
    assert_eq!(trust["root"]["version"].as_u64(), Some(2), "the root the bundle brought is kept: {trust}");
    let out = fails("drover-agent", d, &["install", "v5-revoked.drv", "--data-dir", &data]);
    assert!(out.contains("is revoked"), "{out}");
    assert_eq!(active_version(&status(d, &data)), 4, "refused, nothing changed");

    // Roots move forward only: v1 again is refused on this device; a fresh device moves to v2.
    let out = fails("drover-agent", d, &["trust", "--root", "root.json", "--data-dir", &data]);
    assert!(out.contains("not newer than the trusted v2"), "{out}");
    let fresh = device(d, "fresh", &[]);
    ok("drover-agent", d, &["trust", "--root", "root-v2.json", "--data-dir", &fresh]);
    let out = fails("drover-agent", d, &["install", "v5-revoked.drv", "--data-dir", &fresh]);
    assert!(out.contains("is revoked"), "{out}");
}

/// A model that makes tract panic while it types the graph (`models/hostile/`, from
/// `models/make_hostile.py`), signed by a release key as if that key were leaked or its owner
/// careless. `drover bundle` refuses to package it, so the test swaps it into a bundle's payload
/// before signing. The device contains the panic, refuses the install with the reason, and keeps
/// serving the model it had.
#[test]
fn a_signed_model_that_panics_tract_is_refused_and_the_old_model_keeps_serving() {
    use drover_runtime::bundle::{Limits, read_header, write_bundle};
    use sha2::Digest as _;
    let dir = fleet();
    let d = dir.path();
    let data = device(d, "dev", &["1"]);
    for (i, hostile) in ["gather_out_of_range", "slice_step_zero", "range_huge"].iter().enumerate() {
        let version = (i + 2).to_string();
        let unsigned = format!("unsigned-{hostile}.drv");
        ok(
            "drover",
            d,
            &["bundle", &model("iris_logreg.onnx"), "--name", "iris", "--version", &version, "--out", &unsigned],
        );
        let bytes = std::fs::read(d.join(&unsigned)).expect("bundle");
        let mut r = bytes.as_slice();
        let mut header = read_header(&mut r, &Limits::default()).expect("header");
        assert_eq!(header.manifest.files.len(), 1, "the model only");
        let evil =
            std::fs::read(drover_tests::manifest::models_dir().join(format!("hostile/{hostile}.onnx"))).expect("model");
        header.manifest.files[0].size = evil.len() as u64;
        header.manifest.files[0].sha256 = sha2::Sha256::digest(&evil).into();
        let mut out = Vec::new();
        write_bundle(&mut out, &header, &[&evil[..]]).expect("write");
        let name = format!("{hostile}.drv");
        std::fs::write(d.join(&name), out).expect("write");
        ok("drover", d, &["sign", &name, "--key", "keys/release.key", "--delegation", "release.delegation.json"]);

        let out = fails("drover-agent", d, &["install", &name, "--data-dir", &data]);
        assert!(out.contains("crashed inside tract (contained)"), "{hostile}: {out}");
        assert_eq!(active_version(&status(d, &data)), 1, "{hostile}: nothing changed");
        assert!(!Path::new(&data).join("staging").exists(), "{hostile}: staging removed");
        let out = ok("drover-agent", d, &["boot", "--data-dir", &data]);
        assert!(out.contains("serving iris v1 from slot A"), "{hostile}: {out}");
    }
}
