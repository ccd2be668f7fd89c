//! The engines' own metrics: each Ready engine's `/metrics` (vLLM's Prometheus exposition),
//! fetched concurrently, each within `metrics.engine_timeout`, and re-exposed under valid
//! names (`vllm:num_requests_running` → `vllm_num_requests_running`, `process_open_fds` →
//! `vllm_process_open_fds`) with a `model` label, the
//! families of all engines merged so each appears once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};

use crate::engine::{Engine, Phase};

/// One metric family gathered from the engines: its HELP and TYPE lines (renamed), then the
/// samples of every engine.
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Fetches and merges the metrics of these engines. Engines that fail or are slower than
/// `timeout` are left out (and logged at debug): a scrape never waits longer than that.
pub async fn scrape(engines: Vec<(String, Arc<Engine>)>, timeout: Duration) -> String {
    let mut fetches = tokio::task::JoinSet::new();
    for (model, engine) in engines {
        if engine.status().phase != Phase::Ready {
            continue;
        }
        fetches.spawn(async move {
            let answer = engine.client().call(Method::GET, "/metrics", timeout).await;
            (model, answer)
        });
    }
    let mut families = BTreeMap::new();
    while let Some(done) = fetches.join_next().await {
        let Ok((model, answer)) = done else { continue };
        match answer {
            Ok((StatusCode::OK, body)) => {
                merge(&mut families, &String::from_utf8_lossy(&body), &model)
            }
            Ok((status, _)) => {
                tracing::debug!(model, %status, "engine metrics left out of the scrape")
            }
            Err(e) => tracing::debug!(model, error = %e, "engine metrics left out of the scrape"),
        }
    }
    render(&families)
}

/// `vllm:foo` → `vllm_foo` (colons are for recording rules, not exporters), and the engine's
/// other families (`process_*`, `python_gc_*`, `http_*` of its API server) under `vllm_` too,
/// where they would otherwise collide with vllamad's own `process_*`.
fn rename(name: &str) -> String {
    let name = name.replace(':', "_");
    if name.starts_with("vllm_") {
        name
    } else {
        format!("vllm_{name}")
    }
}

/// Adds one engine's exposition to `families`, its samples labelled `model`.
fn merge(families: &mut BTreeMap<String, Family>, text: &str, model: &str) {
    let model_label = format!("model=\"{}\"", escape(model));
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = rename(name);
            families.entry(name.clone()).or_default().help = Some(format!("# HELP {name} {help}"));
            current = Some(name);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = rename(name);
            families.entry(name.clone()).or_default().kind = Some(format!("# TYPE {name} {kind}"));
            current = Some(name);
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let (name, rest) = line.split_at_checked(end).unwrap_or((line, ""));
        let sample_name = rename(name);
        let labelled = match rest.strip_prefix('{') {
            Some(labels) if labels.starts_with('}') => {
                format!("{sample_name}{{{model_label}{}", &labels)
            }
            Some(labels) => format!("{sample_name}{{{model_label},{labels}"),
            None => format!("{sample_name}{{{model_label}}}{rest}"),
        };
        // A sample belongs to the family announced before it when it is one of its series
        // (`_bucket`, `_sum`, `_total`…), else to a family of its own.
        let family = match &current {
            Some(f) if sample_name.starts_with(f.as_str()) => f.clone(),
            _ => {
                current = None;
                sample_name.clone()
            }
        };
        families.entry(family).or_default().samples.push(labelled);
    }
}

fn render(families: &BTreeMap<String, Family>) -> String {
    let mut out = String::new();
    for f in families.values().filter(|f| !f.samples.is_empty()) {
        for line in f.help.iter().chain(&f.kind).chain(&f.samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A label value as the exposition format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = "\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 2.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine=\"0\",model_name=\"m\"} 120.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.001\",model_name=\"m\"} 0.0
vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"m\"} 3.0
vllm:time_to_first_token_seconds_count{engine=\"0\",model_name=\"m\"} 3.0
vllm:time_to_first_token_seconds_sum{engine=\"0\",model_name=\"m\"} 0.3
plain 1
";

    #[test]
    fn engines_merge_under_valid_names_with_a_model_label() {
        let mut f = BTreeMap::new();
        merge(&mut f, VLLM, "qwen2.5:0.5b");
        merge(&mut f, VLLM, "llama3.2:1b");
        let text = render(&f);
        assert!(!text.contains("vllm:"), "{text}");
        assert_eq!(
            text.matches("# TYPE vllm_num_requests_running gauge")
                .count(),
            1,
            "{text}"
        );
        assert!(text.contains("vllm_num_requests_running{model=\"qwen2.5:0.5b\",engine=\"0\",model_name=\"m\"} 2.0"), "{text}");
        assert!(
            text.contains("vllm_num_requests_running{model=\"llama3.2:1b\",engine=\"0\""),
            "{text}"
        );
        assert!(text.contains("vllm_time_to_first_token_seconds_sum{model=\"llama3.2:1b\""));
        assert!(
            text.contains("vllm_plain{model=\"llama3.2:1b\"} 1"),
            "{text}"
        );
        // Samples of one family are contiguous.
        let lines: Vec<&str> = text.lines().collect();
        let first = lines
            .iter()
            .position(|l| l.starts_with("vllm_prompt_tokens_total{"))
            .unwrap();
        assert!(lines[first + 1].starts_with("vllm_prompt_tokens_total{"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
