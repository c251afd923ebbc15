//! Resolving a base model spec: local paths, the local Hub cache (offline), and downloads through
//! `hf-hub` from a Hub stand-in on 127.0.0.1 (see adapters_common).

use crate::adapters_common;

use std::path::{Path, PathBuf};

use adapters_common::{fixtures, MockHub, R};
use rdro_models::hub::{resolve_model, HubError, HubOptions};
use rdro_models::merge::{merge_adapter, MergeDType, MergeOptions};
use rdro_models::ModelSource;

fn options(cache: &Path, endpoint: &str, offline: bool) -> HubOptions {
    adapters_common::local_hub_options(cache, endpoint, None, offline)
}

#[test]
fn local_paths_resolve_without_the_hub() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let o = options(tmp.path(), "http://127.0.0.1:9", true);
    let dir = fixtures().join("qwen2_tied");
    let r = resolve_model(dir.to_str().ok_or("path")?, &o)?;
    assert_eq!(r.source, ModelSource::Folder(dir.clone()));
    assert_eq!(r.hub_id, None);
    let gguf = dir.join("model.f16.gguf");
    assert_eq!(
        resolve_model(gguf.to_str().ok_or("path")?, &o)?.source,
        ModelSource::Gguf(gguf)
    );
    let err = resolve_model("no/such/model/here", &o)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no/such/model/here") && err.contains("owner/name"),
        "{err}"
    );
    Ok(())
}

/// Lays out `files` as the Hub clients cache them: blobs, a snapshot of symlinks, refs/main.
fn fill_cache(cache: &Path, repo: &str, files: &[(&str, PathBuf)]) -> R<PathBuf> {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = "c".repeat(40);
    let snapshot = root.join("snapshots").join(&commit);
    std::fs::create_dir_all(root.join("blobs"))?;
    std::fs::create_dir_all(&snapshot)?;
    std::fs::create_dir_all(root.join("refs"))?;
    std::fs::write(root.join("refs/main"), &commit)?;
    for (i, (name, src)) in files.iter().enumerate() {
        let blob = root.join("blobs").join(format!("{i:064x}"));
        std::fs::copy(src, &blob)?;
        std::os::unix::fs::symlink(&blob, snapshot.join(name))?;
    }
    Ok(snapshot)
}

#[test]
fn cached_models_resolve_offline() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let base = fixtures().join("llama31");
    let snapshot = fill_cache(
        tmp.path(),
        "acme/tiny-llama",
        &[
            ("config.json", base.join("config.json")),
            ("model.safetensors", base.join("model.safetensors")),
        ],
    )?;
    // Offline, and the endpoint is a closed port: only the cache can answer.
    let o = options(tmp.path(), "http://127.0.0.1:9", true);
    let r = resolve_model("acme/tiny-llama", &o)?;
    assert_eq!(r.source, ModelSource::Folder(snapshot.clone()));
    assert_eq!(r.hub_id.as_deref(), Some("acme/tiny-llama"));
    // A cache path remembers its Hub id.
    let again = resolve_model(snapshot.to_str().ok_or("path")?, &o)?;
    assert_eq!(again.hub_id.as_deref(), Some("acme/tiny-llama"));

    // Incomplete (no weights) or absent: a clear error, no network.
    fill_cache(
        tmp.path(),
        "acme/half",
        &[("config.json", base.join("config.json"))],
    )?;
    for id in ["acme/half", "acme/absent"] {
        let err = resolve_model(id, &o).unwrap_err();
        assert!(matches!(err, HubError::NotCached { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(id)
                && text.contains("HF_HUB_OFFLINE")
                && text.contains(&format!("models--{}", id.replace('/', "--"))),
            "{text}"
        );
    }
    Ok(())
}

#[test]
fn downloads_go_through_the_cache() -> R<()> {
    let tmp = tempfile::tempdir()?;
    // A sharded checkpoint to serve: qwen2_untied merged with its adapter, in several shards.
    let fixture = fixtures().join("qwen2_untied");
    let served = tmp.path().join("served");
    let opts = MergeOptions {
        dtype: MergeDType::F32,
        max_shard_bytes: 200_000,
        ..Default::default()
    };
    let report = merge_adapter(&fixture, &fixture.join("adapters/lora"), &served, &opts)?;
    let shards: Vec<String> = report
        .weight_files
        .iter()
        .map(|p| {
            p.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    assert!(shards.len() >= 3, "{shards:?}");
    std::fs::write(
        served.join("tokenizer.json"),
        r#"{"model":{"type":"BPE","vocab":{},"merges":[]}}"#,
    )?;

    let hub = MockHub::start(Some("hf_download_token"));
    hub.with_state(|s| {
        for entry in std::fs::read_dir(&served).expect("served") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            s.served.insert(
                ("acme/tiny".into(), name),
                std::fs::read(entry.path()).expect("read"),
            );
        }
    });
    let cache = tmp.path().join("cache");
    let mut o = options(&cache, &hub.url, false);
    o.token = Some("hf_download_token".into());
    let r = resolve_model("acme/tiny", &o)?;
    let ModelSource::Folder(dir) = &r.source else {
        return Err("not a folder".into());
    };
    assert!(
        dir.starts_with(cache.join("models--acme--tiny/snapshots")),
        "{}",
        dir.display()
    );
    let mut wanted = vec![
        "config.json".to_string(),
        "tokenizer.json".into(),
        "model.safetensors.index.json".into(),
    ];
    wanted.extend(shards.iter().cloned());
    for f in &wanted {
        assert_eq!(
            std::fs::read(dir.join(f))?,
            std::fs::read(served.join(f))?,
            "{f}"
        );
    }
    assert!(
        !dir.join("README.md").exists(),
        "only model files are fetched"
    );
    let requests = hub.with_state(|s| s.requests.clone());
    assert!(requests
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer hf_download_token")));
    for shard in &shards {
        assert!(
            requests
                .iter()
                .any(|r| r.method == "GET" && r.path.ends_with(&format!("/{shard}"))),
            "{shard}"
        );
    }
    // Files the repository does not have (generation_config.json, ...) are skipped, not fatal.
    assert!(requests
        .iter()
        .any(|r| r.path.ends_with("/generation_config.json")));
    hub.stop();

    // The model loads from the snapshot, and a second resolve needs no server.
    let loaded = rdro_models::load(&r.source, &Default::default())?;
    assert_eq!(loaded.model.config.num_hidden_layers, 3);
    let again = resolve_model("acme/tiny", &o)?;
    assert_eq!(again.source, r.source);
    Ok(())
}

#[test]
fn a_repository_without_weights_is_a_clear_error() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let hub = MockHub::start(None);
    hub.with_state(|s| {
        let config = std::fs::read(fixtures().join("llama31/config.json")).expect("config");
        s.served
            .insert(("acme/no-weights".into(), "config.json".into()), config);
    });
    let o = options(&tmp.path().join("cache"), &hub.url, false);
    let err = resolve_model("acme/no-weights", &o)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("acme/no-weights/model.safetensors") && err.contains("safetensors"),
        "{err}"
    );
    let err = resolve_model("acme/nothing", &o).unwrap_err().to_string();
    assert!(
        err.contains("acme/nothing") && err.contains("config.json"),
        "{err}"
    );
    hub.stop();
    Ok(())
}
