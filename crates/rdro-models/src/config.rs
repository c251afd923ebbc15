//! The decoder's hyper-parameters, read from a Hugging Face `config.json`.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::{ModelError, Result};

/// The model families the decoder implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): q/k/v biases.
    Qwen2,
    /// Llama 3 / 3.1 / 3.2 (`LlamaForCausalLM`).
    Llama,
}

impl Architecture {
    /// The `general.architecture` name GGUF uses.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "qwen2",
            Architecture::Llama => "llama",
        }
    }
}

/// Llama 3.1's frequency-dependent rope scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    /// Scale applied to low frequencies.
    pub factor: f64,
    /// Below this (relative) frequency the full factor applies.
    pub low_freq_factor: f64,
    /// Above this (relative) frequency no scaling applies.
    pub high_freq_factor: f64,
    /// Context length of the original training.
    pub original_max_position_embeddings: f64,
}

/// Everything the decoder needs to know about a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Family.
    pub architecture: Architecture,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMS-norm epsilon.
    pub rms_norm_eps: f64,
    /// Rope base.
    pub rope_theta: f64,
    /// Llama 3 rope scaling, when present.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Per-frequency divisors written by llama.cpp into GGUF files (`rope_freqs.weight`), used
    /// instead of `rope_scaling` when present.
    pub rope_freq_factors: Option<Vec<f64>>,
    /// The output head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (Qwen2) .
    pub attention_bias: bool,
    /// Longest sequence the checkpoint is meant for.
    pub max_position_embeddings: usize,
}

/// The subset of `config.json` we read; everything else is ignored.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<Value>,
    /// transformers >= 5 folds `rope_theta` and `rope_scaling` into this.
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_max_pos() -> usize {
    4096
}

impl ModelConfig {
    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses a `config.json` text; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let err = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| err(format!("not a model config: {e}")))?;
        let arch_name = raw
            .architectures
            .first()
            .cloned()
            .or_else(|| raw.model_type.clone())
            .unwrap_or_default();
        let architecture = match arch_name.as_str() {
            "Qwen2ForCausalLM" | "qwen2" => Architecture::Qwen2,
            "LlamaForCausalLM" | "llama" => Architecture::Llama,
            other => {
                return Err(err(format!(
                    "unsupported architecture {other:?}; expected Qwen2ForCausalLM (Qwen 2 / 2.5) or LlamaForCausalLM (Llama 3 / 3.1 / 3.2)"
                )))
            }
        };
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(err(format!(
                    "unsupported hidden_act {act:?}; expected \"silu\""
                )));
            }
        }
        if raw.mlp_bias == Some(true) {
            return Err(err("mlp_bias = true is not supported".into()));
        }
        if raw.use_sliding_window == Some(true) {
            return Err(err("use_sliding_window = true is not supported".into()));
        }
        let rope_params = raw.rope_parameters.as_ref().filter(|v| v.is_object());
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                rope_params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let scaling = raw
            .rope_scaling
            .as_ref()
            .filter(|v| !v.is_null())
            .or(rope_params);
        let rope_scaling = match scaling {
            None => None,
            Some(v) => parse_rope_scaling(v).map_err(err)?,
        };
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1));
        let config = ModelConfig {
            architecture,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            rope_freq_factors: None,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias: match architecture {
                Architecture::Qwen2 => true,
                Architecture::Llama => raw.attention_bias.unwrap_or(false),
            },
            max_position_embeddings: raw.max_position_embeddings,
        };
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// Checks the shapes are consistent.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return Err("num_attention_heads and num_key_value_heads must be positive".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for rope",
                self.head_dim
            ));
        }
        Ok(())
    }

    /// Group size of grouped-query attention.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// Reads `rope_scaling` / `rope_parameters`: `None` for the default rope, the llama3 parameters,
/// or an error for any other type.
fn parse_rope_scaling(v: &Value) -> std::result::Result<Option<Llama3RopeScaling>, String> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let num = |key: &str| {
                v.get(key).and_then(Value::as_f64).ok_or_else(|| {
                    format!("rope_scaling of type \"llama3\" needs a number `{key}`")
                })
            };
            Ok(Some(Llama3RopeScaling {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            }))
        }
        other => Err(format!(
            "unsupported rope type {other:?}; expected \"default\" or \"llama3\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN: &str = r#"{"architectures":["Qwen2ForCausalLM"],"hidden_size":896,"intermediate_size":4864,
      "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"vocab_size":151936,
      "rope_theta":1000000.0,"tie_word_embeddings":true,"rms_norm_eps":1e-6,"hidden_act":"silu"}"#;

    #[test]
    fn reads_qwen() {
        let c = ModelConfig::from_json(QWEN, Path::new("config.json")).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert_eq!(c.head_dim, 64);
        assert!(c.attention_bias && c.tie_word_embeddings);
        assert_eq!(c.kv_groups(), 7);
        assert_eq!(c.rope_theta, 1e6);
    }

    #[test]
    fn reads_transformers5_rope_parameters() {
        let text = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
          "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":320,
          "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,"low_freq_factor":1.0,
          "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let c = ModelConfig::from_json(text, Path::new("c.json")).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.rope_scaling.unwrap().factor, 8.0);
    }

    #[test]
    fn rejects_unsupported() {
        let mistral = QWEN.replace("Qwen2ForCausalLM", "MistralForCausalLM");
        let e = ModelConfig::from_json(&mistral, Path::new("m/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/config.json") && e.contains("MistralForCausalLM"),
            "{e}"
        );
        let yarn = QWEN.replace(
            "\"rope_theta\"",
            "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4.0},\"rope_theta\"",
        );
        let e = ModelConfig::from_json(&yarn, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported rope type \"yarn\""), "{e}");
    }
}
