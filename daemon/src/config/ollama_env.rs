//! Ollama's environment variables, for people moving from Ollama: where an `OLLAMA_*`
//! variable means the same as a vllama key, it is read as that key's `VLLAMA_*` variable
//! (which wins when both are set). docs/MIGRATING.md has the table, and the variables that
//! mean nothing here.

/// (Ollama's variable, vllama's variable).
pub const MAPPED: &[(&str, &str)] = &[
    ("OLLAMA_HOST", "VLLAMA_API_LISTEN"),
    ("OLLAMA_KEEP_ALIVE", "VLLAMA_ENGINE_KEEP_ALIVE"),
    ("OLLAMA_MAX_QUEUE", "VLLAMA_ENGINE_MAX_QUEUE"),
    ("OLLAMA_MAX_LOADED_MODELS", "VLLAMA_ENGINE_MAX_LOADED"),
    ("OLLAMA_ORIGINS", "VLLAMA_API_ORIGINS"),
    ("OLLAMA_CONTEXT_LENGTH", "VLLAMA_ENGINE_CONTEXT_LENGTH"),
    ("OLLAMA_LOAD_TIMEOUT", "VLLAMA_ENGINE_LOAD_TIMEOUT"),
];

/// Ollama's default port, when `OLLAMA_HOST` names only a host.
const PORT: u16 = 11434;

/// One mapped variable: the vllama variable it stands for and its value in vllama's form,
/// or why it cannot be read.
pub fn translate(var: &str, value: &str) -> Option<Result<(&'static str, String), String>> {
    let (_, to) = MAPPED.iter().find(|(from, _)| *from == var)?;
    let value = value.trim();
    Some(match var {
        "OLLAMA_HOST" => host(value).map(|v| (*to, v)),
        // A comma-separated list; vllama's key is a TOML array.
        "OLLAMA_ORIGINS" => {
            let items: Vec<toml::Value> = value
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|o| toml::Value::String(o.to_string()))
                .collect();
            Ok((*to, toml::Value::Array(items).to_string()))
        }
        // Ollama reads a bare number of seconds; vllama's durations want a unit.
        "OLLAMA_KEEP_ALIVE" | "OLLAMA_LOAD_TIMEOUT" if value.parse::<i64>().is_ok() => {
            Ok((*to, format!("{value}s")))
        }
        _ => Ok((*to, value.to_string())),
    })
}

/// `OLLAMA_HOST`: `host`, `host:port`, `:port` or a URL, as Ollama reads it.
fn host(value: &str) -> Result<String, String> {
    let bare = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .unwrap_or(value)
        .trim_end_matches('/');
    let (host, port) = match bare.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("`{value}` has no valid port"))?;
            (h, port)
        }
        _ => (bare, PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = match host {
        "" => [127, 0, 0, 1].into(),
        "localhost" => [127, 0, 0, 1].into(),
        h => h.parse().map_err(|_| {
            format!("`{value}`: vllama listens on an IP address, not the name `{h}`")
        })?,
    };
    Ok(std::net::SocketAddr::new(ip, port).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(var: &str, value: &str) -> String {
        match translate(var, value) {
            Some(Ok((_, v))) => v,
            other => panic!("{var}={value}: {other:?}"),
        }
    }

    #[test]
    fn ollama_values_in_vllamas_form() {
        assert_eq!(to("OLLAMA_HOST", "0.0.0.0"), "0.0.0.0:11434");
        assert_eq!(to("OLLAMA_HOST", "127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(
            to("OLLAMA_HOST", "http://localhost:11500/"),
            "127.0.0.1:11500"
        );
        assert_eq!(to("OLLAMA_HOST", ":9000"), "127.0.0.1:9000");
        assert_eq!(to("OLLAMA_HOST", "[::1]:7000"), "[::1]:7000");
        assert!(matches!(translate("OLLAMA_HOST", "myhost:1"), Some(Err(_))));
        assert_eq!(
            to("OLLAMA_ORIGINS", "http://a.test, app://*"),
            r#"["http://a.test", "app://*"]"#
        );
        assert_eq!(to("OLLAMA_KEEP_ALIVE", "3600"), "3600s");
        assert_eq!(to("OLLAMA_KEEP_ALIVE", "-1"), "-1s");
        assert_eq!(to("OLLAMA_KEEP_ALIVE", "10m"), "10m");
        assert_eq!(to("OLLAMA_MAX_LOADED_MODELS", "2"), "2");
        assert!(translate("OLLAMA_MODELS", "/x").is_none());
    }
}
