use core::fmt;
use serde::{Deserialize, Serialize};

/// Element types a Drover model may take as input or produce as output.
///
/// The set is what edge models actually use: float tensors from sensors and images, integer
/// class labels from scikit-learn exports, and 8-bit tensors at the edges of quantized models.
/// Keeping it closed lets every component (down to the microcontroller) handle each case
/// exhaustively instead of guessing at an unknown type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// Signed 64-bit integer (ONNX's usual integer and label type).
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 8-bit integer (images, quantized tensors).
    U8,
    /// Signed 8-bit integer (quantized tensors).
    I8,
}

impl DType {
    /// Every supported type, for exhaustive listings in error messages and tests.
    pub const ALL: [DType; 6] = [DType::F32, DType::F64, DType::I64, DType::I32, DType::U8, DType::I8];

    /// The numpy / ONNX spelling, which is what users see in their own tools.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::U8 => "uint8",
            DType::I8 => "int8",
        }
    }

    /// Size of one element in bytes, for buffer bounds and parameter counts.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::U8 | DType::I8 => 1,
        }
    }

    /// Maps an ONNX `TensorProto.DataType` code; `None` for types Drover does not carry.
    pub const fn from_onnx(code: i32) -> Option<DType> {
        match code {
            1 => Some(DType::F32),
            2 => Some(DType::U8),
            3 => Some(DType::I8),
            6 => Some(DType::I32),
            7 => Some(DType::I64),
            11 => Some(DType::F64),
            _ => None,
        }
    }

    /// Whether values of this type are integers (JSON input must then be integral).
    pub const fn is_integer(self) -> bool {
        !matches!(self, DType::F32 | DType::F64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_codes_round_trip_through_names() {
        for (code, name) in [(1, "float32"), (2, "uint8"), (3, "int8"), (6, "int32"), (7, "int64"), (11, "float64")] {
            assert_eq!(DType::from_onnx(code).map(DType::name), Some(name));
        }
        // float16, bool and string are not carried.
        for code in [0, 8, 9, 10, 16] {
            assert_eq!(DType::from_onnx(code), None);
        }
    }

    #[test]
    fn postcard_encoding_is_one_byte() {
        let mut buf = [0u8; 4];
        for dt in DType::ALL {
            let used = postcard::to_slice(&dt, &mut buf).expect("fits");
            assert_eq!(used.len(), 1);
            let back: DType = postcard::from_bytes(used).expect("decodes");
            assert_eq!(back, dt);
        }
    }
}
