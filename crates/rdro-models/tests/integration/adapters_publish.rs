//! Publishing adapter and model folders: the checks before any upload, and the requests the
//! `hf-hub` client sends, received by a Hub stand-in on 127.0.0.1 (see adapters_common).

use crate::adapters_common;

use std::path::Path;

use adapters_common::{copy_dir, fixtures, MockHub, R};
use rdro_models::hub::{HubError, HubOptions};
use rdro_models::merge::{merge_adapter, MergeDType, MergeOptions};
use rdro_models::publish::{
    default_commit_message, plan_upload, publish, FolderKind, PublishOptions,
};

const TOKEN: &str = "hf_test_secret_0123456789";

fn hub_options(root: &Path, endpoint: &str, token: Option<&str>) -> HubOptions {
    HubOptions {
        cache_dir: root.join("cache"),
        endpoint: endpoint.to_string(),
        token: token.map(str::to_string),
        token_file: root.join("home/token"),
        offline: false,
        revision: "main".into(),
    }
}

fn adapter_copy(root: &Path) -> R<std::path::PathBuf> {
    let dir = root.join("my-adapter");
    copy_dir(&fixtures().join("qwen2_tied/adapters/rdro_bf16"), &dir)?;
    Ok(dir)
}

#[test]
fn folders_are_checked_before_any_upload() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let adapter = adapter_copy(tmp.path())?;
    std::fs::create_dir_all(adapter.join("training_state"))?;
    std::fs::write(
        adapter.join("training_state/optimizer.safetensors"),
        b"state",
    )?;
    std::fs::write(adapter.join(".hidden"), b"x")?;
    let plan = plan_upload(&adapter)?;
    assert_eq!(plan.kind, FolderKind::Adapter);
    let names: Vec<&str> = plan.files.iter().map(|f| f.path_in_repo.as_str()).collect();
    assert_eq!(
        names,
        [
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors"
        ]
    );
    for f in &plan.files {
        assert_eq!(f.size, std::fs::metadata(&f.local)?.len());
    }
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);

    // A merged model folder, with nested files.
    let model = tmp.path().join("merged");
    let base = fixtures().join("qwen2_tied");
    merge_adapter(
        &base,
        &base.join("adapters/lora"),
        &model,
        &MergeOptions {
            dtype: MergeDType::Bf16,
            ..Default::default()
        },
    )?;
    std::fs::create_dir_all(model.join("extra"))?;
    std::fs::write(model.join("extra/notes.txt"), b"n")?;
    let plan = plan_upload(&model)?;
    assert_eq!(plan.kind, FolderKind::Model);
    let names: Vec<&str> = plan.files.iter().map(|f| f.path_in_repo.as_str()).collect();
    assert_eq!(
        names,
        [
            "README.md",
            "config.json",
            "extra/notes.txt",
            "model.safetensors"
        ]
    );

    // What cannot be loaded is refused, naming the file and the problem.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let err = plan_upload(&empty).unwrap_err().to_string();
    assert!(
        err.contains("empty") && err.contains("adapter_config.json") && err.contains("config.json"),
        "{err}"
    );
    let broken = tmp.path().join("broken");
    copy_dir(&adapter, &broken)?;
    std::fs::write(broken.join("adapter_model.safetensors"), b"not safetensors")?;
    let err = plan_upload(&broken).unwrap_err().to_string();
    assert!(err.contains("adapter_model.safetensors"), "{err}");
    let dora = tmp.path().join("dora");
    copy_dir(&adapter, &dora)?;
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dora.join("adapter_config.json"))?)?;
    cfg["use_dora"] = true.into();
    std::fs::write(dora.join("adapter_config.json"), cfg.to_string())?;
    let err = plan_upload(&dora).unwrap_err().to_string();
    assert!(err.contains("use_dora"), "{err}");
    let truncated = tmp.path().join("truncated");
    copy_dir(&model, &truncated)?;
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(truncated.join("config.json"))?)?;
    cfg["num_hidden_layers"] = 4.into();
    std::fs::write(truncated.join("config.json"), cfg.to_string())?;
    let err = plan_upload(&truncated).unwrap_err().to_string();
    assert!(
        err.contains("model.layers.2") && err.contains("missing"),
        "{err}"
    );
    Ok(())
}

#[test]
fn publishing_creates_the_repo_and_commits_the_files() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let adapter = adapter_copy(tmp.path())?;
    let plan = plan_upload(&adapter)?;
    let hub = MockHub::start(Some(TOKEN));
    let o = hub_options(tmp.path(), &hub.url, Some(TOKEN));

    let first = publish(
        &plan,
        &PublishOptions {
            repo_id: "alice/tiny-adapter".into(),
            private: true,
            ..Default::default()
        },
        &o,
    )?;
    assert!(first.created_repo && !first.created_branch, "{first:?}");
    assert!(
        first
            .commit_url
            .as_deref()
            .is_some_and(|u| u.contains("alice/tiny-adapter/commit/")),
        "{first:?}"
    );
    assert_eq!(first.pr_url, None);

    let second = PublishOptions {
        repo_id: "alice/tiny-adapter".into(),
        revision: Some("experiments".into()),
        create_pr: true,
        commit_message: Some("Second run".into()),
        ..Default::default()
    };
    let second = publish(&plan, &second, &o)?;
    assert!(!second.created_repo && second.created_branch, "{second:?}");
    assert!(second.pr_url.is_some(), "{second:?}");

    let (created, commits, requests, lfs) = hub.with_state(|s| {
        (
            s.created.clone(),
            s.commits.clone(),
            s.requests.clone(),
            s.preupload_lfs.clone(),
        )
    });
    hub.stop();
    assert_eq!(created, vec![("alice/tiny-adapter".to_string(), true)]);
    assert_eq!(commits.len(), 2);
    let (c1, c2) = (&commits[0], &commits[1]);
    assert_eq!(
        (c1.revision.as_str(), c1.create_pr, c1.summary.as_str()),
        (
            "main",
            false,
            default_commit_message(FolderKind::Adapter).as_str()
        )
    );
    assert_eq!(
        (c2.revision.as_str(), c2.create_pr, c2.summary.as_str()),
        ("experiments", true, "Second run")
    );
    for c in [c1, c2] {
        let names: Vec<&String> = c.files.keys().chain(c.lfs_files.iter()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for f in &plan.files {
            assert_eq!(
                c.files.get(&f.path_in_repo),
                Some(&std::fs::read(&f.local)?),
                "{} arrived changed",
                f.path_in_repo
            );
        }
    }
    // The weights were offered as LFS (the stand-in only offers the basic transfer, so the client
    // sent them inline, as checked above).
    assert!(lfs.contains("adapter_model.safetensors"));
    // Every request carried the token, as a bearer header only.
    assert!(requests
        .iter()
        .all(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}"))));
    assert!(requests
        .iter()
        .all(|r| !r.path.contains(TOKEN) && !r.query.contains(TOKEN)));
    let routes: Vec<String> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        routes.contains(&"POST /api/repos/create".to_string()),
        "{routes:?}"
    );
    assert!(
        routes.contains(&"POST /api/models/alice/tiny-adapter/branch/experiments".to_string()),
        "{routes:?}"
    );
    Ok(())
}

#[test]
fn credentials_problems_are_clear_and_never_show_the_token() -> R<()> {
    let tmp = tempfile::tempdir()?;
    let plan = plan_upload(&adapter_copy(tmp.path())?)?;
    let hub = MockHub::start(Some(TOKEN));
    let opts = PublishOptions {
        repo_id: "alice/x".into(),
        ..Default::default()
    };

    let err = publish(&plan, &opts, &hub_options(tmp.path(), &hub.url, None)).unwrap_err();
    assert!(matches!(err, HubError::NoToken { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("HF_TOKEN") && text.contains("home/token"),
        "{text}"
    );
    assert!(
        hub.with_state(|s| s.requests.is_empty()),
        "no request without a token"
    );

    let wrong = "hf_wrong_token_abcdef";
    let err = publish(
        &plan,
        &opts,
        &hub_options(tmp.path(), &hub.url, Some(wrong)),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("alice/x") && !err.contains(wrong), "{err}");
    let err = format!("{:?}", hub_options(tmp.path(), &hub.url, Some(wrong)));
    assert!(!err.contains(wrong), "{err}");

    let err = publish(
        &plan,
        &PublishOptions {
            repo_id: "not a repo".into(),
            ..Default::default()
        },
        &hub_options(tmp.path(), &hub.url, Some(TOKEN)),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("owner/name"), "{err}");
    hub.stop();
    Ok(())
}
