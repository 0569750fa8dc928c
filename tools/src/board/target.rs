//! The boards Drover packages for: Rust target triple, Debian architecture and ELF machine.

/// A board family's CPU and userland, as `drover package --target` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// 64-bit Arm: Raspberry Pi OS 64-bit (Pi 3/4/5), Jetson Linux (Ubuntu). A static musl agent.
    Aarch64,
    /// 32-bit Arm, hard float: Raspberry Pi OS 32-bit. A glibc agent (gnueabihf).
    Armv7,
    /// x86_64 PCs and VMs (and the tests' own machine). A static musl agent.
    #[value(name = "x86_64")]
    X86_64,
}

impl Target {
    /// The Rust target `drover package` builds the agent for.
    pub fn triple(self) -> &'static str {
        match self {
            Target::Aarch64 => "aarch64-unknown-linux-musl",
            Target::Armv7 => "armv7-unknown-linux-gnueabihf",
            Target::X86_64 => "x86_64-unknown-linux-musl",
        }
    }

    /// The `Architecture:` of the package (what `dpkg --print-architecture` says on the board).
    pub fn deb_arch(self) -> &'static str {
        match self {
            Target::Aarch64 => "arm64",
            Target::Armv7 => "armhf",
            Target::X86_64 => "amd64",
        }
    }

    /// The ELF `e_machine` of the agent built for it.
    pub fn elf_machine(self) -> u16 {
        match self {
            Target::Aarch64 => 0xB7,
            Target::Armv7 => 0x28,
            Target::X86_64 => 0x3E,
        }
    }

    /// The target whose agents have this ELF machine (to infer `--target` from `--agent`).
    pub fn from_elf_machine(machine: u16) -> Option<Target> {
        [Target::Aarch64, Target::Armv7, Target::X86_64].into_iter().find(|t| t.elf_machine() == machine)
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Aarch64 => "aarch64",
            Target::Armv7 => "armv7",
            Target::X86_64 => "x86_64",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_target_round_trips_through_its_elf_machine() {
        for t in [Target::Aarch64, Target::Armv7, Target::X86_64] {
            assert_eq!(Target::from_elf_machine(t.elf_machine()), Some(t));
        }
        assert_eq!(Target::from_elf_machine(0x08), None, "MIPS is not a Drover target");
        assert_eq!(Target::Armv7.deb_arch(), "armhf");
    }
}
