//! Readers (JSONL, JSON, Parquet, folders, the Hub cache), the `[data]` config, and the row
//! bookkeeping that needs no tokenizer.

use std::path::{Path, PathBuf};

use rdro::data::{
    load_dataset, path_matches_split, percentile, prepare, tokenize_dataset, DataConfig, DataError,
    HubOptions, Message, Position, Role, Row, RowKind, Text, TokenizeOptions, TruncationConfig,
    TruncationMode,
};

fn valid(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/valid")
        .join(file)
        .canonicalize()
        .unwrap()
}

fn offline() -> HubOptions {
    HubOptions {
        offline: true,
        ..HubOptions::from_lookup(|_| None)
    }
}

fn load(path: &Path) -> rdro::data::Dataset {
    load_dataset(path.to_str().unwrap(), "train", false, &offline()).unwrap()
}

#[test]
fn jsonl_rows_keep_their_line_numbers() {
    let path = valid("unpaired_standard.jsonl");
    let data = load(&path);
    assert_eq!(data.kind, RowKind::Unpaired);
    assert_eq!(data.rows.len(), 3);
    let lines: Vec<Position> = data.rows.iter().map(|r| r.source.position).collect();
    assert_eq!(
        lines,
        [Position::Line(1), Position::Line(2), Position::Line(4)]
    );
    assert_eq!(
        data.rows[1].row,
        Row::Unpaired {
            prompt: Text::Standard("The capital of France is".into()),
            completion: Text::Standard(" Berlin.".into()),
            label: false,
        }
    );
    assert_eq!(data.text_styles(), (3, 0));
}

#[test]
fn json_arrays_report_the_line_each_row_starts_on() {
    let data = load(&valid("paired_conversational.json"));
    assert_eq!(data.kind, RowKind::Paired);
    let lines: Vec<Position> = data.rows.iter().map(|r| r.source.position).collect();
    assert_eq!(lines, [Position::Line(2), Position::Line(7)]);
    match &data.rows[0].row {
        Row::Paired { prompt, chosen, .. } => {
            assert_eq!(
                *prompt,
                Text::Conversational(vec![
                    Message::new(Role::System, "You are helpful."),
                    Message::new(Role::User, "What is 2+2?"),
                ])
            );
            assert_eq!(
                *chosen,
                Text::Conversational(vec![Message::new(Role::Assistant, "4")])
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn parquet_rows_read_like_json_rows() {
    let conv = load(&valid("unpaired_conversational.parquet"));
    assert_eq!(conv.kind, RowKind::Unpaired);
    assert_eq!(conv.rows.len(), 3);
    assert_eq!(conv.rows[2].source.position, Position::Row(2));
    assert_eq!(
        conv.rows[1].row,
        Row::Unpaired {
            prompt: Text::Conversational(vec![
                Message::new(Role::System, "Be brief."),
                Message::new(Role::User, "2+2?"),
            ]),
            completion: Text::Conversational(vec![Message::new(Role::Assistant, "4")]),
            label: false,
        }
    );
    // Zstandard-compressed pages.
    let paired = load(&valid("paired_standard.parquet"));
    assert_eq!(paired.kind, RowKind::Paired);
    assert_eq!(paired.rows.len(), 3);
    let parquet_ids = load(&valid("pretokenized.parquet"));
    let jsonl_ids = load(&valid("pretokenized.jsonl"));
    let rows = |d: &rdro::data::Dataset| d.rows.iter().map(|r| r.row.clone()).collect::<Vec<_>>();
    assert_eq!(rows(&parquet_ids), rows(&jsonl_ids));
}

#[test]
fn pretokenized_rows_need_no_tokenizer() {
    let data = load(&valid("pretokenized.jsonl"));
    let options = TokenizeOptions {
        vocab_size: Some(9),
        ..TokenizeOptions::default()
    };
    let out = tokenize_dataset(&data, None, &options).unwrap();
    assert_eq!(out.examples.len(), 2);
    assert_eq!(out.examples[0].prompt_ids, vec![1, 2, 3]);
    assert_eq!(out.examples[0].completion_ids, vec![6, 7]);
    assert!(out.examples[0].label && !out.examples[1].label);
    assert_eq!(out.examples[1].pair_id, None);
    assert_eq!(out.preferred_fraction(), 0.5);
    // Id 8 is outside a vocabulary of 8.
    let options = TokenizeOptions {
        vocab_size: Some(8),
        ..TokenizeOptions::default()
    };
    let err = tokenize_dataset(&data, None, &options).unwrap_err();
    assert!(
        err.to_string()
            .contains(":2: field `completion_ids[0]`: token id 8 is outside"),
        "{err}"
    );
}

#[test]
fn pretokenized_rows_are_truncated_like_text_rows() {
    let data = load(&valid("pretokenized.jsonl"));
    let options = TokenizeOptions {
        truncation: TruncationConfig {
            max_length: Some(4),
            max_prompt_length: Some(2),
            mode: TruncationMode::KeepStart,
        },
        ..TokenizeOptions::default()
    };
    let out = tokenize_dataset(&data, None, &options).unwrap();
    assert_eq!(out.examples[0].prompt_ids, vec![1, 2]);
    assert_eq!(out.examples[0].completion_ids, vec![6, 7]);
    assert!(out.lengths[0].prompt_truncated);
    assert_eq!(out.lengths[0].prompt, 3);
    assert!(!out.lengths[1].prompt_truncated);
}

#[test]
fn text_rows_without_a_tokenizer_are_refused() {
    let data = load(&valid("unpaired_standard.jsonl"));
    let err = tokenize_dataset(&data, None, &TokenizeOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::TokenizerRequired(_)), "{err}");
    assert!(err.to_string().contains("need a tokenizer"));
}

/// Lays out a Hub cache the way the Hub clients do: blobs, a snapshot of symlinks, refs/main.
fn fake_hub_cache(root: &Path) -> PathBuf {
    let repo = root.join("hub").join("datasets--acme--prefs");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let blobs = repo.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(snapshot.join("data")).unwrap();
    for (blob, source, name) in [
        (
            "a1",
            "paired_standard.parquet",
            "data/train-00000-of-00001.parquet",
        ),
        (
            "b2",
            "paired_conversational.json",
            "data/test-00000-of-00001.json",
        ),
    ] {
        std::fs::copy(valid(source), blobs.join(blob)).unwrap();
        std::os::unix::fs::symlink(Path::new("../../../blobs").join(blob), snapshot.join(name))
            .unwrap();
    }
    std::fs::write(snapshot.join("README.md"), "# prefs\n").unwrap();
    root.join("hub")
}

#[test]
fn hub_ids_resolve_through_a_prefilled_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = fake_hub_cache(tmp.path());
    let home = tmp.path().to_str().unwrap().to_string();
    let options = HubOptions::from_lookup(|key| match key {
        "HF_HOME" => Some(home.clone()),
        "HF_HUB_OFFLINE" => Some("1".into()),
        _ => None,
    });
    assert_eq!(options.cache_dir, cache);
    assert!(options.offline);

    let train = load_dataset("acme/prefs", "train", false, &options).unwrap();
    assert_eq!(train.kind, RowKind::Paired);
    assert_eq!(train.rows.len(), 3);
    assert!(
        train.files[0].ends_with("data/train-00000-of-00001.parquet"),
        "{:?}",
        train.files
    );
    let test = load_dataset("acme/prefs", "test", false, &options).unwrap();
    assert_eq!(test.rows.len(), 2);
    // `:SPLIT` picks a split whatever `split` says.
    let suffixed = load_dataset("acme/prefs:test", "train", false, &options).unwrap();
    assert_eq!(suffixed.rows, test.rows);

    let err = load_dataset("acme/prefs", "validation", false, &options).unwrap_err();
    assert!(
        err.to_string()
            .contains("no data file belongs to split \"validation\""),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("data/train-00000-of-00001.parquet"),
        "{err}"
    );

    let err = load_dataset("acme/missing", "train", false, &options).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("acme/missing") && text.contains("HF_HUB_OFFLINE"),
        "{text}"
    );

    // A pinned commit works too; an unknown revision is not in the cache.
    let pinned = HubOptions {
        revision: "0123456789abcdef0123456789abcdef01234567".into(),
        ..options.clone()
    };
    assert_eq!(
        load_dataset("acme/prefs", "train", false, &pinned)
            .unwrap()
            .rows
            .len(),
        3
    );
    let other = HubOptions {
        revision: "v2".into(),
        ..options
    };
    assert!(load_dataset("acme/prefs", "train", false, &other).is_err());
}

#[test]
fn hub_data_sets_download_into_the_cache_then_resolve_offline() {
    use crate::adapters_common::MockHub;

    let tmp = tempfile::tempdir().unwrap();
    let hub = MockHub::start(Some("hf_secret"));
    {
        let mut state = hub.state.lock().unwrap();
        let repo = "datasets/acme/prefs".to_string();
        for (path, source) in [
            (
                "data/train-00000-of-00001.parquet",
                "paired_standard.parquet",
            ),
            (
                "data/test-00000-of-00001.json",
                "paired_conversational.json",
            ),
        ] {
            let bytes = std::fs::read(valid(source)).unwrap();
            state.served.insert((repo.clone(), path.to_string()), bytes);
        }
        state
            .served
            .insert((repo, "README.md".to_string()), b"# prefs\n".to_vec());
    }
    let online = crate::adapters_common::local_hub_options(
        &tmp.path().join("hub"),
        &hub.url,
        Some("hf_secret"),
        false,
    );

    let train = load_dataset("acme/prefs", "train", false, &online).unwrap();
    assert_eq!(train.kind, RowKind::Paired);
    assert_eq!(train.rows.len(), 3);
    let cached = online.repo_cache_dir(rdro::data::RepoKind::Dataset, "acme/prefs");
    assert!(
        Path::new(&*train.files[0]).starts_with(&cached),
        "{:?}",
        train.files
    );
    {
        let state = hub.state.lock().unwrap();
        let paths: Vec<&str> = state.requests.iter().map(|r| r.path.as_str()).collect();
        // The tree is listed and only the split's file fetched, with the token (the server
        // refuses requests without it).
        assert!(paths.iter().any(|p| p.contains("/tree/")), "{paths:?}");
        assert!(!paths.iter().any(|p| p.contains("test-00000")), "{paths:?}");
    }
    // A split the cache does not hold yet is fetched on demand.
    let test = load_dataset("acme/prefs", "test", false, &online).unwrap();
    assert_eq!(test.rows.len(), 2);
    let err = load_dataset("acme/prefs", "validation", false, &online).unwrap_err();
    assert!(
        err.to_string()
            .contains("has no Parquet, JSONL or JSON file for split \"validation\""),
        "{err}"
    );

    // Offline, with the server gone, the cache answers alone.
    hub.stop();
    let offline = HubOptions {
        offline: true,
        ..online.clone()
    };
    let again = load_dataset("acme/prefs", "train", false, &offline).unwrap();
    assert_eq!(again.rows, train.rows);
    let err = load_dataset("acme/prefs", "validation", false, &offline).unwrap_err();
    assert!(
        err.to_string()
            .contains("no data file belongs to split \"validation\""),
        "{err}"
    );
    let err = load_dataset("acme/other", "train", false, &offline).unwrap_err();
    assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
}

#[test]
fn local_folders_are_read_like_hub_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = fake_hub_cache(tmp.path());
    let snapshot =
        cache.join("datasets--acme--prefs/snapshots/0123456789abcdef0123456789abcdef01234567");
    let data = load_dataset(snapshot.to_str().unwrap(), "test", false, &offline()).unwrap();
    assert_eq!(data.kind, RowKind::Paired);
    assert_eq!(data.rows.len(), 2);
}

#[test]
fn hub_environment_variables() {
    let lookup = |pairs: &'static [(&'static str, &'static str)]| {
        HubOptions::from_lookup(move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        })
    };
    let o = lookup(&[
        ("HF_HUB_CACHE", "/c"),
        ("HF_HOME", "/h"),
        ("HOME", "/home/u"),
    ]);
    assert_eq!(o.cache_dir, PathBuf::from("/c"));
    assert!(!o.offline);
    let o = lookup(&[("HF_HOME", "/h"), ("HF_HUB_OFFLINE", "true")]);
    assert_eq!(o.cache_dir, PathBuf::from("/h/hub"));
    assert!(o.offline);
    let o = lookup(&[("HOME", "/home/u"), ("HF_HUB_OFFLINE", "0")]);
    assert_eq!(o.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
    assert!(!o.offline);
    assert_eq!(o.revision, "main");
}

#[test]
fn split_names_match_like_the_datasets_library() {
    for (path, split, expected) in [
        ("data/train-00000-of-00001.parquet", "train", true),
        ("data/test-00000-of-00001.parquet", "train", false),
        ("train.jsonl", "train", true),
        ("train/0000.parquet", "train", true),
        ("harmless_train.jsonl", "train", true),
        ("default/validation/0.parquet", "validation", true),
        ("data/dev.jsonl", "validation", true),
        ("testing.parquet", "test", true),
        ("contest.parquet", "test", false),
        ("trainer.parquet", "train", false),
    ] {
        assert_eq!(
            path_matches_split(Path::new(path), split),
            expected,
            "{path} / {split}"
        );
    }
}

#[test]
fn data_config_from_toml() {
    let config: DataConfig = toml::from_str(
        r#"
        train = "data/train.jsonl"
        max_length = 2048
        truncation = "keep_start"
        skip_invalid = true
        "#,
    )
    .unwrap();
    assert_eq!(config.train, "data/train.jsonl");
    assert_eq!(config.split, "train");
    assert_eq!(config.max_length, Some(2048));
    assert_eq!(config.max_prompt_length, Some(512));
    assert_eq!(config.truncation, TruncationMode::KeepStart);
    assert!(config.skip_invalid);
    assert_eq!(config.eval_fraction, 0.0);
    config.validate().unwrap();

    let err = toml::from_str::<DataConfig>("train = \"x\"\nmax_lenght = 3\n").unwrap_err();
    assert!(err.to_string().contains("max_lenght"), "{err}");
    let err = toml::from_str::<DataConfig>("train = \"x\"\ntruncation = \"middle\"\n").unwrap_err();
    assert!(err.to_string().contains("keep_end"), "{err}");

    let mut bad = DataConfig::new("x");
    bad.max_prompt_length = Some(4096);
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("must be smaller than max_length"));
    let mut bad = DataConfig::new("x");
    bad.eval_fraction = 1.5;
    assert!(bad.validate().is_err());
    let mut bad = DataConfig::new("x");
    bad.eval = Some("y".into());
    bad.eval_fraction = 0.1;
    assert!(bad.validate().is_err());
}

#[test]
fn chat_template_overrides_are_text_or_files() {
    let mut config = DataConfig::new("x");
    config.chat_template = Some("{{ messages }}".into());
    assert_eq!(
        config.chat_template_source().unwrap().as_deref(),
        Some("{{ messages }}")
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("t.jinja");
    std::fs::write(&file, "{% for m in messages %}{{ m.content }}{% endfor %}").unwrap();
    config.chat_template = Some(file.to_str().unwrap().into());
    assert!(config
        .chat_template_source()
        .unwrap()
        .unwrap()
        .starts_with("{% for"));
    config.chat_template = Some("no/such/template.jinja".into());
    assert!(config.chat_template_source().is_err());
}

#[test]
fn prepare_holds_out_whole_rows_for_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ids.jsonl");
    let rows: String = (0..20)
        .map(|i| {
            format!(
                "{{\"prompt_ids\": [1, {i}], \"completion_ids\": [{i}, 2], \"label\": {}}}\n",
                i % 4 == 0
            )
        })
        .collect();
    std::fs::write(&path, rows).unwrap();
    let mut config = DataConfig::new(path.to_str().unwrap());
    config.eval_fraction = 0.25;
    let a = prepare(&config, None, &offline(), 7).unwrap();
    let b = prepare(&config, None, &offline(), 7).unwrap();
    assert_eq!(a, b, "the split depends only on the seed");
    let eval = a.eval.unwrap();
    assert_eq!(eval.examples.len(), 5);
    assert_eq!(a.train.examples.len(), 15);
    let mut all: Vec<usize> = a
        .train
        .examples
        .iter()
        .chain(&eval.examples)
        .map(|e| e.index)
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..20).collect::<Vec<_>>());
    assert!(
        a.train.examples.windows(2).all(|w| w[0].index < w[1].index),
        "input order kept"
    );
    assert_eq!(
        a.train.preferred_fraction() * 15.0 + eval.preferred_fraction() * 5.0,
        5.0
    );
}

#[test]
fn percentiles_use_nearest_rank() {
    let values = [5, 1, 4, 2, 3];
    assert_eq!(percentile(&values, 50.0), 3);
    assert_eq!(percentile(&values, 100.0), 5);
    assert_eq!(percentile(&values, 0.0), 1);
    assert_eq!(percentile(&[], 90.0), 0);
}
