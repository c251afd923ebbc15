//! Preference data: reading, validating, rendering and tokenizing.
//!
//! Rows come in TRL's formats (see [`Row`]): unpaired `{prompt, completion, label}`, paired
//! `{prompt, chosen, rejected}`, each text a string or a list of `{role, content}` messages, plus
//! pre-tokenized `{prompt_ids, completion_ids, label}`. They are read from JSON Lines, JSON arrays,
//! Parquet files, folders in Hub layout or Hub data set ids ([`load_dataset`]), validated row by
//! row with file, line and field named ([`RowProblem`]), and turned into token ids
//! ([`tokenize_dataset`]) with the base model's chat template, exactly as transformers renders and
//! tokenizes them, and truncated as TRL's trainers truncate.
//!
//! The usual entry point is [`prepare`], which does all of it from a [`DataConfig`] (the `[data]`
//! section of a training config).

mod error;
mod hub;
mod read;
mod row;
mod template;
mod tokenize;
mod tokenizer;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use error::{DataError, Position, RowProblem, RowSource, MAX_LISTED_PROBLEMS};
pub use hub::{dataset_files, is_hub_id, model_files, path_matches_split, split_files};
pub use rdro_models::hub::{HubOptions, RepoKind};
pub use read::{
    read_file, read_json_text, read_jsonl_text, read_parquet, resolve, FileFormat, Record,
};
pub use row::{parse_row, Message, Role, Row, RowKind, SourcedRow, Text};
pub use template::{strftime, ChatTemplate, TemplateTokens};
pub use tokenize::{
    tokenize_dataset, truncate, ConversationError, ConversationIds, Encoder, ExampleLengths,
    TokenizeOptions, TokenizedDataset, TokenizedExample, TruncationConfig, TruncationMode,
    TruncationOutcome,
};
pub use tokenizer::TokenizerBundle;

/// Default `max_length` (TRL's default).
pub const DEFAULT_MAX_LENGTH: usize = 1024;
/// Default `max_prompt_length` (TRL's default).
pub const DEFAULT_MAX_PROMPT_LENGTH: usize = 512;

/// Validated rows of one data set (one or more files of one split).
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The name it was loaded by (path or Hub id).
    pub name: String,
    /// The files read, in order.
    pub files: Vec<String>,
    /// The valid rows, in input order.
    pub rows: Vec<SourcedRow>,
    /// The rows' format (all rows share one).
    pub kind: RowKind,
    /// Rows in the input, invalid ones included.
    pub total_rows: usize,
    /// Problems of the rows skipped with `skip_invalid`.
    pub skipped: Vec<RowProblem>,
    /// How many rows were skipped.
    pub skipped_rows: usize,
}

impl Dataset {
    /// Fraction of examples labelled desirable once pairs are split (0.5 for paired data): the
    /// value `alpha = "auto"` takes.
    pub fn preferred_fraction(&self) -> f64 {
        let (good, all) = self
            .rows
            .iter()
            .fold((0usize, 0usize), |(good, all), r| match &r.row {
                Row::Paired { .. } => (good + 1, all + 2),
                Row::Unpaired { label, .. } | Row::Pretokenized { label, .. } => {
                    (good + usize::from(*label), all + 1)
                }
            });
        if all == 0 {
            0.0
        } else {
            good as f64 / all as f64
        }
    }

    /// Counts of (standard, conversational) text rows.
    pub fn text_styles(&self) -> (usize, usize) {
        let conversational = self
            .rows
            .iter()
            .filter(|r| r.row.is_conversational())
            .count();
        let text = self.rows.iter().filter(|r| r.row.needs_tokenizer()).count();
        (text - conversational, conversational)
    }
}

/// Validates records (from one or more files) into a [`Dataset`]: every row's problems are
/// collected; with `skip_invalid` bad rows are skipped and counted, otherwise any problem fails
/// the load with [`DataError::InvalidRows`].
pub fn validate_records(
    name: &str,
    files: Vec<String>,
    records: Vec<Record>,
    skip_invalid: bool,
) -> Result<Dataset, DataError> {
    let total_rows = records.len();
    let mut rows = Vec::with_capacity(records.len());
    let mut problems = Vec::new();
    let mut kind: Option<(RowKind, RowSource)> = None;
    for (index, (source, value)) in records.into_iter().enumerate() {
        let value = match value {
            Ok(value) => value,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        match parse_row(&value, &source) {
            Ok(row) => {
                let this = row.kind();
                match &kind {
                    None => kind = Some((this, source.clone())),
                    Some((first, first_source)) if *first != this => {
                        problems.push(RowProblem::row(
                            source.clone(),
                            format!(
                                "this row is {} ({}) but the data set is {} (first row at {first_source}); \
                                 a data set holds one row format",
                                this.name(),
                                this.fields().join(", "),
                                first.name()
                            ),
                        ));
                        continue;
                    }
                    Some(_) => {}
                }
                rows.push(SourcedRow { row, source, index });
            }
            Err(row_problems) => problems.extend(row_problems),
        }
    }
    if !problems.is_empty() && !skip_invalid {
        return Err(DataError::invalid_rows(problems));
    }
    let Some((kind, _)) = kind else {
        return Err(if problems.is_empty() {
            DataError::Empty(name.to_string())
        } else {
            DataError::invalid_rows(problems)
        });
    };
    let skipped_rows = error::count_rows(&problems);
    Ok(Dataset {
        name: name.to_string(),
        files,
        rows,
        kind,
        total_rows,
        skipped: problems,
        skipped_rows,
    })
}

/// Reads and validates a data set: a file, a folder, or a Hub data set id, for `split`.
pub fn load_dataset(
    spec: &str,
    split: &str,
    skip_invalid: bool,
    hub_options: &HubOptions,
) -> Result<Dataset, DataError> {
    let paths = resolve(spec, split, hub_options)?;
    let mut records = Vec::new();
    let mut files = Vec::new();
    for path in &paths {
        records.extend(read_file(path)?);
        files.push(path.display().to_string());
    }
    validate_records(spec, files, records, skip_invalid)
}

/// The `[data]` section of a training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training data: a .jsonl/.json/.parquet file, a folder, or a Hub data set id. A folder or
    /// Hub id may end with `:SPLIT` to read that split (`owner/name:test`).
    pub train: String,
    /// Evaluation data, same forms as `train` (`owner/name:test` reads the test split).
    #[serde(default)]
    pub eval: Option<String>,
    /// The split to read from folders and Hub data sets.
    #[serde(default = "default_split")]
    pub split: String,
    /// Without `eval`, the fraction of training rows held out for evaluation (0 for none).
    #[serde(default)]
    pub eval_fraction: f64,
    /// Limit on prompt + completion tokens.
    #[serde(default = "default_max_length")]
    pub max_length: Option<usize>,
    /// What an over-long prompt is cut to.
    #[serde(default = "default_max_prompt_length")]
    pub max_prompt_length: Option<usize>,
    /// Which end of an over-long prompt to keep: "keep_end" or "keep_start".
    #[serde(default)]
    pub truncation: TruncationMode,
    /// A chat template replacing the base model's: Jinja text, or the path of a file holding it.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// Skip and count invalid rows instead of failing.
    #[serde(default)]
    pub skip_invalid: bool,
}

fn default_split() -> String {
    "train".to_string()
}

fn default_max_length() -> Option<usize> {
    Some(DEFAULT_MAX_LENGTH)
}

fn default_max_prompt_length() -> Option<usize> {
    Some(DEFAULT_MAX_PROMPT_LENGTH)
}

impl DataConfig {
    /// A config reading `train` with every other setting at its default.
    pub fn new(train: impl Into<String>) -> Self {
        Self {
            train: train.into(),
            eval: None,
            split: default_split(),
            eval_fraction: 0.0,
            max_length: default_max_length(),
            max_prompt_length: default_max_prompt_length(),
            truncation: TruncationMode::default(),
            chat_template: None,
            skip_invalid: false,
        }
    }

    /// The length limits.
    pub fn truncation(&self) -> TruncationConfig {
        TruncationConfig {
            max_length: self.max_length,
            max_prompt_length: self.max_prompt_length,
            mode: self.truncation,
        }
    }

    /// Checks settings that do not depend on the data.
    pub fn validate(&self) -> Result<(), DataError> {
        self.truncation().validate()?;
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return Err(DataError::Config(format!(
                "eval_fraction must be in [0, 1), found {}",
                self.eval_fraction
            )));
        }
        if self.eval.is_some() && self.eval_fraction > 0.0 {
            return Err(DataError::Config(
                "set either eval or eval_fraction, not both".into(),
            ));
        }
        Ok(())
    }

    /// The override template's text: `chat_template` itself when it holds Jinja (`{{` or `{%`),
    /// else the contents of the file it names.
    pub fn chat_template_source(&self) -> Result<Option<String>, DataError> {
        chat_template_source(self.chat_template.as_deref())
    }

    /// Options for [`tokenize_dataset`].
    pub fn tokenize_options(&self) -> Result<TokenizeOptions, DataError> {
        Ok(TokenizeOptions {
            truncation: self.truncation(),
            skip_invalid: self.skip_invalid,
            vocab_size: None,
            chat_template: self.chat_template_source()?,
        })
    }
}

/// Reads a template override: Jinja text as is (it holds `{{` or `{%`), else a file's contents.
pub fn chat_template_source(value: Option<&str>) -> Result<Option<String>, DataError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.contains("{{") || value.contains("{%") {
        return Ok(Some(value.to_string()));
    }
    let path = Path::new(value);
    if !path.is_file() {
        return Err(DataError::Config(format!(
            "chat_template {value:?} is neither Jinja text nor an existing file"
        )));
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| DataError::io(path, e))
}

/// Training and evaluation data, tokenized.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedData {
    /// Training examples.
    pub train: TokenizedDataset,
    /// Evaluation examples (from `eval`, or held out with `eval_fraction`).
    pub eval: Option<TokenizedDataset>,
}

/// Everything from a `[data]` section: reads `train` (and `eval`), validates, tokenizes with
/// `tokenizer` (needed for text rows), truncates, and holds out `eval_fraction` of the training
/// rows (chosen with `seed`) when no `eval` is given.
pub fn prepare(
    config: &DataConfig,
    tokenizer: Option<&TokenizerBundle>,
    hub_options: &HubOptions,
    seed: u64,
) -> Result<PreparedData, DataError> {
    config.validate()?;
    let options = config.tokenize_options()?;
    let load = |spec: &str| -> Result<TokenizedDataset, DataError> {
        let dataset = load_dataset(spec, &config.split, config.skip_invalid, hub_options)?;
        tokenize_dataset(&dataset, tokenizer, &options)
    };
    let train = load(&config.train)?;
    let (train, eval) = match &config.eval {
        Some(eval) => (train, Some(load(eval)?)),
        None if config.eval_fraction > 0.0 => {
            let (train, eval) = train.split_eval(config.eval_fraction, seed);
            (train, (!eval.examples.is_empty()).then_some(eval))
        }
        None => (train, None),
    };
    Ok(PreparedData { train, eval })
}

/// The `p`-th percentile (0–100) of `values` by the nearest-rank method; 0 for no values.
pub fn percentile(values: &[usize], p: f64) -> usize {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
