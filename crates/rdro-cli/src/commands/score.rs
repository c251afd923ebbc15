//! `rdro score`: summed completion log-probs of every row, under the base and an adapter.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rdro::data::{
    load_dataset, tokenize_dataset, HubOptions, TokenizeOptions, TokenizedExample, TokenizerBundle,
    TruncationConfig,
};
use rdro::score::{score_examples, SequenceScore};
use rdro_lora::peft::{read_weights, AdapterConfig};
use rdro_lora::QuantType;
use rdro_models::{load, LoadOptions, ModelSource};
use serde_json::json;

/// Arguments of `rdro score`.
#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// Base model: a Hugging Face folder or a .gguf file.
    #[arg(long)]
    pub base: PathBuf,
    /// A PEFT LoRA adapter folder; adds "logp_adapter" to every line.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// How to hold the frozen linear weights (none, q8_0, q4_0, q4k, q6k, ...).
    #[arg(long, default_value = "none")]
    pub quant: String,
    /// Rows to score: .jsonl, .json or .parquet (pre-tokenized rows need no tokenizer).
    #[arg(long)]
    pub data: String,
    /// Output file (JSON lines); standard output when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Truncate prompt + completion to this many tokens (keeping the prompt's end).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Split to read when --data is a folder or Hub data set.
    #[arg(long, default_value = "train")]
    pub split: String,
}

/// Runs `rdro score`.
pub fn run(args: ScoreArgs) -> Result<()> {
    let quant: QuantType = args.quant.parse().context("--quant")?;
    let source = ModelSource::from_path(&args.base)?;
    let hub = HubOptions::from_env();
    let dataset = load_dataset(&args.data, &args.split, false, &hub)?;
    let tokenizer = match &source {
        ModelSource::Folder(dir) if dir.join("tokenizer.json").is_file() => {
            Some(TokenizerBundle::from_dir(dir)?)
        }
        _ => None,
    };
    let options = TokenizeOptions {
        truncation: match args.max_length {
            Some(n) => TruncationConfig {
                max_length: Some(n),
                max_prompt_length: None,
                ..TruncationConfig::none()
            },
            None => TruncationConfig::none(),
        },
        ..Default::default()
    };
    let data = tokenize_dataset(&dataset, tokenizer.as_ref(), &options)?;

    let loaded = load(
        &source,
        &LoadOptions {
            quantization: quant,
            ..Default::default()
        },
    )
    .with_context(|| format!("loading {}", args.base.display()))?;
    for line in loaded.report.summary() {
        eprintln!("quantization: {line}");
    }
    let mut model = loaded.model;
    if let Some(dir) = &args.adapter {
        let config = AdapterConfig::read(dir)?;
        let tensors = read_weights(dir, model.device())?;
        model
            .load_adapter(&config.lora_config(), &tensors)
            .with_context(|| format!("applying the adapter {}", dir.display()))?;
    }
    let vocab = model.config.vocab_size;
    if let Some(bad) = data.examples.iter().find(|e| {
        e.prompt_ids
            .iter()
            .chain(&e.completion_ids)
            .any(|&i| i as usize >= vocab)
    }) {
        bail!(
            "{}: token ids outside the model's vocabulary (size {vocab})",
            bad.source
        );
    }
    // Padding never reaches a score (masked), so any id in the vocabulary will do.
    let pad = 0;
    let progress = indicatif::ProgressBar::new(data.examples.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "scoring {bar:30} {pos}/{len} rows [{elapsed} < {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let scores = score_examples(
        &model,
        &data.examples,
        args.batch_size,
        args.adapter.is_some(),
        pad,
        |n| progress.set_position(n as u64),
    )?;
    progress.finish_and_clear();
    let lines = render(&data.examples, &scores);
    write_lines(args.out.as_deref(), &lines)
}

/// One JSON line per input row; a paired row gives its chosen and rejected scores together.
fn render(examples: &[TokenizedExample], scores: &[SequenceScore]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut i = 0;
    while i < examples.len() {
        let e = &examples[i];
        let paired =
            e.pair_id.is_some() && examples.get(i + 1).is_some_and(|n| n.pair_id == e.pair_id);
        if paired {
            lines.push(
                json!({"index": e.index, "chosen": scores[i], "rejected": scores[i + 1]})
                    .to_string(),
            );
            i += 2;
        } else {
            let mut v =
                json!({"index": e.index, "logp": scores[i].logp, "n_tokens": scores[i].n_tokens});
            if let Some(a) = scores[i].logp_adapter {
                v["logp_adapter"] = json!(a);
            }
            lines.push(v.to_string());
            i += 1;
        }
    }
    lines
}

fn write_lines(out: Option<&Path>, lines: &[String]) -> Result<()> {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    match out {
        None => std::io::stdout().write_all(text.as_bytes())?,
        Some(path) => {
            // Write next to the target, then rename: a failed run leaves no partial file.
            let tmp = path.with_extension("jsonl.partial");
            std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
