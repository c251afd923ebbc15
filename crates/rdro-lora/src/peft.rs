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
        let (module, which) = if let Some(m) = strip_any(module_key, &[".lora_A.weight", ".lora_A.default.weight"]) {
            (m, &mut a)
        } else if let Some(m) = strip_any(module_key, &[".lora_B.weight", ".lora_B.default.weight"]) {
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
        let tb = b.remove(&module).ok_or_else(|| {
            LoraError::adapter(&path, format!("{module}: lora_A without lora_B"))
        })?;
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
        return Err(LoraError::adapter(&path, format!("{module}: lora_B without lora_A")));
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
        named.push((format!("{KEY_PREFIX}{module}.lora_A.weight"), a.to_dtype(dt)?.to_device(&Device::Cpu)?));
        named.push((format!("{KEY_PREFIX}{module}.lora_B.weight"), b.to_dtype(dt)?.to_device(&Device::Cpu)?));
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
                t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            DType::BF16 => (
                safetensors::Dtype::BF16,
                t.flatten_all()?.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            other => {
                return Err(LoraError::config("dtype", format!("cannot save {other:?} adapters")));
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

fn strip_any<'a>(s: &'a str, suffixes: &[&str]) -> Option<&'a str> {
    suffixes.iter().find_map(|suf| s.strip_suffix(suf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_metadata() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| LoraError::Io { path: "tmp".into(), source })?;
        let dev = Device::Cpu;
        let mut tensors = AdapterTensors::new();
        tensors.insert(
            "model.layers.0.self_attn.q_proj".into(),
            (Tensor::ones((2, 4), DType::F32, &dev)?, Tensor::zeros((3, 2), DType::F32, &dev)?),
        );
        let cfg = AdapterConfig::from_lora(&LoraConfig { r: 2, ..Default::default() }, Some("base".into()));
        write_adapter(dir.path(), &cfg, &tensors, SaveDType::F32)?;
        let back = read_weights(dir.path(), &dev)?;
        assert_eq!(back.len(), 1);
        let bytes = std::fs::read(dir.path().join(WEIGHTS_FILE)).expect("file");
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
        assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
        let cfg2 = AdapterConfig::read(dir.path())?;
        assert_eq!(cfg2.r, 2);
        Ok(())
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
