//! Integration tests of `rdro-models`: golden checks against transformers and PEFT, merge, GGUF, Hub.
//!
//! One test binary per crate (each module was once its own binary): every binary links all of
//! candle, so one link instead of many saves minutes and gigabytes. Run one module with
//! `cargo test -p rdro-models --test integration <module>::`.

mod adapters_common;
mod adapters_gguf;
mod adapters_hub;
mod adapters_interop;
mod adapters_merge;
mod adapters_publish;
mod golden;
