//! The fleet file `drover acl --fleet` reads: who may use the broker. Its groups, each device
//! with its groups and how it logs in, and the people and services with a role.
//!
//! ```toml
//! groups = ["lab", "north"]
//!
//! [[device]]
//! id = "pi-07"
//! groups = ["lab"]
//! password_file = "secrets/pi-07"   # as given to `drover provision --password-file`
//!
//! [[device]]
//! id = "jetson-1"                   # no password: a client certificate whose CN is the id
//! groups = ["north"]
//!
//! [[user]]
//! name = "fleet"
//! role = "fleet-server"
//! password_file = "secrets/fleet"
//!
//! [[user]]
//! name = "alice"
//! role = "operator"                 # no password: a client certificate whose CN is the name
//! ```
//!
//! A device logs in as its id (the user name `drover provision` gives it by default, and the
//! CN of the certificate `drover provision --ca` issues it). Relative paths are taken from the
//! fleet file's directory. Everything is checked before anything is written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use drover_wire::topic::Name;
use serde::Deserialize;

/// What a broker user other than a device may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// `drover fleet serve`: reads every device's reports, tells rollout steps, and pushes and
    /// commands like an operator when it runs staged rollouts.
    FleetServer,
    /// A person with `drover push`, `rollback`, `shadow`, `ab`, `feedback`, `watch`, `alerts`.
    Operator,
}

/// How a user proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A password (the first line of this file).
    Password(PathBuf),
    /// A client certificate whose CN is the user name (`use_identity_as_username`).
    Certificate,
}

/// A device of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its id, also its broker user name.
    pub id: Name,
    /// Its groups.
    pub groups: Vec<Name>,
    /// How it logs in.
    pub identity: Identity,
}

/// A user with a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The broker user name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// How it logs in.
    pub identity: Identity,
}

/// The checked fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// Its devices, in file order.
    pub devices: Vec<Device>,
    /// Its other users, in file order.
    pub users: Vec<User>,
}

/// Why a fleet file is refused.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Not the TOML described above.
    #[error("not a fleet file: {0}")]
    Syntax(#[from] toml::de::Error),
    /// A device id or group that cannot be a topic level.
    #[error("'{0}' is not a valid {1}: {2}")]
    BadName(String, &'static str, drover_wire::topic::BadName),
    /// A user name Mosquitto's files cannot hold.
    #[error("user name '{0}' must be non-empty, without spaces, ':' or control characters")]
    BadUser(String),
    /// A device names a group the file does not declare.
    #[error("device {device}: unknown group '{group}' (declared: {declared})")]
    UnknownGroup {
        /// The device.
        device: String,
        /// The group.
        group: String,
        /// The groups of `groups = [...]`.
        declared: String,
    },
    /// Two users (devices included) with one name.
    #[error("'{0}' is listed twice (devices and users share one name space on the broker)")]
    Duplicate(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDevice {
    id: String,
    #[serde(default)]
    groups: Vec<String>,
    password_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    name: String,
    role: Role,
    password_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    device: Vec<FileDevice>,
    #[serde(default)]
    user: Vec<FileUser>,
}

fn name(s: &str, what: &'static str) -> Result<Name, FleetError> {
    Name::new(s).map_err(|e| FleetError::BadName(s.to_string(), what, e))
}

fn identity(password_file: Option<PathBuf>, base: &Path) -> Identity {
    password_file.map_or(Identity::Certificate, |p| Identity::Password(base.join(p)))
}

/// Parses and checks a fleet file's text; `base` is its directory.
pub fn parse(text: &str, base: &Path) -> Result<Fleet, FleetError> {
    let file: File = toml::from_str(text)?;
    let declared = file.groups.iter().map(|g| name(g, "group name")).collect::<Result<BTreeSet<_>, _>>()?;
    let mut seen = BTreeSet::new();
    let mut once = |n: &str| if seen.insert(n.to_string()) { Ok(()) } else { Err(FleetError::Duplicate(n.into())) };
    let mut devices = Vec::new();
    for d in file.device {
        let id = name(&d.id, "device id")?;
        once(id.as_str())?;
        let mut groups = Vec::new();
        for g in &d.groups {
            let g = name(g, "group name")?;
            if !declared.contains(&g) {
                let declared = declared.iter().map(Name::as_str).collect::<Vec<_>>().join(", ");
                return Err(FleetError::UnknownGroup { device: d.id, group: g.to_string(), declared });
            }
            groups.push(g);
        }
        devices.push(Device { id, groups, identity: identity(d.password_file, base) });
    }
    let mut users = Vec::new();
    for u in file.user {
        if u.name.is_empty() || u.name.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':') {
            return Err(FleetError::BadUser(u.name));
        }
        once(&u.name)?;
        users.push(User { name: u.name, role: u.role, identity: identity(u.password_file, base) });
    }
    Ok(Fleet { devices, users })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "groups = [\"lab\", \"north\"]\n\
        [[device]]\nid = \"pi-07\"\ngroups = [\"lab\", \"north\"]\npassword_file = \"pw/pi-07\"\n\
        [[device]]\nid = \"jetson-1\"\n\
        [[user]]\nname = \"fleet\"\nrole = \"fleet-server\"\npassword_file = \"/etc/fleet.pw\"\n\
        [[user]]\nname = \"alice\"\nrole = \"operator\"\n";

    #[test]
    fn devices_users_and_identities_are_read() {
        let f = parse(TEXT, Path::new("/fleet")).unwrap();
        assert_eq!(f.devices.len(), 2);
        assert_eq!(f.devices[0].id.as_str(), "pi-07");
        assert_eq!(f.devices[0].groups.iter().map(Name::as_str).collect::<Vec<_>>(), ["lab", "north"]);
        assert_eq!(f.devices[0].identity, Identity::Password("/fleet/pw/pi-07".into()));
        assert_eq!(f.devices[1].identity, Identity::Certificate);
        assert_eq!(f.users[0].role, Role::FleetServer);
        assert_eq!(f.users[0].identity, Identity::Password("/etc/fleet.pw".into()));
        assert_eq!(f.users[1].role, Role::Operator);
    }

    #[test]
    fn bad_input_is_refused_with_its_reason() {
        let base = Path::new(".");
        let e = parse(&TEXT.replace("\"lab\", \"north\"]\npassword", "\"lab\", \"south\"]\npassword"), base);
        assert_eq!(e.unwrap_err().to_string(), "device pi-07: unknown group 'south' (declared: lab, north)");
        let e = parse(&TEXT.replace("pi-07\"\n", "pi/07\"\n"), base).unwrap_err();
        assert!(e.to_string().starts_with("'pi/07' is not a valid device id"), "{e}");
        let e = parse(&TEXT.replace("\"jetson-1\"", "\"pi-07\""), base).unwrap_err();
        assert!(e.to_string().contains("'pi-07' is listed twice"), "{e}");
        let e = parse(&TEXT.replace("\"alice\"", "\"pi-07\""), base).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let e = parse(&TEXT.replace("\"alice\"", "\"al ice\""), base).unwrap_err();
        assert!(e.to_string().contains("user name 'al ice'"), "{e}");
        assert!(parse(&TEXT.replace("operator", "admin"), base).is_err());
        assert!(parse("[[device]]\nid = \"x\"\ngroup = [\"lab\"]\n", base).is_err(), "unknown keys are refused");
    }
}
