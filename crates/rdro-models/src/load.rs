//! Building a [`LlamaModel`] from a Hugging Face folder (one safetensors file or shards with an
//! index) or a GGUF file, quantizing each frozen linear weight as requested.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use rdro_lora::{FrozenLinear, FrozenWeight, LoraLinear, QuantReport, QuantType};

use crate::gguf::GgufReader;
use crate::llama::{Attention, DecoderLayer, Mlp};
use crate::{LlamaModel, ModelConfig, ModelError, Result};

/// Where a base model's weights are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder in Hugging Face layout (config.json + *.safetensors).
    Folder(PathBuf),
    /// A single GGUF file.
    Gguf(PathBuf),
}

impl ModelSource {
    /// Classifies a local path: a `.gguf` file or a folder holding `config.json`.
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return Ok(ModelSource::Gguf(path.to_path_buf()));
        }
        if path.is_dir() && path.join("config.json").is_file() {
            return Ok(ModelSource::Folder(path.to_path_buf()));
        }
        Err(ModelError::Config {
            path: path.to_path_buf(),
            message: "expected a .gguf file or a folder with config.json and *.safetensors".into(),
        })
    }

    /// The path the source points at.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Folder(p) | ModelSource::Gguf(p) => p,
        }
    }
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// How frozen linear weights are held (`None` keeps the file's dense dtype).
    pub quantization: QuantType,
    /// Activation dtype.
    pub compute_dtype: DType,
    /// Device for weights and activations.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            quantization: QuantType::None,
            compute_dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// A loaded model and what quantization did to it.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The model (no adapters yet).
    pub model: LlamaModel,
    /// Per-tensor quantization report.
    pub report: QuantReport,
}

/// A weight as it comes from a file.
pub enum RawWeight {
    /// Dense, in the file's dtype.
    Dense(Tensor),
    /// GGML-quantized (GGUF files).
    Quantized(QTensor),
}

/// Something that yields weights by Hugging Face name.
pub trait WeightReader {
    /// The file or folder, for error messages.
    fn path(&self) -> &Path;
    /// The tensor called `hf_name`, or `None` when absent.
    fn get(&mut self, hf_name: &str, device: &Device) -> Result<Option<RawWeight>>;
}

/// Safetensors file(s) of a Hugging Face folder.
struct SafetensorsReader {
    path: PathBuf,
    files: MmapedSafetensors,
    names: HashSet<String>,
}

impl SafetensorsReader {
    fn open(dir: &Path) -> Result<Self> {
        let shards = shard_files(dir)?;
        // SAFETY: the files are memory-mapped read-only; modifying them while loading is the
        // caller's problem, as with every mmap-based loader.
        let files =
            unsafe { MmapedSafetensors::multi(&shards) }.map_err(|e| ModelError::Weights {
                path: dir.to_path_buf(),
                message: format!("cannot read safetensors: {e}"),
            })?;
        let names = files.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Self {
            path: dir.to_path_buf(),
            files,
            names,
        })
    }
}

/// The shard file names `model.safetensors.index.json` lists, sorted and de-duplicated.
pub fn index_shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Weights {
        path: index.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Weights {
            path: index.to_path_buf(),
            message: "no `weight_map` object".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// The safetensors files of a folder: the shards of `model.safetensors.index.json`, or the single
/// `model.safetensors`.
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let files = index_shard_names(&index)?;
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(ModelError::Weights {
                path: index,
                message: format!("shard {} is missing", missing.display()),
            });
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::Weights {
        path: dir.to_path_buf(),
        message: "no model.safetensors or model.safetensors.index.json".into(),
    })
}

impl WeightReader for SafetensorsReader {
    fn path(&self) -> &Path {
        &self.path
    }

    fn get(&mut self, hf_name: &str, device: &Device) -> Result<Option<RawWeight>> {
        if !self.names.contains(hf_name) {
            return Ok(None);
        }
        let t = self
            .files
            .load(hf_name, device)
            .map_err(|e| ModelError::Weights {
                path: self.path.clone(),
                message: format!("{hf_name}: {e}"),
            })?;
        let t = match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => t,
            other => {
                return Err(ModelError::Weights {
                    path: self.path.clone(),
                    message: format!("{hf_name}: dtype {other:?} (expected bf16, f16 or f32)"),
                })
            }
        };
        Ok(Some(RawWeight::Dense(t)))
    }
}

/// Loads a base model.
pub fn load(source: &ModelSource, options: &LoadOptions) -> Result<LoadedModel> {
    match source {
        ModelSource::Folder(dir) => {
            let config = ModelConfig::from_file(&dir.join("config.json"))?;
            let mut reader = SafetensorsReader::open(dir)?;
            build(config, &mut reader, options)
        }
        ModelSource::Gguf(path) => {
            let mut reader = GgufReader::open(path)?;
            let config = reader.config().clone();
            build(config, &mut reader, options)
        }
    }
}

/// Builds the model from any weight reader.
pub fn build(
    config: ModelConfig,
    reader: &mut dyn WeightReader,
    options: &LoadOptions,
) -> Result<LoadedModel> {
    let device = &options.device;
    let h = config.hidden_size;
    let mut report = QuantReport::default();
    let embed_tokens = dense(
        reader,
        "model.embed_tokens.weight",
        &[config.vocab_size, h],
        device,
    )?;
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    let q_out = config.num_attention_heads * config.head_dim;
    let kv_out = config.num_key_value_heads * config.head_dim;
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut key = (i * 7) as u64;
        let mut linear =
            |name: &str, out_f: usize, in_f: usize, bias: bool| -> Result<LoraLinear> {
                let full = format!("{p}.{name}");
                let b = if bias {
                    Some(dense(reader, &format!("{full}.bias"), &[out_f], device)?)
                } else {
                    None
                };
                let layer = frozen_linear(
                    reader,
                    &format!("{full}.weight"),
                    out_f,
                    in_f,
                    b,
                    options,
                    &mut report,
                )?;
                key += 1;
                Ok(LoraLinear::frozen(layer, key))
            };
        let bias = config.attention_bias;
        let self_attn = Attention {
            q_proj: linear("self_attn.q_proj", q_out, h, bias)?,
            k_proj: linear("self_attn.k_proj", kv_out, h, bias)?,
            v_proj: linear("self_attn.v_proj", kv_out, h, bias)?,
            o_proj: linear("self_attn.o_proj", h, q_out, false)?,
        };
        let mlp = Mlp {
            gate_proj: linear("mlp.gate_proj", config.intermediate_size, h, false)?,
            up_proj: linear("mlp.up_proj", config.intermediate_size, h, false)?,
            down_proj: linear("mlp.down_proj", h, config.intermediate_size, false)?,
        };
        layers.push(DecoderLayer {
            input_layernorm: dense(reader, &format!("{p}.input_layernorm.weight"), &[h], device)?,
            self_attn,
            post_attention_layernorm: dense(
                reader,
                &format!("{p}.post_attention_layernorm.weight"),
                &[h],
                device,
            )?,
            mlp,
        });
    }
    let norm = dense(reader, "model.norm.weight", &[h], device)?;
    let lm_head = match reader.get("lm_head.weight", device)? {
        _ if config.tie_word_embeddings => FrozenWeight::Dense(embed_tokens.clone()),
        Some(RawWeight::Dense(t)) => {
            check_shape(
                reader.path(),
                "lm_head.weight",
                t.dims(),
                &[config.vocab_size, h],
            )?;
            FrozenWeight::Dense(t)
        }
        Some(RawWeight::Quantized(q)) => FrozenWeight::Quantized(Arc::new(q)),
        None => {
            return Err(ModelError::Weights {
                path: reader.path().to_path_buf(),
                message: "no lm_head.weight and tie_word_embeddings is false".into(),
            })
        }
    };
    let model = LlamaModel::new(
        config,
        embed_tokens,
        layers,
        norm,
        lm_head,
        options.compute_dtype,
    );
    Ok(LoadedModel { model, report })
}

fn check_shape(path: &Path, name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(ModelError::Weights {
            path: path.to_path_buf(),
            message: format!("{name} has shape {got:?}, the config implies {want:?}"),
        });
    }
    Ok(())
}

/// A tensor that must be dense (embeddings, norms, biases); quantized ones are dequantized.
fn dense(
    reader: &mut dyn WeightReader,
    name: &str,
    shape: &[usize],
    device: &Device,
) -> Result<Tensor> {
    let t = match reader.get(name, device)? {
        Some(RawWeight::Dense(t)) => t,
        Some(RawWeight::Quantized(q)) => q.dequantize(device)?,
        None => {
            return Err(ModelError::Weights {
                path: reader.path().to_path_buf(),
                message: format!("missing tensor {name}"),
            })
        }
    };
    check_shape(reader.path(), name, t.dims(), shape)?;
    Ok(t)
}

fn frozen_linear(
    reader: &mut dyn WeightReader,
    name: &str,
    out_f: usize,
    in_f: usize,
    bias: Option<Tensor>,
    options: &LoadOptions,
    report: &mut QuantReport,
) -> Result<FrozenLinear> {
    let layer = match reader.get(name, &options.device)? {
        Some(RawWeight::Dense(t)) => {
            check_shape(reader.path(), name, t.dims(), &[out_f, in_f])?;
            let (layer, used) = FrozenLinear::from_dense(t, bias, options.quantization)?;
            if used != options.quantization {
                report
                    .fallbacks
                    .push((name.to_string(), options.quantization, used));
            }
            layer
        }
        Some(RawWeight::Quantized(q)) => {
            check_shape(reader.path(), name, q.shape().dims(), &[out_f, in_f])?;
            FrozenLinear::new(FrozenWeight::Quantized(Arc::new(q)), bias)
        }
        None => {
            return Err(ModelError::Weights {
                path: reader.path().to_path_buf(),
                message: format!("missing tensor {name}"),
            })
        }
    };
    match layer.weight() {
        FrozenWeight::Dense(_) => report.dense += 1,
        FrozenWeight::Quantized(_) => report.quantized += 1,
    }
    report.bytes += layer.weight().size_in_bytes();
    Ok(layer)
}
