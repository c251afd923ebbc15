//! GGUF export of merged models (`rdro merge --gguf`): candle's GGUF reader parses the file, the
//! tensors follow llama.cpp's names, types and q/k row order (compared with the Python-written
//! fixture GGUF), and `load(ModelSource::Gguf)` gives the adapted model's log-probs within the
//! quantization's error.

use crate::adapters_common;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use adapters_common::{copy_dir, fixture_batch, fixtures, listing, max_abs_diff, R};
use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use rdro_lora::{ForwardMode, QuantType};
use rdro_models::merge::{export_gguf, merge_adapter, GgufQuant, MergeDType, MergeOptions};
use rdro_models::{load, LoadOptions, ModelSource};

fn read(path: &Path) -> R<(Content, BufReader<File>)> {
    let mut f = BufReader::new(File::open(path)?);
    let content = Content::read(&mut f)?;
    Ok((content, f))
}

fn tensor(content: &Content, f: &mut BufReader<File>, name: &str) -> R<Tensor> {
    Ok(content
        .tensor(f, name, &Device::Cpu)?
        .dequantize(&Device::Cpu)?)
}

fn meta<'a>(content: &'a Content, key: &str) -> R<&'a Value> {
    Ok(content
        .metadata
        .get(key)
        .ok_or_else(|| format!("no metadata {key}"))?)
}

fn logps(source: ModelSource, model: &str, quant: QuantType) -> R<Vec<Vec<f32>>> {
    let (_, batch) = fixture_batch(model)?;
    let options = LoadOptions {
        quantization: quant,
        ..Default::default()
    };
    let m = load(&source, &options)?.model;
    Ok(m.token_log_probs(&batch, ForwardMode::REFERENCE)?
        .to_dense()?)
}

fn max_diff(a: &Tensor, b: &Tensor) -> R<f32> {
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

#[test]
fn q8_0_merge_export_reads_back_with_the_adapted_log_probs() -> R<()> {
    let base = fixtures().join("llama31");
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("merged");
    let opts = MergeOptions {
        dtype: MergeDType::F32,
        gguf: Some(GgufQuant::Q8_0),
        ..Default::default()
    };
    let report = merge_adapter(&base, &base.join("adapters/lora"), &out, &opts)?;
    let g = report.gguf.ok_or("no GGUF report")?;
    assert_eq!(g.path, out.join("model-q8_0.gguf"));
    assert!(g.fallbacks.is_empty(), "{:?}", g.fallbacks);
    assert!(!g.tokenizer);

    // candle's reader: version 3, llama.cpp's keys and value types.
    let (content, mut f) = read(&g.path)?;
    assert!(matches!(content.magic, VersionedMagic::GgufV3));
    assert_eq!(
        meta(&content, "general.architecture")?.to_string()?,
        "llama"
    );
    assert_eq!(meta(&content, "general.file_type")?.to_u32()?, 7);
    assert_eq!(meta(&content, "general.quantization_version")?.to_u32()?, 2);
    for (key, want) in [
        ("llama.block_count", 2),
        ("llama.context_length", 128),
        ("llama.embedding_length", 64),
        ("llama.feed_forward_length", 128),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.rope.dimension_count", 16),
        ("llama.vocab_size", 320),
    ] {
        assert_eq!(meta(&content, key)?.to_u32()?, want, "{key}");
    }
    assert_eq!(meta(&content, "llama.rope.freq_base")?.to_f32()?, 500000.0);
    assert_eq!(
        meta(&content, "llama.attention.layer_norm_rms_epsilon")?.to_f32()?,
        1e-6
    );

    // The tensor set and types of llama.cpp's converter (the fixture GGUF was written by it).
    let (fixture, mut ff) = read(&base.join("model.f32.gguf"))?;
    let mut ours: Vec<&String> = content.tensor_infos.keys().collect();
    let mut theirs: Vec<&String> = fixture.tensor_infos.keys().collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    for (name, info) in &content.tensor_infos {
        let want = if info.shape.rank() == 1 {
            GgmlDType::F32
        } else {
            GgmlDType::Q8_0
        };
        assert_eq!(info.ggml_dtype, want, "{name}");
        assert_eq!(
            info.shape.dims(),
            fixture.tensor_infos[name].shape.dims(),
            "{name}"
        );
    }
    let rope = tensor(&content, &mut f, "rope_freqs.weight")?;
    assert!(max_diff(&rope, &tensor(&fixture, &mut ff, "rope_freqs.weight")?)? < 1e-6);

    // The adapted model, through rdro's GGUF loader.
    let (expected, _) = fixture_batch("llama31")?;
    let from_gguf = logps(
        ModelSource::Gguf(g.path.clone()),
        "llama31",
        QuantType::None,
    )?;
    let err = max_abs_diff(&from_gguf, &expected["logp_lora"])?;
    let effect = max_abs_diff(&from_gguf, &expected["logp_base"])?;
    assert!(
        err < 0.03 && effect > 5.0 * err,
        "q8_0 GGUF vs PEFT: {err} (adapter effect {effect})"
    );
    // The same as quantizing the merged folder to Q8_0 at load time, up to the embedding (which
    // the GGUF also holds in Q8_0).
    let at_load = logps(ModelSource::Folder(out.clone()), "llama31", "q8_0".parse()?)?;
    let dense = Tensor::new(
        at_load.iter().flatten().copied().collect::<Vec<f32>>(),
        &Device::Cpu,
    )?
    .reshape((3, 20))?;
    let d = max_abs_diff(&from_gguf, &dense)?;
    assert!(d < 0.01, "GGUF vs load-time Q8_0 of the same weights: {d}");
    Ok(())
}

#[test]
fn q_and_k_rows_follow_llama_cpp_order() -> R<()> {
    // Exporting the unmerged base must give the fixture's (Python, llama.cpp converter) tensors,
    // up to Q8_0 rounding: a wrong q/k row order would be off by the weights' own size.
    let base = fixtures().join("llama31");
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("base.gguf");
    let report = export_gguf(&base, &path, GgufQuant::Q8_0, false)?;
    assert_eq!(report.path, path);
    assert_eq!(listing(tmp.path()), vec!["base.gguf".to_string()]);
    let (content, mut f) = read(&path)?;
    let (fixture, mut ff) = read(&base.join("model.f32.gguf"))?;
    for name in fixture.tensor_infos.keys() {
        let (a, b) = (
            tensor(&content, &mut f, name)?,
            tensor(&fixture, &mut ff, name)?,
        );
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
        let d = max_diff(&a, &b)?;
        assert!(d <= scale / 100.0, "{name}: {d} (scale {scale})");
    }
    Ok(())
}

#[test]
fn q4k_export_falls_back_per_tensor_and_keeps_biases_and_tied_head() -> R<()> {
    let base = fixtures().join("qwen2_tied");
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("merged");
    let opts = MergeOptions {
        dtype: MergeDType::Bf16,
        gguf: Some(GgufQuant::Q4K),
        ..Default::default()
    };
    let report = merge_adapter(&base, &base.join("adapters/rslora"), &out, &opts)?;
    let g = report.gguf.ok_or("no GGUF report")?;
    // Widths 64 and 128 fit no 256-wide K-quant: Q4_K -> Q5_0, and the tied embedding (the output
    // head) Q6_K -> Q8_0, per tensor, as llama.cpp does.
    assert_eq!(g.fallbacks.len(), 2 * 7 + 1, "{:?}", g.fallbacks);
    assert!(g
        .fallbacks
        .contains(&("token_embd.weight".into(), GgmlDType::Q6K, GgmlDType::Q8_0)));
    assert!(g.fallbacks.contains(&(
        "blk.1.ffn_down.weight".into(),
        GgmlDType::Q4K,
        GgmlDType::Q5_0
    )));
    assert_eq!(g.fallback_summary().len(), 2);
    let (content, mut f) = read(&g.path)?;
    assert_eq!(
        meta(&content, "general.architecture")?.to_string()?,
        "qwen2"
    );
    assert!(!content.tensor_infos.contains_key("output.weight"));
    assert!(!content.tensor_infos.contains_key("rope_freqs.weight"));
    assert_eq!(
        content.tensor_infos["blk.0.attn_q.bias"].ggml_dtype,
        GgmlDType::F32
    );
    assert_eq!(
        content.tensor_infos["blk.0.attn_q.weight"].ggml_dtype,
        GgmlDType::Q5_0
    );
    assert_eq!(
        content.tensor_infos["token_embd.weight"].ggml_dtype,
        GgmlDType::Q8_0
    );
    // Biases are copied exactly (bf16 merge output, widened).
    let merged = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu)?;
    let bias = merged["model.layers.0.self_attn.q_proj.bias"].to_dtype(candle_core::DType::F32)?;
    assert_eq!(
        max_diff(&tensor(&content, &mut f, "blk.0.attn_q.bias")?, &bias)?,
        0.0
    );

    let (expected, _) = fixture_batch("qwen2_tied")?;
    let lp = logps(
        ModelSource::Gguf(g.path.clone()),
        "qwen2_tied",
        QuantType::None,
    )?;
    let err = max_abs_diff(&lp, &expected["logp_rslora"])?;
    let effect = max_abs_diff(&lp, &expected["logp_base"])?;
    assert!(
        err < 0.1 && effect > 3.0 * err,
        "q4k GGUF vs PEFT: {err} (adapter effect {effect})"
    );
    Ok(())
}

#[test]
fn tokenizer_goes_into_the_gguf() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("qwen2_tied");
    copy_dir(&fixtures().join("qwen2_tied"), &dir)?;
    // A byte-level BPE vocabulary of 300 tokens, two special tokens at 318 and 319, ids 300..318
    // unused (padding, as in real checkpoints whose embedding is wider than the vocabulary).
    let vocab: serde_json::Map<String, serde_json::Value> = (0..300)
        .map(|i| (format!("t{i}"), serde_json::json!(i)))
        .collect();
    let tok = serde_json::json!({
        "model": {"type": "BPE", "vocab": vocab, "merges": [["t1", "t2"], "t3 t4"]},
        "added_tokens": [
            {"id": 318, "content": "<|im_start|>", "special": true},
            {"id": 319, "content": "<|endoftext|>", "special": true},
            {"id": 299, "content": "t299", "special": false},
        ],
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string())?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::json!({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "add_bos_token": false,
                           "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"})
        .to_string(),
    )?;
    let path = tmp.path().join("out.gguf");
    let report = export_gguf(&dir, &path, GgufQuant::Q8_0, false)?;
    assert!(report.tokenizer);
    let (content, _) = read(&path)?;
    assert_eq!(meta(&content, "tokenizer.ggml.model")?.to_string()?, "gpt2");
    assert_eq!(meta(&content, "tokenizer.ggml.pre")?.to_string()?, "qwen2");
    let tokens = meta(&content, "tokenizer.ggml.tokens")?.to_vec()?;
    assert_eq!(tokens.len(), 320);
    assert_eq!(tokens[7].to_string()?, "t7");
    assert_eq!(tokens[305].to_string()?, "[PAD305]");
    assert_eq!(tokens[319].to_string()?, "<|endoftext|>");
    let types = meta(&content, "tokenizer.ggml.token_type")?.to_vec()?;
    let ty = |i: usize| types[i].to_i32();
    assert_eq!((ty(7)?, ty(299)?, ty(305)?, ty(318)?), (1, 4, 5, 3));
    let merges = meta(&content, "tokenizer.ggml.merges")?.to_vec()?;
    assert_eq!(
        merges
            .iter()
            .map(|m| m.to_string().cloned())
            .collect::<Result<Vec<_>, _>>()?,
        vec!["t1 t2", "t3 t4"]
    );
    assert_eq!(
        meta(&content, "tokenizer.ggml.eos_token_id")?.to_u32()?,
        319
    );
    assert_eq!(
        meta(&content, "tokenizer.ggml.padding_token_id")?.to_u32()?,
        319
    );
    assert!(!meta(&content, "tokenizer.ggml.add_bos_token")?.to_bool()?);
    assert!(meta(&content, "tokenizer.chat_template")?
        .to_string()?
        .contains("m.content"));
    // The model still loads from it.
    let lp = logps(ModelSource::Gguf(path), "qwen2_tied", QuantType::None)?;
    let (expected, _) = fixture_batch("qwen2_tied")?;
    assert!(max_abs_diff(&lp, &expected["logp_base"])? < 0.02);
    Ok(())
}

#[test]
fn failed_export_leaves_nothing() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("broken");
    copy_dir(&fixtures().join("llama31"), &dir)?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    config["num_hidden_layers"] = 3.into();
    std::fs::write(dir.join("config.json"), config.to_string())?;
    let outputs = tmp.path().join("out");
    std::fs::create_dir_all(&outputs)?;
    let err = export_gguf(&dir, &outputs.join("m.gguf"), GgufQuant::Q8_0, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.2") && err.contains("missing"),
        "{err}"
    );
    assert!(listing(&outputs).is_empty(), "{:?}", listing(&outputs));
    Ok(())
}
