//! Hub data sets, and the tokenizer files of Hub models: which files of a repository (or local
//! folder) belong to a split, found in the local Hub cache first and downloaded when online.
//!
//! Options, cache layout and the client are [`rdro_models::hub`]'s: models and data sets live side
//! by side in one cache (`<cache>/datasets--<owner>--<name>/{refs, snapshots, blobs}`), read with
//! no network, and downloads (feature `hub`) go through the `hf-hub` crate into it.

use std::path::{Path, PathBuf};

pub use rdro_lora::peft::is_hub_id;
use rdro_models::hub::{download_file, list_files, HubOptions, RepoKind};

use super::error::DataError;

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
    let relative: Vec<&Path> = all
        .iter()
        .map(|p| p.strip_prefix(root).unwrap_or(p))
        .collect();
    let matching = files_of_split(&relative, split);
    if !matching.is_empty() {
        return Ok(matching.into_iter().map(|p| root.join(p)).collect());
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

/// The paths (relative to a repository root) holding `split`, sorted, in the first of
/// [`DATA_EXTENSIONS`] that has any; empty when none does.
fn files_of_split<'a>(paths: &[&'a Path], split: &str) -> Vec<&'a Path> {
    DATA_EXTENSIONS
        .iter()
        .map(|ext| {
            let mut matching: Vec<&Path> = paths
                .iter()
                .copied()
                .filter(|p| p.extension().is_some_and(|e| e == *ext))
                .filter(|p| path_matches_split(p, split))
                .collect();
            matching.sort();
            matching
        })
        .find(|matching| !matching.is_empty())
        .unwrap_or_default()
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
    if let Some(snapshot) = options.cached_snapshot(RepoKind::Dataset, repo_id) {
        match split_files(&snapshot, split) {
            Ok(files) => return Ok(files),
            Err(e) if options.offline => return Err(e),
            // The cache may hold other splits only: ask the Hub.
            Err(_) => {}
        }
    }
    if options.offline {
        return Err(DataError::Hub(format!(
            "data set {repo_id} (revision {}) is not in the local Hub cache ({}) and HF_HUB_OFFLINE is set",
            options.revision,
            options.repo_cache_dir(RepoKind::Dataset, repo_id).display()
        )));
    }
    let listed = list_files(RepoKind::Dataset, repo_id, options)?;
    let paths: Vec<&Path> = listed.iter().map(Path::new).collect();
    let chosen = files_of_split(&paths, split);
    if chosen.is_empty() {
        return Err(DataError::Hub(format!(
            "data set {repo_id} has no Parquet, JSONL or JSON file for split {split:?}"
        )));
    }
    chosen
        .into_iter()
        .map(|file| {
            let file = file.to_string_lossy();
            download_file(RepoKind::Dataset, repo_id, &file, options, None)?.ok_or_else(|| {
                DataError::Hub(format!(
                    "data set {repo_id}: {file} is listed but cannot be downloaded"
                ))
            })
        })
        .collect()
}

/// The folder holding `files` of Hub model `repo_id`: from the cache, or downloaded into it.
pub fn model_files(
    repo_id: &str,
    files: &[&str],
    options: &HubOptions,
) -> Result<PathBuf, DataError> {
    if let Some(snapshot) = options.cached_snapshot(RepoKind::Model, repo_id) {
        if files.iter().all(|f| snapshot.join(f).is_file()) {
            return Ok(snapshot);
        }
    }
    if options.offline {
        return Err(DataError::Hub(format!(
            "model {repo_id} (revision {}) does not have {} in the local Hub cache ({}) and HF_HUB_OFFLINE is set",
            options.revision,
            files.join(" and "),
            options.model_cache_dir(repo_id).display()
        )));
    }
    let mut folder = None;
    for file in files {
        let path = download_file(RepoKind::Model, repo_id, file, options, None)?
            .ok_or_else(|| DataError::Hub(format!("model {repo_id} has no {file}")))?;
        folder = path.parent().map(Path::to_path_buf);
    }
    folder.ok_or_else(|| DataError::Hub(format!("{repo_id}: nothing to download")))
}
