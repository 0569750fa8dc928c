//! The board's health from Linux's own files: CPU from `/proc/stat` deltas, memory from
//! `/proc/meminfo`, the agent's resident set from `/proc/self/statm`, uptime from `/proc/uptime`,
//! temperature from `/sys/class/thermal/thermal_zone*/temp` (the Raspberry Pi's `cpu-thermal`,
//! the Jetson's several zones), disk from `statvfs` on the data dir.
//!
//! The root is a parameter so tests read a prepared tree; the parsers are pure functions. A
//! figure the board does not expose is left out, never guessed.

use std::path::{Path, PathBuf};

use drover_wire::telemetry::System;

/// Reads the host's health; keeps the previous CPU counters to report usage over the period.
#[derive(Debug)]
pub struct SystemProbe {
    root: PathBuf,
    data_dir: PathBuf,
    last_cpu: Option<CpuTimes>,
}

/// Jiffies from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time not idle.
    pub busy: u64,
    /// All time.
    pub total: u64,
}

impl SystemProbe {
    /// A probe of the host whose file system is mounted at `root` (`/` on a board), reporting
    /// disk use for `data_dir`.
    pub fn new(root: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> SystemProbe {
        SystemProbe { root: root.into(), data_dir: data_dir.into(), last_cpu: None }
    }

    /// One reading. CPU usage needs two readings (it is over the time between them).
    pub fn sample(&mut self) -> System {
        let read = |p: &str| std::fs::read_to_string(self.root.join(p)).ok();
        let cpu = read("proc/stat").and_then(|s| parse_cpu(&s));
        let cpu_pct = match (self.last_cpu, cpu) {
            (Some(a), Some(b)) if b.total > a.total => {
                Some(100.0 * (b.busy.saturating_sub(a.busy)) as f32 / (b.total - a.total) as f32)
            }
            _ => None,
        };
        self.last_cpu = cpu.or(self.last_cpu);
        let (mem_total_kib, mem_available_kib) = read("proc/meminfo").map(|s| parse_meminfo(&s)).unwrap_or((0, 0));
        let page_kib = 4; // every Linux target Drover ships for uses 4 KiB pages
        let rss_kib = read("proc/self/statm").and_then(|s| parse_statm_resident(&s)).unwrap_or(0) * page_kib;
        let boot_uptime_s = read("proc/uptime").and_then(|s| parse_uptime(&s)).unwrap_or(0);
        let (disk_used_kib, disk_total_kib) = disk_usage(&self.data_dir).unwrap_or((0, 0));
        System {
            cpu_pct,
            mem_used_kib: mem_total_kib.saturating_sub(mem_available_kib),
            mem_total_kib,
            rss_kib,
            disk_used_kib,
            disk_total_kib,
            temp_c: hottest_zone(&self.root.join("sys/class/thermal")),
            boot_uptime_s,
        }
    }
}

/// The aggregate `cpu` line: busy = everything but idle and iowait.
pub fn parse_cpu(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map_while(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user/nice)
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some(CpuTimes { busy: total - idle, total })
}

/// `(MemTotal, MemAvailable)` in KiB (MemFree + Buffers + Cached on kernels before 3.14).
pub fn parse_meminfo(meminfo: &str) -> (u64, u64) {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let total = field("MemTotal").unwrap_or(0);
    let available = field("MemAvailable").unwrap_or_else(|| {
        field("MemFree").unwrap_or(0) + field("Buffers").unwrap_or(0) + field("Cached").unwrap_or(0)
    });
    (total, available)
}

/// Resident pages, the second field of `/proc/self/statm`.
pub fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// Whole seconds since boot, the first field of `/proc/uptime`.
pub fn parse_uptime(uptime: &str) -> Option<u64> {
    let secs: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

/// The hottest thermal zone in °C (zones report millidegrees; unreadable or absurd ones skipped).
fn hottest_zone(thermal: &Path) -> Option<f32> {
    let zones = std::fs::read_dir(thermal).ok()?;
    zones
        .filter_map(|z| z.ok())
        .filter(|z| z.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|z| std::fs::read_to_string(z.path().join("temp")).ok())
        .filter_map(|t| t.trim().parse::<i64>().ok())
        .map(|milli| milli as f32 / 1000.0)
        .filter(|c| (-60.0..=200.0).contains(c))
        .max_by(f32::total_cmp)
}

/// `(used, total)` KiB of the file system holding `dir`.
fn disk_usage(dir: &Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(dir).ok()?;
    let unit = s.f_frsize.max(1);
    let total = s.f_blocks.saturating_mul(unit) / 1024;
    let free = s.f_bfree.saturating_mul(unit) / 1024;
    Some((total.saturating_sub(free), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a Raspberry Pi 4 (Raspberry Pi OS 64-bit, kernel 6.6).
    const STAT_1: &str = "cpu  10132153 290696 3084719 46828483 16683 0 25195 0 0 0\ncpu0 1393280 32966 572056 7316956 3234 0 11204 0 0 0\nintr 1\n";
    const STAT_2: &str = "cpu  10132253 290696 3084819 46828683 16683 0 25195 0 0 0\ncpu0 1393280 32966 572056 7316956 3234 0 11204 0 0 0\nintr 1\n";
    const MEMINFO: &str = "MemTotal:        3885396 kB\nMemFree:          187828 kB\nMemAvailable:    2973744 kB\nBuffers:          123456 kB\nCached:          2600000 kB\n";

    #[test]
    fn cpu_usage_is_the_busy_share_of_the_time_between_two_readings() {
        let a = parse_cpu(STAT_1).expect("cpu line");
        let b = parse_cpu(STAT_2).expect("cpu line");
        assert_eq!(b.total - a.total, 400);
        assert_eq!(b.busy - a.busy, 200);
        assert_eq!(parse_cpu("cpu0 1 2 3 4\n"), None, "only the aggregate line counts");
        assert_eq!(parse_cpu("cpu  1 2\n"), None);
    }

    #[test]
    fn memory_prefers_memavailable_and_falls_back_on_old_kernels() {
        assert_eq!(parse_meminfo(MEMINFO), (3_885_396, 2_973_744));
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
        assert_eq!(parse_meminfo(old), (1000, 400));
        assert_eq!(parse_meminfo("garbage"), (0, 0));
    }

    #[test]
    fn small_parsers_refuse_garbage() {
        assert_eq!(parse_statm_resident("2411 1024 512 1 0 300 0\n"), Some(1024));
        assert_eq!(parse_statm_resident("2411"), None);
        assert_eq!(parse_uptime("3600.52 7000.10\n"), Some(3600));
        assert_eq!(parse_uptime("-1 0"), None);
        assert_eq!(parse_uptime("NaN 0"), None);
    }

    #[test]
    fn a_prepared_tree_reads_like_a_board() {
        let root = tempfile::tempdir().expect("tmp");
        let w = |p: &str, s: &str| {
            let path = root.path().join(p);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            std::fs::write(path, s).expect("write");
        };
        w("proc/stat", STAT_1);
        w("proc/meminfo", MEMINFO);
        w("proc/self/statm", "2411 1024 512 1 0 300 0\n");
        w("proc/uptime", "3600.52 7000.10\n");
        w("sys/class/thermal/thermal_zone0/temp", "48850\n");
        w("sys/class/thermal/thermal_zone1/temp", "51300\n");
        w("sys/class/thermal/thermal_zone2/temp", "garbage\n");
        w("sys/class/thermal/cooling_device0/temp", "99000\n");
        let mut probe = SystemProbe::new(root.path(), root.path());
        let first = probe.sample();
        assert_eq!(first.cpu_pct, None, "usage needs two readings");
        assert_eq!((first.mem_total_kib, first.mem_used_kib), (3_885_396, 3_885_396 - 2_973_744));
        assert_eq!((first.rss_kib, first.boot_uptime_s), (4096, 3600));
        assert_eq!(first.temp_c, Some(51.3));
        assert!(first.disk_total_kib > 0 && first.disk_used_kib <= first.disk_total_kib);
        w("proc/stat", STAT_2);
        assert_eq!(probe.sample().cpu_pct, Some(50.0));
    }

    #[test]
    fn a_board_without_thermal_zones_reports_no_temperature() {
        let root = tempfile::tempdir().expect("tmp");
        let mut probe = SystemProbe::new(root.path(), root.path());
        let s = probe.sample();
        assert_eq!((s.temp_c, s.cpu_pct, s.mem_total_kib), (None, None, 0));
    }
}
