//! Reference log-probs are cached on disk under a key of everything they depend on, reused by a
//! later run with the same key, recomputed when the key changes, and equal to per-step ones.

use crate::trainer_common;

use rdro::trainer::{self, Outcome, RunOptions};
use trainer_common::Recorder;

fn cache_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn reference_logps_are_cached_and_keyed() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let run = |extra: &[&str]| {
        let mut settings = vec!["train.max_steps=2", "output.overwrite=true"];
        settings.extend_from_slice(extra);
        let config = trainer_common::small_task(tmp.path(), &settings);
        let mut rec = Recorder::default();
        let out = trainer::run(&config, RunOptions::default(), &mut rec).unwrap();
        let Outcome::Finished(summary) = out else {
            panic!("{out:?}")
        };
        (rec.info.unwrap().reference_from_cache, summary)
    };
    let (hit, first) = run(&[]);
    assert!(!hit, "nothing cached yet");
    assert_eq!(cache_files(&cache), 2, "train and eval reference files");
    let (hit, second) = run(&[]);
    assert!(hit, "same key: cached values reused");
    assert_eq!(cache_files(&cache), 2);
    assert_eq!(
        first.history,
        second
            .history
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.tokens_per_second = first.history[r.step - 1].tokens_per_second;
                r
            })
            .collect::<Vec<_>>()
    );
    // Truncation changes the token ids, hence the key.
    let (hit, _) = run(&["data.max_length=5", "data.max_prompt_length=2"]);
    assert!(!hit, "different truncation must not reuse the cache");
    assert_eq!(cache_files(&cache), 4);
    // A different quantization is a different reference.
    let (hit, _) = run(&["model.quantization=\"q8_0\""]);
    assert!(!hit, "different quantization must not reuse the cache");
    // Per-step reference log-probs give the same training.
    let (_, per_step) = run(&["train.precompute_reference=false"]);
    for (a, b) in per_step.history.iter().zip(&first.history) {
        assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
    }
}
