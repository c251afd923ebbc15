//! The base model's tokenizer: tokenizer.json plus tokenizer_config.json (chat template, special
//! tokens, BOS/EOS behaviour), loaded so that encoding matches transformers' `AutoTokenizer`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::Tokenizer;

use super::error::DataError;
use super::hub;
use super::template::TemplateTokens;
use rdro_models::hub::HubOptions;

/// Tokens that close a chat turn in the templates of the supported families (and a few others).
const END_OF_TURN_TOKENS: [&str; 8] = [
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
];

/// A tokenizer with what transformers reads beside it.
pub struct TokenizerBundle {
    tokenizer: Tokenizer,
    chat_template: Option<String>,
    tokens: TemplateTokens,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    end_of_turn_ids: Vec<u32>,
    vocab_size: usize,
    origin: String,
}

impl std::fmt::Debug for TokenizerBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenizerBundle")
            .field("origin", &self.origin)
            .field("tokens", &self.tokens)
            .field("vocab_size", &self.vocab_size)
            .finish_non_exhaustive()
    }
}

/// A special token in tokenizer_config.json: a string, or an AddedToken object with `content`.
fn token_string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The template of a `chat_template` value: a string, or a list of `{name, template}` (the one
/// named "default", as transformers picks it).
fn template_string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let named = |wanted: &str| {
                items.iter().find_map(|item| {
                    (item.get("name")?.as_str()? == wanted)
                        .then(|| item.get("template")?.as_str().map(str::to_string))
                        .flatten()
                })
            };
            named("default")
        }
        _ => None,
    }
}

impl TokenizerBundle {
    /// Loads `tokenizer.json` and `tokenizer_config.json` from `dir`; a `chat_template.jinja` there
    /// takes the place of the config's template, as in transformers.
    pub fn from_dir(dir: &Path) -> Result<Self, DataError> {
        let tokenizer_json = dir.join("tokenizer.json");
        if !tokenizer_json.is_file() {
            return Err(DataError::Tokenizer(format!(
                "{}: no tokenizer.json in this folder",
                dir.display()
            )));
        }
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| DataError::io(&config_path, e))?;
            serde_json::from_str::<Value>(&text).map_err(|e| {
                DataError::Tokenizer(format!("{}: invalid JSON: {e}", config_path.display()))
            })?
        } else {
            Value::Object(Default::default())
        };
        let jinja = dir.join("chat_template.jinja");
        let template_override = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| DataError::io(&jinja, e))?)
        } else {
            None
        };
        let mut bundle = Self::from_parts(&tokenizer_json, &config, &dir.display().to_string())?;
        if template_override.is_some() {
            bundle.chat_template = template_override;
        }
        Ok(bundle)
    }

    /// Loads a base model's tokenizer: a folder (Hugging Face layout, or only the two tokenizer
    /// files), or a Hub model id resolved through the local cache (downloaded when online).
    pub fn from_pretrained(spec: &str, hub_options: &HubOptions) -> Result<Self, DataError> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::from_dir(path);
        }
        if path.is_file() {
            let hint = if path.extension().is_some_and(|e| e == "gguf") {
                ": reading the tokenizer out of a GGUF file is not supported here; pass the original model's folder or Hub id"
            } else {
                ": expected a folder holding tokenizer.json and tokenizer_config.json"
            };
            return Err(DataError::Tokenizer(format!("{spec}{hint}")));
        }
        if hub::is_hub_id(spec) {
            let dir: PathBuf = hub::model_files(
                spec,
                &["tokenizer.json", "tokenizer_config.json"],
                hub_options,
            )?;
            return Self::from_dir(&dir);
        }
        Err(DataError::Tokenizer(format!(
            "{spec}: no such folder, and not a Hub model id (owner/name)"
        )))
    }

    /// Builds a bundle from a tokenizer.json path and an already parsed tokenizer_config.json.
    pub fn from_parts(
        tokenizer_json: &Path,
        config: &Value,
        origin: &str,
    ) -> Result<Self, DataError> {
        let mut tokenizer = Tokenizer::from_file(tokenizer_json)
            .map_err(|e| DataError::Tokenizer(format!("{}: {e}", tokenizer_json.display())))?;
        let tokens = TemplateTokens {
            bos_token: token_string(config.get("bos_token")),
            eos_token: token_string(config.get("eos_token")),
            unk_token: token_string(config.get("unk_token")),
            pad_token: token_string(config.get("pad_token")),
        };
        let id_of =
            |token: &Option<String>| token.as_deref().and_then(|t| tokenizer.token_to_id(t));
        let bos_id = id_of(&tokens.bos_token);
        let eos_id = id_of(&tokens.eos_token);

        // transformers rebuilds the post-processor when tokenizer_config.json sets add_bos_token
        // or add_eos_token, or when tokenizer.json has none: BOS/EOS exactly as those flags say.
        let add_bos = config.get("add_bos_token").and_then(Value::as_bool);
        let add_eos = config.get("add_eos_token").and_then(Value::as_bool);
        if add_bos.is_some() || add_eos.is_some() || tokenizer.get_post_processor().is_none() {
            let bos = bos_id
                .filter(|_| add_bos == Some(true))
                .zip(tokens.bos_token.clone());
            let eos = eos_id
                .filter(|_| add_eos == Some(true))
                .zip(tokens.eos_token.clone());
            let mut single = Vec::new();
            let mut pair = Vec::new();
            let mut special = Vec::new();
            if let Some((id, token)) = &bos {
                single.push(format!("{token}:0"));
                special.push((token.clone(), *id));
            }
            single.push("$A:0".to_string());
            if let Some((id, token)) = &eos {
                single.push(format!("{token}:0"));
                special.push((token.clone(), *id));
            }
            pair.extend(single.iter().cloned());
            if let Some((_, token)) = &bos {
                pair.push(format!("{token}:1"));
            }
            pair.push("$B:1".to_string());
            if let Some((_, token)) = &eos {
                pair.push(format!("{token}:1"));
            }
            let processor = TemplateProcessing::builder()
                .try_single(single.join(" "))
                .and_then(|b| b.try_pair(pair.join(" ")))
                .map_err(|e| DataError::Tokenizer(format!("{origin}: post-processor: {e}")))?
                .special_tokens(special)
                .build()
                .map_err(|e| DataError::Tokenizer(format!("{origin}: post-processor: {e}")))?;
            tokenizer.with_post_processor(Some(processor));
        }

        let mut end_of_turn_ids: Vec<u32> = END_OF_TURN_TOKENS
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        end_of_turn_ids.extend(eos_id);
        end_of_turn_ids.sort_unstable();
        end_of_turn_ids.dedup();
        let vocab_size = tokenizer.get_vocab_size(true);
        Ok(Self {
            chat_template: template_string(config.get("chat_template")),
            tokenizer,
            tokens,
            bos_id,
            eos_id,
            end_of_turn_ids,
            vocab_size,
            origin: origin.to_string(),
        })
    }

    /// Encodes text. With `add_special_tokens`, BOS/EOS are added as the tokenizer's post-processor
    /// says (transformers' `tokenizer(text)`); without, never (`apply_chat_template`).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, DataError> {
        self.tokenizer
            .encode_fast(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| DataError::Tokenizer(format!("{}: encoding failed: {e}", self.origin)))
    }

    /// Decodes ids back to text, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| DataError::Tokenizer(format!("{}: decoding failed: {e}", self.origin)))
    }

    /// The chat template of tokenizer_config.json (or chat_template.jinja), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The special-token strings templates see.
    pub fn template_tokens(&self) -> &TemplateTokens {
        &self.tokens
    }

    /// The BOS token id, if the tokenizer has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The EOS token id, if the tokenizer has one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The EOS token string, if the tokenizer has one.
    pub fn eos_token(&self) -> Option<&str> {
        self.tokens.eos_token.as_deref()
    }

    /// Ids that end a chat turn: EOS and the known end-of-turn tokens the vocabulary has.
    pub fn end_of_turn_ids(&self) -> &[u32] {
        &self.end_of_turn_ids
    }

    /// Vocabulary size, added tokens included: every valid id is below it.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Where the tokenizer was loaded from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}
