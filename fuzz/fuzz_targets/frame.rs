//! Shim frames (`drover_wire::frame::FrameDecoder`): the bytes a sensor board sends over a UART.
//!
//! The first byte picks the mode. Raw mode feeds the input as a serial stream (COBS, CRC and
//! resynchronisation paths). Framed mode wraps the rest in a valid CRC and COBS first, so the
//! fuzzer reaches the postcard decoding of the frame body instead of stopping at the CRC.
//! Every frame that decodes must encode again and decode to the same bytes.
#![no_main]

use drover_wire::frame::{FrameDecoder, MAX_ENCODED_FRAME, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let stream = if mode & 1 == 0 { rest.to_vec() } else { drover_fuzz::frame_bytes(rest) };
    let mut decoder = FrameDecoder::new();
    let frames: Vec<_> = decoder.feed_slice(&stream).filter_map(Result::ok).collect();
    for frame in frames {
        let mut out = [0u8; MAX_ENCODED_FRAME];
        let bytes = encode(&frame, &mut out).expect("a decoded frame is within the bounds").to_vec();
        let mut again = FrameDecoder::new();
        let decoded: Vec<_> = again.feed_slice(&bytes).collect();
        assert_eq!(decoded.len(), 1, "one encoded frame is one frame");
        let back = decoded.into_iter().next().expect("one").expect("re-encoded frame decodes");
        let mut out2 = [0u8; MAX_ENCODED_FRAME];
        assert_eq!(encode(&back, &mut out2).expect("encodes"), &bytes[..], "decode(encode(x)) == x");
    }
    let stats = decoder.stats();
    assert!(stats.frames <= stream.len() as u64);
});
