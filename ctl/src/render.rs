//! Human-readable output of `vllamactl`.

use std::fmt::Write;

use vllama_proto::{EngineInfo, GpuStatus, ReloadOutcome, Status, StoredModel};

pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

pub fn status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vllamad {} (pid {}), up {}",
        s.version,
        s.pid,
        duration(s.uptime_seconds)
    );
    let _ = writeln!(out, "state:     {}", s.state);
    let path = s
        .config
        .path
        .as_deref()
        .unwrap_or("(none: built-in defaults)");
    let _ = writeln!(
        out,
        "config:    {path} (generation {}, loaded {})",
        s.config.generation, s.config.loaded_at
    );
    if let Some(err) = &s.config.last_reload_error {
        let _ = writeln!(out, "           last reload refused: {err}");
    }
    let width = s
        .listeners
        .iter()
        .map(|l| l.address.len())
        .max()
        .unwrap_or(0);
    for (i, l) in s.listeners.iter().enumerate() {
        let label = if i == 0 { "listeners:" } else { "" };
        let _ = writeln!(
            out,
            "{label:<10} {:<6} {:<width$}  ({})",
            l.name, l.address, l.source
        );
    }
    if s.gpus.is_empty() {
        let _ = writeln!(out, "gpus:      none");
    } else {
        let _ = writeln!(out, "gpus:");
        for g in &s.gpus {
            let _ = writeln!(out, "  {}", gpu(g));
        }
    }
    if s.engines.is_empty() {
        let _ = writeln!(out, "engines:   none loaded");
    } else {
        let _ = writeln!(out, "engines:");
        for line in engines(&s.engines).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// One GPU on a line: `0 NVIDIA H100  [######......] 38.2/79.6 GiB  12%  41°C  118 W`.
pub fn gpu(g: &GpuStatus) -> String {
    const WIDTH: usize = 20;
    let share = if g.memory_total_bytes == 0 {
        0.0
    } else {
        g.memory_used_bytes as f64 / g.memory_total_bytes as f64
    };
    let filled = ((share * WIDTH as f64).round() as usize).min(WIDTH);
    let mut line = format!(
        "{} {:<24} [{}{}] {} / {}",
        g.index,
        g.name,
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        bytes(g.memory_used_bytes),
        bytes(g.memory_total_bytes)
    );
    if let Some(u) = g.utilization_percent {
        let _ = write!(line, "  {u:>3}% busy");
    }
    if let Some(t) = g.temperature_celsius {
        let _ = write!(line, "  {t}°C");
    }
    if let Some(w) = g.power_watts {
        let _ = write!(line, "  {w:.0} W");
    }
    line
}

/// Parameters as Ollama shows them: 494M, 7.6B.
fn params(n: u64) -> String {
    match n {
        0 => "-".into(),
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n => format!("{}M", n / 1_000_000),
    }
}

/// `vllamactl list`.
pub fn stored(models: &[StoredModel]) -> String {
    let rows: Vec<[String; 6]> = models
        .iter()
        .map(|m| {
            let mut name = m.name.clone();
            if !m.aliases.is_empty() {
                name.push_str(&format!(" ({})", m.aliases.join(", ")));
            }
            [
                name,
                format!("{}@{}", m.repo, m.revision),
                bytes(m.size_bytes),
                params(m.parameter_count),
                m.quantization.clone(),
                m.modified_at
                    .get(..19)
                    .unwrap_or(&m.modified_at)
                    .replace('T', " "),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "REPOSITORY",
            "SIZE",
            "PARAMS",
            "TYPE",
            "PULLED (UTC)",
        ],
        &rows,
    )
}

/// `vllamactl show`.
pub fn stored_one(m: &StoredModel) -> String {
    let mut out = String::new();
    let kind = match (m.embedding, m.vision) {
        (true, _) => "embedding",
        (_, true) => "vision + text",
        _ => "text generation",
    };
    for (k, v) in [
        ("name", m.name.clone()),
        ("repository", m.repo.clone()),
        ("revision", format!("{} (commit {})", m.revision, m.commit)),
        ("size", bytes(m.size_bytes)),
        ("family", m.family.clone()),
        ("architecture", m.architecture.clone()),
        ("parameters", params(m.parameter_count)),
        ("weights", m.quantization.clone()),
        (
            "context",
            m.context_length.map_or("-".into(), |c| c.to_string()),
        ),
        ("kind", kind.into()),
        (
            "capabilities",
            if m.capabilities.is_empty() {
                "-".into()
            } else {
                m.capabilities.join(", ")
            },
        ),
        (
            "engine",
            if m.profile.is_empty() {
                "-".into()
            } else {
                m.profile.clone()
            },
        ),
        (
            "aliases",
            if m.aliases.is_empty() {
                "-".into()
            } else {
                m.aliases.join(", ")
            },
        ),
        ("pulled", m.modified_at.clone()),
    ] {
        let _ = writeln!(out, "{k:<13} {v}");
    }
    out
}

/// Columns padded to their widest cell.
pub(crate) fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Bytes in binary units, one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS.get(unit).unwrap_or(&"?"))
    }
}

/// `vllamactl ps`: one row per engine.
pub fn engines(list: &[EngineInfo]) -> String {
    let mut rows = vec![[
        "MODEL".to_string(),
        "STATE".into(),
        "PID".into(),
        "GPU".into(),
        "GPU MEMORY".into(),
        "REQUESTS".into(),
        "UNTIL".into(),
        "RESTARTS".into(),
    ]];
    for e in list {
        let until = match (&e.expires_at, e.pinned, e.keep_alive.as_str()) {
            (_, true, _) => "pinned".to_string(),
            (Some(t), _, _) => t.clone(),
            (None, _, "-1") => "forever".to_string(),
            (None, _, _) => "in use".to_string(),
        };
        rows.push([
            e.model.clone(),
            e.state.clone(),
            e.pid.map_or("-".into(), |p| p.to_string()),
            if e.kind == "remote" {
                "remote".into()
            } else if e.gpus.is_empty() {
                "cpu".into()
            } else {
                e.gpus
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
            if e.gpu_memory_bytes == 0 {
                "-".into()
            } else {
                bytes(e.gpu_memory_bytes)
            },
            e.pending.to_string(),
            until,
            format!("{} ({} crashes)", e.restarts, e.crashes),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    for e in list {
        if let Some(err) = &e.last_error {
            let first = err.lines().next().unwrap_or("");
            let _ = writeln!(out, "{}: last error: {first}", e.model);
        }
    }
    out
}

pub fn reload(r: &ReloadOutcome) -> String {
    let mut out = match (&r.error, r.applied) {
        (_, true) => format!("configuration reloaded (generation {})\n", r.generation),
        (Some(e), false) => format!(
            "reload refused, generation {} stays in force:\n  {e}\n",
            r.generation
        ),
        (None, false) => format!(
            "reload refused, generation {} stays in force\n",
            r.generation
        ),
    };
    for key in &r.needs_restart {
        let _ = writeln!(
            out,
            "note: {key} changed; it takes effect after `systemctl restart vllamad`"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vllama_proto::{ConfigInfo, EngineInfo, ListenerInfo, ListenerSource};

    #[test]
    fn durations() {
        assert_eq!(duration(5.2), "5s");
        assert_eq!(duration(192.0), "3m 12s");
        assert_eq!(duration(7_380.0), "2h 3m");
        assert_eq!(duration(200_000.0), "2d 7h");
    }

    #[test]
    fn status_shows_everything_it_was_given() {
        let s = Status {
            version: "0.1.0".into(),
            pid: 42,
            uptime_seconds: 61.0,
            started_at: "2026-11-27T16:00:00.000Z".into(),
            state: "serving on 127.0.0.1:11434; no engines loaded".into(),
            config: ConfigInfo {
                path: Some("/etc/vllama/vllama.toml".into()),
                generation: 3,
                loaded_at: "2026-11-27T16:01:00.000Z".into(),
                last_reload_error: Some("bad key".into()),
            },
            listeners: vec![
                ListenerInfo {
                    name: "api".into(),
                    address: "127.0.0.1:11434".into(),
                    source: ListenerSource::SocketActivation,
                },
                ListenerInfo {
                    name: "admin".into(),
                    address: "/run/vllama-admin/admin.sock".into(),
                    source: ListenerSource::Bound,
                },
            ],
            engines: vec![EngineInfo {
                model: "qwen2.5:7b".into(),
                served_name: "qwen2.5:7b".into(),
                id: "qwen2.5-7b-1".into(),
                state: "ready".into(),
                pid: Some(777),
                kind: "vllm".into(),
                endpoint: "unix:/run/vllama/engines/qwen2.5-7b-1.sock".into(),
                gpus: vec![0, 1],
                gpu_memory_bytes: 3 * 1024 * 1024 * 1024 / 2,
                pending: 2,
                expires_at: None,
                keep_alive: "5m".into(),
                restarts: 1,
                crashes: 1,
                last_error: Some("exited unexpectedly\nmore".into()),
                load_seconds: Some(80.0),
                pinned: false,
            }],
            gpus: vec![GpuStatus {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                memory_total_bytes: 80 * 1024 * 1024 * 1024,
                memory_used_bytes: 20 * 1024 * 1024 * 1024,
                utilization_percent: Some(12),
                temperature_celsius: Some(41),
                power_watts: Some(118.4),
            }],
        };
        let text = status(&s);
        for needle in [
            "0 NVIDIA H100 80GB HBM3    [#####...............] 20.0 GiB / 80.0 GiB   12% busy  41°C  118 W",
            "pid 42",
            "up 1m 1s",
            "generation 3",
            "last reload refused: bad key",
            "api    127.0.0.1:11434",
            "(socket activation)",
            "(bound by vllamad)",
            "qwen2.5:7b",
            "0,1",
            "1.5 GiB",
            "in use",
            "1 (1 crashes)",
            "qwen2.5:7b: last error: exited unexpectedly",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
        }
    }
}
