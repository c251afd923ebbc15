//! Rows to token ids: chat template rendering, the prompt/completion boundary, truncation.
//!
//! Conversational rows: `prompt_ids` is the prompt rendered with `add_generation_prompt = true`,
//! the completion is what the full conversation's ids add after it (transformers'
//! `apply_chat_template(..., tokenize=True)` for both, so never a second BOS), cut right after its
//! last end-of-turn token (Llama 3's `<|eot_id|>`, Qwen's `<|im_end|>`), or with EOS appended when
//! the template closes no turn. A prompt whose ids are not a prefix of the conversation's is
//! reported: training would see a context the model never sees at inference.
//!
//! Standard (string) rows are tokenized as TRL does: EOS text appended to the completion unless it
//! ends with it, `tokenizer(prompt)` and `tokenizer(prompt + completion)` with the tokenizer's own
//! special tokens, and the completion starting where the two diverge (a token that merges across
//! the boundary goes to the completion). A doubled leading BOS is collapsed.
//!
//! Truncation follows TRL's DPO/KTO trainers: when prompt + completion (for a pair, the longer
//! completion) exceeds `max_length`, the prompt is cut to `max_prompt_length` (`keep_end` keeps
//! its last tokens, `keep_start` its first); if still too long, every completion is cut to
//! `max_length - max_prompt_length` tokens (or to `max_length - prompt length` when
//! `max_prompt_length` is not set). A row whose completion would be cut away entirely is reported,
//! never trained on.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::error::{count_rows, DataError, RowProblem, RowSource};
use super::row::{Message, Row, RowKind, SourcedRow, Text};
use super::template::ChatTemplate;
use super::tokenizer::TokenizerBundle;
use super::Dataset;

/// Which end of an over-long prompt to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationMode {
    /// Keep the prompt's last tokens (TRL's default).
    #[default]
    KeepEnd,
    /// Keep the prompt's first tokens.
    KeepStart,
}

impl std::str::FromStr for TruncationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "keep_end" => Ok(TruncationMode::KeepEnd),
            "keep_start" => Ok(TruncationMode::KeepStart),
            other => Err(format!(
                "unknown truncation mode {other:?}: expected keep_end or keep_start"
            )),
        }
    }
}

/// Length limits, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruncationConfig {
    /// Limit on prompt + completion; `None` disables truncation.
    pub max_length: Option<usize>,
    /// What an over-long prompt is cut to; needs `max_length`.
    pub max_prompt_length: Option<usize>,
    /// Which end of the prompt to keep.
    pub mode: TruncationMode,
}

impl Default for TruncationConfig {
    fn default() -> Self {
        Self {
            max_length: Some(super::DEFAULT_MAX_LENGTH),
            max_prompt_length: Some(super::DEFAULT_MAX_PROMPT_LENGTH),
            mode: TruncationMode::KeepEnd,
        }
    }
}

impl TruncationConfig {
    /// No truncation at all.
    pub fn none() -> Self {
        Self {
            max_length: None,
            max_prompt_length: None,
            mode: TruncationMode::KeepEnd,
        }
    }

    /// Checks the limits are consistent.
    pub fn validate(&self) -> Result<(), DataError> {
        match (self.max_length, self.max_prompt_length) {
            (Some(0), _) => Err(DataError::Config("max_length must be at least 1".into())),
            (None, Some(_)) => Err(DataError::Config(
                "max_prompt_length is set but max_length is not".into(),
            )),
            (Some(max), Some(prompt)) if prompt >= max => Err(DataError::Config(format!(
                "max_prompt_length ({prompt}) must be smaller than max_length ({max})"
            ))),
            _ => Ok(()),
        }
    }
}

/// What truncation did to one prompt and its completions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TruncationOutcome {
    /// The prompt lost tokens.
    pub prompt_truncated: bool,
    /// At least one completion lost tokens.
    pub completion_truncated: bool,
}

/// Truncates a prompt and the completions that share it, as TRL's DPO/KTO trainers do.
pub fn truncate(
    prompt: &mut Vec<u32>,
    completions: &mut [&mut Vec<u32>],
    config: &TruncationConfig,
) -> TruncationOutcome {
    let mut outcome = TruncationOutcome::default();
    let Some(max_length) = config.max_length else {
        return outcome;
    };
    let longest = completions.iter().map(|c| c.len()).max().unwrap_or(0);
    if prompt.len() + longest > max_length {
        if let Some(keep) = config.max_prompt_length {
            if prompt.len() > keep {
                match config.mode {
                    TruncationMode::KeepStart => prompt.truncate(keep),
                    TruncationMode::KeepEnd => {
                        prompt.drain(..prompt.len() - keep);
                    }
                }
                outcome.prompt_truncated = true;
            }
        }
    }
    if prompt.len() + longest > max_length {
        let keep = max_length.saturating_sub(config.max_prompt_length.unwrap_or(prompt.len()));
        for completion in completions.iter_mut() {
            if completion.len() > keep {
                completion.truncate(keep);
                outcome.completion_truncated = true;
            }
        }
    }
    outcome
}

/// Settings for [`tokenize_dataset`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizeOptions {
    /// Length limits.
    pub truncation: TruncationConfig,
    /// Skip and count bad rows instead of failing.
    pub skip_invalid: bool,
    /// Ids must be below this; defaults to the tokenizer's vocabulary size when one is given.
    pub vocab_size: Option<usize>,
    /// A Jinja chat template used instead of the tokenizer's.
    pub chat_template: Option<String>,
}

/// One sequence as the trainer consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    /// Context ids (masked out of the loss).
    pub prompt_ids: Vec<u32>,
    /// Scored ids.
    pub completion_ids: Vec<u32>,
    /// Desirable (`true`) or not; for pairs, chosen is `true` and rejected `false`.
    pub label: bool,
    /// For the two halves of a paired row, the row's index (chosen comes first, right before
    /// rejected); `None` for unpaired and pre-tokenized rows.
    pub pair_id: Option<usize>,
    /// The source row's index in the input (rows skipped as invalid still count).
    pub index: usize,
    /// The source row's file and line (or Parquet row).
    pub source: RowSource,
}

/// Lengths of one example before truncation, and whether it was truncated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExampleLengths {
    /// Prompt tokens before truncation.
    pub prompt: usize,
    /// Completion tokens before truncation.
    pub completion: usize,
    /// Truncation shortened the prompt.
    pub prompt_truncated: bool,
    /// Truncation shortened the completion.
    pub completion_truncated: bool,
}

/// A data set turned into token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedDataset {
    /// The examples, in input order (a pair gives chosen then rejected).
    pub examples: Vec<TokenizedExample>,
    /// Lengths before truncation, one per example.
    pub lengths: Vec<ExampleLengths>,
    /// The rows' format.
    pub kind: RowKind,
    /// Rows in the input, invalid ones included.
    pub total_rows: usize,
    /// Problems of the rows skipped (read or tokenization), with `skip_invalid`.
    pub skipped: Vec<RowProblem>,
    /// How many rows were skipped.
    pub skipped_rows: usize,
}

impl TokenizedDataset {
    /// Fraction of examples labelled desirable: the value `alpha = "auto"` takes (0.5 for pairs).
    pub fn preferred_fraction(&self) -> f64 {
        if self.examples.is_empty() {
            return 0.0;
        }
        self.examples.iter().filter(|e| e.label).count() as f64 / self.examples.len() as f64
    }

    /// True for a data set of pairs.
    pub fn is_paired(&self) -> bool {
        self.kind == RowKind::Paired
    }

    /// For paired data, the positions of each (chosen, rejected) couple in `examples`.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        self.examples
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0].pair_id.is_some() && w[0].pair_id == w[1].pair_id)
            .map(|(i, _)| (i, i + 1))
            .collect()
    }

    /// Splits off about `fraction` of the source rows (a pair stays whole) as an evaluation set,
    /// chosen at random with `seed`; input order is kept on both sides.
    pub fn split_eval(self, fraction: f64, seed: u64) -> (TokenizedDataset, TokenizedDataset) {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rows: Vec<usize> = self.examples.iter().map(|e| e.index).collect();
        rows.dedup();
        let n = rows.len();
        let mut take = (n as f64 * fraction).round() as usize;
        if fraction > 0.0 && n >= 2 {
            take = take.clamp(1, n - 1);
        } else {
            take = take.min(n);
        }
        let mut shuffled = rows.clone();
        shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let mut eval_rows: Vec<usize> = shuffled[..take].to_vec();
        eval_rows.sort_unstable();
        let mut train = TokenizedDataset {
            examples: Vec::new(),
            lengths: Vec::new(),
            kind: self.kind,
            total_rows: n - take,
            skipped: self.skipped,
            skipped_rows: self.skipped_rows,
        };
        let mut eval = TokenizedDataset {
            examples: Vec::new(),
            lengths: Vec::new(),
            kind: self.kind,
            total_rows: take,
            skipped: Vec::new(),
            skipped_rows: 0,
        };
        for (example, lengths) in self.examples.into_iter().zip(self.lengths) {
            let side = if eval_rows.binary_search(&example.index).is_ok() {
                &mut eval
            } else {
                &mut train
            };
            side.examples.push(example);
            side.lengths.push(lengths);
        }
        (train, eval)
    }
}

/// Prompt and completion ids of one rendered conversation, before truncation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationIds {
    /// `apply_chat_template(prompt, add_generation_prompt=True)` ids.
    pub prompt_ids: Vec<u32>,
    /// `apply_chat_template(prompt + completion)` ids.
    pub full_ids: Vec<u32>,
    /// Where the completion starts in `full_ids` (the prompt's length when it is a prefix).
    pub boundary: usize,
    /// The completion: `full_ids[boundary..]` cut after its last end-of-turn token (or with EOS).
    pub completion_ids: Vec<u32>,
}

/// Why a conversation could not be tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationError {
    /// The prompt alone is at fault (else the completion, or how the two join).
    pub in_prompt: bool,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for ConversationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Renders, tokenizes and splits rows: one tokenizer and (compiled once, on first use) chat
/// template. Shareable between threads.
pub struct Encoder<'a> {
    tokenizer: &'a TokenizerBundle,
    template: OnceLock<Result<ChatTemplate, String>>,
    template_source: Option<String>,
}

impl<'a> Encoder<'a> {
    /// An encoder for `tokenizer`, with `chat_template` replacing the tokenizer's template.
    pub fn new(tokenizer: &'a TokenizerBundle, chat_template: Option<&str>) -> Self {
        Self {
            tokenizer,
            template: OnceLock::new(),
            template_source: chat_template
                .map(str::to_string)
                .or_else(|| tokenizer.chat_template().map(str::to_string)),
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TokenizerBundle {
        self.tokenizer
    }

    /// The compiled chat template.
    pub fn template(&self) -> Result<&ChatTemplate, DataError> {
        let compiled = self.template.get_or_init(|| match &self.template_source {
            Some(source) => ChatTemplate::new(source, self.tokenizer.template_tokens().clone()),
            None => Err(format!(
                "{} has no chat_template in tokenizer_config.json; set `chat_template` in [data] to render conversational rows",
                self.tokenizer.origin()
            )),
        });
        compiled
            .as_ref()
            .map_err(|message| DataError::Template(message.clone()))
    }

    /// Renders a conversation to text.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        self.template()?
            .render(messages, add_generation_prompt)
            .map_err(DataError::Template)
    }

    fn collapse_double_bos(&self, ids: &mut Vec<u32>) {
        if let Some(bos) = self.tokenizer.bos_token_id() {
            if ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
                ids.remove(0);
            }
        }
    }

    /// The prompt's ids: rendered with `add_generation_prompt = true`, no special tokens added.
    pub fn prompt_ids(&self, prompt: &[Message]) -> Result<Vec<u32>, ConversationError> {
        let in_prompt = |message: String| ConversationError {
            in_prompt: true,
            message,
        };
        let template = self.template().map_err(|e| in_prompt(e.to_string()))?;
        let text = template
            .render(prompt, true)
            .map_err(|e| in_prompt(format!("the chat template failed: {e}")))?;
        let mut ids = self
            .tokenizer
            .encode(&text, false)
            .map_err(|e| in_prompt(e.to_string()))?;
        self.collapse_double_bos(&mut ids);
        Ok(ids)
    }

    /// Conversation ids: prompt, full conversation, boundary and completion.
    pub fn conversation(
        &self,
        prompt: &[Message],
        completion: &[Message],
    ) -> Result<ConversationIds, ConversationError> {
        let prompt_ids = self.prompt_ids(prompt)?;
        self.completion(prompt, prompt_ids, completion)
    }

    /// Conversation ids for a prompt whose ids ([`Encoder::prompt_ids`]) are already known.
    pub fn completion(
        &self,
        prompt: &[Message],
        prompt_ids: Vec<u32>,
        completion: &[Message],
    ) -> Result<ConversationIds, ConversationError> {
        let in_completion = |message: String| ConversationError {
            in_prompt: false,
            message,
        };
        let tokenizer = self.tokenizer;
        let template = self.template().map_err(|e| in_completion(e.to_string()))?;
        let mut all = prompt.to_vec();
        all.extend_from_slice(completion);
        let full_text = template
            .render(&all, false)
            .map_err(|e| in_completion(format!("the chat template failed: {e}")))?;
        let mut full_ids = tokenizer
            .encode(&full_text, false)
            .map_err(|e| in_completion(e.to_string()))?;
        self.collapse_double_bos(&mut full_ids);
        let boundary = common_prefix(&prompt_ids, &full_ids);
        if boundary < prompt_ids.len() {
            return Err(in_completion(format!(
                "the chat template renders the prompt differently alone than followed by the \
                 completion (tokens diverge at {boundary} of the prompt's {}): the model would be \
                 trained on a context it never sees at inference",
                prompt_ids.len()
            )));
        }
        let mut completion_ids = full_ids[boundary..].to_vec();
        let end = completion_ids
            .iter()
            .rposition(|id| tokenizer.end_of_turn_ids().contains(id));
        match end {
            Some(last) => completion_ids.truncate(last + 1),
            None => completion_ids.extend(tokenizer.eos_token_id()),
        }
        Ok(ConversationIds {
            prompt_ids,
            full_ids,
            boundary,
            completion_ids,
        })
    }

    /// Standard (string) prompt and completion ids, as TRL tokenizes them.
    pub fn standard(&self, prompt: &str, completion: &str) -> Result<(Vec<u32>, Vec<u32>), String> {
        let tokenizer = self.tokenizer;
        let mut completion = completion.to_string();
        if let Some(eos) = tokenizer.eos_token() {
            if !completion.ends_with(eos) {
                completion.push_str(eos);
            }
        }
        let mut prompt_ids = tokenizer.encode(prompt, true).map_err(|e| e.to_string())?;
        let mut full_ids = tokenizer
            .encode(&format!("{prompt}{completion}"), true)
            .map_err(|e| e.to_string())?;
        self.collapse_double_bos(&mut prompt_ids);
        self.collapse_double_bos(&mut full_ids);
        let boundary = common_prefix(&prompt_ids, &full_ids);
        prompt_ids.truncate(boundary);
        Ok((prompt_ids, full_ids.split_off(boundary)))
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Prompt ids and (completion ids, label) of one row before truncation.
type Encoded = (Vec<u32>, Vec<(Vec<u32>, bool)>);

/// Token ids of one row, or the problem that stops it. Text rows need `encoder`.
fn encode_row(row: &SourcedRow, encoder: Option<&Encoder<'_>>) -> Result<Encoded, RowProblem> {
    let fail = |field: &str, message: String| RowProblem::field(row.source.clone(), field, message);
    let (prompt, completions): (&Text, Vec<(&str, &Text, bool)>) = match &row.row {
        Row::Pretokenized {
            prompt_ids,
            completion_ids,
            label,
        } => return Ok((prompt_ids.clone(), vec![(completion_ids.clone(), *label)])),
        Row::Unpaired {
            prompt,
            completion,
            label,
        } => (prompt, vec![("completion", completion, *label)]),
        Row::Paired {
            prompt,
            chosen,
            rejected,
        } => (
            prompt,
            vec![("chosen", chosen, true), ("rejected", rejected, false)],
        ),
    };
    let Some(encoder) = encoder else {
        return Err(RowProblem::row(
            row.source.clone(),
            "text rows need a tokenizer",
        ));
    };
    match prompt {
        Text::Conversational(prompt) => {
            let prompt_ids = encoder
                .prompt_ids(prompt)
                .map_err(|e| fail("prompt", e.message))?;
            let mut out = Vec::with_capacity(completions.len());
            for (field, text, label) in completions {
                let Text::Conversational(completion) = text else {
                    return Err(fail(
                        field,
                        "must be a list of messages, as `prompt` is".into(),
                    ));
                };
                let ids = encoder
                    .completion(prompt, prompt_ids.clone(), completion)
                    .map_err(|e| fail(if e.in_prompt { "prompt" } else { field }, e.message))?;
                out.push((ids.completion_ids, label));
            }
            Ok((prompt_ids, out))
        }
        Text::Standard(prompt) => {
            let mut encoded: Vec<(Vec<u32>, Vec<u32>, bool)> = Vec::new();
            for (field, text, label) in completions {
                let Text::Standard(completion) = text else {
                    return Err(fail(field, "must be a string, as `prompt` is".into()));
                };
                let (p, c) = encoder
                    .standard(prompt, completion)
                    .map_err(|e| fail(field, e))?;
                encoded.push((p, c, label));
            }
            // A token merging across the boundary can differ between chosen and rejected: the
            // prompt is their common part and each completion gets the rest, as TRL does.
            let keep = encoded
                .iter()
                .map(|(p, _, _)| p.as_slice())
                .reduce(|a, b| &a[..common_prefix(a, b)])
                .map_or(0, <[u32]>::len);
            let prompt_ids = encoded
                .first()
                .map(|(p, _, _)| p[..keep].to_vec())
                .unwrap_or_default();
            let out = encoded
                .into_iter()
                .map(|(p, c, label)| {
                    let mut ids = p[keep..].to_vec();
                    ids.extend(c);
                    (ids, label)
                })
                .collect();
            Ok((prompt_ids, out))
        }
    }
}

/// Turns a data set into token ids, ready for training. Text rows need `tokenizer`; pre-tokenized
/// rows do not, and are checked against the vocabulary when its size is known. Rows are encoded
/// in parallel; the output keeps input order.
pub fn tokenize_dataset(
    dataset: &Dataset,
    tokenizer: Option<&TokenizerBundle>,
    options: &TokenizeOptions,
) -> Result<TokenizedDataset, DataError> {
    use rayon::prelude::*;

    options.truncation.validate()?;
    if tokenizer.is_none() && dataset.rows.iter().any(|r| r.row.needs_tokenizer()) {
        return Err(DataError::TokenizerRequired(dataset.name.clone()));
    }
    let encoder = tokenizer.map(|t| Encoder::new(t, options.chat_template.as_deref()));
    if let Some(encoder) = &encoder {
        if dataset.rows.iter().any(|r| r.row.is_conversational()) {
            encoder.template()?;
        }
    }
    let encoded: Vec<Result<Encoded, RowProblem>> = dataset
        .rows
        .par_iter()
        .map(|row| encode_row(row, encoder.as_ref()))
        .collect();

    let vocab_size = options
        .vocab_size
        .or(tokenizer.map(TokenizerBundle::vocab_size));
    let mut examples = Vec::with_capacity(dataset.rows.len());
    let mut lengths = Vec::with_capacity(dataset.rows.len());
    let mut problems = Vec::new();
    for (row, encoded) in dataset.rows.iter().zip(encoded) {
        let (mut prompt, mut completions) = match encoded {
            Ok(encoded) => encoded,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let source = &row.source;
        let text = row.row.needs_tokenizer();
        let before = problems.len();
        if let Some(vocab) = vocab_size {
            let mut check = |field: &str, ids: &[u32]| {
                if let Some((i, id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab)
                {
                    problems.push(RowProblem::field(
                        source.clone(),
                        format!("{field}[{i}]"),
                        format!("token id {id} is outside the vocabulary (size {vocab})"),
                    ));
                }
            };
            check(if text { "prompt" } else { "prompt_ids" }, &prompt);
            for (ids, _) in &completions {
                check(if text { "completion" } else { "completion_ids" }, ids);
            }
        }
        if prompt.is_empty() {
            problems.push(RowProblem::field(
                source.clone(),
                if text { "prompt" } else { "prompt_ids" },
                "the prompt has no tokens, so the first completion token would have no context",
            ));
        }
        if problems.len() > before {
            continue;
        }
        let original: Vec<(usize, usize)> = completions
            .iter()
            .map(|(c, _)| (prompt.len(), c.len()))
            .collect();
        let mut refs: Vec<&mut Vec<u32>> = completions.iter_mut().map(|(c, _)| c).collect();
        let outcome = truncate(&mut prompt, &mut refs, &options.truncation);
        if completions.iter().any(|(c, _)| c.is_empty()) {
            let max = options.truncation.max_length.unwrap_or(0);
            problems.push(RowProblem::row(
                source.clone(),
                format!(
                    "the completion would be truncated away entirely (prompt {} tokens, max_length {max}); \
                     raise max_length or set max_prompt_length",
                    prompt.len()
                ),
            ));
            continue;
        }
        let paired = matches!(row.row, Row::Paired { .. });
        for ((completion, label), (p, c)) in completions.into_iter().zip(original) {
            lengths.push(ExampleLengths {
                prompt: p,
                completion: c,
                prompt_truncated: outcome.prompt_truncated,
                completion_truncated: completion.len() < c,
            });
            examples.push(TokenizedExample {
                prompt_ids: prompt.clone(),
                completion_ids: completion,
                label,
                pair_id: paired.then_some(row.index),
                index: row.index,
                source: source.clone(),
            });
        }
    }
    if !problems.is_empty() && !options.skip_invalid {
        return Err(DataError::invalid_rows(problems));
    }
    let skipped_rows = dataset.skipped_rows + count_rows(&problems);
    let mut skipped = dataset.skipped.clone();
    skipped.extend(problems);
    if examples.is_empty() {
        return Err(DataError::Empty(dataset.name.clone()));
    }
    Ok(TokenizedDataset {
        examples,
        lengths,
        kind: dataset.kind,
        total_rows: dataset.total_rows,
        skipped,
        skipped_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> Vec<u32> {
        (0..n).collect()
    }

    fn config(max: usize, prompt: Option<usize>, mode: TruncationMode) -> TruncationConfig {
        TruncationConfig {
            max_length: Some(max),
            max_prompt_length: prompt,
            mode,
        }
    }

    #[test]
    fn nothing_happens_within_limits() {
        let mut p = ids(4);
        let mut c = ids(6);
        let out = truncate(
            &mut p,
            &mut [&mut c],
            &config(10, Some(5), TruncationMode::KeepEnd),
        );
        assert_eq!(out, TruncationOutcome::default());
        assert_eq!((p.len(), c.len()), (4, 6));
    }

    #[test]
    fn keep_end_keeps_the_last_prompt_tokens() {
        let mut p = ids(8);
        let mut c = ids(4);
        let out = truncate(
            &mut p,
            &mut [&mut c],
            &config(10, Some(5), TruncationMode::KeepEnd),
        );
        assert_eq!(p, vec![3, 4, 5, 6, 7]);
        assert_eq!(c.len(), 4);
        assert!(out.prompt_truncated && !out.completion_truncated);
    }

    #[test]
    fn keep_start_keeps_the_first_prompt_tokens() {
        let mut p = ids(8);
        let mut c = ids(4);
        truncate(
            &mut p,
            &mut [&mut c],
            &config(10, Some(5), TruncationMode::KeepStart),
        );
        assert_eq!(p, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn completion_is_cut_to_max_length_minus_max_prompt_length() {
        // As in TRL: the completion keeps max_length - max_prompt_length tokens even when the
        // prompt is shorter than max_prompt_length.
        let mut p = ids(3);
        let mut c = ids(20);
        let out = truncate(
            &mut p,
            &mut [&mut c],
            &config(10, Some(5), TruncationMode::KeepEnd),
        );
        assert_eq!(p.len(), 3);
        assert_eq!(c, ids(5));
        assert!(!out.prompt_truncated && out.completion_truncated);
    }

    #[test]
    fn pairs_share_the_prompt_decision() {
        let mut p = ids(6);
        let mut chosen = ids(2);
        let mut rejected = ids(7);
        truncate(
            &mut p,
            &mut [&mut chosen, &mut rejected],
            &config(10, Some(4), TruncationMode::KeepEnd),
        );
        assert_eq!(p, vec![2, 3, 4, 5]);
        assert_eq!((chosen.len(), rejected.len()), (2, 6));
    }

    #[test]
    fn without_max_prompt_length_a_long_prompt_eats_the_completion() {
        let mut p = ids(12);
        let mut c = ids(3);
        truncate(
            &mut p,
            &mut [&mut c],
            &config(10, None, TruncationMode::KeepEnd),
        );
        assert_eq!(p.len(), 12);
        assert!(c.is_empty());
    }

    #[test]
    fn invalid_limits_are_rejected() {
        assert!(config(10, Some(10), TruncationMode::KeepEnd)
            .validate()
            .is_err());
        assert!(TruncationConfig {
            max_length: None,
            max_prompt_length: Some(3),
            mode: TruncationMode::KeepEnd
        }
        .validate()
        .is_err());
        assert!(TruncationConfig::none().validate().is_ok());
    }
}
