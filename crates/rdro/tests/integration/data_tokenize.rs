//! Tokenization rules on a tiny word-level tokenizer: template override, EOS when the template
//! closes no turn, no double BOS, prompts that are not a prefix, template errors, pairs.

use std::path::Path;

use rdro::data::{
    load_dataset, tokenize_dataset, DataError, Encoder, HubOptions, Message, Role, TokenizeOptions,
    TokenizerBundle, TruncationConfig,
};
use serde_json::json;

use crate::tokenizer_common::{write_word_level, SPECIALS};

const WORDS: [&str; 12] = [
    "hi", "hello", "there", "how", "are", "you", "fine", "bad", "sky", "is", "blue", "green",
];

/// The tiny tokenizer over [`WORDS`], with `config` merged into its tokenizer_config.json.
fn tiny_tokenizer(dir: &Path, config: serde_json::Value) -> TokenizerBundle {
    write_word_level(dir, &WORDS, config);
    TokenizerBundle::from_dir(dir).unwrap()
}

fn id(word: &str) -> u32 {
    SPECIALS
        .iter()
        .chain(WORDS.iter())
        .position(|t| *t == word)
        .unwrap() as u32
}

fn ids(words: &str) -> Vec<u32> {
    words.split(' ').map(id).collect()
}

fn user(text: &str) -> Message {
    Message::new(Role::User, text)
}

fn assistant(text: &str) -> Message {
    Message::new(Role::Assistant, text)
}

#[test]
fn eos_is_appended_when_the_template_closes_no_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_tokenizer(tmp.path(), json!({}));
    let encoder = Encoder::new(&bundle, None);
    let got = encoder
        .conversation(&[user("hi there")], &[assistant("hello")])
        .unwrap();
    assert_eq!(got.prompt_ids, ids("<s> <|user|> hi there <|assistant|>"));
    assert_eq!(got.boundary, got.prompt_ids.len());
    assert_eq!(got.completion_ids, ids("hello </s>"));
}

#[test]
fn the_completion_stops_after_the_last_end_of_turn_token() {
    let tmp = tempfile::tempdir().unwrap();
    // A template that closes turns with </s> and always opens a new assistant turn at the end.
    let template = "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|> {{ m.content }} </s>{% endfor %}<|assistant|>";
    let bundle = tiny_tokenizer(tmp.path(), json!({ "chat_template": template }));
    let encoder = Encoder::new(&bundle, None);
    let got = encoder
        .conversation(
            &[user("hi")],
            &[assistant("fine"), user("how are you"), assistant("bad")],
        )
        .unwrap();
    assert_eq!(
        got.completion_ids,
        ids("fine </s> <|user|> how are you </s> <|assistant|> bad </s>")
    );
    assert_eq!(*got.full_ids.last().unwrap(), id("<|assistant|>"));
}

#[test]
fn a_template_override_replaces_the_tokenizers() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_tokenizer(tmp.path(), json!({}));
    let template = "{% for m in messages %}{{ m.content }} {% endfor %}";
    let encoder = Encoder::new(&bundle, Some(template));
    let got = encoder
        .conversation(&[user("sky is")], &[assistant("blue")])
        .unwrap();
    assert_eq!(got.prompt_ids, ids("sky is"));
    assert_eq!(got.completion_ids, ids("blue </s>"));
}

#[test]
fn a_bos_emitted_twice_is_kept_once() {
    let tmp = tempfile::tempdir().unwrap();
    let template =
        "{{ bos_token }}{{ bos_token }}{% for m in messages %}{{ m.content }} {% endfor %}";
    let bundle = tiny_tokenizer(
        tmp.path(),
        json!({ "chat_template": template, "add_bos_token": true }),
    );
    let encoder = Encoder::new(&bundle, None);
    let got = encoder
        .conversation(&[user("hi")], &[assistant("hello")])
        .unwrap();
    assert_eq!(got.prompt_ids, ids("<s> hi"));
    // Standard rows: the tokenizer adds BOS (add_bos_token) and the text starts with one too.
    let (prompt, completion) = encoder.standard("<s> sky is", " blue").unwrap();
    assert_eq!(prompt, ids("<s> sky is"));
    assert_eq!(completion, ids("blue </s>"));
}

#[test]
fn add_bos_token_decides_bos_for_standard_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let with = tiny_tokenizer(tmp.path(), json!({ "add_bos_token": true }));
    assert_eq!(with.encode("sky is", true).unwrap(), ids("<s> sky is"));
    assert_eq!(with.encode("sky is", false).unwrap(), ids("sky is"));
    let tmp = tempfile::tempdir().unwrap();
    let without = tiny_tokenizer(
        tmp.path(),
        json!({ "add_bos_token": false, "add_eos_token": true }),
    );
    assert_eq!(without.encode("sky is", true).unwrap(), ids("sky is </s>"));
    let encoder = Encoder::new(&without, None);
    // EOS text is not appended twice, and the prompt's own EOS is not part of the prompt.
    let (prompt, completion) = encoder.standard("sky is", " blue </s>").unwrap();
    assert_eq!(prompt, ids("sky is"));
    assert_eq!(completion, ids("blue </s> </s>"));
}

#[test]
fn a_prompt_that_is_not_a_prefix_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    // The generation prompt adds a word that the full conversation does not have.
    let template = "{% for m in messages %}<|{{ m.role }}|> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<|assistant|> there{% endif %}";
    let bundle = tiny_tokenizer(tmp.path(), json!({ "chat_template": template }));
    let path = tmp.path().join("rows.jsonl");
    std::fs::write(
        &path,
        json!({"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}], "label": true}).to_string(),
    )
    .unwrap();
    let data = load_dataset(
        path.to_str().unwrap(),
        "train",
        false,
        &HubOptions::from_lookup(|_| None),
    )
    .unwrap();
    let err = tokenize_dataset(&data, Some(&bundle), &TokenizeOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(":1: field `completion`: the chat template renders the prompt differently"),
        "{text}"
    );
}

#[test]
fn template_errors_name_the_row_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let template = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ m.content }} {% endfor %}";
    let bundle = tiny_tokenizer(tmp.path(), json!({ "chat_template": template }));
    let path = tmp.path().join("rows.jsonl");
    let rows = [
        json!({"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}], "label": true}),
        json!({"prompt": [{"role": "system", "content": "hi"}, {"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}], "label": false}),
    ];
    std::fs::write(
        &path,
        rows.iter().map(|r| format!("{r}\n")).collect::<String>(),
    )
    .unwrap();
    let data = load_dataset(
        path.to_str().unwrap(),
        "train",
        false,
        &HubOptions::from_lookup(|_| None),
    )
    .unwrap();
    let err = tokenize_dataset(&data, Some(&bundle), &TokenizeOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(":2: field `prompt`: the chat template failed: System role not supported"),
        "{text}"
    );
    // Skipping keeps the good row and counts the bad one.
    let options = TokenizeOptions {
        skip_invalid: true,
        ..TokenizeOptions::default()
    };
    let out = tokenize_dataset(&data, Some(&bundle), &options).unwrap();
    assert_eq!(out.examples.len(), 1);
    assert_eq!(out.skipped_rows, 1);
    assert_eq!(out.total_rows, 2);
}

#[test]
fn a_missing_or_broken_template_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_tokenizer(tmp.path(), json!({ "chat_template": null }));
    let path = tmp.path().join("rows.jsonl");
    std::fs::write(
        &path,
        json!({"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}], "label": true}).to_string(),
    )
    .unwrap();
    let data = load_dataset(
        path.to_str().unwrap(),
        "train",
        false,
        &HubOptions::from_lookup(|_| None),
    )
    .unwrap();
    let err = tokenize_dataset(&data, Some(&bundle), &TokenizeOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Template(_)), "{err}");
    assert!(err.to_string().contains("no chat_template"), "{err}");
    let options = TokenizeOptions {
        chat_template: Some("{% for m in messages %}{{ m.content }".into()),
        ..TokenizeOptions::default()
    };
    let err = tokenize_dataset(&data, Some(&bundle), &options).unwrap_err();
    assert!(matches!(err, DataError::Template(_)), "{err}");
}

#[test]
fn paired_rows_share_the_prompt_and_keep_order() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_tokenizer(tmp.path(), json!({}));
    let path = tmp.path().join("pairs.jsonl");
    let rows = [
        json!({"prompt": "sky is", "chosen": " blue", "rejected": " green"}),
        json!({"prompt": [{"role": "user", "content": "how are you"}], "chosen": [{"role": "assistant", "content": "fine"}], "rejected": [{"role": "assistant", "content": "bad"}]}),
    ];
    std::fs::write(
        &path,
        rows.iter().map(|r| format!("{r}\n")).collect::<String>(),
    )
    .unwrap();
    let data = load_dataset(
        path.to_str().unwrap(),
        "train",
        false,
        &HubOptions::from_lookup(|_| None),
    )
    .unwrap();
    let options = TokenizeOptions {
        truncation: TruncationConfig::none(),
        ..TokenizeOptions::default()
    };
    let out = tokenize_dataset(&data, Some(&bundle), &options).unwrap();
    assert!(out.is_paired());
    assert_eq!(out.pairs(), vec![(0, 1), (2, 3)]);
    assert_eq!(out.preferred_fraction(), 0.5);
    let e = &out.examples;
    assert_eq!(e[0].prompt_ids, ids("sky is"));
    assert_eq!(e[0].completion_ids, ids("blue </s>"));
    assert_eq!(e[1].completion_ids, ids("green </s>"));
    assert_eq!((e[0].label, e[1].label), (true, false));
    assert_eq!(
        (e[0].pair_id, e[1].pair_id, e[2].pair_id),
        (Some(0), Some(0), Some(1))
    );
    assert_eq!(
        e[2].prompt_ids,
        ids("<s> <|user|> how are you <|assistant|>")
    );
    assert_eq!(e[2].prompt_ids, e[3].prompt_ids);
    assert_eq!(e[3].completion_ids, ids("bad </s>"));
    assert_eq!(e[3].source.to_string(), format!("{}:2", path.display()));
}

#[test]
fn vocabulary_checks_use_the_tokenizer_size() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_tokenizer(tmp.path(), json!({}));
    assert_eq!(bundle.vocab_size(), 18);
    let path = tmp.path().join("ids.jsonl");
    std::fs::write(
        &path,
        "{\"prompt_ids\": [0, 3], \"completion_ids\": [17, 18], \"label\": true}\n",
    )
    .unwrap();
    let data = load_dataset(
        path.to_str().unwrap(),
        "train",
        false,
        &HubOptions::from_lookup(|_| None),
    )
    .unwrap();
    let err = tokenize_dataset(&data, Some(&bundle), &TokenizeOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("field `completion_ids[1]`: token id 18 is outside the vocabulary (size 18)"),
        "{err}"
    );
}

#[test]
fn a_token_merging_across_the_boundary_goes_to_the_completion() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_tokenizer(tmp.path(), json!({}));
    let path = tmp.path().join("pairs.jsonl");
    // "is" + "blue" merges into one unknown word; "is" + " green" does not.
    std::fs::write(
        &path,
        json!({"prompt": "sky is", "chosen": "blue", "rejected": " green"}).to_string(),
    )
    .unwrap();
    let data = load_dataset(
        path.to_str().unwrap(),
        "train",
        false,
        &HubOptions::from_lookup(|_| None),
    )
    .unwrap();
    let out = tokenize_dataset(&data, Some(&bundle), &TokenizeOptions::default()).unwrap();
    let (chosen, rejected) = (&out.examples[0], &out.examples[1]);
    assert_eq!(chosen.prompt_ids, ids("sky"));
    assert_eq!(rejected.prompt_ids, ids("sky"));
    assert_eq!(chosen.completion_ids, ids("<unk> </s>"));
    assert_eq!(rejected.completion_ids, ids("is green </s>"));
}

#[test]
fn tokenizers_of_hub_models_download_into_the_cache_then_load_offline() {
    use crate::adapters_common::MockHub;

    let tmp = tempfile::tempdir().unwrap();
    let files = tmp.path().join("files");
    write_word_level(&files, &WORDS, json!({}));
    let hub = MockHub::start(None);
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        let bytes = std::fs::read(files.join(name)).unwrap();
        hub.state
            .lock()
            .unwrap()
            .served
            .insert(("acme/tiny".to_string(), name.to_string()), bytes);
    }
    let online =
        crate::adapters_common::local_hub_options(&tmp.path().join("hub"), &hub.url, None, false);
    let bundle = TokenizerBundle::from_pretrained("acme/tiny", &online).unwrap();
    assert_eq!(
        bundle.encode("sky is blue", false).unwrap(),
        vec![id("sky"), id("is"), id("blue")]
    );
    // A model without tokenizer files names the missing file.
    let err = TokenizerBundle::from_pretrained("acme/empty", &online).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    hub.stop();
    let offline = HubOptions {
        offline: true,
        ..online
    };
    let again = TokenizerBundle::from_pretrained("acme/tiny", &offline).unwrap();
    assert_eq!(again.eos_token_id(), bundle.eos_token_id());
    let err = TokenizerBundle::from_pretrained("acme/other", &offline).unwrap_err();
    assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
}
