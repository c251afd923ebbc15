//! `rdro publish` end to end against a Hub stand-in on 127.0.0.1 started by the test: what
//! arrives, where the token comes from, and that it is never printed.

use crate::adapters_common;
use crate::cli_common::{rdro, text};

use adapters_common::{copy_dir, fixtures, MockHub, R};

const TOKEN: &str = "hf_cli_secret_token_42";

#[test]
fn dry_run_lists_files_and_sizes_without_network() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let adapter = fixtures().join("qwen2_tied/adapters/rdro_bf16");
    let hub = MockHub::start(None);
    let envs = [("HF_ENDPOINT", hub.url.as_str()), ("HF_TOKEN", TOKEN)];
    let o = rdro(
        tmp.path(),
        &envs,
        &[
            "publish",
            "--adapter",
            adapter.to_str().ok_or("path")?,
            "--repo",
            "alice/tiny",
            "--dry-run",
        ],
    )?;
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for f in [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ] {
        let size = std::fs::metadata(adapter.join(f))?.len().to_string();
        assert!(
            t.lines().any(|l| l.contains(f) && l.contains(&size)),
            "{f} ({size} bytes) not listed:\n{t}"
        );
    }
    assert!(
        t.contains("LoRA adapter") && t.contains("dry run") && !t.contains(TOKEN),
        "{t}"
    );
    assert!(
        hub.with_state(|s| s.requests.is_empty()),
        "a dry run made requests"
    );
    hub.stop();
    Ok(())
}

#[test]
fn uploads_with_the_token_file_and_never_prints_it() -> R<()> {
    let tmp = tempfile::tempdir()?;
    std::fs::create_dir_all(tmp.path().join("hf"))?;
    std::fs::write(tmp.path().join("hf/token"), format!("{TOKEN}\n"))?;
    let adapter = tmp.path().join("adapter");
    copy_dir(&fixtures().join("llama31/adapters/rdro_f32"), &adapter)?;
    let hub = MockHub::start(Some(TOKEN));
    let envs = [("HF_ENDPOINT", hub.url.as_str())];
    let args = [
        "publish",
        "--adapter",
        adapter.to_str().ok_or("path")?,
        "--repo",
        "alice/llama-rdro",
        "--private",
        "--revision",
        "v1",
        "--create-pr",
        "-m",
        "First adapter",
    ];
    let o = rdro(tmp.path(), &envs, &args)?;
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("created private repository alice/llama-rdro") && t.contains("pull request"),
        "{t}"
    );
    assert!(!t.contains(TOKEN), "the token was printed:\n{t}");
    let (created, commits) = hub.with_state(|s| (s.created.clone(), s.commits.clone()));
    assert_eq!(created, vec![("alice/llama-rdro".to_string(), true)]);
    let c = commits.first().ok_or("no commit")?;
    assert_eq!(
        (c.revision.as_str(), c.create_pr, c.summary.as_str()),
        ("v1", true, "First adapter")
    );
    for f in [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ] {
        assert_eq!(
            c.files.get(f),
            Some(&std::fs::read(adapter.join(f))?),
            "{f}"
        );
    }

    // HF_TOKEN wins over the file; a rejected token is reported without being shown.
    let wrong = "hf_wrong_cli_token_7";
    let o = rdro(
        tmp.path(),
        &[("HF_ENDPOINT", hub.url.as_str()), ("HF_TOKEN", wrong)],
        &args[..5],
    )?;
    let t = text(&o);
    assert!(
        !o.status.success()
            && t.contains("alice/llama-rdro")
            && !t.contains(wrong)
            && !t.contains(TOKEN),
        "{t}"
    );
    hub.stop();

    // No token anywhere.
    std::fs::remove_file(tmp.path().join("hf/token"))?;
    let o = rdro(
        tmp.path(),
        &[("HF_ENDPOINT", "http://127.0.0.1:9")],
        &args[..5],
    )?;
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("HF_TOKEN") && t.contains("token"),
        "{t}"
    );
    Ok(())
}

#[test]
fn refuses_folders_that_do_not_load() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("adapter");
    copy_dir(&fixtures().join("llama31/adapters/rdro_f32"), &dir)?;
    std::fs::write(
        dir.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 0, "lora_alpha": 8, "target_modules": ["q_proj"]}"#,
    )?;
    let o = rdro(
        tmp.path(),
        &[],
        &[
            "publish",
            "--adapter",
            dir.to_str().ok_or("path")?,
            "--repo",
            "alice/x",
            "--dry-run",
        ],
    )?;
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("adapter_config.json") && t.contains("lora.r"),
        "{t}"
    );
    let o = rdro(
        tmp.path(),
        &[],
        &[
            "publish",
            "--adapter",
            tmp.path().to_str().ok_or("path")?,
            "--repo",
            "alice/x",
            "--dry-run",
        ],
    )?;
    assert!(
        !o.status.success() && text(&o).contains("neither an adapter folder"),
        "{}",
        text(&o)
    );
    let o = rdro(
        tmp.path(),
        &[],
        &[
            "publish",
            "--adapter",
            dir.to_str().ok_or("path")?,
            "--repo",
            "just-a-name",
            "--dry-run",
        ],
    )?;
    assert!(
        !o.status.success() && text(&o).contains("owner/name"),
        "{}",
        text(&o)
    );
    Ok(())
}
