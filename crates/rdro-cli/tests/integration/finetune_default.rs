//! The offline default (`cargo xtask finetune` = `rdro finetune --config configs/default.toml`)
//! runs end to end and RDRO raises the held-out preference accuracy from chance to well above it.

use std::path::PathBuf;
use std::process::Command;

/// An empty working folder holding only `configs/default.toml`: the config's relative paths
/// (generated task, adapter) land there.
pub fn folder_with_default_config() -> std::io::Result<tempfile::TempDir> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let work = tempfile::tempdir()?;
    std::fs::create_dir(work.path().join("configs"))?;
    std::fs::copy(
        root.join("configs/default.toml"),
        work.path().join("configs/default.toml"),
    )?;
    Ok(work)
}

#[test]
fn default_config_raises_held_out_preference_accuracy() -> Result<(), Box<dyn std::error::Error>> {
    let work = folder_with_default_config()?;
    let out_dir = work.path().join("adapters/default");
    let out = Command::new(env!("CARGO_BIN_EXE_rdro"))
        .current_dir(work.path())
        .args([
            "finetune",
            "--config",
            "configs/default.toml",
            "--no-progress",
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "finetune failed:\n{stdout}\n{stderr}");
    let text = format!("{stdout}{stderr}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("preference accuracy"))
        .ok_or_else(|| format!("no accuracy line in:\n{text}"))?;
    let values: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches('%').parse().ok())
        .collect();
    let [before, after] = values[..] else {
        return Err(format!("cannot read {line:?}").into());
    };
    assert!(
        (40.0..=60.0).contains(&before),
        "before training: {before} %"
    );
    assert!(after >= 80.0, "after training: {after} %");
    assert!(out_dir.join("adapter_config.json").is_file());
    assert!(out_dir.join("adapter_model.safetensors").is_file());
    assert!(out_dir.join("README.md").is_file());
    Ok(())
}
