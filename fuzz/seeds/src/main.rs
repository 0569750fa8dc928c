//! Writes small seed inputs for the fuzz targets whose formats have no committed reference
//! files (frames, MQTT envelopes, bundle containers, topics), using drover-wire's own types, so
//! that the seeds follow the wire format as it is. Run by `fuzz/seed`; the argument is the
//! corpus root (`fuzz/corpus`). Only drover-wire is compiled: no tract, no sanitizer build.

use std::path::Path;

use drover_wire::frame::{Body, DeviceStats, FeatureWindow, Frame, Hello, MAX_ENCODED_FRAME, encode};
use drover_wire::manifest::{AgentVersion, FileEntry, FileRole, MANIFEST_FORMAT, Manifest, RuntimeSettings};
use drover_wire::message::{ChunkRange, Digest, Op, Phase, Progress, Slot, Status, Want};
use drover_wire::trust::BundleHeader;
use drover_wire::{Arch, DType, Dim, TensorSpec};
use serde::Serialize;

/// The payload codec's postcard tag (`runtime/src/link/codec.rs`).
const POSTCARD_TAG: u8 = 0xD1;

fn write(root: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

/// Both payload encodings of `value`, behind the target's message-type byte.
fn payloads<T: Serialize>(root: &Path, target: &str, kind: u8, name: &str, value: &T) {
    let mut postcard = vec![kind, POSTCARD_TAG];
    postcard.extend(postcard::to_stdvec(value).expect("encodes"));
    write(root, target, &format!("{name}.postcard"), &postcard);
    let mut json = vec![kind];
    json.extend(serde_json::to_vec(value).expect("encodes"));
    write(root, target, &format!("{name}.json"), &json);
}

fn main() {
    let root = std::env::args().nth(1).expect("usage: drover-fuzz-seeds CORPUS_DIR");
    let root = Path::new(&root);

    // Frames: a raw stream of three frames (mode byte 0) and one body to be framed (mode 1).
    let frames = [
        Frame { seq: 0, body: Body::Hello(Hello { features: 4, window_len: 32, period_us: 1000, layout_id: 7 }) },
        Frame {
            seq: 1,
            body: Body::Window(FeatureWindow {
                index: 0,
                values: heapless::Vec::from_slice(&[0.5, -1.0, 2.25, 0.0]).expect("fits"),
            }),
        },
        Frame { seq: 2, body: Body::Stats(DeviceStats { windows: 1, ..DeviceStats::default() }) },
    ];
    let mut stream = vec![0u8];
    for frame in &frames {
        let mut out = [0u8; MAX_ENCODED_FRAME];
        stream.extend_from_slice(encode(frame, &mut out).expect("encodes"));
    }
    write(root, "frame", "stream", &stream);
    let mut body = vec![1u8];
    body.extend(postcard::to_stdvec(&frames[1]).expect("encodes"));
    write(root, "frame", "window-body", &body);

    // Envelopes (kind bytes as in fuzz_targets/envelope.rs).
    let digest = Digest([0xab; 32]);
    let want =
        Want { transfer: digest, ranges: heapless::Vec::from_slice(&[ChunkRange { start: 0, end: 4 }]).expect("fits") };
    payloads(root, "envelope", 3, "want", &want);
    let chunk =
        drover_wire::message::Chunk { transfer: digest, index: 1, sha256: Digest([7; 32]), data: b"chunk bytes" };
    payloads(root, "envelope", 1, "chunk", &chunk);
    let status = Status {
        online: true,
        agent: AgentVersion { major: 0, minor: 1, patch: 0 },
        arch: Arch::Aarch64,
        groups: heapless::Vec::new(),
        model: None,
        slot: Some(Slot::A),
        uptime_s: 5,
        at: 1_700_000_000,
        labels: heapless::Vec::new(),
        presence_only: false,
    };
    payloads(root, "envelope", 5, "status", &status);
    let progress = Progress {
        op: Op::Bundle { transfer: digest, name: "iris".try_into().expect("fits"), version: 3, issued_at: 9 },
        phase: Phase::Downloading { have: 3, total: 9 },
        at: 1_700_000_000,
    };
    payloads(root, "envelope", 6, "progress", &progress);

    // A bundle container: magic, header length, an unsigned header, one file.
    let model = b"not really onnx";
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: "iris".try_into().expect("fits"),
        version: 1,
        label: "seed".try_into().expect("fits"),
        created_at: 1_700_000_000,
        expires_at: 0,
        targets: heapless::Vec::from_slice(&[Arch::Aarch64]).expect("fits"),
        min_agent: AgentVersion { major: 0, minor: 1, patch: 0 },
        inputs: heapless::Vec::from_slice(&[TensorSpec {
            name: "x".try_into().expect("fits"),
            dtype: DType::F32,
            shape: heapless::Vec::from_slice(&[Dim::Symbolic("N".try_into().expect("fits")), Dim::Fixed(4)])
                .expect("fits"),
        }])
        .expect("fits"),
        outputs: heapless::Vec::new(),
        files: heapless::Vec::from_slice(&[FileEntry {
            role: FileRole::Model,
            name: "model.onnx".try_into().expect("fits"),
            size: model.len() as u64,
            sha256: [0; 32],
        }])
        .expect("fits"),
        settings: RuntimeSettings::default(),
    };
    let header = postcard::to_stdvec(&BundleHeader::unsigned(manifest)).expect("encodes");
    let mut bundle = b"DRVBNDL1".to_vec();
    bundle.extend_from_slice(&(header.len() as u32).to_le_bytes());
    bundle.extend_from_slice(&header);
    bundle.extend_from_slice(model);
    write(root, "bundle", "unsigned", &bundle);

    // Topics.
    for (i, t) in [
        "drover/v1/dev/pi-7/status",
        "drover/v1/grp/lab/bundle",
        "drover/v1/fleet/cmd",
        "drover/v1/xfer/abababababababab/chunk",
        "drover/v1/rollout/r1/event",
        "0.4.1-rc1",
    ]
    .iter()
    .enumerate()
    {
        write(root, "topic", &format!("topic-{i}"), t.as_bytes());
    }
}
