//! A right-padded batch of token sequences with the positions whose log-probs are wanted.

use candle_core::{Device, Tensor};

use crate::{ModelError, Result};

/// Right-padded token rows. Position `j` of row `b` is a *target* when the log-prob of token
/// `input_ids[b][j]` given the tokens before it is wanted (the completion tokens); targets are
/// never at position 0 and never on padding.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[batch][seq_len]` token ids, padded with `pad_id`.
    pub input_ids: Vec<Vec<u32>>,
    /// Number of real (non-padding) tokens per row.
    pub lengths: Vec<usize>,
    /// `[batch][seq_len]` target flags.
    pub target_mask: Vec<Vec<bool>>,
}

impl Batch {
    /// Builds a batch from `(prompt, completion)` token rows: the completion tokens are targets.
    pub fn from_prompt_completion(rows: &[(&[u32], &[u32])], pad_id: u32) -> Result<Self> {
        let seq_len = rows
            .iter()
            .map(|(p, c)| p.len() + c.len())
            .max()
            .unwrap_or(0);
        let mut batch = Batch {
            input_ids: Vec::with_capacity(rows.len()),
            lengths: Vec::with_capacity(rows.len()),
            target_mask: Vec::with_capacity(rows.len()),
        };
        for (i, (prompt, completion)) in rows.iter().enumerate() {
            if prompt.is_empty() {
                return Err(ModelError::Batch(format!(
                    "row {i}: the prompt is empty (the first completion token needs a context)"
                )));
            }
            let mut ids = Vec::with_capacity(seq_len);
            ids.extend_from_slice(prompt);
            ids.extend_from_slice(completion);
            let len = ids.len();
            ids.resize(seq_len, pad_id);
            let mut mask = vec![false; seq_len];
            mask[prompt.len()..len].iter_mut().for_each(|m| *m = true);
            batch.input_ids.push(ids);
            batch.lengths.push(len);
            batch.target_mask.push(mask);
        }
        Ok(batch)
    }

    /// Builds a batch from already padded rows (e.g. a fixture), checking consistency.
    pub fn from_padded(
        input_ids: Vec<Vec<u32>>,
        lengths: Vec<usize>,
        target_mask: Vec<Vec<bool>>,
    ) -> Result<Self> {
        let batch = Batch {
            input_ids,
            lengths,
            target_mask,
        };
        batch.validate()?;
        Ok(batch)
    }

    fn validate(&self) -> Result<()> {
        let t = self.seq_len();
        if self.lengths.len() != self.input_ids.len()
            || self.target_mask.len() != self.input_ids.len()
        {
            return Err(ModelError::Batch(
                "row counts of ids, lengths and targets differ".into(),
            ));
        }
        for (b, ((ids, len), mask)) in self
            .input_ids
            .iter()
            .zip(&self.lengths)
            .zip(&self.target_mask)
            .enumerate()
        {
            if ids.len() != t || mask.len() != t || *len > t {
                return Err(ModelError::Batch(format!("row {b}: ragged row")));
            }
            if mask.first() == Some(&true) || mask[*len..].iter().any(|m| *m) {
                return Err(ModelError::Batch(format!(
                    "row {b}: a target at position 0 or on padding"
                )));
            }
        }
        Ok(())
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Padded length.
    pub fn seq_len(&self) -> usize {
        self.input_ids.first().map_or(0, Vec::len)
    }

    /// Number of target tokens.
    pub fn num_targets(&self) -> usize {
        self.target_mask.iter().flatten().filter(|m| **m).count()
    }

    /// Number of real tokens.
    pub fn num_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// `[batch, seq_len]` u32 ids on `device`.
    pub fn ids_tensor(&self, device: &Device) -> Result<Tensor> {
        let flat: Vec<u32> = self.input_ids.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(
            flat,
            (self.len(), self.seq_len()),
            device,
        )?)
    }

    /// `(rows, positions)` of every target, in row-major order.
    pub fn targets(&self) -> (Vec<usize>, Vec<usize>) {
        let mut rows = Vec::new();
        let mut positions = Vec::new();
        for (b, mask) in self.target_mask.iter().enumerate() {
            for (j, m) in mask.iter().enumerate() {
                if *m {
                    rows.push(b);
                    positions.push(j);
                }
            }
        }
        (rows, positions)
    }
}
