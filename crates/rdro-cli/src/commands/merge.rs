//! `rdro merge`: fold a LoRA adapter into the original dense weights of its base, optionally also
//! writing a quantized GGUF.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use rdro_models::hub::{resolve_model, HubOptions};
use rdro_models::merge::{merge_adapter, GgufQuant, MergeDType, MergeOptions};
use rdro_models::ModelSource;

/// Arguments of `rdro merge`.
#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Base model: a Hugging Face folder or a Hub id (local Hub cache first). Not a GGUF file:
    /// the merge needs the original dense weights.
    #[arg(long, value_name = "MODEL")]
    pub base: String,
    /// Adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// Output folder; it must not exist or be empty (see --overwrite).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Storage dtype of the merged weights: bf16, f16 or f32.
    #[arg(long, default_value = "bf16", value_name = "DTYPE")]
    pub dtype: MergeDType,
    /// Merge even when the adapter names another base; modules that do not fit are skipped.
    #[arg(long)]
    pub force: bool,
    /// Also write the merged model as GGUF into the output folder: q8_0 or q4k.
    #[arg(long, value_name = "TYPE")]
    pub gguf: Option<GgufQuant>,
    /// Largest safetensors shard (e.g. 5GB, 500MB, 2GiB, or bytes).
    #[arg(long, default_value = "5GB", value_name = "SIZE", value_parser = parse_size)]
    pub max_shard_size: u64,
    /// Replace the output folder when it exists and is not empty.
    #[arg(long)]
    pub overwrite: bool,
    /// Revision of a Hub base (branch, tag or commit).
    #[arg(long, default_value = "main")]
    pub revision: String,
}

/// `5GB`, `500MB`, `2GiB`, `1000`: a size in bytes.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size (expected e.g. 5GB, 500MB or a byte count)"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (expected B, KB, MB, GB, KiB, MiB or GiB)"
            ))
        }
    };
    let bytes = value * factor;
    if bytes.is_nan() || bytes < 1.0 {
        return Err(format!("{s:?}: the shard size must be at least one byte"));
    }
    Ok(bytes as u64)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Runs `rdro merge`.
pub fn run(args: MergeArgs) -> Result<()> {
    let mut hub = HubOptions::from_env();
    hub.revision = args.revision.clone();
    let resolved = resolve_model(&args.base, &hub)
        .with_context(|| format!("resolving the base {}", args.base))?;
    let base_dir = match &resolved.source {
        ModelSource::Folder(dir) => dir.clone(),
        ModelSource::Gguf(path) => bail!(
            "{}: merging needs the original Hugging Face folder or Hub id of the base (its dense \
             safetensors weights), not a GGUF file",
            path.display()
        ),
    };
    let mut base_names = vec![args.base.clone()];
    base_names.extend(resolved.hub_id.clone());
    let options = MergeOptions {
        dtype: args.dtype,
        force: args.force,
        max_shard_bytes: args.max_shard_size,
        gguf: args.gguf,
        base_names,
        replace: args.overwrite,
        progress: true,
    };
    let report = merge_adapter(&base_dir, &args.adapter, &args.out, &options)
        .with_context(|| format!("merging {} into {}", args.adapter.display(), args.base))?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "merged {} module(s) of {} into {}: {} tensors, {} in {} file(s), {}",
        report.merged_modules.len(),
        args.adapter.display(),
        args.out.display(),
        report.tensors,
        megabytes(report.total_bytes),
        report.weight_files.len(),
        args.dtype
    );
    if let Some(g) = &report.gguf {
        println!(
            "wrote {} ({}, {} tensors)",
            g.path.display(),
            megabytes(g.bytes),
            g.tensors
        );
        for line in g.fallback_summary() {
            println!("  {line}");
        }
        if !g.tokenizer {
            eprintln!("warning: no tokenizer.json in the base: the GGUF holds no tokenizer (llama.cpp needs one to run)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert!(parse_size("5 parsecs").unwrap_err().contains("unit"));
        assert!(parse_size("0").is_err());
    }
}
