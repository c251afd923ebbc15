//! Offline merge of a LoRA adapter into the original dense weights of a Hugging Face folder, and
//! export of a Hugging Face folder to a quantized GGUF file.
//!
//! The merge streams: every tensor is read from the memory-mapped input shards, merged when an
//! adapter targets it (`W + s·B·A` in f32, see [`rdro_lora::merge`]), cast to the output dtype and
//! written straight into its output shard, whose header is computed beforehand from the input
//! headers. Peak memory is therefore about one tensor plus the adapter. The output is the
//! Hugging Face layout: `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards with
//! `model.safetensors.index.json`, plus `config.json` (with its dtype updated), the tokenizer and
//! generation files, and a `README.md`.
//!
//! Everything is checked before a byte is written (the adapter's `base_model_name_or_path`, that
//! every targeted module exists with matching shapes), and the output folder is written under a
//! temporary name and renamed at the end, so a failure leaves nothing half-written.
//!
//! The GGUF export ([`export_gguf`]) follows llama.cpp's converter: llama.cpp tensor names,
//! q/k rows permuted for the `llama` architecture, `rope_freqs.weight` for Llama 3.1 rope
//! scaling, llama.cpp's metadata keys and, when `tokenizer.json` is present, the tokenizer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rdro_lora::peft::{self, is_hub_id, AdapterConfig, AdapterTensors};
use rdro_lora::QuantType;
use serde_json::{json, Value};

use crate::config::{Architecture, ModelConfig};
use crate::gguf::gguf_name;
use crate::hub::hub_id_of_cache_path;
use crate::load::shard_files;
use crate::{ModelError, Result};

/// Default largest output shard, as transformers' `save_pretrained` uses.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Files copied from the base folder next to the merged weights (when present).
pub const COPIED_FILES: [&str; 9] = [
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// Storage dtype of merged weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeDType {
    /// bfloat16 (the default: what Qwen 2.5 and Llama 3 ship in).
    Bf16,
    /// float16.
    F16,
    /// float32.
    F32,
}

impl MergeDType {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            MergeDType::Bf16 => DType::BF16,
            MergeDType::F16 => DType::F16,
            MergeDType::F32 => DType::F32,
        }
    }

    /// The name transformers writes into `config.json` (`torch_dtype` / `dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            MergeDType::Bf16 => "bfloat16",
            MergeDType::F16 => "float16",
            MergeDType::F32 => "float32",
        }
    }
}

impl fmt::Display for MergeDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MergeDType::Bf16 => "bf16",
            MergeDType::F16 => "f16",
            MergeDType::F32 => "f32",
        })
    }
}

impl FromStr for MergeDType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Ok(MergeDType::Bf16),
            "f16" | "fp16" | "float16" => Ok(MergeDType::F16),
            "f32" | "fp32" | "float32" => Ok(MergeDType::F32),
            other => Err(format!(
                "unknown dtype {other:?}; expected bf16, f16 or f32"
            )),
        }
    }
}

/// Quantization of an exported GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufQuant {
    /// Every matrix in Q8_0 (llama.cpp's `Q8_0` file type).
    Q8_0,
    /// Matrices in Q4_K, the output head (or the tied embedding) in Q6_K, as llama.cpp's
    /// `Q4_K_S`; widths a K-quant does not fit fall back per tensor (Q4_K to Q5_0, Q6_K to Q8_0,
    /// then F16), as llama.cpp does.
    Q4K,
}

impl GgufQuant {
    /// `general.file_type` as llama.cpp numbers it.
    fn file_type(self) -> u32 {
        match self {
            GgufQuant::Q8_0 => 7,
            GgufQuant::Q4K => 14,
        }
    }
}

impl fmt::Display for GgufQuant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GgufQuant::Q8_0 => "q8_0",
            GgufQuant::Q4K => "q4k",
        })
    }
}

impl FromStr for GgufQuant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "q8_0" | "q8" => Ok(GgufQuant::Q8_0),
            "q4k" | "q4_k" | "q4_k_s" | "q4_k_m" => Ok(GgufQuant::Q4K),
            other => Err(format!(
                "unknown GGUF quantization {other:?}; expected q8_0 or q4k"
            )),
        }
    }
}

/// How to merge.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Storage dtype of the merged weights.
    pub dtype: MergeDType,
    /// Merge even when the adapter names another base, skipping (with a warning) modules whose
    /// shapes do not fit or that the base lacks.
    pub force: bool,
    /// Largest output shard in bytes (a single larger tensor gets a shard of its own).
    pub max_shard_bytes: u64,
    /// Also write the merged model as GGUF into the output folder (`model-<quant>.gguf`).
    pub gguf: Option<GgufQuant>,
    /// The names the base goes by (the spec the user gave, its Hub id), compared with the
    /// adapter's `base_model_name_or_path`.
    pub base_names: Vec<String>,
    /// Replace a non-empty output folder.
    pub replace: bool,
    /// Show progress bars (on stderr, hidden when it is not a terminal).
    pub progress: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self {
            dtype: MergeDType::Bf16,
            force: false,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            gguf: None,
            base_names: Vec::new(),
            replace: false,
            progress: false,
        }
    }
}

/// What a merge did.
#[derive(Debug, Clone, Default)]
pub struct MergeReport {
    /// Tensors written.
    pub tensors: usize,
    /// Modules whose weight received the adapter update.
    pub merged_modules: Vec<String>,
    /// Problems accepted because of `force`, and other notes.
    pub warnings: Vec<String>,
    /// The safetensors files written, in order.
    pub weight_files: Vec<PathBuf>,
    /// Bytes of tensor data written.
    pub total_bytes: u64,
    /// The GGUF export, when asked for.
    pub gguf: Option<GgufReport>,
}

/// What a GGUF export did.
#[derive(Debug, Clone, Default)]
pub struct GgufReport {
    /// The file written.
    pub path: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// `(GGUF tensor name, requested type, used type)` for every matrix whose width the requested
    /// type does not fit.
    pub fallbacks: Vec<(String, GgmlDType, GgmlDType)>,
    /// Whether the tokenizer was embedded (it is when `tokenizer.json` is a BPE tokenizer).
    pub tokenizer: bool,
    /// Size of the file.
    pub bytes: u64,
}

impl GgufReport {
    /// One line per distinct fallback, e.g. `q4k -> q5_0 for 12 tensor(s)`.
    pub fn fallback_summary(&self) -> Vec<String> {
        let mut groups: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (_, req, used) in &self.fallbacks {
            *groups
                .entry((ggml_name(*req), ggml_name(*used)))
                .or_default() += 1;
        }
        groups
            .into_iter()
            .map(|((req, used), n)| {
                format!("{req} -> {used} for {n} tensor(s) (row width not a multiple of the block)")
            })
            .collect()
    }
}

fn ggml_name(t: GgmlDType) -> String {
    match t {
        GgmlDType::F32 => "f32".into(),
        GgmlDType::F16 => "f16".into(),
        other => QuantType::Ggml(other).to_string(),
    }
}

/// A progress bar counting bytes, drawn on stderr (hidden when `visible` is false or stderr is
/// not a terminal).
pub(crate) fn byte_bar(len: u64, message: &str, visible: bool) -> indicatif::ProgressBar {
    let bar = if visible {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_string());
    bar
}

// ---------------------------------------------------------------------------------------------
// Reading safetensors headers and raw tensor bytes
// ---------------------------------------------------------------------------------------------

/// A tensor's entry in a safetensors header.
#[derive(Debug, Clone)]
struct RawInfo {
    dtype: String,
    shape: Vec<usize>,
    /// Byte range inside the file.
    start: usize,
    end: usize,
    /// Index of the file in [`Shards::files`].
    file: usize,
}

/// The memory-mapped safetensors files of a Hugging Face folder.
pub(crate) struct Shards {
    dir: PathBuf,
    files: Vec<(PathBuf, memmap2::Mmap)>,
    tensors: HashMap<String, RawInfo>,
}

/// Bytes per element of a safetensors dtype name.
fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "F32" | "I32" | "U32" => 4,
        "F64" | "I64" | "U64" => 8,
        _ => return None,
    })
}

fn candle_dtype(dtype: &str) -> Option<DType> {
    Some(match dtype {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        _ => return None,
    })
}

fn st_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        _ => "F32",
    }
}

impl Shards {
    /// Maps the safetensors files of `dir` and reads their headers.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let mut files = Vec::new();
        let mut tensors = HashMap::new();
        for (index, path) in shard_files(dir)?.into_iter().enumerate() {
            let file = File::open(&path).map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the file is mapped read-only; changing it while it is read is the caller's
            // problem, as with every mmap-based loader.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
            let bad = |message: String| ModelError::Weights {
                path: path.clone(),
                message,
            };
            if mmap.len() < 8 {
                return Err(bad("too short for a safetensors file".into()));
            }
            let n = u64::from_le_bytes(mmap[..8].try_into().unwrap_or([0; 8])) as usize;
            if n > mmap.len() - 8 {
                return Err(bad(format!(
                    "header length {n} exceeds the file size {}",
                    mmap.len()
                )));
            }
            let header: serde_json::Map<String, Value> = serde_json::from_slice(&mmap[8..8 + n])
                .map_err(|e| bad(format!("invalid safetensors header: {e}")))?;
            let data_start = 8 + n;
            for (name, info) in header {
                if name == "__metadata__" {
                    continue;
                }
                let dtype = info
                    .get("dtype")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let size = dtype_size(&dtype)
                    .ok_or_else(|| bad(format!("{name}: unknown dtype {dtype:?}")))?;
                let shape: Vec<usize> = info
                    .get("shape")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|d| d.as_u64().map(|d| d as usize))
                            .collect()
                    })
                    .ok_or_else(|| bad(format!("{name}: no shape")))?;
                let offsets: Vec<usize> = info
                    .get("data_offsets")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|d| d.as_u64().map(|d| d as usize))
                            .collect()
                    })
                    .unwrap_or_default();
                let [begin, end] = offsets[..] else {
                    return Err(bad(format!("{name}: no data_offsets [begin, end]")));
                };
                let want = shape.iter().product::<usize>() * size;
                if end < begin || end - begin != want || data_start + end > mmap.len() {
                    return Err(bad(format!(
                        "{name}: data_offsets [{begin}, {end}] do not hold a {dtype} tensor of shape {shape:?}"
                    )));
                }
                tensors.insert(
                    name,
                    RawInfo {
                        dtype,
                        shape,
                        start: data_start + begin,
                        end: data_start + end,
                        file: index,
                    },
                );
            }
            files.push((path, mmap));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            tensors,
        })
    }

    /// The shape of tensor `name`, when present.
    pub(crate) fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|i| i.shape.as_slice())
    }

    fn bytes(&self, info: &RawInfo) -> &[u8] {
        &self.files[info.file].1[info.start..info.end]
    }

    /// The tensor as a candle tensor on the CPU, in its stored dtype.
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let info = self.tensors.get(name).ok_or_else(|| ModelError::Weights {
            path: self.dir.clone(),
            message: format!("missing tensor {name}"),
        })?;
        let dtype = candle_dtype(&info.dtype).ok_or_else(|| ModelError::Weights {
            path: self.files[info.file].0.clone(),
            message: format!("{name}: dtype {} (expected bf16, f16 or f32)", info.dtype),
        })?;
        Ok(Tensor::from_raw_buffer(
            self.bytes(info),
            dtype,
            &info.shape,
            &Device::Cpu,
        )?)
    }
}

/// Little-endian bytes of a CPU tensor in f32, f16 or bf16.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        _ => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    })
}

/// Sort key putting tensors in model order: embeddings, layers by number, the rest.
fn model_order(name: &str) -> (usize, usize, String) {
    if let Some(rest) = name.strip_prefix("model.layers.") {
        let layer = rest
            .split('.')
            .next()
            .and_then(|l| l.parse().ok())
            .unwrap_or(usize::MAX);
        return (1, layer, name.to_string());
    }
    let group = if name.contains("embed_tokens") { 0 } else { 2 };
    (group, 0, name.to_string())
}

// ---------------------------------------------------------------------------------------------
// Merge
// ---------------------------------------------------------------------------------------------

/// The short name a base goes by: the name part of a Hub id (also of a path inside a Hub cache),
/// else the last component of a path, lower-cased.
fn short_name(s: &str) -> String {
    let trimmed = s.trim_end_matches('/');
    if let Some(id) = hub_id_of_cache_path(Path::new(trimmed)) {
        return id
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
    }
    trimmed
        .rsplit('/')
        .next()
        .unwrap_or(trimmed)
        .to_ascii_lowercase()
}

/// Whether the adapter's `base_model_name_or_path` names the base at `base_dir` (known as
/// `names`): the same string, the same folder, the same Hub id (also through a Hub cache path),
/// or, when one side is a local path, the same folder / model name.
fn base_matches(adapter_base: &str, names: &[String], base_dir: &Path) -> bool {
    let adapter_base = adapter_base.trim_end_matches('/');
    let mut all: Vec<String> = names
        .iter()
        .map(|n| n.trim_end_matches('/').to_string())
        .collect();
    if let Some(id) = hub_id_of_cache_path(base_dir) {
        all.push(id);
    }
    all.push(base_dir.display().to_string());
    if all.iter().any(|n| n.eq_ignore_ascii_case(adapter_base)) {
        return true;
    }
    if let (Ok(a), Ok(b)) = (
        Path::new(adapter_base).canonicalize(),
        base_dir.canonicalize(),
    ) {
        if a == b {
            return true;
        }
    }
    if is_hub_id(adapter_base) && all.iter().any(|n| is_hub_id(n)) {
        // Two Hub ids that differ: different models, even with the same name part.
        return false;
    }
    let short = short_name(adapter_base);
    all.iter().any(|n| short_name(n) == short)
}

/// One output tensor.
struct Planned {
    name: String,
    shape: Vec<usize>,
    out_dtype: String,
    /// `(module, A, B)` when the adapter updates this weight.
    update: Option<(String, Tensor, Tensor)>,
    bytes: u64,
}

/// Checks the adapter against the base and plans the output tensors, without writing.
fn plan_merge(
    shards: &Shards,
    adapter_dir: &Path,
    adapter: &AdapterConfig,
    tensors: &AdapterTensors,
    options: &MergeOptions,
    report: &mut MergeReport,
) -> Result<Vec<Planned>> {
    let adapter_config_path = adapter_dir.join(peft::CONFIG_FILE);
    match adapter
        .base_model_name_or_path
        .as_deref()
        .filter(|b| !b.is_empty())
    {
        None => report.warnings.push(format!(
            "{}: no base_model_name_or_path; the base could not be checked by name",
            adapter_config_path.display()
        )),
        Some(b) if base_matches(b, &options.base_names, &shards.dir) => {}
        Some(b) => {
            let base = options
                .base_names
                .first()
                .cloned()
                .unwrap_or_else(|| shards.dir.display().to_string());
            let message =
                format!("the adapter was trained on {b:?}, but the base given is {base:?}");
            if !options.force {
                return Err(ModelError::Config {
                    path: adapter_config_path,
                    message: format!("{message}; merge anyway with force (`rdro merge --force`)"),
                });
            }
            report.warnings.push(message);
        }
    }

    let r = adapter.r;
    let mut updates: HashMap<String, (String, Tensor, Tensor)> = HashMap::new();
    let weights_path = adapter_dir.join(peft::WEIGHTS_FILE);
    for (module, (a, b)) in tensors {
        let weight = format!("{module}.weight");
        let problem = match shards.tensors.get(&weight) {
            None => Some(format!(
                "the adapter targets {module}, which the base does not have (no tensor {weight} in {})",
                shards.dir.display()
            )),
            Some(info) => match rdro_lora::merge::check_fits(module, &info.shape, a.dims(), b.dims()) {
                Err(e) => Some(e),
                Ok(()) if a.dims()[0] != r => Some(format!(
                    "{module}: lora_A has rank {} but adapter_config.json says r = {r}",
                    a.dims()[0]
                )),
                Ok(()) if candle_dtype(&info.dtype).is_none() => {
                    Some(format!("{weight} is stored as {} (expected bf16, f16 or f32)", info.dtype))
                }
                Ok(()) => None,
            },
        };
        match problem {
            Some(message) if !options.force => {
                return Err(ModelError::Weights {
                    path: weights_path,
                    message: format!("{message}; the adapter does not fit this base"),
                })
            }
            Some(message) => report.warnings.push(format!("skipped: {message}")),
            None => {
                updates.insert(weight, (module.clone(), a.clone(), b.clone()));
            }
        }
    }
    if tensors.is_empty() {
        report.warnings.push(format!(
            "{}: the adapter holds no tensors; the output equals the base",
            weights_path.display()
        ));
    }

    let mut names: Vec<&String> = shards.tensors.keys().collect();
    names.sort_by_key(|n| model_order(n));
    let out_dtype = st_name(options.dtype.dtype());
    let mut planned = Vec::with_capacity(names.len());
    for name in names {
        let info = &shards.tensors[name];
        let dtype = if candle_dtype(&info.dtype).is_some() {
            out_dtype.to_string()
        } else {
            info.dtype.clone()
        };
        let elems: usize = info.shape.iter().product();
        let bytes = (elems * dtype_size(&dtype).unwrap_or(4)) as u64;
        planned.push(Planned {
            name: name.clone(),
            shape: info.shape.clone(),
            out_dtype: dtype,
            update: updates.remove(name),
            bytes,
        });
    }
    Ok(planned)
}

/// Merges the adapter in `adapter_dir` into the base folder `base_dir` (Hugging Face layout with
/// the original dense safetensors weights) and writes the merged model to `out_dir`.
///
/// Refuses (unless `options.force`) an adapter whose `base_model_name_or_path` names another
/// base, that targets modules the base lacks, or whose shapes do not fit; all checks run before
/// anything is written. `out_dir` appears complete or not at all.
pub fn merge_adapter(
    base_dir: &Path,
    adapter_dir: &Path,
    out_dir: &Path,
    options: &MergeOptions,
) -> Result<MergeReport> {
    if base_dir.is_file() {
        return Err(ModelError::Config {
            path: base_dir.to_path_buf(),
            message: "merging needs the original Hugging Face folder (config.json + *.safetensors), \
                      not a GGUF or other single file: merging into quantized weights would bake their \
                      rounding in"
                .into(),
        });
    }
    let config_path = base_dir.join("config.json");
    let model_config = ModelConfig::from_file(&config_path)?;
    let adapter = AdapterConfig::read(adapter_dir)?;
    let tensors = peft::read_weights(adapter_dir, &Device::Cpu)?;
    let shards = Shards::open(base_dir)?;
    let mut report = MergeReport::default();
    let planned = plan_merge(
        &shards,
        adapter_dir,
        &adapter,
        &tensors,
        options,
        &mut report,
    )?;
    let scaling = adapter.lora_config().scaling();

    // Output shards.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current = 0u64;
    for (i, t) in planned.iter().enumerate() {
        if groups.is_empty() || (current > 0 && current + t.bytes > options.max_shard_bytes.max(1))
        {
            groups.push(Vec::new());
            current = 0;
        }
        current += t.bytes;
        if let Some(g) = groups.last_mut() {
            g.push(i);
        }
    }
    let n = groups.len();
    let file_names: Vec<String> = (0..n)
        .map(|i| {
            if n == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", i + 1)
            }
        })
        .collect();
    let total: u64 = planned.iter().map(|t| t.bytes).sum();

    rdro_lora::peft::write_dir_atomically::<ModelError>(out_dir, options.replace, |tmp| {
        let bar = byte_bar(total, "merging", options.progress);
        for (group, file_name) in groups.iter().zip(&file_names) {
            write_shard(
                tmp,
                file_name,
                group.iter().map(|&i| &planned[i]),
                &shards,
                scaling,
                options.dtype.dtype(),
                &bar,
                &mut report,
            )?;
        }
        bar.finish_and_clear();
        if n > 1 {
            let mut weight_map = serde_json::Map::new();
            for (group, file_name) in groups.iter().zip(&file_names) {
                for &i in group {
                    weight_map.insert(planned[i].name.clone(), Value::String(file_name.clone()));
                }
            }
            let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            write_json(&tmp.join("model.safetensors.index.json"), &index)?;
        }
        copy_side_files(base_dir, tmp, options.dtype)?;
        write_merged_card(tmp, adapter_dir, &adapter, options)?;
        if let Some(quant) = options.gguf {
            let name = format!("model-{quant}.gguf");
            let mut g = export_gguf_into(
                tmp,
                &tmp.join(&name),
                quant,
                &model_config,
                options.progress,
            )?;
            g.path = out_dir.join(name);
            report.gguf = Some(g);
        }
        Ok(())
    })?;
    report.tensors = planned.len();
    report.total_bytes = total;
    report.weight_files = file_names.iter().map(|f| out_dir.join(f)).collect();
    report.merged_modules.sort();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn write_shard<'a>(
    dir: &Path,
    file_name: &str,
    tensors: impl Iterator<Item = &'a Planned> + Clone,
    shards: &Shards,
    scaling: f64,
    dtype: DType,
    bar: &indicatif::ProgressBar,
    report: &mut MergeReport,
) -> Result<()> {
    let path = dir.join(file_name);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for t in tensors.clone() {
        header.insert(
            t.name.clone(),
            json!({"dtype": t.out_dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes]}),
        );
        offset += t.bytes;
    }
    let mut header =
        serde_json::to_vec(&Value::Object(header)).map_err(|e| ModelError::Weights {
            path: path.clone(),
            message: format!("cannot encode the header: {e}"),
        })?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let io = |source| ModelError::Io {
        path: path.clone(),
        source,
    };
    let mut w = BufWriter::new(File::create(&path).map_err(io)?);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)?;
    for t in tensors {
        let info = &shards.tensors[&t.name];
        let bytes: std::borrow::Cow<'_, [u8]> = match &t.update {
            Some((module, a, b)) => {
                let w0 = shards.tensor(&t.name)?;
                let merged = rdro_lora::merge::merge_weight(&w0, a, b, scaling, dtype)?;
                report.merged_modules.push(module.clone());
                tensor_bytes(&merged)?.into()
            }
            // Same dtype, no update: copied straight from the mapped input.
            None if info.dtype == t.out_dtype => shards.bytes(info).into(),
            None => tensor_bytes(&shards.tensor(&t.name)?.to_dtype(dtype)?)?.into(),
        };
        if bytes.len() as u64 != t.bytes {
            return Err(ModelError::Weights {
                path: path.clone(),
                message: format!(
                    "{}: produced {} bytes, planned {}",
                    t.name,
                    bytes.len(),
                    t.bytes
                ),
            });
        }
        w.write_all(&bytes).map_err(io)?;
        bar.inc(t.bytes);
    }
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Weights {
        path: path.to_path_buf(),
        message: format!("cannot encode JSON: {e}"),
    })?;
    std::fs::write(path, text + "\n").map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Copies `config.json` (with `torch_dtype` / `dtype` set to the output dtype) and the tokenizer
/// and generation files that exist.
fn copy_side_files(base_dir: &Path, out: &Path, dtype: MergeDType) -> Result<()> {
    let config_path = base_dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
        path: config_path.clone(),
        source,
    })?;
    let mut config: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: config_path.clone(),
        message: format!("invalid JSON: {e}"),
    })?;
    if let Some(obj) = config.as_object_mut() {
        let mut set = false;
        for key in ["torch_dtype", "dtype"] {
            if obj.contains_key(key) {
                obj.insert(key.into(), Value::String(dtype.torch_name().into()));
                set = true;
            }
        }
        if !set {
            obj.insert(
                "torch_dtype".into(),
                Value::String(dtype.torch_name().into()),
            );
        }
    }
    write_json(&out.join("config.json"), &config)?;
    for name in COPIED_FILES {
        let src = base_dir.join(name);
        if src.is_file() {
            let dst = out.join(name);
            std::fs::copy(&src, &dst).map_err(|source| ModelError::Io {
                path: src.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// A model card for the merged model: Hub front matter naming the base (when it is a Hub id) and
/// the adapter's own card body, if it has one.
fn write_merged_card(
    out: &Path,
    adapter_dir: &Path,
    adapter: &AdapterConfig,
    options: &MergeOptions,
) -> Result<()> {
    let base = options
        .base_names
        .iter()
        .find(|n| is_hub_id(n))
        .cloned()
        .or_else(|| {
            adapter
                .base_model_name_or_path
                .clone()
                .filter(|b| is_hub_id(b))
        });
    let mut text = String::from("---\n");
    if let Some(b) = &base {
        text += &format!("base_model: {b}\nbase_model_relation: merge\n");
    }
    text += "library_name: transformers\npipeline_tag: text-generation\ntags:\n- rdro\n- lora\n- merge\n---\n\n";
    text += &format!(
        "# {} with a merged LoRA adapter\n\nThe LoRA adapter (r {}, alpha {}) was merged into the base weights \
         with `rdro merge`; the weights are stored as {}.\n",
        base.as_deref().or(options.base_names.first().map(String::as_str)).unwrap_or("Base model"),
        adapter.r,
        adapter.lora_alpha,
        options.dtype.torch_name()
    );
    if let Ok(card) = std::fs::read_to_string(adapter_dir.join(peft::CARD_FILE)) {
        let body = card
            .strip_prefix("---\n")
            .and_then(|rest| rest.split_once("\n---\n").map(|(_, b)| b))
            .unwrap_or(&card);
        text += "\n## The adapter\n\n";
        text += body.trim_start().trim_start_matches('#').trim_start();
        text += "\n";
    }
    let path = out.join("README.md");
    std::fs::write(&path, text).map_err(|source| ModelError::Io { path, source })
}

// ---------------------------------------------------------------------------------------------
// GGUF export
// ---------------------------------------------------------------------------------------------

/// A GGUF metadata value (the types llama.cpp's converter writes).
#[derive(Debug, Clone)]
enum GValue {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
}

const GGUF_ALIGNMENT: u64 = 32;

fn ggml_type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &GValue) {
    let (ty, body): (u32, Vec<u8>) = match v {
        GValue::U32(x) => (4, x.to_le_bytes().to_vec()),
        GValue::F32(x) => (6, x.to_le_bytes().to_vec()),
        GValue::Bool(x) => (7, vec![u8::from(*x)]),
        GValue::Str(s) => {
            let mut b = Vec::new();
            put_str(&mut b, s);
            (8, b)
        }
        GValue::StrArray(items) => {
            let mut b = Vec::new();
            b.extend_from_slice(&8u32.to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items {
                put_str(&mut b, s);
            }
            (9, b)
        }
        GValue::I32Array(items) => {
            let mut b = Vec::new();
            b.extend_from_slice(&5u32.to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                b.extend_from_slice(&x.to_le_bytes());
            }
            (9, b)
        }
    };
    buf.extend_from_slice(&ty.to_le_bytes());
    buf.extend_from_slice(&body);
}

/// Where a GGUF tensor's values come from.
enum GSource {
    /// A safetensors tensor, with its q/k rows permuted for `Some(heads)`.
    Hf {
        name: String,
        permute_heads: Option<usize>,
    },
    /// Values computed here (`rope_freqs.weight`).
    Values(Vec<f32>),
}

struct GTensor {
    name: String,
    /// numpy order: `[out, in]` or `[n]`.
    dims: Vec<usize>,
    dtype: GgmlDType,
    source: GSource,
    bytes: u64,
}

/// llama.cpp's row permutation of q/k for its interleaved rope: GGUF row `h·d + 2i + j` holds
/// Hugging Face row `h·d + j·d/2 + i`.
fn permute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let dst = h * d + 2 * i + j;
                let src = h * d + j * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Writes the model in `model_dir` (Hugging Face layout) as a GGUF file `out`, quantized with
/// `quant`. The file appears complete or not at all (it is written under a temporary name and
/// renamed).
pub fn export_gguf(
    model_dir: &Path,
    out: &Path,
    quant: GgufQuant,
    progress: bool,
) -> Result<GgufReport> {
    let config = ModelConfig::from_file(&model_dir.join("config.json"))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = out
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.gguf".into());
    let tmp = parent.join(format!("{file_name}.tmp-{:08x}", rand::random::<u32>()));
    let result = export_gguf_into(model_dir, &tmp, quant, &config, progress);
    match result {
        Ok(mut report) => {
            std::fs::rename(&tmp, out).map_err(|source| {
                let _ = std::fs::remove_file(&tmp);
                ModelError::Io {
                    path: out.to_path_buf(),
                    source,
                }
            })?;
            report.path = out.to_path_buf();
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn export_gguf_into(
    model_dir: &Path,
    out: &Path,
    quant: GgufQuant,
    config: &ModelConfig,
    progress: bool,
) -> Result<GgufReport> {
    let shards = Shards::open(model_dir)?;
    let arch = config.architecture;
    let tied = config.tie_word_embeddings;
    let mut report = GgufReport {
        path: out.to_path_buf(),
        ..Default::default()
    };

    // Tensors, in the order llama.cpp's converter writes them.
    let mut plan: Vec<GTensor> = Vec::new();
    let add_hf = |plan: &mut Vec<GTensor>, hf: &str, report: &mut GgufReport| -> Result<()> {
        let Some(info) = shards.tensors.get(hf) else {
            return Err(ModelError::Weights {
                path: model_dir.to_path_buf(),
                message: format!("missing tensor {hf}"),
            });
        };
        let name = gguf_name(hf).ok_or_else(|| ModelError::Weights {
            path: model_dir.to_path_buf(),
            message: format!("{hf} has no GGUF name"),
        })?;
        let dims = info.shape.clone();
        let dtype = if dims.len() < 2 {
            GgmlDType::F32
        } else {
            let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
            let requested = match quant {
                GgufQuant::Q8_0 => GgmlDType::Q8_0,
                GgufQuant::Q4K if is_output => GgmlDType::Q6K,
                GgufQuant::Q4K => GgmlDType::Q4K,
            };
            let width = dims[dims.len() - 1];
            let used = match QuantType::Ggml(requested).for_width(width) {
                QuantType::Ggml(t) => t,
                QuantType::None => GgmlDType::F16,
            };
            if used != requested {
                report.fallbacks.push((name.clone(), requested, used));
            }
            used
        };
        let permute_heads = match (arch, hf) {
            (Architecture::Llama, n)
                if n.ends_with("self_attn.q_proj.weight")
                    || n.ends_with("self_attn.q_proj.bias") =>
            {
                Some(config.num_attention_heads)
            }
            (Architecture::Llama, n)
                if n.ends_with("self_attn.k_proj.weight")
                    || n.ends_with("self_attn.k_proj.bias") =>
            {
                Some(config.num_key_value_heads)
            }
            _ => None,
        };
        let elems: usize = dims.iter().product();
        let bytes = (elems / dtype.block_size() * dtype.type_size()) as u64;
        plan.push(GTensor {
            name,
            dims,
            dtype,
            source: GSource::Hf {
                name: hf.to_string(),
                permute_heads,
            },
            bytes,
        });
        Ok(())
    };

    if arch == Architecture::Llama && config.rope_scaling.is_some() {
        let scaled = crate::rope::inverse_frequencies(config);
        let mut plain = config.clone();
        plain.rope_scaling = None;
        let base = crate::rope::inverse_frequencies(&plain);
        let factors: Vec<f32> = base
            .iter()
            .zip(&scaled)
            .map(|(b, s)| (b / s) as f32)
            .collect();
        let n = factors.len();
        plan.push(GTensor {
            name: "rope_freqs.weight".into(),
            dims: vec![n],
            dtype: GgmlDType::F32,
            source: GSource::Values(factors),
            bytes: (n * 4) as u64,
        });
    }
    add_hf(&mut plan, "model.embed_tokens.weight", &mut report)?;
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        add_hf(
            &mut plan,
            &format!("{p}.input_layernorm.weight"),
            &mut report,
        )?;
        for m in ["q_proj", "k_proj", "v_proj"] {
            add_hf(&mut plan, &format!("{p}.self_attn.{m}.weight"), &mut report)?;
        }
        for m in ["q_proj", "k_proj", "v_proj"] {
            let bias = format!("{p}.self_attn.{m}.bias");
            if shards.tensors.contains_key(&bias) {
                add_hf(&mut plan, &bias, &mut report)?;
            }
        }
        add_hf(
            &mut plan,
            &format!("{p}.self_attn.o_proj.weight"),
            &mut report,
        )?;
        add_hf(
            &mut plan,
            &format!("{p}.post_attention_layernorm.weight"),
            &mut report,
        )?;
        for m in ["gate_proj", "up_proj", "down_proj"] {
            add_hf(&mut plan, &format!("{p}.mlp.{m}.weight"), &mut report)?;
        }
    }
    add_hf(&mut plan, "model.norm.weight", &mut report)?;
    if !tied {
        add_hf(&mut plan, "lm_head.weight", &mut report)?;
    }

    let metadata = gguf_metadata(model_dir, config, quant, &mut report)?;

    // Header: magic, version 3, counts, metadata, tensor infos, padding.
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(plan.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in &metadata {
        put_str(&mut head, key);
        put_value(&mut head, value);
    }
    let mut offset = 0u64;
    for t in &plan {
        put_str(&mut head, &t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in t.dims.iter().rev() {
            head.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        head.extend_from_slice(&ggml_type_id(t.dtype).to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offset += t.bytes.div_ceil(GGUF_ALIGNMENT) * GGUF_ALIGNMENT;
    }
    while !(head.len() as u64).is_multiple_of(GGUF_ALIGNMENT) {
        head.push(0);
    }

    let io = |source| ModelError::Io {
        path: out.to_path_buf(),
        source,
    };
    let mut w = BufWriter::new(File::create(out).map_err(io)?);
    w.write_all(&head).map_err(io)?;
    let bar = byte_bar(offset, &format!("writing GGUF ({quant})"), progress);
    for t in &plan {
        let values: Vec<f32> = match &t.source {
            GSource::Values(v) => v.clone(),
            GSource::Hf {
                name,
                permute_heads,
            } => {
                let v = shards
                    .tensor(name)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                match permute_heads {
                    Some(heads) => {
                        let rows = t.dims[0];
                        let cols = v.len() / rows.max(1);
                        if *heads == 0 || rows % (2 * heads) != 0 {
                            return Err(ModelError::Weights {
                                path: model_dir.to_path_buf(),
                                message: format!(
                                    "{name}: {rows} rows cannot be split into {heads} rope heads"
                                ),
                            });
                        }
                        permute_rows(&v, rows, cols, *heads)
                    }
                    None => v,
                }
            }
        };
        let data: Vec<u8> = match t.dtype {
            GgmlDType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgmlDType::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            q => {
                let tensor = Tensor::from_vec(values, t.dims.as_slice(), &Device::Cpu)?;
                QTensor::quantize(&tensor, q)?.data()?.into_owned()
            }
        };
        if data.len() as u64 != t.bytes {
            return Err(ModelError::Weights {
                path: out.to_path_buf(),
                message: format!("{}: {} bytes, planned {}", t.name, data.len(), t.bytes),
            });
        }
        w.write_all(&data).map_err(io)?;
        let pad = t.bytes.div_ceil(GGUF_ALIGNMENT) * GGUF_ALIGNMENT - t.bytes;
        w.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        bar.inc(t.bytes + pad);
    }
    bar.finish_and_clear();
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    report.tensors = plan.len();
    report.bytes = head.len() as u64 + offset;
    Ok(report)
}

/// llama.cpp's metadata for the model (and its tokenizer, when `tokenizer.json` is a BPE one).
fn gguf_metadata(
    model_dir: &Path,
    config: &ModelConfig,
    quant: GgufQuant,
    report: &mut GgufReport,
) -> Result<Vec<(String, GValue)>> {
    let arch = config.architecture.gguf_name();
    let raw_config: Value = std::fs::read_to_string(model_dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let name = model_dir
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty() && !n.contains(".tmp-"))
        .or_else(|| {
            raw_config
                .get("_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "model".into());
    let u = |v: usize| GValue::U32(v as u32);
    let mut m: Vec<(String, GValue)> = vec![
        ("general.architecture".into(), GValue::Str(arch.into())),
        ("general.type".into(), GValue::Str("model".into())),
        ("general.name".into(), GValue::Str(name)),
        (format!("{arch}.block_count"), u(config.num_hidden_layers)),
        (
            format!("{arch}.context_length"),
            u(config.max_position_embeddings),
        ),
        (format!("{arch}.embedding_length"), u(config.hidden_size)),
        (
            format!("{arch}.feed_forward_length"),
            u(config.intermediate_size),
        ),
        (
            format!("{arch}.attention.head_count"),
            u(config.num_attention_heads),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            u(config.num_key_value_heads),
        ),
        (
            format!("{arch}.rope.freq_base"),
            GValue::F32(config.rope_theta as f32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            GValue::F32(config.rms_norm_eps as f32),
        ),
    ];
    if config.head_dim * config.num_attention_heads != config.hidden_size {
        m.push((format!("{arch}.attention.key_length"), u(config.head_dim)));
        m.push((format!("{arch}.attention.value_length"), u(config.head_dim)));
    }
    m.push((format!("{arch}.rope.dimension_count"), u(config.head_dim)));
    m.push((format!("{arch}.vocab_size"), u(config.vocab_size)));
    m.push(("general.file_type".into(), GValue::U32(quant.file_type())));
    m.push(("general.quantization_version".into(), GValue::U32(2)));
    if let Some(tok) = tokenizer_metadata(model_dir, config, &raw_config)? {
        m.extend(tok);
        report.tokenizer = true;
    }
    Ok(m)
}

/// The `tokenizer.ggml.*` keys for a BPE `tokenizer.json` (Qwen 2 / 2.5 and Llama 3 both use
/// byte-level BPE, llama.cpp's `gpt2` model), or `None` when there is no such file.
fn tokenizer_metadata(
    model_dir: &Path,
    config: &ModelConfig,
    raw_config: &Value,
) -> Result<Option<Vec<(String, GValue)>>> {
    let path = model_dir.join("tokenizer.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let bad = |message: String| ModelError::Config {
        path: path.clone(),
        message,
    };
    let tok: Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let model = tok
        .get("model")
        .ok_or_else(|| bad("no `model` object".into()))?;
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
    if kind != "BPE" {
        return Err(bad(format!(
            "tokenizer model {kind:?} cannot be written to GGUF (expected \"BPE\")"
        )));
    }
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no `model.vocab` object".into()))?;
    let mut by_id: BTreeMap<usize, (String, i32)> = BTreeMap::new();
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("vocab entry {token:?} has no integer id")))?
            as usize;
        by_id.insert(id, (token.clone(), 1));
    }
    let mut content_to_id: HashMap<String, usize> =
        by_id.iter().map(|(id, (t, _))| (t.clone(), *id)).collect();
    for added in tok
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(content)) = (
            added.get("id").and_then(Value::as_u64),
            added.get("content").and_then(Value::as_str),
        ) else {
            continue;
        };
        let special = added
            .get("special")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        by_id.insert(
            id as usize,
            (content.to_string(), if special { 3 } else { 4 }),
        );
        content_to_id.insert(content.to_string(), id as usize);
    }
    let n = config
        .vocab_size
        .max(by_id.keys().next_back().map_or(0, |m| m + 1));
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for i in 0..n {
        match by_id.get(&i) {
            Some((t, ty)) => {
                tokens.push(t.clone());
                types.push(*ty);
            }
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(5);
            }
        }
    }
    let merges: Vec<String> = model
        .get("merges")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| match m {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(pair) => {
                        let parts: Vec<&str> = pair.iter().filter_map(Value::as_str).collect();
                        (parts.len() == 2).then(|| parts.join(" "))
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let pre = match config.architecture {
        Architecture::Qwen2 => "qwen2",
        Architecture::Llama => "llama-bpe",
    };
    let mut m: Vec<(String, GValue)> = vec![
        ("tokenizer.ggml.model".into(), GValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), GValue::Str(pre.into())),
        ("tokenizer.ggml.tokens".into(), GValue::StrArray(tokens)),
        ("tokenizer.ggml.token_type".into(), GValue::I32Array(types)),
        ("tokenizer.ggml.merges".into(), GValue::StrArray(merges)),
    ];
    let tok_config: Value = std::fs::read_to_string(model_dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let token_id = |key: &str| -> Option<u32> {
        let content = match tok_config.get(format!("{key}_token")) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        content
            .and_then(|c| content_to_id.get(&c).map(|id| *id as u32))
            .or_else(|| {
                raw_config
                    .get(format!("{key}_token_id"))
                    .and_then(Value::as_u64)
                    .map(|v| v as u32)
            })
    };
    for (key, gguf_key) in [
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("pad", "padding_token_id"),
    ] {
        if let Some(id) = token_id(key) {
            m.push((format!("tokenizer.ggml.{gguf_key}"), GValue::U32(id)));
        }
    }
    let add_bos = tok_config
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(config.architecture == Architecture::Llama);
    m.push(("tokenizer.ggml.add_bos_token".into(), GValue::Bool(add_bos)));
    let template = tok_config
        .get("chat_template")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| std::fs::read_to_string(model_dir.join("chat_template.jinja")).ok());
    if let Some(t) = template {
        m.push(("tokenizer.chat_template".into(), GValue::Str(t)));
    }
    Ok(Some(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!("BF16".parse::<MergeDType>().unwrap(), MergeDType::Bf16);
        assert_eq!("float32".parse::<MergeDType>().unwrap(), MergeDType::F32);
        assert!("int8"
            .parse::<MergeDType>()
            .unwrap_err()
            .contains("bf16, f16 or f32"));
        assert_eq!("Q4_K_M".parse::<GgufQuant>().unwrap(), GgufQuant::Q4K);
        assert_eq!("q8_0".parse::<GgufQuant>().unwrap(), GgufQuant::Q8_0);
        assert!("q2k".parse::<GgufQuant>().is_err());
    }

    #[test]
    fn base_names() {
        let dir = Path::new("/cache/models--Qwen--Qwen2.5-0.5B/snapshots/abc");
        assert!(base_matches("Qwen/Qwen2.5-0.5B", &[], dir));
        assert!(!base_matches(
            "meta-llama/Llama-3.2-1B",
            &["Qwen/Qwen2.5-0.5B".into()],
            dir
        ));
        // A fine-tune of the same name under another owner is another model.
        assert!(!base_matches(
            "someone/Qwen2.5-0.5B",
            &["Qwen/Qwen2.5-0.5B".into()],
            dir
        ));
        // A local copy named after the model.
        assert!(base_matches(
            "Qwen/Qwen2.5-0.5B",
            &["/models/Qwen2.5-0.5B".into()],
            Path::new("/models/Qwen2.5-0.5B")
        ));
        assert!(!base_matches(
            "/models/llama",
            &["/models/qwen".into()],
            Path::new("/models/qwen")
        ));
    }

    #[test]
    fn permutation_matches_llama_cpp() {
        // 2 heads of dim 4, one column: HF rows [h0: 0 1 2 3, h1: 4 5 6 7].
        let v: Vec<f32> = (0..8).map(|x| x as f32).collect();
        assert_eq!(
            permute_rows(&v, 8, 1, 2),
            vec![0., 2., 1., 3., 4., 6., 5., 7.]
        );
    }
}
