//! The controller against a simulated group: devices that do what the actions say, serve
//! traffic every tick, and behave well or badly on the candidate.

use super::controller::{Action, DeviceView, Phase, Rollout, State};
use super::plan::tests::plan;
use super::plan::{Gates, Plan};

/// How the candidate behaves on a device.
#[derive(Clone, Copy)]
struct Candidate {
    /// Share of shadow samples it agrees on.
    agreement: f64,
    /// Share of requests it fails.
    error_rate: f64,
    /// Its p99, µs (the old version's is 100).
    p99_us: u32,
    /// The drift score its devices report (the old version's is 0.02).
    drift: f64,
}

const GOOD: Candidate = Candidate { agreement: 0.95, error_rate: 0.0, p99_us: 110, drift: 0.05 };

struct Sim {
    devices: Vec<DeviceView>,
    candidate: Candidate,
    /// Devices that never install (offline, broken).
    stuck: Vec<String>,
    /// A device whose install fails.
    fails: Option<String>,
    now: u64,
    sent: Vec<Action>,
}

impl Sim {
    fn new(n: usize, candidate: Candidate) -> Sim {
        let devices = (0..n)
            .map(|i| DeviceView {
                id: format!("pi-{i:02}"),
                online: true,
                version: Some(1),
                p99_us: Some(100),
                drift: Some(0.02),
                ..DeviceView::default()
            })
            .collect();
        Sim { devices, candidate, stuck: vec![], fails: None, now: 1_000_000, sent: vec![] }
    }

    fn device(&mut self, id: &str) -> &mut DeviceView {
        self.devices.iter_mut().find(|d| d.id == id).expect("device")
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            let ids = match &a {
                Action::Deploy { devices, .. }
                | Action::StopShadow { devices }
                | Action::Activate { devices }
                | Action::Rollback { devices } => devices.clone(),
            };
            for id in ids {
                if self.stuck.contains(&id) {
                    continue;
                }
                if self.fails.as_deref() == Some(id.as_str()) {
                    self.device(&id).failed = Some("self-test: outputs differ".into());
                    continue;
                }
                let d = self.device(&id);
                match &a {
                    Action::Deploy { shadow: true, .. } => d.staged = true,
                    Action::Deploy { shadow: false, .. } | Action::Activate { .. } => {
                        d.version = Some(2);
                        d.staged = false;
                    }
                    Action::StopShadow { .. } => {}
                    Action::Rollback { .. } => d.version = Some(1),
                }
            }
            self.sent.push(a);
        }
    }

    /// Ten seconds of traffic: 20 requests per device, shadowed where staged.
    fn traffic(&mut self) {
        let c = self.candidate;
        for d in &mut self.devices {
            let on_candidate = d.version == Some(2);
            let errors = if on_candidate { (20.0 * c.error_rate).round() as u64 } else { 0 };
            d.answered += 20 - errors;
            d.errors += errors;
            d.p99_us = Some(if on_candidate { c.p99_us } else { 100 });
            d.drift = Some(if on_candidate { c.drift } else { 0.02 });
            if d.staged {
                d.shadow_judged += 20;
                d.shadow_agreed += (20.0 * c.agreement).round() as u64;
            }
        }
    }

    /// Ticks every 10 s until the rollout is over or `max_s` passed.
    fn run(&mut self, r: &mut Rollout, max_s: u64) {
        let end = self.now + max_s * 1000;
        while !r.is_over() && self.now < end {
            let actions = r.tick(self.now, &self.devices);
            self.apply(actions);
            self.traffic();
            self.now += 10_000;
        }
    }

    fn on(&self, version: u64) -> usize {
        self.devices.iter().filter(|d| d.version == Some(version)).count()
    }
}

#[test]
fn a_good_candidate_goes_through_every_stage_with_shadow_first() {
    let mut sim = Sim::new(20, GOOD);
    let mut r = Rollout::new(plan(), sim.now);
    sim.run(&mut r, 3600);
    assert_eq!(r.state, State::Completed, "{:#?}", r.log);
    assert_eq!(sim.on(2), 20);
    let deploys: Vec<usize> = sim
        .sent
        .iter()
        .filter_map(|a| match a {
            Action::Deploy { devices, shadow: true } => Some(devices.len()),
            _ => None,
        })
        .collect();
    assert_eq!(deploys, [2, 8, 10], "each stage adds its share of the group, shadowed first");
    assert!(!sim.sent.iter().any(|a| matches!(a, Action::Rollback { .. })));
    let text: Vec<&str> = r.log.iter().map(|e| e.text.as_str()).collect();
    assert!(text.iter().any(|t| t.contains("shadow agreement 95.0 %")), "{text:#?}");
    assert!(text.last().expect("log").starts_with("completed"), "{text:#?}");
}

#[test]
fn a_candidate_that_disagrees_halts_in_the_first_shadow_and_nothing_is_served() {
    let mut sim = Sim::new(20, Candidate { agreement: 0.5, ..GOOD });
    let mut r = Rollout::new(plan(), sim.now);
    sim.run(&mut r, 3600);
    let State::Halted { reason } = &r.state else { panic!("{:?}", r.state) };
    assert!(reason.starts_with("shadow agreement 50.0 % < 90.0 %"), "{reason}");
    assert_eq!((r.stage, sim.on(2)), (0, 0), "halted at the first stage, never served");
    assert!(matches!(sim.sent.last(), Some(Action::StopShadow { devices }) if devices.len() == 2));
}

#[test]
fn errors_in_the_soak_halt_and_roll_the_canary_back() {
    let p = Plan { shadow_ms: 0, gates: Gates { min_shadow_agreement: None, ..plan().gates }, ..plan() };
    let mut sim = Sim::new(20, Candidate { error_rate: 0.25, ..GOOD });
    let mut r = Rollout::new(p, sim.now);
    sim.run(&mut r, 3600);
    let State::Halted { reason } = &r.state else { panic!("{:?}", r.state) };
    assert!(reason.starts_with("error rate 25.00 % > 5.00 %"), "{reason}");
    assert!(matches!(sim.sent.last(), Some(Action::Rollback { devices }) if devices.len() == 2));
    assert_eq!(sim.on(2), 0, "the canary serves the old version again");
}

#[test]
fn a_slower_candidate_halts_on_the_p99_gate() {
    let mut sim = Sim::new(20, Candidate { p99_us: 400, ..GOOD });
    let mut r = Rollout::new(plan(), sim.now);
    sim.run(&mut r, 3600);
    let State::Halted { reason } = &r.state else { panic!("{:?}", r.state) };
    assert!(reason.contains("300 % above the rest of the group's 100 µs"), "{reason}");
    assert_eq!(sim.on(2), 0);
}

#[test]
fn a_candidate_whose_inputs_look_drifted_halts_on_the_drift_gate() {
    let mut sim = Sim::new(20, Candidate { drift: 0.4, ..GOOD });
    let mut r = Rollout::new(plan(), sim.now);
    sim.run(&mut r, 3600);
    let State::Halted { reason } = &r.state else { panic!("{:?}", r.state) };
    assert!(reason.starts_with("drift score 0.400 exceeds the rest of the group's 0.020"), "{reason}");
    assert_eq!(sim.on(2), 0);
}

#[test]
fn a_failed_install_or_a_device_that_never_installs_halts() {
    let mut sim = Sim::new(20, GOOD);
    let p = plan();
    let canary = p.members(0, &sim.devices.iter().map(|d| d.id.clone()).collect::<Vec<_>>());
    sim.fails = Some(canary[0].clone());
    let mut r = Rollout::new(p.clone(), sim.now);
    sim.run(&mut r, 3600);
    assert!(matches!(&r.state, State::Halted { reason } if reason.contains("self-test")), "{:?}", r.state);

    let mut sim = Sim::new(20, GOOD);
    sim.stuck = vec![canary[1].clone()];
    let mut r = Rollout::new(p, sim.now);
    sim.run(&mut r, 3600);
    let State::Halted { reason } = &r.state else { panic!("{:?}", r.state) };
    assert!(reason.starts_with("not done within") && reason.contains(&canary[1]), "{reason}");
    assert!(sim.now < 1_000_000 + 400_000, "the install timeout (300 s) ends the wait");
}

#[test]
fn a_pause_stops_the_clock_and_an_abort_rolls_back() {
    let p = Plan { shadow_ms: 0, gates: Gates { min_shadow_agreement: None, ..plan().gates }, ..plan() };
    let mut sim = Sim::new(20, GOOD);
    let mut r = Rollout::new(p, sim.now);
    sim.run(&mut r, 30);
    assert_eq!((r.phase, sim.on(2)), (Phase::Soaking, 2));
    assert!(r.pause(sim.now));
    assert!(!r.pause(sim.now), "already paused");
    let before = r.phase_since_ms;
    for _ in 0..100 {
        assert!(r.tick(sim.now, &sim.devices).is_empty(), "nothing is sent while paused");
        sim.now += 10_000;
    }
    assert!(r.resume(sim.now));
    assert_eq!(r.phase_since_ms, before + 1_000_000, "the 1000 s paused do not count");
    assert_eq!(r.phase, Phase::Soaking);
    let undo = r.abort(sim.now);
    sim.apply(undo);
    assert_eq!((r.state.clone(), sim.on(2)), (State::Aborted, 0));
    assert!(r.abort(sim.now).is_empty(), "once");
}

#[test]
fn a_rollout_survives_a_restart_of_the_server() {
    let mut sim = Sim::new(20, GOOD);
    let mut r = Rollout::new(plan(), sim.now);
    sim.run(&mut r, 200);
    let saved = serde_json::to_string(&r).expect("json");
    let mut back: Rollout = serde_json::from_str(&saved).expect("back");
    assert_eq!(back, r);
    sim.run(&mut back, 3600);
    assert_eq!(back.state, State::Completed);
}

#[test]
fn an_empty_group_halts_at_once() {
    let mut r = Rollout::new(plan(), 0);
    assert!(r.tick(0, &[]).is_empty());
    assert!(matches!(&r.state, State::Halted { reason } if reason.contains("no devices")));
}

#[test]
fn a_driver_that_takes_over_sends_again_what_the_devices_did_not_get() {
    let mut sim = Sim::new(20, GOOD);
    let mut r = Rollout::new(plan(), sim.now);
    // The first driver decides the canary's deploy and dies before sending it.
    let lost = r.tick(sim.now, &sim.devices);
    let Some(Action::Deploy { devices: canary, shadow: true }) = lost.first().cloned() else { panic!("{lost:?}") };
    assert_eq!(r.redo(&sim.devices), lost, "the next driver sends the same deploy");
    // Half of it arrived: only the rest goes again.
    sim.apply(vec![Action::Deploy { devices: canary[..1].to_vec(), shadow: true }]);
    let staged_only = r.redo(&sim.devices);
    assert_eq!(staged_only, lost, "a staged device may have missed its shadow order: it gets the deploy again");
    sim.apply(lost);
    sim.run(&mut r, 3600);
    assert_eq!(r.state, State::Completed, "{:#?}", r.log);
    assert!(r.redo(&sim.devices).is_empty(), "nothing to send for a rollout that is over");

    // Cut off while activating: the devices not serving it yet get the order again.
    let mut sim = Sim::new(20, GOOD);
    let mut r = Rollout::new(plan(), sim.now);
    while r.phase != Phase::Activating {
        let actions = r.tick(sim.now, &sim.devices);
        if r.phase != Phase::Activating {
            sim.apply(actions);
        }
        sim.traffic();
        sim.now += 10_000;
    }
    let again = r.redo(&sim.devices);
    assert!(
        matches!(again.as_slice(), [Action::StopShadow { .. }, Action::Activate { devices }] if devices.len() == 2),
        "{again:?}"
    );
    sim.apply(again);
    assert!(r.redo(&sim.devices).is_empty(), "done once they serve it");
    sim.run(&mut r, 3600);
    assert_eq!(r.state, State::Completed, "{:#?}", r.log);
}
