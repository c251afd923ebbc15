//! Checkpoints: a PEFT adapter folder plus `training_state/` (optimizer moments and step count,
//! the trainer's position in the data, counters and the evaluation before training). Each
//! checkpoint folder is written atomically.

use std::path::{Path, PathBuf};

use rdro_lora::peft::{self, AdapterConfig, SaveDType};
use rdro_lora::LoraConfig;
use rdro_models::LlamaModel;
use serde::{Deserialize, Serialize};

use super::{EvalRecord, TrainError};
use crate::optim::AdamW;

/// Folder inside a checkpoint that holds the training state.
pub const STATE_DIR: &str = "training_state";
/// The trainer's state file inside [`STATE_DIR`].
pub const STATE_FILE: &str = "state.json";
/// The optimizer's state file inside [`STATE_DIR`].
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Where the trainer stands; everything besides the adapter and the optimizer needed to resume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken (skipped steps included).
    pub step: usize,
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Units of the current epoch's order already consumed.
    pub position: usize,
    /// Steps skipped for a NaN/inf loss or gradient.
    pub skipped_steps: usize,
    /// Skipped steps in a row at the moment.
    pub bad_in_a_row: usize,
    /// Tokens processed so far.
    pub tokens_seen: u64,
    /// The run's seed (shuffling and dropout derive from it, the step and the epoch).
    pub seed: u64,
    /// Total steps of the run.
    pub total_steps: usize,
    /// Evaluation before training, when there was one.
    pub before: Option<EvalRecord>,
}

/// Writes a checkpoint folder `dir` (replacing one of the same name).
pub fn save(
    dir: &Path,
    model: &LlamaModel,
    lora: &LoraConfig,
    base: Option<String>,
    optimizer: &AdamW,
    state: &TrainState,
) -> Result<(), TrainError> {
    let config = AdapterConfig::from_lora(lora, base);
    let tensors = model.adapter_tensors();
    peft::write_dir_atomically(dir, true, |tmp| -> Result<(), TrainError> {
        peft::write_adapter(tmp, &config, &tensors, SaveDType::F32)?;
        let state_dir = tmp.join(STATE_DIR);
        std::fs::create_dir_all(&state_dir).map_err(|e| TrainError::io(&state_dir, e))?;
        optimizer.save(state_dir.join(OPTIMIZER_FILE))?;
        let path = state_dir.join(STATE_FILE);
        let json = serde_json::to_string_pretty(state)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
        std::fs::write(&path, json).map_err(|e| TrainError::io(&path, e))
    })
}

/// Reads the trainer state of a checkpoint.
pub fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let path = dir.join(STATE_DIR).join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        TrainError::Checkpoint(format!(
            "{} is not a checkpoint ({}: {e})",
            dir.display(),
            path.display()
        ))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
}

/// The step number of a checkpoint folder name `step-N`.
fn step_of(path: &Path) -> Option<usize> {
    path.file_name()?
        .to_str()?
        .strip_prefix("step-")?
        .parse()
        .ok()
}

/// The folder name of the checkpoint after `step` steps.
pub fn name(step: usize) -> String {
    format!("step-{step:08}")
}

/// The newest complete checkpoint in `checkpoints_dir`, if any.
pub fn latest(checkpoints_dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(checkpoints_dir).ok()?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(STATE_DIR).join(STATE_FILE).is_file())
        .filter_map(|p| step_of(&p).map(|s| (s, p)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, p)| p)
}
