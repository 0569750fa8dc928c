//! ARM instruction counts under qemu-user: the proxy for speed on the boards, which cannot be
//! timed on an x86 machine.
//!
//! qemu's `-d in_asm,exec,nochain` log names every translated block with its instructions once
//! (`IN:` then one `0x<addr>:` line per instruction) and every executed block once per execution
//! (`Trace …: … [<cs>/<pc>/…]`; `nochain` makes each execution visible). Summing the size of
//! every executed block gives the instructions the program ran. The log is streamed through a
//! FIFO and parsed as it comes, so nothing of its gigabytes reaches the disk.
//!
//! What it cannot tell: an instruction count is not a time. A NEON instruction does 4–16 lanes
//! of work and a scalar one a single value; caches, memory bandwidth, issue width and the
//! latencies of a real Cortex-A72/A76 are not modelled. Comparing two builds of the same work
//! (int8 against fp32, one kernel family against another) is what it is good for.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// What one run under qemu executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// Guest instructions executed.
    pub instructions: u64,
    /// Translation blocks executed.
    pub blocks: u64,
}

/// Runs `program args…` under `qemu` (`qemu_args` before the program: `-cpu`, `-L`; `env` set
/// for it) and counts the instructions it executes. Fails when the program does not exit
/// successfully.
pub fn count(
    qemu: &str,
    qemu_args: &[&str],
    env: &[(&str, &str)],
    program: &Path,
    args: &[&str],
) -> Result<Count, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let fifo = dir.path().join("log");
    let made = Command::new("mkfifo").arg(&fifo).status().map_err(|e| format!("mkfifo: {e}"))?;
    if !made.success() {
        return Err(format!("mkfifo {} failed", fifo.display()));
    }
    // The program's messages go to a file: a pipe nobody reads while the log is parsed could fill
    // and stop it.
    let err_path = dir.path().join("stderr");
    let err = std::fs::File::create(&err_path).map_err(|e| format!("{}: {e}", err_path.display()))?;
    let child = Command::new(qemu)
        .args(qemu_args)
        .envs(env.iter().copied())
        .args(["-d", "in_asm,exec,nochain", "-D"])
        .arg(&fifo)
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{qemu}: {e}"))?;
    let log = std::fs::File::open(&fifo).map_err(|e| format!("open {}: {e}", fifo.display()))?;
    let counted = parse(BufReader::with_capacity(1 << 20, log));
    let out = child.wait_with_output().map_err(|e| format!("{qemu}: {e}"))?;
    if !out.status.success() {
        let why = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(format!("{} under {qemu}: {}: {why}", program.display(), out.status));
    }
    counted
}

/// Sums the executed blocks' instructions from a qemu `in_asm,exec,nochain` log.
pub fn parse(mut log: impl BufRead) -> Result<Count, String> {
    let mut sizes: HashMap<u64, u64> = HashMap::new();
    let (mut instructions, mut blocks) = (0u64, 0u64);
    let mut block: Option<(u64, u64)> = None;
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = log.read_until(b'\n', &mut line).map_err(|e| format!("reading the log: {e}"))?;
        if n == 0 {
            break;
        }
        if line.starts_with(b"Trace") {
            if let Some(pc) = trace_pc(&line) {
                instructions += sizes.get(&pc).copied().unwrap_or(0);
                blocks += 1;
            }
        } else if line.starts_with(b"IN:") {
            block = None;
        } else if line.starts_with(b"0x")
            && let Some(addr) = insn_addr(&line)
        {
            let (start, n) = block.map_or((addr, 1), |(s, n)| (s, n + 1));
            block = Some((start, n));
            sizes.insert(start, n);
        }
    }
    Ok(Count { instructions, blocks })
}

/// The pc of `Trace 0: 0x… [00000000/0000000000400120/…] …`.
fn trace_pc(line: &[u8]) -> Option<u64> {
    let open = line.iter().position(|b| *b == b'[')?;
    let mut fields = line[open + 1..].split(|b| *b == b'/');
    fields.next()?;
    hex(fields.next()?)
}

/// The address of `0x0000000000400120:  d2800000  mov x0, #0`.
fn insn_addr(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|b| *b == b':')?;
    hex(&line[2..end])
}

fn hex(digits: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(digits).ok()?.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log as qemu 10 writes it: two blocks translated, executed 3 and 2 times.
    #[test]
    fn executed_blocks_are_summed_by_their_translated_size() {
        let log = b"IN: _start\n\
0x0000000000400120:  d2800000  mov x0, #0\n\
0x0000000000400124:  d2800021  mov x1, #1\n\
0x0000000000400128:  14000002  b #0x400130\n\
\n\
Trace 0: 0x7f00 [00000000/0000000000400120/00000000/ff000000] _start\n\
IN: loop\n\
0x0000000000400130:  91000400  add x0, x0, #1\n\
0x0000000000400134:  d65f03c0  ret\n\
\n\
Trace 0: 0x7f40 [00000000/0000000000400130/00000000/ff000000] loop\n\
Trace 0: 0x7f00 [00000000/0000000000400120/00000000/ff000000] _start\n\
Trace 0: 0x7f40 [00000000/0000000000400130/00000000/ff000000] loop\n\
Trace 0: 0x7f00 [00000000/0000000000400120/00000000/ff000000] _start\n";
        let c = parse(&log[..]).expect("parses");
        assert_eq!(c, Count { instructions: 3 * 3 + 2 * 2, blocks: 5 });
    }
}
