//! Every config in configs/ parses and validates; unknown keys and bad values are rejected naming
//! the key; `--set` overrides apply.

use std::path::{Path, PathBuf};

use rdro::config::Config;

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

#[test]
fn every_config_parses_and_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::from_file(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(
        n >= 4,
        "expected default.toml and the three recipes, found {n} configs"
    );
}

#[test]
fn recipes_hold_what_they_promise() {
    let load = |name: &str| Config::from_file(&configs_dir().join(name), &[]).unwrap();
    for name in ["qwen2.5-7b-uf-g.toml", "llama3.1-8b-uf-g.toml"] {
        let c = load(name);
        assert_eq!(
            c.data.train, "trl-lib/ultrafeedback-gpt-3.5-turbo-helpfulness",
            "{name}"
        );
        assert_eq!(
            c.objective.alpha,
            Some(rdro::objective::Alpha::Auto),
            "{name}"
        );
        assert!(c.model.quantization.starts_with("q4"), "{name}: 4-bit base");
        assert!(c.train.gradient_checkpointing, "{name}");
    }
    let c = load("qwen2.5-0.5b-mix14k.toml");
    assert_eq!(c.data.train, "trl-lib/kto-mix-14k");
    assert_eq!(c.model.base, "Qwen/Qwen2.5-0.5B-Instruct");
    let d = load("default.toml");
    assert!(
        d.synthetic.is_some(),
        "the default generates its task offline"
    );
}

const MINIMAL: &str = "[model]\nbase = \"m\"\n[data]\ntrain = \"d.jsonl\"\n";

#[test]
fn unknown_keys_are_rejected_naming_the_key() {
    let err = Config::from_toml(&format!("{MINIMAL}[train]\nlearning_rate = 1e-4\n")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("`train.learning_rate`") && msg.contains("expected one of"),
        "{msg}"
    );
    let err = Config::from_toml(&format!("{MINIMAL}[trian]\nlr = 1e-4\n")).unwrap_err();
    assert!(err.to_string().contains("trian"), "{err}");
    let err = Config::from_toml(&format!("{MINIMAL}[data2]\n")).unwrap_err();
    assert!(err.to_string().contains("data2"), "{err}");
    let err = Config::from_toml("[data]\ntrain = \"d\"\n").unwrap_err();
    assert!(err.to_string().contains("[model]"), "{err}");
}

#[test]
fn bad_values_are_rejected_naming_the_key() {
    for (text, key) in [
        ("[train]\nlr = -1.0\n", "train.lr"),
        ("[train]\nbatch_size = 0\n", "train.batch_size"),
        ("[objective]\nalpha = 1.5\n", "objective.alpha"),
        (
            "[objective]\nkind = \"dpo\"\nalpha = 0.5\n",
            "objective.alpha",
        ),
        ("[model]\nquantization = \"q3_9\"\n", "model.quantization"),
        ("[lora]\nr = 0\n", "lora.r"),
        ("[output]\nsave_dtype = \"f8\"\n", "output.save_dtype"),
        ("[train]\nwarmup_ratio = 1.5\n", "train.warmup_ratio"),
    ] {
        // Keys of [model] go into the existing section.
        let doc = if text.starts_with("[model]") {
            format!(
                "[model]\nbase = \"m\"\n{}[data]\ntrain = \"d\"\n",
                &text[8..]
            )
        } else {
            format!("{MINIMAL}{text}")
        };
        let err = Config::from_toml(&doc).expect_err(text).to_string();
        assert!(err.contains(key), "{text:?}: {err}");
    }
    let err = Config::from_toml(&format!("{MINIMAL}[train]\nlr = \"fast\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`train.lr`") && err.contains("expected f64"),
        "{err}"
    );
    let err = Config::from_toml(&format!("{MINIMAL}[objective]\nkind = \"ppo\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ppo") && err.contains("objective"), "{err}");
}

#[test]
fn overrides_apply_and_are_checked() {
    let c = Config::from_toml_with_overrides(
        MINIMAL,
        &[
            "train.lr=3e-4".into(),
            "objective.alpha=0.39".into(),
            "output.dir=adapters/x".into(),
            "lora.target_modules=[\"q_proj\", \"v_proj\"]".into(),
        ],
    )
    .unwrap();
    assert_eq!(c.train.lr, 3e-4);
    assert_eq!(c.objective.alpha, Some(rdro::objective::Alpha::Value(0.39)));
    assert_eq!(c.output.dir, "adapters/x");
    assert!(c.lora.target_modules.contains("v_proj") && !c.lora.target_modules.contains("o_proj"));
    assert!(Config::from_toml_with_overrides(MINIMAL, &["train.lr".into()]).is_err());
    let err = Config::from_toml_with_overrides(MINIMAL, &["train.lrr=1".into()]).unwrap_err();
    assert!(err.to_string().contains("lrr"), "{err}");
    let err = Config::from_toml_with_overrides(MINIMAL, &["nope.x=1".into()]).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}
