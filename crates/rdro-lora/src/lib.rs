//! Frozen linear layers (dense or GGML-quantized) and trainable LoRA adapters on top of candle.
//!
//! The crate solves two problems candle leaves open for adapter training:
//! - a frozen weight must pass gradients to its *input* without computing (or storing) a gradient
//!   for the weight itself, also when the weight is held quantized ([`FrozenLinear`]);
//! - a LoRA branch must be switchable per forward so that the same base serves as the reference
//!   model ([`LoraLinear`], [`ForwardMode`]).
//!
//! [`attach_backward`] is the small mechanism under both: it pairs a result computed without a
//! graph (fast kernels, quantized weights) with a hand-written backward.

pub mod autograd;
pub mod config;
pub mod error;
pub mod frozen;
pub mod layer;
pub mod merge;
pub mod peft;
pub mod quant;

pub use autograd::attach_backward;
pub use config::{LoraConfig, TargetModules, LINEAR_MODULES};
pub use error::LoraError;
pub use frozen::{FrozenLinear, FrozenWeight};
pub use layer::{ForwardMode, LoraAdapter, LoraLinear};
pub use quant::{QuantReport, QuantType};

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, LoraError>;
