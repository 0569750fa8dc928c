//! Reading samples (model inputs) from the files users bring: JSON Lines and numpy `.npy`.
//!
//! A sample is one input tensor per model input, without the batch axis. Readers stream: a file
//! far larger than memory is read one batch at a time, and an error names the line or sample
//! number, the input and what was expected.

mod json_value;
mod jsonl;
mod npy;

use std::fmt;
use std::path::{Path, PathBuf};

pub use json_value::{ValueError, tensor_from_json};
pub use jsonl::JsonlSamples;
pub use npy::{NpySamples, read_npy};

use crate::Signature;
use crate::tensor::Tensor;

/// One model input set, in the model's input order, each without the batch axis.
pub type Sample = Vec<Tensor>;

/// Where in the input file a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// 1-based line of a JSONL file.
    Line(usize),
    /// 0-based sample index along the first axis of a `.npy` file.
    Sample(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Sample(n) => write!(f, "sample {n}"),
        }
    }
}

/// Why a sample file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The file could not be opened or read.
    #[error("{path}: {error}")]
    Io {
        /// The input file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A line is not valid JSON.
    #[error("{path}, {at}: not valid JSON: {message}")]
    Json {
        /// The input file.
        path: PathBuf,
        /// Where.
        at: Location,
        /// serde_json's explanation.
        message: String,
    },
    /// A value does not fit the input it is for.
    #[error("{path}, {at}: input '{input}': {error}")]
    Value {
        /// The input file.
        path: PathBuf,
        /// Where.
        at: Location,
        /// The model input.
        input: String,
        /// What is wrong.
        error: ValueError,
    },
    /// The sample does not name the model's inputs correctly.
    #[error("{path}, {at}: {message}")]
    Inputs {
        /// The input file.
        path: PathBuf,
        /// Where.
        at: Location,
        /// What is wrong, with the expected input names.
        message: String,
    },
    /// A `.npy` file that is malformed, truncated or of the wrong type or shape.
    #[error("{path}: {message}")]
    Npy {
        /// The input file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file type Drover does not read.
    #[error("{path}: unknown input format; use .jsonl (one sample per line) or .npy (first axis = samples)")]
    Format {
        /// The input file.
        path: PathBuf,
    },
}

/// A stream of samples from a file, of either supported format.
pub enum SampleFile {
    /// JSON Lines.
    Jsonl(JsonlSamples),
    /// numpy `.npy`.
    Npy(NpySamples),
}

impl SampleFile {
    /// Opens `path` for the model described by `signature`, choosing the reader by extension.
    pub fn open(path: &Path, signature: &Signature) -> Result<SampleFile, SampleError> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("jsonl" | "ndjson" | "json") => Ok(SampleFile::Jsonl(JsonlSamples::open(path, signature)?)),
            Some("npy") => Ok(SampleFile::Npy(NpySamples::open(path, signature)?)),
            _ => Err(SampleError::Format { path: path.to_path_buf() }),
        }
    }

    /// Number of samples, when it is known up front (for progress reporting).
    pub fn len_hint(&self) -> Option<u64> {
        match self {
            SampleFile::Jsonl(s) => s.len_hint(),
            SampleFile::Npy(s) => Some(s.len()),
        }
    }

    /// Reads up to `n` samples; an empty batch means the file is exhausted.
    pub fn next_batch(&mut self, n: usize) -> Result<Vec<Sample>, SampleError> {
        let mut batch = Vec::with_capacity(n.min(1024));
        while batch.len() < n {
            let next = match self {
                SampleFile::Jsonl(s) => s.next(),
                SampleFile::Npy(s) => s.next(),
            };
            match next {
                Some(sample) => batch.push(sample?),
                None => break,
            }
        }
        Ok(batch)
    }
}
