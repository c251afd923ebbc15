//! Developer and user tasks for the rdro workspace (`cargo xtask <task>`).

mod fetch_tokenizers;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// rdro's tasks.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Train an adapter: `rdro finetune` in release mode (default config: configs/default.toml,
    /// which runs offline anywhere).
    Finetune {
        /// The TOML config.
        #[arg(long, default_value = "configs/default.toml")]
        config: PathBuf,
        /// Extra arguments passed to `rdro finetune` (e.g. `--set train.max_steps=10`).
        #[arg(last = true)]
        rest: Vec<String>,
    },
    /// Fetch what the tests need (pinned tokenizers) and run the whole test suite.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        rest: Vec<String>,
    },
    /// Download the pinned Llama 3 and Qwen tokenizers used by the tokenizer golden tests into
    /// .cache/tokenizers (sha256-checked).
    FetchTokenizers,
    /// Regenerate the golden fixtures with Python (torch, transformers, peft, gguf).
    Fixtures,
    /// Benchmark one LoRA training step (Qwen2.5-0.5B shape) against PyTorch + PEFT.
    Bench {
        /// Sequence length.
        #[arg(long, default_value_t = 512)]
        seq: usize,
        /// Number of decoder layers (24 is the real shape; fewer for a quick look).
        #[arg(long, default_value_t = 24)]
        layers: usize,
        /// Timed steps per configuration (median reported), after one warm-up.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Skip the PyTorch yardstick.
        #[arg(long)]
        no_pytorch: bool,
        /// Comma-separated base quantizations to run.
        #[arg(long, default_value = "none,q8_0,q4_0")]
        quant: String,
    },
}

fn root() -> PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR for the process; the compile-time value would point at
    // another checkout when a shared target folder reuses this binary.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Finetune { config, rest } => run(cargo()
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "rdro-cli",
                "--",
                "finetune",
                "--config",
            ])
            .arg(&config)
            .args(rest)),
        Task::Test { rest } => {
            fetch_tokenizers::fetch_tokenizers(&root())?;
            run(cargo().args(["test", "--workspace"]).args(rest))
        }
        Task::FetchTokenizers => {
            let dir = fetch_tokenizers::fetch_tokenizers(&root())?;
            println!("tokenizers in {}", dir.display());
            Ok(())
        }
        Task::Fixtures => {
            for script in [
                "tests/fixtures/generate.py",
                "tests/fixtures/chat/generate_chat.py",
            ] {
                if root().join(script).is_file() {
                    run(Command::new("python3").arg(script).current_dir(root()))?;
                }
            }
            Ok(())
        }
        Task::Bench {
            seq,
            layers,
            steps,
            no_pytorch,
            quant,
        } => bench(seq, layers, steps, no_pytorch, &quant),
    }
}

/// Runs every configuration in its own process (so that peak RSS is per configuration), the
/// Rust step and the PyTorch yardstick side by side, and prints one JSON line each.
fn bench(seq: usize, layers: usize, steps: usize, no_pytorch: bool, quant: &str) -> Result<()> {
    run(cargo().args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "rdro-models",
        "--example",
        "lora_step",
    ]))?;
    let exe = root().join("target/release/examples/lora_step");
    let common = |c: &mut Command| {
        c.args([
            "--seq",
            &seq.to_string(),
            "--layers",
            &layers.to_string(),
            "--steps",
            &steps.to_string(),
        ]);
    };
    run(Command::new(&exe).arg("--kernels"))?;
    for checkpointing in [false, true] {
        if !no_pytorch {
            let mut c = Command::new("python3");
            c.arg(root().join("xtask/bench/pytorch_lora_step.py"));
            common(&mut c);
            if checkpointing {
                c.arg("--checkpointing");
            }
            run(&mut c)?;
        }
        for q in quant.split(',') {
            let mut c = Command::new(&exe);
            common(&mut c);
            c.args(["--quant", q]);
            if checkpointing {
                c.arg("--checkpointing");
            }
            run(&mut c)?;
        }
    }
    Ok(())
}
