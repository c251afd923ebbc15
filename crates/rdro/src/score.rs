//! Scoring: summed completion log-probs of tokenized examples under the base (adapter off) and,
//! optionally, under the adapter — what `rdro score` prints.

use rdro_lora::ForwardMode;
use rdro_models::{Batch, LlamaModel, ModelError};
use serde::Serialize;

use crate::data::TokenizedExample;

/// Scores of one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SequenceScore {
    /// Summed completion log-prob under the base.
    pub logp: f64,
    /// Number of completion tokens scored.
    pub n_tokens: usize,
    /// Summed completion log-prob with the adapter on, when an adapter is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logp_adapter: Option<f64>,
}

/// Scores every example, `batch_size` sequences at a time, in input order. `on_batch` is called
/// with the number of examples done (for progress bars).
pub fn score_examples(
    model: &LlamaModel,
    examples: &[TokenizedExample],
    batch_size: usize,
    with_adapter: bool,
    pad_id: u32,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<SequenceScore>, ModelError> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let rows: Vec<(&[u32], &[u32])> = chunk
            .iter()
            .map(|e| (e.prompt_ids.as_slice(), e.completion_ids.as_slice()))
            .collect();
        let batch = Batch::from_prompt_completion(&rows, pad_id)?;
        let base = model
            .token_log_probs(&batch, ForwardMode::REFERENCE)?
            .per_sequence()?
            .to_vec1::<f32>()?;
        let adapted = if with_adapter {
            Some(
                model
                    .token_log_probs(&batch, ForwardMode::POLICY_EVAL)?
                    .per_sequence()?
                    .to_vec1::<f32>()?,
            )
        } else {
            None
        };
        for (i, e) in chunk.iter().enumerate() {
            out.push(SequenceScore {
                logp: f64::from(base[i]),
                n_tokens: e.completion_ids.len(),
                logp_adapter: adapted.as_ref().map(|a| f64::from(a[i])),
            });
        }
        on_batch(out.len());
    }
    Ok(out)
}
