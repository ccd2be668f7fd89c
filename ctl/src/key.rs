//! `vllamactl key add | list | rm`: the public API's keys. The daemon makes the secret,
//! keeps only its hash and puts a change in force at once; the secret is printed here once.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::Method;
use vllama_proto::{
    KeyAddRequest, KeyAdded, KeyInfo, KeyLimits, KeyRemoveRequest, KEYS_PATH, KEY_REMOVE_PATH,
};

use crate::client::{AdminClient, ClientError};

fn body<T: serde::Serialize>(value: &T) -> Result<bytes::Bytes, ClientError> {
    serde_json::to_vec(value)
        .map(Into::into)
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

pub async fn add(
    client: &AdminClient,
    name: String,
    models: Vec<String>,
    limits: KeyLimits,
) -> Result<ExitCode, ClientError> {
    let request = KeyAddRequest {
        name,
        models,
        limits,
    };
    let answer = client
        .request_with(Method::POST, KEYS_PATH, body(&request)?)
        .await?
        .ok()?;
    let added: KeyAdded = answer.json()?;
    let scope = if added.info.models.is_empty() {
        "every model".to_string()
    } else {
        added.info.models.join(", ")
    };
    eprintln!(
        "added key {} ({}) for {scope}, {}; in force now. The key is shown this once:",
        added.info.id,
        added.info.name,
        limits_text(&added.info.limits)
    );
    println!("{}", added.key);
    Ok(ExitCode::SUCCESS)
}

/// `key list`'s table (through `main`'s listing helper).
pub fn table(keys: &[KeyInfo]) -> String {
    render(keys, now())
}

pub async fn remove(client: &AdminClient, id: String) -> Result<ExitCode, ClientError> {
    let answer = client
        .request_with(
            Method::POST,
            KEY_REMOVE_PATH,
            body(&KeyRemoveRequest { id })?,
        )
        .await?
        .ok()?;
    let gone: KeyInfo = answer.json()?;
    println!(
        "removed key {} ({}); refused from now on",
        gone.id, gone.name
    );
    Ok(ExitCode::SUCCESS)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// "just now", "5 min ago", "3 h ago", "2 days ago".
fn ago(then: u64, now: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// "60 rpm, 10000 tpm, 4 at once", or "no limits".
fn limits_text(l: &KeyLimits) -> String {
    let parts: Vec<String> = [
        l.rpm.map(|n| format!("{n} rpm")),
        l.tpm.map(|n| format!("{n} tpm")),
        l.concurrency.map(|n| format!("{n} at once")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "no limits".into()
    } else {
        parts.join(", ")
    }
}

fn render(keys: &[KeyInfo], now: u64) -> String {
    let rows: Vec<[String; 6]> = keys
        .iter()
        .map(|k| {
            [
                k.id.clone(),
                if k.credential {
                    format!("{} (credential)", k.name)
                } else {
                    k.name.clone()
                },
                if k.models.is_empty() {
                    "all".into()
                } else {
                    k.models.join(", ")
                },
                limits_text(&k.limits),
                ago(k.created, now),
                k.last_used
                    .map_or("not since start".into(), |t| ago(t, now)),
            ]
        })
        .collect();
    crate::render::table(
        &["ID", "NAME", "MODELS", "LIMITS", "CREATED", "LAST USED"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_render_as_a_table_without_secrets() {
        let keys = [KeyInfo {
            id: "key_0a1b2c3d4e5f".into(),
            name: "ci".into(),
            models: vec!["tiny:latest".into()],
            created: 1_000,
            last_used: Some(1_000 + 7_200),
            limits: KeyLimits {
                rpm: Some(60),
                concurrency: Some(4),
                ..KeyLimits::default()
            },
            credential: false,
        }];
        let text = render(&keys, 1_000 + 7_300);
        assert!(
            text.contains("key_0a1b2c3d4e5f") && text.contains("tiny:latest"),
            "{text}"
        );
        assert!(
            text.contains("2 h ago") && text.contains("1 min ago"),
            "{text}"
        );
        assert!(text.contains("60 rpm, 4 at once"), "{text}");
    }
}
