//! `rdro publish`: upload an adapter folder (or a merged model folder) to the Hugging Face Hub.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use rdro_lora::peft::is_hub_id;
use rdro_models::hub::HubOptions;
use rdro_models::publish::{default_commit_message, plan_upload, publish, PublishOptions};

/// Arguments of `rdro publish`.
#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// Folder to upload: an adapter folder, or a model folder written by `rdro merge`.
    #[arg(long, visible_alias = "folder", value_name = "DIR")]
    pub adapter: PathBuf,
    /// Target model repository, OWNER/NAME; created when missing.
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: String,
    /// Create the repository as private (when it does not exist yet).
    #[arg(long)]
    pub private: bool,
    /// Branch to commit to (created from main when missing).
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// Open a pull request instead of committing directly.
    #[arg(long)]
    pub create_pr: bool,
    /// Commit message.
    #[arg(long, short = 'm', value_name = "TEXT")]
    pub message: Option<String>,
    /// Check the folder and list what would be uploaded, without any network access.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs `rdro publish`. The token comes from HF_TOKEN or the token file ($HF_HOME/token) and is
/// never printed.
pub fn run(args: PublishArgs) -> Result<()> {
    if !is_hub_id(&args.repo) {
        bail!(
            "--repo {:?}: expected a repository id of the form owner/name",
            args.repo
        );
    }
    let plan = plan_upload(&args.adapter)
        .with_context(|| format!("checking {}", args.adapter.display()))?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let revision = args.revision.as_deref().unwrap_or("main");
    let target = if args.create_pr {
        format!("a pull request against {revision}")
    } else {
        format!("branch {revision}")
    };
    let message = args
        .message
        .clone()
        .unwrap_or_else(|| default_commit_message(plan.kind));
    println!(
        "{} {} -> {} ({target}), commit {message:?}",
        plan.kind,
        args.adapter.display(),
        args.repo
    );
    for f in &plan.files {
        println!("  {:>12}  {}", f.size, f.path_in_repo);
    }
    println!(
        "  {:>12}  total ({} files)",
        plan.total_bytes(),
        plan.files.len()
    );
    if args.dry_run {
        println!("dry run: nothing uploaded");
        return Ok(());
    }
    let hub = HubOptions::from_env();
    let options = PublishOptions {
        repo_id: args.repo.clone(),
        private: args.private,
        revision: args.revision.clone(),
        create_pr: args.create_pr,
        commit_message: Some(message),
        progress: true,
    };
    let done = publish(&plan, &options, &hub)
        .with_context(|| format!("publishing to {} at {}", args.repo, hub.endpoint))?;
    if done.created_repo {
        println!(
            "created {} repository {}",
            if args.private { "private" } else { "public" },
            args.repo
        );
    } else if args.private {
        eprintln!(
            "warning: {} already existed; --private does not change its visibility",
            args.repo
        );
    }
    if done.created_branch {
        println!("created branch {revision}");
    }
    if let Some(url) = &done.pr_url {
        println!("opened pull request {url}");
    }
    match (&done.commit_url, &done.commit_oid) {
        (Some(url), _) => println!("committed {url}"),
        (None, Some(oid)) => println!("committed {oid}"),
        (None, None) => println!("committed"),
    }
    Ok(())
}
