//! What `drover package` checks of an agent binary before packaging it: that it is an ELF
//! executable for the package's architecture, and whether it is static (no program
//! interpreter), so a wrong `--agent` is refused instead of failing on the board.

use super::target::Target;

/// Facts read from an ELF header and its program headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfFacts {
    /// The target whose machine the file declares.
    pub target: Target,
    /// 64-bit (ELFCLASS64) or 32-bit.
    pub is_64: bool,
    /// No `PT_INTERP`: the kernel runs it without a dynamic loader.
    pub is_static: bool,
}

/// Why a file is not an agent Drover can package.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// Not an ELF file, or cut short.
    #[error("not an ELF executable ({0})")]
    NotElf(&'static str),
    /// An ELF file for a machine Drover does not target.
    #[error("an ELF file for machine {0:#x}, not aarch64, armv7 or x86_64")]
    Machine(u16),
}

const PT_INTERP: u32 = 3;

fn u16_at(b: &[u8], at: usize) -> Result<u16, ElfError> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or(ElfError::NotElf("header cut short"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ElfError> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok_or(ElfError::NotElf("cut short"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, ElfError> {
    let s = b.get(at..at + 8).ok_or(ElfError::NotElf("cut short"))?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// Reads the facts from the start of a file (the header and program headers must be inside
/// `bytes`; linkers put them in the first page).
pub fn inspect(bytes: &[u8]) -> Result<ElfFacts, ElfError> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err(ElfError::NotElf("no ELF magic"));
    }
    let is_64 = match bytes.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(ElfError::NotElf("unknown ELF class")),
    };
    if bytes.get(5) != Some(&1) {
        return Err(ElfError::NotElf("not little-endian"));
    }
    let machine = u16_at(bytes, 18)?;
    let target = Target::from_elf_machine(machine).ok_or(ElfError::Machine(machine))?;
    let (phoff, phentsize, phnum) = if is_64 {
        (u64_at(bytes, 0x20)?, u16_at(bytes, 0x36)?, u16_at(bytes, 0x38)?)
    } else {
        (u64::from(u32_at(bytes, 0x1C)?), u16_at(bytes, 0x2A)?, u16_at(bytes, 0x2C)?)
    };
    let phoff = usize::try_from(phoff).map_err(|_| ElfError::NotElf("program headers out of range"))?;
    let mut is_static = true;
    for i in 0..usize::from(phnum) {
        let at = phoff + i * usize::from(phentsize);
        if u32_at(bytes, at)? == PT_INTERP {
            is_static = false;
        }
    }
    Ok(ElfFacts { target, is_64, is_static })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with the given machine and program header types.
    fn elf64(machine: u16, types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3A].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            b.extend(ph);
        }
        b
    }

    #[test]
    fn an_interpreter_makes_a_binary_dynamic() {
        let f = inspect(&elf64(0xB7, &[6, 1, 1])).unwrap();
        assert_eq!(f, ElfFacts { target: Target::Aarch64, is_64: true, is_static: true });
        assert!(!inspect(&elf64(0x3E, &[6, PT_INTERP, 1])).unwrap().is_static);
    }

    #[test]
    fn foreign_and_broken_files_are_refused() {
        assert_eq!(inspect(&elf64(0x08, &[])), Err(ElfError::Machine(0x08)));
        assert!(matches!(inspect(b"#!/bin/sh\n"), Err(ElfError::NotElf(_))));
        let mut cut = elf64(0xB7, &[1, 1]);
        cut.truncate(80);
        assert!(matches!(inspect(&cut), Err(ElfError::NotElf(_))));
    }

    #[test]
    fn the_test_binary_itself_is_recognised() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let f = inspect(&me).unwrap();
        assert_eq!(f.is_64, cfg!(target_pointer_width = "64"));
    }
}
