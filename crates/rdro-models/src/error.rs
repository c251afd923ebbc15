//! Typed errors of the model crate.

use std::path::PathBuf;

/// Everything that can go wrong reading, building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An adapter problem.
    #[error(transparent)]
    Lora(#[from] rdro_lora::LoraError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A model configuration that cannot be used.
    #[error("{path}: {message}")]
    Config {
        /// The config file (config.json or the GGUF file).
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A weight is missing or has the wrong shape.
    #[error("{path}: {message}")]
    Weights {
        /// The weights file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A batch that the model cannot run.
    #[error("invalid batch: {0}")]
    Batch(String),
}
