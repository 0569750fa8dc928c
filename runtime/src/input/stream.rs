//! From the bytes of a serial line to model-ready windows, pure (sans-IO): the frame decoder,
//! the layout the device announced, and the period's accounting. `serial.rs` feeds it what it
//! reads; the tests feed it bytes directly.

use drover_wire::frame::{Body, FrameDecoder, Hello, LinkStats};
use drover_wire::telemetry::InputReport;

/// One serial input's frame stream.
#[derive(Debug, Default)]
pub struct FrameStream {
    decoder: FrameDecoder,
    /// The decoder's totals at the last accounting, so each report gets only its period's share.
    accounted: LinkStats,
    hello: Option<Hello>,
}

impl FrameStream {
    /// A stream that has seen nothing (the first frame's sequence number is taken as is).
    pub fn new() -> FrameStream {
        FrameStream::default()
    }

    /// The layout the device last announced.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// Feeds bytes as read; returns the feature vectors of the complete windows they finished,
    /// in order, and accounts frames, losses, rejections and the device's stats in `report`.
    ///
    /// A window whose width differs from the announced layout is counted as mismatched and
    /// dropped (the device changed firmware without a `Hello`, or a frame type this agent
    /// misreads); before any `Hello`, windows are passed on and the model's input shape decides.
    pub fn feed(&mut self, bytes: &[u8], report: &mut InputReport) -> Vec<Vec<f32>> {
        let mut windows = Vec::new();
        for result in self.decoder.feed_slice(bytes) {
            let Ok(frame) = result else {
                // Counted by the decoder in its LinkStats, merged below.
                continue;
            };
            match frame.body {
                Body::Hello(h) => self.hello = Some(h),
                Body::Stats(s) => report.device = Some(s),
                Body::Window(w) => {
                    report.windows += 1;
                    match self.hello {
                        Some(h) if usize::from(h.features) != w.values.len() => report.mismatched += 1,
                        _ => windows.push(w.values.to_vec()),
                    }
                }
            }
        }
        let totals = *self.decoder.stats();
        report.link.merge(&totals.since(&self.accounted));
        self.accounted = totals;
        windows
    }
}

#[cfg(test)]
mod tests {
    use drover_shim::FrameWriter;
    use drover_wire::frame::{DeviceStats, FeatureWindow};

    use super::*;

    fn window(values: &[f32]) -> Body {
        Body::Window(FeatureWindow { index: 0, values: heapless::Vec::from_slice(values).expect("fits") })
    }

    fn hello(features: u16) -> Body {
        Body::Hello(Hello { features, window_len: 128, period_us: 10_000, layout_id: 7 })
    }

    #[test]
    fn windows_come_out_in_order_with_gaps_and_corruption_counted() {
        let mut mcu = FrameWriter::new();
        let mut bytes = Vec::new();
        bytes.extend(mcu.encode(hello(2)).expect("encodes"));
        bytes.extend(mcu.encode(window(&[1.0, 2.0])).expect("encodes"));
        let mut corrupted = mcu.encode(window(&[3.0, 4.0])).expect("encodes").to_vec();
        corrupted[3] ^= 0x10;
        bytes.extend(corrupted);
        mcu.skip();
        bytes.extend(mcu.encode(window(&[5.0, 6.0])).expect("encodes"));
        bytes.extend(mcu.encode(window(&[7.0])).expect("encodes")); // not the announced width
        let stats = DeviceStats { windows: 4, ..DeviceStats::default() };
        bytes.extend(mcu.encode(Body::Stats(stats)).expect("encodes"));

        let mut stream = FrameStream::new();
        let mut report = InputReport::new("uart");
        // Split mid-frame: a read boundary never matters.
        let (a, b) = bytes.split_at(bytes.len() / 2);
        let mut got = stream.feed(a, &mut report);
        got.extend(stream.feed(b, &mut report));
        assert_eq!(got, [vec![1.0, 2.0], vec![5.0, 6.0]]);
        assert_eq!((report.windows, report.mismatched), (3, 1));
        assert_eq!(report.link.frames, 5);
        assert_eq!(report.link.crc_errors + report.link.framing_errors, 1);
        // The corrupted frame and the skipped number: two frames missing between 1 and 4.
        assert_eq!((report.link.gaps, report.link.lost), (1, 2));
        assert_eq!(report.device, Some(stats));
        assert_eq!(stream.hello().map(|h| h.features), Some(2));
    }

    #[test]
    fn each_period_reports_only_its_own_frames() {
        let mut mcu = FrameWriter::new();
        let mut stream = FrameStream::new();
        let mut report = InputReport::new("uart");
        let first = mcu.encode(window(&[1.0])).expect("encodes").to_vec();
        assert_eq!(stream.feed(&first, &mut report).len(), 1);
        let period = report.take();
        assert_eq!(period.link.frames, 1);
        let second = mcu.encode(window(&[2.0])).expect("encodes").to_vec();
        assert_eq!(stream.feed(&second, &mut report).len(), 1);
        assert_eq!((report.link.frames, report.windows), (1, 1));
    }
}
