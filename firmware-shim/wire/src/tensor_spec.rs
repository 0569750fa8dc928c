use core::fmt;
use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use crate::DType;

/// Longest tensor name carried on the wire. Exporters produce names like
/// `serving_default_input_1:0`; 64 bytes covers them with room to spare while keeping a
/// schema small enough for a microcontroller's RAM.
pub const MAX_NAME_LEN: usize = 64;

/// Highest tensor rank carried on the wire (NCHW images plus a margin).
pub const MAX_RANK: usize = 8;

/// Longest symbolic axis name (`N`, `batch_size`, `sequence_length`…).
pub const MAX_SYMBOL_LEN: usize = 32;

/// One axis of a tensor schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dim {
    /// A size fixed by the model.
    Fixed(u64),
    /// A size chosen at run time (ONNX `dim_param`, e.g. the batch axis `N`).
    Symbolic(String<MAX_SYMBOL_LEN>),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// The declared name, element type and shape of one model input or output.
///
/// It is what a bundle manifest promises, what `inspect` shows and what a sensor window must
/// match, so it lives here rather than in any one component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The ONNX value name.
    pub name: String<MAX_NAME_LEN>,
    /// Element type.
    pub dtype: DType,
    /// Declared shape, outermost axis first.
    pub shape: Vec<Dim, MAX_RANK>,
}

/// Why a schema could not be represented on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// A name longer than [`MAX_NAME_LEN`] bytes.
    NameTooLong,
    /// More axes than [`MAX_RANK`].
    RankTooHigh,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::NameTooLong => write!(f, "name longer than {MAX_NAME_LEN} bytes"),
            SpecError::RankTooHigh => write!(f, "more than {MAX_RANK} axes"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SpecError {}

impl TensorSpec {
    /// Builds a spec from borrowed parts, refusing what does not fit the wire bounds.
    pub fn new<'a>(
        name: &str,
        dtype: DType,
        shape: impl IntoIterator<Item = DimRef<'a>>,
    ) -> Result<TensorSpec, SpecError> {
        let name = String::try_from(name).map_err(|_| SpecError::NameTooLong)?;
        let mut dims = Vec::new();
        for d in shape {
            let dim = match d {
                DimRef::Fixed(n) => Dim::Fixed(n),
                DimRef::Symbolic(s) => Dim::Symbolic(String::try_from(s).map_err(|_| SpecError::NameTooLong)?),
            };
            dims.push(dim).map_err(|_| SpecError::RankTooHigh)?;
        }
        Ok(TensorSpec { name, dtype, shape: dims })
    }
}

/// A borrowed axis, so callers can build a [`TensorSpec`] without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DimRef<'a> {
    /// See [`Dim::Fixed`].
    Fixed(u64),
    /// See [`Dim::Symbolic`].
    Symbolic(&'a str),
}

impl fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}[", self.name, self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_postcard() {
        let spec = TensorSpec::new(
            "image",
            DType::F32,
            [DimRef::Symbolic("N"), DimRef::Fixed(1), DimRef::Fixed(28), DimRef::Fixed(28)],
        )
        .expect("fits");
        let mut buf = [0u8; 128];
        let bytes = postcard::to_slice(&spec, &mut buf).expect("encodes");
        let back: TensorSpec = postcard::from_bytes(bytes).expect("decodes");
        assert_eq!(back, spec);
    }

    #[test]
    fn display_reads_like_numpy() {
        let spec = TensorSpec::new("x", DType::U8, [DimRef::Symbolic("N"), DimRef::Fixed(3)]).expect("fits");
        let mut s: String<32> = String::new();
        core::fmt::write(&mut s, format_args!("{spec}")).expect("fits");
        assert_eq!(s.as_str(), "x: uint8[N,3]");
    }

    #[test]
    fn oversized_specs_are_refused() {
        let long = [b'a'; MAX_NAME_LEN + 1];
        let long = core::str::from_utf8(&long).expect("ascii");
        assert_eq!(TensorSpec::new(long, DType::F32, []), Err(SpecError::NameTooLong));
        let dims = [DimRef::Fixed(1); MAX_RANK + 1];
        assert_eq!(TensorSpec::new("x", DType::F32, dims), Err(SpecError::RankTooHigh));
    }

    #[test]
    fn truncated_bytes_are_an_error_not_a_panic() {
        let spec = TensorSpec::new("abc", DType::I64, [DimRef::Fixed(4)]).expect("fits");
        let mut buf = [0u8; 64];
        let bytes = postcard::to_slice(&spec, &mut buf).expect("encodes");
        for cut in 0..bytes.len() {
            assert!(postcard::from_bytes::<TensorSpec>(&bytes[..cut]).is_err());
        }
    }
}
