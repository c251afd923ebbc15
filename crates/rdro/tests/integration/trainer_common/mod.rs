//! Shared helpers of the trainer tests: a small generated task in a temporary folder.

#![allow(dead_code)]

use std::path::Path;

use rdro::config::Config;
use rdro::trainer::{EvalRecord, Observer, RunInfo, StepRecord};

/// A config training on a small generated task under `root`, with `extra` TOML lines appended to
/// the given sections through `--set`-style overrides.
pub fn small_task(root: &Path, overrides: &[&str]) -> Config {
    let task = root.join("task");
    let text = format!(
        r#"
[synthetic]
dir = "{task}"
seed = 3
vocab_size = 32
hidden_size = 32
layers = 1
train_prompts = 24
eval_prompts = 8
prompt_len = 4
completion_len = 3
preferred_per_prompt = 1
non_preferred_per_prompt = 1
[model]
base = "{task}/base"
[lora]
r = 4
alpha = 8.0
[objective]
kind = "rdro"
[data]
train = "{task}/train.jsonl"
eval = "{task}/eval.jsonl"
[train]
max_steps = 6
batch_size = 4
lr = 1e-2
schedule = "constant"
reference_cache = "{cache}"
[output]
dir = "{out}"
logging_steps = 1
"#,
        task = task.display(),
        cache = root.join("cache").display(),
        out = root.join("out").display(),
    );
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::from_toml_with_overrides(&text, &overrides).unwrap()
}

/// Records everything a run reports.
#[derive(Default)]
pub struct Recorder {
    pub info: Option<RunInfo>,
    pub steps: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
}

impl Observer for Recorder {
    fn on_start(&mut self, info: &RunInfo) {
        self.info = Some(info.clone());
    }
    fn on_step(&mut self, r: &StepRecord) {
        self.steps.push(r.clone());
    }
    fn on_eval(&mut self, e: &EvalRecord) {
        self.evals.push(e.clone());
    }
}
