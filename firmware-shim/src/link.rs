//! The sending side of the serial link: numbers frames and encodes them for the wire.
//!
//! The receiver ([`drover_wire::frame::FrameDecoder`]) counts a gap whenever a sequence number
//! is skipped, so the number is taken only by a frame that was encoded: a frame the UART then
//! fails to send still counts as lost on the other side, which is the truth.

use drover_wire::frame::{self, Body, EncodeError, Frame, MAX_ENCODED_FRAME};

/// Numbers and encodes frames into one buffer of [`MAX_ENCODED_FRAME`] bytes.
pub struct FrameWriter {
    next_seq: u32,
    buf: [u8; MAX_ENCODED_FRAME],
}

impl Default for FrameWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameWriter {
    /// A writer starting at sequence 0, as after a boot (the receiver counts a restart).
    pub const fn new() -> Self {
        FrameWriter { next_seq: 0, buf: [0; MAX_ENCODED_FRAME] }
    }

    /// The sequence number the next frame will carry.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Encodes `body` as the next frame and returns the bytes to write, delimiter included.
    pub fn encode(&mut self, body: Body) -> Result<&[u8], EncodeError> {
        let frame = Frame { seq: self.next_seq, body };
        let bytes = frame::encode(&frame, &mut self.buf)?;
        self.next_seq = self.next_seq.wrapping_add(1);
        Ok(bytes)
    }

    /// Skips a sequence number, as if a frame had been lost (tests of the receiver's gap count).
    pub fn skip(&mut self) {
        self.next_seq = self.next_seq.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use drover_wire::frame::{FeatureWindow, FrameDecoder};
    use heapless::Vec;

    use super::*;

    #[test]
    fn frames_are_numbered_and_decode_in_order() {
        let mut writer = FrameWriter::new();
        let mut decoder = FrameDecoder::new();
        for i in 0..3u32 {
            let body = Body::Window(FeatureWindow { index: i, values: Vec::from_slice(&[i as f32]).expect("fits") });
            let bytes = writer.encode(body).expect("encodes").to_vec();
            let frames: std::vec::Vec<_> = decoder.feed_slice(&bytes).collect();
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].as_ref().map(|f| f.seq), Ok(i));
        }
        writer.skip();
        let bytes =
            writer.encode(Body::Window(FeatureWindow { index: 9, values: Vec::new() })).expect("encodes").to_vec();
        assert!(decoder.feed_slice(&bytes).all(|r| r.is_ok()));
        assert_eq!((decoder.stats().gaps, decoder.stats().lost), (1, 1));
    }
}
