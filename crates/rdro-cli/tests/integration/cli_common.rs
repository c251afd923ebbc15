//! Running the `rdro` binary with a clean Hugging Face environment.

use std::path::Path;
use std::process::{Command, Output};

use crate::adapters_common::R;

/// Runs `rdro` with a clean Hub environment rooted at `home`.
pub fn rdro(home: &Path, envs: &[(&str, &str)], args: &[&str]) -> R<Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rdro"));
    for var in [
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_ENDPOINT",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "XDG_CACHE_HOME",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("HF_HOME", home.join("hf"))
        .envs(envs.iter().copied());
    Ok(cmd.args(args).output()?)
}

/// stdout then stderr, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
