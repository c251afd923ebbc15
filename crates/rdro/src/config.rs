//! The training configuration: a TOML file with the sections `[model]`, `[lora]`, `[objective]`,
//! `[data]`, `[train]` and `[output]` (plus the optional `[synthetic]` section of the offline
//! default task). Every key is documented in `configs/README.md` and in `configs/default.toml`.
//!
//! Unknown sections and keys are rejected with the key named; values out of range are rejected by
//! [`Config::validate`] with the key and what it accepts. Command-line overrides
//! `section.key=value` are applied to the parsed document before it is checked
//! ([`Config::from_toml_with_overrides`]).

use std::path::Path;
use std::str::FromStr;

use candle_core::DType;
use rdro_lora::{LoraConfig, QuantType, TargetModules};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::data::DataConfig;
use crate::objective::{Alpha, DdroConfig, DpoConfig, KtoConfig, Objective, RdroConfig, Reduction};
use crate::optim::{AdamWConfig, ScheduleKind};
use crate::synthetic::SyntheticConfig;

/// Errors of reading and checking a configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML text is malformed, or a section has an unknown key or a value of the wrong type.
    #[error("{0}")]
    Parse(String),
    /// A `--set` override is malformed.
    #[error("override `{0}`: expected section.key=value (e.g. train.lr=1e-4)")]
    Override(String),
    /// A value is out of range; `key` names it.
    #[error("invalid value for `{key}`: expected {expected}, got {got}")]
    Invalid {
        /// The key, e.g. `train.lr`.
        key: String,
        /// What it accepts.
        expected: String,
        /// The rejected value, as text.
        got: String,
    },
}

fn invalid(key: &str, expected: &str, got: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

/// The sections a config may hold.
pub const SECTIONS: [&str; 7] = [
    "model",
    "lora",
    "objective",
    "data",
    "train",
    "output",
    "synthetic",
];

/// A complete training configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// `[model]`: the base model.
    pub model: ModelSection,
    /// `[lora]`: the adapters.
    pub lora: LoraSection,
    /// `[objective]`: the loss.
    pub objective: ObjectiveSection,
    /// `[data]`: training and evaluation data.
    pub data: DataConfig,
    /// `[train]`: optimisation.
    pub train: TrainSection,
    /// `[output]`: where results go and how often.
    pub output: OutputSection,
    /// `[synthetic]`: generate the offline default task (base model and data) when missing.
    pub synthetic: Option<SyntheticConfig>,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face folder, a `.gguf` file, or a Hub id.
    pub base: String,
    /// Hub revision (branch, tag or commit) of a Hub id.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// How frozen linear weights are held: "none" or a GGML type (q8_0, q4_0, q4k, ...).
    #[serde(default = "default_quantization")]
    pub quantization: String,
    /// Activation dtype: "f32" (default), "bf16" or "f16".
    #[serde(default = "default_compute_dtype")]
    pub compute_dtype: String,
    /// "cpu" (default), "cuda" or "cuda:N".
    #[serde(default = "default_device")]
    pub device: String,
    /// Where the tokenizer is, when not next to the base (folder, tokenizer.json or Hub id).
    #[serde(default)]
    pub tokenizer: Option<String>,
}

fn default_revision() -> String {
    "main".into()
}
fn default_quantization() -> String {
    "none".into()
}
fn default_compute_dtype() -> String {
    "f32".into()
}
fn default_device() -> String {
    "cpu".into()
}

impl ModelSection {
    /// The parsed quantization (error names `model.quantization`).
    pub fn quant_type(&self) -> Result<QuantType, ConfigError> {
        QuantType::from_str(&self.quantization).map_err(|_| {
            invalid(
                "model.quantization",
                &format!("one of {}", QuantType::accepted_names()),
                format!("{:?}", self.quantization),
            )
        })
    }

    /// The parsed compute dtype (error names `model.compute_dtype`).
    pub fn dtype(&self) -> Result<DType, ConfigError> {
        match self.compute_dtype.as_str() {
            "f32" => Ok(DType::F32),
            "bf16" => Ok(DType::BF16),
            "f16" => Ok(DType::F16),
            other => Err(invalid(
                "model.compute_dtype",
                "\"f32\", \"bf16\" or \"f16\"",
                format!("{other:?}"),
            )),
        }
    }

    /// The device (error names `model.device`).
    pub fn candle_device(&self) -> Result<candle_core::Device, ConfigError> {
        let bad = |why: String| invalid("model.device", "\"cpu\", \"cuda\" or \"cuda:N\"", why);
        match self.device.as_str() {
            "cpu" => Ok(candle_core::Device::Cpu),
            d if d == "cuda" || d.starts_with("cuda:") => {
                let ordinal = match d.strip_prefix("cuda:") {
                    Some(n) => n.parse::<usize>().map_err(|_| bad(format!("{d:?}")))?,
                    None => 0,
                };
                candle_core::Device::new_cuda(ordinal).map_err(|e| bad(format!("{d:?} ({e})")))
            }
            other => Err(bad(format!("{other:?}"))),
        }
    }
}

/// `[lora]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Rank.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scale numerator (`scaling = alpha / r`, or `alpha / sqrt(r)` with rsLoRA).
    #[serde(default = "default_lora_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter input during training.
    #[serde(default)]
    pub dropout: f64,
    /// "all-linear" or a list of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    #[serde(default)]
    pub target_modules: TargetModules,
    /// rsLoRA scaling.
    #[serde(default)]
    pub use_rslora: bool,
    /// Start from this PEFT adapter folder instead of a fresh initialisation.
    #[serde(default)]
    pub init_adapter: Option<String>,
}

fn default_r() -> usize {
    16
}
fn default_lora_alpha() -> f64 {
    32.0
}

impl LoraSection {
    /// The adapter hyper-parameters.
    pub fn lora_config(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            target_modules: self.target_modules.clone(),
            use_rslora: self.use_rslora,
        }
    }
}

/// The objective's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectiveKind {
    /// Relative density ratio optimisation.
    #[default]
    Rdro,
    /// Density ratio optimisation (the alpha -> 0 limit).
    Ddro,
    /// KTO (TRL semantics).
    Kto,
    /// Sigmoid DPO (paired data).
    Dpo,
}

/// `[objective]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveSection {
    /// "rdro" (default), "ddro", "kto" or "dpo".
    #[serde(default)]
    pub kind: ObjectiveKind,
    /// RDRO: a number in (0, 1) or "auto" (the preferred fraction of the training set).
    #[serde(default)]
    pub alpha: Option<Alpha>,
    /// RDRO/DDRO: "class_balanced" (default) or "mean".
    #[serde(default)]
    pub reduction: Option<Reduction>,
    /// KTO/DPO: temperature of the implicit reward (default 0.1).
    #[serde(default)]
    pub beta: Option<f64>,
    /// DDRO: clamp T to at most this value (off by default).
    #[serde(default)]
    pub ddro_clip: Option<f64>,
    /// KTO: weight of desirable rows (default 1).
    #[serde(default)]
    pub desirable_weight: Option<f64>,
    /// KTO: weight of undesirable rows (default 1).
    #[serde(default)]
    pub undesirable_weight: Option<f64>,
}

impl Default for ObjectiveSection {
    fn default() -> Self {
        Self {
            kind: ObjectiveKind::Rdro,
            alpha: None,
            reduction: None,
            beta: None,
            ddro_clip: None,
            desirable_weight: None,
            undesirable_weight: None,
        }
    }
}

impl ObjectiveSection {
    /// Checks that only keys of the chosen kind are set.
    pub fn check_keys(&self) -> Result<(), ConfigError> {
        use ObjectiveKind::*;
        let k = self.kind;
        let checks: [(&str, bool, &[ObjectiveKind]); 6] = [
            ("objective.alpha", self.alpha.is_some(), &[Rdro]),
            (
                "objective.reduction",
                self.reduction.is_some(),
                &[Rdro, Ddro],
            ),
            ("objective.beta", self.beta.is_some(), &[Kto, Dpo]),
            ("objective.ddro_clip", self.ddro_clip.is_some(), &[Ddro]),
            (
                "objective.desirable_weight",
                self.desirable_weight.is_some(),
                &[Kto],
            ),
            (
                "objective.undesirable_weight",
                self.undesirable_weight.is_some(),
                &[Kto],
            ),
        ];
        for (key, set, kinds) in checks {
            if set && !kinds.contains(&k) {
                let names: Vec<String> = kinds
                    .iter()
                    .map(|k| format!("{k:?}").to_lowercase())
                    .collect();
                return Err(invalid(
                    key,
                    &format!("to be set only for kind {}", names.join(" or ")),
                    format!("a value with kind = {:?}", format!("{k:?}").to_lowercase()),
                ));
            }
        }
        Ok(())
    }

    /// The objective, given the preferred fraction of the training set.
    pub fn build(&self, preferred_fraction: f64) -> Result<Objective, ConfigError> {
        self.check_keys()?;
        let reduction = self.reduction.unwrap_or_default();
        let objective = match self.kind {
            ObjectiveKind::Rdro => {
                let alpha = self
                    .alpha
                    .unwrap_or_default()
                    .resolve(preferred_fraction)
                    .map_err(objective_error)?;
                Objective::Rdro(RdroConfig {
                    alpha,
                    reduction,
                    preferred_fraction,
                })
            }
            ObjectiveKind::Ddro => Objective::Ddro(DdroConfig {
                clip: self.ddro_clip,
                reduction,
                preferred_fraction,
            }),
            ObjectiveKind::Kto => {
                let d = KtoConfig::default();
                Objective::Kto(KtoConfig {
                    beta: self.beta.unwrap_or(d.beta),
                    desirable_weight: self.desirable_weight.unwrap_or(d.desirable_weight),
                    undesirable_weight: self.undesirable_weight.unwrap_or(d.undesirable_weight),
                })
            }
            ObjectiveKind::Dpo => Objective::Dpo(DpoConfig {
                beta: self.beta.unwrap_or(DpoConfig::default().beta),
            }),
        };
        objective.validate().map_err(objective_error)?;
        Ok(objective)
    }
}

fn objective_error(e: crate::objective::ObjectiveError) -> ConfigError {
    match e {
        crate::objective::ObjectiveError::InvalidConfig { key, expected, got } => {
            invalid(key, expected, got)
        }
        other => ConfigError::Parse(other.to_string()),
    }
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Passes over the training data (used when `max_steps` is 0).
    #[serde(default = "one")]
    pub epochs: usize,
    /// Optimizer steps to take; 0 = `epochs` full passes.
    #[serde(default)]
    pub max_steps: usize,
    /// Rows per micro-batch (pairs for paired data).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Rows per batch for reference and evaluation forwards (default: batch_size).
    #[serde(default)]
    pub eval_batch_size: Option<usize>,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// "constant", "linear" (default) or "cosine", after linear warmup.
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// Warmup as a fraction of the total steps.
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Warmup in steps (instead of `warmup_ratio`).
    #[serde(default)]
    pub warmup_steps: Option<usize>,
    /// Decoupled AdamW weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW beta1.
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    /// AdamW beta2.
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    /// AdamW epsilon.
    #[serde(default = "default_eps")]
    pub adam_epsilon: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// Seed of adapter initialisation, shuffling, dropout and the eval split.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Shuffle the training data each epoch (off = data order).
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Recompute each layer in the backward instead of keeping its activations.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Compute reference log-probs once before training (cached on disk); off = every step.
    #[serde(default = "yes")]
    pub precompute_reference: bool,
    /// Folder of the reference log-prob cache; "" disables the disk cache.
    #[serde(default = "default_reference_cache")]
    pub reference_cache: String,
    /// Steps in a row with a NaN/inf loss or gradient after which training stops.
    #[serde(default = "default_max_bad_steps")]
    pub max_bad_steps: usize,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_batch_size() -> usize {
    8
}
fn default_lr() -> f64 {
    5e-5
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    42
}
fn default_reference_cache() -> String {
    ".cache/rdro/reference".into()
}
fn default_max_bad_steps() -> usize {
    10
}

impl TrainSection {
    /// The optimizer's hyper-parameters.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_epsilon,
            weight_decay: self.weight_decay,
        }
    }

    /// Rows per reference/eval batch.
    pub fn eval_batch(&self) -> usize {
        self.eval_batch_size.unwrap_or(self.batch_size).max(1)
    }
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// The adapter folder written at the end (PEFT layout); the run works in `<dir>.partial`.
    #[serde(default = "default_dir")]
    pub dir: String,
    /// Log metrics every N steps (metrics.jsonl and the progress bar).
    #[serde(default = "default_logging_steps")]
    pub logging_steps: usize,
    /// Evaluate every N steps; 0 = only before and after training.
    #[serde(default)]
    pub eval_steps: usize,
    /// Write a checkpoint every N steps; 0 = none (Ctrl-C still writes one).
    #[serde(default)]
    pub save_steps: usize,
    /// Replace an existing non-empty `dir`.
    #[serde(default)]
    pub overwrite: bool,
    /// Precision of the saved adapter: "f32" (default) or "bf16".
    #[serde(default = "default_save_dtype")]
    pub save_dtype: String,
    /// Keep the checkpoints in the final folder (under checkpoints/).
    #[serde(default)]
    pub keep_checkpoints: bool,
}

fn default_dir() -> String {
    "adapters/rdro".into()
}
fn default_logging_steps() -> usize {
    10
}
fn default_save_dtype() -> String {
    "f32".into()
}

impl OutputSection {
    /// The parsed save dtype (error names `output.save_dtype`).
    pub fn save_dtype(&self) -> Result<rdro_lora::peft::SaveDType, ConfigError> {
        match self.save_dtype.as_str() {
            "f32" => Ok(rdro_lora::peft::SaveDType::F32),
            "bf16" => Ok(rdro_lora::peft::SaveDType::Bf16),
            other => Err(invalid(
                "output.save_dtype",
                "\"f32\" or \"bf16\"",
                format!("{other:?}"),
            )),
        }
    }
}

fn section<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    name: &str,
) -> Result<Option<T>, ConfigError> {
    let Some(value) = table.get(name) else {
        return Ok(None);
    };
    if !value.is_table() {
        return Err(ConfigError::Parse(format!(
            "`{name}` must be a section ([{name}]), found a {}",
            value.type_str()
        )));
    }
    deserialize_section(value.clone(), name).map(Some)
}

/// Deserializes one section, naming the offending key (`train.lr`, not only "expected f64").
fn deserialize_section<T: serde::de::DeserializeOwned>(
    value: toml::Value,
    name: &str,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().message().trim().to_string();
        if path.is_empty() || path == "." {
            ConfigError::Parse(format!("in section [{name}]: {message}"))
        } else {
            ConfigError::Parse(format!("key `{name}.{path}`: {message}"))
        }
    })
}

fn required<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    name: &str,
) -> Result<T, ConfigError> {
    section(table, name)?.ok_or_else(|| {
        ConfigError::Parse(format!("the section [{name}] is missing (it is required)"))
    })
}

fn with_defaults<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    name: &str,
) -> Result<T, ConfigError> {
    match section(table, name)? {
        Some(v) => Ok(v),
        None => deserialize_section(toml::Value::Table(toml::Table::new()), name),
    }
}

/// Parses the right-hand side of an override as a TOML value, falling back to a plain string.
fn parse_override_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Applies `section.key=value` overrides to a parsed document.
pub fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Result<(), ConfigError> {
    for o in overrides {
        let (path, raw) = o
            .split_once('=')
            .ok_or_else(|| ConfigError::Override(o.clone()))?;
        let (sec, key) = path
            .trim()
            .split_once('.')
            .ok_or_else(|| ConfigError::Override(o.clone()))?;
        if sec.is_empty() || key.is_empty() || key.contains('.') {
            return Err(ConfigError::Override(o.clone()));
        }
        if !SECTIONS.contains(&sec) {
            return Err(ConfigError::Parse(format!(
                "override `{o}`: unknown section `{sec}`; expected one of {}",
                SECTIONS.join(", ")
            )));
        }
        let entry = table
            .entry(sec.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(t) = entry.as_table_mut() else {
            return Err(ConfigError::Parse(format!("`{sec}` is not a section")));
        };
        t.insert(key.to_string(), parse_override_value(raw.trim()));
    }
    Ok(())
}

impl Config {
    /// Parses TOML text (see [`Config::from_toml_with_overrides`]).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_with_overrides(text, &[])
    }

    /// Parses TOML text, applies `section.key=value` overrides, and validates.
    pub fn from_toml_with_overrides(text: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        apply_overrides(&mut table, overrides)?;
        Self::from_table(&table)
    }

    /// Reads a file, applies overrides, and validates.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_with_overrides(&text, overrides).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Builds from a parsed document and validates.
    pub fn from_table(table: &toml::Table) -> Result<Self, ConfigError> {
        if let Some(bad) = table.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
            return Err(ConfigError::Parse(format!(
                "unknown section or key `{bad}`; expected the sections {}",
                SECTIONS.join(", ")
            )));
        }
        let config = Config {
            model: required(table, "model")?,
            lora: with_defaults(table, "lora")?,
            objective: with_defaults(table, "objective")?,
            data: required(table, "data")?,
            train: with_defaults(table, "train")?,
            output: with_defaults(table, "output")?,
            synthetic: section(table, "synthetic")?,
        };
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML text (saved next to the adapter).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks every value that can be checked without the data; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.model.base.trim().is_empty() {
            return Err(invalid(
                "model.base",
                "a folder, a .gguf file or a Hub id",
                "\"\"",
            ));
        }
        self.model.quant_type()?;
        self.model.dtype()?;
        if !matches!(self.model.device.as_str(), "cpu" | "cuda")
            && !self.model.device.starts_with("cuda:")
        {
            return Err(invalid(
                "model.device",
                "\"cpu\", \"cuda\" or \"cuda:N\"",
                format!("{:?}", self.model.device),
            ));
        }
        self.lora
            .lora_config()
            .validate()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        self.objective.check_keys()?;
        if let Some(Alpha::Value(a)) = self.objective.alpha {
            if !(a > 0.0 && a < 1.0) {
                return Err(invalid(
                    "objective.alpha",
                    "a number in (0, 1) (0 is DDRO) or \"auto\"",
                    a,
                ));
            }
        }
        if let Some(b) = self.objective.beta {
            if !(b > 0.0 && b.is_finite()) {
                return Err(invalid("objective.beta", "a finite number > 0", b));
            }
        }
        self.data.validate().map_err(|e| match e {
            crate::data::DataError::Config(m) => ConfigError::Parse(format!("[data]: {m}")),
            other => ConfigError::Parse(format!("[data]: {other}")),
        })?;
        let t = &self.train;
        if t.epochs == 0 && t.max_steps == 0 {
            return Err(invalid(
                "train.epochs",
                "at least 1 (or set train.max_steps)",
                t.epochs,
            ));
        }
        if t.batch_size == 0 {
            return Err(invalid("train.batch_size", "at least 1", 0));
        }
        if t.grad_accum == 0 {
            return Err(invalid("train.grad_accum", "at least 1", 0));
        }
        if t.eval_batch_size == Some(0) {
            return Err(invalid("train.eval_batch_size", "at least 1", 0));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(invalid("train.lr", "a finite number > 0", t.lr));
        }
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            return Err(invalid(
                "train.warmup_ratio",
                "a number in [0, 1)",
                t.warmup_ratio,
            ));
        }
        if t.warmup_steps.is_some() && t.warmup_ratio > 0.0 {
            return Err(invalid(
                "train.warmup_steps",
                "to be unset when train.warmup_ratio is set (use one of them)",
                t.warmup_steps.unwrap_or_default(),
            ));
        }
        if !(t.max_grad_norm >= 0.0 && t.max_grad_norm.is_finite()) {
            return Err(invalid(
                "train.max_grad_norm",
                "a finite number >= 0 (0 disables clipping)",
                t.max_grad_norm,
            ));
        }
        let adam = t.adamw();
        for (key, v, ok) in [
            (
                "train.adam_beta1",
                adam.beta1,
                (0.0..1.0).contains(&adam.beta1),
            ),
            (
                "train.adam_beta2",
                adam.beta2,
                (0.0..1.0).contains(&adam.beta2),
            ),
            (
                "train.adam_epsilon",
                adam.eps,
                adam.eps >= 0.0 && adam.eps.is_finite(),
            ),
            (
                "train.weight_decay",
                adam.weight_decay,
                adam.weight_decay >= 0.0 && adam.weight_decay.is_finite(),
            ),
        ] {
            if !ok {
                return Err(invalid(
                    key,
                    "a number in [0, 1) (betas) or a finite number >= 0",
                    v,
                ));
            }
        }
        if t.max_bad_steps == 0 {
            return Err(invalid("train.max_bad_steps", "at least 1", 0));
        }
        if self.output.dir.trim().is_empty() {
            return Err(invalid("output.dir", "a folder path", "\"\""));
        }
        if self.output.logging_steps == 0 {
            return Err(invalid("output.logging_steps", "at least 1", 0));
        }
        self.output.save_dtype()?;
        if let Some(s) = &self.synthetic {
            s.validate()?;
        }
        Ok(())
    }
}
