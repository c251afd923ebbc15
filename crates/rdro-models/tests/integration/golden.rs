//! Golden checks against Hugging Face transformers and PEFT, over the fixtures that
//! `tests/fixtures/generate.py` writes (see tests/fixtures/README.md).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use rdro_lora::peft::{read_weights, AdapterConfig, KEY_PREFIX};
use rdro_lora::{ForwardMode, FrozenWeight, QuantType};
use rdro_models::{load, Batch, LlamaModel, LoadOptions, ModelSource};

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models")
}

struct Fixture {
    dir: PathBuf,
    expected: HashMap<String, Tensor>,
    batch: Batch,
}

fn fixture(name: &str) -> R<Fixture> {
    let dir = fixtures().join(name);
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu)?;
    let ids = expected["input_ids"]
        .to_dtype(DType::U32)?
        .to_vec2::<u32>()?;
    let attn = expected["attention_mask"].to_vec2::<i64>()?;
    let target = expected["target_mask"].to_vec2::<i64>()?;
    let lengths = attn
        .iter()
        .map(|r| r.iter().filter(|m| **m == 1).count())
        .collect();
    let target = target
        .iter()
        .map(|r| r.iter().map(|m| *m == 1).collect())
        .collect();
    let batch = Batch::from_padded(ids, lengths, target)?;
    Ok(Fixture {
        dir,
        expected,
        batch,
    })
}

fn load_model(source: ModelSource, quant: QuantType) -> R<LlamaModel> {
    let options = LoadOptions {
        quantization: quant,
        ..Default::default()
    };
    Ok(load(&source, &options)?.model)
}

fn with_adapter(mut model: LlamaModel, dir: &std::path::Path) -> R<LlamaModel> {
    let config = AdapterConfig::read(dir)?;
    let tensors = read_weights(dir, &Device::Cpu)?;
    model.load_adapter(&config.lora_config(), &tensors)?;
    Ok(model)
}

fn max_abs_diff(a: &[Vec<f32>], b: &Tensor) -> R<f32> {
    let b = b.to_vec2::<f32>()?;
    let mut m = 0f32;
    for (ra, rb) in a.iter().zip(&b) {
        for (x, y) in ra.iter().zip(rb) {
            m = m.max((x - y).abs());
        }
    }
    Ok(m)
}

/// Relative error ||a - b|| / ||b||.
fn rel_err(a: &Tensor, b: &Tensor) -> R<f32> {
    let num = (a - b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    let den = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    Ok(num / den.max(1e-30))
}

const MODELS: [&str; 3] = ["qwen2_tied", "qwen2_untied", "llama31"];

#[test]
fn base_log_probs_match_transformers() -> R<()> {
    for name in MODELS {
        let f = fixture(name)?;
        let model = load_model(ModelSource::Folder(f.dir.clone()), QuantType::None)?;
        let got = model
            .token_log_probs(&f.batch, ForwardMode::REFERENCE)?
            .to_dense()?;
        let diff = max_abs_diff(&got, &f.expected["logp_base"])?;
        assert!(diff < 1e-4, "{name}: max |Δ logp| = {diff}");
        // The fixture's values are not trivially small.
        let scale = f.expected["logp_base"]
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(scale > 1.0, "{name}");
    }
    Ok(())
}

#[test]
fn adapter_log_probs_and_gradients_match_peft() -> R<()> {
    for name in MODELS {
        let f = fixture(name)?;
        for adapter in ["lora", "rslora"] {
            let base = load_model(ModelSource::Folder(f.dir.clone()), QuantType::None)?;
            let model = with_adapter(base, &f.dir.join("adapters").join(adapter))?;
            let on = model
                .token_log_probs(&f.batch, ForwardMode::POLICY_EVAL)?
                .to_dense()?;
            let diff = max_abs_diff(&on, &f.expected[&format!("logp_{adapter}")])?;
            assert!(diff < 1e-4, "{name}/{adapter} adapter on: {diff}");
            let off = model
                .token_log_probs(&f.batch, ForwardMode::REFERENCE)?
                .to_dense()?;
            let diff = max_abs_diff(&off, &f.expected["logp_base"])?;
            assert!(diff < 1e-4, "{name}/{adapter} adapter off: {diff}");
            // The adapter changes the outputs noticeably (else the comparison proves little).
            let effect = max_abs_diff(&on, &f.expected["logp_base"])?;
            assert!(
                effect > 1e-2,
                "{name}/{adapter}: adapter effect only {effect}"
            );

            let params = model.trainable_parameters();
            assert_eq!(params.len(), 14 * model.config.num_hidden_layers);
            for checkpointing in [false, true] {
                let (_, grads) = model.value_and_grad(
                    &f.batch,
                    ForwardMode::POLICY_EVAL,
                    checkpointing,
                    |lp| Ok((lp.per_sequence()?.sum_all()?, ())),
                )?;
                for ((pname, _), g) in params.iter().zip(&grads) {
                    let key = format!("grad.{adapter}.{KEY_PREFIX}{pname}");
                    let want = f
                        .expected
                        .get(&key)
                        .ok_or_else(|| format!("fixture lacks {key}"))?;
                    let e = rel_err(g, want)?;
                    assert!(
                        e < 1e-4,
                        "{name}/{adapter} {pname} (checkpointing {checkpointing}): rel err {e}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn checkpointing_gives_identical_gradients_with_dropout() -> R<()> {
    let f = fixture("llama31")?;
    let base = load_model(ModelSource::Folder(f.dir.clone()), QuantType::None)?;
    let mut model = with_adapter(base, &f.dir.join("adapters/lora"))?;
    // Same adapter, with dropout on, so that the recompute must replay the masks.
    let mut config = AdapterConfig::read(&f.dir.join("adapters/lora"))?.lora_config();
    config.dropout = 0.3;
    model.load_adapter(
        &config,
        &read_weights(&f.dir.join("adapters/lora"), &Device::Cpu)?,
    )?;
    let mode = ForwardMode {
        adapter: true,
        dropout_seed: Some(42),
    };
    let run = |ckpt| {
        model.value_and_grad(&f.batch, mode, ckpt, |lp| {
            Ok((lp.per_sequence()?.sum_all()?, ()))
        })
    };
    let (_, plain) = run(false)?;
    let (_, ckpt) = run(true)?;
    for (a, b) in plain.iter().zip(&ckpt) {
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let s = a.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            d <= 1e-6 * s.max(1.0),
            "checkpointing changed a gradient by {d}"
        );
    }
    // And dropout did something: gradients differ from the no-dropout ones.
    let (_, nodrop) = model.value_and_grad(&f.batch, ForwardMode::POLICY_EVAL, false, |lp| {
        Ok((lp.per_sequence()?.sum_all()?, ()))
    })?;
    assert!(rel_err(&plain[0], &nodrop[0])? > 1e-3);
    Ok(())
}

#[test]
fn gguf_files_match_the_safetensors_folder() -> R<()> {
    for name in ["qwen2_tied", "llama31"] {
        let f = fixture(name)?;
        for (file, tol) in [("model.f32.gguf", 1e-4f32), ("model.f16.gguf", 5e-3)] {
            let model = load_model(ModelSource::Gguf(f.dir.join(file)), QuantType::None)?;
            let got = model
                .token_log_probs(&f.batch, ForwardMode::REFERENCE)?
                .to_dense()?;
            let diff = max_abs_diff(&got, &f.expected["logp_base"])?;
            assert!(diff < tol, "{name}/{file}: {diff}");
            // With the (un-permuted) adapter too: adapters index weights in Hugging Face row order.
            let model = with_adapter(model, &f.dir.join("adapters/lora"))?;
            let got = model
                .token_log_probs(&f.batch, ForwardMode::POLICY_EVAL)?
                .to_dense()?;
            let diff = max_abs_diff(&got, &f.expected["logp_lora"])?;
            assert!(diff < tol, "{name}/{file} with adapter: {diff}");
        }
    }
    Ok(())
}

/// The model with every quantized weight replaced by its dense dequantized value.
fn dequantized(model: &LlamaModel) -> R<LlamaModel> {
    let mut dense = model.clone();
    for layer in &mut dense.layers {
        let a = &mut layer.self_attn;
        let m = &mut layer.mlp;
        for l in [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ] {
            let w = l.base.weight().materialize(DType::F32, &Device::Cpu)?;
            l.base = rdro_lora::FrozenLinear::new(FrozenWeight::Dense(w), l.base.bias().cloned());
        }
    }
    Ok(dense)
}

#[test]
fn quantized_base_trains_every_adapter_and_matches_dequantized_dense() -> R<()> {
    let f = fixture("qwen2_untied")?;
    for quant in ["q8_0", "q4_0", "q4k", "q6k"] {
        let q: QuantType = quant.parse()?;
        let options = LoadOptions {
            quantization: q,
            ..Default::default()
        };
        let loaded = load(&ModelSource::Folder(f.dir.clone()), &options)?;
        // Width 64 fits no K-quant: those fall back per tensor, and say so.
        if quant.ends_with('k') {
            assert!(
                !loaded.report.fallbacks.is_empty(),
                "{quant}: no fallback reported"
            );
        } else {
            assert!(
                loaded.report.fallbacks.is_empty() && loaded.report.dense == 0,
                "{quant}"
            );
        }
        let model = with_adapter(loaded.model, &f.dir.join("adapters/lora"))?;
        let dense = dequantized(&model)?;
        let loss = |lp: &rdro_models::TokenLogProbs| Ok((lp.per_sequence()?.sum_all()?, ()));
        let (_, gq) = model.value_and_grad(&f.batch, ForwardMode::POLICY_EVAL, false, loss)?;
        let (_, gd) = dense.value_and_grad(&f.batch, ForwardMode::POLICY_EVAL, false, loss)?;
        for ((name, _), (a, b)) in model.trainable_parameters().iter().zip(gq.iter().zip(&gd)) {
            let norm = a.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(norm > 0.0, "{quant}: {name} received no gradient");
            let e = rel_err(a, b)?;
            assert!(
                e < 1e-5,
                "{quant}: {name} differs from the dequantized dense model: {e}"
            );
        }
        // Quantization error stays moderate against the true dense model.
        let lp = model
            .token_log_probs(&f.batch, ForwardMode::REFERENCE)?
            .to_dense()?;
        let diff = max_abs_diff(&lp, &f.expected["logp_base"])?;
        assert!(diff < 0.5, "{quant}: logp error {diff}");
    }
    Ok(())
}
