//! The fake engine's newer routes, in vLLM 0.32's shapes (recorded in
//! tests/fixtures/real-vllm/): Anthropic Messages (`/v1/messages`, `count_tokens`), OpenAI
//! Responses (`/v1/responses`, kept in memory with `VLLM_ENABLE_RESPONSES_API_STORE=1` as
//! vLLM does), `/tokenize` and `/detokenize`, and the log probabilities of chat and
//! completions.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};

/// One generated token's log probability and its alternatives (the chat API's shape).
pub fn chat_logprob(word: &str, top: usize) -> Value {
    let entry = |w: &str, lp: f64| json!({"token": w, "logprob": lp, "bytes": w.as_bytes()});
    let mut alternatives = vec![entry(word, -0.5)];
    for (i, alt) in ["stream", "M", "x"]
        .iter()
        .enumerate()
        .take(top.saturating_sub(1))
    {
        alternatives.push(entry(alt, -1.5 - i as f64));
    }
    alternatives.truncate(top);
    let mut v = entry(word, -0.5);
    v["top_logprobs"] = Value::Array(alternatives);
    v
}

/// The completions API's log probabilities of some words.
pub fn completion_logprobs(words: &[String], top: usize) -> Value {
    let mut offset = 0;
    let mut offsets = Vec::new();
    for w in words {
        offsets.push(offset);
        offset += w.len();
    }
    let tops: Vec<Value> = words
        .iter()
        .map(|w| {
            let mut m = serde_json::Map::new();
            m.insert(w.clone(), json!(-0.5));
            if top > 1 {
                m.insert("M".into(), json!(-1.5));
            }
            Value::Object(m)
        })
        .collect();
    json!({"text_offset": offsets, "token_logprobs": vec![-0.5; words.len()], "tokens": words, "top_logprobs": tops})
}

/// The model check of vLLM's Anthropic routes: its own error type name in Anthropic's shape.
pub fn anthropic_unknown_model(model: &str, served: &str) -> Value {
    json!({"type": "error", "error": {"type": "NotFoundError",
        "message": format!("The model `{model}` does not exist. Valid aliases: {served}.")}})
}

/// vLLM's request validation (pydantic through FastAPI), in OpenAI's shape on every route.
pub fn validation_error(loc: &str, msg: &str) -> Value {
    json!({"error": {"message": format!("1 validation error:\n  {{'type': 'missing', 'loc': '{loc}', 'msg': '{msg}'}}"),
        "type": "Bad Request", "param": loc, "code": 400}})
}

/// A whole Anthropic message: text, or one tool_use block.
pub fn message(
    id: &str,
    served: &str,
    text: &str,
    tool: Option<(&str, Value)>,
    stop: &str,
    usage: (u64, u64),
) -> Value {
    let content = match tool {
        Some((name, input)) => {
            json!([{"type": "tool_use", "id": "chatcmpl-tool-1", "name": name, "input": input}])
        }
        None => json!([{"type": "text", "text": text}]),
    };
    json!({"id": id, "type": "message", "role": "assistant", "content": content, "model": served,
        "stop_reason": stop, "usage": {"input_tokens": usage.0, "output_tokens": usage.1}})
}

/// An Anthropic stream's events, in order (`event:` name, data).
pub fn message_events(
    id: &str,
    served: &str,
    words: &[String],
    tool: Option<(&str, Value)>,
    stop: &str,
    usage: (u64, u64),
) -> Vec<(String, Value)> {
    let mut events = vec![(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "content": [], "model": served, "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": usage.0, "output_tokens": 0}}}),
    )];
    match tool {
        Some((name, input)) => {
            events.push(("content_block_start", json!({"type": "content_block_start",
                "content_block": {"type": "tool_use", "id": "chatcmpl-tool-1", "name": name, "input": {}}, "index": 0})));
            events.push(("content_block_delta", json!({"type": "content_block_delta",
                "delta": {"type": "input_json_delta", "partial_json": input.to_string()}, "index": 0})));
        }
        None => {
            events.push((
                "content_block_start",
                json!({"type": "content_block_start", "content_block": {"type": "text", "text": ""}, "index": 0}),
            ));
            for w in words {
                events.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta",
                    "delta": {"type": "text_delta", "text": w}, "index": 0}),
                ));
            }
        }
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push((
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null},
        "usage": {"input_tokens": usage.0, "output_tokens": usage.1}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    events
        .into_iter()
        .map(|(e, v)| (e.to_string(), v))
        .collect()
}

/// Responses the engine keeps (`VLLM_ENABLE_RESPONSES_API_STORE=1`).
#[derive(Default)]
pub struct Store {
    pub enabled: bool,
    pub kept: Mutex<HashMap<String, Value>>,
}

impl Store {
    pub fn keep(&self, response: &Value) {
        if !self.enabled {
            return;
        }
        if let (Some(id), Ok(mut kept)) = (response["id"].as_str(), self.kept.lock()) {
            kept.insert(id.to_string(), response.clone());
        }
    }

    pub fn get(&self, id: &str) -> Option<Value> {
        self.kept.lock().ok()?.get(id).cloned()
    }
}

/// vLLM's answer for an id it does not keep.
pub fn response_not_found(id: &str) -> Value {
    json!({"error": {"message": format!("Response with id '{id}' not found."),
        "type": "invalid_request_error", "param": "response_id", "code": 404}})
}

/// A Responses object (vLLM's members, recorded).
pub fn response(
    id: &str,
    served: &str,
    req: &Value,
    status: &str,
    output: Vec<Value>,
    usage: Option<(u64, u64)>,
    created: u64,
) -> Value {
    let usage = usage.map(|(i, o)| json!({"input_tokens": i,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0, "input_tokens_per_turn": [], "cached_tokens_per_turn": []},
        "output_tokens": o,
        "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0, "output_tokens_per_turn": [], "tool_output_tokens_per_turn": []},
        "total_tokens": i + o}));
    let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
    json!({"id": id, "created_at": created, "incomplete_details": incomplete, "instructions": req["instructions"],
        "metadata": null, "model": served, "object": "response", "output": output,
        "parallel_tool_calls": true, "temperature": req["temperature"].as_f64().unwrap_or(1.0),
        "tool_choice": if req["tools"].is_array() { json!("auto") } else { json!("none") },
        "tools": req["tools"].as_array().cloned().unwrap_or_default(), "top_p": 1.0,
        "background": false, "max_output_tokens": req["max_output_tokens"], "max_tool_calls": null,
        "previous_response_id": req["previous_response_id"], "prompt": null, "reasoning": null,
        "service_tier": "auto", "status": status, "text": null, "top_logprobs": null,
        "truncation": "disabled", "usage": usage, "user": null, "presence_penalty": 0.0,
        "frequency_penalty": 0.0, "kv_transfer_params": null, "ec_transfer_params": null,
        "input_messages": null, "output_messages": null})
}

/// The message item of a Responses answer.
pub fn output_message(item_id: &str, text: &str, status: &str) -> Value {
    json!({"id": item_id, "content": [{"annotations": [], "text": text, "type": "output_text", "logprobs": null}],
        "role": "assistant", "status": status, "type": "message", "phase": null})
}

/// A Responses stream's events, in order, from the response in progress and its end.
pub fn response_events(
    start: &Value,
    end: &Value,
    item_id: &str,
    words: &[String],
) -> Vec<(String, Value)> {
    let text: String = words.concat();
    let mut events: Vec<(String, Value)> = Vec::new();
    let mut push = |name: &str, mut v: Value| {
        v["sequence_number"] = json!(events.len());
        v["type"] = json!(name);
        events.push((name.to_string(), v));
    };
    push("response.created", json!({"response": start}));
    push("response.in_progress", json!({"response": start}));
    push(
        "response.output_item.added",
        json!({"item": {"id": item_id, "content": [], "role": "assistant",
        "status": "in_progress", "type": "message", "phase": null}, "output_index": 0}),
    );
    push(
        "response.content_part.added",
        json!({"content_index": 0, "item_id": item_id, "output_index": 0,
        "part": {"annotations": [], "text": "", "type": "output_text", "logprobs": []}}),
    );
    for w in words {
        push(
            "response.output_text.delta",
            json!({"content_index": 0, "delta": w, "item_id": item_id,
            "logprobs": [], "output_index": 0}),
        );
    }
    push(
        "response.output_text.done",
        json!({"content_index": 0, "item_id": item_id, "logprobs": [],
        "output_index": 0, "text": text}),
    );
    push(
        "response.content_part.done",
        json!({"content_index": 0, "item_id": item_id, "output_index": 0,
        "part": {"annotations": [], "text": text, "type": "output_text", "logprobs": null}}),
    );
    push(
        "response.output_item.done",
        json!({"item": output_message(item_id, &text, "completed"), "output_index": 0}),
    );
    push("response.completed", json!({"response": end}));
    events
}

/// The fake's tokenizer: one token per word, ids from the word's bytes.
pub fn tokens_of(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .map(|w| w.bytes().map(u64::from).sum::<u64>() % 500 + 3)
        .collect()
}
