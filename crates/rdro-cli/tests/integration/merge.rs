//! `rdro merge` end to end on the golden fixtures: the merged folder is PEFT's adapted model, the
//! GGUF export loads, mismatches are refused unless --force, Hub ids resolve through the cache.

use crate::adapters_common;
use crate::cli_common::{rdro, text};

use std::path::Path;

use adapters_common::{fixture_batch, fixtures, listing, max_abs_diff, R};
use rdro_lora::ForwardMode;
use rdro_models::{load, LoadOptions, ModelSource};

fn logps(dir: &Path, model: &str, gguf: Option<&Path>) -> R<Vec<Vec<f32>>> {
    let (_, batch) = fixture_batch(model)?;
    let source = match gguf {
        Some(p) => ModelSource::Gguf(p.to_path_buf()),
        None => ModelSource::Folder(dir.to_path_buf()),
    };
    let m = load(&source, &LoadOptions::default())?.model;
    Ok(m.token_log_probs(&batch, ForwardMode::REFERENCE)?
        .to_dense()?)
}

#[test]
fn merges_into_a_loadable_folder_and_gguf() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let base = fixtures().join("llama31");
    let out = tmp.path().join("merged");
    let adapter = base.join("adapters/lora");
    let args = [
        "merge",
        "--base",
        base.to_str().ok_or("path")?,
        "--adapter",
        adapter.to_str().ok_or("path")?,
        "--out",
        out.to_str().ok_or("path")?,
        "--dtype",
        "f32",
        "--gguf",
        "q8_0",
    ];
    let o = rdro(tmp.path(), &[], &args)?;
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("merged 14 module(s)") && stdout.contains("model-q8_0.gguf"),
        "{stdout}"
    );
    assert_eq!(
        listing(&out),
        [
            "README.md",
            "config.json",
            "model-q8_0.gguf",
            "model.safetensors"
        ]
    );
    let (expected, _) = fixture_batch("llama31")?;
    assert!(max_abs_diff(&logps(&out, "llama31", None)?, &expected["logp_lora"])? < 1e-4);
    assert!(
        max_abs_diff(
            &logps(&out, "llama31", Some(&out.join("model-q8_0.gguf")))?,
            &expected["logp_lora"]
        )? < 0.03
    );

    // Shards, bf16 by default, and the existing folder is kept unless --overwrite.
    let o = rdro(tmp.path(), &[], &args[..7])?;
    assert!(
        !o.status.success() && text(&o).contains("not empty"),
        "{}",
        text(&o)
    );
    let mut sharded: Vec<&str> = args[..7].to_vec();
    sharded.extend(["--max-shard-size", "100KB", "--overwrite"]);
    let o = rdro(tmp.path(), &[], &sharded)?;
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        out.join("model.safetensors.index.json").is_file() && !out.join("model-q8_0.gguf").exists()
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json"))?)?;
    assert!(
        config.get("torch_dtype").or(config.get("dtype")) == Some(&"bfloat16".into()),
        "{config}"
    );
    Ok(())
}

#[test]
fn refuses_an_adapter_of_another_base_unless_forced() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let base = fixtures().join("qwen2_untied");
    let adapter = fixtures().join("qwen2_tied/adapters/lora");
    let out = tmp.path().join("out");
    let args = [
        "merge",
        "--base",
        base.to_str().ok_or("path")?,
        "--adapter",
        adapter.to_str().ok_or("path")?,
        "--out",
        out.to_str().ok_or("path")?,
    ];
    let o = rdro(tmp.path(), &[], &args)?;
    let t = text(&o);
    assert!(
        !o.status.success()
            && t.contains("adapter_config.json")
            && t.contains("qwen2_tied")
            && t.contains("--force"),
        "{t}"
    );
    assert!(!out.exists());
    let mut forced = args.to_vec();
    forced.push("--force");
    let o = rdro(tmp.path(), &[], &forced)?;
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("warning:"),
        "{}",
        text(&o)
    );

    let gguf = fixtures().join("qwen2_tied/model.f32.gguf");
    let g_out = tmp.path().join("g");
    let args = [
        "merge",
        "--base",
        gguf.to_str().ok_or("path")?,
        "--adapter",
        adapter.to_str().ok_or("path")?,
        "--out",
        g_out.to_str().ok_or("path")?,
    ];
    let o = rdro(tmp.path(), &[], &args)?;
    assert!(
        !o.status.success() && text(&o).contains("not a GGUF file"),
        "{}",
        text(&o)
    );
    let o = rdro(
        tmp.path(),
        &[],
        &[
            "merge",
            "--base",
            "x/y",
            "--adapter",
            "a",
            "--out",
            "o",
            "--dtype",
            "int4",
        ],
    )?;
    assert!(
        !o.status.success() && text(&o).contains("bf16, f16 or f32"),
        "{}",
        text(&o)
    );
    Ok(())
}

#[test]
fn a_hub_id_base_resolves_through_the_cache_offline() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let fixture = fixtures().join("qwen2_tied");
    let repo = tmp.path().join("hf/hub/models--acme--tiny-qwen");
    let commit = "e".repeat(40);
    let snapshot = repo.join("snapshots").join(&commit);
    std::fs::create_dir_all(&snapshot)?;
    std::fs::create_dir_all(repo.join("refs"))?;
    std::fs::write(repo.join("refs/main"), &commit)?;
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), snapshot.join(f))?;
    }
    // The adapter names the Hub id it was trained on.
    let adapter = tmp.path().join("adapter");
    adapters_common::copy_dir(&fixture.join("adapters/lora"), &adapter)?;
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json"))?)?;
    cfg["base_model_name_or_path"] = "acme/tiny-qwen".into();
    std::fs::write(adapter.join("adapter_config.json"), cfg.to_string())?;
    let out = tmp.path().join("out");
    let offline = [
        ("HF_HUB_OFFLINE", "1"),
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
    ];
    let o = rdro(
        tmp.path(),
        &offline,
        &[
            "merge",
            "--base",
            "acme/tiny-qwen",
            "--adapter",
            adapter.to_str().ok_or("path")?,
            "--out",
            out.to_str().ok_or("path")?,
            "--dtype",
            "f32",
        ],
    )?;
    assert!(o.status.success(), "{}", text(&o));
    let card = std::fs::read_to_string(out.join("README.md"))?;
    assert!(card.contains("base_model: acme/tiny-qwen"), "{card}");
    let (expected, _) = fixture_batch("qwen2_tied")?;
    assert!(max_abs_diff(&logps(&out, "qwen2_tied", None)?, &expected["logp_lora"])? < 1e-4);

    let o = rdro(
        tmp.path(),
        &offline,
        &[
            "merge",
            "--base",
            "acme/missing",
            "--adapter",
            adapter.to_str().ok_or("path")?,
            "--out",
            tmp.path().join("o2").to_str().ok_or("path")?,
        ],
    )?;
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("acme/missing") && t.contains("HF_HUB_OFFLINE"),
        "{t}"
    );
    Ok(())
}
