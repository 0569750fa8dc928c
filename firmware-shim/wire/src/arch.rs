use core::fmt;
use serde::{Deserialize, Serialize};

/// CPU architectures a bundle can target: the boards Drover ships to, plus x86_64 for servers,
/// the simulator and tests.
///
/// Self-describing encodings (JSON payloads, manifests on disk) spell them as users type them
/// (`aarch64`, `armv7`, `x86_64`), one spelling everywhere; the capitalised names written before
/// are still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// 64-bit ARM: Raspberry Pi OS 64-bit, Jetson.
    #[serde(alias = "Aarch64")]
    Aarch64,
    /// 32-bit ARM with hard float: Raspberry Pi OS 32-bit.
    #[serde(alias = "Armv7")]
    Armv7,
    /// x86_64: development machines, CI, the fleet simulator.
    #[serde(alias = "X86_64")]
    X86_64,
}

impl Arch {
    /// Every architecture, for listings.
    pub const ALL: [Arch; 3] = [Arch::Aarch64, Arch::Armv7, Arch::X86_64];

    /// The architecture this code was compiled for, if it is one Drover ships to.
    pub const fn current() -> Option<Arch> {
        if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else if cfg!(target_arch = "arm") {
            Some(Arch::Armv7)
        } else if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else {
            None
        }
    }

    /// The name users type (`aarch64`, `armv7`, `x86_64`).
    pub const fn name(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64",
            Arch::Armv7 => "armv7",
            Arch::X86_64 => "x86_64",
        }
    }

    /// Parses a name as [`Arch::name`] prints it.
    pub fn parse(s: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == s)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
