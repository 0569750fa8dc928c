//! The texts inside the Debian package: the systemd unit, the system user (sysusers.d), the
//! default configuration (a conffile) and the maintainer scripts. Pure, so each is tested
//! here and the unit is checked by `systemd-analyze verify` in `tests/flash.rs`.

/// The service's name on the board.
pub const SERVICE: &str = "drover-agent.service";
/// The system user (and group) the agent runs as.
pub const USER: &str = "drover";
/// The agent's configuration on the board.
pub const CONFIG: &str = "/etc/drover/agent.toml";
/// The agent's data directory on the board (`StateDirectory=drover`).
pub const STATE_DIR: &str = "/var/lib/drover";
/// Where the agent binary is installed.
pub const AGENT: &str = "/usr/bin/drover-agent";
/// Where the unit is installed (Debian 12, Pi OS and Ubuntu 20.04+ all read it).
pub const UNIT_PATH: &str = "/lib/systemd/system/drover-agent.service";
/// Where the system user's declaration is installed.
pub const SYSUSERS_PATH: &str = "/usr/lib/sysusers.d/drover-agent.conf";
/// The supplementary groups of the agent: serial ports (`dialout`) and the Pi's I2C, SPI and
/// GPIO device nodes, for `[[input]]` sensors.
pub const SENSOR_GROUPS: [&str; 4] = ["dialout", "i2c", "spi", "gpio"];
/// Seconds systemd waits for a watchdog ping before it restarts the agent (the agent pings at
/// half of it, from its main loop, so a hung loop is restarted).
pub const WATCHDOG_S: u32 = 60;

/// The systemd unit. `Type=notify`: the agent says READY=1 once its store is booted and it
/// serves, pings the watchdog, and says STOPPING=1 on SIGTERM. It starts only on a
/// provisioned device (a trust root in its state directory). The file system is read-only
/// to it but for its state directory; sensors reach it through the device nodes its groups
/// may open.
pub fn service() -> String {
    format!(
        "[Unit]
Description=Drover edge ML agent (models, telemetry, signed updates over MQTT)
Documentation=file:///usr/share/doc/drover-agent/README
Wants=network-online.target
After=network-online.target time-sync.target
# Installed but not provisioned yet: `drover flash` (or `drover-agent trust`) puts the trust
# root here first.
ConditionPathExists={STATE_DIR}/trust.json

[Service]
Type=notify
NotifyAccess=main
ExecStart={AGENT} run --config {CONFIG}
User={USER}
Group={USER}
SupplementaryGroups={groups}
WatchdogSec={WATCHDOG_S}
Restart=on-failure
RestartSec=5
TimeoutStopSec=30
StateDirectory=drover
StateDirectoryMode=0750
RuntimeDirectory=drover
UMask=0027
ProtectSystem=strict
ReadWritePaths={STATE_DIR}
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
CapabilityBoundingSet=

[Install]
WantedBy=multi-user.target
",
        groups = SENSOR_GROUPS.join(" ")
    )
}

/// The system user, for `systemd-sysusers`: no login, home in the state directory, member of
/// the sensor groups (created if the board lacks one, so the unit's `SupplementaryGroups=`
/// never fails the start).
pub fn sysusers() -> String {
    let mut s = format!("u {USER} - \"Drover edge ML agent\" {STATE_DIR} /usr/sbin/nologin\n");
    for g in SENSOR_GROUPS {
        s += &format!("m {USER} {g}\n");
    }
    s
}

/// The default `/etc/drover/agent.toml` (a conffile: an upgrade keeps the provisioned one).
pub fn default_config() -> String {
    format!(
        "# Drover agent configuration. `drover provision` writes the device's own and `drover flash`
# installs it here; until then the service does not start (no trust root in {STATE_DIR}).
device = \"unprovisioned\"
groups = []
data_dir = \"{STATE_DIR}\"

[broker]
host = \"127.0.0.1\"
port = 1883
"
    )
}

/// `postinst`: creates the user (sysusers, or adduser on systems without it) and the state
/// directory, and enables the unit when systemd runs. Honours `$DPKG_ROOT` (`dpkg --root`,
/// image builds): then it touches only files under that root and starts nothing.
pub fn postinst() -> String {
    format!(
        r#"#!/bin/sh
set -e
root="${{DPKG_ROOT:-}}"
if [ "$1" = configure ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        if [ -n "$root" ]; then
            systemd-sysusers --root="$root" "$root{SYSUSERS_PATH}"
        else
            systemd-sysusers {SYSUSERS_PATH}
        fi
    elif [ -z "$root" ] && ! getent passwd {USER} >/dev/null; then
        adduser --system --group --home {STATE_DIR} --no-create-home {USER}
        for g in {groups}; do
            if getent group "$g" >/dev/null; then adduser {USER} "$g"; fi
        done
    fi
    install -d -m 0750 "$root{STATE_DIR}"
    if [ -z "$root" ]; then
        chown {USER}:{USER} {STATE_DIR}
        if [ -d /run/systemd/system ]; then
            systemctl daemon-reload
            systemctl enable {SERVICE} >/dev/null
            # An upgrade restarts a running agent (a clean stop, then the new binary).
            systemctl try-restart {SERVICE}
        fi
    fi
fi
exit 0
"#,
        groups = SENSOR_GROUPS.join(" ")
    )
}

/// `prerm`: stops the agent cleanly before its files go (not on upgrade: postinst restarts).
pub fn prerm() -> String {
    format!(
        r#"#!/bin/sh
set -e
if [ -z "${{DPKG_ROOT:-}}" ] && [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop {SERVICE} || true
    systemctl disable {SERVICE} >/dev/null || true
fi
exit 0
"#
    )
}

/// `postrm`: `purge` removes the data directory (models, outbox, trust) and the config.
pub fn postrm() -> String {
    format!(
        r#"#!/bin/sh
set -e
root="${{DPKG_ROOT:-}}"
if [ "$1" = purge ]; then
    rm -rf "$root{STATE_DIR}" "$root/etc/drover"
fi
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
"#
    )
}

/// The `DEBIAN/control` file.
pub fn control(version: &str, arch: &str, installed_kib: u64) -> String {
    format!(
        "Package: drover-agent
Version: {version}
Architecture: {arch}
Maintainer: Drover maintainers <drover@example.invalid>
Section: misc
Priority: optional
Installed-Size: {installed_kib}
Recommends: systemd
Homepage: https://example.invalid/drover
Description: Drover edge ML agent
 Runs quantized ONNX models on the board with tract (CPU), installs signed model
 updates pushed over MQTT into A/B slots, and reports telemetry and drift to the
 fleet. Provision the device with `drover provision` and install with `drover flash`.
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(unit: &str, k: &str) -> Vec<String> {
        unit.lines().filter_map(|l| l.strip_prefix(&format!("{k}="))).map(str::to_string).collect()
    }

    #[test]
    fn the_unit_is_a_hardened_notify_service_with_a_watchdog() {
        let u = service();
        assert_eq!(key(&u, "Type"), ["notify"]);
        assert_eq!(key(&u, "WatchdogSec"), ["60"]);
        assert_eq!(key(&u, "Restart"), ["on-failure"]);
        assert_eq!(key(&u, "StateDirectory"), ["drover"]);
        assert_eq!(key(&u, "ProtectSystem"), ["strict"]);
        assert_eq!(key(&u, "NoNewPrivileges"), ["yes"]);
        assert_eq!(key(&u, "PrivateTmp"), ["yes"]);
        assert_eq!(key(&u, "ReadWritePaths"), [STATE_DIR]);
        assert_eq!(key(&u, "SupplementaryGroups"), ["dialout i2c spi gpio"]);
        assert_eq!(key(&u, "ExecStart"), ["/usr/bin/drover-agent run --config /etc/drover/agent.toml"]);
        assert!(!u.contains("PrivateDevices"), "sensors need the device nodes");
    }

    #[test]
    fn the_user_is_in_every_sensor_group() {
        let s = sysusers();
        assert!(s.starts_with("u drover - "));
        for g in SENSOR_GROUPS {
            assert!(s.contains(&format!("m drover {g}\n")), "{s}");
        }
    }

    #[test]
    fn maintainer_scripts_touch_only_the_dpkg_root_when_one_is_given() {
        let p = postinst();
        assert!(p.contains("systemd-sysusers --root=\"$root\""));
        assert!(p.contains("install -d -m 0750 \"$root/var/lib/drover\""));
        // Every systemctl call sits behind "no DPKG_ROOT".
        let guarded = p.split("if [ -z \"$root\" ]; then").nth(1).unwrap_or("");
        assert!(guarded.contains("systemctl enable"), "{p}");
        assert!(!p.split("if [ -z \"$root\" ]; then").next().unwrap().contains("systemctl"));
        assert!(postrm().contains("rm -rf \"$root/var/lib/drover\" \"$root/etc/drover\""));
    }

    #[test]
    fn the_default_config_parses_as_an_agent_config() {
        let cfg = drover_runtime::agent::AgentConfig::parse(&default_config()).unwrap();
        assert_eq!(cfg.data_dir, std::path::Path::new(STATE_DIR));
        assert!(control("0.1.0", "arm64", 9000).contains("Architecture: arm64\n"));
    }
}
