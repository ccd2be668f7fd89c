//! docs/MODELS.md is rendered from the tables the daemon uses (the catalog, its facts, and
//! the engine profile table), so the two cannot drift: this test fails when the file differs
//! from what the code would write. `VLLAMA_WRITE_DOCS=1 cargo test --test models_doc`
//! writes it.

use std::path::Path;

use vllamad::engine::profile::{family_named, Profile, Think};
use vllamad::models::{CATALOG, FACTS};

fn render() -> String {
    let mut out = String::from(
        "# Models: what vllama starts each with, and what it needs\n\n\
         Generated from the code's own tables (`models::CATALOG`, `models::FACTS`, \
         `engine::profile::FAMILIES`) by `daemon/tests/models_doc.rs`; edit those, then \
         `VLLAMA_WRITE_DOCS=1 cargo test -p vllamad --test models_doc`.\n\n\
         vllama picks vLLM's tool-call and reasoning parsers from the model's own files: the \
         chat template's markers first (what the model was trained to emit), `model_type` \
         second. `[models.\"name\"] tool_parser` / `reasoning_parser` override either \
         (`\"none\"` turns one off); `vllamad --check-config` prints the result for each \
         configured model. Capabilities (`/api/show`, `/api/tags`, `/v1/models`) claim \
         `tools` only with a tool parser and `thinking` only with a reasoning parser; a \
         request that needs what a model lacks gets Ollama's 400 before any engine starts.\n\n\
         KV cache per 1 000 tokens = layers × KV heads × head dim × 2 (K, V) × 2 bytes (bf16). \
         The smallest GPU holds the weights, one sequence at the model's full context and \
         1.5 GiB of activations at vLLM's default `--gpu-memory-utilization 0.9`; a smaller \
         `max_model_len` fits smaller GPUs. Sliding-window models (Gemma 3, gpt-oss) need \
         less KV cache than the formula says.\n\n\
         | Ollama name | Hugging Face repository | family | parameters | tool parser | reasoning parser | think | capabilities | weights | KV / 1 000 tokens | context | smallest GPU | verified |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in FACTS {
        let names: Vec<&str> = CATALOG
            .iter()
            .filter(|(_, r)| *r == f.repo)
            .map(|(n, _)| *n)
            .collect();
        let family =
            family_named(f.family).unwrap_or_else(|| panic!("{}: no family {}", f.repo, f.family));
        let caps = vllamad::model_info::capabilities(f.embedding, f.vision, &Profile::of(family));
        let think = match family.think {
            Think::None => "–".to_string(),
            Think::Toggle(key) => format!("`{key}`"),
            Think::Effort => "`reasoning_effort`".to_string(),
            Think::Always => "always".to_string(),
        };
        let kv = if f.embedding {
            "–".to_string()
        } else {
            format!(
                "{:.0} MiB",
                (f.kv_bytes_per_token() * 1000) as f64 / (1u64 << 20) as f64
            )
        };
        out.push_str(&format!(
            "| {} | `{}` | {} | {}B | {} | {} | {} | {} | {:.1} GiB | {} | {} | {} | {} |\n",
            names.join(", "),
            f.repo,
            family.name,
            f.params_b,
            family.tool_parser.map_or("–".into(), |p| format!("`{p}`")),
            family
                .reasoning_parser
                .map_or("–".into(), |p| format!("`{p}`")),
            think,
            caps.join(", "),
            f.weights_gib,
            kv,
            f.context,
            f.smallest_gpu(),
            f.verified,
        ));
    }
    out.push_str(
        "\n## Families\n\n| family | tool parser | reasoning parser | found by |\n|---|---|---|---|\n",
    );
    for f in vllamad::engine::profile::FAMILIES {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            f.name,
            f.tool_parser.map_or("–".into(), |p| format!("`{p}`")),
            f.reasoning_parser.map_or("–".into(), |p| format!("`{p}`")),
            f.found_by
        ));
    }
    out.push_str(
        "\n## Notes\n\n\
         - `think: false` on a model that always reasons (DeepSeek-R1 distills: their template \
         opens `<think>` itself) cannot turn reasoning off; the reasoning still arrives in \
         `message.thinking`. gpt-oss always reasons too: `think: false` asks for the lowest \
         effort (`reasoning_effort: low`), `true` for medium.\n\
         - Gemma 3's own template has no tool calls, so no tool parser is chosen; a template \
         that adds them (`pythonic` style) can be served with `tool_parser = \"pythonic\"`.\n\
         - Mistral's official checkpoints work best in vLLM with `--tokenizer-mode mistral` \
         (add it to the model's `args`); the HF-format template carries `[TOOL_CALLS]`.\n\
         - Vision is verified on the CPU engine with a tiny LLaVA made locally (a CLIP vision \
         tower and the tiny Llama, `make_tiny_model.py --family llava`): an Ollama chat with \
         `images` is answered and the image's patches count in the prompt. vLLM's multimodal \
         models import torchvision, so the CPU build installs PyPI's torchvision 0.28.0 beside \
         torch 2.13.0. `vision` is claimed from config.json (`vision_config`, the \
         architecture), as Ollama does; Qwen2.5-VL itself is verified on paper only.\n",
    );
    out
}

#[test]
fn docs_models_md_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/MODELS.md");
    let want = render();
    if std::env::var_os("VLLAMA_WRITE_DOCS").is_some() {
        std::fs::write(&path, &want).expect("write docs/MODELS.md");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/MODELS.md is out of date: VLLAMA_WRITE_DOCS=1 cargo test -p vllamad --test models_doc"
    );
}

#[test]
fn every_catalog_model_has_facts_and_a_known_family() {
    for (name, repo) in CATALOG {
        assert!(
            FACTS.iter().any(|f| f.repo == *repo),
            "{name}: {repo} has no facts"
        );
    }
    for f in FACTS {
        assert!(
            family_named(f.family).is_some(),
            "{}: family {}",
            f.repo,
            f.family
        );
    }
    let llama = FACTS
        .iter()
        .find(|f| f.repo == "meta-llama/Llama-3.1-8B-Instruct")
        .expect("llama");
    assert_eq!(llama.kv_bytes_per_token(), 131_072, "32 × 8 × 128 × 2 × 2");
    assert_eq!(llama.smallest_gpu(), "40 GB (A100 40G)");
}
