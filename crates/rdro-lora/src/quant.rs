//! The quantization types a frozen base can be held in, and the per-tensor fallback when a
//! tensor's width does not fit a type's block.

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;

use crate::LoraError;

/// How the frozen linear weights of the base are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// Dense, in the dtype the weights were stored in (bf16, f16 or f32).
    None,
    /// A GGML block type from candle.
    Ggml(GgmlDType),
}

/// The spellings accepted in configs and on the command line, with their types.
const NAMES: &[(&str, GgmlDType)] = &[
    ("q8_0", GgmlDType::Q8_0),
    ("q4_0", GgmlDType::Q4_0),
    ("q4_1", GgmlDType::Q4_1),
    ("q5_0", GgmlDType::Q5_0),
    ("q5_1", GgmlDType::Q5_1),
    ("q2k", GgmlDType::Q2K),
    ("q3k", GgmlDType::Q3K),
    ("q4k", GgmlDType::Q4K),
    ("q5k", GgmlDType::Q5K),
    ("q6k", GgmlDType::Q6K),
];

impl QuantType {
    /// The names `FromStr` accepts, for error messages and documentation.
    pub fn accepted_names() -> String {
        let mut names = vec!["none"];
        names.extend(NAMES.iter().map(|(n, _)| *n));
        names.join(", ")
    }

    /// Block width of the type (1 for dense).
    pub fn block_size(self) -> usize {
        match self {
            QuantType::None => 1,
            QuantType::Ggml(t) => t.block_size(),
        }
    }

    /// Whether a weight whose rows are `in_features` wide can be stored in this type.
    pub fn fits(self, in_features: usize) -> bool {
        in_features.is_multiple_of(self.block_size())
    }

    /// The type used for a tensor `in_features` wide: this one when it fits, else the nearest
    /// 32-wide type of similar precision (as llama.cpp does), else dense.
    pub fn for_width(self, in_features: usize) -> QuantType {
        if self.fits(in_features) {
            return self;
        }
        let fallback = match self {
            QuantType::Ggml(GgmlDType::Q2K | GgmlDType::Q3K) => GgmlDType::Q4_0,
            QuantType::Ggml(GgmlDType::Q4K) => GgmlDType::Q5_0,
            QuantType::Ggml(GgmlDType::Q5K) => GgmlDType::Q5_1,
            _ => GgmlDType::Q8_0,
        };
        let fallback = QuantType::Ggml(fallback);
        if fallback.fits(in_features) {
            fallback
        } else {
            QuantType::None
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantType::None => f.write_str("none"),
            QuantType::Ggml(t) => match NAMES.iter().find(|(_, d)| d == t) {
                Some((name, _)) => f.write_str(name),
                None => write!(f, "{t:?}"),
            },
        }
    }
}

impl FromStr for QuantType {
    type Err = LoraError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase().replace("_k", "k");
        if key == "none" || key.is_empty() {
            return Ok(QuantType::None);
        }
        // "q4_0" survives the "_k" rewrite unchanged; "q4_k" becomes "q4k".
        NAMES
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, t)| QuantType::Ggml(*t))
            .ok_or_else(|| {
                LoraError::config(
                    "quantization",
                    format!(
                        "unknown type {s:?}; expected one of {}",
                        Self::accepted_names()
                    ),
                )
            })
    }
}

/// What the loader did with each frozen weight: requested type, used type, and the tensors that
/// needed a fallback.
#[derive(Debug, Default, Clone)]
pub struct QuantReport {
    /// `(tensor name, requested, used)` for every tensor whose type differs from the request.
    pub fallbacks: Vec<(String, QuantType, QuantType)>,
    /// Number of linear weights held quantized.
    pub quantized: usize,
    /// Number of linear weights held dense.
    pub dense: usize,
    /// Bytes held by all frozen linear weights.
    pub bytes: usize,
}

impl QuantReport {
    /// One human-readable line per distinct fallback, e.g.
    /// `q4k -> q5_0 for 144 tensors (width not a multiple of 256)`.
    pub fn summary(&self) -> Vec<String> {
        let mut groups: Vec<(QuantType, QuantType, usize)> = Vec::new();
        for (_, req, used) in &self.fallbacks {
            match groups.iter_mut().find(|(r, u, _)| r == req && u == used) {
                Some(g) => g.2 += 1,
                None => groups.push((*req, *used, 1)),
            }
        }
        groups
            .into_iter()
            .map(|(req, used, n)| {
                format!(
                    "{req} -> {used} for {n} tensor(s) (width not a multiple of {})",
                    req.block_size()
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!("none".parse::<QuantType>().unwrap(), QuantType::None);
        assert_eq!(
            "q4_k".parse::<QuantType>().unwrap(),
            QuantType::Ggml(GgmlDType::Q4K)
        );
        assert_eq!(
            "Q8_0".parse::<QuantType>().unwrap(),
            QuantType::Ggml(GgmlDType::Q8_0)
        );
        let err = "q9".parse::<QuantType>().unwrap_err().to_string();
        assert!(
            err.contains("quantization") && err.contains("q8_0"),
            "{err}"
        );
    }

    #[test]
    fn qwen_05b_widths_fall_back() {
        let q4k = QuantType::Ggml(GgmlDType::Q4K);
        // 896 = 28 * 32 is not a multiple of 256.
        assert_eq!(q4k.for_width(896), QuantType::Ggml(GgmlDType::Q5_0));
        // 4864 = 19 * 256 fits (down_proj).
        assert_eq!(q4k.for_width(4864), q4k);
        assert_eq!(q4k.for_width(1024), q4k);
        let q6k = QuantType::Ggml(GgmlDType::Q6K);
        assert_eq!(q6k.for_width(896), QuantType::Ggml(GgmlDType::Q8_0));
        assert_eq!(q6k.for_width(40), QuantType::None);
    }
}
