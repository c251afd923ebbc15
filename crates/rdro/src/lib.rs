//! RDRO: Relative Density Ratio Optimization for LoRA alignment of Llama-family models.
//!
//! - [`objective`]: the losses (RDRO, DDRO, KTO, DPO) over summed sequence log-probs;
//! - [`optim`]: AdamW with saveable state, schedules, gradient clipping;
//! - [`data`]: reading, validating, templating and tokenizing preference data;
//! - [`config`]: the TOML training configuration;
//! - [`trainer`]: the training loop, reference log-prob cache, checkpoints and evaluation;
//! - [`score`]: summed completion log-probs of data rows under a base (and an adapter);
//! - [`synthetic`]: the offline default task (a small random base and a generated data set).

pub mod config;
pub mod data;
pub mod objective;
pub mod optim;
pub mod score;
pub mod synthetic;
pub mod trainer;
