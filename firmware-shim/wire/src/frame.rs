//! Frames from a sensor microcontroller to the agent over a serial line.
//!
//! A UART has no packet boundaries and loses or flips bytes, so every frame is made
//! self-delimiting and self-checking:
//!
//! ```text
//!  Frame { seq, body } ─postcard─► bytes ─► bytes ‖ CRC-32 (LE) ─COBS─► no zero byte ─► ‖ 0x00
//! ```
//!
//! COBS removes every zero byte from the frame, so `0x00` marks the end of a frame and a receiver
//! that joins mid-stream (or after garbage) resynchronises at the next `0x00`. The CRC-32
//! (ISO-HDLC, the Ethernet/zlib polynomial) catches corrupted bytes; the sequence number catches
//! lost frames. [`FrameDecoder`] is the receiving side: bounded, allocation-free and sans-IO, so the
//! agent on a Pi and a host test feed it the same bytes. The format is described in `docs/frames.md`.

use core::fmt;

use crc::{CRC_32_ISO_HDLC, Crc};
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// Most feature values one window frame carries: 8 channels × 8 features, or 3 axes with a
/// handful of FFT bands each. Bounded so that the decoder's buffer is fixed at compile time.
pub const MAX_FRAME_FEATURES: usize = 64;

/// Longest postcard encoding of a [`Frame`] (a full window frame is 5 + 1 + 5 + 1 + 64 × 4 =
/// 268 bytes; the margin keeps room for a field added later without changing the bound).
pub const MAX_FRAME_BODY: usize = 288;

/// Bytes of the CRC-32 trailer after the postcard bytes.
pub const CRC_LEN: usize = 4;

/// Longest frame on the wire: COBS adds one byte per 254 (plus one), then the `0x00` delimiter.
pub const MAX_ENCODED_FRAME: usize = cobs_max(MAX_FRAME_BODY + CRC_LEN) + 1;

/// The frame delimiter; COBS guarantees it appears nowhere inside a frame.
pub const DELIMITER: u8 = 0x00;

/// The CRC both ends compute: CRC-32/ISO-HDLC over the postcard bytes.
const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

const fn cobs_max(n: usize) -> usize {
    n + n.div_ceil(254) + 1
}

/// One frame: a sequence number and a typed body.
///
/// The sequence number counts every frame the device sent since it booted (wrapping), so the
/// receiver knows how many it lost; a device that restarts begins again at 0, which the receiver
/// tells apart from a loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Frames sent before this one since the device booted (wrapping at `u32::MAX`).
    pub seq: u32,
    /// What the frame carries.
    pub body: Body,
}

/// The frame types. The postcard variant index is the type byte on the wire: new types go at
/// the end so old receivers reject them as undecodable instead of misreading them.
// No heap to box the window into on a microcontroller; one frame exists at a time, so the
// 270 bytes every variant takes cost nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Sent at boot and periodically: what the window frames that follow contain, so the agent
    /// can check them against the model's input before inferring anything.
    Hello(Hello),
    /// One complete window's features, in the layout the last `Hello` announced.
    Window(FeatureWindow),
    /// The device's own counters, sent periodically (sensor errors, time spent per window).
    Stats(DeviceStats),
}

/// The frame type alone, for counting and logging without the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// [`Body::Hello`].
    Hello,
    /// [`Body::Window`].
    Window,
    /// [`Body::Stats`].
    Stats,
}

impl Body {
    /// This body's frame type.
    pub fn kind(&self) -> FrameKind {
        match self {
            Body::Hello(_) => FrameKind::Hello,
            Body::Window(_) => FrameKind::Window,
            Body::Stats(_) => FrameKind::Stats,
        }
    }
}

/// The layout of the window frames a device sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Feature values per window frame: the width of the model input they feed.
    pub features: u16,
    /// Samples per channel in one window.
    pub window_len: u16,
    /// Sampling period in microseconds.
    pub period_us: u32,
    /// CRC-32 of the feature names in order (`drover_shim::FeatureLayout::id`): two layouts of
    /// the same width but different features (or order) differ here.
    pub layout_id: u32,
}

/// One window's features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureWindow {
    /// Windows completed since boot, so a window lost to a sensor error is visible even when no
    /// frame was lost.
    pub index: u32,
    /// The feature values in the announced layout's order.
    pub values: Vec<f32, MAX_FRAME_FEATURES>,
}

/// What the device counts about itself between two stats frames (cumulative since boot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStats {
    /// Windows completed.
    pub windows: u32,
    /// Sensor reads that failed (each costs one sample, not a window).
    pub sensor_errors: u32,
    /// Frames that did not fit the serial port's buffer or could not be written.
    pub tx_dropped: u32,
    /// Median time to compute one window's features, µs (from a `LatencyHistogram`).
    pub feature_p50_us: u32,
    /// 99th percentile of the same, µs.
    pub feature_p99_us: u32,
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The frame's postcard encoding exceeds [`MAX_FRAME_BODY`] or the output buffer is smaller
    /// than the encoded frame.
    TooLarge,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge => write!(f, "frame larger than {MAX_ENCODED_FRAME} bytes encoded"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}

/// Encodes `frame` into `out` (postcard, CRC-32, COBS, delimiter) and returns the bytes to send.
///
/// `out` of [`MAX_ENCODED_FRAME`] bytes always suffices for a frame within the bounds.
pub fn encode<'o>(frame: &Frame, out: &'o mut [u8]) -> Result<&'o [u8], EncodeError> {
    let mut raw = [0u8; MAX_FRAME_BODY + CRC_LEN];
    let len = postcard::to_slice(frame, &mut raw[..MAX_FRAME_BODY]).map_err(|_| EncodeError::TooLarge)?.len();
    let crc = CRC32.checksum(&raw[..len]);
    raw[len..len + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    let n = cobs::try_encode(&raw[..len + CRC_LEN], out).map_err(|_| EncodeError::TooLarge)?;
    let delimiter = out.get_mut(n).ok_or(EncodeError::TooLarge)?;
    *delimiter = DELIMITER;
    Ok(&out[..=n])
}

/// Why bytes between two delimiters were not a frame. Each costs the receiver one frame and
/// nothing more: decoding resumes at the next delimiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// More than [`MAX_ENCODED_FRAME`] bytes without a delimiter: a lost delimiter or a line
    /// that is not carrying frames (wrong baud rate, a boot log).
    Oversize,
    /// Not valid COBS (a code byte pointing past the frame).
    Cobs,
    /// Too short to hold a CRC and a frame.
    Truncated,
    /// The CRC-32 does not match the bytes: corrupted in transit.
    Crc,
    /// The CRC matched but postcard could not decode a frame: a frame type or layout this agent
    /// does not know (a newer firmware).
    Undecodable,
    /// A sequence number already seen (a duplicate or a reordered frame), dropped so that no
    /// window is inferred twice.
    Stale {
        /// The frame's sequence number.
        seq: u32,
        /// The one the receiver expected.
        expected: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Oversize => write!(f, "more than {MAX_ENCODED_FRAME} bytes without a frame delimiter"),
            FrameError::Cobs => f.write_str("invalid COBS encoding"),
            FrameError::Truncated => f.write_str("frame too short for its CRC"),
            FrameError::Crc => f.write_str("CRC-32 mismatch"),
            FrameError::Undecodable => f.write_str("CRC good but not a known frame"),
            FrameError::Stale { seq, expected } => write!(f, "stale sequence number {seq} (expected {expected})"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FrameError {}

/// What a receiver has counted since it started: the link's health, reported in telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Frames accepted.
    pub frames: u64,
    /// Sequence gaps seen (each one or more lost frames).
    pub gaps: u64,
    /// Frames lost, summed over the gaps.
    pub lost: u64,
    /// Times the device started again at sequence 0.
    pub restarts: u64,
    /// Frames rejected for a CRC mismatch.
    pub crc_errors: u64,
    /// Frames rejected as invalid COBS or too short.
    pub framing_errors: u64,
    /// Frames rejected because postcard could not decode them.
    pub undecodable: u64,
    /// Runs of bytes longer than a frame without a delimiter.
    pub oversize: u64,
    /// Duplicate or reordered frames dropped.
    pub stale: u64,
}

impl LinkStats {
    /// Frames rejected for any reason.
    pub fn rejected(&self) -> u64 {
        self.crc_errors + self.framing_errors + self.undecodable + self.oversize + self.stale
    }

    /// Adds `other`'s counts: periods and receivers add up like the rest of telemetry.
    pub fn merge(&mut self, other: &LinkStats) {
        self.zip(other, |a, b| a.saturating_add(b));
    }

    /// What was counted since `earlier` (a snapshot of the same receiver): a period's share of
    /// a receiver's running totals.
    pub fn since(&self, earlier: &LinkStats) -> LinkStats {
        let mut d = *self;
        d.zip(earlier, |a, b| a.saturating_sub(b));
        d
    }

    fn zip(&mut self, o: &LinkStats, f: impl Fn(u64, u64) -> u64) {
        let LinkStats { frames, gaps, lost, restarts, crc_errors, framing_errors, undecodable, oversize, stale } = self;
        for (a, b) in [
            (frames, o.frames),
            (gaps, o.gaps),
            (lost, o.lost),
            (restarts, o.restarts),
            (crc_errors, o.crc_errors),
            (framing_errors, o.framing_errors),
            (undecodable, o.undecodable),
            (oversize, o.oversize),
            (stale, o.stale),
        ] {
            *a = f(*a, b);
        }
    }
}

/// Streaming frame receiver: feed it bytes as they arrive, get frames or the reason a frame was
/// rejected; it counts losses and errors in [`LinkStats`].
///
/// Sans-IO: it never reads a port itself, so the agent's serial source, a test and a fuzzer
/// drive it identically. The buffer holds one encoded frame, fixed at compile time.
#[derive(Debug, Clone, Default)]
pub struct FrameDecoder {
    buf: Vec<u8, MAX_ENCODED_FRAME>,
    /// Discarding bytes until the next delimiter after an oversize run.
    skipping: bool,
    /// The sequence number the next frame should carry, once one frame was seen.
    expected: Option<u32>,
    stats: LinkStats,
}

impl FrameDecoder {
    /// A receiver that has seen nothing yet (the first frame's sequence number is taken as is).
    pub const fn new() -> Self {
        FrameDecoder {
            buf: Vec::new(),
            skipping: false,
            expected: None,
            stats: LinkStats {
                frames: 0,
                gaps: 0,
                lost: 0,
                restarts: 0,
                crc_errors: 0,
                framing_errors: 0,
                undecodable: 0,
                oversize: 0,
                stale: 0,
            },
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Feeds one byte. Returns `Some` when the byte completed a frame (or proved a run of bytes
    /// was not one); `None` while a frame is still arriving. Empty frames (two delimiters in a
    /// row, which a sender may use to flush a receiver) are ignored.
    pub fn feed(&mut self, byte: u8) -> Option<Result<Frame, FrameError>> {
        if byte != DELIMITER {
            if self.skipping {
                return None;
            }
            if self.buf.push(byte).is_err() {
                self.buf.clear();
                self.skipping = true;
                self.stats.oversize += 1;
                return Some(Err(FrameError::Oversize));
            }
            return None;
        }
        if core::mem::take(&mut self.skipping) || self.buf.is_empty() {
            return None;
        }
        let result = self.decode_buffered();
        self.buf.clear();
        Some(result)
    }

    /// Feeds a slice, yielding every frame or error it completes, in order.
    pub fn feed_slice<'d, 'b>(&'d mut self, bytes: &'b [u8]) -> Decoded<'d, 'b> {
        Decoded { decoder: self, bytes }
    }

    fn decode_buffered(&mut self) -> Result<Frame, FrameError> {
        let frame = match self.unframe() {
            Ok(frame) => frame,
            Err(e) => {
                match e {
                    FrameError::Cobs | FrameError::Truncated => self.stats.framing_errors += 1,
                    FrameError::Crc => self.stats.crc_errors += 1,
                    FrameError::Undecodable => self.stats.undecodable += 1,
                    FrameError::Oversize | FrameError::Stale { .. } => {}
                }
                return Err(e);
            }
        };
        self.sequence(frame.seq)?;
        self.stats.frames += 1;
        Ok(frame)
    }

    /// COBS, CRC and postcard, in place in the buffer.
    fn unframe(&mut self) -> Result<Frame, FrameError> {
        let len = cobs::decode_in_place(&mut self.buf).map_err(|_| FrameError::Cobs)?;
        let raw = self.buf.get(..len).ok_or(FrameError::Cobs)?;
        if raw.len() <= CRC_LEN {
            return Err(FrameError::Truncated);
        }
        let (body, trailer) = raw.split_at(raw.len() - CRC_LEN);
        let mut crc = [0u8; CRC_LEN];
        crc.copy_from_slice(trailer);
        if CRC32.checksum(body) != u32::from_le_bytes(crc) {
            return Err(FrameError::Crc);
        }
        match postcard::take_from_bytes::<Frame>(body) {
            Ok((frame, [])) => Ok(frame),
            _ => Err(FrameError::Undecodable),
        }
    }

    /// Accounts the sequence number: in order, a gap (frames lost), a restart (0 again) or stale.
    fn sequence(&mut self, seq: u32) -> Result<(), FrameError> {
        if let Some(expected) = self.expected
            && seq != expected
        {
            let ahead = seq.wrapping_sub(expected);
            if seq == 0 {
                self.stats.restarts += 1;
            } else if ahead < u32::MAX / 2 {
                self.stats.gaps += 1;
                self.stats.lost += u64::from(ahead);
            } else {
                self.stats.stale += 1;
                return Err(FrameError::Stale { seq, expected });
            }
        }
        self.expected = Some(seq.wrapping_add(1));
        Ok(())
    }
}

/// The frames and errors completed by one slice of bytes (see [`FrameDecoder::feed_slice`]).
pub struct Decoded<'d, 'b> {
    decoder: &'d mut FrameDecoder,
    bytes: &'b [u8],
}

impl Iterator for Decoded<'_, '_> {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        while let Some((&byte, rest)) = self.bytes.split_first() {
            self.bytes = rest;
            if let Some(result) = self.decoder.feed(byte) {
                return Some(result);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec as StdVec;

    use proptest::prelude::*;

    use super::*;

    fn window(seq: u32, values: &[f32]) -> Frame {
        Frame { seq, body: Body::Window(FeatureWindow { index: seq, values: Vec::from_slice(values).expect("fits") }) }
    }

    fn encoded(frame: &Frame) -> StdVec<u8> {
        let mut out = [0u8; MAX_ENCODED_FRAME];
        encode(frame, &mut out).expect("encodes").to_vec()
    }

    fn decode_all(decoder: &mut FrameDecoder, bytes: &[u8]) -> StdVec<Result<Frame, FrameError>> {
        decoder.feed_slice(bytes).collect()
    }

    fn full_window() -> Frame {
        let values: StdVec<f32> = (0..MAX_FRAME_FEATURES).map(|i| -(i as f32) * 1.5e30).collect();
        Frame {
            seq: u32::MAX,
            body: Body::Window(FeatureWindow { index: u32::MAX, values: Vec::from_slice(&values).expect("fits") }),
        }
    }

    #[test]
    fn every_frame_type_round_trips() {
        let frames = [
            Frame {
                seq: 0,
                body: Body::Hello(Hello { features: 12, window_len: 64, period_us: 10_000, layout_id: 0xDEAD_BEEF }),
            },
            window(1, &[1.0, -2.5, 0.0, f32::MAX]),
            Frame {
                seq: 2,
                body: Body::Stats(DeviceStats {
                    windows: 7,
                    sensor_errors: 1,
                    tx_dropped: 0,
                    feature_p50_us: 40,
                    feature_p99_us: 90,
                }),
            },
        ];
        let mut decoder = FrameDecoder::new();
        for frame in &frames {
            let bytes = encoded(frame);
            assert_eq!(bytes.last(), Some(&DELIMITER));
            assert!(!bytes[..bytes.len() - 1].contains(&DELIMITER), "COBS leaves no zero inside a frame");
            assert_eq!(decode_all(&mut decoder, &bytes), [Ok(frame.clone())]);
        }
        assert_eq!(decoder.stats().frames, 3);
        assert_eq!(decoder.stats().rejected(), 0);
    }

    #[test]
    fn the_largest_frame_fits_the_bounds() {
        let frame = full_window();
        let mut body = [0u8; 512];
        let n = postcard::to_slice(&frame, &mut body).expect("encodes").len();
        assert!(n <= MAX_FRAME_BODY, "{n} > {MAX_FRAME_BODY}");
        let bytes = encoded(&frame);
        assert!(bytes.len() <= MAX_ENCODED_FRAME);
        assert_eq!(decode_all(&mut FrameDecoder::new(), &bytes), [Ok(frame)]);
    }

    #[test]
    fn a_too_small_output_buffer_is_an_error_not_a_panic() {
        let mut out = [0u8; 16];
        assert_eq!(encode(&full_window(), &mut out), Err(EncodeError::TooLarge));
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let good = window(5, &[0.25, 1.0, -3.0, 1e-3, 7.5, 0.0]);
        let bytes = encoded(&good);
        let next = encoded(&window(6, &[9.0]));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                let mut decoder = FrameDecoder::new();
                // The extra delimiter ends a frame whose own delimiter was the flipped byte.
                flipped.push(DELIMITER);
                let results = decode_all(&mut decoder, &flipped);
                assert!(results.iter().all(Result::is_err), "byte {i} bit {bit}: {results:?}");
                assert!(!results.is_empty(), "byte {i} bit {bit}: nothing reported");
                // And the receiver is back in step for the next frame.
                assert_eq!(decode_all(&mut decoder, &next), [Ok(window(6, &[9.0]))], "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn garbage_before_a_frame_costs_one_error_then_resynchronises() {
        let mut decoder = FrameDecoder::new();
        let mut stream = b"boot log: hello\r\n".to_vec();
        stream.push(DELIMITER);
        stream.extend(encoded(&window(0, &[1.0])));
        stream.extend(encoded(&window(1, &[2.0])));
        let results = decode_all(&mut decoder, &stream);
        assert_eq!(results.len(), 3);
        assert!(results[0].is_err());
        assert_eq!(results[1], Ok(window(0, &[1.0])));
        assert_eq!(results[2], Ok(window(1, &[2.0])));
    }

    #[test]
    fn joining_mid_frame_loses_only_that_frame() {
        let first = encoded(&window(3, &[1.0, 2.0, 3.0]));
        let mut stream = first[first.len() / 2..].to_vec();
        stream.extend(encoded(&window(4, &[4.0])));
        let mut decoder = FrameDecoder::new();
        let results = decode_all(&mut decoder, &stream);
        assert_eq!(results.len(), 2);
        assert!(results[0].is_err());
        assert_eq!(results[1], Ok(window(4, &[4.0])));
        assert_eq!(decoder.stats().gaps, 0, "the first frame seen sets the sequence");
    }

    #[test]
    fn a_run_without_delimiter_is_oversize_once_and_then_resynchronises() {
        let mut decoder = FrameDecoder::new();
        let mut stream = std::vec![0x55u8; 3 * MAX_ENCODED_FRAME];
        stream.push(DELIMITER);
        stream.extend(encoded(&window(0, &[1.0])));
        let results = decode_all(&mut decoder, &stream);
        assert_eq!(results, [Err(FrameError::Oversize), Ok(window(0, &[1.0]))]);
        assert_eq!(decoder.stats().oversize, 1);
    }

    #[test]
    fn sequence_gaps_restarts_and_duplicates_are_counted() {
        let mut decoder = FrameDecoder::new();
        let mut stream = StdVec::new();
        for seq in [10, 11, 14, 15, 15, 12, 0, 1] {
            stream.extend(encoded(&window(seq, &[seq as f32])));
        }
        let results = decode_all(&mut decoder, &stream);
        let accepted: StdVec<u32> = results.iter().filter_map(|r| r.as_ref().ok()).map(|f| f.seq).collect();
        assert_eq!(accepted, [10, 11, 14, 15, 0, 1]);
        assert_eq!(results[4], Err(FrameError::Stale { seq: 15, expected: 16 }));
        assert_eq!(results[5], Err(FrameError::Stale { seq: 12, expected: 16 }));
        let s = decoder.stats();
        assert_eq!((s.gaps, s.lost, s.stale, s.restarts, s.frames), (1, 2, 2, 1, 6));
    }

    #[test]
    fn sequence_wraps_without_a_gap() {
        let mut decoder = FrameDecoder::new();
        let mut stream = encoded(&window(u32::MAX, &[1.0]));
        stream.extend(encoded(&window(0, &[2.0])));
        stream.extend(encoded(&window(1, &[3.0])));
        assert!(decode_all(&mut decoder, &stream).iter().all(Result::is_ok));
        // 0 after u32::MAX is the next number, but also what a rebooted device sends: counted
        // as a restart, never as a gap of four billion frames.
        assert_eq!(decoder.stats().gaps, 0);
        assert_eq!(decoder.stats().lost, 0);
    }

    #[test]
    fn a_valid_crc_over_an_unknown_frame_type_is_undecodable() {
        let raw = [0x01u8, 0x07, 0x00];
        let mut with_crc = raw.to_vec();
        with_crc.extend(CRC32.checksum(&raw).to_le_bytes());
        let mut out = [0u8; 32];
        let n = cobs::encode(&with_crc, &mut out);
        let mut stream = out[..n].to_vec();
        stream.push(DELIMITER);
        assert_eq!(decode_all(&mut FrameDecoder::new(), &stream), [Err(FrameError::Undecodable)]);
    }

    #[test]
    fn link_stats_split_into_periods_and_add_up() {
        let mut decoder = FrameDecoder::new();
        let mut stream = encoded(&window(0, &[1.0]));
        stream.extend(encoded(&window(3, &[1.0])));
        let _ = decode_all(&mut decoder, &stream);
        let first = *decoder.stats();
        let _ = decode_all(&mut decoder, b"junk\0");
        let second = decoder.stats().since(&first);
        assert_eq!((second.frames, second.framing_errors + second.crc_errors, second.gaps), (0, 1, 0));
        let mut total = first;
        total.merge(&second);
        assert_eq!(total, *decoder.stats());
    }

    #[test]
    fn empty_frames_are_ignored() {
        let mut decoder = FrameDecoder::new();
        assert!(decode_all(&mut decoder, &[0, 0, 0]).is_empty());
        assert_eq!(decoder.stats().rejected(), 0);
    }

    proptest! {
        #[test]
        fn any_window_round_trips_split_anywhere(
            seq in any::<u32>(),
            values in proptest::collection::vec(any::<f32>().prop_filter("NaN != NaN", |v| !v.is_nan()), 0..=MAX_FRAME_FEATURES),
            split in any::<prop::sample::Index>(),
        ) {
            let frame = window(seq, &values);
            let bytes = encoded(&frame);
            let at = split.index(bytes.len());
            let mut decoder = FrameDecoder::new();
            let mut results = decode_all(&mut decoder, &bytes[..at]);
            results.extend(decode_all(&mut decoder, &bytes[at..]));
            prop_assert_eq!(results, std::vec![Ok(frame)]);
        }

        #[test]
        fn random_bytes_never_panic_and_never_stall_the_next_frame(garbage in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let mut decoder = FrameDecoder::new();
            let _ = decode_all(&mut decoder, &garbage);
            let mut tail = std::vec![DELIMITER];
            tail.extend(encoded(&window(7, &[1.0, 2.0])));
            let results = decode_all(&mut decoder, &tail);
            prop_assert_eq!(results.last(), Some(&Ok(window(7, &[1.0, 2.0]))));
        }

        #[test]
        fn random_byte_corruption_is_caught(seq in any::<u32>(), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
            let frame = window(seq, &[1.0, 2.0, 3.0, 4.0]);
            let mut bytes = encoded(&frame);
            let i = at.index(bytes.len() - 1);
            bytes[i] ^= xor;
            bytes.push(DELIMITER);
            let results = decode_all(&mut FrameDecoder::new(), &bytes);
            prop_assert!(results.iter().all(Result::is_err), "{:?}", results);
        }
    }
}
