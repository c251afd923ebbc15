//! `merge_adapter`: streaming merge of a LoRA adapter into the original dense weights, checked
//! against PEFT's `merge_and_unload` (fixtures `merged_<adapter>.safetensors`, see
//! tests/fixtures/README.md) and against the log-probs PEFT computes with the adapter unmerged.

use crate::adapters_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use adapters_common::{copy_dir, fixture_batch, fixtures, listing, max_abs_diff, R};
use candle_core::{DType, Device, Tensor};
use rdro_lora::ForwardMode;
use rdro_models::merge::{merge_adapter, MergeDType, MergeOptions};
use rdro_models::{load, LoadOptions, ModelSource};

fn options(dtype: MergeDType) -> MergeOptions {
    MergeOptions {
        dtype,
        ..Default::default()
    }
}

fn load_all(dir: &Path) -> R<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for shard in rdro_models::load::shard_files(dir)? {
        out.extend(candle_core::safetensors::load(&shard, &Device::Cpu)?);
    }
    Ok(out)
}

fn max_diff(a: &Tensor, b: &Tensor) -> R<f32> {
    Ok((a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?)
}

fn merged_log_probs(dir: &Path, model: &str) -> R<Vec<Vec<f32>>> {
    let (_, batch) = fixture_batch(model)?;
    let m = load(
        &ModelSource::Folder(dir.to_path_buf()),
        &LoadOptions::default(),
    )?
    .model;
    Ok(m.token_log_probs(&batch, ForwardMode::REFERENCE)?
        .to_dense()?)
}

#[test]
fn f32_merge_matches_peft_merge_and_unload() -> R<()> {
    for (model, adapter) in [("llama31", "lora"), ("qwen2_tied", "rslora")] {
        let base = fixtures().join(model);
        let tmp = tempfile::tempdir()?;
        let out = tmp.path().join("merged");
        let report = merge_adapter(
            &base,
            &base.join("adapters").join(adapter),
            &out,
            &options(MergeDType::F32),
        )?;
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert_eq!(report.merged_modules.len(), 14, "{model}");
        assert_eq!(report.weight_files, vec![out.join("model.safetensors")]);

        let got = load_all(&out)?;
        let original = load_all(&base)?;
        let peft = candle_core::safetensors::load(
            base.join(format!("merged_{adapter}.safetensors")),
            &Device::Cpu,
        )?;
        assert_eq!(got.len(), original.len(), "{model}: tensor set changed");
        for (name, t) in &got {
            assert_eq!(t.dtype(), DType::F32, "{name}");
            match peft.get(name) {
                Some(want) => {
                    let d = max_diff(t, want)?;
                    assert!(d < 1e-6, "{model}/{adapter} {name}: |ours - PEFT| = {d}");
                    assert!(
                        max_diff(want, &original[name])? > 1e-4,
                        "{name}: the adapter did not move it"
                    );
                }
                // Everything else is copied bit for bit.
                None => assert_eq!(max_diff(t, &original[name])?, 0.0, "{name}"),
            }
        }
        // The merged model is the adapted model.
        let (expected, _) = fixture_batch(model)?;
        let lp = merged_log_probs(&out, model)?;
        let d = max_abs_diff(&lp, &expected[&format!("logp_{adapter}")])?;
        assert!(
            d < 1e-4,
            "{model}/{adapter}: merged log-probs differ from PEFT's by {d}"
        );
    }
    Ok(())
}

#[test]
fn half_precision_merges_round_once() -> R<()> {
    let base = fixtures().join("llama31");
    let peft = candle_core::safetensors::load(base.join("merged_lora.safetensors"), &Device::Cpu)?;
    for (dtype, cdtype, eps) in [
        (MergeDType::Bf16, DType::BF16, 2f32.powi(-8)),
        (MergeDType::F16, DType::F16, 2f32.powi(-11)),
    ] {
        let tmp = tempfile::tempdir()?;
        let out = tmp.path().join("m");
        merge_adapter(&base, &base.join("adapters/lora"), &out, &options(dtype))?;
        let got = load_all(&out)?;
        for (name, t) in &got {
            assert_eq!(t.dtype(), cdtype, "{name}");
        }
        for (name, want) in &peft {
            // Within half an ulp of the f32 reference (a single rounding): |x - r| <= 2^-p |r|, with
            // p = 8 for bf16 and 11 for f16 (plus a little for f32 noise and f16 subnormals).
            let t = got[name].to_dtype(DType::F32)?;
            let err = (t - want)?.abs()?;
            let bound = ((want.abs()? * (eps as f64 * (1.0 + 1e-4)))? + 1e-7)?;
            let over = err
                .gt(&bound)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            assert_eq!(
                over, 0.0,
                "{dtype}: {name} has {over} values off by more than half an ulp"
            );
        }
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json"))?)?;
        let name = dtype.torch_name();
        assert!(
            config
                .get("torch_dtype")
                .or(config.get("dtype"))
                .and_then(|v| v.as_str())
                == Some(name),
            "{config}"
        );
        let (expected, _) = fixture_batch("llama31")?;
        let d = max_abs_diff(&merged_log_probs(&out, "llama31")?, &expected["logp_lora"])?;
        assert!(d < 0.05, "{dtype}: log-probs moved by {d}");
    }
    Ok(())
}

/// A copy of a fixture base with the side files a real checkpoint has.
fn base_with_side_files(root: &Path, model: &str) -> R<PathBuf> {
    // Same folder name as the fixture, so that the adapter's base_model_name_or_path matches.
    let dir = root.join("copy").join(model);
    copy_dir(&fixtures().join(model), &dir)?;
    std::fs::write(
        dir.join("tokenizer.json"),
        r#"{"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}"#,
    )?;
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token":"a"}"#)?;
    std::fs::write(dir.join("generation_config.json"), r#"{"do_sample":false}"#)?;
    std::fs::write(dir.join("special_tokens_map.json"), r#"{"eos_token":"a"}"#)?;
    std::fs::write(dir.join("chat_template.jinja"), "{{ messages }}")?;
    Ok(dir)
}

#[test]
fn sharded_output_in_hugging_face_layout() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let base = base_with_side_files(tmp.path(), "qwen2_untied")?;
    let adapter = fixtures().join("qwen2_untied/adapters/lora");
    let single = tmp.path().join("single");
    merge_adapter(&base, &adapter, &single, &options(MergeDType::F32))?;
    let sharded = tmp.path().join("sharded");
    let opts = MergeOptions {
        max_shard_bytes: 150_000,
        ..options(MergeDType::F32)
    };
    let report = merge_adapter(&base, &adapter, &sharded, &opts)?;
    let n = report.weight_files.len();
    assert!(n >= 3, "expected several shards, got {n}");
    for (i, f) in report.weight_files.iter().enumerate() {
        assert_eq!(
            f.file_name().and_then(|s| s.to_str()),
            Some(format!("model-{:05}-of-{n:05}.safetensors", i + 1).as_str())
        );
        let bytes = std::fs::read(f)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
        assert_eq!(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
        // Only a tensor larger than the limit may exceed it.
        let st = safetensors::SafeTensors::deserialize(&bytes)?;
        if st.len() > 1 {
            assert!(
                st.tensors()
                    .iter()
                    .map(|(_, v)| v.data().len())
                    .sum::<usize>()
                    <= 150_000
            );
        }
    }
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(
        sharded.join("model.safetensors.index.json"),
    )?)?;
    let map = index["weight_map"].as_object().ok_or("no weight_map")?;
    let all = load_all(&sharded)?;
    assert_eq!(map.len(), all.len());
    let mut total = 0u64;
    for (name, file) in map {
        let file = file.as_str().ok_or("file name")?;
        let st_bytes = std::fs::read(sharded.join(file))?;
        let st = safetensors::SafeTensors::deserialize(&st_bytes)?;
        total += st.tensor(name)?.data().len() as u64;
    }
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    // Same values as the single-file merge.
    let one = load_all(&single)?;
    for (name, t) in &all {
        assert_eq!(max_diff(t, &one[name])?, 0.0, "{name}");
    }
    assert!(!sharded.join("model.safetensors").exists());
    // Side files travel along; config.json records the dtype.
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "README.md",
    ] {
        assert!(sharded.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read(sharded.join("tokenizer.json"))?,
        std::fs::read(base.join("tokenizer.json"))?
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sharded.join("config.json"))?)?;
    assert_eq!(config["num_hidden_layers"], 3);
    let card = std::fs::read_to_string(sharded.join("README.md"))?;
    assert!(
        card.starts_with("---\n") && card.contains("library_name: transformers"),
        "{card}"
    );
    // The sharded folder loads and is the adapted model.
    let (expected, _) = fixture_batch("qwen2_untied")?;
    let d = max_abs_diff(
        &merged_log_probs(&sharded, "qwen2_untied")?,
        &expected["logp_lora"],
    )?;
    assert!(d < 1e-4, "{d}");
    Ok(())
}

/// A copy of `qwen2_tied/adapters/lora` with an edited config and tensors.
fn edited(
    root: &Path,
    name: &str,
    config: impl FnOnce(&mut serde_json::Value),
    tensors: impl FnOnce(&mut HashMap<String, Tensor>),
) -> R<PathBuf> {
    let src = fixtures().join("qwen2_tied/adapters/lora");
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("adapter_config.json"))?)?;
    config(&mut json);
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_vec(&json)?)?;
    let mut t =
        candle_core::safetensors::load(src.join("adapter_model.safetensors"), &Device::Cpu)?;
    tensors(&mut t);
    candle_core::safetensors::save(&t, dir.join("adapter_model.safetensors"))?;
    Ok(dir)
}

/// The output folder and its siblings are untouched: nothing half-written.
fn assert_nothing_written(root: &Path, before: &[String], out: &Path) {
    assert!(!out.exists(), "{} was created", out.display());
    assert_eq!(
        listing(root),
        before,
        "left-overs next to the output folder"
    );
}

#[test]
fn mismatched_adapters_are_refused_unless_forced() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let adapters = tmp.path().join("adapters");
    let outputs = tmp.path().join("out");
    std::fs::create_dir_all(&outputs)?;
    let tied = fixtures().join("qwen2_tied");
    let untied = fixtures().join("qwen2_untied");

    // Trained on qwen2_tied, merged into qwen2_untied (same shapes, other model).
    let other_base = fixtures().join("qwen2_tied/adapters/lora");
    let out = outputs.join("a");
    let err = merge_adapter(&untied, &other_base, &out, &options(MergeDType::F32))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapter_config.json") && err.contains("qwen2_tied") && err.contains("force"),
        "{err}"
    );
    assert_nothing_written(&outputs, &[], &out);
    let forced = MergeOptions {
        force: true,
        ..options(MergeDType::F32)
    };
    let report = merge_adapter(&untied, &other_base, &out, &forced)?;
    assert_eq!(report.merged_modules.len(), 14);
    assert!(
        report.warnings.iter().any(|w| w.contains("qwen2_tied")),
        "{:?}",
        report.warnings
    );

    // The same base under a Hub id of another model is refused too.
    let hub = edited(
        &adapters,
        "hub",
        |j| j["base_model_name_or_path"] = "Qwen/Qwen2.5-0.5B".into(),
        |_| {},
    )?;
    let named = MergeOptions {
        base_names: vec!["meta-llama/Llama-3.2-1B".into()],
        ..options(MergeDType::F32)
    };
    let before = listing(&outputs);
    let err = merge_adapter(&tied, &hub, &outputs.join("b"), &named)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Qwen/Qwen2.5-0.5B") && err.contains("meta-llama/Llama-3.2-1B"),
        "{err}"
    );
    assert_nothing_written(&outputs, &before, &outputs.join("b"));
    let named = MergeOptions {
        base_names: vec!["Qwen/Qwen2.5-0.5B".into()],
        ..options(MergeDType::F32)
    };
    merge_adapter(&tied, &hub, &outputs.join("b"), &named)?;

    // Shapes that do not fit the base.
    let bad = edited(
        &adapters,
        "shape",
        |_| {},
        |t| {
            let k = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight";
            t.insert(
                k.into(),
                Tensor::zeros((4, 64), DType::F32, &Device::Cpu).expect("zeros"),
            );
        },
    )?;
    let before = listing(&outputs);
    let err = merge_adapter(&tied, &bad, &outputs.join("c"), &options(MergeDType::F32))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapter_model.safetensors")
            && err.contains("model.layers.0.mlp.down_proj")
            && err.contains("[4, 64]"),
        "{err}"
    );
    assert_nothing_written(&outputs, &before, &outputs.join("c"));
    let report = merge_adapter(&tied, &bad, &outputs.join("c"), &forced)?;
    assert_eq!(report.merged_modules.len(), 13);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("skipped") && w.contains("down_proj")),
        "{:?}",
        report.warnings
    );
    let merged = load_all(&outputs.join("c"))?;
    let original = load_all(&tied)?;
    assert_eq!(
        max_diff(
            &merged["model.layers.0.mlp.down_proj.weight"],
            &original["model.layers.0.mlp.down_proj.weight"]
        )?,
        0.0
    );

    // A module the base does not have.
    let extra = edited(
        &adapters,
        "extra",
        |_| {},
        |t| {
            t.insert(
                "base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight".into(),
                Tensor::zeros((4, 64), DType::F32, &Device::Cpu).expect("zeros"),
            );
            t.insert(
                "base_model.model.model.layers.5.self_attn.q_proj.lora_B.weight".into(),
                Tensor::zeros((64, 4), DType::F32, &Device::Cpu).expect("zeros"),
            );
        },
    )?;
    let before = listing(&outputs);
    let err = merge_adapter(&tied, &extra, &outputs.join("d"), &options(MergeDType::F32))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.5.self_attn.q_proj") && err.contains("does not have"),
        "{err}"
    );
    assert_nothing_written(&outputs, &before, &outputs.join("d"));

    // A rank that contradicts adapter_config.json.
    let rank = edited(&adapters, "rank", |j| j["r"] = 8.into(), |_| {})?;
    let err = merge_adapter(&tied, &rank, &outputs.join("e"), &options(MergeDType::F32))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank 4") && err.contains("r = 8"), "{err}");

    // A GGUF file is a quantized copy, never merged into.
    let err = merge_adapter(
        &tied.join("model.f32.gguf"),
        &fixtures().join("qwen2_tied/adapters/lora"),
        &outputs.join("f"),
        &options(MergeDType::F32),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("model.f32.gguf") && err.contains("original Hugging Face folder"),
        "{err}"
    );

    // An existing, non-empty output folder is kept.
    let err = merge_adapter(
        &tied,
        &fixtures().join("qwen2_tied/adapters/lora"),
        &outputs.join("a"),
        &options(MergeDType::F32),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not empty"), "{err}");
    Ok(())
}

#[test]
fn adapter_trained_on_a_gguf_base_merges_into_the_hf_weights() -> R<()> {
    // The adapter tensors are in Hugging Face row order whatever the base format was, so the PEFT
    // adapter (which rdro also reproduces on the GGUF base, see golden.rs) merges into the
    // original folder and matches PEFT.
    let base = fixtures().join("llama31");
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("m");
    let opts = MergeOptions {
        base_names: vec![base.join("model.f16.gguf").display().to_string()],
        ..options(MergeDType::F32)
    };
    let report = merge_adapter(&base, &base.join("adapters/lora"), &out, &opts)?;
    assert_eq!(report.merged_modules.len(), 14);
    let (expected, _) = fixture_batch("llama31")?;
    let d = max_abs_diff(&merged_log_probs(&out, "llama31")?, &expected["logp_lora"])?;
    assert!(d < 1e-4, "{d}");
    Ok(())
}
