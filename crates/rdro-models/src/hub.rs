//! Base models named by a Hugging Face Hub id (`Qwen/Qwen2.5-0.5B-Instruct`), resolved to a local
//! folder: the local Hub cache first, a download through the `hf-hub` crate otherwise.
//!
//! The cache is the one the Hub clients share (`<cache>/models--<owner>--<name>/{refs, snapshots,
//! blobs}`), so a model downloaded by Python's `huggingface_hub` is found here and the other way
//! round. Settings come from the environment as the Hub clients read it: `HF_HUB_CACHE` /
//! `HF_HOME` (cache), `HF_ENDPOINT` (server), `HF_TOKEN` / `HF_TOKEN_PATH` / `$HF_HOME/token`
//! (token) and `HF_HUB_OFFLINE` (never touch the network).

use std::fmt;
use std::path::{Path, PathBuf};

use rdro_lora::peft::is_hub_id;

use crate::load::ModelSource;
use crate::ModelError;

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Files of a model folder fetched when present, besides `config.json` and the weights.
pub const OPTIONAL_MODEL_FILES: [&str; 10] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
];

/// Errors of Hub resolution, downloads and uploads.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A model or adapter file problem.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An adapter problem.
    #[error(transparent)]
    Lora(#[from] rdro_lora::LoraError),
    /// The model is not (completely) in the cache and the network may not be used.
    #[error(
        "model {repo_id} (revision {revision}) is not complete in the local Hub cache ({cache}) and \
         HF_HUB_OFFLINE is set; download it once with network access or unset HF_HUB_OFFLINE"
    )]
    NotCached {
        /// The Hub id.
        repo_id: String,
        /// The revision asked for.
        revision: String,
        /// The cache folder of that repository.
        cache: PathBuf,
    },
    /// A spec that is neither an existing path nor a Hub id.
    #[error("{spec:?} is not an existing file or folder, nor a Hub id of the form owner/name")]
    NotAModel {
        /// What the user gave.
        spec: String,
    },
    /// A request to the Hub failed.
    #[error("{what}: {message}")]
    Request {
        /// What was being done (`downloading Qwen/Qwen2.5-0.5B/config.json`).
        what: String,
        /// The client's error.
        message: String,
    },
    /// No token was found for an operation that needs one.
    #[error(
        "no Hugging Face token found: set HF_TOKEN, or log in once (`hf auth login` writes {token_file})"
    )]
    NoToken {
        /// Where the token file was looked for.
        token_file: PathBuf,
    },
    /// A folder that cannot be uploaded as it is.
    #[error("{path}: {message}")]
    Folder {
        /// The folder or file.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Downloads and uploads are not compiled in.
    #[error("{0}: this build has no Hub client (crate feature `hub` is off)")]
    NoClient(String),
}

/// Where and how to reach the Hub.
#[derive(Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache folder.
    pub cache_dir: PathBuf,
    /// Base URL of the Hub (`HF_ENDPOINT`).
    pub endpoint: String,
    /// Access token; never printed (the `Debug` output redacts it).
    pub token: Option<String>,
    /// Where the token file is (or would be): `HF_TOKEN_PATH`, else `$HF_HOME/token`.
    pub token_file: PathBuf,
    /// Never touch the network (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Branch, tag or commit to read models at.
    pub revision: String,
}

impl fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubOptions")
            .field("cache_dir", &self.cache_dir)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("offline", &self.offline)
            .field("revision", &self.revision)
            .finish()
    }
}

impl HubOptions {
    /// Options from the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Options from any variable lookup (tests pass a map instead of the process environment).
    ///
    /// - cache: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    ///   `~/.cache/huggingface/hub`;
    /// - endpoint: `HF_ENDPOINT`, else <https://huggingface.co>;
    /// - token: `HF_TOKEN`, else the file `HF_TOKEN_PATH`, else `$HF_HOME/token` (with the same
    ///   `HF_HOME` fallbacks as the cache);
    /// - offline: `HF_HUB_OFFLINE` set to 1 / true / yes / on.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let var = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let home =
            var("HF_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| match var("XDG_CACHE_HOME") {
                    Some(xdg) => PathBuf::from(xdg).join("huggingface"),
                    None => PathBuf::from(var("HOME").unwrap_or_else(|| ".".into()))
                        .join(".cache")
                        .join("huggingface"),
                });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("token"));
        let token = var("HF_TOKEN").map(|t| t.trim().to_string()).or_else(|| {
            std::fs::read_to_string(&token_file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        Self {
            cache_dir,
            endpoint: var("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token,
            token_file,
            offline,
            revision: "main".into(),
        }
    }

    /// The cache folder of repository `repo_id` (`<cache>/models--owner--name` or
    /// `<cache>/datasets--owner--name`).
    pub fn repo_cache_dir(&self, kind: RepoKind, repo_id: &str) -> PathBuf {
        let prefix = match kind {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        };
        self.cache_dir
            .join(format!("{prefix}--{}", repo_id.replace('/', "--")))
    }

    /// The cache folder of model repository `repo_id`.
    pub fn model_cache_dir(&self, repo_id: &str) -> PathBuf {
        self.repo_cache_dir(RepoKind::Model, repo_id)
    }

    /// The cached snapshot folder of `repo_id` at `self.revision` (a branch or tag named in
    /// `refs/`, or a full commit hash), if the cache holds one. Nothing is checked inside it.
    pub fn cached_snapshot(&self, kind: RepoKind, repo_id: &str) -> Option<PathBuf> {
        let repo = self.repo_cache_dir(kind, repo_id);
        let rev = &self.revision;
        let commit = if rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) {
            rev.clone()
        } else {
            std::fs::read_to_string(repo.join("refs").join(rev))
                .ok()?
                .trim()
                .to_string()
        };
        let snapshot = repo.join("snapshots").join(commit);
        snapshot.is_dir().then_some(snapshot)
    }
}

/// The kind of a Hub repository: models and data sets share one cache, side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A model repository.
    Model,
    /// A data set repository.
    Dataset,
}

impl fmt::Display for RepoKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "data set",
        })
    }
}

/// A base model made local.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// Where its files are.
    pub source: ModelSource,
    /// The Hub id, when the spec was one.
    pub hub_id: Option<String>,
}

/// Makes `spec` (a `.gguf` file, a Hugging Face folder, or a Hub id) local. An existing path wins
/// over a Hub id of the same spelling.
pub fn resolve_model(spec: &str, options: &HubOptions) -> Result<ResolvedModel, HubError> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(ResolvedModel {
            source: ModelSource::from_path(path)?,
            hub_id: hub_id_of_cache_path(path),
        });
    }
    if !is_hub_id(spec) {
        return Err(HubError::NotAModel {
            spec: spec.to_string(),
        });
    }
    let dir = match cached_model(spec, options) {
        Some(dir) => dir,
        None if options.offline => {
            return Err(HubError::NotCached {
                repo_id: spec.to_string(),
                revision: options.revision.clone(),
                cache: options.model_cache_dir(spec),
            })
        }
        None => download_model(spec, options)?,
    };
    Ok(ResolvedModel {
        source: ModelSource::Folder(dir),
        hub_id: Some(spec.to_string()),
    })
}

/// The Hub id of a path inside a Hub cache (`.../models--Qwen--Qwen2.5-0.5B/snapshots/<commit>`).
pub fn hub_id_of_cache_path(path: &Path) -> Option<String> {
    path.ancestors().find_map(|p| {
        let name = p.file_name()?.to_str()?;
        let rest = name.strip_prefix("models--")?;
        let (owner, repo) = rest.split_once("--")?;
        let id = format!("{owner}/{repo}");
        is_hub_id(&id).then_some(id)
    })
}

/// The snapshot folder of `repo_id` at `options.revision` when the cache holds a complete model
/// there: `config.json` and the weights (`model.safetensors`, or the index and every shard).
pub fn cached_model(repo_id: &str, options: &HubOptions) -> Option<PathBuf> {
    let snapshot = options.cached_snapshot(RepoKind::Model, repo_id)?;
    let complete =
        snapshot.join("config.json").is_file() && crate::load::shard_files(&snapshot).is_ok();
    complete.then_some(snapshot)
}

/// Downloads `config.json`, the tokenizer and generation files that exist, and the safetensors
/// weights (the index and its shards, or `model.safetensors`) of `repo_id` into the cache, and
/// returns the snapshot folder.
#[cfg(feature = "hub")]
pub fn download_model(repo_id: &str, options: &HubOptions) -> Result<PathBuf, HubError> {
    let fetch = |file: &str, bar: Option<&indicatif::ProgressBar>| {
        download_file(RepoKind::Model, repo_id, file, options, bar)
    };
    let config = fetch("config.json", None)?.ok_or_else(|| HubError::Request {
        what: format!("downloading {repo_id}/config.json"),
        message: "the repository has no config.json (is it a transformers model?)".into(),
    })?;
    let snapshot = config.parent().map(Path::to_path_buf).unwrap_or_default();
    for file in OPTIONAL_MODEL_FILES {
        fetch(file, None)?;
    }
    let shards = match fetch("model.safetensors.index.json", None)? {
        Some(index) => index_shards(&index)?,
        None => vec!["model.safetensors".to_string()],
    };
    for shard in &shards {
        let bar = crate::merge::byte_bar(0, &format!("{repo_id}/{shard}"), true);
        let got = fetch(shard, Some(&bar))?;
        bar.finish_and_clear();
        if got.is_none() {
            return Err(HubError::Request {
                what: format!("downloading {repo_id}/{shard}"),
                message: "not found: the repository has no safetensors weights (only *.bin pickles are not read)".into(),
            });
        }
    }
    Ok(snapshot)
}

/// Downloads `file` of repository `repo_id` at `options.revision` into the cache and returns its
/// path in the snapshot folder, or `None` when the repository has no such file. `bar`, when given,
/// follows the bytes.
#[cfg(feature = "hub")]
pub fn download_file(
    kind: RepoKind,
    repo_id: &str,
    file: &str,
    options: &HubOptions,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Option<PathBuf>, HubError> {
    use hf_hub::repository::RepoType;
    use hf_hub::{HFError, HFRepositorySync};

    fn send<T: RepoType>(
        repo: HFRepositorySync<T>,
        file: &str,
        revision: &str,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<PathBuf, HFError> {
        let request = repo
            .download_file()
            .filename(file.to_string())
            .revision(revision.to_string());
        match bar {
            Some(bar) => request.progress(BarProgress(bar.clone())).send(),
            None => request.send(),
        }
    }

    let client = client(options)?;
    let (owner, name) = hf_hub::split_id(repo_id);
    let result = match kind {
        RepoKind::Model => send(client.model(owner, name), file, &options.revision, bar),
        RepoKind::Dataset => send(client.dataset(owner, name), file, &options.revision, bar),
    };
    match result {
        Ok(path) => Ok(Some(path)),
        Err(HFError::EntryNotFound { .. }) => Ok(None),
        Err(e) => Err(HubError::Request {
            what: format!(
                "downloading {kind} {repo_id}/{file} (revision {})",
                options.revision
            ),
            message: e.to_string(),
        }),
    }
}

/// The paths of every file in repository `repo_id` at `options.revision`, as the Hub lists them.
#[cfg(feature = "hub")]
pub fn list_files(
    kind: RepoKind,
    repo_id: &str,
    options: &HubOptions,
) -> Result<Vec<String>, HubError> {
    use hf_hub::repository::{RepoTreeEntry, RepoType};
    use hf_hub::{HFError, HFRepositorySync};

    fn send<T: RepoType>(
        repo: HFRepositorySync<T>,
        revision: &str,
    ) -> Result<Vec<RepoTreeEntry>, HFError> {
        repo.list_tree()
            .revision(revision.to_string())
            .recursive(true)
            .send()
    }

    let client = client(options)?;
    let (owner, name) = hf_hub::split_id(repo_id);
    let entries = match kind {
        RepoKind::Model => send(client.model(owner, name), &options.revision),
        RepoKind::Dataset => send(client.dataset(owner, name), &options.revision),
    }
    .map_err(|e| HubError::Request {
        what: format!("listing {kind} {repo_id} (revision {})", options.revision),
        message: e.to_string(),
    })?;
    Ok(entries
        .into_iter()
        .filter_map(|entry| match entry {
            RepoTreeEntry::File { path, .. } => Some(path),
            _ => None,
        })
        .collect())
}

/// Downloads are not compiled in.
#[cfg(not(feature = "hub"))]
pub fn download_file(
    kind: RepoKind,
    repo_id: &str,
    file: &str,
    options: &HubOptions,
    _bar: Option<&indicatif::ProgressBar>,
) -> Result<Option<PathBuf>, HubError> {
    Err(HubError::NoClient(format!(
        "{kind} {repo_id}: {file} is not in the local Hub cache ({})",
        options.repo_cache_dir(kind, repo_id).display()
    )))
}

/// Listing is not compiled in.
#[cfg(not(feature = "hub"))]
pub fn list_files(
    kind: RepoKind,
    repo_id: &str,
    options: &HubOptions,
) -> Result<Vec<String>, HubError> {
    Err(HubError::NoClient(format!(
        "{kind} {repo_id} is not in the local Hub cache ({})",
        options.repo_cache_dir(kind, repo_id).display()
    )))
}

/// Downloads are not compiled in.
#[cfg(not(feature = "hub"))]
pub fn download_model(repo_id: &str, options: &HubOptions) -> Result<PathBuf, HubError> {
    Err(HubError::NoClient(format!(
        "model {repo_id} is not in the local Hub cache ({})",
        options.model_cache_dir(repo_id).display()
    )))
}

/// The shard file names an index lists, sorted and de-duplicated.
#[cfg(feature = "hub")]
fn index_shards(index: &Path) -> Result<Vec<String>, HubError> {
    Ok(crate::load::index_shard_names(index)?)
}

/// A blocking Hub client for these options (endpoint, cache and token given explicitly, so that
/// nothing is read from the environment behind the caller's back).
#[cfg(feature = "hub")]
pub(crate) fn client(options: &HubOptions) -> Result<hf_hub::HFClientSync, HubError> {
    let mut builder = hf_hub::HFClientBuilder::new()
        .endpoint(options.endpoint.clone())
        .cache_dir(options.cache_dir.clone())
        .user_agent(format!("rdro/{}", env!("CARGO_PKG_VERSION")));
    if let Some(token) = &options.token {
        builder = builder.token(token.clone());
    }
    builder.build_sync().map_err(|e| HubError::Request {
        what: format!("starting the Hub client for {}", options.endpoint),
        message: e.to_string(),
    })
}

/// Forwards the Hub client's progress events to a progress bar.
#[cfg(feature = "hub")]
pub(crate) struct BarProgress(pub(crate) indicatif::ProgressBar);

#[cfg(feature = "hub")]
impl hf_hub::progress::ProgressHandler for BarProgress {
    fn on_progress(&self, event: &hf_hub::progress::ProgressEvent) {
        use hf_hub::progress::{DownloadEvent, ProgressEvent, UploadEvent};
        match event {
            ProgressEvent::Download(DownloadEvent::Start { total_bytes, .. })
            | ProgressEvent::Upload(UploadEvent::Start { total_bytes, .. }) => {
                self.0.set_length(*total_bytes)
            }
            ProgressEvent::Download(DownloadEvent::Progress { files }) => {
                let done: u64 = files.iter().map(|f| f.bytes_completed).sum();
                self.0.set_position(done.max(self.0.position()));
            }
            ProgressEvent::Download(DownloadEvent::AggregateProgress {
                bytes_completed, ..
            })
            | ProgressEvent::Upload(UploadEvent::Progress {
                bytes_completed, ..
            }) => self.0.set_position(*bytes_completed),
            ProgressEvent::Upload(UploadEvent::Committing) => self.0.set_message("committing"),
            ProgressEvent::Download(DownloadEvent::Complete)
            | ProgressEvent::Upload(UploadEvent::Complete) => {
                self.0.set_position(self.0.length().unwrap_or(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn environment_is_read_like_the_hub_clients() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file_token\n").unwrap();
        let home = dir.path().to_str().unwrap();
        let o = HubOptions::from_lookup(lookup(&[("HF_HOME", home), ("HF_HUB_OFFLINE", "1")]));
        assert_eq!(o.cache_dir, dir.path().join("hub"));
        assert_eq!(o.token.as_deref(), Some("hf_file_token"));
        assert!(o.offline);
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
        let debug = format!("{o:?}");
        assert!(
            !debug.contains("hf_file_token") && debug.contains("redacted"),
            "{debug}"
        );

        let o = HubOptions::from_lookup(lookup(&[
            ("HF_HOME", home),
            ("HF_TOKEN", "hf_env"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_CACHE", "/c"),
        ]));
        assert_eq!(o.token.as_deref(), Some("hf_env"));
        assert_eq!(o.endpoint, "http://127.0.0.1:9");
        assert_eq!(o.cache_dir, PathBuf::from("/c"));
        assert!(!o.offline);

        let o = HubOptions::from_lookup(lookup(&[("HOME", "/home/u")]));
        assert_eq!(o.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(
            o.token_file,
            PathBuf::from("/home/u/.cache/huggingface/token")
        );
    }

    #[test]
    fn cache_paths_name_their_hub_id() {
        let p = Path::new("/c/hub/models--Qwen--Qwen2.5-0.5B/snapshots/abc");
        assert_eq!(
            hub_id_of_cache_path(p).as_deref(),
            Some("Qwen/Qwen2.5-0.5B")
        );
        assert_eq!(hub_id_of_cache_path(Path::new("/models/qwen")), None);
    }
}
