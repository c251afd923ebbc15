//! Uploading an adapter folder (or a merged model folder) to the Hugging Face Hub in one commit,
//! through the `hf-hub` crate's upload API.
//!
//! [`plan_upload`] checks, without any network, that the folder is something the ecosystem can
//! load (a PEFT LoRA adapter whose config and weights parse, or a model folder whose config is
//! supported and whose safetensors hold the weights the config implies) and lists the files;
//! [`publish`] creates the repository when it is missing, the branch when `revision` names a new
//! one, and commits the files (or opens a pull request).

use std::path::{Path, PathBuf};

use rdro_lora::peft::{self, AdapterConfig};

use crate::hub::{HubError, HubOptions};
use crate::merge::Shards;
use crate::{ModelConfig, ModelError};

/// What a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderKind {
    /// A PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`).
    Adapter,
    /// A full model in Hugging Face layout (`config.json` + safetensors weights).
    Model,
}

impl std::fmt::Display for FolderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FolderKind::Adapter => "LoRA adapter",
            FolderKind::Model => "model",
        })
    }
}

/// One file to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadFile {
    /// Path inside the repository (`/`-separated).
    pub path_in_repo: String,
    /// The local file.
    pub local: PathBuf,
    /// Size in bytes.
    pub size: u64,
}

/// A checked folder and the files that would be uploaded.
#[derive(Debug, Clone)]
pub struct UploadPlan {
    /// The folder.
    pub folder: PathBuf,
    /// What it holds.
    pub kind: FolderKind,
    /// Files, sorted by repository path.
    pub files: Vec<UploadFile>,
    /// Things worth knowing that do not stop the upload (e.g. no model card).
    pub warnings: Vec<String>,
}

impl UploadPlan {
    /// Sum of the file sizes.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Checks that `folder` is a loadable adapter or model and lists its files. Hidden files and
/// folders, `training_state/` (optimizer state inside checkpoints) and temporary `*.tmp-*`
/// leftovers are not uploaded.
pub fn plan_upload(folder: &Path) -> Result<UploadPlan, HubError> {
    if !folder.is_dir() {
        return Err(HubError::Folder {
            path: folder.to_path_buf(),
            message: "not a folder (expected an adapter folder or a model folder)".into(),
        });
    }
    let mut warnings = Vec::new();
    let kind = if folder.join(peft::CONFIG_FILE).is_file() {
        let config = AdapterConfig::read(folder)?;
        let tensors = peft::read_weights(folder, &candle_core::Device::Cpu)?;
        if tensors.is_empty() {
            return Err(HubError::Folder {
                path: folder.join(peft::WEIGHTS_FILE),
                message: "holds no lora_A / lora_B tensors".into(),
            });
        }
        for (module, (a, _)) in &tensors {
            let r = a.dims()[0];
            if r != config.r {
                return Err(HubError::Folder {
                    path: folder.join(peft::WEIGHTS_FILE),
                    message: format!(
                        "{module}: rank {r}, but adapter_config.json says r = {}",
                        config.r
                    ),
                });
            }
            let name = module.rsplit('.').next().unwrap_or_default();
            if !config.target_modules.contains(name) {
                return Err(HubError::Folder {
                    path: folder.join(peft::WEIGHTS_FILE),
                    message: format!(
                        "{module} is not among the target_modules of adapter_config.json"
                    ),
                });
            }
        }
        if !folder.join(peft::CARD_FILE).is_file() {
            warnings.push(format!("{}: no README.md model card", folder.display()));
        }
        FolderKind::Adapter
    } else if folder.join("config.json").is_file() {
        check_model_folder(folder)?;
        FolderKind::Model
    } else {
        return Err(HubError::Folder {
            path: folder.to_path_buf(),
            message: format!(
                "neither an adapter folder ({} + {}) nor a model folder (config.json + *.safetensors)",
                peft::CONFIG_FILE,
                peft::WEIGHTS_FILE
            ),
        });
    };
    let mut files = Vec::new();
    collect(folder, folder, &mut files).map_err(|source| ModelError::Io {
        path: folder.to_path_buf(),
        source,
    })?;
    files.sort_by(|a, b| a.path_in_repo.cmp(&b.path_in_repo));
    Ok(UploadPlan {
        folder: folder.to_path_buf(),
        kind,
        files,
        warnings,
    })
}

/// Every tensor the decoder needs is present with the shape the config implies.
fn check_model_folder(folder: &Path) -> Result<(), HubError> {
    let config = ModelConfig::from_file(&folder.join("config.json"))?;
    let shards = Shards::open(folder)?;
    let h = config.hidden_size;
    let (q, kv) = (
        config.num_attention_heads * config.head_dim,
        config.num_key_value_heads * config.head_dim,
    );
    let mut want: Vec<(String, Vec<usize>)> = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![config.vocab_size, h],
        ),
        ("model.norm.weight".into(), vec![h]),
    ];
    if !config.tie_word_embeddings {
        want.push(("lm_head.weight".into(), vec![config.vocab_size, h]));
    }
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![config.intermediate_size, h]),
            ("mlp.up_proj.weight", vec![config.intermediate_size, h]),
            ("mlp.down_proj.weight", vec![h, config.intermediate_size]),
        ] {
            want.push((format!("{p}.{name}"), shape));
        }
    }
    for (name, shape) in want {
        match shards.shape(&name) {
            None => {
                return Err(HubError::Folder {
                    path: folder.to_path_buf(),
                    message: format!("missing tensor {name}; the folder is not a complete model"),
                })
            }
            Some(got) if got != shape.as_slice() => {
                return Err(HubError::Folder {
                    path: folder.to_path_buf(),
                    message: format!("{name} has shape {got:?}, config.json implies {shape:?}"),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<UploadFile>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.contains(".tmp-") {
            continue;
        }
        let path = entry.path();
        // Follow symlinks (Hub cache snapshots are symlinks into blobs/).
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            if dir == root && name == "training_state" {
                continue;
            }
            collect(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let path_in_repo = rel
                .iter()
                .map(|c| c.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(UploadFile {
                path_in_repo,
                local: path.clone(),
                size: meta.len(),
            });
        }
    }
    Ok(())
}

/// Where and how to upload.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// `owner/name` of the model repository.
    pub repo_id: String,
    /// Create the repository as private when it does not exist yet.
    pub private: bool,
    /// Branch to commit to (created from `main` when missing); `main` when `None`.
    pub revision: Option<String>,
    /// Open a pull request instead of committing to the branch.
    pub create_pr: bool,
    /// Commit title; a default naming the folder kind when `None`.
    pub commit_message: Option<String>,
    /// Show a progress bar.
    pub progress: bool,
}

/// What an upload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// The repository did not exist and was created.
    pub created_repo: bool,
    /// The branch did not exist and was created.
    pub created_branch: bool,
    /// URL of the commit.
    pub commit_url: Option<String>,
    /// Id of the commit.
    pub commit_oid: Option<String>,
    /// URL of the pull request, with `create_pr`.
    pub pr_url: Option<String>,
}

/// The commit title used when none is given.
pub fn default_commit_message(kind: FolderKind) -> String {
    match kind {
        FolderKind::Adapter => "Upload LoRA adapter trained with rdro".into(),
        FolderKind::Model => "Upload model merged with rdro".into(),
    }
}

/// Uploads `plan`'s files to `options.repo_id` in one commit. Needs a token (`hub.token`).
#[cfg(feature = "hub")]
pub fn publish(
    plan: &UploadPlan,
    options: &PublishOptions,
    hub: &HubOptions,
) -> Result<Published, HubError> {
    use hf_hub::repository::{CommitOperation, RepoTypeModel};

    let repo_id = options.repo_id.as_str();
    if !peft::is_hub_id(repo_id) {
        return Err(HubError::Folder {
            path: PathBuf::from(repo_id),
            message: "not a repository id of the form owner/name".into(),
        });
    }
    if hub.offline {
        return Err(HubError::Request {
            what: format!("uploading to {repo_id}"),
            message: "HF_HUB_OFFLINE is set".into(),
        });
    }
    if hub.token.is_none() {
        return Err(HubError::NoToken {
            token_file: hub.token_file.clone(),
        });
    }
    let client = crate::hub::client(hub)?;
    let request = |what: &str| {
        let what = format!("{what} ({})", hub.endpoint);
        move |e: hf_hub::HFError| HubError::Request {
            what,
            message: e.to_string(),
        }
    };
    let (owner, name) = hf_hub::split_id(repo_id);
    let repo = client.model(owner, name);
    let mut out = Published::default();
    if !repo
        .exists()
        .send()
        .map_err(request(&format!("checking whether {repo_id} exists")))?
    {
        client
            .create_repository()
            .repo_id(repo_id)
            .repo_type(RepoTypeModel)
            .private(options.private)
            .exist_ok(true)
            .send()
            .map_err(request(&format!("creating {repo_id}")))?;
        out.created_repo = true;
    }
    if let Some(rev) = options.revision.as_deref().filter(|r| *r != "main") {
        if !repo
            .revision_exists()
            .revision(rev)
            .send()
            .map_err(request(&format!("checking revision {rev}")))?
        {
            repo.create_branch()
                .branch(rev)
                .send()
                .map_err(request(&format!("creating branch {rev} of {repo_id}")))?;
            out.created_branch = true;
        }
    }
    let operations: Vec<CommitOperation> = plan
        .files
        .iter()
        .map(|f| CommitOperation::add_file(f.path_in_repo.clone(), f.local.clone()))
        .collect();
    let message = options
        .commit_message
        .clone()
        .unwrap_or_else(|| default_commit_message(plan.kind));
    let bar = crate::merge::byte_bar(
        plan.total_bytes(),
        &format!("uploading to {repo_id}"),
        options.progress,
    );
    let info = repo
        .create_commit()
        .operations(operations)
        .commit_message(message)
        .maybe_revision(options.revision.clone())
        .create_pr(options.create_pr)
        .progress(crate::hub::BarProgress(bar.clone()))
        .send()
        .map_err(request(&format!("committing to {repo_id}")))?;
    bar.finish_and_clear();
    out.commit_url = info.commit_url;
    out.commit_oid = info.commit_oid;
    out.pr_url = info.pr_url;
    Ok(out)
}

/// Uploads are not compiled in.
#[cfg(not(feature = "hub"))]
pub fn publish(
    _plan: &UploadPlan,
    options: &PublishOptions,
    _hub: &HubOptions,
) -> Result<Published, HubError> {
    Err(HubError::NoClient(format!(
        "uploading to {}",
        options.repo_id
    )))
}
