//! End-to-end tests of the `rdro` binary.
//!
//! One test binary per crate (each module was once its own binary): every binary links all of
//! candle, so one link instead of many saves minutes and gigabytes. Run one module with
//! `cargo test -p rdro-cli --test integration <module>::`.

#[path = "../../../rdro-models/tests/integration/adapters_common/mod.rs"]
mod adapters_common;
mod cli_common;
mod finetune_default;
mod finetune_interrupt;
mod merge;
mod publish;
mod score;
