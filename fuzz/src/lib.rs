//! Helpers shared by the fuzz targets in `fuzz_targets/` (see docs/fuzzing.md).

use std::path::PathBuf;
use std::sync::OnceLock;

use drover_runtime::engine::BatchAxis;
use drover_runtime::{Model, Signature};
use drover_wire::{DType, DimRef, TensorSpec};

/// Wraps `body` as the shim would send it (CRC-32 trailer, COBS, delimiter), so that a target
/// reaches the frame body's postcard decoding instead of failing the CRC on almost every input.
pub fn frame_bytes(body: &[u8]) -> Vec<u8> {
    let crc = crc32(body);
    let mut raw = body.to_vec();
    raw.extend_from_slice(&crc.to_le_bytes());
    // COBS by hand: the fuzz crate does not need the `cobs` crate for a dozen lines.
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 254 + 2);
    let mut code_at = out.len();
    out.push(0);
    let mut code = 1u8;
    for &b in &raw {
        if b == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(b);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out.push(0);
    out
}

/// CRC-32/ISO-HDLC (the frame trailer's), bitwise: slow but with no table or extra crate.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// The signatures the sample and OIP targets check inputs against: those of committed models
/// (a symbolic batch axis: iris; several inputs of every element type: dtypes; a fixed 4-D
/// image input: cnn), then two no committed model has: every axis symbolic (`[N, T, H, W]`,
/// variable-size images or sequences) and no batch axis at all. Loaded once per process.
pub fn signatures() -> &'static [Signature] {
    static SIGNATURES: OnceLock<Vec<Signature>> = OnceLock::new();
    SIGNATURES.get_or_init(|| {
        let mut sigs: Vec<Signature> = ["iris_logreg.onnx", "dtypes.onnx", "cnn.onnx"]
            .iter()
            .map(|name| {
                let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models").join(name);
                Model::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).signature().clone()
            })
            .collect();
        let free = [DimRef::Symbolic("N"), DimRef::Symbolic("T"), DimRef::Symbolic("H"), DimRef::Symbolic("W")];
        let rows = TensorSpec::new("x", DType::F32, free).expect("fits");
        sigs.push(Signature { inputs: vec![rows], outputs: vec![], batch: BatchAxis::Symbolic("N".into()) });
        let whole = TensorSpec::new("x", DType::I64, [DimRef::Symbolic("T"), DimRef::Fixed(2)]).expect("fits");
        sigs.push(Signature { inputs: vec![whole], outputs: vec![], batch: BatchAxis::None });
        sigs
    })
}

/// A scratch file for the readers that only take a path (the sample readers), in the
/// process's own directory under the system temp dir (tmpfs on most hosts), rewritten per run.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("drover-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    });
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("scratch file");
    path
}

/// Decodes `$payload` as `$t` with the MQTT payload codec; whatever decodes must survive
/// encode → decode unchanged (compared by its postcard encoding, so a NaN compares equal to
/// itself). A value that came as JSON must also survive a JSON round trip, unless it holds a
/// float JSON cannot write (an f32 overflowing to infinity is written as `null`). With
/// `postcard_only`, the JSON round trip is skipped: chunks are always sent as postcard, and
/// their borrowed bytes are written as a JSON array no borrowing decoder can read back.
#[macro_export]
macro_rules! round_trip {
    ($t:ty, $payload:expr) => {
        $crate::round_trip!($t, $payload, true)
    };
    ($t:ty, $payload:expr, postcard_only) => {
        $crate::round_trip!($t, $payload, false)
    };
    ($t:ty, $payload:expr, $json:expr) => {{
        use drover_runtime::link::codec::{PayloadFormat, decode, encode};
        let payload: &[u8] = $payload;
        if let Ok(value) = decode::<$t>(payload) {
            let bytes = encode(PayloadFormat::Postcard, &value);
            let back: $t = decode(&bytes).expect("postcard re-encoding decodes");
            assert_eq!(encode(PayloadFormat::Postcard, &back), bytes, "postcard decode(encode(x)) == x");
            if $json && payload.first() == Some(&b'{') {
                let json = encode(PayloadFormat::Json, &value);
                match decode::<$t>(&json) {
                    Ok(back) => {
                        assert_eq!(encode(PayloadFormat::Postcard, &back), bytes, "JSON decode(encode(x)) == x")
                    }
                    Err(e) => assert!(
                        json.windows(4).any(|w| w == b"null"),
                        "JSON re-encoding does not decode: {e}: {}",
                        String::from_utf8_lossy(&json)
                    ),
                }
            }
        }
    }};
}
