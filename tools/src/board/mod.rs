//! Getting the agent onto real boards: the Debian package (`package`, `unit`, `elf`), the
//! fleet's CA and each device's provisioning (`pki`, `provision`), and installing over SSH
//! (`install`, `ssh`, `hosts`, `online`). The pure parts (texts, plans, rules) are separate
//! from the parts that run `dpkg-deb`, `ssh` and `scp`, so they are unit-tested without them.

pub mod elf;
pub mod flash;
pub mod hosts;
pub mod install;
pub mod online;
pub mod package;
pub mod pki;
pub mod provision;
pub mod secret;
pub mod ssh;
pub mod target;
pub mod unit;
pub mod watch;
