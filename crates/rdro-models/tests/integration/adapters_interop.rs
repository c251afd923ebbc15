//! PEFT interoperability both ways, over committed fixtures (tests/fixtures/README.md, "Adapters
//! written by rdro"):
//! - adapters written by rdro are reproduced byte for byte, and PEFT (run once by
//!   `tests/fixtures/generate_adapters.py`) gets the same log-probs from them as rdro;
//! - adapters written by PEFT load in rdro, give PEFT's log-probs, and survive a re-save;
//! - what rdro does not support is refused with an error naming the file and the feature.
//!
//! `RDRO_BLESS_FIXTURES=1 cargo test -p rdro-models --test integration adapters_interop::` rewrites the
//! rdro-written adapter fixtures instead of comparing them.

use crate::adapters_common;

use std::path::{Path, PathBuf};

use adapters_common::{fixture_batch, fixtures, max_abs_diff, R};
use candle_core::{DType, Device, Tensor};
use rdro_lora::peft::{
    read_weights, save_adapter, AdapterConfig, AdapterTensors, ModelCard, Recipe, SaveDType,
    CARD_FILE, CONFIG_FILE, WEIGHTS_FILE,
};
use rdro_lora::{ForwardMode, LoraConfig, TargetModules};
use rdro_models::{load, LlamaModel, LoadOptions, ModelSource};

/// An rdro-written adapter fixture.
struct Spec {
    model: &'static str,
    name: &'static str,
    lora: LoraConfig,
    dtype: SaveDType,
    seed: u64,
}

fn specs() -> Vec<Spec> {
    vec![
        Spec {
            model: "llama31",
            name: "rdro_f32",
            lora: LoraConfig {
                r: 4,
                alpha: 8.0,
                dropout: 0.0,
                target_modules: TargetModules::default(),
                use_rslora: false,
            },
            dtype: SaveDType::F32,
            seed: 1,
        },
        Spec {
            model: "qwen2_tied",
            name: "rdro_bf16",
            lora: LoraConfig {
                r: 2,
                alpha: 6.0,
                dropout: 0.05,
                target_modules: TargetModules::List(vec![
                    "down_proj".into(),
                    "q_proj".into(),
                    "up_proj".into(),
                    "v_proj".into(),
                ]),
                use_rslora: true,
            },
            dtype: SaveDType::Bf16,
            seed: 2,
        },
    ]
}

/// Deterministic values in [-scale, scale] (SplitMix64), independent of any RNG crate version.
fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn base(model: &str) -> R<LlamaModel> {
    Ok(load(
        &ModelSource::Folder(fixtures().join(model)),
        &LoadOptions::default(),
    )?
    .model)
}

/// The adapter of `spec`: every targeted module of the base, A and B filled deterministically.
fn build(spec: &Spec) -> R<(AdapterConfig, AdapterTensors, ModelCard)> {
    let model = base(spec.model)?;
    let mut tensors = AdapterTensors::new();
    for (k, (path, module)) in model.modules().into_iter().enumerate() {
        let name = path.rsplit('.').next().unwrap_or_default();
        if !spec.lora.target_modules.contains(name) {
            continue;
        }
        let (out_f, in_f) = module.base.dims()?;
        let r = spec.lora.r;
        let seed = spec.seed * 1000 + k as u64 * 2;
        let a = Tensor::from_vec(values(seed, r * in_f, 0.1), (r, in_f), &Device::Cpu)?;
        let b = Tensor::from_vec(values(seed + 1, out_f * r, 0.05), (out_f, r), &Device::Cpu)?;
        tensors.insert(path, (a, b));
    }
    let config = AdapterConfig::from_lora(
        &spec.lora,
        Some(format!("tests/fixtures/models/{}", spec.model)),
    );
    let card = ModelCard {
        base_model: None,
        recipe: Recipe {
            objective: "rdro".into(),
            alpha: "0.4".into(),
            data: "tests/data/valid/unpaired_standard.jsonl".into(),
            steps: 3,
            learning_rate: 0.01,
            extra: vec![("batch size".into(), "4".into())],
        },
        metrics: vec![("loss".into(), 0.6902), ("eval/loss".into(), 0.7012)],
        tags: vec![],
    };
    Ok((config, tensors, card))
}

fn committed(spec: &Spec) -> PathBuf {
    fixtures().join(spec.model).join("adapters").join(spec.name)
}

fn bless() -> bool {
    std::env::var("RDRO_BLESS_FIXTURES").is_ok_and(|v| v == "1")
}

fn with_adapter(mut model: LlamaModel, dir: &Path) -> R<LlamaModel> {
    let config = AdapterConfig::read(dir)?;
    let tensors = read_weights(dir, &Device::Cpu)?;
    model.load_adapter(&config.lora_config(), &tensors)?;
    Ok(model)
}

#[test]
fn rdro_written_adapters_are_reproducible_and_load_in_peft_with_the_same_log_probs() -> R<()> {
    for spec in specs() {
        let (config, tensors, card) = build(&spec)?;
        let dir = committed(&spec);
        if bless() {
            save_adapter(&dir, &config, &tensors, spec.dtype, Some(&card), true)?;
            eprintln!(
                "wrote {}; now run tests/fixtures/generate_adapters.py",
                dir.display()
            );
            continue;
        }
        // Byte-identical re-write.
        let tmp = tempfile::tempdir()?;
        let fresh = tmp.path().join(spec.name);
        save_adapter(&fresh, &config, &tensors, spec.dtype, Some(&card), false)?;
        for file in [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE] {
            let want = std::fs::read(dir.join(file))
                .map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
            let got = std::fs::read(fresh.join(file))?;
            assert!(
                got == want,
                "{}/{file} differs from a fresh write (re-bless if the format changed on purpose)",
                spec.name
            );
        }
        assert_eq!(
            adapters_common::listing(&fresh),
            adapters_common::listing(&dir),
            "{}",
            spec.name
        );

        // Only PEFT's core LoRA keys, so that older PEFT versions load the file.
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(CONFIG_FILE))?)?;
        let mut keys: Vec<&str> = json
            .as_object()
            .ok_or("config is not an object")?
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "base_model_name_or_path",
                "bias",
                "fan_in_fan_out",
                "inference_mode",
                "init_lora_weights",
                "lora_alpha",
                "lora_dropout",
                "peft_type",
                "r",
                "target_modules",
                "task_type",
                "use_rslora"
            ]
        );
        // PEFT's key names and shapes, metadata {"format": "pt"}, the requested dtype.
        let bytes = std::fs::read(dir.join(WEIGHTS_FILE))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
        assert_eq!(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
        assert_eq!(st.len(), 2 * tensors.len());
        for (module, (a, b)) in &tensors {
            let ka = st.tensor(&format!("base_model.model.{module}.lora_A.weight"))?;
            let kb = st.tensor(&format!("base_model.model.{module}.lora_B.weight"))?;
            assert_eq!(ka.shape(), a.dims());
            assert_eq!(kb.shape(), b.dims());
            let want = match spec.dtype {
                SaveDType::F32 => safetensors::Dtype::F32,
                SaveDType::Bf16 => safetensors::Dtype::BF16,
            };
            assert_eq!(ka.dtype(), want);
        }
        // Values read back equal what was written (after the dtype's rounding).
        let back = read_weights(&dir, &Device::Cpu)?;
        for (module, (a, _)) in &tensors {
            let want = a.to_dtype(match spec.dtype {
                SaveDType::F32 => DType::F32,
                SaveDType::Bf16 => DType::BF16,
            })?;
            let diff = (back[module].0.clone() - want.to_dtype(DType::F32)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{module}");
        }

        // PEFT's log-probs with this adapter (generate_adapters.py) equal rdro's.
        let (expected, batch) = fixture_batch(spec.model)?;
        let peft_path = fixtures()
            .join(spec.model)
            .join("expected_rdro_written.safetensors");
        let peft = candle_core::safetensors::load(&peft_path, &Device::Cpu).map_err(|e| {
            format!(
                "{}: {e} (run tests/fixtures/generate_adapters.py)",
                peft_path.display()
            )
        })?;
        let key = format!("logp_{}", spec.name);
        let want = peft
            .get(&key)
            .ok_or_else(|| format!("{} lacks {key}", peft_path.display()))?;
        let model = with_adapter(base(spec.model)?, &dir)?;
        let got = model
            .token_log_probs(&batch, ForwardMode::POLICY_EVAL)?
            .to_dense()?;
        let diff = max_abs_diff(&got, want)?;
        assert!(
            diff < 1e-4,
            "{}: rdro vs PEFT log-probs differ by {diff}",
            spec.name
        );
        let effect = max_abs_diff(&got, &expected["logp_base"])?;
        assert!(
            effect > 1e-2,
            "{}: the adapter barely changes the model ({effect})",
            spec.name
        );
    }
    Ok(())
}

#[test]
fn peft_written_adapters_load_score_and_resave() -> R<()> {
    for (model, adapter) in [("qwen2_untied", "lora"), ("llama31", "rslora")] {
        let (expected, batch) = fixture_batch(model)?;
        let dir = fixtures().join(model).join("adapters").join(adapter);
        let m = with_adapter(base(model)?, &dir)?;
        let got = m
            .token_log_probs(&batch, ForwardMode::POLICY_EVAL)?
            .to_dense()?;
        let diff = max_abs_diff(&got, &expected[&format!("logp_{adapter}")])?;
        assert!(diff < 1e-4, "{model}/{adapter}: {diff}");

        // Continue from it: re-saving keeps every value and the LoRA settings.
        let config = AdapterConfig::read(&dir)?;
        let tmp = tempfile::tempdir()?;
        let out = tmp.path().join("resaved");
        save_adapter(
            &out,
            &config,
            &m.adapter_tensors(),
            SaveDType::F32,
            None,
            false,
        )?;
        let again = AdapterConfig::read(&out)?;
        assert_eq!(again.lora_config(), config.lora_config());
        assert_eq!(
            again.base_model_name_or_path,
            config.base_model_name_or_path
        );
        let (a, b) = (
            read_weights(&dir, &Device::Cpu)?,
            read_weights(&out, &Device::Cpu)?,
        );
        assert_eq!(a.len(), b.len());
        for (k, (x, y)) in &a {
            let d = (x - &b[k].0)?.abs()?.max_all()?.to_scalar::<f32>()?
                + (y - &b[k].1)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(d, 0.0, "{k}");
        }
    }
    Ok(())
}

/// A copy of the PEFT adapter `qwen2_tied/adapters/lora` with `edit` applied to its config JSON
/// and `tensors` to its weights.
fn edited_adapter(
    root: &Path,
    edit: impl FnOnce(&mut serde_json::Value),
    tensors: impl FnOnce(&mut Vec<(String, Tensor)>),
) -> R<PathBuf> {
    let src = fixtures().join("qwen2_tied/adapters/lora");
    let dir = root.join(format!("edited-{}", rand_suffix()));
    std::fs::create_dir_all(&dir)?;
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join(CONFIG_FILE))?)?;
    edit(&mut json);
    std::fs::write(dir.join(CONFIG_FILE), serde_json::to_vec_pretty(&json)?)?;
    let loaded = candle_core::safetensors::load(src.join(WEIGHTS_FILE), &Device::Cpu)?;
    let mut list: Vec<(String, Tensor)> = loaded.into_iter().collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    tensors(&mut list);
    let map: std::collections::HashMap<String, Tensor> = list.into_iter().collect();
    candle_core::safetensors::save(&map, dir.join(WEIGHTS_FILE))?;
    Ok(dir)
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}

/// Reads the adapter and installs it on qwen2_tied; the error text when that fails.
fn try_load(dir: &Path) -> Result<(), String> {
    let config = AdapterConfig::read(dir).map_err(|e| e.to_string())?;
    let tensors = read_weights(dir, &Device::Cpu).map_err(|e| e.to_string())?;
    let mut model = base("qwen2_tied").map_err(|e| e.to_string())?;
    model
        .load_adapter(&config.lora_config(), &tensors)
        .map_err(|e| e.to_string())
}

#[test]
fn unsupported_peft_features_are_refused_with_clear_errors() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let keep = |_: &mut Vec<(String, Tensor)>| {};
    // The unedited copy loads (so the refusals below are about the edits).
    try_load(&edited_adapter(root, |_| {}, keep)?)?;

    let cases: Vec<(&str, PathBuf, &[&str])> = vec![
        (
            "DoRA",
            edited_adapter(root, |j| j["use_dora"] = true.into(), keep)?,
            &["use_dora", CONFIG_FILE],
        ),
        (
            "modules_to_save",
            edited_adapter(
                root,
                |j| j["modules_to_save"] = serde_json::json!(["lm_head"]),
                keep,
            )?,
            &["modules_to_save", CONFIG_FILE],
        ),
        (
            "trained biases",
            edited_adapter(root, |j| j["bias"] = "lora_only".into(), keep)?,
            &["bias", "lora_only"],
        ),
        (
            "bias tensors",
            edited_adapter(
                root,
                |_| {},
                |l| {
                    let t = Tensor::zeros(64, DType::F32, &Device::Cpu).expect("zeros");
                    l.push((
                        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias".into(),
                        t,
                    ));
                },
            )?,
            &["lora_B.bias", WEIGHTS_FILE],
        ),
        (
            "a target module the base lacks",
            edited_adapter(
                root,
                |_| {},
                |l| {
                    let a = Tensor::zeros((4, 64), DType::F32, &Device::Cpu).expect("zeros");
                    let b = Tensor::zeros((64, 4), DType::F32, &Device::Cpu).expect("zeros");
                    l.push((
                        "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight".into(),
                        a,
                    ));
                    l.push((
                        "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight".into(),
                        b,
                    ));
                },
            )?,
            &["model.layers.7.self_attn.q_proj", "does not have"],
        ),
        (
            "shapes that do not fit",
            edited_adapter(
                root,
                |_| {},
                |l| {
                    for (k, t) in l.iter_mut() {
                        if k == "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight" {
                            *t = Tensor::zeros((4, 32), DType::F32, &Device::Cpu).expect("zeros");
                        }
                    }
                },
            )?,
            &["model.layers.1.mlp.up_proj", "[4, 32]"],
        ),
        (
            "an unknown target module",
            edited_adapter(
                root,
                |j| j["target_modules"] = serde_json::json!(["q_proj", "embed_tokens"]),
                keep,
            )?,
            &["embed_tokens", "target_modules"],
        ),
        (
            "another PEFT method",
            edited_adapter(root, |j| j["peft_type"] = "IA3".into(), keep)?,
            &["IA3"],
        ),
    ];
    for (what, dir, needles) in cases {
        let err = try_load(&dir).expect_err(what);
        for n in needles {
            assert!(
                err.contains(n),
                "{what}: error {err:?} does not mention {n:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn adapters_trained_on_a_gguf_base_are_saved_in_hugging_face_row_order() -> R<()> {
    // The GGUF loader undoes llama.cpp's q/k row permutation, so the adapter's gradients (and
    // hence any trained update) on a GGUF base are those of the Hugging Face base, and the saved
    // adapter applies to the Hugging Face weights unchanged.
    let dir = fixtures().join("llama31");
    let adapter = dir.join("adapters/lora");
    let (expected, batch) = fixture_batch("llama31")?;
    let hf = with_adapter(base("llama31")?, &adapter)?;
    let gguf_base = load(
        &ModelSource::Gguf(dir.join("model.f32.gguf")),
        &LoadOptions::default(),
    )?
    .model;
    let gguf = with_adapter(gguf_base, &adapter)?;
    let loss = |lp: &rdro_models::TokenLogProbs| Ok((lp.per_sequence()?.sum_all()?, ()));
    let (_, g_hf) = hf.value_and_grad(&batch, ForwardMode::POLICY_EVAL, false, loss)?;
    let (_, g_gguf) = gguf.value_and_grad(&batch, ForwardMode::POLICY_EVAL, false, loss)?;
    for ((name, _), (a, b)) in hf
        .trainable_parameters()
        .iter()
        .zip(g_hf.iter().zip(&g_gguf))
    {
        let scale = a.abs()?.max_all()?.to_scalar::<f32>()?;
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            scale > 0.0 && d <= 1e-3 * scale,
            "{name}: GGUF-base gradient differs by {d} (scale {scale})"
        );
    }
    // A step of plain gradient ascent on the GGUF base, saved, and applied to the HF base.
    let mut tensors = gguf.adapter_tensors();
    for ((name, _), g) in gguf.trainable_parameters().iter().zip(&g_gguf) {
        let module = name
            .trim_end_matches(".lora_A.weight")
            .trim_end_matches(".lora_B.weight");
        let entry = tensors.get_mut(module).ok_or("module")?;
        if name.ends_with("lora_A.weight") {
            entry.0 = (&entry.0 + (g * 1e-2)?)?;
        } else {
            entry.1 = (&entry.1 + (g * 1e-2)?)?;
        }
    }
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("trained-on-gguf");
    let config = AdapterConfig::read(&adapter)?;
    save_adapter(&out, &config, &tensors, SaveDType::F32, None, false)?;
    let on_hf = with_adapter(base("llama31")?, &out)?;
    let on_gguf = with_adapter(
        load(
            &ModelSource::Gguf(dir.join("model.f32.gguf")),
            &LoadOptions::default(),
        )?
        .model,
        &out,
    )?;
    let a = on_hf
        .token_log_probs(&batch, ForwardMode::POLICY_EVAL)?
        .to_dense()?;
    let b = on_gguf
        .token_log_probs(&batch, ForwardMode::POLICY_EVAL)?
        .to_dense()?;
    let b = Tensor::new(
        b.iter().flatten().copied().collect::<Vec<f32>>(),
        &Device::Cpu,
    )?
    .reshape((3, 20))?;
    assert!(max_abs_diff(&a, &b)? < 1e-4);
    // The step moved the model (towards higher log-probs).
    let before = expected["logp_lora"].sum_all()?.to_scalar::<f32>()?;
    let after: f32 = a.iter().flatten().sum();
    assert!(after > before + 1e-3, "{before} -> {after}");
    Ok(())
}
