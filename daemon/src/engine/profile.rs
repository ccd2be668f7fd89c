//! The vLLM flags a model needs to serve tools and reasoning, chosen from the model's own
//! files: vLLM answers 400 to every request with `tools` unless the engine was started with
//! `--enable-auto-tool-choice --tool-call-parser P`, and returns reasoning inside the
//! content unless it was started with `--reasoning-parser R`. One curated table of families
//! ([`FAMILIES`]), found by the chat template's own markers first (they say what the model
//! was trained to emit) and `model_type` second; `[models."name"] tool_parser` and
//! `reasoning_parser` win over both (`"none"` turns one off).

use std::fmt;

use serde::Serialize;

/// How a family's template is asked to think, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Think {
    /// No reasoning.
    None,
    /// `chat_template_kwargs.<key>: true|false` (Qwen 3: `enable_thinking`; Granite: `thinking`).
    Toggle(&'static str),
    /// `reasoning_effort: low|medium|high` (gpt-oss: it always reasons, at that effort).
    Effort,
    /// Always reasons; `think: false` cannot turn it off (DeepSeek-R1 distills).
    Always,
}

/// One family of models and what vLLM needs for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Family {
    pub name: &'static str,
    pub tool_parser: Option<&'static str>,
    pub reasoning_parser: Option<&'static str>,
    pub think: Think,
    /// How the family is recognised, in words (for docs/MODELS.md).
    pub found_by: &'static str,
}

const fn family(
    name: &'static str,
    tool_parser: Option<&'static str>,
    reasoning_parser: Option<&'static str>,
    think: Think,
    found_by: &'static str,
) -> Family {
    Family {
        name,
        tool_parser,
        reasoning_parser,
        think,
        found_by,
    }
}

/// The curated table. Parser names are vLLM's (checked against vLLM 0.32's registries).
pub const FAMILIES: &[Family] = &[
    family(
        "gpt-oss",
        Some("openai"),
        Some("openai_gptoss"),
        Think::Effort,
        "model_type gpt_oss, or the harmony template's `<|channel|>`",
    ),
    family(
        "qwen3",
        Some("hermes"),
        Some("qwen3"),
        Think::Toggle("enable_thinking"),
        "a template with `<tool_call>` and `<think>` / `enable_thinking`",
    ),
    family(
        "qwen2.5",
        Some("hermes"),
        None,
        Think::None,
        "a template with Hermes-style `<tool_call>`",
    ),
    family(
        "llama3",
        Some("llama3_json"),
        None,
        Think::None,
        "a template with `<|python_tag|>` (Llama 3.1, 3.2, 3.3)",
    ),
    family(
        "mistral",
        Some("mistral"),
        None,
        Think::None,
        "a template with `[TOOL_CALLS]` / `[AVAILABLE_TOOLS]`",
    ),
    family(
        "phi4-mini",
        Some("phi4_mini_json"),
        None,
        Think::None,
        "model_type phi3 with `<|tool|>` in the template",
    ),
    family(
        "granite",
        Some("granite"),
        Some("granite"),
        Think::Toggle("thinking"),
        "model_type granite with tools in the template",
    ),
    family(
        "deepseek-r1",
        None,
        Some("deepseek_r1"),
        Think::Always,
        "a template with `<think>` and no tool calls (R1 distills)",
    ),
    family(
        "gemma3",
        None,
        None,
        Think::None,
        "model_type gemma3 (its template has no tool calls)",
    ),
    family(
        "phi4",
        None,
        None,
        Think::None,
        "model_type phi3 without `<|tool|>` (Phi-4 14B)",
    ),
    OTHER,
];

/// The last row: what a model of no known family gets.
const OTHER: Family = family(
    "other",
    None,
    None,
    Think::None,
    "anything else: no parser unless configured",
);

/// The table's entry by name (docs and tests).
pub fn family_named(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

fn named(name: &str) -> &'static Family {
    family_named(name).unwrap_or(&OTHER)
}

/// The family of a model, from `model_type` and its chat template.
pub fn detect(model_type: &str, template: Option<&str>) -> &'static Family {
    let t = template.unwrap_or("");
    let has = |s: &str| t.contains(s);
    if model_type == "gpt_oss" || has("<|channel|>") {
        return named("gpt-oss");
    }
    if has("<tool_call>") {
        return if has("<think>") || has("enable_thinking") {
            named("qwen3")
        } else {
            named("qwen2.5")
        };
    }
    if has("<|python_tag|>") {
        return named("llama3");
    }
    if has("[TOOL_CALLS]") || has("[AVAILABLE_TOOLS]") {
        return named("mistral");
    }
    if model_type == "phi3" {
        return if has("<|tool|>") || has("<|tool_call|>") {
            named("phi4-mini")
        } else {
            named("phi4")
        };
    }
    if model_type == "granite" && has("tools") {
        return named("granite");
    }
    if has("<think>") || has("</think>") {
        return named("deepseek-r1");
    }
    if model_type.starts_with("gemma3") {
        return named("gemma3");
    }
    named("other")
}

/// Where a choice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The family table, the family found by the template and `model_type`.
    Table,
    /// `[models."name"]` in the configuration.
    Config,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Table => "the family table",
            Origin::Config => "the configuration",
        })
    }
}

/// One parser: its name (`None`: off) and where that came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Choice {
    pub name: Option<String>,
    pub origin: Origin,
}

/// What an engine for one model is started with, and what the model can therefore do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub family: &'static str,
    pub tool_parser: Choice,
    pub reasoning_parser: Choice,
    pub think: Think,
}

impl Profile {
    /// From the family alone.
    pub fn of(family: &'static Family) -> Profile {
        let table = |p: Option<&str>| Choice {
            name: p.map(str::to_string),
            origin: Origin::Table,
        };
        Profile {
            family: family.name,
            tool_parser: table(family.tool_parser),
            reasoning_parser: table(family.reasoning_parser),
            think: family.think,
        }
    }

    /// The configuration's `tool_parser` / `reasoning_parser` over the table's.
    pub fn configured(mut self, tool: Option<&str>, reasoning: Option<&str>) -> Profile {
        let set = |choice: &mut Choice, value: Option<&str>| {
            if let Some(v) = value {
                *choice = Choice {
                    name: (v != "none").then(|| v.to_string()),
                    origin: Origin::Config,
                };
            }
        };
        set(&mut self.tool_parser, tool);
        set(&mut self.reasoning_parser, reasoning);
        if self.reasoning_parser.name.is_some() && self.think == Think::None {
            self.think = Think::Toggle("enable_thinking");
        }
        if self.reasoning_parser.name.is_none() {
            self.think = Think::None;
        }
        self
    }

    pub fn tools(&self) -> bool {
        self.tool_parser.name.is_some()
    }

    pub fn thinking(&self) -> bool {
        self.reasoning_parser.name.is_some()
    }

    /// vLLM's arguments for it. `extra` are the configured arguments: a parser set there by
    /// hand is left alone.
    pub fn args(&self, extra: &[String]) -> Vec<String> {
        let given = |flag: &str| {
            extra
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        let mut args = Vec::new();
        if let Some(p) = &self.tool_parser.name {
            if !given("--tool-call-parser") {
                if !given("--enable-auto-tool-choice") {
                    args.push("--enable-auto-tool-choice".to_string());
                }
                args.extend(["--tool-call-parser".to_string(), p.clone()]);
            }
        }
        if let Some(p) = &self.reasoning_parser.name {
            if !given("--reasoning-parser") {
                args.extend(["--reasoning-parser".to_string(), p.clone()]);
            }
        }
        args
    }

    /// Checks the parser names against those the installed vLLM knows.
    pub fn check(&self, model: &str, known: &KnownParsers) -> Result<(), String> {
        for (what, choice, list) in [
            ("tool parser", &self.tool_parser, &known.tool),
            ("reasoning parser", &self.reasoning_parser, &known.reasoning),
        ] {
            let Some(name) = &choice.name else { continue };
            if !list.is_empty() && !list.iter().any(|k| k == name) {
                return Err(format!(
                    "model {model}: the {what} `{name}` (from {}) is not one vLLM {} knows; set \
                     [models.\"{model}\"] {} to one of: {}, or \"none\"",
                    choice.origin,
                    known.version,
                    if what == "tool parser" {
                        "tool_parser"
                    } else {
                        "reasoning_parser"
                    },
                    list.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// One line per part and its origin, for `--check-config` and `vllamactl show`.
    pub fn describe(&self) -> String {
        let part = |c: &Choice| match &c.name {
            Some(n) => format!("{n} (from {})", c.origin),
            None => format!("none (from {})", c.origin),
        };
        format!(
            "family {}; tool parser {}; reasoning parser {}",
            self.family,
            part(&self.tool_parser),
            part(&self.reasoning_parser)
        )
    }
}

/// The parser names an installed vLLM accepts (empty: not known, not checked).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct KnownParsers {
    pub version: String,
    pub tool: Vec<String>,
    pub reasoning: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN3: &str = "{%- if tools %}<tools>{% endif %}<tool_call>{{ x }}</tool_call>{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>{% endif %}";
    const QWEN25: &str = "{%- if tools %}<tools></tools>{% endif %}<tool_call>\n{\"name\": <function-name>}\n</tool_call>";
    const LLAMA31: &str = "{%- if builtin_tools is defined or tools is not none %}<|python_tag|>{%- endif %}<|start_header_id|>";
    const MISTRAL: &str =
        "{%- if tools %}[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]";
    const R1: &str = "<｜Assistant｜><think>\n";

    #[test]
    fn families_come_from_the_templates_markers() {
        assert_eq!(detect("qwen3", Some(QWEN3)).name, "qwen3");
        assert_eq!(
            detect("llama", Some(QWEN3)).name,
            "qwen3",
            "markers first: a Qwen-3 template on a Llama"
        );
        assert_eq!(detect("qwen2", Some(QWEN25)).name, "qwen2.5");
        assert_eq!(detect("llama", Some(LLAMA31)).name, "llama3");
        assert_eq!(detect("mistral", Some(MISTRAL)).name, "mistral");
        assert_eq!(detect("qwen2", Some(R1)).name, "deepseek-r1");
        assert_eq!(detect("gpt_oss", None).name, "gpt-oss");
        assert_eq!(detect("gemma3", Some("<start_of_turn>")).name, "gemma3");
        assert_eq!(
            detect("phi3", Some("<|tool|>[]<|/tool|>")).name,
            "phi4-mini"
        );
        assert_eq!(detect("phi3", Some("<|im_start|>")).name, "phi4");
        assert_eq!(detect("granite", Some("{% if tools %}")).name, "granite");
        assert_eq!(detect("llama", Some("{{ messages }}")).name, "other");
        assert_eq!(detect("llama", None).name, "other");
    }

    #[test]
    fn flags_follow_the_profile_and_configured_args_win() {
        let p = Profile::of(detect("qwen3", Some(QWEN3)));
        assert_eq!(
            p.args(&[]),
            [
                "--enable-auto-tool-choice",
                "--tool-call-parser",
                "hermes",
                "--reasoning-parser",
                "qwen3"
            ]
        );
        let given = ["--tool-call-parser".to_string(), "pythonic".to_string()];
        assert_eq!(p.args(&given), ["--reasoning-parser", "qwen3"]);
        assert!(Profile::of(detect("llama", None)).args(&[]).is_empty());
    }

    #[test]
    fn the_configuration_wins_and_none_turns_off() {
        let p = Profile::of(detect("qwen3", Some(QWEN3))).configured(Some("none"), None);
        assert!(!p.tools() && p.thinking());
        assert_eq!(p.tool_parser.origin, Origin::Config);
        assert_eq!(p.args(&[]), ["--reasoning-parser", "qwen3"]);
        let p = Profile::of(detect("llama", None)).configured(Some("hermes"), Some("qwen3"));
        assert!(p.tools() && p.thinking());
        assert_eq!(p.think, Think::Toggle("enable_thinking"));
        assert!(
            p.describe()
                .contains("tool parser hermes (from the configuration)"),
            "{}",
            p.describe()
        );
        let p = Profile::of(detect("qwen3", Some(QWEN3))).configured(None, Some("none"));
        assert_eq!(p.think, Think::None);
    }

    #[test]
    fn unknown_names_are_refused_with_the_choices() {
        let known = KnownParsers {
            version: "0.32.0".into(),
            tool: vec!["hermes".into(), "llama3_json".into()],
            reasoning: vec!["qwen3".into()],
        };
        let p = Profile::of(detect("llama", None)).configured(Some("herms"), None);
        let e = p.check("tiny:latest", &known).expect_err("refused");
        assert!(
            e.contains("`herms` (from the configuration) is not one vLLM 0.32.0 knows"),
            "{e}"
        );
        assert!(
            e.contains("tool_parser to one of: hermes, llama3_json"),
            "{e}"
        );
        assert!(Profile::of(detect("qwen3", Some(QWEN3)))
            .check("m", &known)
            .is_ok());
        assert!(
            p.check("m", &KnownParsers::default()).is_ok(),
            "unknown lists: not checked"
        );
    }
}
