use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Location, Sample, SampleError, tensor_from_json};
use crate::Signature;

/// Samples from a JSON Lines file: one sample per line, either a nested array (single-input
/// models) or an object mapping every input name to its nested array. Blank lines are skipped.
pub struct JsonlSamples {
    path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line_no: usize,
    signature: Signature,
    shapes: Vec<Vec<Option<usize>>>,
    len_hint: Option<u64>,
}

impl JsonlSamples {
    /// Opens the file; counts its non-blank lines first so progress can be shown.
    pub fn open(path: &Path, signature: &Signature) -> Result<JsonlSamples, SampleError> {
        let io = |error| SampleError::Io { path: path.to_path_buf(), error };
        let len_hint = count_lines(File::open(path).map_err(io)?).ok();
        let file = File::open(path).map_err(io)?;
        let shapes = (0..signature.inputs.len()).map(|i| signature.sample_shape(i)).collect();
        Ok(JsonlSamples {
            path: path.to_path_buf(),
            lines: BufReader::new(file).lines(),
            line_no: 0,
            signature: signature.clone(),
            shapes,
            len_hint,
        })
    }

    /// Non-blank lines counted when the file was opened.
    pub fn len_hint(&self) -> Option<u64> {
        self.len_hint
    }

    fn parse(&self, text: &str) -> Result<Sample, SampleError> {
        let at = Location::Line(self.line_no);
        let path = || self.path.clone();
        let value: Value =
            serde_json::from_str(text).map_err(|e| SampleError::Json { path: path(), at, message: e.to_string() })?;
        let inputs = &self.signature.inputs;
        let names = || inputs.iter().map(|i| format!("'{}'", i.name)).collect::<Vec<_>>().join(", ");
        let convert = |index: usize, v: &Value| {
            tensor_from_json(v, inputs[index].dtype, &self.shapes[index]).map_err(|error| SampleError::Value {
                path: path(),
                at,
                input: inputs[index].name.to_string(),
                error,
            })
        };
        match value {
            Value::Object(mut map) => {
                let mut sample = Vec::with_capacity(inputs.len());
                for (index, spec) in inputs.iter().enumerate() {
                    let v = map.shift_remove(spec.name.as_str()).ok_or_else(|| SampleError::Inputs {
                        path: path(),
                        at,
                        message: format!("missing input '{}'; the model takes {}", spec.name, names()),
                    })?;
                    sample.push(convert(index, &v)?);
                }
                if let Some(unknown) = map.keys().next() {
                    return Err(SampleError::Inputs {
                        path: path(),
                        at,
                        message: format!("unknown input '{unknown}'; the model takes {}", names()),
                    });
                }
                Ok(sample)
            }
            array @ Value::Array(_) if inputs.len() == 1 => Ok(vec![convert(0, &array)?]),
            Value::Array(_) => Err(SampleError::Inputs {
                path: path(),
                at,
                message: format!(
                    "the model takes {} inputs ({}): give an object {{\"<input name>\": array, …}} per line",
                    inputs.len(),
                    names()
                ),
            }),
            other => Err(SampleError::Inputs {
                path: path(),
                at,
                message: format!(
                    "expected a nested array or an object of inputs, got {}",
                    other.to_string().chars().take(24).collect::<String>()
                ),
            }),
        }
    }
}

impl Iterator for JsonlSamples {
    type Item = Result<Sample, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = self.lines.next()?;
            self.line_no += 1;
            let line = match line {
                Ok(l) => l,
                Err(error) => {
                    return Some(Err(SampleError::Io { path: self.path.clone(), error }));
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            return Some(self.parse(&line));
        }
    }
}

fn count_lines(file: File) -> std::io::Result<u64> {
    let mut reader = BufReader::new(file);
    let mut count = 0u64;
    let mut blank = true;
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            match b {
                b'\n' => {
                    if !blank {
                        count += 1;
                    }
                    blank = true;
                }
                b' ' | b'\t' | b'\r' => {}
                _ => blank = false,
            }
        }
    }
    Ok(count + u64::from(!blank))
}
