//! Reference log-probs: the summed completion log-probs of every example under the base with the
//! adapters switched off, computed once and cached on disk under a key that covers everything they
//! depend on (base weights, quantization, compute dtype, device kind, and the token ids of every
//! example, which in turn cover the data, chat template and truncation settings).

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rdro_lora::ForwardMode;
use rdro_models::{Batch, LlamaModel, ModelSource};
use sha2::{Digest, Sha256};

use super::TrainError;
use crate::data::TokenizedExample;

/// Format tag of the cache files (part of the key).
pub const REFERENCE_CACHE_FORMAT: &str = "rdro-reference-logps-v1";

/// Bytes of the start and of the end of each weight file that enter the base fingerprint.
const SAMPLE_BYTES: u64 = 4 << 20;

fn hash_file_sample(hasher: &mut Sha256, path: &Path) -> Result<(), TrainError> {
    let io = |e| TrainError::io(path, e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    hasher.update(
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    hasher.update(len.to_le_bytes());
    let mut buf = Vec::new();
    (&mut f)
        .take(SAMPLE_BYTES)
        .read_to_end(&mut buf)
        .map_err(io)?;
    hasher.update(&buf);
    if len > 2 * SAMPLE_BYTES {
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::End(-(SAMPLE_BYTES as i64))).map_err(io)?;
        buf.clear();
        f.take(SAMPLE_BYTES).read_to_end(&mut buf).map_err(io)?;
        hasher.update(&buf);
    } else if len > SAMPLE_BYTES {
        buf.clear();
        let mut f = std::fs::File::open(path).map_err(io)?;
        f.read_to_end(&mut buf).map_err(io)?;
        hasher.update(&buf);
    }
    Ok(())
}

/// A fingerprint of a base model's files: the config and, for every weight file, its name, size
/// and the first and last 4 MiB of its bytes.
pub fn base_fingerprint(source: &ModelSource) -> Result<String, TrainError> {
    let mut hasher = Sha256::new();
    match source {
        ModelSource::Gguf(path) => hash_file_sample(&mut hasher, path)?,
        ModelSource::Folder(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| TrainError::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    name == "config.json"
                        || name.ends_with(".safetensors")
                        || name.ends_with(".safetensors.index.json")
                })
                .collect();
            files.sort();
            for f in files {
                hash_file_sample(&mut hasher, &f)?;
            }
        }
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache key of the reference log-probs of `examples` under a base with fingerprint `base` and
/// the given load settings (`settings` is any text that identifies them).
pub fn cache_key(base: &str, settings: &str, examples: &[TokenizedExample]) -> String {
    let mut h = Sha256::new();
    h.update(REFERENCE_CACHE_FORMAT);
    h.update([0]);
    h.update(base);
    h.update([0]);
    h.update(settings);
    h.update([0]);
    h.update((examples.len() as u64).to_le_bytes());
    for e in examples {
        h.update((e.prompt_ids.len() as u64).to_le_bytes());
        for id in &e.prompt_ids {
            h.update(id.to_le_bytes());
        }
        h.update((e.completion_ids.len() as u64).to_le_bytes());
        for id in &e.completion_ids {
            h.update(id.to_le_bytes());
        }
    }
    hex(&h.finalize())
}

/// Summed completion log-probs of `rows` under the reference (adapter off), `[rows]` f32.
pub fn reference_batch(
    model: &LlamaModel,
    rows: &[(&[u32], &[u32])],
    pad_id: u32,
) -> Result<Tensor, TrainError> {
    let batch = Batch::from_prompt_completion(rows, pad_id)?;
    Ok(model
        .token_log_probs(&batch, ForwardMode::REFERENCE)?
        .per_sequence()?
        .detach())
}

/// Computes the reference log-probs of every example, in batches of `batch_size`, in order.
pub fn compute(
    model: &LlamaModel,
    examples: &[TokenizedExample],
    batch_size: usize,
    pad_id: u32,
) -> Result<Vec<f32>, TrainError> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let rows: Vec<(&[u32], &[u32])> = chunk
            .iter()
            .map(|e| (e.prompt_ids.as_slice(), e.completion_ids.as_slice()))
            .collect();
        out.extend(reference_batch(model, &rows, pad_id)?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Where the cache file for `key` lives.
pub fn cache_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.safetensors"))
}

/// Reads a cached vector, if present and of the expected length.
pub fn read_cache(path: &Path, n: usize) -> Option<Vec<f32>> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).ok()?;
    let v = tensors.get("logps")?.to_vec1::<f32>().ok()?;
    (v.len() == n).then_some(v)
}

/// Writes a cache file atomically (temporary file, then rename).
pub fn write_cache(path: &Path, values: &[f32]) -> Result<(), TrainError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let tmp = path.with_extension(format!("tmp-{:08x}", rand::random::<u32>()));
    let t = Tensor::from_vec(values.to_vec(), values.len(), &Device::Cpu)?;
    let map: std::collections::HashMap<String, Tensor> = [("logps".to_string(), t)].into();
    let result = candle_core::safetensors::save(&map, &tmp)
        .map_err(TrainError::from)
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reference log-probs from the cache folder `cache_dir` (when given and holding the key), or
/// computed and then stored there. Returns the values and whether they came from the cache.
pub fn cached_or_compute(
    model: &LlamaModel,
    examples: &[TokenizedExample],
    batch_size: usize,
    pad_id: u32,
    cache_dir: Option<&Path>,
    key: &str,
) -> Result<(Vec<f32>, bool), TrainError> {
    if let Some(dir) = cache_dir {
        if let Some(v) = read_cache(&cache_path(dir, key), examples.len()) {
            return Ok((v, true));
        }
    }
    let v = compute(model, examples, batch_size, pad_id)?;
    if let Some(dir) = cache_dir {
        write_cache(&cache_path(dir, key), &v)?;
    }
    Ok((v, false))
}
