//! PEFT's on-disk adapter format: `adapter_config.json` and `adapter_model.safetensors`.
//!
//! Keys follow PEFT: `base_model.model.<module path>.lora_A.weight` `[r, in]` and
//! `...lora_B.weight` `[out, r]`, where the module path is the Hugging Face one, e.g.
//! `model.layers.3.self_attn.q_proj`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{LoraConfig, LoraError, Result, TargetModules};

/// File name of the adapter configuration.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// File name of the adapter weights.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix PEFT puts before every module path.
pub const KEY_PREFIX: &str = "base_model.model.";

/// The core keys of PEFT's `LoraConfig`, as written to `adapter_config.json`. Only these are
/// written so that older PEFT versions load the file; extra keys PEFT writes are read and checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Always `"LORA"`.
    pub peft_type: String,
    /// Always `"CAUSAL_LM"`.
    #[serde(default = "causal_lm")]
    pub task_type: String,
    /// The base the adapter was trained on (Hub id or path).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Rank.
    pub r: usize,
    /// Scale numerator.
    pub lora_alpha: f64,
    /// Dropout probability.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Adapted module names, or `"all-linear"`.
    pub target_modules: TargetModules,
    /// Must be `"none"`: trained biases are not supported.
    #[serde(default = "bias_none")]
    pub bias: String,
    /// rsLoRA scaling.
    #[serde(default)]
    pub use_rslora: bool,
    /// Must be false.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// PEFT's flag for a frozen (inference) adapter.
    #[serde(default = "yes")]
    pub inference_mode: bool,
    /// PEFT's initialisation flag.
    #[serde(default = "init_true")]
    pub init_lora_weights: Value,
    /// Everything else PEFT wrote (checked for unsupported features, not written back).
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, Value>,
}

fn causal_lm() -> String {
    "CAUSAL_LM".into()
}
fn bias_none() -> String {
    "none".into()
}
fn yes() -> bool {
    true
}
fn init_true() -> Value {
    Value::Bool(true)
}

impl AdapterConfig {
    /// The configuration of an adapter trained with `lora` on `base`.
    pub fn from_lora(lora: &LoraConfig, base: Option<String>) -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: causal_lm(),
            base_model_name_or_path: base,
            r: lora.r,
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            target_modules: TargetModules::List(lora.target_modules.resolved()),
            bias: bias_none(),
            use_rslora: lora.use_rslora,
            fan_in_fan_out: false,
            inference_mode: true,
            init_lora_weights: init_true(),
            other: BTreeMap::new(),
        }
    }

    /// The LoRA hyper-parameters this adapter uses.
    pub fn lora_config(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: self.target_modules.clone(),
            use_rslora: self.use_rslora,
        }
    }

    /// Reads and checks `dir/adapter_config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| LoraError::Io {
            path: path.clone(),
            source,
        })?;
        let config: AdapterConfig = serde_json::from_str(&text)
            .map_err(|e| LoraError::adapter(&path, format!("not a PEFT LoRA config: {e}")))?;
        config.check(&path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let unsupported = |what: &str| {
            Err(LoraError::adapter(
                path,
                format!("{what} is not supported (only plain LoRA adapters are)"),
            ))
        };
        if self.peft_type != "LORA" {
            return unsupported(&format!("peft_type {:?}", self.peft_type));
        }
        if self.bias != "none" {
            return unsupported(&format!("bias {:?} (trained biases)", self.bias));
        }
        if self.fan_in_fan_out {
            return unsupported("fan_in_fan_out = true");
        }
        let set = |key: &str| match self.other.get(key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        };
        for key in [
            "use_dora",
            "modules_to_save",
            "rank_pattern",
            "alpha_pattern",
            "layers_to_transform",
            "trainable_token_indices",
        ] {
            if set(key) {
                return unsupported(&format!("`{key}`"));
            }
        }
        self.lora_config()
            .validate()
            .map_err(|e| LoraError::adapter(path, e.to_string()))
    }
}

/// Adapter tensors by module path (`model.layers.0.self_attn.q_proj`): `(A [r, in], B [out, r])`.
pub type AdapterTensors = BTreeMap<String, (Tensor, Tensor)>;

/// Reads `dir/adapter_model.safetensors` into f32 tensors on `device`.
pub fn read_weights(dir: &Path, device: &Device) -> Result<AdapterTensors> {
    let path = dir.join(WEIGHTS_FILE);
    if !path.exists() {
        return Err(LoraError::adapter(
            dir,
            format!("no {WEIGHTS_FILE} (adapter_model.bin pickles are not read; re-save with safetensors)"),
        ));
    }
    let tensors = candle_core::safetensors::load(&path, device)
        .map_err(|e| LoraError::adapter(&path, e.to_string()))?;
    let mut a: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut b: BTreeMap<String, Tensor> = BTreeMap::new();
    for (key, t) in tensors {
        let module_key = key.strip_prefix(KEY_PREFIX).unwrap_or(&key);
        let (module, which) = if let Some(m) =
            strip_any(module_key, &[".lora_A.weight", ".lora_A.default.weight"])
        {
            (m, &mut a)
        } else if let Some(m) = strip_any(module_key, &[".lora_B.weight", ".lora_B.default.weight"])
        {
            (m, &mut b)
        } else {
            return Err(LoraError::adapter(
                &path,
                format!("unsupported tensor {key:?} (only lora_A / lora_B weights are; DoRA magnitudes, embeddings and biases are not)"),
            ));
        };
        which.insert(module.to_string(), t.to_dtype(DType::F32)?);
    }
    let mut out = AdapterTensors::new();
    for (module, ta) in a {
        let tb = b
            .remove(&module)
            .ok_or_else(|| LoraError::adapter(&path, format!("{module}: lora_A without lora_B")))?;
        let (r, _) = ta.dims2()?;
        let (_, rb) = tb.dims2()?;
        if r != rb {
            return Err(LoraError::adapter(
                &path,
                format!("{module}: lora_A has rank {r} but lora_B has rank {rb}"),
            ));
        }
        out.insert(module, (ta, tb));
    }
    if let Some(module) = b.keys().next() {
        return Err(LoraError::adapter(
            &path,
            format!("{module}: lora_B without lora_A"),
        ));
    }
    Ok(out)
}

/// Precision of saved adapter weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDType {
    /// 32-bit floats (default, lossless).
    F32,
    /// bfloat16 (half the size).
    Bf16,
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` (with `{"format": "pt"}` metadata)
/// into `dir`, which must exist.
pub fn write_adapter(
    dir: &Path,
    config: &AdapterConfig,
    tensors: &AdapterTensors,
    dtype: SaveDType,
) -> Result<()> {
    let io = |path: PathBuf| move |source| LoraError::Io { path, source };
    let config_path = dir.join(CONFIG_FILE);
    let json = serde_json::to_string_pretty(config)
        .map_err(|e| LoraError::adapter(&config_path, e.to_string()))?;
    std::fs::write(&config_path, json + "\n").map_err(io(config_path.clone()))?;

    let dt = match dtype {
        SaveDType::F32 => DType::F32,
        SaveDType::Bf16 => DType::BF16,
    };
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (module, (a, b)) in tensors {
        named.push((
            format!("{KEY_PREFIX}{module}.lora_A.weight"),
            a.to_dtype(dt)?.to_device(&Device::Cpu)?,
        ));
        named.push((
            format!("{KEY_PREFIX}{module}.lora_B.weight"),
            b.to_dtype(dt)?.to_device(&Device::Cpu)?,
        ));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let views: Vec<(String, TensorBytes)> = named
        .iter()
        .map(|(k, t)| Ok((k.clone(), TensorBytes::new(t)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| LoraError::adapter(&weights_path, e.to_string()))?;
    std::fs::write(&weights_path, bytes).map_err(io(weights_path.clone()))?;
    Ok(())
}

/// A tensor's raw little-endian bytes, as the `safetensors` crate wants them.
struct TensorBytes {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl TensorBytes {
    fn new(t: &Tensor) -> Result<Self> {
        let (dtype, data) = match t.dtype() {
            DType::F32 => (
                safetensors::Dtype::F32,
                t.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::BF16 => (
                safetensors::Dtype::BF16,
                t.flatten_all()?
                    .to_vec1::<half::bf16>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            other => {
                return Err(LoraError::config(
                    "dtype",
                    format!("cannot save {other:?} adapters"),
                ));
            }
        };
        Ok(Self {
            dtype,
            shape: t.dims().to_vec(),
            data,
        })
    }
}

impl safetensors::View for TensorBytes {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// File name of the model card.
pub const CARD_FILE: &str = "README.md";

/// How an adapter was trained, as its model card records it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recipe {
    /// The objective (`rdro`, `ddro`, `kto`, `dpo`).
    pub objective: String,
    /// The objective's alpha as used (a number, or e.g. `auto (0.37)`).
    pub alpha: String,
    /// The training data (file, Hub data set and split, ...).
    pub data: String,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Further settings worth recording (`("batch size", "8")`, ...), in display order.
    pub extra: Vec<(String, String)>,
}

/// Everything a model card says beyond what `adapter_config.json` holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelCard {
    /// The base model as the user named it. A Hub id (`owner/name`) goes into the front matter's
    /// `base_model`; a local path is only mentioned in the body (the Hub accepts Hub ids only).
    pub base_model: Option<String>,
    /// The training recipe.
    pub recipe: Recipe,
    /// Final metrics `(name, value)`, in display order.
    pub metrics: Vec<(String, f64)>,
    /// Tags added to the fixed ones (`rdro`, `lora`, `peft`, `transformers`).
    pub tags: Vec<String>,
}

/// True when `s` has the shape of a Hugging Face Hub id: `owner/name` made of ASCII letters,
/// digits, `-`, `_` and `.`, neither part starting with `.`.
pub fn is_hub_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let valid = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    valid(owner) && valid(name)
}

/// A YAML scalar: plain when unambiguous, else a double-quoted (JSON) string.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "null" | "on" | "off"
        )
        && s.parse::<f64>().is_err();
    if plain {
        s.to_string()
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}

/// Text for one Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn number(v: f64) -> String {
    if v == 0.0 || (1e-4..1e6).contains(&v.abs()) {
        let s = format!("{v:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{v:e}")
    }
}

/// The model card (`README.md`) of an adapter: Hub front matter (`library_name: peft`,
/// `base_model`, tags including `rdro` and `lora`, `pipeline_tag: text-generation`) and a body
/// with the LoRA settings, the training recipe and the final metrics.
pub fn render_model_card(config: &AdapterConfig, card: &ModelCard) -> String {
    let base = card
        .base_model
        .clone()
        .or_else(|| config.base_model_name_or_path.clone())
        .filter(|b| !b.is_empty());
    let hub_base = base.as_deref().filter(|b| is_hub_id(b));
    let mut tags: Vec<String> = Vec::new();
    if let Some(b) = hub_base {
        tags.push(format!("base_model:adapter:{b}"));
    }
    for t in ["lora", "peft", "rdro", "transformers"] {
        tags.push(t.to_string());
    }
    if !card.recipe.objective.is_empty() && card.recipe.objective != "rdro" {
        tags.push(card.recipe.objective.clone());
    }
    for t in &card.tags {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }

    let mut out = String::from("---\n");
    if let Some(b) = hub_base {
        out += &format!("base_model: {}\n", yaml_scalar(b));
    }
    out += "library_name: peft\npipeline_tag: text-generation\ntags:\n";
    for t in &tags {
        out += &format!("- {}\n", yaml_scalar(t));
    }
    out += "---\n\n";

    let title_base = base.as_deref().unwrap_or("a Llama-family base model");
    out += &format!("# LoRA adapter for {title_base}\n\n");
    out += "A LoRA adapter in PEFT format, trained with rdro (preference alignment by Relative \
            Density Ratio Optimization and related objectives).\n\n";

    let r = &card.recipe;
    out += "## Training recipe\n\n| setting | value |\n|---|---|\n";
    let mut rows: Vec<(String, String)> = vec![
        ("objective".into(), r.objective.clone()),
        ("alpha".into(), r.alpha.clone()),
        ("data".into(), r.data.clone()),
        ("steps".into(), r.steps.to_string()),
        ("learning rate".into(), number(r.learning_rate)),
    ];
    if let Some(b) = &base {
        rows.push(("base model".into(), b.clone()));
    }
    let targets = match &config.target_modules {
        TargetModules::AllLinear(s) => s.clone(),
        TargetModules::List(l) => l.join(", "),
    };
    rows.push((
        "LoRA".into(),
        format!(
            "r {}, alpha {}, dropout {}, rsLoRA {}",
            config.r,
            number(config.lora_alpha),
            number(config.lora_dropout),
            if config.use_rslora { "yes" } else { "no" }
        ),
    ));
    rows.push(("target modules".into(), targets));
    rows.extend(r.extra.iter().cloned());
    for (k, v) in rows {
        out += &format!("| {} | {} |\n", cell(&k), cell(&v));
    }

    out += "\n## Final metrics\n\n";
    if card.metrics.is_empty() {
        out += "No metrics were recorded.\n";
    } else {
        out += "| metric | value |\n|---|---|\n";
        for (k, v) in &card.metrics {
            out += &format!("| {} | {} |\n", cell(k), number(*v));
        }
    }

    let load_base = hub_base.unwrap_or("BASE_MODEL");
    out += &format!(
        "\n## Usage\n\n```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n\
         base = AutoModelForCausalLM.from_pretrained(\"{load_base}\")\n\
         model = PeftModel.from_pretrained(base, \"path/or/hub-id/of/this/adapter\")\n```\n\n\
         The adapter also loads in vLLM and mistral.rs (PEFT LoRA format), and `rdro merge` folds it into \
         the base weights.\n"
    );
    out
}

/// Writes `dir/README.md` (see [`render_model_card`]).
pub fn write_model_card(dir: &Path, config: &AdapterConfig, card: &ModelCard) -> Result<()> {
    let path = dir.join(CARD_FILE);
    std::fs::write(&path, render_model_card(config, card))
        .map_err(|source| LoraError::Io { path, source })
}

/// Writes a complete adapter folder (config, weights and, when given, the model card) so that
/// `dir` either appears complete or not at all: everything goes into a fresh sibling folder
/// `<dir>.tmp-XXXXXXXX` first, which is then renamed (see [`write_dir_atomically`]).
pub fn save_adapter(
    dir: &Path,
    config: &AdapterConfig,
    tensors: &AdapterTensors,
    dtype: SaveDType,
    card: Option<&ModelCard>,
    replace: bool,
) -> Result<()> {
    write_dir_atomically(dir, replace, |tmp| {
        write_adapter(tmp, config, tensors, dtype)?;
        if let Some(card) = card {
            write_model_card(tmp, config, card)?;
        }
        Ok::<(), LoraError>(())
    })
}

/// Removes a temporary folder when dropped, unless disarmed.
struct TempDirGuard(Option<PathBuf>);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Fills a folder atomically: `build` writes into a new sibling folder `<dir>.tmp-XXXXXXXX`, which
/// is renamed to `dir` only when `build` succeeds. On error (or panic) the temporary folder is
/// removed, so a failure leaves nothing half-written.
///
/// An existing empty `dir` is replaced. An existing non-empty `dir` is an error unless `replace`
/// is true; then the old folder is moved aside, the new one renamed in, and the old one removed.
pub fn write_dir_atomically<E: From<LoraError>>(
    dir: &Path,
    replace: bool,
    build: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoraError::Io { path, source }
    };
    let name = dir
        .file_name()
        .ok_or_else(|| {
            LoraError::adapter(
                dir,
                "not a folder name (expected a path ending in a folder name)",
            )
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    if dir.exists() && !dir.is_dir() {
        return Err(LoraError::adapter(dir, "exists and is not a folder").into());
    }
    let existing_non_empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(LoraError::Io {
                path: dir.to_path_buf(),
                source: e,
            }
            .into())
        }
    };
    if existing_non_empty && !replace {
        return Err(LoraError::adapter(
            dir,
            "already exists and is not empty; choose a new folder or remove this one first",
        )
        .into());
    }

    let make_sibling = |tag: &str| -> std::result::Result<PathBuf, LoraError> {
        loop {
            let candidate = parent.join(format!("{name}.{tag}-{:08x}", rand::random::<u32>()));
            match std::fs::create_dir(&candidate) {
                Ok(()) => return Ok(candidate),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(LoraError::Io {
                        path: candidate,
                        source: e,
                    })
                }
            }
        }
    };
    let tmp = make_sibling("tmp")?;
    let mut guard = TempDirGuard(Some(tmp.clone()));
    build(&tmp)?;

    if dir.exists() {
        if existing_non_empty {
            let old = make_sibling("old")?;
            std::fs::remove_dir(&old).map_err(io(&old))?;
            std::fs::rename(dir, &old).map_err(io(dir))?;
            if let Err(e) = std::fs::rename(&tmp, dir) {
                let _ = std::fs::rename(&old, dir);
                return Err(LoraError::Io {
                    path: dir.to_path_buf(),
                    source: e,
                }
                .into());
            }
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::remove_dir(dir).map_err(io(dir))?;
            std::fs::rename(&tmp, dir).map_err(io(dir))?;
        }
    } else {
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
    }
    guard.0 = None;
    Ok(())
}

fn strip_any<'a>(s: &'a str, suffixes: &[&str]) -> Option<&'a str> {
    suffixes.iter().find_map(|suf| s.strip_suffix(suf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_metadata() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| LoraError::Io {
            path: "tmp".into(),
            source,
        })?;
        let dev = Device::Cpu;
        let mut tensors = AdapterTensors::new();
        tensors.insert(
            "model.layers.0.self_attn.q_proj".into(),
            (
                Tensor::ones((2, 4), DType::F32, &dev)?,
                Tensor::zeros((3, 2), DType::F32, &dev)?,
            ),
        );
        let cfg = AdapterConfig::from_lora(
            &LoraConfig {
                r: 2,
                ..Default::default()
            },
            Some("base".into()),
        );
        write_adapter(dir.path(), &cfg, &tensors, SaveDType::F32)?;
        let back = read_weights(dir.path(), &dev)?;
        assert_eq!(back.len(), 1);
        let bytes = std::fs::read(dir.path().join(WEIGHTS_FILE)).expect("file");
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
        assert_eq!(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
        let cfg2 = AdapterConfig::read(dir.path())?;
        assert_eq!(cfg2.r, 2);
        Ok(())
    }

    fn card_config() -> AdapterConfig {
        let lora = LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: TargetModules::List(vec!["q_proj".into(), "v_proj".into()]),
            use_rslora: false,
        };
        AdapterConfig::from_lora(&lora, Some("Qwen/Qwen2.5-0.5B-Instruct".into()))
    }

    fn card() -> ModelCard {
        ModelCard {
            base_model: None,
            recipe: Recipe {
                objective: "rdro".into(),
                alpha: "0.4".into(),
                data: "trl-lib/ultrafeedback | train".into(),
                steps: 300,
                learning_rate: 1e-4,
                extra: vec![("batch size".into(), "8".into())],
            },
            metrics: vec![("eval/loss".into(), 0.6875), ("reward_margin".into(), 1.25)],
            tags: vec!["preference-alignment".into()],
        }
    }

    #[test]
    fn model_card_front_matter_and_body() {
        let text = render_model_card(&card_config(), &card());
        let (front, body) = text
            .strip_prefix("---\n")
            .and_then(|t| t.split_once("\n---\n"))
            .expect("front matter delimited by ---");
        let lines: Vec<&str> = front.lines().collect();
        assert!(
            lines.contains(&"base_model: Qwen/Qwen2.5-0.5B-Instruct"),
            "{front}"
        );
        assert!(lines.contains(&"library_name: peft"), "{front}");
        assert!(lines.contains(&"pipeline_tag: text-generation"), "{front}");
        for tag in [
            "- rdro",
            "- lora",
            "- peft",
            "- preference-alignment",
            "- base_model:adapter:Qwen/Qwen2.5-0.5B-Instruct",
        ] {
            assert!(lines.contains(&tag), "missing {tag}: {front}");
        }
        for row in [
            "| objective | rdro |",
            "| alpha | 0.4 |",
            "| data | trl-lib/ultrafeedback \\| train |",
            "| steps | 300 |",
            "| learning rate | 0.0001 |",
            "| batch size | 8 |",
            "| target modules | q_proj, v_proj |",
            "| eval/loss | 0.6875 |",
            "| reward_margin | 1.25 |",
        ] {
            assert!(body.contains(row), "missing {row:?} in\n{body}");
        }
    }

    #[test]
    fn model_card_keeps_local_paths_out_of_front_matter() {
        let mut cfg = card_config();
        cfg.base_model_name_or_path = Some("/models/my base".into());
        let text = render_model_card(&cfg, &card());
        let front = text.split("\n---\n").next().unwrap();
        assert!(!front.contains("base_model:"), "{front}");
        assert!(text.contains("| base model | /models/my base |"), "{text}");
        assert_eq!(yaml_scalar("true"), "\"true\"");
        assert_eq!(yaml_scalar("a: b"), "\"a: b\"");
        assert_eq!(yaml_scalar("owner/name-1.5B"), "owner/name-1.5B");
    }

    #[test]
    fn atomic_folder_write_leaves_nothing_on_failure() {
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path().join("adapter");
        let err = write_dir_atomically(&dir, false, |tmp| {
            std::fs::write(tmp.join("half.bin"), b"x").expect("write");
            Err(LoraError::adapter(tmp, "simulated failure"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("simulated failure"));
        assert_eq!(
            std::fs::read_dir(root.path()).expect("list").count(),
            0,
            "left-overs after a failure"
        );

        let dev = Device::Cpu;
        let mut tensors = AdapterTensors::new();
        tensors.insert(
            "model.layers.0.self_attn.v_proj".into(),
            (
                Tensor::ones((8, 4), DType::F32, &dev).unwrap(),
                Tensor::ones((6, 8), DType::F32, &dev).unwrap(),
            ),
        );
        save_adapter(
            &dir,
            &card_config(),
            &tensors,
            SaveDType::Bf16,
            Some(&card()),
            false,
        )
        .expect("save");
        for f in [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        // A non-empty folder is kept unless replacing is asked for.
        let e =
            save_adapter(&dir, &card_config(), &tensors, SaveDType::F32, None, false).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        save_adapter(&dir, &card_config(), &tensors, SaveDType::F32, None, true).expect("replace");
        assert!(!dir.join(CARD_FILE).exists());
        let names: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["adapter".to_string()]);
    }

    #[test]
    fn hub_ids() {
        assert!(is_hub_id("Qwen/Qwen2.5-0.5B"));
        assert!(!is_hub_id("tests/fixtures/models/llama31"));
        assert!(!is_hub_id("/abs/path"));
        assert!(!is_hub_id("single"));
        assert!(!is_hub_id("./x"));
    }

    #[test]
    fn dora_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj"],"use_dora":true}"#,
        )
        .expect("write");
        let err = AdapterConfig::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("use_dora"), "{err}");
    }
}
