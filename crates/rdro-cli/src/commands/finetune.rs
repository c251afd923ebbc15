//! `rdro finetune`: train a LoRA adapter from a TOML config.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rdro::config::Config;
use rdro::trainer::{self, EvalRecord, Observer, Outcome, Resume, RunInfo, RunOptions, StepRecord};

/// Arguments of `rdro finetune`.
#[derive(Debug, Clone, clap::Args)]
pub struct FinetuneArgs {
    /// The TOML config (see configs/README.md).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value: `--set section.key=value` (repeatable; the value is TOML, or a
    /// plain string).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue an interrupted run: from its newest checkpoint, or from the checkpoint folder given.
    #[arg(long, value_name = "CHECKPOINT_DIR", num_args = 0..=1, default_missing_value = "")]
    pub resume: Option<PathBuf>,
    /// No progress bar (metrics still go to metrics.jsonl; a line per logging step goes to stderr).
    #[arg(long)]
    pub no_progress: bool,
}

/// Prints progress: an indicatif bar (loss, lr, tokens/s, ETA) and evaluation lines.
struct Printer {
    bar: Option<ProgressBar>,
    quiet_bar: bool,
    logging_steps: usize,
}

impl Printer {
    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

fn eval_line(e: &EvalRecord) -> String {
    format!(
        "eval @ step {}: loss {:.4}  preference accuracy {}  ({} couples)  T preferred {}  T non-preferred {}  margin {}",
        e.step,
        e.loss,
        e.preference_accuracy
            .map_or_else(|| "-".into(), |a| format!("{:.1} %", 100.0 * a)),
        e.couples,
        fmt_opt(e.t_preferred),
        fmt_opt(e.t_non_preferred),
        fmt_opt(e.rewards_margins),
    )
}

impl Observer for Printer {
    fn on_start(&mut self, info: &RunInfo) {
        self.println(&format!(
            "objective {}{}  train {} rows (preferred {:.1} %)  eval {} rows  trainable {} params  steps {}{}{}",
            info.objective,
            info.alpha.map_or_else(String::new, |a| format!(" (alpha {a:.4})")),
            info.train_examples,
            100.0 * info.preferred_fraction,
            info.eval_examples,
            info.trainable_parameters,
            info.total_steps,
            if info.start_step > 0 {
                format!(" (resuming at {})", info.start_step)
            } else {
                String::new()
            },
            if info.reference_from_cache {
                "  reference log-probs: cached"
            } else {
                ""
            },
        ));
        if !self.quiet_bar {
            let bar = ProgressBar::new(info.total_steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(info.start_step as u64);
            bar.reset_eta();
            bar.enable_steady_tick(Duration::from_millis(500));
            self.bar = Some(bar);
        }
    }

    fn on_step(&mut self, r: &StepRecord) {
        let msg = format!(
            "loss {:.4}  lr {:.2e}  {:.0} tok/s  grad {:.3}{}",
            r.loss,
            r.learning_rate,
            r.tokens_per_second,
            r.grad_norm,
            r.t_preferred
                .map_or_else(String::new, |t| format!("  T+ {t:.3}")),
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.step as u64);
                bar.set_message(msg);
            }
            None => {
                if r.step.is_multiple_of(self.logging_steps) {
                    eprintln!("step {}: {msg}", r.step);
                }
            }
        }
    }

    fn on_eval(&mut self, e: &EvalRecord) {
        self.println(&eval_line(e));
    }

    fn on_message(&mut self, m: &str) {
        self.println(m);
    }
}

/// Runs `rdro finetune`.
pub fn run(args: FinetuneArgs) -> Result<()> {
    // Errors name the file (syntax, unknown keys) or the key (bad values).
    let config = Config::from_file(&args.config, &args.set)?;
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        // A second Ctrl-C exits at once.
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: finishing the current step and writing a checkpoint (Ctrl-C again to abort)");
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let resume = args.resume.map(|p| {
        if p.as_os_str().is_empty() {
            Resume::Latest
        } else {
            Resume::From(p)
        }
    });
    let mut printer = Printer {
        bar: None,
        quiet_bar: args.no_progress,
        logging_steps: config.output.logging_steps,
    };
    let outcome = trainer::run(
        &config,
        RunOptions {
            resume,
            interrupt: Some(interrupt),
            stop_after_step: None,
        },
        &mut printer,
    );
    if let Some(bar) = printer.bar.take() {
        bar.finish_and_clear();
    }
    match outcome? {
        Outcome::Stopped { checkpoint, step } => {
            println!(
                "stopped after step {step}; checkpoint: {}\ncontinue with: rdro finetune --config {} --resume",
                checkpoint.display(),
                args.config.display()
            );
        }
        Outcome::Finished(summary) => {
            println!();
            println!(
                "summary ({} steps in {:.1} s{})",
                summary.steps,
                summary.train_seconds,
                if summary.skipped_steps > 0 {
                    format!(", {} skipped", summary.skipped_steps)
                } else {
                    String::new()
                }
            );
            let row = |name: &str, f: &dyn Fn(&EvalRecord) -> String| {
                println!(
                    "  {name:<28} {:>12} -> {:>12}",
                    summary.before.as_ref().map_or_else(|| "-".into(), f),
                    summary.after.as_ref().map_or_else(|| "-".into(), f)
                );
            };
            if summary.before.is_some() || summary.after.is_some() {
                println!("  {:<28} {:>12}    {:>12}", "held-out", "before", "after");
                row("preference accuracy", &|e| {
                    e.preference_accuracy
                        .map_or_else(|| "-".into(), |a| format!("{:.1} %", 100.0 * a))
                });
                row("eval loss", &|e| format!("{:.4}", e.loss));
                row("mean T preferred", &|e| fmt_opt(e.t_preferred));
                row("mean T non-preferred", &|e| fmt_opt(e.t_non_preferred));
                row("rewards/margins", &|e| fmt_opt(e.rewards_margins));
            }
            if let Some(a) = summary.alpha {
                println!(
                    "  RDRO target for T preferred: log(1/alpha) = {:.4}",
                    (1.0 / a).ln()
                );
            }
            println!("adapter written to {}", summary.adapter_dir.display());
        }
    }
    Ok(())
}
