//! Hugging Face Hub data sets and tokenizers: the local cache first, a download when online.
//!
//! The cache is laid out as the Hub clients lay it out:
//! `<cache>/datasets--<owner>--<name>/{refs/<revision>, snapshots/<commit>/..., blobs/...}`.
//! Reading it needs no network and no `hf-hub` code; downloading (feature `hub`) goes through the
//! `hf-hub` crate into that same cache.

use std::path::{Path, PathBuf};

use super::error::DataError;

/// Where and how to look for Hub repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache folder (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Never touch the network (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Branch, tag or commit to read.
    pub revision: String,
}

impl HubOptions {
    /// Options from the process environment, as the Hub clients read it.
    pub fn from_env() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Options from any variable lookup (tests pass a map instead of the process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |key: &str| get(key).filter(|v| !v.is_empty());
        let cache_dir = if let Some(dir) = non_empty("HF_HUB_CACHE") {
            PathBuf::from(dir)
        } else if let Some(home) = non_empty("HF_HOME") {
            PathBuf::from(home).join("hub")
        } else if let Some(xdg) = non_empty("XDG_CACHE_HOME") {
            PathBuf::from(xdg).join("huggingface").join("hub")
        } else {
            let home = non_empty("HOME").unwrap_or_else(|| ".".to_string());
            PathBuf::from(home)
                .join(".cache")
                .join("huggingface")
                .join("hub")
        };
        let offline = non_empty("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true"))
            .unwrap_or(false);
        Self {
            cache_dir,
            offline,
            revision: "main".to_string(),
        }
    }
}

/// The kind of a Hub repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A model repository (`models--owner--name`).
    Model,
    /// A data set repository (`datasets--owner--name`).
    Dataset,
}

impl RepoKind {
    fn folder_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
}

/// True when `spec` has the shape of a Hub id (`owner/name`, letters, digits, `-`, `_`, `.`).
pub fn looks_like_hub_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    valid(owner) && valid(name)
}

/// The cache folder of a repository.
pub fn repo_cache_dir(options: &HubOptions, kind: RepoKind, repo_id: &str) -> PathBuf {
    let folder = format!("{}--{}", kind.folder_prefix(), repo_id.replace('/', "--"));
    options.cache_dir.join(folder)
}

/// The cached snapshot folder of `repo_id` at `options.revision`, if the cache holds one.
pub fn cached_snapshot(options: &HubOptions, kind: RepoKind, repo_id: &str) -> Option<PathBuf> {
    let repo = repo_cache_dir(options, kind, repo_id);
    let revision = &options.revision;
    let commit = if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) {
        revision.clone()
    } else {
        std::fs::read_to_string(repo.join("refs").join(revision))
            .ok()?
            .trim()
            .to_string()
    };
    let snapshot = repo.join("snapshots").join(commit);
    snapshot.is_dir().then_some(snapshot)
}

/// Names each split is also stored under (as the `datasets` library accepts them).
fn split_aliases(split: &str) -> Vec<&str> {
    match split {
        "train" => vec!["train", "training"],
        "validation" => vec!["validation", "valid", "val", "dev"],
        "test" => vec!["test", "testing", "eval", "evaluation"],
        other => vec![other],
    }
}

/// True when a data file's path (relative to the repository root) belongs to `split`: one of its
/// folder names or its file name, cut at `-`, `_`, `.`, spaces and digits, has a word equal to the
/// split's name (`data/train-00000-of-00001.parquet`, `train.jsonl`, `train/0.parquet`, ...).
pub fn path_matches_split(relative: &Path, split: &str) -> bool {
    let aliases = split_aliases(split);
    relative.iter().enumerate().any(|(i, component)| {
        let component = component.to_string_lossy();
        let is_last = i + 1 == relative.iter().count();
        let name = if is_last {
            component.split('.').next().unwrap_or_default().to_string()
        } else {
            component.to_string()
        };
        name.split(|c: char| matches!(c, '-' | '_' | '.' | ' ') || c.is_ascii_digit())
            .any(|word| aliases.contains(&word))
    })
}

/// Data file extensions, in order of preference.
pub(crate) const DATA_EXTENSIONS: [&str; 3] = ["parquet", "jsonl", "json"];

/// The data files of `split` under `root` (a snapshot or a local folder), sorted by path. Parquet
/// files win over JSON files when a split has both.
pub fn split_files(root: &Path, split: &str) -> Result<Vec<PathBuf>, DataError> {
    let mut all = Vec::new();
    walk(root, &mut all, 0).map_err(|e| DataError::io(root, e))?;
    all.sort();
    for ext in DATA_EXTENSIONS {
        let matching: Vec<PathBuf> = all
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .filter(|p| path_matches_split(p.strip_prefix(root).unwrap_or(p), split))
            .cloned()
            .collect();
        if !matching.is_empty() {
            return Ok(matching);
        }
    }
    let data: Vec<String> = all
        .iter()
        .filter(|p| {
            p.extension()
                .is_some_and(|e| DATA_EXTENSIONS.iter().any(|d| e == *d))
        })
        .take(10)
        .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
        .collect();
    Err(DataError::Hub(if data.is_empty() {
        format!(
            "{}: no Parquet, JSONL or JSON files found for split {split:?}",
            root.display()
        )
    } else {
        format!(
            "{}: no data file belongs to split {split:?}; data files found: {}",
            root.display(),
            data.join(", ")
        )
    }))
}

/// How deep [`walk`] descends (it follows symlinks, so a link loop must end somewhere).
const MAX_DEPTH: usize = 8;

fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> std::io::Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        // Follow symlinks: Hub snapshots are symlinks into blobs/.
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            walk(&path, out, depth + 1)?;
        } else if meta.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// The data files of `split` of Hub data set `repo_id`: from the cache, or downloaded into it when
/// online and the `hub` feature is on.
pub fn dataset_files(
    repo_id: &str,
    split: &str,
    options: &HubOptions,
) -> Result<Vec<PathBuf>, DataError> {
    if let Some(snapshot) = cached_snapshot(options, RepoKind::Dataset, repo_id) {
        return split_files(&snapshot, split);
    }
    let where_ = repo_cache_dir(options, RepoKind::Dataset, repo_id);
    if options.offline {
        return Err(DataError::Hub(format!(
            "data set {repo_id} (revision {}) is not in the local Hub cache ({}) and HF_HUB_OFFLINE is set",
            options.revision,
            where_.display()
        )));
    }
    download_dataset(repo_id, split, options)
}

/// The folder holding `files` of Hub model `repo_id`: from the cache, or downloaded into it.
pub fn model_files(
    repo_id: &str,
    files: &[&str],
    options: &HubOptions,
) -> Result<PathBuf, DataError> {
    if let Some(snapshot) = cached_snapshot(options, RepoKind::Model, repo_id) {
        if files.iter().all(|f| snapshot.join(f).is_file()) {
            return Ok(snapshot);
        }
    }
    if options.offline {
        return Err(DataError::Hub(format!(
            "model {repo_id} (revision {}) does not have {} in the local Hub cache ({}) and HF_HUB_OFFLINE is set",
            options.revision,
            files.join(" and "),
            repo_cache_dir(options, RepoKind::Model, repo_id).display()
        )));
    }
    download_model(repo_id, files, options)
}

#[cfg(feature = "hub")]
fn client(options: &HubOptions) -> Result<hf_hub::HFClientSync, DataError> {
    hf_hub::HFClientBuilder::new()
        .cache_dir(options.cache_dir.clone())
        .build_sync()
        .map_err(|e| DataError::Hub(format!("cannot start the Hub client: {e}")))
}

#[cfg(feature = "hub")]
fn download_dataset(
    repo_id: &str,
    split: &str,
    options: &HubOptions,
) -> Result<Vec<PathBuf>, DataError> {
    use hf_hub::repository::RepoTreeEntry;
    let client = client(options)?;
    let (owner, name) = hf_hub::split_id(repo_id);
    let repo = client.dataset(owner, name);
    let entries = repo
        .list_tree()
        .revision(options.revision.clone())
        .recursive(true)
        .send()
        .map_err(|e| DataError::Hub(format!("listing data set {repo_id}: {e}")))?;
    let paths: Vec<String> = entries
        .into_iter()
        .filter_map(|entry| match entry {
            RepoTreeEntry::File { path, .. } => Some(path),
            _ => None,
        })
        .collect();
    let mut chosen = Vec::new();
    for ext in DATA_EXTENSIONS {
        chosen = paths
            .iter()
            .filter(|p| p.ends_with(&format!(".{ext}")))
            .filter(|p| path_matches_split(Path::new(p), split))
            .cloned()
            .collect();
        if !chosen.is_empty() {
            break;
        }
    }
    if chosen.is_empty() {
        return Err(DataError::Hub(format!(
            "data set {repo_id} has no Parquet, JSONL or JSON file for split {split:?}"
        )));
    }
    chosen.sort();
    chosen
        .into_iter()
        .map(|file| {
            repo.download_file()
                .filename(file.clone())
                .revision(options.revision.clone())
                .send()
                .map_err(|e| DataError::Hub(format!("downloading {repo_id}/{file}: {e}")))
        })
        .collect()
}

#[cfg(feature = "hub")]
fn download_model(
    repo_id: &str,
    files: &[&str],
    options: &HubOptions,
) -> Result<PathBuf, DataError> {
    let client = client(options)?;
    let (owner, name) = hf_hub::split_id(repo_id);
    let repo = client.model(owner, name);
    let mut folder = None;
    for file in files {
        let path = repo
            .download_file()
            .filename(file.to_string())
            .revision(options.revision.clone())
            .send()
            .map_err(|e| DataError::Hub(format!("downloading {repo_id}/{file}: {e}")))?;
        folder = path.parent().map(Path::to_path_buf);
    }
    folder.ok_or_else(|| DataError::Hub(format!("{repo_id}: nothing to download")))
}

#[cfg(not(feature = "hub"))]
fn download_dataset(
    repo_id: &str,
    _split: &str,
    options: &HubOptions,
) -> Result<Vec<PathBuf>, DataError> {
    Err(DataError::Hub(format!(
        "data set {repo_id} is not in the local Hub cache ({}) and this build cannot download (feature `hub` is off)",
        repo_cache_dir(options, RepoKind::Dataset, repo_id).display()
    )))
}

#[cfg(not(feature = "hub"))]
fn download_model(
    repo_id: &str,
    _files: &[&str],
    options: &HubOptions,
) -> Result<PathBuf, DataError> {
    Err(DataError::Hub(format!(
        "model {repo_id} is not in the local Hub cache ({}) and this build cannot download (feature `hub` is off)",
        repo_cache_dir(options, RepoKind::Model, repo_id).display()
    )))
}
