//! A word-level tokenizer written as Hugging Face files, for tests that need real tokenization
//! without a download.

use std::path::Path;

use serde_json::json;

/// The special tokens, ids 0 to 5; words follow from id 6.
pub const SPECIALS: [&str; 6] = [
    "<s>",
    "</s>",
    "<unk>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
];

/// Writes tokenizer.json (word level over [`SPECIALS`] then `words`, split on whitespace) and
/// tokenizer_config.json (BOS `<s>`, EOS `</s>`, a one-line chat template) with `config` merged in.
pub fn write_word_level<S: AsRef<str>>(dir: &Path, words: &[S], config: serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let mut vocab = serde_json::Map::new();
    let tokens = SPECIALS
        .iter()
        .copied()
        .chain(words.iter().map(|w| w.as_ref()));
    for (i, token) in tokens.enumerate() {
        vocab.insert(token.to_string(), json!(i));
    }
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let mut base = json!({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "chat_template": "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    });
    for (k, v) in config.as_object().unwrap() {
        base[k] = v.clone();
    }
    std::fs::write(dir.join("tokenizer_config.json"), base.to_string()).unwrap();
}
