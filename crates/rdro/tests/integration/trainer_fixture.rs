//! Three AdamW steps of RDRO from a given adapter on the tiny `qwen2_tied` model match the same
//! steps done in PyTorch + PEFT (fixture `tests/fixtures/rdro_steps`), for both reductions.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rdro::config::Config;
use rdro::trainer::{self, Outcome, RunOptions, Silent};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

fn check(reduction: &str) {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let text = format!(
        r#"
[model]
base = "{base}"
[lora]
init_adapter = "{adapter}"
[objective]
kind = "rdro"
alpha = 0.4
reduction = "{reduction}"
[data]
train = "{data}"
[train]
epochs = 3
batch_size = 4
lr = 1e-2
schedule = "constant"
max_grad_norm = 0.0
shuffle = false
reference_cache = ""
[output]
dir = "{out}"
logging_steps = 1
"#,
        base = fx.join("models/qwen2_tied").display(),
        adapter = fx.join("models/qwen2_tied/adapters/lora").display(),
        data = fx.join("rdro_steps/batch.json").display(),
        out = out.display(),
    );
    let config = Config::from_toml(&text).unwrap();
    let summary = match trainer::run(&config, RunOptions::default(), &mut Silent).unwrap() {
        Outcome::Finished(s) => s,
        other => panic!("unexpected outcome {other:?}"),
    };
    assert_eq!(summary.steps, 3);
    let expected = candle_core::safetensors::load(
        fx.join(format!("rdro_steps/expected_{reduction}.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    // Losses before each update.
    for (k, record) in summary.history.iter().enumerate() {
        let want = expected[&format!("loss.{k}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0] as f64;
        assert!(
            (record.loss - want).abs() <= 1e-4 * want.abs().max(1e-6),
            "{reduction}: loss before update {k}: {} vs {want}",
            record.loss
        );
    }
    let got = candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    let keys: Vec<&String> = expected
        .keys()
        .filter(|k| k.starts_with("base_model.model."))
        .collect();
    assert!(!keys.is_empty());
    assert_eq!(
        got.len(),
        keys.len(),
        "adapter keys differ from the fixture"
    );
    let initial =
        rdro_lora::peft::read_weights(&fx.join("models/qwen2_tied/adapters/lora"), &Device::Cpu)
            .unwrap();
    let mut moved = 0;
    for key in keys {
        let want = &expected[key];
        let have = got.get(key).unwrap_or_else(|| panic!("missing {key}"));
        assert_eq!(have.dims(), want.dims(), "{key}");
        let diff = max_abs(&(have - want).unwrap());
        let scale = max_abs(want).max(1e-12);
        assert!(
            diff <= 1e-4 * scale,
            "{reduction}: {key}: max |rust - torch| = {diff:e}, max |torch| = {scale:e}"
        );
        // The steps moved the parameter (the test cannot pass by doing nothing).
        let module = key
            .trim_start_matches("base_model.model.")
            .rsplit_once(".lora_")
            .unwrap()
            .0;
        let (a, b) = &initial[module];
        let init = if key.contains("lora_A") { a } else { b };
        if max_abs(&(init - want).unwrap()) > 1e-6 {
            moved += 1;
        }
    }
    assert!(moved > 0);
}

#[test]
fn three_rdro_steps_match_pytorch_class_balanced() {
    check("class_balanced");
}

#[test]
fn three_rdro_steps_match_pytorch_mean() {
    check("mean");
}
