//! systemd's service notifications for `Type=notify` (the `sd-notify` crate): READY=1 once
//! the agent serves (its store booted, its model loaded, its API started; the broker may be
//! unreachable for days on an edge device, and an agent that is not "ready" until then would
//! be restarted in a loop), WATCHDOG=1 from the main loop at half of `WatchdogSec=` (a hung
//! loop stops the pings and systemd restarts the agent), STATUS= lines for
//! `systemctl status`, STOPPING=1 on SIGTERM. Without `NOTIFY_SOCKET` every call is a no-op.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The agent's side of the notification socket.
#[derive(Debug, Default)]
pub struct ServiceNotifier {
    enabled: bool,
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
}

/// Whether a watchdog ping is due: never yet, or half the interval since the last one.
pub fn ping_due(last: Option<Instant>, now: Instant, interval: Duration) -> bool {
    last.is_none_or(|l| now.saturating_duration_since(l) >= interval / 2)
}

impl ServiceNotifier {
    /// Notifications off (in-process agents: the simulator, the demo, tests).
    pub fn disabled() -> ServiceNotifier {
        ServiceNotifier::default()
    }

    /// For the agent run as a service: the watchdog interval from `WATCHDOG_USEC` (when
    /// `WATCHDOG_PID` is this process), notifications wherever `NOTIFY_SOCKET` points.
    pub fn from_env() -> ServiceNotifier {
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec));
        if let Some(w) = watchdog {
            log::info!("systemd watchdog: {} s, pinged every {} s", w.as_secs_f64(), w.as_secs_f64() / 2.0);
        }
        ServiceNotifier { enabled: true, watchdog, last_ping: None }
    }

    /// The watchdog interval systemd asked for, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, state: &[NotifyState<'_>]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(false, state)
        {
            log::warn!("systemd notification {state:?}: {e}");
        }
    }

    /// READY=1 with a status line.
    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A STATUS= line (shown by `systemctl status`).
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// WATCHDOG=1 when due; called from the agent's main loop.
    pub fn tick(&mut self, now: Instant) {
        if let Some(interval) = self.watchdog
            && ping_due(self.last_ping, now, interval)
        {
            self.send(&[NotifyState::Watchdog]);
            self.last_ping = Some(now);
        }
    }

    /// STOPPING=1: a clean stop has begun.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_come_at_half_the_watchdog_interval() {
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        assert!(ping_due(None, t0, w), "the first ping at once");
        assert!(!ping_due(Some(t0), t0 + Duration::from_secs(29), w));
        assert!(ping_due(Some(t0), t0 + Duration::from_secs(30), w));
    }

    #[test]
    fn a_disabled_notifier_sends_nothing_and_has_no_watchdog() {
        let mut n = ServiceNotifier::disabled();
        n.ready("x");
        n.tick(Instant::now());
        assert_eq!(n.watchdog(), None);
        assert_eq!(n.last_ping, None);
    }
}
