//! Relative Density Ratio Optimization for LoRA adapters: objectives (rdro, ddro, kto, dpo),
//! the preference-data pipeline, the optimizer, scoring and the trainer.

pub mod data;
pub mod objective;
pub mod optim;
pub mod score;
