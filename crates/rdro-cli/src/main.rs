//! `rdro`: align open language models with human preferences by training LoRA adapters with
//! Relative Density Ratio Optimization.

mod commands;

use clap::{Parser, Subcommand};

/// Train, score, merge and publish LoRA adapters for Qwen 2.5 and Llama 3 bases.
#[derive(Parser)]
#[command(name = "rdro", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a LoRA adapter from a TOML config (RDRO, DDRO, KTO or DPO).
    Finetune(commands::finetune::FinetuneArgs),
    /// Summed completion log-probs of every row under the base (and an adapter).
    Score(commands::score::ScoreArgs),
    /// Merge a LoRA adapter into the original dense weights of its base (optionally also GGUF).
    Merge(commands::merge::MergeArgs),
    /// Upload an adapter folder (or a merged model folder) to the Hugging Face Hub.
    Publish(commands::publish::PublishArgs),
    /// Inspect or tokenize preference data.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
}

fn main() -> std::process::ExitCode {
    rdro_models::memory::retain_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Finetune(args) => commands::finetune::run(args),
        Command::Score(args) => commands::score::run(args),
        Command::Merge(args) => commands::merge::run(args),
        Command::Publish(args) => commands::publish::run(args),
        Command::Data(cmd) => commands::data::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
