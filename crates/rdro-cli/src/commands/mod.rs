//! One module per subcommand: argument parsing and printing only; the work is in the libraries.

pub mod data;
pub mod finetune;
pub mod merge;
pub mod publish;
pub mod score;
