//! Chunk and command envelopes: the MQTT payloads an agent decodes (`link::codec::decode`)
//! and the ones the operator tools decode back from devices. The first byte picks the message
//! type, the rest is the payload (postcard behind its tag byte, or JSON). Decoding never
//! panics; what decodes survives encode → decode unchanged, in both formats (chunks: postcard only, as they are always sent).
#![no_main]

use drover_fuzz::round_trip;
use drover_wire::command::SignedCommand;
use drover_wire::event::Feedback;
use drover_wire::message::{Announce, Chunk, Progress, Status, Want};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else { return };
    match kind % 7 {
        0 => round_trip!(Announce, payload),
        1 => round_trip!(Chunk<'_>, payload, postcard_only),
        2 => round_trip!(SignedCommand, payload),
        3 => round_trip!(Want, payload),
        4 => round_trip!(Feedback, payload),
        5 => round_trip!(Status, payload),
        _ => round_trip!(Progress, payload),
    }
});
