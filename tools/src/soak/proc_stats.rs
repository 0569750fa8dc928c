//! What a process holds, read from Linux's `/proc`: the soak's evidence of a leak is memory,
//! descriptors or threads that keep growing while the work stays the same.

use std::path::Path;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// Resident memory now, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// The most resident memory so far, KiB (`VmHWM`).
    pub peak_kib: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors (sockets included).
    pub fds: u64,
}

/// `VmRSS`, `VmHWM` and `Threads` of a `/proc/PID/status` text, in that order.
pub fn parse_status(text: &str) -> Result<(u64, u64, u64), String> {
    let field = |name: &str| -> Result<u64, String> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .ok_or_else(|| format!("no {name} in the process status"))?;
        let number = line.split_whitespace().next().ok_or_else(|| format!("{name} has no value"))?;
        number.parse().map_err(|e| format!("{name} {number:?}: {e}"))
    };
    Ok((field("VmRSS")?, field("VmHWM")?, field("Threads")?))
}

/// Reads process `pid` now.
pub fn read(pid: u32) -> Result<ProcSample, String> {
    let dir = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).map_err(|e| format!("process {pid}: {e}"))?;
    let (rss_kib, peak_kib, threads) = parse_status(&status)?;
    let fds = std::fs::read_dir(dir.join("fd")).map_err(|e| format!("process {pid} descriptors: {e}"))?.count() as u64;
    Ok(ProcSample { rss_kib, peak_kib, threads, fds })
}

/// Bytes of the regular files under `dir` (the agent's data dir: slots, outbox, state).
pub fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tdrover-agent\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  123456 kB\n\
                          VmHWM:\t   20480 kB\nVmRSS:\t   18432 kB\nThreads:\t5\nSigQ:\t0/62837\n";

    #[test]
    fn the_status_fields_are_read_by_name() {
        assert_eq!(parse_status(STATUS), Ok((18432, 20480, 5)));
        let err = parse_status("VmRSS:\t1 kB\nThreads:\t2\n").unwrap_err();
        assert!(err.contains("VmHWM"), "{err}");
        assert!(parse_status("VmRSS:\tlots kB\nVmHWM:\t1 kB\nThreads:\t1\n").is_err());
    }

    #[test]
    fn this_process_is_readable() {
        let me = read(std::process::id()).unwrap();
        assert!(me.rss_kib > 0 && me.peak_kib >= me.rss_kib && me.threads >= 1 && me.fds >= 3, "{me:?}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("y"), [0u8; 23]).unwrap();
        assert_eq!(tree_bytes(dir.path()), 123);
    }
}
