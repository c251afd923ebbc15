//! A run stopped after step k and resumed ends with an adapter bit-identical to an uninterrupted
//! run of the same config (CPU), with shuffling, dropout, accumulation, warmup and clipping on.

use crate::trainer_common;

use rdro::trainer::{self, Outcome, Resume, RunOptions, Silent};

const SETTINGS: &[&str] = &[
    "lora.dropout=0.1",
    "train.shuffle=true",
    "train.grad_accum=2",
    "train.batch_size=3",
    "train.max_steps=7",
    "train.schedule=\"cosine\"",
    "train.warmup_steps=2",
    "train.max_grad_norm=0.5",
];

fn adapter_bytes(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let full_out = format!("output.dir=\"{}\"", tmp.path().join("full").display());
    let mut settings: Vec<&str> = SETTINGS.to_vec();
    settings.push(&full_out);
    let config = trainer_common::small_task(tmp.path(), &settings);
    let full = match trainer::run(&config, RunOptions::default(), &mut Silent).unwrap() {
        Outcome::Finished(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(full.steps, 7);

    let split_out = format!("output.dir=\"{}\"", tmp.path().join("split").display());
    let mut settings: Vec<&str> = SETTINGS.to_vec();
    settings.push(&split_out);
    let config = trainer_common::small_task(tmp.path(), &settings);
    let stopped = trainer::run(
        &config,
        RunOptions {
            stop_after_step: Some(3),
            ..Default::default()
        },
        &mut Silent,
    )
    .unwrap();
    let Outcome::Stopped { step, checkpoint } = stopped else {
        panic!("expected a stop, got {stopped:?}");
    };
    assert_eq!(step, 3);
    assert!(checkpoint
        .join("training_state/optimizer.safetensors")
        .is_file());
    // Nothing is at the final path before the run completes.
    assert!(!tmp.path().join("split").exists());
    // A fresh start over an unfinished run is refused.
    let err = trainer::run(&config, RunOptions::default(), &mut Silent).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");

    let resumed = trainer::run(
        &config,
        RunOptions {
            resume: Some(Resume::Latest),
            ..Default::default()
        },
        &mut Silent,
    )
    .unwrap();
    let Outcome::Finished(resumed) = resumed else {
        panic!("expected to finish, got {resumed:?}");
    };
    assert_eq!(resumed.steps, 7);
    assert_eq!(resumed.history.len(), 4);
    // The resumed steps reproduce the uninterrupted run's losses exactly.
    for (a, b) in resumed.history.iter().zip(&full.history[3..]) {
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {}", a.step);
    }
    let a = adapter_bytes(&tmp.path().join("full"));
    let b = adapter_bytes(&tmp.path().join("split"));
    assert_eq!(a, b, "resumed adapter differs from the uninterrupted one");
    // And the adapter moved away from its initialisation.
    assert!(full.history.iter().any(|r| r.grad_norm > 0.0));
}
