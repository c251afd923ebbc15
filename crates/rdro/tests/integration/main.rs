//! Integration tests of the `rdro` crate: data, objectives, config and trainer.
//!
//! One test binary per crate (each module was once its own binary): every binary links all of
//! candle, so one link instead of many saves minutes and gigabytes. Run one module with
//! `cargo test -p rdro --test integration <module>::`.

#[path = "../../../rdro-models/tests/integration/adapters_common/mod.rs"]
mod adapters_common;
mod configs;
mod data_golden;
mod data_malformed;
mod data_readers;
mod data_tokenize;
mod objectives;
mod tokenizer_common;
mod trainer_common;
mod trainer_divergence;
mod trainer_fixture;
mod trainer_objectives;
mod trainer_reference_cache;
mod trainer_resume;
