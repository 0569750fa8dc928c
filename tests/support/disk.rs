//! Disks that fill up: a small tmpfs of a test's own, for the disk-full faults.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs mounted for one test and unmounted when dropped.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` at `dir`; `None` (skip) when not root outside CI.
    pub fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
        match status {
            Ok(s) if s.success() => Some(SmallDisk(dir.to_path_buf())),
            _ => {
                assert!(!crate::tools::in_ci(), "mounting a tmpfs needs root: CI runs as root");
                eprintln!("SKIPPED: cannot mount a tmpfs (not root)");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
