//! What a simulated fleet does: its traffic profile (`--profile F`, TOML) and the schedule of
//! faults drawn from it, pure and deterministic for a seed, so a run can be repeated and the
//! schedule is unit-tested without agents.

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A traffic profile. Every field has a default, so a file names only what it changes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// Inferences per second per device.
    pub rate_hz: f64,
    /// Telemetry period of every device, s.
    pub telemetry_period_s: u32,
    /// Samples per drift window.
    pub drift_window: u32,
    /// Share of the devices whose inputs drift (0..=1).
    pub drift_share: f64,
    /// When their inputs start drifting, s after the start.
    pub drift_after_s: u64,
    /// What drifting devices add to every input feature.
    pub drift_shift: f32,
    /// Mean time between a device's power cuts, s (the agent is killed where it stands and
    /// starts again after `outage_s`); 0: never.
    pub outage_every_s: u64,
    /// How long a power cut lasts, s.
    pub outage_s: u64,
    /// Chance that a device loses power while it receives a bundle (0..=1), once per transfer.
    pub crash_during_update: f64,
    /// Seed of every draw.
    pub seed: u64,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            rate_hz: 1.0,
            telemetry_period_s: 10,
            drift_window: 100,
            drift_share: 0.1,
            drift_after_s: 60,
            drift_shift: 3.0,
            outage_every_s: 0,
            outage_s: 10,
            crash_during_update: 0.0,
            seed: 1,
        }
    }
}

/// Why a profile cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Not TOML, or an unknown field.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A value out of range.
    #[error("{0}")]
    Range(String),
}

impl Profile {
    /// Parses and checks a profile file's text.
    pub fn parse(text: &str) -> Result<Profile, ProfileError> {
        let p: Profile = toml::from_str(text)?;
        p.check()?;
        Ok(p)
    }

    /// Refuses values the simulator cannot honour.
    pub fn check(&self) -> Result<(), ProfileError> {
        let share = |v: f64, name: &str| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(ProfileError::Range(format!("{name} must be within 0..=1, not {v}")))
            }
        };
        share(self.drift_share, "drift_share")?;
        share(self.crash_during_update, "crash_during_update")?;
        if !(self.rate_hz.is_finite() && (0.0..=1000.0).contains(&self.rate_hz)) {
            return Err(ProfileError::Range(format!("rate_hz must be within 0..=1000, not {}", self.rate_hz)));
        }
        if self.telemetry_period_s == 0 || self.drift_window == 0 {
            return Err(ProfileError::Range("telemetry_period_s and drift_window must be at least 1".into()));
        }
        if !self.drift_shift.is_finite() {
            return Err(ProfileError::Range("drift_shift must be a number".into()));
        }
        Ok(())
    }
}

/// A uniform draw in [0, 1) from the seed and what it is for.
fn draw(seed: u64, what: &str, device: usize, n: u64) -> f64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(what.as_bytes());
    h.update((device as u64).to_le_bytes());
    h.update(n.to_le_bytes());
    let d = h.finalize();
    let x = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Something the simulator does to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Its inputs start drifting.
    Drift(usize),
    /// It loses power.
    PowerCut(usize),
    /// Power comes back.
    PowerBack(usize),
}

/// Per device: when its next power cut is, whether it is down until when.
#[derive(Debug, Clone)]
struct Next {
    cut_at_ms: u64,
    cuts: u64,
    back_at_ms: Option<u64>,
    drifts: bool,
    drifting: bool,
}

/// The faults of a run, in time order, for `devices` devices.
#[derive(Debug, Clone)]
pub struct Schedule {
    profile: Profile,
    next: Vec<Next>,
}

impl Schedule {
    /// The schedule from the start of a run (time 0).
    pub fn new(profile: &Profile, devices: usize) -> Schedule {
        let drifting = (devices as f64 * profile.drift_share).round() as usize;
        // The drifting devices spread evenly over the fleet (every k-th), so any group or slice
        // of it has some.
        let step = if drifting == 0 { usize::MAX } else { devices.div_ceil(drifting).max(1) };
        let next = (0..devices)
            .map(|d| {
                let mut n = Next { cut_at_ms: u64::MAX, cuts: 0, back_at_ms: None, drifts: false, drifting: false };
                n.drifts = drifting > 0 && d % step == 0 && d / step < drifting;
                n.cut_at_ms = Self::cut_after(profile, d, 0, 0);
                n
            })
            .collect();
        Schedule { profile: profile.clone(), next }
    }

    /// The time of the device's `n`-th power cut after `from_ms`: exponential gaps of mean
    /// `outage_every_s`.
    fn cut_after(p: &Profile, device: usize, n: u64, from_ms: u64) -> u64 {
        if p.outage_every_s == 0 {
            return u64::MAX;
        }
        let u = draw(p.seed, "cut", device, n).max(1e-12);
        let gap_ms = -(u.ln()) * p.outage_every_s as f64 * 1000.0;
        from_ms.saturating_add(gap_ms.min(1e15) as u64)
    }

    /// Whether the device is one whose inputs drift (once the drift has started).
    pub fn drifts(&self, device: usize) -> bool {
        self.next[device].drifts
    }

    /// The faults due by `now_ms` (each once, in device order within a call).
    pub fn due(&mut self, now_ms: u64) -> Vec<Fault> {
        let mut out = Vec::new();
        let drift_ms = self.profile.drift_after_s.saturating_mul(1000);
        for (d, n) in self.next.iter_mut().enumerate() {
            if n.drifts && !n.drifting && now_ms >= drift_ms {
                n.drifting = true;
                out.push(Fault::Drift(d));
            }
            if let Some(back) = n.back_at_ms {
                if now_ms >= back {
                    n.back_at_ms = None;
                    n.cuts += 1;
                    n.cut_at_ms = Self::cut_after(&self.profile, d, n.cuts, now_ms);
                    out.push(Fault::PowerBack(d));
                }
            } else if now_ms >= n.cut_at_ms {
                n.back_at_ms = Some(now_ms.saturating_add(self.profile.outage_s.saturating_mul(1000)));
                out.push(Fault::PowerCut(d));
            }
        }
        out
    }

    /// A device was seen receiving transfer `transfer`: whether it loses power now (decided
    /// once per device and transfer).
    pub fn crash_on_transfer(&self, device: usize, transfer: &str) -> bool {
        let mut h = Sha256::new();
        h.update(transfer.as_bytes());
        let t = h.finalize();
        let n = u64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
        draw(self.profile.seed, "update", device, n) < self.profile.crash_during_update
    }

    /// A power cut outside the schedule (a crash during an update): power comes back after
    /// the profile's outage, and the schedule goes on from there.
    pub fn cut_now(&mut self, device: usize, now_ms: u64) {
        let n = &mut self.next[device];
        if n.back_at_ms.is_none() {
            n.back_at_ms = Some(now_ms.saturating_add(self.profile.outage_s.saturating_mul(1000)));
        }
    }

    /// Whether the device is down (between a cut and power coming back).
    pub fn is_down(&self, device: usize) -> bool {
        self.next[device].back_at_ms.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_names_only_what_it_changes_and_bad_values_are_refused() {
        let p = Profile::parse("rate_hz = 5\ndrift_share = 0.2\n").unwrap();
        assert_eq!((p.rate_hz, p.drift_share, p.telemetry_period_s), (5.0, 0.2, 10));
        assert!(Profile::parse("rate = 5").unwrap_err().to_string().contains("unknown field"));
        assert!(Profile::parse("drift_share = 1.5").unwrap_err().to_string().contains("drift_share"));
        assert!(Profile::parse("rate_hz = -1").is_err());
        assert!(Profile::parse("telemetry_period_s = 0").is_err());
    }

    #[test]
    fn drift_starts_once_on_an_even_spread_of_the_share() {
        let p = Profile { drift_share: 0.1, drift_after_s: 5, ..Profile::default() };
        let mut s = Schedule::new(&p, 100);
        let drifting: Vec<usize> = (0..100).filter(|&d| s.drifts(d)).collect();
        assert_eq!(drifting.len(), 10);
        assert_eq!(drifting, (0..10).map(|k| k * 10).collect::<Vec<_>>());
        assert!(s.due(4_999).is_empty());
        let due = s.due(5_000);
        assert_eq!(due.len(), 10);
        assert!(due.iter().all(|f| matches!(f, Fault::Drift(_))));
        assert!(s.due(60_000).is_empty(), "once");
        assert!((0..7).all(|d| !Schedule::new(&Profile { drift_share: 0.0, ..p.clone() }, 7).drifts(d)));
    }

    #[test]
    fn power_cuts_come_back_after_the_outage_and_average_the_mean_gap() {
        let p = Profile { outage_every_s: 100, outage_s: 10, drift_share: 0.0, ..Profile::default() };
        let mut s = Schedule::new(&p, 50);
        let (mut cuts, mut backs) = (0, 0);
        let mut down = [false; 50];
        for t in (0..=10_000_000u64).step_by(500) {
            for f in s.due(t) {
                match f {
                    Fault::PowerCut(d) => {
                        assert!(!down[d], "one cut at a time");
                        down[d] = true;
                        cuts += 1;
                        assert!(s.is_down(d));
                    }
                    Fault::PowerBack(d) => {
                        assert!(down[d]);
                        down[d] = false;
                        backs += 1;
                    }
                    Fault::Drift(_) => panic!("no drift in this profile"),
                }
            }
        }
        // 50 devices × 10,000 s / (100 s + 10 s down) ≈ 4,545 cuts.
        assert!((4_000..5_100).contains(&cuts), "{cuts}");
        assert!(cuts - backs <= 50);
        let never = Profile { outage_every_s: 0, ..p };
        assert!(Schedule::new(&never, 5).due(u64::MAX / 2).is_empty());
    }

    #[test]
    fn crashes_during_updates_follow_the_chance_and_repeat_for_a_seed() {
        let p = Profile { crash_during_update: 0.25, ..Profile::default() };
        let s = Schedule::new(&p, 1000);
        let hit = (0..1000).filter(|&d| s.crash_on_transfer(d, "t1")).count();
        assert!((200..300).contains(&hit), "{hit}");
        assert_eq!(hit, (0..1000).filter(|&d| s.crash_on_transfer(d, "t1")).count(), "deterministic");
        let other = (0..1000).filter(|&d| s.crash_on_transfer(d, "t1") != s.crash_on_transfer(d, "t2")).count();
        assert!(other > 100, "each transfer draws anew");
        let none = Schedule::new(&Profile { crash_during_update: 0.0, ..p }, 10);
        assert!((0..10).all(|d| !none.crash_on_transfer(d, "t1")));
    }

    #[test]
    fn a_crash_outside_the_schedule_comes_back_too() {
        let p = Profile { outage_s: 3, ..Profile::default() };
        let mut s = Schedule::new(&p, 2);
        s.cut_now(1, 1_000);
        assert!(s.is_down(1) && !s.is_down(0));
        assert!(s.due(3_999).iter().all(|f| !matches!(f, Fault::PowerBack(_))));
        assert!(s.due(4_000).contains(&Fault::PowerBack(1)));
        assert!(!s.is_down(1));
    }
}
