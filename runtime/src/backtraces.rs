//! Library backtraces off in the agent, panics' backtraces kept.
//!
//! tract reports failures it expects inside its optimiser (a rewrite that does not apply, a
//! dimension not known yet) as `anyhow` errors and drops them, hundreds per model. With
//! `RUST_BACKTRACE` set, as a developer or a systemd drop-in may set it to debug a crash, every
//! one of them captures a backtrace. The static aarch64 agent unwinds with LLVM's libunwind, which
//! scans the unwind tables of the whole binary for each frame: an int8 model's load took up to 7
//! times the instructions (docs/boards.md, "Ready"). `RUST_LIB_BACKTRACE=0` turns off the capture
//! for errors and leaves it on for panics, but std reads it once, and setting a variable in a running
//! process is `unsafe`: so the agent starts itself again with it, once, before doing anything.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The variable that turns backtraces on for panics and, unless told otherwise, for errors.
const PANICS: &str = "RUST_BACKTRACE";
/// The variable that decides for errors alone.
const ERRORS: &str = "RUST_LIB_BACKTRACE";

/// What [`restart_without_library_backtraces`] did, when it returned.
#[derive(Debug)]
pub enum Restart {
    /// Nothing to do: backtraces are off, or the user chose for errors explicitly.
    NotNeeded,
    /// The agent could not start itself again (its own file is gone, or a qemu-user without
    /// binfmt cannot run it): it goes on, with errors capturing backtraces.
    Failed(std::io::Error),
}

/// Whether the environment `get` describes turns backtraces on for errors by default: set for
/// panics, not decided for errors.
pub fn errors_capture_backtraces(get: impl Fn(&str) -> Option<OsString>) -> bool {
    get(PANICS).is_some_and(|v| v != "0") && get(ERRORS).is_none()
}

/// Replaces this process by the same program with the same arguments and `RUST_LIB_BACKTRACE=0`
/// when [`errors_capture_backtraces`] says so; returns only when it did not. Call it first thing
/// in `main`, before any thread or file is opened.
pub fn restart_without_library_backtraces() -> Restart {
    if !errors_capture_backtraces(|name| std::env::var_os(name)) {
        return Restart::NotNeeded;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Restart::Failed(e),
    };
    let mut args = std::env::args_os();
    let mut command = Command::new(exe);
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    Restart::Failed(command.args(args).env(ERRORS, "0").exec())
}

/// Logs what [`restart_without_library_backtraces`] did for `program`, once its logger is set up:
/// a warning if it could not restart, a debug line when library backtraces are off.
pub fn report(restart: &Restart, program: &str) {
    match restart {
        Restart::Failed(e) => log::warn!(
            "RUST_BACKTRACE is set and {program} could not start itself again without library backtraces ({e}): \
             loading models may be several times slower; set RUST_LIB_BACKTRACE=0 as well"
        ),
        Restart::NotNeeded if std::env::var_os(ERRORS).is_some_and(|v| v == "0") => {
            log::debug!("library backtraces off (RUST_LIB_BACKTRACE=0); panics keep theirs")
        }
        Restart::NotNeeded => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn only_an_undecided_library_setting_under_panic_backtraces_is_changed() {
        assert!(errors_capture_backtraces(env(&[("RUST_BACKTRACE", "1")])));
        assert!(errors_capture_backtraces(env(&[("RUST_BACKTRACE", "full")])));
        assert!(!errors_capture_backtraces(env(&[])));
        assert!(!errors_capture_backtraces(env(&[("RUST_BACKTRACE", "0")])));
        // The user's own choice for errors stands, either way.
        assert!(!errors_capture_backtraces(env(&[("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")])));
        assert!(!errors_capture_backtraces(env(&[("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "0")])));
    }
}
