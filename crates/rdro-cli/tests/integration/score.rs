//! `rdro score` end to end on the golden fixtures: the printed log-probs are transformers' and
//! PEFT's (summed over each row's completion).

use std::path::PathBuf;
use std::process::Command;

use candle_core::{Device, Tensor};

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

/// The fixture batch as pre-tokenized JSONL rows, and the expected per-row sums.
fn rows(name: &str) -> R<(String, Vec<f64>, Vec<f64>)> {
    let e =
        candle_core::safetensors::load(fixture(name).join("expected.safetensors"), &Device::Cpu)?;
    let ids = e["input_ids"].to_vec2::<i64>()?;
    let attn = e["attention_mask"].to_vec2::<i64>()?;
    let target = e["target_mask"].to_vec2::<i64>()?;
    let sums = |t: &Tensor| -> R<Vec<f64>> {
        Ok(t.to_vec2::<f32>()?
            .iter()
            .map(|r| r.iter().map(|v| f64::from(*v)).sum())
            .collect())
    };
    let mut text = String::new();
    for ((ids, attn), target) in ids.iter().zip(&attn).zip(&target) {
        let len = attn.iter().filter(|m| **m == 1).count();
        let start = target
            .iter()
            .position(|m| *m == 1)
            .ok_or("row without targets")?;
        let row = serde_json::json!({
            "prompt_ids": &ids[..start],
            "completion_ids": &ids[start..len],
            "label": true,
        });
        text.push_str(&format!("{row}\n"));
    }
    Ok((text, sums(&e["logp_base"])?, sums(&e["logp_lora"])?))
}

fn rdro(args: &[&str]) -> R<Vec<serde_json::Value>> {
    let out = Command::new(env!("CARGO_BIN_EXE_rdro"))
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "rdro {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

#[test]
fn score_matches_transformers_and_peft() -> R<()> {
    let dir = tempfile::tempdir()?;
    for name in ["qwen2_tied", "llama31"] {
        let (text, base, lora) = rows(name)?;
        let data = dir.path().join(format!("{name}.jsonl"));
        std::fs::write(&data, text)?;
        let base_dir = fixture(name);
        let adapter = base_dir.join("adapters/lora");
        let out = dir.path().join(format!("{name}.scores.jsonl"));
        let args = [
            "score",
            "--base",
            base_dir.to_str().ok_or("path")?,
            "--adapter",
            adapter.to_str().ok_or("path")?,
            "--data",
            data.to_str().ok_or("path")?,
            "--out",
            out.to_str().ok_or("path")?,
            "--batch-size",
            "2",
        ];
        assert!(rdro(&args)?.is_empty(), "--out keeps standard output empty");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(lines.len(), 3);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line["index"], i);
            let logp = line["logp"].as_f64().ok_or("logp")?;
            let logp_a = line["logp_adapter"].as_f64().ok_or("logp_adapter")?;
            assert!(
                (logp - base[i]).abs() < 1e-3,
                "{name} row {i}: {logp} vs {}",
                base[i]
            );
            assert!(
                (logp_a - lora[i]).abs() < 1e-3,
                "{name} row {i}: {logp_a} vs {}",
                lora[i]
            );
            assert!(line["n_tokens"].as_u64().ok_or("n_tokens")? > 0);
        }
    }
    Ok(())
}

#[test]
fn score_runs_on_gguf_and_quantized_bases() -> R<()> {
    let dir = tempfile::tempdir()?;
    let (text, base, _) = rows("llama31")?;
    let data = dir.path().join("rows.jsonl");
    std::fs::write(&data, text)?;
    let gguf = fixture("llama31").join("model.f32.gguf");
    let lines = rdro(&[
        "score",
        "--base",
        gguf.to_str().ok_or("path")?,
        "--data",
        data.to_str().ok_or("path")?,
    ])?;
    for (i, line) in lines.iter().enumerate() {
        let logp = line["logp"].as_f64().ok_or("logp")?;
        assert!((logp - base[i]).abs() < 1e-3, "gguf row {i}");
        assert!(line.get("logp_adapter").is_none());
    }
    let folder = fixture("llama31");
    let lines = rdro(&[
        "score",
        "--base",
        folder.to_str().ok_or("path")?,
        "--quant",
        "q8_0",
        "--data",
        data.to_str().ok_or("path")?,
    ])?;
    for (i, line) in lines.iter().enumerate() {
        let logp = line["logp"].as_f64().ok_or("logp")?;
        // q8_0 keeps the scores close but not equal.
        assert!(
            (logp - base[i]).abs() < 0.5 && logp != base[i],
            "q8_0 row {i}: {logp} vs {}",
            base[i]
        );
    }
    Ok(())
}

#[test]
fn score_reports_bad_input_clearly() -> R<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("rows.jsonl");
    std::fs::write(
        &data,
        "{\"prompt_ids\": [1, 2], \"completion_ids\": [100000], \"label\": true}\n",
    )?;
    let base = fixture("qwen2_tied");
    let out = Command::new(env!("CARGO_BIN_EXE_rdro"))
        .args([
            "score",
            "--base",
            base.to_str().ok_or("path")?,
            "--data",
            data.to_str().ok_or("path")?,
        ])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rows.jsonl") && err.contains("vocabulary"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rdro"))
        .args([
            "score",
            "--base",
            base.to_str().ok_or("path")?,
            "--quant",
            "q9",
            "--data",
            data.to_str().ok_or("path")?,
        ])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("q8_0"), "{err}");
    Ok(())
}
