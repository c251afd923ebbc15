//! The malformed-file corpus under `tests/data/malformed/`: each file must fail with the error
//! that names its file, line (or Parquet row) and field.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rdro::data::{
    load_dataset, tokenize_dataset, DataError, HubOptions, TokenizeOptions, TruncationConfig,
    TruncationMode,
};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/malformed")
        .canonicalize()
        .expect("tests/data/malformed exists")
}

fn offline() -> HubOptions {
    HubOptions::from_lookup(|_| None)
}

/// Loads and tokenizes (pre-tokenized rows need no tokenizer), returning the error text.
fn error_of(file: &str, options: &TokenizeOptions) -> (String, DataError) {
    let path = corpus().join(file);
    let spec = path.to_str().unwrap();
    let result = load_dataset(spec, "train", options.skip_invalid, &offline())
        .and_then(|dataset| tokenize_dataset(&dataset, None, options));
    match result {
        Ok(data) => panic!("{file} loaded without error: {:?}", data.examples),
        Err(err) => (err.to_string(), err),
    }
}

fn strict() -> TokenizeOptions {
    TokenizeOptions {
        truncation: TruncationConfig::none(),
        ..TokenizeOptions::default()
    }
}

/// (file, options, expected fragments; `{P}` stands for the file's path).
fn cases() -> Vec<(&'static str, TokenizeOptions, Vec<&'static str>)> {
    let vocab = TokenizeOptions {
        vocab_size: Some(1000),
        ..strict()
    };
    let tiny = TokenizeOptions {
        truncation: TruncationConfig {
            max_length: Some(10),
            max_prompt_length: None,
            mode: TruncationMode::KeepEnd,
        },
        ..strict()
    };
    vec![
        ("bad_json.jsonl", strict(), vec!["{P}:2: invalid JSON (column", "EOF while parsing an object"]),
        ("not_object.jsonl", strict(), vec!["{P}:1: a row must be a JSON object, found a list of 3 items"]),
        ("missing_label.jsonl", strict(), vec!["{P}:2: field `label`: missing (expected true or false)"]),
        ("label_string.jsonl", strict(), vec!["{P}:1: field `label`: must be true or false, found the string \"true\""]),
        ("label_number.jsonl", strict(), vec!["{P}:2: field `label`: must be true or false, found the number 1"]),
        ("unexpected_field.jsonl", strict(), vec!["{P}:1: field `score`: unexpected field: unpaired rows have only prompt, completion, label"]),
        ("empty_completion.jsonl", strict(), vec!["{P}:1: field `completion`: empty completion"]),
        ("empty_chosen_messages.jsonl", strict(), vec!["{P}:1: field `chosen`: empty completion (no messages)"]),
        ("unknown_role.jsonl", strict(), vec!["{P}:1: field `prompt[0].role`: unknown role \"human\" (did you mean \"user\"?)"]),
        ("message_missing_content.jsonl", strict(), vec!["{P}:1: field `prompt[1].content`: missing"]),
        ("message_content_not_string.jsonl", strict(), vec!["{P}:1: field `completion[0].content`: must be a string, found the number 42"]),
        ("message_not_object.jsonl", strict(), vec!["{P}:1: field `prompt[0]`: a message must be an object {\"role\", \"content\"}, found the string \"Hi\""]),
        ("unexpected_message_field.jsonl", strict(), vec!["{P}:1: field `prompt[0].name`: unexpected field in a message"]),
        ("mixed_styles.jsonl", strict(), vec!["{P}:1: field `completion`: is a list of messages but `prompt` is a string"]),
        ("unknown_format.jsonl", strict(), vec!["{P}:1: cannot tell the row format from its fields ["]),
        ("mixed_kinds.jsonl", strict(), vec!["{P}:2: this row is paired (prompt, chosen, rejected) but the data set is unpaired (first row at {P}:1)"]),
        ("paired_with_label.jsonl", strict(), vec!["{P}:1: field `label`: unexpected field: paired rows have only prompt, chosen, rejected"]),
        ("negative_id.jsonl", strict(), vec!["{P}:1: field `prompt_ids[0]`: a token id must be an integer from 0 to 4294967295, found the number -1"]),
        ("ids_not_list.jsonl", strict(), vec!["{P}:1: field `completion_ids`: must be a list of token ids, found the string \"3 4 5\""]),
        ("empty_completion_ids.jsonl", strict(), vec!["{P}:1: field `completion_ids`: empty completion"]),
        ("empty_prompt_ids.jsonl", strict(), vec!["{P}:1: field `prompt_ids`: the prompt has no tokens"]),
        ("id_out_of_vocab.jsonl", vocab, vec!["{P}:2: field `completion_ids[1]`: token id 5000 is outside the vocabulary (size 1000)"]),
        ("completion_truncated_away.jsonl", tiny, vec!["{P}:1: the completion would be truncated away entirely (prompt 12 tokens, max_length 10)"]),
        ("invalid_utf8.jsonl", strict(), vec!["{P}: line 2: not valid UTF-8 text"]),
        ("empty.jsonl", strict(), vec!["{P}: no rows"]),
        ("not_array.json", strict(), vec!["{P}: expected a JSON array of rows (or one JSON object per line), found a single object with keys [data]"]),
        ("truncated.json", strict(), vec!["{P}: line 5: invalid JSON (column 1): expected value"]),
        ("element_missing_rejected.json", strict(), vec!["{P}:3: field `rejected`: missing"]),
        ("not_parquet.parquet", strict(), vec!["{P}: cannot read Parquet:"]),
        ("label_string.parquet", strict(), vec![
            "{P} (row 0): field `label`: must be true or false, found the string \"true\"",
            "{P} (row 2): field `label`: must be true or false, found the string \"yes\"",
        ]),
        ("null_prompt.parquet", strict(), vec!["{P} (row 1): field `prompt`: must be a string or a list of {role, content} messages, found null"]),
        ("missing_completion.parquet", strict(), vec!["{P} (row 0): field `completion`: missing"]),
        ("many_errors.jsonl", strict(), vec![
            "25 invalid rows (25 problems):",
            "{P}:1: field `label`: must be true or false, found the string \"yes\"",
            "... and 5 more",
            "set `skip_invalid = true`",
        ]),
    ]
}

#[test]
fn every_malformed_file_fails_with_its_error() {
    let mut failures = Vec::new();
    for (file, options, fragments) in cases() {
        let path = corpus().join(file);
        let (text, _) = error_of(file, &options);
        for fragment in fragments {
            let fragment = fragment.replace("{P}", &path.display().to_string());
            if !text.contains(&fragment) {
                failures.push(format!("{file}: expected {fragment:?} in:\n{text}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_corpus_is_complete() {
    let listed: BTreeSet<&str> = cases().iter().map(|(file, _, _)| *file).collect();
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(corpus()).unwrap() {
        on_disk.insert(entry.unwrap().file_name().to_string_lossy().to_string());
    }
    let on_disk: BTreeSet<&str> = on_disk.iter().map(String::as_str).collect();
    assert_eq!(
        listed, on_disk,
        "every corpus file needs an expected error, and every case a file"
    );
    assert!(on_disk.len() >= 20);
}

#[test]
fn invalid_rows_list_at_most_twenty_problems() {
    let (text, err) = error_of("many_errors.jsonl", &strict());
    let listed = text.lines().filter(|l| l.contains("field `label`")).count();
    assert_eq!(listed, 20, "{text}");
    match err {
        DataError::InvalidRows { problems, rows } => {
            assert_eq!(rows, 25);
            assert_eq!(problems.len(), 25);
            assert!(problems.iter().all(|p| p.field.as_deref() == Some("label")));
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn skip_invalid_skips_and_counts() {
    let path = corpus().join("many_errors.jsonl");
    let dataset = load_dataset(path.to_str().unwrap(), "train", true, &offline()).unwrap();
    assert_eq!(dataset.total_rows, 26);
    assert_eq!(dataset.rows.len(), 1);
    assert_eq!(dataset.skipped_rows, 25);
    assert_eq!(dataset.rows[0].index, 3);
    assert_eq!(
        dataset.rows[0].source.to_string(),
        format!("{}:4", path.display())
    );

    // Rows that fail at tokenization are skipped and counted too.
    let path = corpus().join("id_out_of_vocab.jsonl");
    let dataset = load_dataset(path.to_str().unwrap(), "train", true, &offline()).unwrap();
    let options = TokenizeOptions {
        vocab_size: Some(1000),
        skip_invalid: true,
        ..strict()
    };
    let out = tokenize_dataset(&dataset, None, &options).unwrap();
    assert_eq!(out.examples.len(), 1);
    assert_eq!(out.skipped_rows, 1);
    assert_eq!(out.skipped[0].field.as_deref(), Some("completion_ids[1]"));
}

#[test]
fn a_data_set_with_only_invalid_rows_fails_even_when_skipping() {
    let path = corpus().join("label_string.jsonl");
    let err = load_dataset(path.to_str().unwrap(), "train", true, &offline()).unwrap_err();
    assert!(matches!(err, DataError::InvalidRows { .. }), "{err}");
}
