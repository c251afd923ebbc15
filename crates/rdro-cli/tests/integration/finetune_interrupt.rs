//! Ctrl-C during `rdro finetune`: the run finishes its step, writes a checkpoint, says how to
//! continue, and leaves no adapter at the final path.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[cfg(unix)]
#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_cleanly() -> Result<(), Box<dyn std::error::Error>> {
    let work = super::finetune_default::folder_with_default_config()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_rdro"))
        .current_dir(work.path())
        .args([
            "finetune",
            "--config",
            "configs/default.toml",
            "--no-progress",
            // Far more steps than the test waits for: only the interrupt ends this run.
            "--set",
            "train.max_steps=100000",
            "--set",
            "output.logging_steps=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            lines.push(line);
        }
        lines
    });
    // Wait for training to be under way.
    loop {
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(line) if line.starts_with("step 2:") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                return Err(format!("no step 2 line: {e}").into());
            }
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    // The run must end by itself within a few steps.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err("the run did not stop after Ctrl-C".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().ok_or("no stdout")?, &mut stdout)?;
    let stderr = reader.join().map_err(|_| "reader panicked")?.join("\n");
    assert!(status.success(), "exit {status:?}\n{stdout}\n{stderr}");
    assert!(stderr.contains("interrupt"), "{stderr}");
    assert!(stdout.contains("stopped after step"), "{stdout}");
    assert!(stdout.contains("--resume"), "{stdout}");
    let partial = work.path().join("adapters/default.partial/checkpoints");
    let checkpoints: Vec<_> = std::fs::read_dir(&partial)?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("training_state").is_dir())
        .collect();
    assert_eq!(
        checkpoints.len(),
        1,
        "one checkpoint in {}",
        partial.display()
    );
    assert!(checkpoints[0]
        .path()
        .join("adapter_model.safetensors")
        .is_file());
    assert!(!work.path().join("adapters/default").exists());
    Ok(())
}
