//! The trainer end to end beyond RDRO: KTO on unpaired rows, DPO on paired conversational text
//! through a tokenizer and its chat template, gradient checkpointing, and the interrupt flag that
//! Ctrl-C sets.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::tokenizer_common::write_word_level;
use crate::trainer_common::{self, Recorder};
use candle_core::{Device, Tensor};
use rdro::trainer::{self, EvalRecord, Observer, Outcome, RunOptions, StepRecord};
use serde_json::json;

fn finish(config: &rdro::config::Config) -> (Box<trainer::Summary>, Recorder) {
    let mut rec = Recorder::default();
    match trainer::run(config, RunOptions::default(), &mut rec).unwrap() {
        Outcome::Finished(s) => (s, rec),
        other => panic!("expected to finish, got {other:?}"),
    }
}

fn accuracy(e: &Option<EvalRecord>) -> f64 {
    e.as_ref().unwrap().preference_accuracy.unwrap()
}

#[test]
fn kto_learns_the_preference_on_unpaired_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let config = trainer_common::small_task(
        tmp.path(),
        &[
            "objective.kind=\"kto\"",
            "objective.beta=0.5",
            "train.max_steps=120",
            "train.batch_size=8",
            "output.eval_steps=60",
        ],
    );
    let (summary, rec) = finish(&config);
    let (before, after) = (accuracy(&summary.before), accuracy(&summary.after));
    eprintln!("KTO held-out preference accuracy {before} -> {after}");
    assert!(after > 0.75 && after > before + 0.2, "{before} -> {after}");
    assert_eq!(rec.info.unwrap().objective, "kto");
}

/// Words of the tiny tokenizer: prompts use `p*`, preferred answers `e*`, rejected ones `o*`.
fn words() -> Vec<String> {
    let mut w = Vec::new();
    for prefix in ["p", "e", "o"] {
        w.extend((0..16).map(|i| format!("{prefix}{i}")));
    }
    w
}

/// A word-level tokenizer whose chat template closes every turn with EOS.
fn write_tokenizer(dir: &Path) {
    let template = "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|> {{ m.content }} </s> {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
    write_word_level(dir, &words(), json!({ "chat_template": template }));
}

/// Paired conversational rows in TRL's explicit-prompt form.
fn write_pairs(path: &Path, rows: usize, seed: u64) {
    let mut state = seed;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut text = String::new();
    for _ in 0..rows {
        let mut sentence = |prefix: &str, len: usize| -> String {
            (0..len)
                .map(|_| format!("{prefix}{}", next(16)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let prompt = sentence("p", 3);
        let chosen = sentence("e", 3);
        let rejected = sentence("o", 3);
        let row = json!({
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        });
        text.push_str(&row.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn dpo_learns_from_paired_chat_rows_through_the_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tmp.path().join("tokenizer");
    write_tokenizer(&tok);
    write_pairs(&tmp.path().join("pairs.jsonl"), 48, 1);
    write_pairs(&tmp.path().join("pairs_eval.jsonl"), 16, 2);
    let tokenizer = format!("model.tokenizer=\"{}\"", tok.display());
    let train = format!(
        "data.train=\"{}\"",
        tmp.path().join("pairs.jsonl").display()
    );
    let eval = format!(
        "data.eval=\"{}\"",
        tmp.path().join("pairs_eval.jsonl").display()
    );
    let config = trainer_common::small_task(
        tmp.path(),
        &[
            "synthetic.vocab_size=64",
            &tokenizer,
            &train,
            &eval,
            "objective.kind=\"dpo\"",
            "objective.beta=0.5",
            "train.max_steps=60",
            "train.batch_size=8",
            "output.eval_steps=30",
        ],
    );
    let (summary, rec) = finish(&config);
    let info = rec.info.unwrap();
    // 48 pairs become 96 rows, half of them preferred.
    assert_eq!(info.train_examples, 96);
    assert!((info.preferred_fraction - 0.5).abs() < 1e-12);
    let (before, after) = (accuracy(&summary.before), accuracy(&summary.after));
    eprintln!("DPO held-out pair accuracy {before} -> {after}");
    assert!(after > 0.8 && after > before + 0.2, "{before} -> {after}");
    // Paired steps (8 pairs = 16 rows each) never produced a NaN or inf loss.
    assert!(rec.steps.iter().all(|s| s.loss.is_finite()));
}

fn adapter(dir: &Path) -> Vec<(String, Tensor)> {
    let map = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn gradient_checkpointing_trains_the_same_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |checkpointing: bool| {
        let out = tmp.path().join(format!("out_{checkpointing}"));
        let out_set = format!("output.dir=\"{}\"", out.display());
        let ckpt_set = format!("train.gradient_checkpointing={checkpointing}");
        let config = trainer_common::small_task(
            tmp.path(),
            &[
                &out_set,
                &ckpt_set,
                "lora.dropout=0.2",
                "train.max_steps=4",
                "train.shuffle=true",
            ],
        );
        let (summary, _) = finish(&config);
        (summary, adapter(&out))
    };
    let (plain, a) = run(false);
    let (ckpt, b) = run(true);
    for (x, y) in plain.history.iter().zip(&ckpt.history) {
        assert!((x.loss - y.loss).abs() < 1e-6, "{} vs {}", x.loss, y.loss);
    }
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let diff = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = x
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= 1e-5 * scale.max(1e-3),
            "{name}: {diff} (scale {scale})"
        );
    }
}

/// Sets the interrupt flag once `at` steps are done, as the Ctrl-C handler would.
struct InterruptAt {
    at: usize,
    flag: Arc<AtomicBool>,
}

impl Observer for InterruptAt {
    fn on_step(&mut self, r: &StepRecord) {
        if r.step == self.at {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn the_interrupt_flag_stops_with_a_checkpoint_and_no_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let config = trainer_common::small_task(tmp.path(), &["train.max_steps=6"]);
    let flag = Arc::new(AtomicBool::new(false));
    let mut observer = InterruptAt {
        at: 2,
        flag: flag.clone(),
    };
    let outcome = trainer::run(
        &config,
        RunOptions {
            interrupt: Some(flag),
            ..Default::default()
        },
        &mut observer,
    )
    .unwrap();
    let Outcome::Stopped { step, checkpoint } = outcome else {
        panic!("expected a stop, got {outcome:?}");
    };
    assert_eq!(step, 2);
    assert!(checkpoint.join("adapter_model.safetensors").is_file());
    assert!(checkpoint.join("training_state").is_dir());
    assert!(
        !tmp.path().join("out").exists(),
        "no adapter at the final path"
    );
    let resumed = trainer::run(
        &config,
        RunOptions {
            resume: Some(trainer::Resume::Latest),
            ..Default::default()
        },
        &mut trainer::Silent,
    )
    .unwrap();
    let Outcome::Finished(summary) = resumed else {
        panic!("{resumed:?}")
    };
    assert_eq!(summary.steps, 6);
    assert!(tmp.path().join("out/adapter_model.safetensors").is_file());
}
