use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use drover_wire::DType;
use npyz::{NpyFile, NpyReader, Order};

use super::{Sample, SampleError};
use crate::tensor::{Tensor, TensorData};
use crate::{Signature, describe_shape};

type Source = BufReader<File>;

/// The largest header an `.npy` file may declare. numpy itself refuses more than 10,000 bytes
/// by default (`max_header_size`); npyz allocates whatever the file declares (up to 4 GiB) before
/// reading it, so the length is checked here first.
const MAX_HEADER: u64 = 64 * 1024;

/// The deepest bracket nesting accepted in a header. A plain array's header is a dict holding a
/// shape tuple (2); npyz's header parser (py_literal, on pest) takes exponential time in the
/// nesting, so a 200-byte header of nested `[` kept it busy for minutes.
const MAX_NESTING: usize = 4;

/// The deepest nesting of `[`, `(` and `{` in a Python-literal header, outside quoted strings.
fn nesting(header: &[u8]) -> usize {
    let (mut depth, mut deepest, mut quote) = (0usize, 0usize, None);
    for &b in header {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(b),
            (None, b'[' | b'(' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, b']' | b')' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Opens an `.npy` file for npyz once its declared header length and nesting are known to be
/// sane.
fn open_npy(path: &Path) -> Result<NpyFile<Source>, SampleError> {
    let fail = |message: String| SampleError::Npy { path: path.to_path_buf(), message };
    let io = |error| SampleError::Io { path: path.to_path_buf(), error };
    let mut file = File::open(path).map_err(io)?;
    // Magic (6), version (2), then the header length: u16 in version 1, u32 from version 2.
    let mut preamble = Vec::with_capacity(12);
    (&mut file).take(12).read_to_end(&mut preamble).map_err(io)?;
    if preamble.len() >= 10 && preamble.starts_with(b"\x93NUMPY") {
        let (declared, start) = match (preamble[6], preamble.get(8..12)) {
            (1, _) => (u64::from(u16::from_le_bytes([preamble[8], preamble[9]])), 10),
            (_, Some(b)) => (u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])), 12),
            (_, None) => (0, 10),
        };
        if declared > MAX_HEADER {
            return Err(fail(format!(
                "not a valid .npy file: its header declares {declared} bytes, more than the {MAX_HEADER} a header needs"
            )));
        }
        let mut header = Vec::new();
        file.seek(std::io::SeekFrom::Start(start)).map_err(io)?;
        (&mut file).take(declared).read_to_end(&mut header).map_err(io)?;
        let depth = nesting(&header);
        if depth > MAX_NESTING {
            return Err(fail(format!(
                "not a valid .npy file: its header nests {depth} brackets deep (an array's header needs 2)"
            )));
        }
    }
    file.rewind().map_err(io)?;
    NpyFile::new(BufReader::new(file)).map_err(|e| fail(format!("not a valid .npy file: {e}")))
}

/// The typed element stream of an `.npy` file.
enum Elements {
    F32(NpyReader<f32, Source>),
    F64(NpyReader<f64, Source>),
    I64(NpyReader<i64, Source>),
    I32(NpyReader<i32, Source>),
    U8(NpyReader<u8, Source>),
    I8(NpyReader<i8, Source>),
}

/// Samples from a numpy `.npy` file whose first axis counts samples, for single-input models.
///
/// Elements are streamed: a truncated file fails at the first incomplete sample, with its index,
/// after the complete ones were delivered.
pub struct NpySamples {
    path: PathBuf,
    elements: Elements,
    sample_shape: Vec<usize>,
    per_sample: usize,
    total: u64,
    next_index: u64,
}

impl NpySamples {
    /// Opens the file and checks its type and shape against the model's single input.
    pub fn open(path: &Path, signature: &Signature) -> Result<NpySamples, SampleError> {
        let fail = |message: String| SampleError::Npy { path: path.to_path_buf(), message };
        if signature.inputs.len() != 1 {
            return Err(fail(format!(
                "the model takes {} inputs; a .npy file holds one array: use .jsonl with an object per line",
                signature.inputs.len()
            )));
        }
        let npy = open_npy(path)?;
        if npy.order() == Order::Fortran && npy.shape().len() > 1 {
            return Err(fail("Fortran-ordered arrays are not supported: save np.ascontiguousarray(a)".into()));
        }
        let shape: Vec<u64> = npy.shape().to_vec();
        let spec = &signature.inputs[0];
        let expected = signature.sample_shape(0);
        let (&total, rest) =
            shape.split_first().ok_or_else(|| fail("holds a scalar; the first axis must count samples".into()))?;
        let sample_shape: Vec<usize> = rest.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
        let fits = sample_shape.len() == expected.len()
            && sample_shape.iter().zip(&expected).all(|(s, e)| e.is_none_or(|e| e == *s));
        if !fits {
            return Err(fail(format!(
                "shape {shape:?} does not match input '{}': expected [samples,{}]",
                spec.name,
                describe_shape(&expected)
            )));
        }
        let per_sample = sample_shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| fail(format!("shape {shape:?} is too large")))?;
        let found = format!("{:?}", npy.dtype());
        let wrong_type = |_| {
            fail(format!(
                "holds {found} but input '{}' is {}: convert with a.astype(np.{})",
                spec.name, spec.dtype, spec.dtype
            ))
        };
        let elements = match spec.dtype {
            DType::F32 => Elements::F32(npy.data().map_err(wrong_type)?),
            DType::F64 => Elements::F64(npy.data().map_err(wrong_type)?),
            DType::I64 => Elements::I64(npy.data().map_err(wrong_type)?),
            DType::I32 => Elements::I32(npy.data().map_err(wrong_type)?),
            DType::U8 => Elements::U8(npy.data().map_err(wrong_type)?),
            DType::I8 => Elements::I8(npy.data().map_err(wrong_type)?),
        };
        Ok(NpySamples { path: path.to_path_buf(), elements, sample_shape, per_sample, total, next_index: 0 })
    }

    /// Number of samples the header declares.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether the header declares no sample.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn read_sample(&mut self) -> Result<Sample, SampleError> {
        fn take<T>(r: &mut NpyReader<T, Source>, n: usize) -> std::io::Result<Vec<T>>
        where
            T: npyz::Deserialize,
        {
            let mut v = Vec::with_capacity(n.min(1 << 20));
            for _ in 0..n {
                match r.next() {
                    Some(x) => v.push(x?),
                    None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                }
            }
            Ok(v)
        }
        let n = self.per_sample;
        let data = match &mut self.elements {
            Elements::F32(r) => take(r, n).map(TensorData::F32),
            Elements::F64(r) => take(r, n).map(TensorData::F64),
            Elements::I64(r) => take(r, n).map(TensorData::I64),
            Elements::I32(r) => take(r, n).map(TensorData::I32),
            Elements::U8(r) => take(r, n).map(TensorData::U8),
            Elements::I8(r) => take(r, n).map(TensorData::I8),
        };
        let index = self.next_index;
        let data = data.map_err(|e| SampleError::Npy {
            path: self.path.clone(),
            message: format!("truncated or unreadable at sample {index} of {}: {e}", self.total),
        })?;
        let tensor = Tensor::new(self.sample_shape.clone(), data)
            .map_err(|e| SampleError::Npy { path: self.path.clone(), message: e.to_string() })?;
        Ok(vec![tensor])
    }
}

impl Iterator for NpySamples {
    type Item = Result<Sample, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_index >= self.total {
            return None;
        }
        let sample = self.read_sample();
        self.next_index = if sample.is_ok() { self.next_index + 1 } else { self.total };
        Some(sample)
    }
}

/// Reads a whole `.npy` array of any element type Drover carries (reference outputs, statistics).
pub fn read_npy(path: &Path) -> Result<Tensor, SampleError> {
    use npyz::TypeChar;
    let fail = |message: String| SampleError::Npy { path: path.to_path_buf(), message };
    let npy = open_npy(path)?;
    if npy.order() == Order::Fortran && npy.shape().len() > 1 {
        return Err(fail("Fortran-ordered arrays are not supported: save np.ascontiguousarray(a)".into()));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
    let npyz::DType::Plain(ts) = npy.dtype() else {
        return Err(fail("structured arrays are not supported".into()));
    };
    let read = |e: std::io::Error| fail(format!("truncated or unreadable: {e}"));
    let data = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => TensorData::F32(npy.into_vec().map_err(read)?),
        (TypeChar::Float, 8) => TensorData::F64(npy.into_vec().map_err(read)?),
        (TypeChar::Int, 8) => TensorData::I64(npy.into_vec().map_err(read)?),
        (TypeChar::Int, 4) => TensorData::I32(npy.into_vec().map_err(read)?),
        (TypeChar::Uint, 1) => TensorData::U8(npy.into_vec().map_err(read)?),
        (TypeChar::Int, 1) => TensorData::I8(npy.into_vec().map_err(read)?),
        _ => return Err(fail(format!("element type {ts} is not one Drover carries"))),
    };
    Tensor::new(shape, data).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchAxis, Signature};
    use drover_wire::{DimRef, TensorSpec};
    use proptest::prelude::*;

    fn iris_signature() -> Signature {
        let spec = TensorSpec::new("float_input", DType::F32, [DimRef::Symbolic("N"), DimRef::Fixed(4)]).expect("fits");
        Signature {
            inputs: vec![spec],
            outputs: vec![],
            batch: BatchAxis::Symbolic("N".into()),
            class_labels: Vec::new(),
        }
    }

    fn reference_npy() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/reference/iris_logreg.input.npy");
        std::fs::read(path).expect("committed reference input")
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Sample>, SampleError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.npy");
        std::fs::write(&path, bytes).expect("write");
        NpySamples::open(&path, &iris_signature())?.collect()
    }

    /// Found by the `samples_npy` fuzz target: a 52-byte version-3 file declaring a 3.7 GB header,
    /// which npyz allocated before reading (an out-of-memory abort).
    #[test]
    fn a_header_declaring_gigabytes_is_refused_before_anything_is_allocated() {
        let crash: [u8; 52] = [
            147, 78, 85, 77, 80, 89, 3, 0, 118, 0, 0, 221, 1, 0, 0, 0, 0, 0, 0, 39, 58, 32, 39, 60, 102, 50, 39, 44,
            32, 32, 32, 221, 1, 0, 0, 0, 0, 0, 0, 39, 58, 32, 39, 60, 102, 50, 39, 44, 32, 32, 32, 32,
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.npy");
        std::fs::write(&path, crash).expect("write");
        for err in [
            read_npy(&path).map(|_| ()).unwrap_err(),
            NpySamples::open(&path, &iris_signature()).map(|_| ()).unwrap_err(),
        ] {
            assert!(err.to_string().contains("header declares 3707764854 bytes"), "{err}");
        }
        // Version 1 files (a u16 length) and the reference files still read.
        assert_eq!(read_all(&reference_npy()).expect("reference").len(), 16);
    }

    /// Found by the `samples_npy` fuzz target after the fix above: a header of 96 nested `[`
    /// kept npyz's header parser busy past the fuzzer's 10-second limit (its time grows
    /// exponentially with the nesting).
    #[test]
    fn a_deeply_nested_header_is_refused_before_it_is_parsed() {
        let text = format!("{{{}'descr': '<f4',      \n", "[".repeat(96));
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(&[0; 16]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.npy");
        std::fs::write(&path, &bytes).expect("write");
        let err = read_npy(&path).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("nests 97 brackets deep"), "{err}");
        assert_eq!(nesting(b"{'descr': '<f4', 'fortran_order': False, 'shape': (16, 4), }"), 2);
        assert_eq!(nesting(b"{'descr': '[[[[[[', 'shape': (1,), }"), 2, "quoted brackets do not count");
    }

    #[test]
    fn reference_file_reads_sixteen_samples_of_four() {
        let samples = read_all(&reference_npy()).expect("valid file");
        assert_eq!(samples.len(), 16);
        assert!(samples.iter().all(|s| s[0].shape() == [4]));
        let whole = {
            let dir = tempfile::tempdir().expect("tempdir");
            let p = dir.path().join("x.npy");
            std::fs::write(&p, reference_npy()).expect("write");
            read_npy(&p).expect("reads")
        };
        assert_eq!(whole.shape(), &[16, 4]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn truncated_file_is_an_error_never_a_panic(cut in 0usize..384) {
            let bytes = reference_npy();
            prop_assume!(cut < bytes.len());
            prop_assert!(read_all(&bytes[..cut]).is_err());
        }

        #[test]
        fn corrupted_header_is_an_error_or_a_valid_read(at in 0usize..128, byte in any::<u8>()) {
            let mut bytes = reference_npy();
            bytes[at] = byte;
            if let Ok(samples) = read_all(&bytes) {
                prop_assert!(samples.iter().all(|s| s[0].shape() == [4]));
            }
        }
    }
}
