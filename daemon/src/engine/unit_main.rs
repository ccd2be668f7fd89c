//! The main process of an engine unit (`vllamad --engine-unit <record>`): runs the engine
//! its record describes as its child (in the engine's own process group), maps the engine's
//! output into the journal at each line's level with the MODEL field, stops it on SIGTERM
//! within its grace, leaves its last output lines beside the record (`<id>.tail`, vllamad's
//! error report when it failed) and exits with the engine's status.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use tokio::signal::unix::{signal, SignalKind};

use super::process::{EngineProcess, Output, TAIL_LINES};
use super::units::Record;

#[derive(Debug, thiserror::Error)]
pub enum UnitMainError {
    #[error("cannot read the engine record {0}")]
    Record(String),
    #[error(transparent)]
    Spawn(#[from] super::process::ProcessError),
    #[error("cannot wait for SIGTERM: {0}")]
    Signal(#[source] std::io::Error),
}

/// Runs the engine until it exits or the unit is stopped; the exit code to leave with.
pub async fn run(record: &Path) -> Result<u8, UnitMainError> {
    let launch = Record::read(record)
        .ok_or_else(|| UnitMainError::Record(record.display().to_string()))?
        .launch();
    let mut sigterm = signal(SignalKind::terminate()).map_err(UnitMainError::Signal)?;
    let output = Output::default();
    let mut process = match EngineProcess::spawn(&launch, &output) {
        Ok(process) => process,
        Err(e) => {
            // vllamad quotes it in its error report.
            let _ = std::fs::write(record.with_extension("tail"), format!("{e}\n"));
            return Err(e.into());
        }
    };
    tracing::info!(model = %launch.model, pid = process.pid(), "engine started");
    // The engine's own pid (its process group's): what vllamad shows and attributes GPU
    // memory by.
    let pid_file = record.with_extension("pid");
    if let Err(e) = std::fs::write(&pid_file, format!("{}\n", process.pid())) {
        tracing::warn!(path = %pid_file.display(), error = %e, "cannot write the engine's pid");
    }
    let (status, asked) = tokio::select! {
        status = process.wait() => (status, false),
        _ = sigterm.recv() => {
            let graceful = process.stop(launch.unit.stop_grace).await;
            tracing::info!(model = %launch.model, graceful, "engine stopped");
            (process.wait().await, true)
        }
    };
    let _ = std::fs::remove_dir_all(&launch.tmpdir);
    let _ = std::fs::remove_file(&pid_file);
    let tail = record.with_extension("tail");
    let mut text = output.tail(TAIL_LINES).join("\n");
    text.push('\n');
    if let Err(e) = std::fs::write(&tail, text) {
        tracing::warn!(path = %tail.display(), error = %e, "cannot leave the engine's last output");
    }
    // How it ended, for vllamad's report (systemd forgets a collected unit's result).
    let _ = std::fs::write(record.with_extension("status"), format!("{status}\n"));
    if !asked {
        tracing::warn!(model = %launch.model, %status, "engine exited");
    }
    Ok(exit_code(status, asked))
}

/// The unit's exit code: the engine's own, 128 + a signal that killed it, 0 when it was
/// asked to stop and did.
fn exit_code(status: std::process::ExitStatus, asked: bool) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(_)) if asked => 0,
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        use std::process::ExitStatus;
        assert_eq!(exit_code(ExitStatus::from_raw(0), false), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8), false), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9), false), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15), true), 0);
    }

    #[tokio::test]
    async fn it_runs_the_recorded_engine_and_leaves_its_last_words() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("e-1.json");
        let r = Record {
            format: 1,
            id: "e-1".into(),
            model: "m".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo loading; echo broken >&2; exit 3".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            tmpdir: dir.path().join("tmp-e-1"),
            stop_grace_ms: 1000,
            placement: None,
            keep_alive_until_ms: None,
        };
        r.write(&record).unwrap();
        assert_eq!(run(&record).await.unwrap(), 3);
        let tail = std::fs::read_to_string(dir.path().join("e-1.tail")).unwrap();
        assert!(
            tail.contains("loading") && tail.contains("broken"),
            "{tail}"
        );
        assert!(!dir.path().join("tmp-e-1").exists());
        assert!(
            !dir.path().join("e-1.pid").exists(),
            "the pid file goes with the engine"
        );
        assert!(run(&dir.path().join("none.json")).await.is_err());
        // An engine that cannot be spawned says why in its tail.
        let mut missing = r.clone();
        missing.program = dir.path().join("no-such-vllm");
        missing.write(&record).unwrap();
        assert!(run(&record).await.is_err());
        let tail = std::fs::read_to_string(dir.path().join("e-1.tail")).unwrap();
        assert!(tail.contains("no-such-vllm"), "{tail}");
    }
}
