//! Tensor element types as safetensors names them.
//!
//! The variant order is the Python/Rust `safetensors` enum order (the types qforge does not
//! handle — F4, F6_*, F8_*FNUZ, C64 — are left out; leaving them out keeps the relative order).
//! Python safetensors writes tensors sorted by this order **descending**, then by name, so
//! `DType` derives `Ord` and [`DType::rank`] exposes it.

use std::fmt;

/// A safetensors element type. `Ord` follows the safetensors enum (BOOL lowest, U64 highest).
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    BOOL,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    F8_E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

/// Every dtype, in enum (sort rank) order.
pub const ALL: [DType; 16] = [
    DType::BOOL,
    DType::U8,
    DType::I8,
    DType::F8_E5M2,
    DType::F8_E4M3,
    DType::F8_E8M0,
    DType::I16,
    DType::U16,
    DType::F16,
    DType::BF16,
    DType::I32,
    DType::U32,
    DType::F32,
    DType::F64,
    DType::I64,
    DType::U64,
];

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        use DType::*;
        match self {
            BOOL | U8 | I8 | F8_E5M2 | F8_E4M3 | F8_E8M0 => 1,
            I16 | U16 | F16 | BF16 => 2,
            I32 | U32 | F32 => 4,
            F64 | I64 | U64 => 8,
        }
    }

    /// The safetensors header name, e.g. `"BF16"`.
    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            BOOL => "BOOL",
            U8 => "U8",
            I8 => "I8",
            F8_E5M2 => "F8_E5M2",
            F8_E4M3 => "F8_E4M3",
            F8_E8M0 => "F8_E8M0",
            I16 => "I16",
            U16 => "U16",
            F16 => "F16",
            BF16 => "BF16",
            I32 => "I32",
            U32 => "U32",
            F32 => "F32",
            F64 => "F64",
            I64 => "I64",
            U64 => "U64",
        }
    }

    /// Parses a safetensors header name (exact, case-sensitive). `None` for unknown names.
    pub fn parse(s: &str) -> Option<DType> {
        ALL.into_iter().find(|d| d.name() == s)
    }

    /// Position in the Python safetensors enum; files are written in descending rank order.
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// The dtype of a torch dtype string as used in config.json (`"bfloat16"`, `"float16"`,
    /// `"float32"`), also accepting the `torch.` prefix.
    pub fn from_torch(s: &str) -> Option<DType> {
        match s.strip_prefix("torch.").unwrap_or(s) {
            "bfloat16" => Some(DType::BF16),
            "float16" | "half" => Some(DType::F16),
            "float32" | "float" => Some(DType::F32),
            "float64" | "double" => Some(DType::F64),
            "float8_e4m3fn" => Some(DType::F8_E4M3),
            "float8_e5m2" => Some(DType::F8_E5M2),
            "int8" => Some(DType::I8),
            "uint8" => Some(DType::U8),
            "int32" => Some(DType::I32),
            "int64" => Some(DType::I64),
            _ => None,
        }
    }

    /// True for the float types a weight can be quantized from (BF16, F16, F32).
    pub fn is_float_weight(self) -> bool {
        matches!(self, DType::BF16 | DType::F16 | DType::F32)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
