//! The offline default task: a small random Qwen2-shaped base model and a pre-tokenized preference
//! data set, both generated deterministically from a seed, so that training runs anywhere without
//! a download.
//!
//! The task: prompts are random token sequences; a preferred completion uses only tokens of the
//! "preferred" half of the vocabulary (even ids), a non-preferred one only tokens of the other half
//! (odd ids). The random base has no preference between them (held-out preference accuracy of the
//! implicit reward starts at chance); an aligned adapter raises the log-ratio of preferred
//! completions above that of non-preferred ones. Preferred and non-preferred completions never
//! share support, the setting in which DDRO's log-ratio diverges while RDRO's stays bounded by
//! `log(1/alpha)`.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// `[synthetic]`: where and how the default task is generated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Folder receiving `base/` (the model), `train.jsonl` and `eval.jsonl`.
    pub dir: String,
    /// Seed of weights and data.
    #[serde(default)]
    pub seed: u64,
    /// Vocabulary size (even; the first 4 ids are never used).
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Hidden size (a multiple of 16).
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    /// Decoder layers.
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// Prompts in the training set.
    #[serde(default = "default_train_prompts")]
    pub train_prompts: usize,
    /// Prompts in the evaluation set.
    #[serde(default = "default_eval_prompts")]
    pub eval_prompts: usize,
    /// Tokens per prompt.
    #[serde(default = "default_prompt_len")]
    pub prompt_len: usize,
    /// Tokens per completion.
    #[serde(default = "default_completion_len")]
    pub completion_len: usize,
    /// Preferred completions per prompt.
    #[serde(default = "default_preferred")]
    pub preferred_per_prompt: usize,
    /// Non-preferred completions per prompt.
    #[serde(default = "default_non_preferred")]
    pub non_preferred_per_prompt: usize,
}

fn default_vocab() -> usize {
    128
}
fn default_hidden() -> usize {
    64
}
fn default_layers() -> usize {
    2
}
fn default_train_prompts() -> usize {
    200
}
fn default_eval_prompts() -> usize {
    40
}
fn default_prompt_len() -> usize {
    8
}
fn default_completion_len() -> usize {
    6
}
fn default_preferred() -> usize {
    2
}
fn default_non_preferred() -> usize {
    3
}

impl SyntheticConfig {
    /// A config with every default, writing into `dir`.
    pub fn new(dir: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            seed: 0,
            vocab_size: default_vocab(),
            hidden_size: default_hidden(),
            layers: default_layers(),
            train_prompts: default_train_prompts(),
            eval_prompts: default_eval_prompts(),
            prompt_len: default_prompt_len(),
            completion_len: default_completion_len(),
            preferred_per_prompt: default_preferred(),
            non_preferred_per_prompt: default_non_preferred(),
        }
    }

    /// Checks the ranges (errors name `synthetic.<key>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, expected: &str, got: usize| ConfigError::Invalid {
            key: format!("synthetic.{key}"),
            expected: expected.into(),
            got: got.to_string(),
        };
        if self.vocab_size < 8 || !self.vocab_size.is_multiple_of(2) {
            return Err(bad("vocab_size", "an even number >= 8", self.vocab_size));
        }
        if self.hidden_size == 0 || !self.hidden_size.is_multiple_of(16) {
            return Err(bad(
                "hidden_size",
                "a positive multiple of 16",
                self.hidden_size,
            ));
        }
        for (k, v) in [
            ("layers", self.layers),
            ("train_prompts", self.train_prompts),
            ("eval_prompts", self.eval_prompts),
            ("prompt_len", self.prompt_len),
            ("completion_len", self.completion_len),
            ("preferred_per_prompt", self.preferred_per_prompt),
            ("non_preferred_per_prompt", self.non_preferred_per_prompt),
        ] {
            if v == 0 {
                return Err(bad(k, "at least 1", v));
            }
        }
        Ok(())
    }

    /// The folder of the generated base model.
    pub fn base_dir(&self) -> PathBuf {
        Path::new(&self.dir).join("base")
    }

    /// The generated training data.
    pub fn train_file(&self) -> PathBuf {
        Path::new(&self.dir).join("train.jsonl")
    }

    /// The generated evaluation data.
    pub fn eval_file(&self) -> PathBuf {
        Path::new(&self.dir).join("eval.jsonl")
    }
}

/// Errors of generating the task.
#[derive(Debug, thiserror::Error)]
pub enum SyntheticError {
    /// Writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Building or saving tensors failed.
    #[error("generating the default task: {0}")]
    Other(String),
}

impl From<rdro_lora::LoraError> for SyntheticError {
    fn from(e: rdro_lora::LoraError) -> Self {
        SyntheticError::Other(e.to_string())
    }
}

impl From<candle_core::Error> for SyntheticError {
    fn from(e: candle_core::Error) -> Self {
        SyntheticError::Other(e.to_string())
    }
}

/// A fingerprint of the settings, stored next to the files so a changed `[synthetic]` section
/// regenerates them.
fn stamp(config: &SyntheticConfig) -> String {
    format!(
        "rdro-synthetic-v1 {}",
        serde_json::to_string(config).unwrap_or_default()
    )
}

const STAMP_FILE: &str = "task.txt";

/// Generates the task into `config.dir` unless it is already there with the same settings.
/// Returns true when files were written. The folder is written atomically.
pub fn ensure(config: &SyntheticConfig) -> Result<bool, SyntheticError> {
    let dir = Path::new(&config.dir);
    let want = stamp(config);
    if std::fs::read_to_string(dir.join(STAMP_FILE)).is_ok_and(|s| s == want) {
        return Ok(false);
    }
    rdro_lora::peft::write_dir_atomically(dir, true, |tmp| -> Result<(), SyntheticError> {
        write_model(config, &tmp.join("base"))?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ 0x5eed_da7a);
        write_rows(
            config,
            config.train_prompts,
            &tmp.join("train.jsonl"),
            &mut rng,
        )?;
        write_rows(
            config,
            config.eval_prompts,
            &tmp.join("eval.jsonl"),
            &mut rng,
        )?;
        let path = tmp.join(STAMP_FILE);
        std::fs::write(&path, &want).map_err(|source| SyntheticError::Io {
            path: path.display().to_string(),
            source,
        })
    })?;
    Ok(true)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SyntheticError + '_ {
    move |source| SyntheticError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write_rows(
    config: &SyntheticConfig,
    prompts: usize,
    path: &Path,
    rng: &mut rand::rngs::StdRng,
) -> Result<(), SyntheticError> {
    let v = config.vocab_size as u32;
    let mut out = Vec::new();
    for _ in 0..prompts {
        let prompt: Vec<u32> = (0..config.prompt_len)
            .map(|_| rng.random_range(4..v))
            .collect();
        let mut rows = Vec::new();
        for k in 0..config.preferred_per_prompt + config.non_preferred_per_prompt {
            let preferred = k < config.preferred_per_prompt;
            let parity = if preferred { 0 } else { 1 };
            let completion: Vec<u32> = (0..config.completion_len)
                .map(|_| rng.random_range(2..v / 2) * 2 + parity)
                .collect();
            rows.push(serde_json::json!({
                "prompt_ids": prompt,
                "completion_ids": completion,
                "label": preferred,
            }));
        }
        for r in rows {
            out.push(r.to_string());
        }
    }
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    for line in out {
        writeln!(f, "{line}").map_err(io(path))?;
    }
    Ok(())
}

fn write_model(config: &SyntheticConfig, dir: &Path) -> Result<(), SyntheticError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let h = config.hidden_size;
    let heads = h / 16;
    let kv = heads.div_ceil(2).max(1);
    let kv = if heads.is_multiple_of(kv) { kv } else { heads };
    let inter = 2 * h;
    let json = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": h,
        "intermediate_size": inter,
        "num_hidden_layers": config.layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "vocab_size": config.vocab_size,
        "torch_dtype": "float32",
    });
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )
    .map_err(io(&path))?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let dev = Device::Cpu;
    let mut normal = |shape: &[usize], std: f32| -> Result<Tensor, SyntheticError> {
        let n: usize = shape.iter().product();
        // Box-Muller from the seeded generator (no extra distribution crate).
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let u1: f32 = rng.random_range(f32::EPSILON..1.0);
                let u2: f32 = rng.random();
                std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect();
        Ok(Tensor::from_vec(data, shape, &dev)?)
    };
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &dev);
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    tensors.push((
        "model.embed_tokens.weight".into(),
        normal(&[config.vocab_size, h], 0.5)?,
    ));
    let (q, k) = (heads * 16, kv * 16);
    let std = 0.5 / (h as f32).sqrt();
    for i in 0..config.layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![k, h]),
            ("self_attn.v_proj.weight", vec![k, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![inter, h]),
            ("mlp.up_proj.weight", vec![inter, h]),
            ("mlp.down_proj.weight", vec![h, inter]),
        ] {
            tensors.push((format!("{p}.{name}"), normal(&shape, std)?));
        }
        for (name, n) in [
            ("self_attn.q_proj.bias", q),
            ("self_attn.k_proj.bias", k),
            ("self_attn.v_proj.bias", k),
        ] {
            tensors.push((format!("{p}.{name}"), normal(&[n], 0.02)?));
        }
        tensors.push((format!("{p}.input_layernorm.weight"), ones(h)?));
        tensors.push((format!("{p}.post_attention_layernorm.weight"), ones(h)?));
    }
    tensors.push(("model.norm.weight".into(), ones(h)?));
    let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&map, &path)?;
    Ok(())
}
