//! Optimisation pieces of the trainer: an AdamW whose state can be saved and restored
//! ([`AdamW`]), learning-rate schedules with warmup ([`Schedule`]) and gradient clipping by global
//! norm ([`clip_grad_norm`]).

mod adamw;
mod clip;
mod schedule;

pub use adamw::{AdamW, AdamWConfig, ADAMW_STATE_FORMAT};
pub use clip::{all_finite, clip_grad_norm, global_grad_norm, ClipOutcome};
pub use schedule::{warmup_steps_from_ratio, Schedule, ScheduleKind};

use std::path::Path;
use thiserror::Error;

/// Errors of the optimizer.
#[derive(Debug, Error)]
pub enum OptimError {
    /// A hyper-parameter is out of range; `key` names it.
    #[error("invalid value for `{key}`: expected {expected}, got {got}")]
    InvalidConfig {
        /// The hyper-parameter.
        key: &'static str,
        /// What it accepts.
        expected: &'static str,
        /// The rejected value, as text.
        got: String,
    },
    /// Two parameters share a name.
    #[error("duplicate parameter name `{0}`")]
    DuplicateName(String),
    /// A parameter has no gradient.
    #[error("no gradient for parameter `{0}`")]
    MissingGradient(String),
    /// The number of gradients differs from the number of parameters.
    #[error("expected {expected} gradients (one per parameter), got {got}")]
    GradientCount {
        /// Parameters held.
        expected: usize,
        /// Gradients given.
        got: usize,
    },
    /// A gradient's shape differs from its parameter's.
    #[error("gradient for `{name}` has shape {got:?}, the parameter {expected:?}")]
    ShapeMismatch {
        /// The parameter.
        name: String,
        /// The parameter's shape.
        expected: Vec<usize>,
        /// The gradient's shape.
        got: Vec<usize>,
    },
    /// An optimizer state file is unusable.
    #[error("optimizer state: {0}")]
    State(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The safetensors container could not be read or written.
    #[error("optimizer state file: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl OptimError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        OptimError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
