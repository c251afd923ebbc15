//! Typed errors of the adapter crate.

use std::path::PathBuf;

/// Everything that can go wrong building, loading or saving adapters and frozen layers.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A configuration value is out of range or unknown.
    #[error("invalid value for `{key}`: {message}")]
    InvalidConfig {
        /// The configuration key.
        key: String,
        /// What was expected.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An adapter file is malformed or does not match the base model.
    #[error("{path}: {message}")]
    Adapter {
        /// The adapter file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl LoraError {
    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidConfig {
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn adapter(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Adapter {
            path: path.into(),
            message: message.into(),
        }
    }
}
