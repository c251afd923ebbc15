//! Reading GGUF files as written by llama.cpp: metadata to [`ModelConfig`], tensor names to the
//! Hugging Face module names, and llama.cpp's q/k row permutation undone so that every weight is
//! in Hugging Face row order (which adapters and merges rely on).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::Device;

use crate::config::{Architecture, ModelConfig};
use crate::load::{RawWeight, WeightReader};
use crate::{ModelError, Result};

/// The GGUF name of a Hugging Face tensor name, or `None` for names GGUF does not store.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let short = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{suffix}"))
}

/// An open GGUF file.
pub struct GgufReader {
    path: PathBuf,
    file: BufReader<File>,
    content: Content,
    config: ModelConfig,
}

impl GgufReader {
    /// Opens `path` and reads its metadata into a model config.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut file = BufReader::new(file);
        let content = Content::read(&mut file).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: format!("not a readable GGUF file: {e}"),
        })?;
        let mut reader = Self {
            path: path.to_path_buf(),
            file,
            config: config_from_metadata(&content.metadata, &content, path)?,
            content,
        };
        if let Some(info) = reader.content.tensor_infos.get("rope_freqs.weight") {
            let _ = info;
            let factors = reader
                .read("rope_freqs.weight")?
                .dequantize(&Device::Cpu)?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?;
            reader.config.rope_freq_factors = Some(factors);
        }
        Ok(reader)
    }

    /// The model configuration the metadata describes.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn read(&mut self, name: &str) -> Result<QTensor> {
        self.content
            .tensor(&mut self.file, name, &Device::Cpu)
            .map_err(|e| ModelError::Weights {
                path: self.path.clone(),
                message: format!("{name}: {e}"),
            })
    }
}

impl WeightReader for GgufReader {
    fn path(&self) -> &Path {
        &self.path
    }

    fn get(&mut self, hf_name: &str, device: &Device) -> Result<Option<RawWeight>> {
        let Some(name) = gguf_name(hf_name) else {
            return Ok(None);
        };
        if !self.content.tensor_infos.contains_key(&name) {
            return Ok(None);
        }
        let mut q = self.read(&name)?;
        if self.config.architecture == Architecture::Llama {
            let heads = if hf_name.contains(".q_proj.") {
                Some(self.config.num_attention_heads)
            } else if hf_name.contains(".k_proj.") {
                Some(self.config.num_key_value_heads)
            } else {
                None
            };
            if let Some(heads) = heads {
                q = unpermute_rows(&q, heads, &self.path)?;
            }
        }
        Ok(Some(match q.dtype() {
            GgmlDType::F32 => RawWeight::Dense(q.dequantize(device)?),
            GgmlDType::F16 => RawWeight::Dense(q.dequantize_f16(device)?),
            GgmlDType::BF16 => {
                RawWeight::Dense(q.dequantize(device)?.to_dtype(candle_core::DType::BF16)?)
            }
            _ => RawWeight::Quantized(if device.is_cpu() {
                q
            } else {
                qtensor_from_ggml(q.dtype(), &q.data()?, q.shape().dims().to_vec(), device)?
            }),
        }))
    }
}

/// Undoes llama.cpp's q/k permutation, which interleaves the two rope halves of every head:
/// GGUF row `h·d + 2i + j` holds Hugging Face row `h·d + j·d/2 + i`. Rows are moved as raw
/// bytes, so quantized blocks stay exact.
fn unpermute_rows(q: &QTensor, heads: usize, path: &Path) -> Result<QTensor> {
    let dims = q.shape().dims().to_vec();
    let rows = dims[0];
    let elems_per_row: usize = dims[1..].iter().product();
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(ModelError::Weights {
            path: path.to_path_buf(),
            message: format!(
                "cannot undo the rope permutation of a [{rows}, ..] tensor with {heads} heads"
            ),
        });
    }
    let row_bytes = elems_per_row / q.dtype().block_size() * q.dtype().type_size();
    let data = q.data()?;
    let mut out = vec![0u8; data.len()];
    let d = rows / heads;
    let half = d / 2;
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * d + 2 * i + j;
                let dst = h * d + j * half + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(qtensor_from_ggml(q.dtype(), &out, dims, &Device::Cpu)?)
}

fn config_from_metadata(
    meta: &HashMap<String, Value>,
    content: &Content,
    path: &Path,
) -> Result<ModelConfig> {
    let err = |message: String| ModelError::Config {
        path: path.to_path_buf(),
        message,
    };
    let arch_name = meta
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let architecture = match arch_name.as_str() {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        other => {
            return Err(err(format!(
                "unsupported GGUF architecture {other:?}; expected \"llama\" or \"qwen2\""
            )))
        }
    };
    let int = |key: &str| -> Result<usize> {
        let full = format!("{arch_name}.{key}");
        meta.get(&full)
            .and_then(|v| {
                v.to_u64()
                    .ok()
                    .or_else(|| v.to_u32().ok().map(u64::from))
                    .or_else(|| v.to_i32().ok().map(|x| x as u64))
            })
            .map(|v| v as usize)
            .ok_or_else(|| err(format!("missing integer metadata `{full}`")))
    };
    let float = |key: &str| -> Option<f64> {
        meta.get(&format!("{arch_name}.{key}"))
            .and_then(|v| v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok()))
    };
    let hidden_size = int("embedding_length")?;
    let num_attention_heads = int("attention.head_count")?;
    let num_key_value_heads = int("attention.head_count_kv").unwrap_or(num_attention_heads);
    let head_dim = int("attention.key_length").unwrap_or(hidden_size / num_attention_heads.max(1));
    let vocab_size = content
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.dims()[0])
        .ok_or_else(|| err("no token_embd.weight tensor".into()))?;
    let config = ModelConfig {
        architecture,
        hidden_size,
        intermediate_size: int("feed_forward_length")?,
        num_hidden_layers: int("block_count")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        vocab_size,
        rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
        rope_scaling: None,
        rope_freq_factors: None,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: architecture == Architecture::Qwen2,
        max_position_embeddings: int("context_length").unwrap_or(4096),
    };
    config.validate().map_err(err)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.bias").as_deref(),
            Some("blk.3.attn_q.bias")
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.down_proj.weight").as_deref(),
            Some("blk.0.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("model.norm.weight").as_deref(),
            Some("output_norm.weight")
        );
        assert_eq!(gguf_name("model.layers.0.foo.weight"), None);
    }
}
