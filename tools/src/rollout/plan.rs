//! What an operator asks of a rollout: the version, the group, the stages as shares of the
//! group, how long each stage shadows and soaks, and the gates that stop a bad version.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The thresholds a stage must hold to go on. Unset gates are not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    /// Most errors per request over the soak window on the stage's devices (0.01 = 1 %).
    pub max_error_rate: Option<f64>,
    /// Least top-1 agreement of the candidate with the served model while it shadows.
    pub min_shadow_agreement: Option<f64>,
    /// Most the stage's drift score may exceed the rest of the group's (PSI, absolute).
    pub max_drift_increase: Option<f64>,
    /// Most the stage's median p99 may exceed the rest of the group's (0.5 = 50 % slower).
    pub max_p99_increase: Option<f64>,
}

/// A rollout as created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Its id (`{model}-v{version}-{n}`).
    pub id: String,
    /// The model.
    pub model: String,
    /// The version rolled out.
    pub version: u64,
    /// The group it reaches.
    pub group: String,
    /// Cumulative shares of the group per stage, percent, rising, the last 100.
    pub stages: Vec<u32>,
    /// Before a stage activates the version, it runs in shadow this long (0: no shadow).
    pub shadow_ms: u64,
    /// How long a stage soaks, active, before the gates are judged and the next stage starts.
    pub soak_ms: u64,
    /// How long a stage's devices have to install (or stage) the version.
    pub install_timeout_ms: u64,
    /// Least answered requests per device before a window's gates are judged; a window that
    /// saw fewer waits (up to twice its length) rather than pass on no evidence.
    pub min_requests: u64,
    /// The gates.
    pub gates: Gates,
}

/// Why a plan is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No stages, not rising, outside 1..=100, or not ending at 100.
    #[error("stages must rise from 1 to 100 percent and end at 100 (e.g. 1,10,50,100), not {0}")]
    Stages(String),
    /// A gate is out of range.
    #[error("{0}")]
    Gate(String),
    /// A duration is zero where it cannot be.
    #[error("{0}")]
    Duration(String),
}

impl Plan {
    /// Checks the plan; a rollout never starts on one it cannot carry out.
    pub fn validate(&self) -> Result<(), PlanError> {
        let s = &self.stages;
        let rising = s.windows(2).all(|w| w[0] < w[1]);
        if s.is_empty() || !rising || s[0] == 0 || s.last() != Some(&100) {
            return Err(PlanError::Stages(format!("{s:?}")));
        }
        let g = &self.gates;
        let unit = |v: Option<f64>, name: &str| match v {
            Some(x) if !(0.0..=1.0).contains(&x) => {
                Err(PlanError::Gate(format!("{name} must be within 0..=1, not {x}")))
            }
            _ => Ok(()),
        };
        unit(g.max_error_rate, "max error rate")?;
        unit(g.min_shadow_agreement, "min shadow agreement")?;
        for (v, name) in [(g.max_drift_increase, "max drift increase"), (g.max_p99_increase, "max p99 increase")] {
            if v.is_some_and(|x| !(x.is_finite() && x >= 0.0)) {
                return Err(PlanError::Gate(format!("{name} must be a number ≥ 0")));
            }
        }
        if g.min_shadow_agreement.is_some() && self.shadow_ms == 0 {
            return Err(PlanError::Gate("a shadow agreement gate needs a shadow phase (--shadow-first)".into()));
        }
        if self.soak_ms == 0 || self.install_timeout_ms == 0 {
            return Err(PlanError::Duration("the soak and install timeout must be longer than 0".into()));
        }
        Ok(())
    }

    /// The devices of stage `stage` (cumulative: they include the earlier stages'), out of the
    /// group's `devices`. The order is the SHA-256 of rollout id and device id: fixed for a
    /// rollout whatever the order devices are listed in, different between rollouts so the same
    /// board is not always the canary. A stage has at least one device.
    pub fn members(&self, stage: usize, devices: &[String]) -> Vec<String> {
        let mut ranked: Vec<([u8; 32], &String)> = devices
            .iter()
            .map(|d| {
                let mut h = Sha256::new();
                h.update(self.id.as_bytes());
                h.update([0]);
                h.update(d.as_bytes());
                (h.finalize().into(), d)
            })
            .collect();
        ranked.sort();
        ranked.dedup_by(|a, b| a.1 == b.1);
        let pct = u64::from(self.stages.get(stage).copied().unwrap_or(100));
        let n = (ranked.len() as u64 * pct).div_ceil(100).max(1).min(ranked.len() as u64) as usize;
        ranked.into_iter().take(n).map(|(_, d)| d.clone()).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn plan() -> Plan {
        Plan {
            id: "iris-v2-1".into(),
            model: "iris".into(),
            version: 2,
            group: "lab".into(),
            stages: vec![10, 50, 100],
            shadow_ms: 60_000,
            soak_ms: 120_000,
            install_timeout_ms: 300_000,
            min_requests: 10,
            gates: Gates {
                max_error_rate: Some(0.05),
                min_shadow_agreement: Some(0.9),
                max_drift_increase: Some(0.1),
                max_p99_increase: Some(0.5),
            },
        }
    }

    #[test]
    fn bad_plans_are_refused() {
        assert_eq!(plan().validate(), Ok(()));
        for stages in [vec![], vec![10, 50], vec![0, 100], vec![50, 10, 100], vec![10, 10, 100], vec![10, 101]] {
            assert!(matches!(Plan { stages, ..plan() }.validate(), Err(PlanError::Stages(_))));
        }
        let gates = Gates { max_error_rate: Some(1.5), ..Gates::default() };
        assert!(matches!(Plan { gates, ..plan() }.validate(), Err(PlanError::Gate(_))));
        let gates = Gates { max_p99_increase: Some(f64::NAN), ..Gates::default() };
        assert!(matches!(Plan { gates, ..plan() }.validate(), Err(PlanError::Gate(_))));
        assert!(
            matches!(Plan { shadow_ms: 0, ..plan() }.validate(), Err(PlanError::Gate(_))),
            "agreement needs a shadow"
        );
        assert!(matches!(Plan { soak_ms: 0, ..plan() }.validate(), Err(PlanError::Duration(_))));
    }

    #[test]
    fn stages_grow_from_a_fixed_canary_whatever_the_listing_order() {
        let devices: Vec<String> = (0..20).map(|i| format!("pi-{i:02}")).collect();
        let p = plan();
        let canary = p.members(0, &devices);
        assert_eq!(canary.len(), 2, "10 % of 20");
        let mut reversed = devices.clone();
        reversed.reverse();
        assert_eq!(p.members(0, &reversed), canary);
        let half = p.members(1, &devices);
        assert_eq!(half.len(), 10);
        assert!(canary.iter().all(|d| half.contains(d)), "stages are cumulative");
        assert_eq!(p.members(2, &devices).len(), 20);
        assert_eq!(Plan { stages: vec![1, 100], ..p.clone() }.members(0, &devices).len(), 1, "at least one");
        let canaries: Vec<Vec<String>> =
            (0..8).map(|i| Plan { id: format!("r{i}"), ..p.clone() }.members(0, &devices)).collect();
        assert!(canaries.iter().any(|c| *c != canary), "another rollout, other canaries");
        assert!(p.members(0, &[]).is_empty());
    }
}
