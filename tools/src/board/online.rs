//! When a flashed device counts as online: a status saying `online` that the agent published
//! after the install, not one the broker kept from before (a re-flashed board's retained
//! status may say online until the new agent speaks). Pure: the MQTT side feeds it.

use std::collections::BTreeMap;

use drover_wire::message::Status;

/// What was seen of each device since `drover flash` subscribed.
#[derive(Debug, Default)]
pub struct Presence {
    online: BTreeMap<String, u64>,
}

impl Presence {
    /// A status of `device`, `retained` when the broker replayed it on subscription, seen
    /// `since_start_ms` after the watcher started. Returns true when the device (now) counts
    /// as online.
    pub fn on_status(&mut self, device: &str, status: &Status, retained: bool, since_start_ms: u64) -> bool {
        // A replayed status is fresh only if the agent's uptime fits since we started watching
        // (it was started by this flash), with 2 s for the clocks of publish and delivery.
        let fresh = !retained || status.uptime_s.saturating_mul(1000) <= since_start_ms.saturating_add(2000);
        if status.online && fresh {
            self.online.insert(device.to_string(), since_start_ms);
            true
        } else {
            if !status.online {
                self.online.remove(device);
            }
            false
        }
    }

    /// When `device` came online (ms since the watcher started), if it has.
    pub fn online_at(&self, device: &str) -> Option<u64> {
        self.online.get(device).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(online: bool, uptime_s: u64) -> Status {
        Status { uptime_s, at: 0, ..crate::fleet::record::tests::status(online) }
    }

    #[test]
    fn a_stale_retained_online_status_does_not_count() {
        let mut p = Presence::default();
        assert!(!p.on_status("pi-1", &status(true, 86_400), true, 50), "yesterday's agent");
        assert_eq!(p.online_at("pi-1"), None);
        assert!(p.on_status("pi-1", &status(true, 3), true, 4_000), "started during this flash");
        assert_eq!(p.online_at("pi-1"), Some(4_000));
    }

    #[test]
    fn a_live_status_counts_and_offline_resets() {
        let mut p = Presence::default();
        assert!(p.on_status("pi-1", &status(true, 86_400), false, 10));
        assert!(!p.on_status("pi-1", &status(false, 86_400), false, 20));
        assert_eq!(p.online_at("pi-1"), None);
        assert!(!p.on_status("pi-2", &status(false, 0), false, 20));
    }
}
