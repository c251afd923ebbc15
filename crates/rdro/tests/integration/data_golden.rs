//! Chat templates and tokenization against transformers, token for token, with the real Llama 3
//! and Qwen 3 tokenizers (fetched into `.cache/tokenizers/` by `cargo xtask fetch-tokenizers`).
//! The expectations come from `tests/fixtures/chat/generate_chat.py` (see its README).

use std::path::{Path, PathBuf};

use rdro::data::{
    load_dataset, strftime, tokenize_dataset, ChatTemplate, DataError, Encoder, HubOptions,
    Message, Role, TemplateTokens, TokenizeOptions, TokenizerBundle, TruncationConfig,
    TruncationMode,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const TOKENIZERS: [&str; 2] = ["llama3", "qwen3"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> Value {
    let path = repo_root().join("tests/fixtures/chat/golden.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden.json is valid JSON")
}

/// The cached tokenizer folder; fails (never skips) when the cache is missing or stale.
fn tokenizer_dir(name: &str, golden: &Value) -> PathBuf {
    let dir = repo_root().join(".cache/tokenizers").join(name);
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo xtask fetch-tokenizers` to fetch the real tokenizers",
                path.display()
            )
        });
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            golden["tokenizer_files"][name][file].as_str().unwrap(),
            "{} differs from the file the golden fixture was made with: run `cargo xtask fetch-tokenizers`",
            path.display()
        );
    }
    dir
}

fn messages(value: &Value) -> Vec<Message> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            Message::new(
                Role::parse(m["role"].as_str().unwrap()).unwrap(),
                m["content"].as_str().unwrap(),
            )
        })
        .collect()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an id list: {value}"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// Describes where two id lists first differ.
fn diff(expected: &[u32], actual: &[u32]) -> String {
    let at = expected
        .iter()
        .zip(actual)
        .take_while(|(a, b)| a == b)
        .count();
    format!(
        "lengths {} vs {}, first difference at {at}: expected {:?}, got {:?}",
        expected.len(),
        actual.len(),
        &expected[at..expected.len().min(at + 5)],
        &actual[at..actual.len().min(at + 5)]
    )
}

#[test]
fn fixture_has_enough_conversations() {
    let golden = golden();
    let n = golden["conversations"].as_array().unwrap().len();
    assert!(n >= 50, "only {n} conversations");
    for name in TOKENIZERS {
        assert_eq!(
            golden["expected"][name]["conversations"]
                .as_array()
                .unwrap()
                .len(),
            n
        );
    }
}

#[test]
fn conversations_match_transformers_token_for_token() {
    let golden = golden();
    let mut failures = Vec::new();
    let mut checked = 0;
    for name in TOKENIZERS {
        let bundle = TokenizerBundle::from_dir(&tokenizer_dir(name, &golden)).unwrap();
        let encoder = Encoder::new(&bundle, None);
        let expected_all = golden["expected"][name]["conversations"]
            .as_array()
            .unwrap();
        for (conv, expected) in golden["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .zip(expected_all)
        {
            let id = conv["id"].as_str().unwrap();
            let prompt = messages(&conv["prompt"]);
            let completion = messages(&conv["completion"]);
            let mut full = prompt.clone();
            full.extend(completion.clone());
            let prompt_text = encoder.render(&prompt, true).unwrap();
            if prompt_text != expected["prompt_text"].as_str().unwrap() {
                failures.push(format!(
                    "{name}/{id}: prompt text {prompt_text:?} vs {}",
                    expected["prompt_text"]
                ));
            }
            let full_text = encoder.render(&full, false).unwrap();
            if full_text != expected["full_text"].as_str().unwrap() {
                failures.push(format!(
                    "{name}/{id}: full text {full_text:?} vs {}",
                    expected["full_text"]
                ));
            }
            let got = encoder
                .conversation(&prompt, &completion)
                .unwrap_or_else(|e| panic!("{name}/{id}: {e}"));
            for (field, actual) in [
                ("prompt_ids", &got.prompt_ids),
                ("full_ids", &got.full_ids),
                ("completion_ids", &got.completion_ids),
            ] {
                let want = ids(&expected[field]);
                if *actual != want {
                    failures.push(format!("{name}/{id}: {field}: {}", diff(&want, actual)));
                }
            }
            if got.boundary as u64 != expected["boundary"].as_u64().unwrap() {
                failures.push(format!(
                    "{name}/{id}: boundary {} vs {}",
                    got.boundary, expected["boundary"]
                ));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 100);
}

#[test]
fn completions_end_with_the_end_of_turn_token() {
    let golden = golden();
    for (name, end) in [("llama3", "<|eot_id|>"), ("qwen3", "<|im_end|>")] {
        let bundle = TokenizerBundle::from_dir(&tokenizer_dir(name, &golden)).unwrap();
        let end_id = bundle.inner().token_to_id(end).unwrap();
        assert!(bundle.end_of_turn_ids().contains(&end_id));
        for expected in golden["expected"][name]["conversations"]
            .as_array()
            .unwrap()
        {
            let completion = ids(&expected["completion_ids"]);
            assert_eq!(completion.last(), Some(&end_id), "{name}: {expected}");
            // Exactly one BOS at most, at the start.
            if let Some(bos) = bundle.bos_token_id() {
                let prompt = ids(&expected["prompt_ids"]);
                assert_eq!(prompt.iter().filter(|&&t| t == bos).count(), 1);
                assert_eq!(prompt[0], bos);
            }
        }
    }
}

/// Writes `rows` as a JSON Lines file and tokenizes it through the whole pipeline.
fn run_pipeline(
    dir: &Path,
    file: &str,
    rows: &[Value],
    bundle: &TokenizerBundle,
    truncation: TruncationConfig,
) -> Result<rdro::data::TokenizedDataset, DataError> {
    let path = dir.join(file);
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, text).unwrap();
    let dataset = load_dataset(
        path.to_str().unwrap(),
        "train",
        false,
        &HubOptions::from_lookup(|_| None),
    )?;
    let options = TokenizeOptions {
        truncation,
        ..TokenizeOptions::default()
    };
    tokenize_dataset(&dataset, Some(bundle), &options)
}

#[test]
fn data_files_tokenize_like_transformers() {
    let golden = golden();
    let tmp = tempfile::tempdir().unwrap();
    for name in TOKENIZERS {
        let bundle = TokenizerBundle::from_dir(&tokenizer_dir(name, &golden)).unwrap();
        // Conversational rows, unpaired, alternating labels.
        let convs = golden["conversations"].as_array().unwrap();
        let rows: Vec<Value> = convs
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"prompt": c["prompt"], "completion": c["completion"], "label": i % 3 != 0}))
            .collect();
        let out = run_pipeline(
            tmp.path(),
            &format!("{name}-conv.jsonl"),
            &rows,
            &bundle,
            TruncationConfig::none(),
        )
        .unwrap();
        assert_eq!(out.examples.len(), convs.len());
        for ((example, expected), conv) in out
            .examples
            .iter()
            .zip(
                golden["expected"][name]["conversations"]
                    .as_array()
                    .unwrap(),
            )
            .zip(convs)
        {
            assert_eq!(
                example.prompt_ids,
                ids(&expected["prompt_ids"]),
                "{name}/{}",
                conv["id"]
            );
            assert_eq!(
                example.completion_ids,
                ids(&expected["completion_ids"]),
                "{name}/{}",
                conv["id"]
            );
        }

        // Standard rows, paired: chosen is the golden completion, rejected a fixed text.
        let standard = golden["standard"].as_array().unwrap();
        let rows: Vec<Value> = standard
            .iter()
            .map(|r| json!({"prompt": r["prompt"], "chosen": r["completion"], "rejected": r["completion"]}))
            .collect();
        let out = run_pipeline(
            tmp.path(),
            &format!("{name}-std.jsonl"),
            &rows,
            &bundle,
            TruncationConfig::none(),
        )
        .unwrap();
        assert_eq!(out.examples.len(), 2 * standard.len());
        assert_eq!(out.pairs().len(), standard.len());
        for (i, expected) in golden["expected"][name]["standard"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let (chosen, rejected) = (&out.examples[2 * i], &out.examples[2 * i + 1]);
            assert!(chosen.label && !rejected.label);
            assert_eq!(chosen.pair_id, Some(i));
            assert_eq!(
                chosen.prompt_ids,
                ids(&expected["prompt_ids"]),
                "{name}/{}",
                standard[i]["id"]
            );
            assert_eq!(
                chosen.completion_ids,
                ids(&expected["completion_ids"]),
                "{name}/{}",
                standard[i]["id"]
            );
            assert_eq!(rejected.completion_ids, chosen.completion_ids);
        }
    }
}

#[test]
fn truncation_matches_trl() {
    let golden = golden();
    let tmp = tempfile::tempdir().unwrap();
    let convs = golden["conversations"].as_array().unwrap();
    let standard = golden["standard"].as_array().unwrap();
    let mut dropped = 0;
    for name in TOKENIZERS {
        let bundle = TokenizerBundle::from_dir(&tokenizer_dir(name, &golden)).unwrap();
        let cases = golden["truncation"].as_array().unwrap();
        let expected_all = golden["expected"][name]["truncation"].as_array().unwrap();
        for (i, (case, expected)) in cases.iter().zip(expected_all).enumerate() {
            let row = if let Some(id) = case["conversation"].as_str() {
                let c = convs.iter().find(|c| c["id"] == id).unwrap();
                json!({"prompt": c["prompt"], "completion": c["completion"], "label": true})
            } else {
                let id = case["standard"].as_str().unwrap();
                let r = standard.iter().find(|r| r["id"] == id).unwrap();
                json!({"prompt": r["prompt"], "completion": r["completion"], "label": true})
            };
            let truncation = TruncationConfig {
                max_length: case["max_length"].as_u64().map(|n| n as usize),
                max_prompt_length: case["max_prompt_length"].as_u64().map(|n| n as usize),
                mode: case["mode"]
                    .as_str()
                    .unwrap()
                    .parse::<TruncationMode>()
                    .unwrap(),
            };
            let result = run_pipeline(
                tmp.path(),
                &format!("{name}-trunc-{i}.jsonl"),
                &[row],
                &bundle,
                truncation,
            );
            if expected.get("dropped").is_some() {
                let err = result.expect_err("the completion is truncated away");
                assert!(
                    err.to_string()
                        .contains("the completion would be truncated away entirely"),
                    "{err}"
                );
                dropped += 1;
                continue;
            }
            let out = result.unwrap_or_else(|e| panic!("{name} case {i}: {e}"));
            let example = &out.examples[0];
            assert_eq!(
                example.prompt_ids,
                ids(&expected["prompt_ids"]),
                "{name} case {i}: {case}"
            );
            assert_eq!(
                example.completion_ids,
                ids(&expected["completion_ids"]),
                "{name} case {i}: {case}"
            );
            let max = truncation.max_length.unwrap();
            assert!(example.prompt_ids.len() + example.completion_ids.len() <= max);
        }
    }
    assert!(
        dropped >= 2,
        "the fixture should hold a row truncated away for each tokenizer"
    );
}

#[test]
fn helper_templates_render_like_jinja2() {
    let golden = golden();
    let special = &golden["helper_special_tokens"];
    let tokens = TemplateTokens {
        bos_token: special["bos_token"].as_str().map(str::to_string),
        eos_token: special["eos_token"].as_str().map(str::to_string),
        unk_token: special["unk_token"].as_str().map(str::to_string),
        pad_token: special["pad_token"].as_str().map(str::to_string),
    };
    let messages = messages(&golden["helper_messages"]);
    let mut failures = Vec::new();
    for case in golden["helpers"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let template = ChatTemplate::new(case["template"].as_str().unwrap(), tokens.clone())
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let result = template.render_with(&messages, case["context"].clone());
        match (
            &case["expected"]["text"],
            &case["expected"]["error"],
            result,
        ) {
            (Value::String(want), _, Ok(got)) if *want == got => {}
            (_, Value::String(want), Err(got)) if got.contains(want.as_str()) => {}
            (_, _, got) => {
                failures.push(format!("{id}: expected {}, got {got:?}", case["expected"]))
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn strftime_matches_python() {
    let golden = golden();
    for case in golden["strftime"].as_array().unwrap() {
        let got = strftime(
            case["format"].as_str().unwrap(),
            case["timestamp"].as_i64().unwrap(),
        );
        assert_eq!(got, case["expected"].as_str().unwrap(), "{case}");
    }
}

#[test]
fn bundles_read_special_tokens_and_vocabulary() {
    let golden = golden();
    let llama = TokenizerBundle::from_dir(&tokenizer_dir("llama3", &golden)).unwrap();
    assert_eq!(llama.bos_token_id(), Some(128000));
    assert_eq!(llama.eos_token_id(), Some(128001));
    assert_eq!(llama.vocab_size(), 128256);
    let qwen = TokenizerBundle::from_dir(&tokenizer_dir("qwen3", &golden)).unwrap();
    assert_eq!(qwen.bos_token_id(), None);
    assert_eq!(qwen.eos_token(), Some("<|im_end|>"));
    // transformers' tokenizer("Hello world") adds nothing for either.
    assert_eq!(llama.encode("Hello world", true).unwrap(), vec![9906, 1917]);
    assert_eq!(qwen.encode("Hello world", true).unwrap(), vec![9707, 1879]);
}
