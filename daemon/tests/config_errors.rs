//! Configuration errors reach the operator with the key and the line, and stop the daemon
//! before it listens.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn run_with(config: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vllama.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let (ok, stdout, stderr) = run_with(
        "[api]\nlisten = \"127.0.0.1:9\"\n",
        &[("VLLAMA_LOG_FILTER", "warn")],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("listen = \"127.0.0.1:9\""), "{stdout}");
    assert!(stdout.contains("filter = \"warn\""), "{stdout}");
    assert!(stdout.contains("shutdown_grace = \"30s\""), "{stdout}");
}

/// A config file, environment variables, and what the error must mention.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn errors_name_key_and_line() {
    let cases: &[Case] = &[
        (
            "[api]\n\nlsten = \"x\"\n",
            &[],
            &["vllama.toml:3:", "api.lsten", "unknown field"],
        ),
        (
            "[daemon]\nshutdown_grace = \"soon\"\n",
            &[],
            &[":2:", "daemon.shutdown_grace", "\"30s\""],
        ),
        ("[log]\nformat = \"xml\"\n", &[], &[":2:", "log.format"]),
        ("[api\n", &[], &[":1:", "syntax"]),
        (
            "",
            &[("VLLAMA_API_LISTEN", "everywhere")],
            &["VLLAMA_API_LISTEN", "api.listen"],
        ),
    ];
    for (config, env, needles) in cases {
        let (ok, _, stderr) = run_with(config, env);
        assert!(!ok, "{config:?} accepted");
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{config:?}: {needle:?} not in {stderr:?}"
            );
        }
    }
}

#[test]
fn an_unknown_vllama_variable_is_a_warning_not_a_failure() {
    let (ok, stdout, stderr) = run_with("", &[("VLLAMA_API_LISTN", "x")]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("listen = \"127.0.0.1:11434\""));
    assert!(
        stderr.contains("VLLAMA_API_LISTN is not a configuration key (ignored)"),
        "{stderr}"
    );
    assert!(stderr.contains("VLLAMA_API_LISTEN"), "{stderr}");
}

#[test]
fn a_named_config_that_is_missing_is_an_error() {
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/vllama.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/vllama.toml"), "{stderr}");
}
