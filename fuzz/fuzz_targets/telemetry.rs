//! Telemetry, drift and event payloads: what devices publish and the fleet server
//! (`tools/src/fleet/record.rs`, a thin wrapper over `link::codec::decode`) and `drover alerts`
//! decode from every device. The first byte picks the message type. Decoding never panics;
//! what decodes survives encode → decode unchanged.
#![no_main]

use drover_fuzz::round_trip;
use drover_wire::event::Event;
use drover_wire::telemetry::{DriftWindow, Telemetry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else { return };
    match kind % 3 {
        0 => round_trip!(Telemetry, payload),
        1 => round_trip!(DriftWindow, payload),
        _ => round_trip!(Event, payload),
    }
});
