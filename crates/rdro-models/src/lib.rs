//! Trainable Llama-family decoders for adapter training: Qwen 2 / 2.5 and Llama 3 / 3.1 / 3.2.
//!
//! One decoder ([`LlamaModel`]) covers both families; [`ModelConfig`] reads a Hugging Face
//! `config.json` (or GGUF metadata) and rejects what the decoder does not implement. Weights come
//! from a Hugging Face folder (one safetensors file or shards) or a GGUF file ([`load()`]), are held
//! frozen (dense or quantized) and carry LoRA adapters from `rdro-lora`. The forward returns what
//! training needs: log-probs of target tokens ([`TokenLogProbs`]), with the vocabulary projection
//! computed in chunks, and gradients for the adapters only, optionally with per-layer activation
//! checkpointing ([`LlamaModel::value_and_grad`]).

pub mod batch;
pub mod config;
pub mod error;
pub mod gguf;
pub mod head;
pub mod hub;
pub mod llama;
pub mod load;
pub mod memory;
pub mod merge;
pub mod ops;
pub mod publish;
pub mod rope;

pub use batch::Batch;
pub use config::{Architecture, Llama3RopeScaling, ModelConfig};
pub use error::ModelError;
pub use head::TokenLogProbs;
pub use llama::{Gradients, LlamaModel};
pub use load::{load, LoadOptions, LoadedModel, ModelSource};

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
