//! `rdro data inspect` and `rdro data tokenize`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rdro::data::{
    chat_template_source, load_dataset, percentile, tokenize_dataset, Dataset, HubOptions,
    TokenizeOptions, TokenizedDataset, TokenizerBundle, TruncationConfig, TruncationMode,
    DEFAULT_MAX_LENGTH, DEFAULT_MAX_PROMPT_LENGTH,
};

/// Settings shared by both subcommands (the `[data]` keys that matter without a model).
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Data: a .jsonl/.json/.parquet file, a folder, or a Hub data set id (owner/name).
    #[arg(long)]
    pub data: String,
    /// Split to read from folders and Hub data sets.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Limit on prompt + completion tokens (0: no limit).
    #[arg(long, default_value_t = DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    /// What an over-long prompt is cut to (0: not set).
    #[arg(long, default_value_t = DEFAULT_MAX_PROMPT_LENGTH)]
    pub max_prompt_length: usize,
    /// Which end of an over-long prompt to keep: keep_end or keep_start.
    #[arg(long, default_value = "keep_end")]
    pub truncation: TruncationMode,
    /// Chat template replacing the base model's: Jinja text or a file.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// Skip and count invalid rows instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
}

impl DataArgs {
    fn options(&self) -> Result<TokenizeOptions> {
        let truncation = TruncationConfig {
            max_length: (self.max_length > 0).then_some(self.max_length),
            max_prompt_length: (self.max_prompt_length > 0 && self.max_length > 0)
                .then_some(self.max_prompt_length),
            mode: self.truncation,
        };
        truncation.validate()?;
        Ok(TokenizeOptions {
            truncation,
            skip_invalid: self.skip_invalid,
            vocab_size: None,
            chat_template: chat_template_source(self.chat_template.as_deref())?,
        })
    }
}

/// `rdro data ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DataCommand {
    /// Row counts, preferred fraction, token lengths, truncation, and one rendered example.
    Inspect {
        /// Shared data settings.
        #[command(flatten)]
        args: DataArgs,
        /// Base model whose tokenizer and chat template to use: a folder (tokenizer.json and
        /// tokenizer_config.json suffice) or a Hub id. Needed for token counts of text rows.
        #[arg(long)]
        base: Option<String>,
    },
    /// Write the rows as training sees them, pre-tokenized, one JSON line each, in input order.
    Tokenize {
        /// Shared data settings.
        #[command(flatten)]
        args: DataArgs,
        /// Base model: a folder (tokenizer.json and tokenizer_config.json suffice) or a Hub id.
        #[arg(long)]
        base: String,
        /// Output file (JSON Lines of {prompt_ids, completion_ids, label}).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs a `data` subcommand, printing to stdout.
pub fn run(cmd: DataCommand) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cmd {
        DataCommand::Inspect { args, base } => {
            let report = inspect(&args, base.as_deref())?;
            out.write_all(report.as_bytes())?;
        }
        DataCommand::Tokenize {
            args,
            base,
            out: path,
        } => {
            let summary = tokenize(&args, &base, &path)?;
            writeln!(out, "{summary}")?;
        }
    }
    Ok(())
}

fn load_tokenizer(base: &str, hub: &HubOptions) -> Result<TokenizerBundle> {
    TokenizerBundle::from_pretrained(base, hub)
        .with_context(|| format!("loading the tokenizer of {base}"))
}

fn load(args: &DataArgs, hub: &HubOptions) -> Result<Dataset> {
    load_dataset(&args.data, &args.split, args.skip_invalid, hub)
        .with_context(|| format!("reading {}", args.data))
}

/// Builds the `inspect` report.
pub fn inspect(args: &DataArgs, base: Option<&str>) -> Result<String> {
    let hub = HubOptions::from_env();
    let options = args.options()?;
    let dataset = load(args, &hub)?;
    let tokenizer = base.map(|b| load_tokenizer(b, &hub)).transpose()?;
    let needs_tokenizer = dataset.rows.iter().any(|r| r.row.needs_tokenizer());

    let mut report = String::new();
    let w = &mut report;
    writeln!(w, "data: {}", dataset.name)?;
    for file in &dataset.files {
        writeln!(w, "  file: {file}")?;
    }
    let (standard, conversational) = dataset.text_styles();
    writeln!(
        w,
        "format: {} ({}); {standard} standard, {conversational} conversational, {} pre-tokenized",
        dataset.kind.name(),
        dataset.kind.fields().join(", "),
        dataset.rows.len() - standard - conversational
    )?;
    writeln!(
        w,
        "rows: {} read, {} valid, {} skipped as invalid",
        dataset.total_rows,
        dataset.rows.len(),
        dataset.skipped_rows
    )?;

    if needs_tokenizer && tokenizer.is_none() {
        writeln!(
            w,
            "preferred fraction (alpha = \"auto\"): {:.4}",
            dataset.preferred_fraction()
        )?;
        writeln!(
            w,
            "token lengths: pass --base MODEL (a folder with tokenizer.json and tokenizer_config.json, or a Hub id)"
        )?;
        for problem in dataset.skipped.iter().take(5) {
            writeln!(w, "  skipped: {problem}")?;
        }
        return Ok(report);
    }

    let data = tokenize_dataset(&dataset, tokenizer.as_ref(), &options)?;
    if data.skipped_rows > dataset.skipped_rows {
        writeln!(
            w,
            "tokenization: {} more rows skipped as invalid",
            data.skipped_rows - dataset.skipped_rows
        )?;
    }
    for problem in data.skipped.iter().take(5) {
        writeln!(w, "  skipped: {problem}")?;
    }
    writeln!(
        w,
        "examples: {}{}",
        data.examples.len(),
        if data.is_paired() {
            " (each pair gives a chosen and a rejected example)"
        } else {
            ""
        }
    )?;
    writeln!(
        w,
        "preferred fraction (alpha = \"auto\"): {:.4}",
        data.preferred_fraction()
    )?;
    write_lengths(w, &data)?;
    write_truncation(w, &data, &options.truncation)?;
    if let (Some(tokenizer), Some(example)) = (tokenizer.as_ref(), data.examples.first()) {
        writeln!(w, "example ({}, label {}):", example.source, example.label)?;
        writeln!(w, "--- prompt ({} tokens) ---", example.prompt_ids.len())?;
        writeln!(w, "{}", tokenizer.decode(&example.prompt_ids)?)?;
        writeln!(
            w,
            "--- completion ({} tokens, starts at token {}) ---",
            example.completion_ids.len(),
            example.prompt_ids.len()
        )?;
        writeln!(w, "{}", tokenizer.decode(&example.completion_ids)?)?;
        writeln!(w, "--- end ---")?;
    }
    Ok(report)
}

fn write_lengths(w: &mut String, data: &TokenizedDataset) -> Result<()> {
    let prompt: Vec<usize> = data.lengths.iter().map(|l| l.prompt).collect();
    let completion: Vec<usize> = data.lengths.iter().map(|l| l.completion).collect();
    let total: Vec<usize> = data
        .lengths
        .iter()
        .map(|l| l.prompt + l.completion)
        .collect();
    writeln!(w, "token lengths before truncation:")?;
    writeln!(
        w,
        "  {:<11}{:>8}{:>8}{:>8}{:>8}{:>8}",
        "", "p50", "p90", "p95", "p99", "max"
    )?;
    for (name, values) in [
        ("prompt", &prompt),
        ("completion", &completion),
        ("total", &total),
    ] {
        writeln!(
            w,
            "  {name:<11}{:>8}{:>8}{:>8}{:>8}{:>8}",
            percentile(values, 50.0),
            percentile(values, 90.0),
            percentile(values, 95.0),
            percentile(values, 99.0),
            percentile(values, 100.0)
        )?;
    }
    Ok(())
}

fn write_truncation(
    w: &mut String,
    data: &TokenizedDataset,
    config: &TruncationConfig,
) -> Result<()> {
    let Some(max) = config.max_length else {
        writeln!(w, "truncation: off")?;
        return Ok(());
    };
    let prompts = data.lengths.iter().filter(|l| l.prompt_truncated).count();
    let completions = data
        .lengths
        .iter()
        .filter(|l| l.completion_truncated)
        .count();
    let any = data
        .lengths
        .iter()
        .filter(|l| l.prompt_truncated || l.completion_truncated)
        .count();
    let mode = match config.mode {
        TruncationMode::KeepEnd => "keep_end",
        TruncationMode::KeepStart => "keep_start",
    };
    let prompt_limit = config
        .max_prompt_length
        .map_or("none".to_string(), |n| n.to_string());
    writeln!(
        w,
        "truncation (max_length {max}, max_prompt_length {prompt_limit}, {mode}): {any} of {} examples truncated ({prompts} prompts, {completions} completions)",
        data.examples.len()
    )?;
    Ok(())
}

/// Writes the pre-tokenized rows; returns a one-line summary.
pub fn tokenize(args: &DataArgs, base: &str, path: &std::path::Path) -> Result<String> {
    let hub = HubOptions::from_env();
    let options = args.options()?;
    let dataset = load(args, &hub)?;
    let tokenizer = load_tokenizer(base, &hub)?;
    let data = tokenize_dataset(&dataset, Some(&tokenizer), &options)?;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    for example in &data.examples {
        let line = serde_json::json!({
            "prompt_ids": example.prompt_ids,
            "completion_ids": example.completion_ids,
            "label": example.label,
        });
        writeln!(writer, "{line}").with_context(|| format!("writing {}", path.display()))?;
    }
    writer
        .flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(format!(
        "wrote {} rows to {} ({} input rows, {} skipped as invalid)",
        data.examples.len(),
        path.display(),
        data.total_rows,
        data.skipped_rows
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn args(data: PathBuf) -> DataArgs {
        DataArgs {
            data: data.to_str().unwrap().to_string(),
            split: "train".into(),
            max_length: DEFAULT_MAX_LENGTH,
            max_prompt_length: DEFAULT_MAX_PROMPT_LENGTH,
            truncation: TruncationMode::KeepEnd,
            chat_template: None,
            skip_invalid: false,
        }
    }

    #[test]
    fn inspect_without_a_base_counts_rows() {
        let report = inspect(
            &args(repo().join("tests/data/valid/unpaired_standard.jsonl")),
            None,
        )
        .unwrap();
        assert!(
            report.contains("rows: 3 read, 3 valid, 0 skipped"),
            "{report}"
        );
        assert!(
            report.contains("preferred fraction (alpha = \"auto\"): 0.6667"),
            "{report}"
        );
        assert!(report.contains("pass --base MODEL"), "{report}");
    }

    #[test]
    fn inspect_pretokenized_rows_shows_lengths() {
        let report = inspect(
            &args(repo().join("tests/data/valid/pretokenized.jsonl")),
            None,
        )
        .unwrap();
        assert!(report.contains("examples: 2"), "{report}");
        assert!(
            report.contains("  prompt            2       3       3       3       3"),
            "{report}"
        );
        assert!(report.contains("0 of 2 examples truncated"), "{report}");
    }

    #[test]
    fn inspect_and_tokenize_with_the_real_tokenizer() {
        let base = repo().join(".cache/tokenizers/qwen3");
        assert!(
            base.join("tokenizer.json").is_file(),
            "{} is missing: run `cargo xtask fetch-tokenizers`",
            base.display()
        );
        let data = repo().join("tests/data/valid/paired_conversational.json");
        let report = inspect(&args(data.clone()), Some(base.to_str().unwrap())).unwrap();
        assert!(report.contains("examples: 4 (each pair"), "{report}");
        assert!(
            report.contains("preferred fraction (alpha = \"auto\"): 0.5000"),
            "{report}"
        );
        assert!(
            report.contains("<|im_start|>assistant\n\n--- completion"),
            "{report}"
        );
        assert!(report.contains("4<|im_end|>\n--- end ---"), "{report}");

        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ids.jsonl");
        let summary = tokenize(&args(data), base.to_str().unwrap(), &out).unwrap();
        assert!(summary.starts_with("wrote 4 rows"), "{summary}");
        // The output is valid pre-tokenized data, and reads back to the same examples.
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text.lines().count(), 4);
        let again = inspect(&args(out), None).unwrap();
        assert!(again.contains("rows: 4 read, 4 valid"), "{again}");
    }
}
